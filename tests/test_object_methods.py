"""Every registered method on every detector and segmenter family either explains or says why not.

The sweep: one tiny random model per family (the builders of test_detection, test_zero_shot_detection and
test_segmentation, in float32 for speed) and every method of ``xai_recipes.list_methods()`` with cheap
options, two targets each. Each pair either gives two finite maps of the picture's size, or raises
:class:`MethodNotApplicableError` up front with the very reason ``describe()`` lists for it (never an
untyped exception). Which pairs do not apply is pinned (:data:`NOT_APPLICABLE`), and so are the maps that
come out flat on these random models (:data:`FLAT`).

The fixes behind the sweep, each against a reference: ShapleyCAM on DETR-style detectors (grad-cam's
``release()`` cannot detach a gradient that is a view), FullGrad on RT-DETR and ResNets (grad-cam pairs
biases and gradients by order; here by layer: equal to the literal FullGrad sum), Score-CAM on segmenters
(its masked passes ran in inference mode, where the segment scores cannot take their own gradient),
Ablation-CAM on DPT (a fusion layer called with two inputs).

Processors that pad (OWLv2 pads a non-square image to a square with grey; a centred padding): the geometry
is measured where the image is, so a dot maps back to itself and a map on the padding stays off the image
(explain() on OWLv2 with a non-square picture: tests/test_zero_shot_detection.py).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import cv2
import numpy as np
import pytest
import test_detection as D
import test_segmentation as S
import test_zero_shot_detection as Z
import torch
import transformers as T
from PIL import Image
from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import xai_recipes
from xai_recipes import LogitsModel, MethodNotApplicableError, XAIRecipesError, explain
from xai_recipes.geometry import measure
from xai_recipes.method import Batch
from xai_recipes.modelstate import borrowed

def owl_with_letters() -> tuple[nn.Module, T.OwlViTProcessor]:
    """test_zero_shot_detection's random OWL-ViT with a tokenizer built without training: one token per letter (and
    per word-final letter), the end token the last of the model's 60 ids. (Its own tokenizer is trained, and the
    trained merges, so the prompts' ids and every score, differ from one process to the next.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"!": 0, "<unk>": 1, "<|startoftext|>": 2}
    for letter in sorted(set("".join(Z.WORDS))):
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    vocab["<|endoftext|>"] = 59
    letters = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", end_of_word_suffix="</w>"))
    letters.pre_tokenizer = pre_tokenizers.Whitespace()
    letters.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 59)])
    tokenizer = T.CLIPTokenizerFast(tokenizer_object=letters, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                    pad_token="!", unk_token="<unk>", model_max_length=16)
    model, image_processor, _ = Z.random_owl("owlvit")
    return model, T.OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)


#: Smaller inputs where the 64×64 ones are slow: grad-cam's Eigen-CAM takes a full SVD of DPT's 64×64 fused map (a
#: 4096² U), and MobileNetV2's 256 projected channels cost Score-CAM and Ablation-CAM a forward each. At these sizes
#: both still predict two classes or more on the picture.
SMALLER = {"dpt": lambda: T.DPTImageProcessor(size={"height": 32, "width": 32}),
           "mobilenet_v2": lambda: T.MobileNetV2ImageProcessor(size={"shortest_edge": 44},
                                                               crop_size={"height": 40, "width": 40})}
#: family -> () -> (model, processor, picture, explain keywords)
FAMILIES = {
    "detr": lambda: (*D.random_detr(), D.picture(), {"threshold": 0.0}),
    "deformable_detr": lambda: (*D.random_deformable(), D.picture(), {"threshold": 0.0}),
    "rt_detr": lambda: (*D.random_rt_detr(), D.picture(), {"threshold": 0.0}),
    "yolos": lambda: (*D.random_yolos(), D.picture(), {"threshold": 0.0}),
    "owlvit": lambda: (*owl_with_letters(), Z.picture(), {"threshold": 0.0, "labels": Z.PROMPTS}),
    **{family: (lambda f=family: (S.family_model(f), SMALLER.get(f, S.FAMILIES[f][1])(), S.PICTURE, {}))
       for family in ("upernet-convnext", "dpt", "beit", "mobilevit", "mobilenet_v2")},  # upernet .. deeplabv3plus
    **{family: (lambda f=family: (*S.mask_classifier(f), S.PICTURE, {})) for family in ("mask2former", "maskformer")},
}
METHODS = xai_recipes.list_methods()
#: The cheapest settings of each option that still exercises the method.
CHEAP = dict(n_steps=4, nt_samples=2, n_samples=8, segments=8, num_scales=2, n_components=2, window=16, stride=16)

ATTENTION = {"attention", "rollout", "gradient-rollout", "legrad"}  # none of these recipes declares attention
NOT_A_CLASSIFIER = {"dff", "patch-contributions"}  # the object tasks refuse them
QUERIES = {"cross-attention", "bimodal-rollout"}  # only the detr recipe declares queries
NO_RELU = {"guided-backprop", "guided-gradcam"}  # transformers with GELU only
SEGMENTS = ATTENTION | NOT_A_CLASSIFIER | QUERIES | {"finercam"}  # the segmentation task refuses finercam
NOT_APPLICABLE = {
    "detr": ATTENTION | NOT_A_CLASSIFIER,
    "deformable_detr": ATTENTION | NOT_A_CLASSIFIER | QUERIES,
    "rt_detr": ATTENTION | NOT_A_CLASSIFIER | QUERIES,
    "yolos": ATTENTION | NOT_A_CLASSIFIER | QUERIES | NO_RELU | {"shapleycam"},  # tokens reshaped to maps
    "owlvit": ATTENTION | NOT_A_CLASSIFIER | QUERIES | NO_RELU | {"shapleycam", "fullgrad"},  # no biased conv/BN
    **{family: SEGMENTS for family in ("upernet-convnext", "dpt", "beit", "mobilevit", "mobilenet_v2", "mask2former",
                                       "maskformer")},
}
#: Pairs with a map that comes out constant (0) on these random models with the cheap options, each for a reason of
#: its own: LIME's eight samples fit no weight (Captum's Lasso); where the weighted channels sum to < 0 everywhere,
#: the ReLU leaves 0 (KPCA-CAM's component, its sign arbitrary; Ablation-CAM on MobileNetV2, the score rising
#: without most channels; Random-CAM's random weights, numpy seeded 0, for one of the two targets; Finer-CAM's
#: contrast of one detection with the three nearest flat logits, other queries'); Guided Grad-CAM on RT-DETR for
#: one detection, whose Grad-CAM (320 input pixels) and guided gradient (1945) do not overlap.
FLAT = {("deformable_detr", "lime"), ("yolos", "lime"), ("dpt", "lime"), ("dpt", "kpca-cam"),
        ("mobilenet_v2", "ablationcam"), ("rt_detr", "randomcam"), ("mobilenet_v2", "randomcam"), ("detr", "finercam"),
        ("rt_detr", "finercam"), ("rt_detr", "guided-gradcam")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine their threads' waiting costs 10× (the
    sweep: about 15 s on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@lru_cache(maxsize=None)
def family(name: str):
    model, processor, picture, kwargs = FAMILIES[name]()
    return model.float(), processor, picture, kwargs


@lru_cache(maxsize=None)
def described(name: str) -> dict[str, str]:
    return xai_recipes.describe(family(name)[0]).methods


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_method_explains_or_says_why_not(name, method):
    model, processor, picture, kwargs = family(name)
    options = {k: v for k, v in CHEAP.items() if k in xai_recipes.methods_table()[method].options}
    why = described(name)[method]
    if method in NOT_APPLICABLE[name]:
        assert why != "ok"
        with pytest.raises(MethodNotApplicableError) as error:
            explain(model, picture, processor=processor, method=method, top_k=2, **kwargs, **options)
        assert why in str(error.value)
        return
    assert why == "ok"
    np.random.seed(0)  # Random-CAM draws its weights from numpy's generator
    try:
        exp = explain(model, picture, processor=processor, method=method, top_k=2, **kwargs, **options)
    except XAIRecipesError as error:  # typed, but none is expected: it would name a bug or a missing check
        pytest.fail(f"{name} × {method}: {type(error).__name__}: {error}")
    maps = np.asarray(exp.heatmaps)
    assert maps.shape == (2, picture.height, picture.width)
    assert np.isfinite(maps).all()
    assert (np.ptp(maps, axis=(1, 2)).min() < 1e-6) == ((name, method) in FLAT), np.ptp(maps, axis=(1, 2))  # any flat


# ---- the fixes, against references ----------------------------------------------------------------------


def detector_input(name: str) -> tuple[nn.Module, object, torch.Tensor]:
    """A random float64 detector, its recipe with the object-detection task's scores (the logits ``B×Q×C'``
    flattened to ``B×(Q·C')``), and the picture as its input."""
    model, processor = {"detr": D.random_detr, "deformable_detr": D.random_deformable, "rt_detr": D.random_rt_detr}[name]()
    x = processor(images=D.picture(), return_tensors="pt")["pixel_values"].double()
    recipe = xai_recipes.find_recipe(model)
    return model, replace(recipe, logits=lambda output: recipe.logits(output).flatten(1)), x


@pytest.mark.parametrize("name", ["detr", "deformable_detr", "rt_detr"])
def test_shapleycam_on_detr_style_detectors_is_grad_cams_own(name):
    """It raised in grad-cam's ``release()`` (a gradient that is a view cannot be detached in place); the maps
    were grad-cam's all along."""
    import pytorch_grad_cam

    model, recipe, x = detector_input(name)
    targets = [[3, 7]]
    method = xai_recipes.get_method("shapleycam")
    assert method.eager_attention  # a Hessian-vector product: SDPA has no double backward
    with borrowed(model, eager_attention=True):
        got = np.asarray(method.run(Batch(model, recipe, x, lambda logits: targets, 2, {})).maps)[0]
        cam = pytorch_grad_cam.ShapleyCAM(LogitsModel(model, recipe), list(recipe.target_layers(model)))
        try:
            expected = cam(x.repeat(2, 1, 1, 1), [ClassifierOutputTarget(t) for t in targets[0]])
        finally:
            cam.activations_and_grads.gradients.clear()  # grad-cam's own release() would raise here
            cam.activations_and_grads.release()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.std() > 1e-3
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def fullgrad_reference(wrapped: nn.Module, model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """FullGrad (Srinivas & Fleuret 2019) as grad-cam computes it, with each Conv2d / BatchNorm2d bias paired with
    the gradient of that layer's own output: |x · ∂f/∂x| per channel plus Σ_layers Σ_channels |b · ∂f/∂out|, each
    term min-max scaled per image and channel and resized to the input, summed, then scaled per image."""
    layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o))) for m in layers]
    rows = x.repeat(len(targets), 1, 1, 1).requires_grad_(True)
    try:
        logits = wrapped(rows)
    finally:
        for h in hooks:
            h.remove()
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    grads = torch.autograd.grad(score, [rows] + [o for _, o in outputs])
    size = (x.shape[-1], x.shape[-2])
    terms = [scale_accross_batch_and_channels(np.abs((grads[0] * rows).detach().numpy()), size)]
    for (m, _), g in zip(outputs, grads[1:]):
        bias = m.bias if isinstance(m, nn.Conv2d) else m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        term = np.abs(bias.detach().numpy()[None, :, None, None] * g.numpy())
        terms.append(scale_accross_batch_and_channels(term, size).sum(1, keepdims=True))
    return scale_cam_image(np.concatenate(terms, 1).sum(1))


@pytest.mark.parametrize("name", ["detr", "rt_detr", "resnet"])
def test_fullgrad_pairs_each_bias_with_its_own_layers_gradient(name):
    """grad-cam pairs its biases (registration order) with its gradients (the backward's order): on RT-DETR, whose
    hybrid encoder runs modules registered later first, the shapes clashed; on a ResNet (the shortcut's BatchNorm is
    registered before, run after the main branch) it silently paired the wrong ones."""
    if name == "resnet":
        from conftest import tiny_model

        model = tiny_model("resnet").double()
        recipe, x = xai_recipes.find_recipe(model), torch.randn(1, 3, 64, 64, dtype=torch.float64,
                                                                generator=torch.Generator().manual_seed(0))
    else:
        model, recipe, x = detector_input(name)
    targets = [1, 3]
    method = xai_recipes.get_method("fullgrad")
    got = np.asarray(method.run(Batch(model, recipe, x, lambda logits: [targets], 2, {})).maps)[0]
    np.testing.assert_allclose(got, fullgrad_reference(LogitsModel(model, recipe), model, x, targets), atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


class OwnRegions(nn.Module):
    """The image-segmentation task's scores ``B×C``: each class's logits, upsampled to the input (bilinear), summed
    over the class's own predicted region on that input (on a perturbed input, its own prediction)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.logits = S.UpsampledLogits(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        pred = logits.detach().argmax(1)
        return torch.stack([(logits[:, c] * (pred == c)).flatten(1).sum(1) for c in range(logits.shape[1])], 1)


def test_scorecam_on_a_segmenter_is_its_formula_on_the_segment_scores():
    """Score-CAM's masked passes ran in inference mode, where the segment scores cannot take the gradient of their
    upsampling's adjoint: now without gradients but not in inference mode. Reference: Score-CAM's formula (Wang et
    al. 2020, as grad-cam: masks = the layer's channels upsampled and min-max scaled, weights = softmax over channels
    of the target's score on the masked input) on the task's own scores (:class:`OwnRegions`)."""
    from pytorch_grad_cam import ScoreCAM

    model, processor = S.family_model("mobilevit"), S.FAMILIES["mobilevit"][1]()
    exp = explain(model, S.SQUARE, processor=processor, method="scorecam", top_k=2)
    x = S.pixels(processor, Image.fromarray(S.SQUARE))
    layer = model.get_submodule("segmentation_head.aspp")
    with ScoreCAM(OwnRegions(model), [layer]) as cam:
        cam.batch_size = 64
        expected = cam(x.expand(2, *x.shape[1:]), [ClassifierOutputTarget(c) for c in exp.indices])
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(expected)[0], atol=1e-4)
    assert exp.heatmaps[0].std() > 1e-3


def test_ablationcam_stands_in_for_a_layer_that_takes_two_inputs():
    """DPT's fusion layers take the fused map and a residual: grad-cam's AblationLayer took one. The maps are grad-cam's
    AblationCAM with a layer that takes any inputs, on the segment scores (:class:`OwnRegions`)."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer

    class AnyInputs(AblationLayer):
        def __call__(self, x, *args, **kwargs):
            return super().__call__(x)

    model, processor = S.family_model("dpt"), S.FAMILIES["dpt"][1]()
    exp = explain(model, S.SQUARE, processor=processor, method="ablationcam", top_k=2)
    x = S.pixels(processor, Image.fromarray(S.SQUARE))
    layer = model.get_submodule("neck.fusion_stage.layers.3")
    with AblationCAM(OwnRegions(model), [layer], ablation_layer=AnyInputs()) as cam:
        cam.batch_size = 32
        with torch.no_grad():
            expected = cam(x.expand(2, *x.shape[1:]), [ClassifierOutputTarget(c) for c in exp.indices])
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(expected)[0], atol=1e-4)
    assert exp.heatmaps[0].std() > 1e-3
    assert model.get_submodule("neck.fusion_stage.layers.3") is layer


def test_finercam_on_a_segmenter_says_why_not():
    model, processor = S.family_model("beit"), S.FAMILIES["beit"][1]()
    why = xai_recipes.describe(model).methods["finercam"]
    assert "softmax" in why and "use gradcam" in why
    with pytest.raises(MethodNotApplicableError, match="softmax"):
        explain(model, S.PICTURE, processor=processor, method="finercam")


# ---- padding processors: OWLv2 and a centred one ---------------------------------------------------------


def owlv2_processor() -> T.Owlv2ImageProcessor:
    return T.Owlv2ImageProcessor(size={"height": 32, "width": 32})


class CentredPad:
    """A tiny processor that pads the image to a square with a constant, centred, then resizes to 40×40 (bilinear)."""

    def __call__(self, images: Image.Image, return_tensors: str = "np") -> dict[str, np.ndarray]:
        a = np.asarray(images.convert("RGB"), np.float32) / 255
        h, w = a.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = np.full((side, side, 3), 0.5, np.float32)
        square[top : top + h, left : left + w] = a
        out = cv2.resize(square, (40, 40), interpolation=cv2.INTER_AREA)
        return {"pixel_values": ((out - 0.5) / 0.25).transpose(2, 0, 1)[None]}


def preprocess(processor):
    return lambda image: processor(images=image, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("processor,size,exact", [
    (owlv2_processor(), (60, 80), ((2.5, 2.5), (0.75, 0.75))),  # padded at the bottom to 80×80, resized to 32×32
    (owlv2_processor(), (80, 60), ((2.5, 2.5), (0.75, 0.75))),  # at the right
    (CentredPad(), (50, 100), None),  # 25 grey rows above and below, 2.5 image pixels per input pixel
])
def test_a_padding_processors_geometry_round_trips(processor, size, exact):
    geometry = measure(preprocess(processor), size)
    if exact is not None:
        assert (geometry.scale, geometry.offset) == exact
    H, W = size
    rng = np.random.default_rng(0)
    for _ in range(6):  # a bright dot lands where the geometry says, and a map there lands on it
        cy, cx = int(rng.integers(4, H - 4)), int(rng.integers(4, W - 4))
        image = np.zeros((H, W, 3), np.uint8)
        image[cy - 2 : cy + 3, cx - 2 : cx + 3] = 255
        seen = preprocess(processor)(Image.fromarray(image))[0].mean(0)
        v, u = np.unravel_index(np.argmax(seen), seen.shape)
        (sy, sx), (oy, ox) = geometry.scale, geometry.offset
        assert abs(sx * u + ox - cx) <= sx and abs(sy * v + oy - cy) <= sy, ((u, v), (cx, cy))
        delta = np.zeros((1, *geometry.input_size), np.float32)
        delta[0, v, u] = 1
        back, _ = geometry.to_image(delta)
        py, px = np.unravel_index(np.argmax(back[0]), back[0].shape)
        assert abs(px - cx) <= sx + 1 and abs(py - cy) <= sy + 1
    # the padding: the input pixels black and white leave alike are not the image, and a map there stays off it
    black = preprocess(processor)(Image.new("RGB", (W, H)))[0]
    white = preprocess(processor)(Image.new("RGB", (W, H), (255, 255, 255)))[0]
    changes = np.abs(white - black).min(0)
    shown = geometry.input_coverage()
    assert (~shown).sum() > 0.2 * shown.size
    assert (changes[~shown] < 0.5 * changes.max()).all() and (changes[shown] > 0.5 * changes.max()).all()
    on_padding, coverage = geometry.to_image((~shown)[None].astype(np.float32))
    assert on_padding.max() == 0
    assert coverage[1:-1, 1:-1].all()  # every pixel of the image is seen (the corners: bilinear weight 0.49)
    on_image, _ = geometry.to_image(shown[None].astype(np.float32))
    np.testing.assert_allclose(on_image[0, 2:-2, 2:-2], 1, atol=1e-6)
