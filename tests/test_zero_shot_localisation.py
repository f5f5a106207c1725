"""Trained tiny CLIP and SigLIP (tests/trained/train_zeroshot.py, synthetic digit scenes with captions):
zero-shot accuracy through transformers' own pipeline, and where each method puts a prompt's evidence.

Held-out scenes (seeds 21 / 22, never trained on) hold **two different digits**; each digit's prompt
("the digit seven", the ten digits' labels as candidates, the pipeline's template) is explained and
its map's peak must land on that digit's box, not the other digit's. Image similarity: the scene
against a crop of one of its digits (the crop's box padded by 4 px) must put the peak on that digit.
Every method's shares are measured and printed (``-s``); the criteria are asserted for the recipe's
default method, and where a model genuinely puts its evidence elsewhere the measured number stays a
strict xfail (below).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TRAINED
from PIL import Image
from digits import LABELS, make_scenes
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

import xai_recipes

SIZES = [(64, 64), (72, 88), (88, 72), (96, 96)]
N = 90  # two-digit scenes: 180 prompts for the default method
N_OTHERS = 30  # the other methods' recorded shares (a make_scenes prefix: the same first 30 scenes)
METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "attention", "rollout", "gradient-rollout", "legrad")
GOAL = 0.85

#: family → why its default method's prompt maps fall short of GOAL (measured on this file's scenes).
PROMPT_SHORT = {
    "siglip": "the tiny SigLIP reads each prompt's own digit — erasing it lowers that prompt's score more than erasing "
              "the other digit for 60 of 60 prompts — but no gradient or attention method localises that through its "
              "probe-query pooling: gradient rollout, the best of them and the default, puts the peak on the prompt's "
              "digit in {own:.2f} (the other digit {other:.2f}); LeGrad 0.57, GradCAM 0.17. Perturbation finds it: "
              "Captum occlusion 0.83 (signed=True: 0.90, other 0.00) on 60 prompts, at a forward pass per window",
}
#: family → why a crop's similarity map cannot find its digit often enough: an occlusion measurement of the model
#: itself (tests/test_zero_shot_localisation.py's scenes, 60 crops): erasing the crop's own digit from the scene
#: (median colour) lowers the cosine similarity more than erasing the other digit in only this share of crops.
SIMILARITY_SHORT = {
    "clip": "the tiny CLIP's image embedding barely tells the crop's digit from the other one: erasing the crop's own "
            "digit lowers the cosine more than erasing the other digit in only 0.65 of crops (mean drops 0.20 vs "
            "0.12), so a faithful map cannot find the crop's digit in 0.85; {method} puts the peak on it in {own:.2f} "
            "(on the other digit in {other:.2f})",
    "siglip": "the tiny SigLIP's image embedding barely tells the crop's digit from the other one: erasing the crop's "
              "own digit lowers the cosine more than erasing the other digit in only 0.60 of crops, so a faithful map "
              "cannot find the crop's digit in 0.85; {method} puts the peak on it in {own:.2f} (on the other digit "
              "in {other:.2f})",
}


def inside(heatmap: np.ndarray, box) -> bool:
    y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
    x0, y0, x1, y1 = box
    return bool(x0 <= x <= x1 and y0 <= y <= y1)


FAMILIES = ["clip", "siglip"]


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request):
    folder = TRAINED / request.param
    model = AutoModelForZeroShotImageClassification.from_pretrained(folder).eval()
    return request.param, folder, model, AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def shares(trained):
    """method → (own, other): shares of the prompts whose peak lands on their own / the other digit — the
    recipe's default on all N scenes (2·N prompts), the other methods, recorded, on the first N_OTHERS."""
    name, _, model, processor = trained
    default = xai_recipes.find_recipe(model).default_method
    out = {}
    for method in METHODS:
        scenes = make_scenes(21, N if method == default else N_OTHERS, SIZES, two=1.0)
        own = other = 0
        for s in scenes:
            exp = xai_recipes.explain(model, s.image, target=[LABELS[d] for d in s.digits], labels=list(LABELS),
                                      processor=processor, method=method)
            for i in range(2):
                own += inside(exp.heatmaps[i], s.boxes[i])
                other += inside(exp.heatmaps[i], s.boxes[1 - i])
        out[method] = (own / (2 * len(scenes)), other / (2 * len(scenes)))
    print(f"\n{name} prompts (own digit / other digit): " + ", ".join(f"{m} {o:.2f}/{x:.2f}" for m, (o, x) in out.items()))
    return out


def test_zero_shot_accuracy_through_the_pipeline(trained):
    name, folder, model, processor = trained
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=processor.tokenizer,
                    image_processor=processor.image_processor)
    scenes = make_scenes(22, 100, SIZES, two=0.0)
    right = sum(pipe(Image.fromarray(s.image), candidate_labels=list(LABELS))[0]["label"] == LABELS[s.digits[0]] for s in scenes)
    print(f"\n{name}: zero-shot accuracy {right / len(scenes):.2f} on {len(scenes)} held-out one-digit scenes")
    assert right / len(scenes) >= 0.9


def test_each_prompt_puts_the_default_methods_peak_on_its_own_digit(trained, shares, request):
    name = trained[0]
    default = xai_recipes.find_recipe(trained[2]).default_method
    best = max(shares, key=lambda m: shares[m][0])
    assert shares[default][0] >= shares[best][0] - 0.05, f"{name}: default {default} {shares[default]}, best {best}"
    own, other = shares[default]
    if name in PROMPT_SHORT and own < GOAL:
        request.applymarker(pytest.mark.xfail(strict=True, reason=PROMPT_SHORT[name].format(own=own, other=other)))
    assert own >= GOAL and other <= 1 - GOAL, f"{name} {default}: own {own:.3f}, other {other:.3f}"


@pytest.mark.parametrize("method", ["gradcam", "gradient-rollout"])
def test_image_similarity_to_a_crop_of_one_digit(trained, method, request):
    name, _, model, processor = trained
    own = other = 0
    scenes = make_scenes(21, N_OTHERS, SIZES, two=1.0)
    for s in scenes:
        for i in range(2):
            x0, y0, x1, y1 = s.boxes[i]
            crop = s.image[max(0, y0 - 4): y1 + 5, max(0, x0 - 4): x1 + 5]
            exp = xai_recipes.explain(model, s.image, target=crop, processor=processor, method=method)
            own += inside(exp.heatmaps[0], s.boxes[i])
            other += inside(exp.heatmaps[0], s.boxes[1 - i])
    own, other = own / (2 * len(scenes)), other / (2 * len(scenes))
    print(f"\n{name} similarity, {method}: own {own:.2f}, other {other:.2f}")
    if name in SIMILARITY_SHORT and own < GOAL:
        request.applymarker(pytest.mark.xfail(strict=True, reason=SIMILARITY_SHORT[name].format(
            method=method, own=own, other=other)))
    assert own >= GOAL, f"{name} {method}: own {own:.2f}, other {other:.2f}"


def test_the_published_quality_table_is_current(trained):
    """The gallery's table (docs/gen_gallery.py's zero_shot_quality: its own held-out scenes) for the default method
    equals this run's pointing share, one prompt of slack (tests/test_localisation.py checks the other tables)."""
    import json
    import sys
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    sys.path.insert(0, str(docs))
    import gen_gallery

    name, _, model, processor = trained
    table = json.loads((docs / "gallery" / "quality.json").read_text())[name]
    default = xai_recipes.find_recipe(model).default_method
    scenes = make_scenes(gen_gallery.ZERO_SHOT_SEED, gen_gallery.ZERO_SHOT_N, gen_gallery.ZERO_SHOT_SIZES, two=1.0)
    hits = 0
    for s in scenes:
        exp = xai_recipes.explain(model, s.image, target=[LABELS[d] for d in s.digits], labels=list(LABELS),
                                  processor=processor)
        hits += sum(inside(exp.heatmaps[i], s.boxes[i]) for i in range(2))
    assert table["default"] == default and table["images"] == 2 * len(scenes)
    assert abs(table["methods"][default]["pointing"] - hits / (2 * len(scenes))) <= 1 / (2 * len(scenes)) + 1e-9
