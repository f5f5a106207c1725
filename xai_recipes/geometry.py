"""Where each pixel of the model input came from in the original image.

Image processors resize, centre-crop, rescale, normalise and sometimes flip channels. All of
that is affine per axis and per channel, so instead of re-implementing every processor's
arithmetic we *measure* it: the processor is run on a black, a white, a horizontal-ramp and a
vertical-ramp image of the original size, and a straight line fitted through the decoded ramps
gives, for each axis, ``original = scale · input + offset`` (pixel centres). A fit within 8-bit
quantisation of a plain whole-axis resize (or no resize) is snapped to that exact map. Heatmaps
are then warped back with that map; pixels the model never saw get 0 and ``coverage = False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .errors import GeometryError

#: ``PIL image -> 1×C×h×w`` (or ``C×h×w``) array: the processor as the engine calls it.
Preprocess = Callable[[Image.Image], "np.ndarray"]


@dataclass(frozen=True)
class Geometry:
    """Affine map from model-input pixel centres to original-image pixel centres."""

    image_size: tuple[int, int]  # original (height, width)
    input_size: tuple[int, int]  # model input (height, width)
    scale: tuple[float, float]  # (y, x): original pixels per input pixel
    offset: tuple[float, float]  # (y, x): original coordinate of input pixel 0

    def to_image(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T×h×w`` maps on the model input → (``T×H×W`` maps, ``H×W`` coverage mask)."""
        H, W = self.image_size
        (sy, sx), (oy, ox) = self.scale, self.offset
        # For each original pixel (x, y): input coordinate u = (x - ox) / sx, v = (y - oy) / sy.
        inverse = np.float32([[1 / sx, 0, -ox / sx], [0, 1 / sy, -oy / sy]])
        ones = np.ones(self.input_size, np.float32)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warp = lambda m: cv2.warpAffine(m, inverse, (W, H), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        coverage = warp(ones) > 0.5
        out = np.stack([warp(np.ascontiguousarray(m, np.float32)) for m in maps]) * coverage
        return out.astype(np.float32), coverage


def _fit_axis(decoded: np.ndarray, extent: int) -> tuple[float, float]:
    """Fit ``original = a · input + b`` to a decoded ramp profile (interior 80 %, robust to edges)."""
    n = decoded.shape[0]
    lo, hi = int(n * 0.1), max(int(n * 0.9), int(n * 0.1) + 2)
    u = np.arange(n, dtype=np.float64)[lo:hi]
    x = decoded[lo:hi] * (extent - 1)
    a, b = np.polyfit(u, x, 1)
    residual = np.abs(a * u + b - x).max()
    if not np.isfinite(a) or a <= 0 or residual > max(2.0, 0.02 * extent):
        raise GeometryError(
            "the image processor's output is not a resize/crop of the input (fit residual "
            f"{residual:.1f} px); explain() cannot map heatmaps back to this image. Pass a processor "
            "that resizes and centre-crops, or preprocess the image yourself to the model's input size"
        )
    return float(a), float(b)


def measure(preprocess: Preprocess, image_size: tuple[int, int]) -> Geometry:
    """Measure the processor's geometry for an image of ``(height, width)``."""
    H, W = image_size
    ramp_x = np.round(np.linspace(0, 255, W)).astype(np.uint8)[None, :].repeat(H, 0)
    ramp_y = np.round(np.linspace(0, 255, H)).astype(np.uint8)[:, None].repeat(W, 1)

    def run(gray: np.ndarray) -> np.ndarray:
        out = np.asarray(preprocess(Image.fromarray(gray).convert("RGB")), dtype=np.float64)
        return out.reshape(out.shape[-3:])

    black, white = run(np.zeros((H, W), np.uint8)), run(np.full((H, W), 255, np.uint8))
    span = white - black
    if np.abs(span).min() < 1e-6:
        raise GeometryError("the image processor maps black and white to the same values; cannot measure it")
    dx = ((run(ramp_x) - black) / span).mean(axis=(0, 1))  # profile along input columns
    dy = ((run(ramp_y) - black) / span).mean(axis=(0, 2))  # profile along input rows
    h, w = black.shape[-2:]
    ax, bx = _snap(*_fit_axis(dx, W), W, w)
    ay, by = _snap(*_fit_axis(dy, H), H, h)
    return Geometry((H, W), (h, w), (ay, ax), (by, bx))


def _snap(a: float, b: float, extent: int, n: int) -> tuple[float, float]:
    """The exact map when the fit is a whole-axis resize (or none) up to 8-bit ramp quantisation:
    ``scale = extent / n`` and pixel centres aligned, ``offset = (scale - 1) / 2``."""
    exact = extent / n
    offset = (exact - 1) / 2
    if abs(a - exact) <= 0.005 * exact and abs(b - offset) <= 0.25 * max(exact, 1):
        return exact, offset
    return a, b
