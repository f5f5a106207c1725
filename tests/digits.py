"""Synthetic zero-shot task: coloured digits on grey clutter, for the tiny CLIP and SigLIP under tests/trained/.

A scene holds one digit or two *different* digits (non-overlapping boxes) at random places on the grey
clutter of tests/synthetic.py. Each digit comes with its box in the coordinates of the image itself
(x0, y0, x1, y1, inclusive bounds of its drawn pixels), so a heatmap for the prompt naming one digit
can be checked against that digit's box and against the other's. Digits lie inside the central square
(``safe_frac`` × the short side) that a centre-cropping processor (CLIP's) keeps. Never flip these images:
flips change what a digit reads as.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synthetic import _clutter

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: The candidate labels a zero-shot test passes to the pipeline (with its default template, ``TEMPLATE``).
LABELS = tuple(f"the digit {name}" for name in DIGITS)
#: transformers' zero-shot-image-classification default ``hypothesis_template``.
TEMPLATE = "This is a photo of {}."
#: Caption templates for one digit (the pipeline's default with "the digit <name>" among them).
ONE = ("This is a photo of the digit {}.", "a photo of the digit {}", "the digit {}", "a picture of the digit {}",
       "the number {}", "a {}")
#: Caption templates naming both digits of a two-digit scene.
TWO = ("a photo of the digits {} and {}", "the digits {} and {}", "This is a photo of the digits {} and {}.")

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H×W×3 uint8, RGB
    digits: tuple[int, ...]
    boxes: tuple[tuple[int, int, int, int], ...]  # per digit: x0, y0, x1, y1 (inclusive bounds of its strokes' pixels, coverage ≥ 0.25)
    masks: tuple[np.ndarray, ...] = ()  # per digit: H×W bool, its strokes' pixels (coverage ≥ 0.25)


def _glyph(rng: np.random.Generator, digit: int, height: int) -> np.ndarray:
    """The digit's coverage (float in [0, 1]), cropped to its strokes, about ``height`` pixels tall: drawn at
    4× and area-downsampled, so small digits keep their holes."""
    font = FONTS[int(rng.integers(len(FONTS)))]
    big = 4 * height
    thickness = max(2, int(round(big / 11 * rng.uniform(0.8, 1.2))))
    scale = cv2.getFontScaleFromHeight(font, big, thickness)
    (tw, th), base = cv2.getTextSize(str(digit), font, scale, thickness)
    pad = thickness + 8
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, str(digit), (pad, th + pad), font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    y0, x0 = ys.min() // 4 * 4, xs.min() // 4 * 4
    y1, x1 = -(-(ys.max() + 1) // 4) * 4, -(-(xs.max() + 1) // 4) * 4
    canvas = canvas[y0:y1, x0:x1]
    alpha = cv2.resize(canvas, (canvas.shape[1] // 4, canvas.shape[0] // 4), interpolation=cv2.INTER_AREA) / 255.0
    ys, xs = np.nonzero(alpha >= 0.25)
    return alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1] * (alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1] >= 0.1)


def make_scene(
    rng: np.random.Generator,
    digits: list[int] | tuple[int, ...],
    size: tuple[int, int] = (64, 64),
    height_frac: tuple[float, float] = (0.28, 0.38),
    safe_frac: float = 0.85,
    gap: int = 2,
) -> Scene:
    """One scene of ``size`` (height, width) with ``digits`` (one, or two different ones) at random places.

    Each digit is ``height_frac`` × the short side tall, in a random saturated colour, inside the
    central square of side ``safe_frac`` × the short side; two digits' boxes are at least ``gap`` px apart."""
    digits = tuple(int(d) for d in digits)
    if len(set(digits)) != len(digits):
        raise ValueError(f"digits must differ: {digits}")
    h, w = size
    img = _clutter(rng, h, w)
    short = min(h, w)
    half = safe_frac * short / 2
    lo_x, hi_x, lo_y, hi_y = w / 2 - half, w / 2 + half, h / 2 - half, h / 2 + half
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(200):  # rejection-sample a non-overlapping placement
        boxes, masks = [], []
        for d in digits:
            mask = _glyph(rng, d, max(6, int(round(rng.uniform(*height_frac) * short))))
            mh, mw = mask.shape
            x0 = int(rng.integers(int(np.ceil(lo_x)), max(int(np.ceil(lo_x)), int(hi_x) - mw) + 1))
            y0 = int(rng.integers(int(np.ceil(lo_y)), max(int(np.ceil(lo_y)), int(hi_y) - mh) + 1))
            boxes.append((x0, y0, x0 + mw - 1, y0 + mh - 1))
            masks.append(mask)
        if all(_apart(a, b, gap) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            break
    else:
        raise RuntimeError(f"no room for {len(digits)} digits in {size}")
    hues = rng.permutation(180)[: len(digits)] if len(digits) > 1 else [int(rng.integers(180))]
    for (x0, y0, x1, y1), mask, hue in zip(boxes, masks, hues):
        rgb = cv2.cvtColor(np.uint8([[[int(hue), 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)
        patch = img[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
        img[y0:y1 + 1, x0:x1 + 1] = np.round(patch + mask[:, :, None] * (rgb - patch)).astype(np.uint8)
    full = []
    for (x0, y0, x1, y1), mask in zip(boxes, masks):
        m = np.zeros((h, w), bool)
        m[y0:y1 + 1, x0:x1 + 1] = mask >= 0.25
        full.append(m)
    return Scene(img, digits, tuple(boxes), tuple(full))


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def caption(rng: np.random.Generator, scene: Scene) -> str:
    """A training caption: one digit's name for a one-digit scene; for two digits, both (half of the time,
    in random order) or one of them (with a one-digit template)."""
    names = [DIGITS[d] for d in scene.digits]
    if len(names) == 1 or rng.random() < 0.5:
        return ONE[int(rng.integers(len(ONE)))].format(names[int(rng.integers(len(names)))])
    rng.shuffle(names)
    return TWO[int(rng.integers(len(TWO)))].format(*names)


def make_scenes(seed: int, n: int, sizes: list[tuple[int, int]], two: float = 0.0) -> list[Scene]:
    """``n`` scenes, sizes from ``sizes``; a share ``two`` has two different digits, the rest one
    (the first digit cycles through 0–9 so one-digit sets are balanced)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = sizes[int(rng.integers(len(sizes)))]
        first = i % len(DIGITS)
        if rng.random() < two:
            second = int((first + rng.integers(1, len(DIGITS))) % len(DIGITS))
            out.append(make_scene(rng, [first, second], size))
        else:
            out.append(make_scene(rng, [first], size))
    return out


def make_multi_scenes(seed: int, n: int, sizes: list[tuple[int, int]], counts: tuple[int, ...] = (2, 3),
                      height_frac: tuple[float, float] = (0.2, 0.3)) -> list[Scene]:
    """``n`` scenes of ``counts`` different digits each (chosen at random), with boxes and masks: the
    detection and segmentation scenes of tests/trained/train_detector.py and train_segmenter.py."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = sizes[int(rng.integers(len(sizes)))]
        k = int(counts[int(rng.integers(len(counts)))])
        digits = [int(d) for d in rng.permutation(len(DIGITS))[:k]]
        out.append(make_scene(rng, digits, size, height_frac=height_frac, safe_frac=0.95))
    return out
