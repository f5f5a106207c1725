"""GradCAM is right on trained models: its peak sits on the object, a random map's does not.

The tiny models under tests/trained/ were trained by tests/trained/train.py on the synthetic task
(class = which shape, anywhere on grey clutter), each saved with its family's real processor type
(centre-crops, RGB→BGR flip). Held-out images here have other sizes and aspect ratios than the
model input, so the resize/crop geometry must be mapped back correctly for the peak to land.
"""

import numpy as np
import pytest
from synthetic import make_set
from tiny import FAMILIES

from xai_recipes import explain

HELD_OUT = make_set(seed=2024, n=60, sizes=[(72, 96), (96, 72), (80, 80), (64, 112)])


def peak_in_box(heatmap: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def random_map(rng: np.random.Generator, shape: tuple[int, int], coverage: np.ndarray) -> np.ndarray:
    import cv2

    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
    return noise * coverage


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_peak_lies_on_the_object(family, trained_dir):
    rng = np.random.default_rng(0)
    hits = random_hits = correct = 0
    for sample in HELD_OUT:
        exp = explain(trained_dir / family, sample.image, target=sample.label)
        correct += exp.predictions[0][0] == sample.label
        hits += peak_in_box(exp.heatmaps[0], sample.box)
        random_hits += peak_in_box(random_map(rng, exp.heatmaps[0].shape, exp.coverage), sample.box)
    n = len(HELD_OUT)
    assert correct / n >= 0.9, f"{family}: the trained model itself is wrong ({correct}/{n})"
    assert hits / n >= 0.8, f"{family}: GradCAM peak on the object for only {hits}/{n} images"
    assert random_hits / n <= 0.3, f"{family}: a random map hits {random_hits}/{n}: the task is too easy"
