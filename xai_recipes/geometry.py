"""Where each pixel of the model input came from in the original image.

Image processors resize, centre-crop, rescale, normalise and sometimes flip channels. All of
that is affine per axis and per channel, so instead of re-implementing every processor's
arithmetic we *measure* it: the processor is run on a black, a white, a horizontal-ramp and a
vertical-ramp image of the original size, and a straight line fitted through the decoded ramps
gives, for each axis, ``original = scale · input + offset`` (pixel centres). A fit within 8-bit
quantisation of a plain whole-axis resize (or no resize) is snapped to that exact map. Heatmaps
are then warped back with that map; pixels the model never saw get 0 and ``coverage = False``.

Processors that pad (OWLv2 pads the image to a square with grey before resizing) give input pixels that
are the same on the black and the white probe: those are not the image. Each axis is fitted only where
the image is, so the padding maps outside the image (no original pixel lands there) and, with the
padding at the end of an axis, the fit snaps to the exact resize of the padded extent.
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

    def input_coverage(self) -> np.ndarray:
        """``h×w`` mask of the model-input pixels that show the image: False on padding (an input pixel whose
        centre maps more than a quarter of an input pixel beyond the image's edge)."""
        (sy, sx), (oy, ox) = self.scale, self.offset
        (h, w), (H, W) = self.input_size, self.image_size

        def inside(scale: float, offset: float, n: int, extent: int) -> np.ndarray:
            at = scale * np.arange(n) + offset
            slack = 0.25 * max(scale, 1.0)
            return (at >= -0.5 - slack) & (at <= extent - 0.5 + slack)

        return inside(sy, oy, h, H)[:, None] & inside(sx, ox, w, W)[None, :]

    def to_image(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T×h×w`` maps on the model input → (``T×H×W`` maps, ``H×W`` coverage mask). Input pixels that are
        not the image (:meth:`input_coverage`: padding) count as 0."""
        H, W = self.image_size
        (sy, sx), (oy, ox) = self.scale, self.offset
        # For each original pixel (x, y): input coordinate u = (x - ox) / sx, v = (y - oy) / sy.
        inverse = np.float32([[1 / sx, 0, -ox / sx], [0, 1 / sy, -oy / sy]])
        shown = self.input_coverage().astype(np.float32)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warp = lambda m: cv2.warpAffine(m, inverse, (W, H), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        coverage = warp(shown) > 0.5
        out = np.stack([warp(np.ascontiguousarray(m, np.float32) * shown) for m in maps]) * coverage
        return out.astype(np.float32), coverage


def _fit_axis(decoded: np.ndarray, extent: int) -> tuple[float, float]:
    """Fit ``original = a · input + b`` to a decoded ramp profile (NaN where the input is not the image),
    over the interior 80 % of where it is: robust to edges."""
    where = np.flatnonzero(np.isfinite(decoded))
    n = where.size
    if n < 2:
        raise GeometryError(f"the image covers {n} input pixel(s) along an axis of the processor's output; explain() cannot "
                            "map heatmaps back to this image. Pass a larger image or preprocess it yourself")
    lo, hi = int(n * 0.1), max(int(n * 0.9), int(n * 0.1) + 2)
    u = where[lo:hi].astype(np.float64)
    x = decoded[where[lo:hi]] * (extent - 1)
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
    # The image is where black and white differ; padding (the same on both) is not. A pixel counts as image
    # where every channel spans at least half that channel's widest span (blurred borders: mostly image).
    widest = np.abs(span).max(axis=(1, 2), keepdims=True)
    if widest.min() < 1e-6:
        raise GeometryError("the image processor maps black and white to the same values; cannot measure it")
    image = (np.abs(span) >= 0.5 * widest).all(axis=0)  # h×w
    safe = np.where(image, span, 1.0)

    def profile(ramp: np.ndarray, axis: int) -> np.ndarray:
        """The decoded ramp averaged across the other axis over the image's pixels, NaN where it has none."""
        decoded = ((run(ramp) - black) / safe).mean(axis=0)  # h×w
        count = image.sum(axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (decoded * image).sum(axis=axis) / count, np.nan)

    dx = profile(ramp_x, 0)  # along input columns
    dy = profile(ramp_y, 1)  # along input rows
    h, w = black.shape[-2:]
    ax, bx = _snap(*_fit_axis(dx, W), W, w, padded=not image.any(axis=0).all())
    ay, by = _snap(*_fit_axis(dy, H), H, h, padded=not image.any(axis=1).all())
    return Geometry((H, W), (h, w), (ay, ax), (by, bx))


def _snap(a: float, b: float, extent: int, n: int, padded: bool = False) -> tuple[float, float]:
    """The exact map when the fit is a whole-axis resize (or none) up to 8-bit ramp quantisation:
    ``scale = extent / n`` and pixel centres aligned, ``offset = (scale - 1) / 2``. With ``padded`` (part of
    the axis is not the image) the same for the image padded at the end of the axis to a whole number of
    pixels ``P``: ``scale = P / n``."""
    for whole in (extent, round(a * n)) if padded else (extent,):
        exact = whole / n
        offset = (exact - 1) / 2
        if whole >= 1 and abs(a - exact) <= 0.005 * exact and abs(b - offset) <= 0.25 * max(exact, 1):
            return exact, offset
    return a, b
