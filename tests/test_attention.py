"""Attention methods: each equals an independent reference computation, on random models with
CLS (ViT), CLS + distillation (DeiT), CLS + register (DINOv2 with registers) and register + GAP
(timm) tokens, at two input sizes; the user's model is left exactly as it was, also when 8
threads share it; methods that cannot apply say why, typed.

The references read the attention probabilities the way a user would — ``output_attentions=True``
under eager attention, ``output_hidden_states=True`` for block outputs — and apply the papers'
formulas with plain loops, one backward pass per target.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import transformers as T
from conftest import tiny_model

import xai_recipes
from xai_recipes import Batch, MethodNotApplicableError, XAIRecipesError, explain, get_method

LABELS = {"id2label": {i: f"class {i}" for i in range(4)}, "label2id": {f"class {i}": i for i in range(4)}}
# initializer_range 0.2: attention far from uniform, so the maps have structure to compare
SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             initializer_range=0.2)
SIZES = [(32, 32), (40, 56)]  # model input sizes: square, and non-square with another grid


def _hf(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return T.ViTForImageClassification(T.ViTConfig(**SMALL, **LABELS)).eval()
    if kind == "deit":  # CLS + distillation token; the classifier reads the CLS token
        return T.DeiTForImageClassification(T.DeiTConfig(**SMALL, **LABELS)).eval()
    if kind == "dinov2_reg":  # CLS + 4 registers; the head reads CLS and the patch mean
        cfg = T.Dinov2WithRegistersConfig(**{k: v for k, v in SMALL.items() if k != "intermediate_size"},
                                          num_register_tokens=4, **LABELS)
        return T.Dinov2WithRegistersForImageClassification(cfg).eval()
    raise KeyError(kind)


def _timm_gap():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=3,
                            num_heads=4, reg_tokens=4, global_pool="avg", class_token=False, num_classes=4,
                            dynamic_img_size=True)
    with torch.no_grad():  # peakier attention than timm's init gives, so the maps have structure to compare
        for block in vit.blocks:
            block.attn.qkv.weight.mul_(4)
    return xai_recipes.wrap_timm_model(vit.eval(), labels=[f"class {i}" for i in range(4)])[0]


MODELS = ["vit", "deit", "dinov2_reg", "timm_gap"]


@pytest.fixture(scope="module")
def models():
    """In float64: the maps are min-max scaled, which magnifies float32 rounding (1e-4 on near-uniform maps)."""
    return {k: (_timm_gap() if k == "timm_gap" else _hf(k)).double() for k in MODELS}


def run(model, method: str, size, targets, **options):
    """Our method on a random image of ``size``: the raw B×T×H×W maps (B = 2 images)."""
    recipe = xai_recipes.find_recipe(model)
    m = get_method(method)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3)).to(next(model.parameters()).dtype)
    batch = Batch(model, recipe, x, lambda logits: [list(targets)] * len(logits), options={**m.options, **options})
    from xai_recipes.modelstate import borrowed

    with borrowed(model, eager_attention=True):
        return x, recipe, m.run(batch)


def reference_attentions(model, x, recipe, grad=False):
    """Per-block probabilities and block outputs, read through the model's own outputs where it has
    them (HF: output_attentions / output_hidden_states), else timm's unfused attention re-computed."""
    from xai_recipes.modelstate import borrowed

    with borrowed(model, eager_attention=True), torch.set_grad_enabled(grad):
        x = x.clone().requires_grad_(grad)
        if hasattr(model, "timm_model"):
            vit, attns, hidden = model.timm_model, [], []
            handles = [b.attn.attn_drop.register_forward_hook(lambda m, a, o: attns.append(o)) for b in vit.blocks]
            handles += [b.register_forward_hook(lambda m, a, o: hidden.append(o)) for b in vit.blocks]
            logits = model(pixel_values=x).logits
            for h in handles:
                h.remove()
            return logits, attns, hidden
        out = model(pixel_values=x, output_attentions=True, output_hidden_states=True, **recipe.forward_kwargs)
        return out.logits, list(out.attentions), list(out.hidden_states[1:])


def to_maps(relevance: torch.Tensor, prefix: int, size) -> np.ndarray:
    """Key relevances (…×K) → maps on the input, each min-max scaled, as a reader would draw them."""
    keys = relevance[..., prefix:]
    n = keys.shape[-1]
    for s in range(1, 64):
        h, w = -(-size[0] // s), -(-size[1] // s)
        if h * w == n:
            break
        h, w = size[0] // s, size[1] // s
        if h * w == n:
            break
    maps = torch.nn.functional.interpolate(keys.reshape(-1, 1, h, w).double(), size=size, mode="bilinear")[:, 0]
    flat = maps.flatten(1)
    maps = (maps - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values)[:, None, None]
    return maps.reshape(*keys.shape[:-1], *size).detach().numpy()


def readout_rows(a: torch.Tensor, readout, prefix: int) -> torch.Tensor:
    return a[..., prefix:, :].mean(-2) if readout is None else a[..., list(readout), :].mean(-2)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", MODELS)
def test_attention_is_the_models_own_last_layer_readout_attention_per_head(models, kind, size):
    model = models[kind]
    x, recipe, result = run(model, "attention", size, [1, 2])
    _, attentions, _ = reference_attentions(model, x, recipe)
    spec = recipe.attention
    prefix = {"vit": 1, "deit": 2, "dinov2_reg": 5, "timm_gap": 4}[kind]  # CLS / +distillation / +registers
    assert spec.prefix(model) == prefix
    rows = readout_rows(attentions[-1], spec.readout, prefix)  # B×heads×K
    np.testing.assert_allclose(result.heads, to_maps(rows, prefix, size), atol=1e-5)
    np.testing.assert_allclose(result.maps[:, 0], to_maps(rows.mean(1), prefix, size), atol=1e-5)
    np.testing.assert_array_equal(result.maps[:, 0], result.maps[:, 1])  # class-agnostic
    assert not np.allclose(result.heads[:, 0], result.heads[:, 1])


def paper_rollout(attentions, residual=True):
    """Abnar & Zuidema: Ã = ½A + ½I (mean over heads), rows normalised, multiplied from the first block up."""
    joint = None
    for a in attentions:
        a = a.mean(1).double()
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else torch.einsum("bij,bjk->bik", a, joint)
    return joint


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", MODELS)
def test_rollout_equals_the_papers_formula(models, kind, size):
    model = models[kind]
    x, recipe, result = run(model, "rollout", size, [0])
    _, attentions, _ = reference_attentions(model, x, recipe)
    spec, prefix = recipe.attention, recipe.attention.prefix(model)
    expected = to_maps(readout_rows(paper_rollout(attentions), spec.readout, prefix), prefix, size)
    np.testing.assert_allclose(result.maps[:, 0], expected, atol=1e-5)
    _, _, no_residual = run(model, "rollout", size, [0], residual=False)
    assert not np.allclose(no_residual.maps, result.maps, atol=1e-3)


def test_rollout_head_fusion_and_discard_change_the_map(models):
    model, base = models["vit"], run(models["vit"], "rollout", (32, 32), [0])[2].maps
    for options in ({"head_fusion": "max"}, {"head_fusion": "min"}, {"discard_ratio": 0.9}):
        assert not np.allclose(run(model, "rollout", (32, 32), [0], **options)[2].maps, base, atol=1e-3), options
    with pytest.raises(XAIRecipesError, match="head_fusion"):
        run(model, "rollout", (32, 32), [0], head_fusion="median")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", MODELS)
def test_gradient_rollout_equals_chefers_formula_one_backward_per_target(models, kind, size):
    model = models[kind]
    targets = [3, 1]
    x, recipe, result = run(model, "gradient-rollout", size, targets)
    spec, prefix = recipe.attention, recipe.attention.prefix(model)
    for t_index, target in enumerate(targets):
        logits, attentions, _ = reference_attentions(model, x, recipe, grad=True)
        grads = torch.autograd.grad(logits[:, target].sum(), attentions)
        n = attentions[0].shape[-1]
        relevance = torch.eye(n, dtype=x.dtype).repeat(len(x), 1, 1)
        for a, g in zip(attentions, grads):  # Chefer et al.: R += mean_h((∇A ⊙ A)⁺) R
            cam = (g * a).clamp(min=0).mean(1)
            relevance = relevance + torch.bmm(cam, relevance)
        expected = to_maps(readout_rows(relevance, spec.readout, prefix), prefix, size)
        np.testing.assert_allclose(result.maps[:, t_index], expected, atol=1e-4)
    assert not np.allclose(result.maps[:, 0], result.maps[:, 1], atol=1e-3)  # class-specific


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["vit", "deit", "timm_gap"])
def test_legrad_equals_per_layer_score_gradients(models, kind, size):
    """LeGrad: for each block l, s_l = head(norm(pool(z_l))); map = Σ_l mean_{h,q}(∂s_l/∂A_l)⁺ on the patch keys."""
    model = models[kind]
    targets = [2, 0]
    x, recipe, result = run(model, "legrad", size, targets)
    prefix = recipe.attention.prefix(model)
    for t_index, target in enumerate(targets):
        _, attentions, hidden = reference_attentions(model, x, recipe, grad=True)
        if kind == "timm_gap":
            vit = model.timm_model
            scores = [vit.head(vit.fc_norm(z[:, vit.num_prefix_tokens:].mean(1))) for z in hidden]
        elif kind == "vit":
            scores = [model.classifier(model.vit.layernorm(z)[:, 0]) for z in hidden]
        else:
            scores = [model.classifier(model.deit.layernorm(z)[:, 0]) for z in hidden]
        total = 0
        for a, s in zip(attentions, scores):
            (g,) = torch.autograd.grad(s[:, target].sum(), [a], retain_graph=True)
            total = total + g.clamp(min=0).mean((1, 2))
        np.testing.assert_allclose(result.maps[:, t_index], to_maps(total, prefix, size), atol=1e-4)


def _state(model):
    return ({n: m.training for n, m in model.named_modules()}, {n: p.requires_grad for n, p in model.named_parameters()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
            [(type(m).__name__, getattr(m, "fused_attn", None)) for m in model.modules()],
            getattr(getattr(model, "config", None), "_attn_implementation", None))


@pytest.mark.parametrize("kind", ["vit", "timm_gap"])
def test_the_users_model_is_left_exactly_as_it_was_also_with_8_threads(models, kind):
    model = models[kind]
    model.train()  # a user's model in training mode, some parameters frozen
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    processor = T.ViTImageProcessor(size={"height": 32, "width": 32})
    before = _state(model)
    assert before[4] in (None, "sdpa")
    images = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(8)]
    serial = {}
    for method in ("attention", "rollout", "gradient-rollout", "legrad", "gradcam"):
        serial[method] = [explain(model, im, method=method, processor=processor, target=1).heatmaps for im in images]
        assert _state(model) == before, method
    results: dict[tuple[str, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for method in serial:
                results[method, i] = explain(model, images[i], method=method, processor=processor, target=1).heatmaps
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (method, i), maps in results.items():
        # gradcam may run while another thread holds eager attention on: eager and SDPA agree to rounding
        np.testing.assert_allclose(maps, serial[method][i], atol=1e-4, err_msg=method)
    assert _state(model) == before
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)


def test_methods_that_cannot_apply_say_why_and_what_instead():
    resnet, swin, cvt = tiny_model("resnet"), tiny_model("swin"), tiny_model("cvt")
    img = np.zeros((64, 64, 3), np.uint8)
    processor = T.ViTImageProcessor(size={"height": 64, "width": 64})
    with pytest.raises(MethodNotApplicableError, match="declares no attention.*gradcam"):
        explain(resnet, img, processor=processor, method="rollout")
    with pytest.raises(MethodNotApplicableError, match="windows.*gradcam"):
        explain(swin, img, processor=processor, method="legrad")
    with pytest.raises(MethodNotApplicableError, match="attention or legrad"):
        explain(cvt, img, processor=processor, method="gradient-rollout")
    with pytest.raises(XAIRecipesError, match="takes no option 'head_fusion'"):
        explain(resnet, img, processor=processor, method="gradcam", head_fusion="max")
    described = xai_recipes.describe(swin)
    assert described.methods["gradcam"] == "ok" and "windows" in described.methods["attention"]
    assert xai_recipes.describe(cvt).methods["legrad"] == "ok"
    vit = xai_recipes.describe(tiny_model("vit"))
    assert vit.default_method == "gradient-rollout" and vit.attention == [f"vit.layers.{i}.attention" for i in range(3)]
    assert any(line.split() == ["default_method", "gradient-rollout"] for line in str(vit).splitlines())


def test_explain_without_a_method_uses_the_recipes_default_and_gradcam_stays_one_keyword_away():
    vit = tiny_model("vit")
    processor = T.ViTImageProcessor(size={"height": 64, "width": 64})
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert explain(vit, img, processor=processor).method == "gradient-rollout"
    assert explain(vit, img, processor=processor, method="gradcam").method == "gradcam"
    assert explain(tiny_model("resnet"), img, processor=processor).method == "gradcam"


def test_cvt_attention_is_read_from_its_hooked_dropout_over_reduced_keys():
    """HF CvT returns no attentions: the recipe hooks the probabilities; its keys are the 2×-reduced grid."""
    model = tiny_model("cvt")
    x, recipe, result = run(model, "attention", (64, 64), [0])
    assert result.heads.shape == (2, 4, 64, 64)  # 4 heads of the last stage
    legrad = run(model, "legrad", (64, 64), [0, 1])[2]
    assert legrad.maps.shape == (2, 2, 64, 64) and not np.allclose(legrad.maps[:, 0], legrad.maps[:, 1])
