"""``evaluate()`` for detectors and segmenters: pointing and energy per detection or region.

Each image holds several annotated objects (COCO style: ``bbox`` and/or ``mask`` per annotation,
any categories). The image is explained by each method for every detection (segment) the model
gives; each detection is matched to the annotation of its label that its box overlaps most (IoU ≥
``min_iou``, 0.5 as in COCO's mAP@0.5), each segment to the union of its class's annotations; its map
is scored by the pointing game and energy against that annotation's mask (its box when it has
none). Detections and segments with no matching annotation are rows with ``matched = False`` and no
scores: the summary gives, per method, the metrics' means over matched rows, the share matched, and
the number of images in which the model found nothing to explain (no detection above the threshold).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import DatasetError, NoDetectionError, XAIRecipesError
from .images import ImageInput, load_image
from .tasks.detection import iou

#: The metrics that apply per object (the perturbation curves explain whole-image probabilities).
OBJECT_METRICS = ("pointing", "energy")


@dataclass
class Annotation:
    """One annotated object: its class name, box ``(x0, y0, x1, y1)`` (inclusive) and/or ``H×W`` mask."""

    label: str
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None

    def region(self, shape: tuple[int, int]) -> np.ndarray:
        """The object as an ``H×W`` bool mask (its mask, else its box)."""
        if self.mask is not None:
            if self.mask.shape != tuple(shape):
                raise DatasetError(f"a {self.label!r} mask is {self.mask.shape}, the image {tuple(shape)}")
            return self.mask.astype(bool)
        if self.box is None:
            raise DatasetError(f"a {self.label!r} annotation has neither a box nor a mask")
        out = np.zeros(shape, bool)
        x0, y0, x1, y1 = (int(round(v)) for v in self.box)
        out[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
        return out


@dataclass
class Objects:
    """One evaluation image with every annotated object in it."""

    image: ImageInput
    annotations: list[Annotation] = field(default_factory=list)
    source: str = ""


def load_objects(folder: str | os.PathLike) -> list[Objects]:
    """Images of ``folder`` and every annotation of its COCO-style ``annotations.json`` (any number of
    categories per image; ``bbox`` ``[x, y, w, h]`` and/or ``mask``: a PNG path relative to the folder)."""
    from .evaluation import read_coco

    folder = Path(folder)
    path = folder / "annotations.json"
    categories, images, annotations = read_coco(path)
    try:
        by_image: dict[Any, list[Annotation]] = {}
        for a in annotations:
            box = None
            if "bbox" in a:
                x, y, w, h = a["bbox"]
                box = (x, y, x + w - 1, y + h - 1)
            mask = np.asarray(Image.open(folder / a["mask"]).convert("L")) > 0 if "mask" in a else None
            by_image.setdefault(a["image_id"], []).append(Annotation(categories[a["category_id"]], box, mask))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; write a COCO-style annotations.json with images, categories "
                           "and annotations (bbox [x, y, w, h] and/or mask: a PNG path)") from None
    out = [Objects(folder / name, by_image[i], str(folder / name)) for i, name in images.items() if i in by_image]
    if not out:
        raise DatasetError(f"{path} annotates no image")
    return out


def _bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def match(exp: Any, i: int, annotations: list[Annotation], shape: tuple[int, int], min_iou: float
          ) -> tuple[np.ndarray | None, float]:
    """The annotated region the ``i``-th map of ``exp`` explains (``None`` if none matches) and its IoU."""
    same = [a for a in annotations if a.label.lower() == exp.labels[i].lower()]
    if not same:
        return None, 0.0
    if exp.boxes is None:  # a segment: the union of its class's annotations
        union = np.logical_or.reduce([a.region(shape) for a in same])
        if exp.masks is None:
            return union, 1.0
        inter, total = np.logical_and(union, exp.masks[i]).sum(), np.logical_or(union, exp.masks[i]).sum()
        return union, float(inter / total) if total else 0.0
    ious = [iou(exp.boxes[i], a.box if a.box is not None else _bounds(a.region(shape))) for a in same]
    best = int(np.argmax(ious))
    return (same[best].region(shape), ious[best]) if ious[best] >= min_iou else (None, ious[best])


def evaluate_objects(model: Any, samples: Iterable[Objects], names: list[str], explain: Callable[..., Any],
                     metrics: Sequence[str], tolerance: int, min_iou: float = 0.5,
                     progress: Callable[[Iterable], Iterable] | None = None,
                     on_explanation: Callable[[Any, Any], None] | None = None, **options: Any
                     ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rows (one per method, image and detection or segment) and the per-method summary (module doc)."""
    from .evaluation import energy, pointing

    unknown = sorted(set(metrics) - set(OBJECT_METRICS))
    if unknown:
        raise XAIRecipesError(f"metric(s) {unknown} score a whole image's probability; detections and segments are "
                              f"scored with {', '.join(OBJECT_METRICS)}")
    rows: list[dict[str, Any]] = []
    empty = dict.fromkeys(names, 0)  # images in which the model finds nothing to explain (no detection above threshold)
    for sample in (progress or (lambda x: x))(samples):
        image = load_image(sample.image)
        shape = (image.height, image.width)
        for name in names:
            try:
                exp = explain(model, image, method=name, **options)
            except NoDetectionError:
                empty[name] += 1
                continue
            if on_explanation:
                on_explanation(sample, exp)
            for i, (label, score) in enumerate(zip(exp.labels, exp.scores)):
                region, overlap = match(exp, i, sample.annotations, shape, min_iou)
                row: dict[str, Any] = {"image": sample.source or str(sample.image), "method": name, "label": label,
                                       "score": round(float(score), 6), "matched": region is not None,
                                       "iou": round(overlap, 4)}
                if "pointing" in metrics:
                    row["pointing"] = None if region is None else pointing(exp.heatmaps[i], region, tolerance)
                if "energy" in metrics:
                    row["energy"] = None if region is None else energy(exp.heatmaps[i], region)
                rows.append(row)
    summary = {}
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        matched = [r for r in mine if r["matched"]]
        summary[name] = {m: float(np.mean([r[m] for r in matched])) if matched else float("nan") for m in metrics}
        summary[name]["matched"] = len(matched) / len(mine) if mine else float("nan")
        summary[name]["images without targets"] = empty[name]
    return rows, summary
