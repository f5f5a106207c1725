"""Are the heatmaps right? Peaks on the object for trained models, a random map's not.

The tiny models under tests/trained/ were trained by tests/trained/train.py on the synthetic task
(class = which shape, anywhere on grey clutter), each saved with its family's real processor type
(centre-crops, RGB→BGR flip). Held-out images here have other sizes and aspect ratios than the
model input, so the resize/crop geometry must be mapped back right for a peak to land.

Measured on these models (60 held-out images, share of GradCAM peaks on the object), see
``NOT_LOCALISED`` below. Where GradCAM does not localise, the reason is the model, not the plumbing:
their last stage mixes globally (attention) and spreads the class over every position, so *every*
last-layer map is flat there (an occlusion check confirms the models do look at the object:
erasing it drops accuracy to chance). On the trained
SegFormer the final tokens classify the image on their own as well off the object (95 %) as on it
(79 %): the mean-pooled head reads the class mostly from background tokens, and its exact CAM shows
that. HiResCAM, GradCAM++, LayerCAM, the log-softmax as target and every block of the last stage
were tried on these models: none reaches 0.8 (early layers do under HiResCAM: ConvNeXt stage 0, 0.90).
Retraining with 2–3 objects and area-share labels, stochastic depth, coloured clutter, larger or
smaller objects, a 128 px input, no weight decay, label smoothing or earlier stopping did not
either (best: ConvNeXt 0.55 on coloured clutter); MobileViT did, with label smoothing 0.1 and no
weight decay (see train.py; 0.88 / 0.75 / 0.72 over three seeds, 0.67 before).
On the CLS-token families (ViT, CvT) the *model* does look at the object: the last block's CLS
attention peaks on a patch whose centre is within half a patch of the object's box in 60/60 test
images at the model's input size (ViT). GradCAM cannot show that: its channel weights are the
gradient averaged over all tokens, so its map is each token's value projected on the class
direction whether the CLS token attends to it or not. Even one-block models, whose target tokens
are the local patch embeddings, stay low (ViT 0.53, CvT 0.43),
and a 4-pixel-patch ViT gives 0.50 (HiResCAM, which keeps the per-token gradient, 0.70).
ConvNeXt's test model has its last stage at stride 4 (``patch_size=2``): 0.23 → 0.72 (seed 1: 0.57;
one stage at stride 4: 0.58; label smoothing: 0.50; at stride 8 its 7×7 convs mix globally);
its peaks sit on the object's edges or, for dark objects, on a halo around it.
RegNet's test model is a RegNet-X (no squeeze-excitation): the RegNet-Y it replaced passed GradCAM
(0.87) but failed DFF (0.48), because SE's global channel gating writes the class into background
positions too, so the background concept was named by the true class as often as the object's;
RegNet-X: GradCAM 1.00, DFF 0.85 (the recipe is the same for both; tiny_archs keeps a RegNet-Y).
Those cases are strict xfails with the numbers, so an improvement shows up as a failure to update.
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_set
from tiny import DERIVED, FAMILIES, RECIPE_FAMILIES, TIMM

from xai_recipes import explain

HELD_OUT = make_set(seed=2024, n=60, sizes=[(72, 96), (96, 72), (80, 80), (76, 92)])  # aspect ratios as in training

#: Families whose trained test model does not localise under GradCAM (share of peaks on the object).
NOT_LOCALISED = {
    "vit": "0.50: CLS-token ViT; GradCAM ignores the CLS attention (which is on the object) and the class is on every token",
    "cvt": "0.35: CLS-token last stage; GradCAM ignores the CLS attention, the class is on every token",
    "convnext": "0.72: peaks on the object's edges or a halo around it (0.87 within 4 px); 0.23 at stride 8",
    "segformer": "0.10: every block attends globally; the class code sits on background tokens",
    "dinov2": "0.38: CLS + patch-mean head; as for ViT, the class is on every token (its CLS attention: 0.73)",
    "siglip2": "0.17: mean-pooled tokens after global attention; the class is on every token (gradient rollout: 0.88)",
    "dino_gam": "0.22: a GAM on the trained DINOv2's tokens, which carry the class everywhere (patch contributions 0.25)",
}
#: Hand-written recipes without a tutorial model, and the GAM on the trained DINOv2 (tests/trained/dino_gam).
MORE = (*RECIPE_FAMILIES, "dino_gam")


def peak_in_box(heatmap: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def random_map(rng: np.random.Generator, shape: tuple[int, int], coverage: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4) * coverage


@functools.cache  # each (family, method) is measured once per run: the default and table tests share it
def localisation(family: str, method: str, trained_dir) -> tuple[float, float, float]:
    """(model accuracy, share of peaks in the box, share for a random map) on HELD_OUT."""
    rng = np.random.default_rng(0)
    hits = random_hits = correct = 0
    for sample in HELD_OUT:
        exp = explain(trained_dir / family, sample.image, target=sample.label, method=method)
        correct += exp.predictions[0][0] == sample.label
        hits += peak_in_box(exp.heatmaps[0], sample.box)
        random_hits += peak_in_box(random_map(rng, exp.heatmaps[0].shape, exp.coverage), sample.box)
    n = len(HELD_OUT)
    return correct / n, hits / n, random_hits / n


def params(families, reasons):
    return [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=reasons[f])) if f in reasons else f for f in families]


#: Architectures with no hand-written recipe (derived recipes), and timm's ViT with registers.
DERIVED_NOT_LOCALISED = {
    "efficientnet": "0.60 at the derived layer (top_activation): the 1×1 head conv spreads the class",
    "poolformer": "0.43 at the derived layer (final norm): pooling token mixers spread the class",
    "pvt_v2": "0.07: same mixer as SegFormer (0.10 there); the class code sits on background tokens",
    "textnet": "0.77 at the derived layer (last stage): peaks on the object's edge (0.98 within 4 px of the box)",
    "mobilenet_v2": "0.08 at the derived layer (conv_1x1 after dilated stride-8 stages): at chance",
    "timm_vit_reg": "0.60: registers + GAP head; the class still spreads over the patch tokens",
    "deit": "0.52: CLS + distillation tokens; as for ViT, GradCAM ignores the CLS attention (attention 0.75)",
    "timm_vit_cls": "0.53: CLS + registers, token head; as for ViT, GradCAM ignores the CLS attention (attention 0.72)",
}


@pytest.mark.parametrize("family", params(FAMILIES + MORE, NOT_LOCALISED) + params(DERIVED + TIMM, DERIVED_NOT_LOCALISED))
def test_gradcam_peak_lies_on_the_object(family, trained_dir):
    accuracy, hits, random_hits = localisation(family, "gradcam", trained_dir)
    assert accuracy >= 0.9, f"{family}: the trained model itself is wrong ({accuracy:.2f})"
    assert random_hits <= 0.3, f"{family}: a random map hits {random_hits:.2f}: the task is too easy"
    assert hits >= 0.8, f"{family}: GradCAM peak on the object for only {hits:.2f} of images"


#: DFF, 2 concepts (object and background): families whose concept named by the true class does
#: not cover the object in most images (share of that concept's peaks on the object).
DFF_NOT_LOCALISED = {
    "convnext": "0.57 (0.18 at stride 8): the object's concept often peaks on its edge (see NOT_LOCALISED)",
    "vit": "0.37: class spread over all tokens (see NOT_LOCALISED)",
    "cvt": "0.40: class spread over all tokens (see NOT_LOCALISED)",
    "segformer": "0.30: class code on background tokens (see NOT_LOCALISED)",
}


@pytest.mark.parametrize("family", params(FAMILIES, DFF_NOT_LOCALISED))
def test_dff_concept_named_by_the_true_class_covers_the_object(family, trained_dir):
    """Of the concepts whose top class is the true one, the likeliest's peak lies on the object."""
    hits = named = 0
    for sample in HELD_OUT:
        exp = explain(trained_dir / family, sample.image, method="dff", n_components=2)
        assert all(names[0][1] == exp.labels[c] for c, names in enumerate(exp.legend))
        named_true = [c for c, i in enumerate(exp.indices) if i == sample.label]
        if named_true:
            named += 1
            best = max(named_true, key=lambda c: exp.scores[c])
            hits += peak_in_box(exp.heatmaps[best], sample.box)
    n = len(HELD_OUT)
    assert named / n >= 0.9, f"{family}: no concept is named by the true class in {1 - named / n:.2f} of images"
    assert hits / n >= 0.6, f"{family}: the true class's concept covers the object in only {hits / n:.2f} of images"


#: Candidate methods per family for the default-method check (those that apply to its recipe).
CANDIDATES = ("gradcam", "hirescam", "gradcam++", "attention", "rollout", "gradient-rollout", "legrad")
#: How far below the best candidate a default may be: the best *class-specific* method is preferred
#: when within this margin of a class-agnostic one (attention and rollout ignore ``target``).
MARGIN = 0.05
#: Families whose default is not within MARGIN of the best candidate or, for the attention families, does not
#: reach GradCAM + 0.15 on their trained model (measured share of peaks in the box).
DEFAULT_NOT_BETTER = {
    "pp_lcnet": "default gradcam 0.80 (derived recipes of CNNs take GradCAM) vs gradcam++ 0.90",
    "pvt_v2": "default legrad 0.58 (GradCAM 0.07) is 0.13 below the class-agnostic attention (0.72): the mean "
              "attention each token receives in the last stage marks the object better than any class-specific map",
    "cvt": "default gradcam++ 0.42 vs GradCAM 0.35: CvT's last-stage CLS attention (keys reduced 2×, 4×4 here) peaks "
           "on the object in 0.17 of images, LeGrad 0.28, so no attention method reads the evidence better",
    "dinov2": "default gradient-rollout 0.70 (GradCAM 0.38) vs legrad 0.82 on this tiny supervised model; kept: on the "
              "real ViT-S/14 + probe (test_real_dinov2) LeGrad spreads over the image (0.83× / 1.67× vs 1.50× / 4.64×) "
              "and in the gallery's quality table gradient rollout's energy is 0.45 against LeGrad's 0.25",
}


#: Families with attention: their default must also beat GradCAM by 0.15 (the attention issue's criterion).
ATTENTION_FAMILIES = ("vit", "deit", "cvt", "timm_vit_reg", "segformer", "pvt_v2", "timm_vit_cls", "dinov2", "siglip2")


DEFAULT_CHECKED = (*FAMILIES, "deit", "timm_vit_reg", "pvt_v2", "bit", "hgnet_v2", "pp_lcnet", "timm_vit_cls", *MORE)


@pytest.mark.parametrize("family", params(DEFAULT_CHECKED, DEFAULT_NOT_BETTER))
def test_default_method_is_the_best_localising_and_beats_gradcam(family, trained_dir):
    """The recipe's default method localises within MARGIN of the best applicable candidate, and for
    the attention families at least 0.15 better than GradCAM. CNNs (gradcam, hirescam, gradcam++):
    ResNet 0.97 / 0.97 / 1.00, RegNet 1.00 / 1.00 / 0.98, ConvNeXt 0.72 / 0.72 / 0.70, Swin 0.87 /
    0.75 / 0.67, MobileViT 0.88 / 0.88 / 0.90, BiT 0.82 / 0.82 / 0.78, HGNet-v2 0.88 / 0.88 / 0.88,
    PP-LCNet 0.80 / 0.80 / 0.90. Measured (share of peaks on the object, 60 held-out images):
    ViT gradcam 0.50, hirescam 0.55, attention 0.72, rollout 0.63, gradient-rollout 0.70 (default),
    legrad 0.63 — the model's own CLS attention reaches 0.72, so 0.8 is not within its reach at its
    8×8 grid; DeiT (derived recipe) gradcam 0.52, hirescam 0.70, attention 0.75, rollout 0.62,
    gradient-rollout 0.73 (default), legrad 0.63 (its last CLS attention's best patch is within half a
    patch of the box in 60/60 images: the 8-pixel patches are coarse beside 14–22 px objects); timm ViT reg4-GAP gradcam 0.60, attention 0.52, rollout 0.73, gradient-rollout 0.70,
    legrad 0.78 (default); SegFormer gradcam 0.10, legrad 0.33 (default); CvT above; timm ViT CLS + reg4 gradcam
    0.53, hirescam 0.52, gradcam++ 0.47, attention 0.72, rollout 0.68, gradient-rollout 0.68 (default: exactly
    MARGIN below legrad 0.73 and GradCAM + 0.15, one image either way flips it); SigLIP 2 gradcam 0.17, hirescam
    0.17, gradcam++ 0.25, attention 0.80, rollout 0.87, gradient-rollout 0.88 (default), legrad 0.48; DINO-GAM on
    the tiny DINOv2 gradcam 0.22, hirescam 0.22, gradcam++ 0.45 (default); DINOv2 above."""
    import xai_recipes
    from xai_recipes.loading import load

    model = load(trained_dir / family)[0]
    recipe = xai_recipes.find_recipe(model)
    scores = {}
    for method in CANDIDATES:
        if xai_recipes.get_method(method).why_not(model, recipe) is None:
            scores[method] = localisation(family, method, trained_dir)[1]
    default = scores[recipe.default_method]
    best = max(scores.values())
    assert default >= best - MARGIN, f"{family}: default {recipe.default_method} {default:.2f}, candidates {scores}"
    if family in ATTENTION_FAMILIES:
        assert default >= scores["gradcam"] + 0.15, f"{family}: default {recipe.default_method} {default:.2f}, candidates {scores}"


#: the zero-shot models' tables are scored on digit scenes by prompt: tests/test_zero_shot_localisation.py checks them
ZERO_SHOT_TABLES = ("tests/trained/clip", "tests/trained/siglip",
                    "tests/trained/detr", "tests/trained/segformer_seg")  # and the detector's, segmenter's: per object
#: The gallery's published quality tables (docs/gen_gallery.py) of the recipes whose example is a trained test
#: model: same 60 images, pointing without tolerance, so the same shares as measured here.
QUALITY_TABLES = {Path(q["model"]).name: q for q in json.loads(
    (Path(__file__).resolve().parents[1] / "docs" / "gallery" / "quality.json").read_text()).values()
    if q["model"].startswith("tests/trained/") and q["model"] not in ZERO_SHOT_TABLES}


@pytest.mark.parametrize("family", sorted(QUALITY_TABLES))
def test_the_published_quality_tables_are_current(family, trained_dir):
    """Each method's pointing score in the gallery table equals this run's share (one image of slack:
    the table's explanations run batched); a stale table means: run ``python docs/gen_gallery.py``. (That the
    table's default is the recipe's: tests/test_gallery.py.)"""
    table = QUALITY_TABLES[family]
    assert table["images"] == len(HELD_OUT) and table["tolerance"] == 0
    for method in CANDIDATES:
        if method in table["methods"]:
            published, measured = table["methods"][method]["pointing"], localisation(family, method, trained_dir)[1]
            assert abs(published - measured) <= 1 / len(HELD_OUT) + 1e-9, (
                f"{family} {method}: docs/gallery/quality.json says {published:.3f}, measured {measured:.3f}; "
                "run python docs/gen_gallery.py")
