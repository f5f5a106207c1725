"""The tiny detector and segmenter trained here (tests/trained/train_detector.py, train_segmenter.py) on synthetic
scenes of two or three different digits: their quality through transformers' own pipelines, and where each
detection's and each region's map puts its evidence.

Held-out scenes (``make_multi_scenes`` seeds 51 / 52, never trained on). Detector: mAP@0.5 over the ten digits
(VOC-style all-point AP, the pipeline's detections at threshold 0.05), then every detection at the pipeline's
threshold (0.5) explained: its map's peak must lie inside its own digit's box (the digit it matches, IoU ≥ 0.5)
and not inside another digit's box. Segmenter: mIoU over the ten digit classes (the processor's
post-processing at the image's size against the digits' masks — the strokes dilated by 1 px, the target it was
trained on, as recorded in its TRAINING.txt), then every predicted digit region explained:
its map's peak must lie inside that region. Asserted for the recipe's default method; every method's shares
are printed (``-s``) and recorded in the gallery's quality tables.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import TRAINED
from digits import DIGITS, make_multi_scenes
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection, AutoModelForSemanticSegmentation, pipeline

import xai_recipes
from xai_recipes.tasks.detection import iou

SIZES = [(96, 96), (96, 128), (128, 96), (112, 112), (128, 128)]
N = 60  # segmenter scenes; the detector's: N_MAP for mAP, N_DETECTIONS for the maps (recall at 0.5 is about 0.46)
N_MAP, N_DETECTIONS = 300, 90
GOAL, OTHER = 0.85, 0.1
DETECTOR, SEGMENTER = TRAINED / "detr", TRAINED / "segformer_seg"
DETECTOR_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "cross-attention", "bimodal-rollout")
SEGMENTER_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam")


def average_precision(hits: list[tuple[float, bool]], positives: int) -> float:
    """VOC's all-point interpolated AP of detections ``(score, true positive)`` against ``positives`` objects."""
    if positives == 0:
        return float("nan")
    hits = sorted(hits, key=lambda h: -h[0])
    tp = np.cumsum([h[1] for h in hits])
    fp = np.cumsum([not h[1] for h in hits])
    recall = np.concatenate([[0], tp / positives, [1]])
    precision = np.concatenate([[1], tp / np.maximum(tp + fp, 1e-9), [0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def inside(heatmap: np.ndarray, box) -> bool:
    y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
    x0, y0, x1, y1 = box
    return bool(x0 <= x <= x1 and y0 <= y <= y1)


@pytest.fixture(scope="module")
def detector():
    if not (DETECTOR / "config.json").is_file():
        pytest.fail(f"{DETECTOR} is missing: train it with tests/trained/train_detector.py")
    return AutoModelForObjectDetection.from_pretrained(DETECTOR).eval(), AutoImageProcessor.from_pretrained(DETECTOR)


@pytest.fixture(scope="module")
def segmenter():
    if not (SEGMENTER / "config.json").is_file():
        pytest.fail(f"{SEGMENTER} is missing: train it with tests/trained/train_segmenter.py")
    return (AutoModelForSemanticSegmentation.from_pretrained(SEGMENTER).eval(),
            AutoImageProcessor.from_pretrained(SEGMENTER))


def test_the_detector_finds_the_digits_through_the_pipeline(detector):
    model, processor = detector
    detect = pipeline("object-detection", model=model, image_processor=processor)
    hits: dict[int, list[tuple[float, bool]]] = {d: [] for d in range(10)}
    positives = dict.fromkeys(range(10), 0)
    for scene in make_multi_scenes(51, N_MAP, SIZES):
        for d in scene.digits:
            positives[d] += 1
        found = detect(Image.fromarray(scene.image), threshold=0.05)
        taken: set[int] = set()
        for det in sorted(found, key=lambda f: -f["score"]):
            d = DIGITS.index(det["label"])
            box = tuple(det["box"][k] for k in ("xmin", "ymin", "xmax", "ymax"))
            match = [i for i, (dd, b) in enumerate(zip(scene.digits, scene.boxes))
                     if dd == d and i not in taken and iou(box, b) >= 0.5]
            if match:
                taken.add(match[0])
            hits[d].append((det["score"], bool(match)))
    ap = {d: average_precision(hits[d], positives[d]) for d in range(10)}
    mean_ap = float(np.nanmean(list(ap.values())))
    print(f"\ndetector mAP@0.5 {mean_ap:.3f} on {N_MAP} held-out scenes; per digit "
          + ", ".join(f"{DIGITS[d]} {v:.2f}" for d, v in ap.items()))
    assert mean_ap >= 0.8


@pytest.fixture(scope="module")
def detection_shares(detector):
    """method → (own, other, detections): shares of detections (threshold 0.5) whose map peaks in their own
    digit's box / in another digit's box."""
    model, processor = detector
    default = xai_recipes.find_recipe(model).default_method
    out = {}
    for method in dict.fromkeys((default, *DETECTOR_METHODS)):
        own = other = total = 0
        for scene in make_multi_scenes(52, N_DETECTIONS if method == default else N_DETECTIONS // 3, SIZES):
            try:
                exp = xai_recipes.explain(model, scene.image, processor=processor, method=method)
            except xai_recipes.NoDetectionError:
                continue
            for heatmap, label, box in zip(exp.heatmaps, exp.labels, exp.boxes):
                matched = [i for i, (d, b) in enumerate(zip(scene.digits, scene.boxes))
                           if DIGITS[d] == label and iou(box, b) >= 0.5]
                if not matched:
                    continue  # a false detection: no digit to localise
                total += 1
                own += inside(heatmap, scene.boxes[matched[0]])
                other += any(inside(heatmap, b) for i, b in enumerate(scene.boxes) if i != matched[0])
        out[method] = (own / max(total, 1), other / max(total, 1), total)
    print("\ndetection maps: " + "; ".join(f"{m} own {o:.2f} other {x:.2f} (n={n})" for m, (o, x, n) in out.items()))
    return out


def test_each_detections_default_map_peaks_inside_its_own_box(detector, detection_shares):
    model, _ = detector
    default = xai_recipes.find_recipe(model).default_method
    own, other, total = detection_shares[default]
    assert total >= 100, f"only {total} matched detections on {N_DETECTIONS} scenes"
    assert own >= GOAL and other <= OTHER, f"{default}: own {own:.2f}, other {other:.2f}"


def test_the_segmenter_segments_the_digits(segmenter):
    model, processor = segmenter
    segment = pipeline("image-segmentation", model=model, image_processor=processor)
    inter = np.zeros(11)
    union = np.zeros(11)
    for scene in make_multi_scenes(51, N, SIZES):
        truth = np.zeros(scene.image.shape[:2], int)
        for d, mask in zip(scene.digits, scene.masks):  # the segmenter's target: strokes dilated by 1 px
            truth[cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = d + 1
        pred = np.zeros_like(truth)
        for found in segment(Image.fromarray(scene.image), subtask="semantic"):
            label = model.config.label2id[found["label"]]
            pred[np.asarray(found["mask"]) > 0] = label
        for c in range(11):
            inter[c] += np.logical_and(pred == c, truth == c).sum()
            union[c] += np.logical_or(pred == c, truth == c).sum()
    ious = inter / np.maximum(union, 1)
    print(f"\nsegmenter mIoU over the digits {ious[1:].mean():.3f} (background {ious[0]:.3f}); per digit "
          + ", ".join(f"{DIGITS[d]} {ious[d + 1]:.2f}" for d in range(10)))
    assert ious[1:].mean() >= 0.7


def test_each_regions_default_map_peaks_inside_the_region(segmenter):
    model, processor = segmenter
    default = xai_recipes.find_recipe(model).default_method
    shares = {}
    for method in dict.fromkeys((default, *SEGMENTER_METHODS)):
        hit = total = 0
        for scene in make_multi_scenes(52, N if method == default else N // 2, SIZES):
            labels = [DIGITS[d] for d in scene.digits]
            exp = xai_recipes.explain(model, scene.image, processor=processor, method=method, top_k=4)
            for heatmap, label, mask in zip(exp.heatmaps, exp.labels, exp.masks):
                if label not in labels:
                    continue  # the background, or a digit the scene lacks
                y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
                total += 1
                hit += bool(mask[y, x])
        shares[method] = (hit / max(total, 1), total)
    print("\nregion maps: " + "; ".join(f"{m} {s:.2f} (n={n})" for m, (s, n) in shares.items()))
    share, total = shares[default]
    assert total >= 100 and share >= GOAL, f"{default}: {share:.2f} of {total} regions"
