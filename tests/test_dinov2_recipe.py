"""The DINOv2 recipe on tiny random DINOv2 classifiers, without and with registers, at a square and a
non-square input size (whose width is no multiple of the patch: the grid is input // patch_size).

Independent references: the model's own ``output_hidden_states`` / ``output_attentions`` (eager
attention), and the head written out from transformers' forward: ``classifier(cat(CLS, mean of
the patch tokens))`` after the final layernorm, with the register tokens skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from test_attention import LABELS, SMALL, reference_attentions, run, to_maps

import xai_recipes
from xai_recipes import MethodNotApplicableError, explain

SIZES = [(32, 32), (40, 60)]  # square; non-square, 60 px = 7 patches of 8 and 4 px the patch embedding drops
KINDS = {"dinov2": 1, "dinov2_with_registers": 1 + 4}  # model type -> prefix tokens (CLS, + 4 registers)


@pytest.fixture(scope="module")
def models():
    """float64: the maps are min-max scaled, which magnifies float32 rounding."""
    config = {k: v for k, v in SMALL.items() if k != "intermediate_size"}  # DINOv2 has mlp_ratio instead
    torch.manual_seed(0)
    plain = T.Dinov2ForImageClassification(T.Dinov2Config(**config, **LABELS))
    torch.manual_seed(0)
    registers = T.Dinov2WithRegistersForImageClassification(
        T.Dinov2WithRegistersConfig(**config, num_register_tokens=4, **LABELS))
    return {"dinov2": plain.eval().double(), "dinov2_with_registers": registers.eval().double()}


def base(model):
    """Written out per class, not ``model.base_model``: an independent path to the backbone."""
    return model.dinov2 if isinstance(model, T.Dinov2ForImageClassification) else model.dinov2_with_registers


def head_on(model, z: torch.Tensor, prefix: int) -> torch.Tensor:
    """transformers' classification head, on any block's output tokens."""
    normed = base(model).layernorm(z)
    return model.classifier(torch.cat([normed[:, 0], normed[:, prefix:].mean(1)], dim=1))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_dispatch_grid_and_score(models, kind, size):
    model, prefix = models[kind], KINDS[kind]
    recipe = xai_recipes.find_recipe(model)
    assert recipe.name == "dinov2" and model.config.model_type == kind
    spec = recipe.attention
    assert spec.prefix(model) == prefix and spec.readout == (0,) and spec.item == 1
    assert len(spec.modules(model)) == len(spec.blocks(model)) == SMALL["num_hidden_layers"]

    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5)).double()
    seen = []
    handle = recipe.target_layers(model)[-1].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            out = model(pixel_values=x, output_hidden_states=True, **recipe.forward_kwargs)
    finally:
        handle.remove()
    tokens = seen[0]
    h, w = size[0] // 8, size[1] // 8
    assert tokens.shape == (2, prefix + h * w, 32)
    maps = recipe.reshape(tokens, model, size)
    assert maps.shape == (2, 32, h, w)
    # row-major patch order: position (i, j) is token prefix + i·w + j
    torch.testing.assert_close(maps[:, :, 1, 2], tokens[:, prefix + w + 2])
    torch.testing.assert_close(maps[:, :, h - 1, w - 1], tokens[:, -1])

    last = out.hidden_states[-1]  # the last block's output, before the final layernorm
    with torch.no_grad():
        torch.testing.assert_close(spec.score(model)(last), out.logits, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(head_on(model, last, prefix), out.logits, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_legrad_equals_per_block_score_gradients(models, kind, size):
    """LeGrad: s_l = classifier(cat(norm(z_l)[:, 0], norm(z_l)[:, prefix:].mean(1))) for block l's
    output z_l; map = Σ_l mean_{heads, queries}(∂s_l/∂A_l)⁺ on the patch keys, scaled to [0, 1]."""
    model, prefix = models[kind], KINDS[kind]
    targets = [2, 0]
    x, recipe, result = run(model, "legrad", size, targets)
    assert result.maps.shape == (2, 2, *size)
    for t_index, target in enumerate(targets):
        _, attentions, hidden = reference_attentions(model, x, recipe, grad=True)
        assert len(attentions) == len(hidden) == SMALL["num_hidden_layers"]
        total = 0
        for a, z in zip(attentions, hidden):
            (g,) = torch.autograd.grad(head_on(model, z, prefix)[:, target].sum(), [a], retain_graph=True)
            total = total + g.clamp(min=0).mean((1, 2))
        np.testing.assert_allclose(result.maps[:, t_index], to_maps(total, prefix, size), atol=1e-4)
    assert not np.allclose(result.maps[:, 0], result.maps[:, 1], atol=1e-3)  # class-specific


@pytest.mark.parametrize("kind", KINDS)
def test_public_api_default_method_and_what_does_not_apply(models, kind):
    model = models[kind]
    processor = T.ViTImageProcessor(size={"height": 40, "width": 60})
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    exp = explain(model, image, processor=processor, top_k=2)
    assert exp.recipe == "dinov2" and exp.method == xai_recipes.get_recipe("dinov2").default_method
    assert exp.heatmaps.shape == (2, 50, 70) and np.isfinite(exp.heatmaps).all() and exp.heatmaps[0].std() > 1e-3
    heads = explain(model, image, processor=processor, method="attention").heads
    assert heads.shape == (SMALL["num_attention_heads"], 50, 70)
    for method in ("dff", "patch-contributions"):
        with pytest.raises(MethodNotApplicableError, match="concat"):
            explain(model, image, processor=processor, method=method)
