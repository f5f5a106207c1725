"""Query methods for DETR-style detectors: each equals an independent reference, on tiny random DETR,
Conditional DETR and Table Transformer models in float64, at two input sizes (non-square grids both
ways); through ``explain`` too; the user's model is left as it was; classifiers are told why not.

The references read the attention probabilities the way a user would — the model's own
``encoder_attentions`` / ``decoder_attentions`` / ``cross_attentions`` under eager attention — and
apply the papers' formulas with plain per-image loops, one backward pass per detection; the
bi-modal one copies ``handle_residual`` and the NaN guard of Chefer et al.'s ``Generator``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers as T

from xai_recipes import (Batch, MethodNotApplicableError, RecipeError, describe, explain, find_recipe, get_method)

FAMILIES = {
    "detr": (T.DetrConfig, T.DetrForObjectDetection),
    "conditional_detr": (T.ConditionalDetrConfig, T.ConditionalDetrForObjectDetection),
    "table-transformer": (T.TableTransformerConfig, T.TableTransformerForObjectDetection),
}
SIZES = [(2, (64, 96)), (1, (72, 56))]  # (images, model input): 8×12 and 9×7 token grids
PROCESSOR = T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def detector(family: str, decoder_layers: int = 2, **extra) -> torch.nn.Module:
    config, model = FAMILIES[family]
    torch.manual_seed(0)
    backbone = T.ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=8, layer_type="basic",
                              out_features=["stage2"])
    # init_std 0.2: attention far from uniform, so the maps have structure to compare. 8 decoder heads: in the first
    # decoder layer each query's self-attention gradient has one sign per head, so with few heads whole rows of Ā are 0
    # and the reference's NaN guard drops updates (tested on its own below); here it never fires (asserted)
    made = model(config(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=2, decoder_layers=decoder_layers, encoder_attention_heads=2,
                        decoder_attention_heads=8, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=3,
                        init_std=0.2, **extra))
    with torch.no_grad():  # trained biases, not zeros: the first decoder layer's values (of zero queries) are its
        for name, p in made.named_parameters():  # value bias, so with zero biases its self-attention gets no gradient
            if name.endswith("bias") and (".encoder." in name or ".decoder." in name):
                p.normal_(0, 0.5)
    return made


@pytest.fixture(scope="module")
def models():
    return {f: detector(f, attn_implementation="eager").double().eval() for f in FAMILIES}


def reference(model, x):
    """The model's own output with attention probabilities, and its token grid ``(h, w)``."""
    grid = []
    hook = model.model.input_projection.register_forward_hook(lambda m, a, out: grid.append(tuple(out.shape[-2:])))
    try:
        with torch.enable_grad():
            out = model(pixel_values=x, output_attentions=True)
    finally:
        hook.remove()
    (h, w), = grid
    assert out.cross_attentions[-1].shape[-1] == h * w
    return out, (h, w)


def to_maps(tokens, grid, size):
    """``N`` token relevances → the map on the model input: bilinear, then min-max to [0, 1]."""
    up = torch.nn.functional.interpolate(tokens.detach().double().reshape(1, 1, *grid), size=size, mode="bilinear",
                                         align_corners=False)[0, 0]
    return ((up - up.min()) / (up.max() - up.min())).numpy()


def run(model, method, x, targets, **options):
    """The method's own run on a Batch of the task's flattened scores (as the object-detection task binds them)."""
    recipe = find_recipe(model)
    recipe = replace(recipe, logits=lambda out: out.logits.flatten(1))
    chosen = get_method(method)
    return chosen.run(Batch(model, recipe, x, lambda scores: targets, 1, {**chosen.options, **options}))


def targets_for(model, images):
    """Three detections per image on different queries and classes: flat index q·C' + c."""
    classes = model.class_labels_classifier.out_features
    picks = [[(0, 1), (3, 0), (4, 2)], [(2, 2), (1, 0), (2, 1)]]
    return [[q * classes + c for q, c in picks[b]] for b in range(images)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("images,size", SIZES)
def test_cross_attention_is_the_models_own_cross_attention_of_the_query(models, family, images, size):
    model = models[family]
    x = torch.randn(images, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = targets_for(model, images)
    out, grid = reference(model, x)
    classes = out.logits.shape[-1]
    for layer in (-1, 0):  # the last decoder layer by default, and the first
        result = run(model, "cross-attention", x, targets, **({} if layer == -1 else {"layer": layer}))
        attention = out.cross_attentions[layer]  # B×heads×Q×N
        assert result.targets == targets and result.maps.shape == (images, 3, *size)
        assert result.heads.shape == (images, attention.shape[1], *size) == (images, 8, *size)
        for b in range(images):
            for t, k in enumerate(targets[b]):
                expected = to_maps(attention[b, :, k // classes].mean(0), grid, size)
                np.testing.assert_allclose(result.maps[b, t], expected, atol=1e-5)
            for head in range(attention.shape[1]):  # the first detection's query, per head
                np.testing.assert_allclose(result.heads[b, head],
                                           to_maps(attention[b, head, targets[b][0] // classes], grid, size), atol=1e-5)
        torch.testing.assert_close(result.logits, out.logits.flatten(1).detach())
    assert not np.allclose(result.maps[0, 0], result.maps[0, 1], atol=1e-3)  # another query: another map


def handle_residual(r):
    """Chefer et al.'s ``handle_residual`` (eqs. 8–9), literally: a zero row of ``R − I`` gives NaN."""
    r = r.clone() - torch.eye(r.shape[-1], dtype=r.dtype)
    return r / r.sum(dim=-1, keepdim=True) + torch.eye(r.shape[-1], dtype=r.dtype)


def chefer(out, b, q, c, guard_hits):
    """Row q of R_qi for detection (q, c) of image b, following ``Generator.generate_ours(use_lrp=False)``."""
    score = out.logits[b, q, c]
    enc, dec, cross = out.encoder_attentions, out.decoder_attentions, out.cross_attentions
    grads = torch.autograd.grad(score, [*enc, *dec, *cross], retain_graph=True)
    g_enc, g_dec, g_cross = grads[:len(enc)], grads[len(enc):len(enc) + len(dec)], grads[len(enc) + len(dec):]

    def avg_heads(cam, grad):  # rule 5
        return (grad[b] * cam[b].detach()).clamp(min=0).mean(dim=0)

    n, n_q = enc[0].shape[-1], dec[0].shape[-1]
    r_ii, r_qq, r_qi = torch.eye(n, dtype=torch.float64), torch.eye(n_q, dtype=torch.float64), \
        torch.zeros(n_q, n, dtype=torch.float64)
    for a, g in zip(enc, g_enc):
        r_ii = r_ii + avg_heads(a, g) @ r_ii
    for a_self, g_self, a_cross, g_cross_ in zip(dec, g_dec, cross, g_cross):
        cam = avg_heads(a_self, g_self)  # rules 6 + 7
        r_qq, r_qi = r_qq + cam @ r_qq, r_qi + cam @ r_qi
        addition = handle_residual(r_qq).t() @ (avg_heads(a_cross, g_cross_) @ handle_residual(r_ii))  # rule 10
        guard_hits.append(bool(torch.isnan(addition).any()))
        addition[torch.isnan(addition)] = 0
        r_qi = r_qi + addition
    return r_qi[q]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("images,size", SIZES)
def test_bimodal_rollout_equals_chefers_generator(models, family, images, size):
    model = models[family]
    x = torch.randn(images, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = targets_for(model, images)
    result = run(model, "bimodal-rollout", x, targets)
    out, grid = reference(model, x)
    classes = out.logits.shape[-1]
    assert result.maps.shape == (images, 3, *size) and result.heads is None
    guard_hits: list[bool] = []
    for b in range(images):
        for t, k in enumerate(targets[b]):
            row = chefer(out, b, k // classes, k % classes, guard_hits)
            assert row.abs().sum() > 0
            np.testing.assert_allclose(result.maps[b, t], to_maps(row, grid, size), atol=1e-5)
    assert not any(guard_hits)  # no zero rows: the comparison is with the reference's every update
    maps = result.maps.reshape(images * 3, -1)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)  # detections differ: the maps are query- and class-specific


def test_bimodal_rollout_keeps_the_update_where_the_reference_divides_by_zero():
    """One decoder layer: only the target query's row of its self-attention gets a gradient, so ``R_qq − I``
    has zero rows; the reference's NaN guard then drops the whole cross-attention update (its map is 0), while
    the method keeps those rows at 0 and the update of the target query's row."""
    model = detector("detr", decoder_layers=1, attn_implementation="eager").double().eval()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    classes = model.class_labels_classifier.out_features
    q, c = 2, 1
    result = run(model, "bimodal-rollout", x, [[q * classes + c]])
    out, grid = reference(model, x)
    guard_hits: list[bool] = []
    assert chefer(out, 0, q, c, guard_hits).abs().sum() == 0 and guard_hits == [True]
    # by hand for one layer: the other queries' rows of R̄_qq are the identity's, so only row q of R̄_qqᵀ counts
    grads = torch.autograd.grad(out.logits[0, q, c], [*out.encoder_attentions, out.decoder_attentions[0],
                                                       out.cross_attentions[0]], retain_graph=True)
    cams = [(g[0] * a[0].detach()).clamp(min=0).mean(0)
            for a, g in zip([*out.encoder_attentions, out.decoder_attentions[0], out.cross_attentions[0]], grads)]
    r_ii = torch.eye(cams[0].shape[-1], dtype=torch.float64)
    for cam in cams[:-2]:
        r_ii = r_ii + cam @ r_ii
    self_q = cams[-2][q]
    norm_ii = (r_ii - torch.eye(len(r_ii))) / (r_ii - torch.eye(len(r_ii))).sum(-1, keepdim=True) + torch.eye(len(r_ii))
    row = (1 + self_q[q] / self_q.sum()) * (cams[-1][q] @ norm_ii)
    np.testing.assert_allclose(result.maps[0, 0], to_maps(row, grid, (64, 96)), atol=1e-5)


def _state(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
            model.config._attn_implementation, {n: p.detach().clone() for n, p in model.named_parameters()})


def _same(a, b):
    return a[:4] == b[:4] and all(torch.equal(a[4][n], b[4][n]) for n in a[4])


@pytest.mark.parametrize("family", FAMILIES)
def test_through_explain_on_the_image_and_the_users_model_is_left_as_it_was(family):
    model = detector(family)  # the user's model: SDPA, training mode, some parameters frozen
    model.train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    before = _state(model)
    assert before[3] == ("eager" if family == "table-transformer" else "sdpa")
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    x = PROCESSOR(images=image, return_tensors="pt")["pixel_values"]
    for method in ("cross-attention", "bimodal-rollout"):
        e = explain(model, image, method=method, processor=PROCESSOR, threshold=0.0, top_k=3)
        assert _same(_state(model), before), method
        assert e.heatmaps.shape == (3, 60, 90) and np.isfinite(e.heatmaps).all() and e.boxes is not None
        assert e.heatmaps.max() > 0.9 and e.method == method
        if method == "cross-attention":  # on the image: the model-input map through the processor's geometry
            assert e.heads.shape == (8, 60, 90) and e.target_layers == ["model.decoder.layers.1.encoder_attn"]
            twin = detector(family, attn_implementation="eager").eval()  # the same weights, eager
            assert all(torch.equal(p, before[4][n]) for n, p in twin.named_parameters())
            out, grid = reference(twin, x)
            for t, k in enumerate(e.indices):
                query = k // out.logits.shape[-1]
                expected = e.geometry.to_image(to_maps(out.cross_attentions[-1][0, :, query].mean(0), grid,
                                                       tuple(x.shape[-2:]))[None])[0][0]
                np.testing.assert_allclose(e.heatmaps[t], expected, atol=1e-4)
        else:
            assert e.heads is None and len(e.target_layers) == 6  # 2 encoder, 2 decoder self-, 2 cross-attention
    with pytest.raises(RecipeError, match="layer must be"):
        explain(model, image, method="cross-attention", processor=PROCESSOR, threshold=0.0, layer=2)
    assert _same(_state(model), before)


def test_classifiers_are_told_these_methods_need_a_detectors_queries():
    model = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64)).eval()
    recipe = find_recipe(model)
    methods = describe(model).methods
    for name in ("cross-attention", "bimodal-rollout"):
        why = get_method(name).why_not(model, recipe)
        assert why is not None and "declares no queries" in why and "object queries" in why and methods[name] == why
        with pytest.raises(MethodNotApplicableError, match="queries"):
            explain(model, np.zeros((32, 32, 3), np.uint8), method=name, processor=T.ViTImageProcessor(
                size={"height": 32, "width": 32}))
    detr = detector("detr")
    assert all(get_method(n).why_not(detr, find_recipe(detr)) is None for n in ("cross-attention", "bimodal-rollout"))
