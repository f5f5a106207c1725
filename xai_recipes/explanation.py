"""The result of :func:`xai_recipes.explain`."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image


@dataclass
class Explanation:
    """Heatmaps for T targets on one image, at the original image's size.

    Attributes:
        image: the (RGB) image that was explained.
        heatmaps: ``T×H×W`` float32 in [0, 1]; 0 where the model saw nothing (see ``coverage``).
        coverage: ``H×W`` bool, True where the model's input came from (centre crops drop borders).
        indices, labels, scores: the explained classes, their names and softmax probabilities.
        predictions: the model's top-5 as ``(index, label, probability)``.
        recipe, method: which recipe and CAM method produced the maps.
        target_layers: names of the modules whose activations were used.
    """

    image: Image.Image
    heatmaps: np.ndarray
    coverage: np.ndarray
    indices: list[int]
    labels: list[str]
    scores: list[float]
    predictions: list[tuple[int, str, float]]
    recipe: str
    method: str
    target_layers: list[str] = field(default_factory=list)

    def overlay(self, i: int = 0, image_weight: float = 0.5) -> Image.Image:
        """The ``i``-th heatmap blended over the image (pixels outside ``coverage`` dimmed)."""
        rgb = np.asarray(self.image, dtype=np.float32) / 255
        out = show_cam_on_image(rgb, self.heatmaps[i], use_rgb=True, image_weight=image_weight)
        out[~self.coverage] = (np.asarray(self.image)[~self.coverage] * 0.35).astype(np.uint8)
        return Image.fromarray(out)

    def figure(self) -> Image.Image:
        """All targets' overlays side by side."""
        overlays = [np.asarray(self.overlay(i)) for i in range(len(self.indices))]
        return Image.fromarray(np.hstack(overlays))

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`figure` as an image file (PNG by extension)."""
        self.figure().save(path)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        targets = ", ".join(f"{l!r} ({s:.3f})" for l, s in zip(self.labels, self.scores))
        return f"Explanation(recipe={self.recipe!r}, method={self.method!r}, targets=[{targets}], size={self.heatmaps.shape})"
