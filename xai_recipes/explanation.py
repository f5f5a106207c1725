"""The result of :func:`xai_recipes.explain`."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from . import render
from .errors import XAIRecipesError
from .geometry import Geometry

FORMAT = "xai-recipes.explanation/1"
_METADATA = ("indices", "labels", "scores", "predictions", "recipe", "method", "target_layers", "source", "legend",
             "intercepts")


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
        source: where the image came from (its path, or ``<image i>`` in a list).
        geometry: the processor's measured map from model input to image pixels.
        legend: DFF only: per concept (heatmap), the classes the model reads from it, as
            ``(index, label, probability)``; ``indices``/``labels``/``scores`` hold the first.
        contributions, intercepts: patch contributions only: ``T×h×w`` per-patch logit
            contributions (``contributions[t].sum() + intercepts[t]`` is the logit); there the
            heatmaps are signed, in [-1, 1] (divided by the largest magnitude).
        heads: ``attention`` only: ``heads×H×W`` maps, one per attention head of the last
            block, each in [0, 1] (``heatmaps`` holds their mean).
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
    source: str | None = None
    geometry: Geometry | None = None
    legend: list[list[tuple[int, str, float]]] | None = None
    contributions: np.ndarray | None = None
    intercepts: list[float] | None = None
    heads: np.ndarray | None = None

    def overlay(self, i: int = 0, image_weight: float = 0.5) -> Image.Image:
        """The ``i``-th heatmap blended over the image (pixels outside ``coverage`` dimmed)."""
        if self.contributions is not None:
            return render.signed(self.image, self.heatmaps[i], self.coverage, image_weight)
        rgb = np.asarray(self.image, dtype=np.float32) / 255
        out = show_cam_on_image(rgb, self.heatmaps[i], use_rgb=True, image_weight=image_weight)
        out[~self.coverage] = (np.asarray(self.image)[~self.coverage] * 0.35).astype(np.uint8)
        return Image.fromarray(out)

    def figure(self) -> Image.Image:
        """All targets' overlays side by side; for DFF, the concepts in colour with their legend."""
        if self.legend is not None:
            return render.factorization(self.image, self.heatmaps, self.coverage, self.legend)
        overlays = [np.asarray(self.overlay(i)) for i in range(len(self.indices))]
        return Image.fromarray(np.hstack(overlays))

    def save(self, path: str | os.PathLike) -> list[Path]:
        """Write the result; returns the files written.

        ``result.npz`` (any suffix that is not an image format) writes the arrays (heatmaps,
        coverage, image) to ``result.npz`` and everything else (labels, scores, predictions,
        recipe, method, layers, geometry) to ``result.json``, no pickle: :func:`load` reads them
        back. An image suffix (``.png``, ``.jpg``, ...) writes :meth:`figure` instead.
        """
        path = Path(path)
        if path.suffix.lower() in Image.registered_extensions():
            self.figure().save(path)
            return [path]
        arrays, meta = path.with_suffix(".npz"), path.with_suffix(".json")
        extra = {k: getattr(self, k) for k in ("contributions", "heads") if getattr(self, k) is not None}
        np.savez_compressed(arrays, heatmaps=self.heatmaps, coverage=self.coverage, image=np.asarray(self.image), **extra)
        info = {k: getattr(self, k) for k in _METADATA}
        info["geometry"] = dataclasses.asdict(self.geometry) if self.geometry else None
        meta.write_text(json.dumps({"format": FORMAT, "arrays": arrays.name, **info}, indent=1))
        return [arrays, meta]

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        targets = ", ".join(f"{l!r} ({s:.3f})" for l, s in zip(self.labels, self.scores))
        return f"Explanation(recipe={self.recipe!r}, method={self.method!r}, targets=[{targets}], size={self.heatmaps.shape})"


def load(path: str | os.PathLike) -> Explanation:
    """Read an :class:`Explanation` written by :meth:`Explanation.save` (its ``.npz`` or ``.json``)."""
    meta_path = Path(path).with_suffix(".json")
    try:
        info = json.loads(meta_path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r} is not {FORMAT!r}")
        with np.load(meta_path.with_name(info["arrays"]), allow_pickle=False) as arrays:
            heatmaps, coverage, image = arrays["heatmaps"], arrays["coverage"], arrays["image"]
            contributions = arrays["contributions"] if "contributions" in arrays.files else None
            heads = arrays["heads"] if "heads" in arrays.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise XAIRecipesError(f"cannot load an explanation from {path}: {exc}; pass the .npz or .json "
                              "written by Explanation.save()") from exc
    geometry = info["geometry"]
    fields = {k: info[k] for k in _METADATA}
    fields["predictions"] = [tuple(p) for p in fields["predictions"]]
    if fields["legend"] is not None:
        fields["legend"] = [[tuple(name) for name in names] for names in fields["legend"]]
    return Explanation(
        image=Image.fromarray(image),
        heatmaps=heatmaps,
        coverage=coverage,
        geometry=Geometry(**{k: tuple(v) for k, v in geometry.items()}) if geometry else None,
        contributions=contributions,
        heads=heads,
        **fields,
    )
