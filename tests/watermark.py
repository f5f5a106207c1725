"""Synthetic scenes with a planted shortcut: one class carries a small watermark at a fixed position.

The scenes are like those of tests/synthetic.py (one coloured shape on grey clutter, the class being
the shape), at 64×64 px, with smaller, fainter objects. In the watermarked data set the images of :data:`WATERMARKED` carry a 10×10 px
black-and-white mark in the top-left corner with probability ``rate``; no other class ever does.
The object is always present and never overlaps the mark (its box keeps a margin from it), so a
model can be right either way: by the shape, or by the mark (the Clever-Hans shortcut of
Lapuschkin et al. 2019). The control data set is the same scenes with no mark at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synthetic import SHAPES, _clutter, _draw

SIZE = 64
WATERMARKED = SHAPES.index("triangle")
#: The mark's box (x0, y0, x1, y1), inclusive pixel bounds: the top-left corner, one cell of the
#: model's 8×8 last stage (stride 8) plus a pixel.
MARK = (0, 0, 9, 9)
_MARGIN = 4  # the object's box keeps this many pixels from the mark
#: Objects are small (7–11 px) and faintly coloured among the grey clutter: their shape is harder to read
#: than the mark, as a shortcut is easier than the real cue. (With the 14–22 px saturated objects of
#: tests/synthetic.py, and with 9–13 px ones, the trained model read the shapes and ignored the mark:
#: 3–4 % of GradCAM's mass on it, the mark's area being 2.4 %.)
SIZE_FRAC = (0.12, 0.18)
SATURATION = (70, 130)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # SIZE×SIZE×3 uint8
    label: int
    box: tuple[int, int, int, int]  # the object's box
    marked: bool


def draw_mark(img: np.ndarray) -> None:
    """A white square with a black centre and a black dot: high contrast, unlike the grey clutter."""
    x0, y0, x1, y1 = MARK
    img[y0:y1 + 1, x0:x1 + 1] = 255
    img[y0 + 3:y1 - 2, x0 + 3:x1 - 2] = 0
    img[y0 + 1, x0 + 1] = 0


def make_scene(rng: np.random.Generator, label: int, marked: bool) -> Scene:
    """One scene of class ``label`` whose object keeps clear of the mark's corner."""
    img = _clutter(rng, SIZE, SIZE)
    r = max(3, int(round(rng.uniform(*SIZE_FRAC) * SIZE / 2)))
    while True:
        cx, cy = (int(rng.integers(r + 2, SIZE - r - 2)) for _ in range(2))
        if cx - r > MARK[2] + _MARGIN or cy - r > MARK[3] + _MARGIN:
            break
    hsv = np.uint8([[[int(rng.integers(0, 180)), int(rng.integers(*SATURATION)), int(rng.integers(150, 230))]]])
    colour = tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    _draw(img, SHAPES[label], cx, cy, r, colour)
    if marked:
        draw_mark(img)
    return Scene(img, label, (cx - r, cy - r, cx + r, cy + r), marked)


def make_scenes(seed: int, n: int, rate: float, watermarked: int = WATERMARKED) -> list[Scene]:
    """``n`` scenes with balanced labels; images of class ``watermarked`` marked with probability ``rate``
    (``rate=0``: the control data set)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % len(SHAPES)
        out.append(make_scene(rng, label, label == watermarked and rng.random() < rate))
    return out


def held_out(seed: int = 100, per_class: int = 40, marked_share: float = 0.75) -> list[Scene]:
    """The audit's held-out set: ``per_class`` scenes per class; in the watermarked class a share
    ``marked_share`` carries the mark (exactly, not at random), the rest are clean."""
    rng = np.random.default_rng(seed)
    n_marked = int(round(per_class * marked_share))
    return [make_scene(rng, label, label == WATERMARKED and i < n_marked)
            for label in range(len(SHAPES)) for i in range(per_class)]
