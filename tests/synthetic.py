"""Synthetic localisation task: one coloured shape at a random place on grey clutter.

The class is *what* the object is (its shape), never where it is or which colour it has, so a
model can only be right by looking at the object. Every image comes with the object's box, in the coordinates of the image itself, which is what the localisation tests check
heatmaps against. (Class-specific surface textures were tried too: they let small transformers
recognise the object from single patches and then spread the class to every token of the last
stage, which made every last-layer map worse.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("disc", "square", "triangle", "cross")


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # H×W×3 uint8, RGB
    label: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive pixel bounds of the object)


def _clutter(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(70, 170)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (h, w)).astype(np.float32), (0, 0), 1.5)
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = np.repeat(img[:, :, None], 3, axis=2).copy()
    for _ in range(rng.integers(6, 14)):  # grey strokes and blobs: clutter with edges but no colour
        g = int(rng.uniform(20, 235))
        colour = (g, g, g)
        if rng.random() < 0.5:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)))
        else:
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
            cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return img


def _draw(img: np.ndarray, shape: str, cx: int, cy: int, r: int, colour: tuple[int, int, int]) -> None:
    if shape == "disc":
        cv2.circle(img, (cx, cy), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif shape == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    else:  # cross
        t = max(2, r // 3)
        cv2.rectangle(img, (cx - r, cy - t), (cx + r, cy + t), colour, -1)
        cv2.rectangle(img, (cx - t, cy - r), (cx + t, cy + r), colour, -1)


def make_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    label: int | None = None,
    size_frac: tuple[float, float] = (0.22, 0.34),
    safe_frac: float = 0.8,
) -> Sample:
    """One image. The object (side ``size_frac`` × the short side) lies inside the central square of
    side ``safe_frac`` × the short side, the part that every centre-cropping processor keeps."""
    img = _clutter(rng, height, width)
    label = int(rng.integers(len(SHAPES))) if label is None else label
    short = min(height, width)
    r = max(3, int(round(rng.uniform(*size_frac) * short / 2)))
    half_safe = safe_frac * short / 2
    lo_x, hi_x = width / 2 - half_safe + r, width / 2 + half_safe - r
    lo_y, hi_y = height / 2 - half_safe + r, height / 2 + half_safe - r
    cx, cy = int(rng.uniform(lo_x, hi_x)), int(rng.uniform(lo_y, hi_y))
    hue = int(rng.integers(0, 180))
    rgb = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
    _draw(img, SHAPES[label], cx, cy, r, tuple(int(v) for v in rgb))
    return Sample(img, label, (cx - r, cy - r, cx + r, cy + r))


def make_set(seed: int, n: int, sizes: list[tuple[int, int]]) -> list[Sample]:
    """``n`` samples with balanced labels, image sizes drawn from ``sizes`` (height, width)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[int(rng.integers(len(sizes)))]
        out.append(make_sample(rng, h, w, label=i % len(SHAPES)))
    return out
