"""``evaluate()``: how good are a model's explanations, measured the way the field measures them.

Data is a list of :class:`Annotated` images (image, label, object box and/or mask) or a folder with
an ``annotations.json`` in COCO style (see :func:`load_annotations`). Each image is explained by
each method for its labelled class, and each metric scores the heatmap:

================  ==========================================================================  =========
metric            definition                                                                  better
================  ==========================================================================  =========
``pointing``      pointing game (Zhang et al. 2016): 1 if the map's peak lies on the object,  higher
                  or within ``tolerance`` pixels of it (15 px, the usual tolerance), else 0
``energy``        energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the   higher
                  map's mass that lies on the object
``deletion``      deletion AUC (Petsiuk et al. 2018, RISE): the most relevant pixels first     lower
                  replaced by a blurred copy in ``steps`` equal steps; the area under the
                  target's probability curve
``insertion``     insertion AUC: from the blurred image, the most relevant pixels first put    higher
                  back; the area under the target's probability curve
``road``          ROAD (Rong et al. 2022), grad-cam's ``ROADCombined``: the target logit's     higher
                  change when the least relevant pixels are imputed (noisy linear
                  imputation) minus its change when the most relevant are, halved, averaged
                  over removing 10 … 90 % — on the model input, the map resampled there
================  ==========================================================================  =========

``sanity=True`` adds, per method, the model-parameter randomisation check (Adebayo et al. 2018,
:func:`xai_recipes.sanity.parameter_randomisation`): the rank correlation of the maps with those of
the model whose layers are re-initialised from the head down; a method whose maps barely change
is flagged (``Evaluation.sanity``).

The object is the union of the annotations of the labelled class (box, mask, or the mask where
both are given). Deletion and insertion run all ``steps + 1`` perturbed images of an image through
the model in one batched forward pass.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from . import hfdata, loading, registry
from .capture import LogitsModel
from .errors import DatasetError, XAIRecipesError
from .images import ImageInput, load_image
from .modelstate import borrowed
from .task import Call
from .targets import resolve_targets

#: Tasks whose targets are objects in the image, evaluated per object (:mod:`xai_recipes.evaluation_objects`).
OBJECT_TASKS = ("object-detection", "zero-shot-object-detection", "image-segmentation")
#: Metric name → which direction is better.
DIRECTION = {"pointing": "higher", "energy": "higher", "deletion": "lower", "insertion": "higher", "road": "higher"}
METRICS = tuple(DIRECTION)


@dataclass
class Annotated:
    """One evaluation image: the image, its class (label name or index), and where the object is."""

    image: ImageInput
    label: int | str
    box: tuple[int, int, int, int] | Sequence[tuple[int, int, int, int]] | None = None  # x0, y0, x1, y1 (inclusive)
    mask: np.ndarray | None = None  # H×W, nonzero on the object
    source: str = ""

    def region(self, shape: tuple[int, int]) -> np.ndarray:
        """The object as an ``H×W`` bool mask of an image of ``shape``."""
        if self.mask is not None:
            mask = np.asarray(self.mask) != 0
            if mask.shape != tuple(shape):
                raise DatasetError(f"{self.source or 'image'}: mask {mask.shape} does not match the image {tuple(shape)}")
            return mask
        if self.box is None:
            raise DatasetError(f"{self.source or 'image'} has neither a box nor a mask to evaluate against")
        boxes = [self.box] if isinstance(self.box[0], (int, float, np.integer)) else list(self.box)
        out = np.zeros(shape, bool)
        for x0, y0, x1, y1 in boxes:
            out[max(int(y0), 0):int(y1) + 1, max(int(x0), 0):int(x1) + 1] = True
        return out


def read_coco(path: Path) -> tuple[dict[Any, str], dict[Any, str], list[dict]]:
    """``(category id → name, image id → file name, annotations)`` of a COCO-style ``annotations.json``."""
    try:
        data = json.loads(path.read_text())
        return ({c["id"]: c["name"] for c in data["categories"]}, {i["id"]: i["file_name"] for i in data["images"]},
                list(data["annotations"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; write a COCO-style annotations.json with images, categories "
                           "and annotations (bbox [x, y, w, h] and/or mask: a PNG path)") from None


def load_annotations(folder: str | os.PathLike) -> list[Annotated]:
    """Images of ``folder`` with its ``annotations.json`` (COCO style)::

        {"images": [{"id": 1, "file_name": "cat.jpg"}, ...],
         "categories": [{"id": 3, "name": "tabby"}, ...],
         "annotations": [{"image_id": 1, "category_id": 3, "bbox": [x, y, w, h]}, ...]}

    An annotation may name a mask PNG instead of (or besides) its box: ``"mask": "masks/cat.png"``
    (relative to the folder; nonzero pixels are the object). Each image is evaluated for the class
    of its annotations (all annotations of an image must share one category).
    """
    folder = Path(folder)
    path = folder / "annotations.json"
    categories, images, annotations = read_coco(path)
    by_image: dict[Any, list[dict]] = {}
    for a in annotations:
        by_image.setdefault(a.get("image_id"), []).append(a)
    out = []
    for image_id, file_name in images.items():
        found = by_image.get(image_id, [])
        if not found:
            continue
        names = {categories.get(a.get("category_id")) for a in found}
        if len(names) != 1 or None in names:
            raise DatasetError(f"{file_name}: annotations name categories {sorted(map(str, names))}; one class per image")
        boxes = [(x, y, x + w - 1, y + h - 1) for x, y, w, h in (a["bbox"] for a in found if "bbox" in a)]
        masks = [np.asarray(Image.open(folder / a["mask"]).convert("L")) > 0 for a in found if "mask" in a]
        mask = np.logical_or.reduce(masks) if masks else None
        out.append(Annotated(folder / file_name, names.pop(), boxes or None, mask, str(folder / file_name)))
    if not out:
        raise DatasetError(f"{path} annotates no image")
    return out


def _as_annotated(data: str | os.PathLike | Iterable[Any]) -> list[Annotated]:
    if isinstance(data, (str, os.PathLike)):
        return load_annotations(data)
    out = []
    for i, item in enumerate(data):
        if isinstance(item, Annotated):
            out.append(item)
            continue
        image, label, where = item
        is_mask = isinstance(where, np.ndarray) and where.ndim == 2
        out.append(Annotated(image, label, None if is_mask else tuple(where), where if is_mask else None, f"<image {i}>"))
    return out


def pointing(heatmap: np.ndarray, region: np.ndarray, tolerance: int = 15) -> float:
    """1.0 if the peak of ``heatmap`` lies on ``region`` or within ``tolerance`` pixels of it, else 0.0."""
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    if tolerance > 0:
        distance = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 5)
        return float(distance[y, x] <= tolerance)
    return float(region[y, x])


def energy(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the (non-negative part of the) map's mass that lies on ``region``."""
    positive = np.clip(heatmap, 0, None)
    total = float(positive.sum())
    return float(positive[region].sum() / total) if total > 0 else 0.0


def perturbation_curves(heatmap: np.ndarray, image: np.ndarray, steps: int = 16, blur: float = 10.0
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The deletion and insertion image sequences (``steps + 1`` each): the most relevant pixels
    first (ties broken by position), replaced by / restored from a Gaussian-blurred copy."""
    blurred = cv2.GaussianBlur(image, (0, 0), blur)
    order = np.argsort(-heatmap.ravel(), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    rank = rank.reshape(heatmap.shape)
    deletion, insertion = [], []
    for k in range(steps + 1):
        top = (rank < round(order.size * k / steps))[:, :, None]
        deletion.append(np.where(top, blurred, image))
        insertion.append(np.where(top, image, blurred))
    return deletion, insertion


def auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    v = np.asarray(values, dtype=np.float64)
    return float(((v[1:] + v[:-1]) / 2).mean()) if len(v) > 1 else float(v[0])


@dataclass
class Evaluation:
    """Per-image rows and per-method means of every metric (see the module docstring)."""

    rows: list[dict[str, Any]]
    methods: list[str]
    metrics: list[str]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # method → metric → mean
    sanity: dict[str, Any] = field(default_factory=dict)  # method → SanityReport (sanity=True)

    def as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "direction": {m: DIRECTION[m] for m in self.metrics}, "rows": self.rows,
                "sanity": {m: r.as_dict() for m, r in self.sanity.items()}}

    def table(self) -> str:
        """The summary as a text table: methods × metrics (means), with each metric's direction."""
        head = f"{'method':20}" + "".join(f"{m + (' ↑' if DIRECTION[m] == 'higher' else ' ↓'):>12}" for m in self.metrics)
        lines = [head] + [f"{name:20}" + "".join(f"{self.summary[name][m]:12.3f}" for m in self.metrics)
                          for name in self.methods]
        for name, report in self.sanity.items():
            lines.append(f"sanity {name}: rank correlation after randomisation {report.correlation[-1]:.3f} — "
                         + ("passed" if report.passed else f"FLAGGED: {report.reason}"))
        return "\n".join(lines)

    def csv(self) -> str:
        """The per-image rows as CSV."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]) if self.rows else ["image"])
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()


def evaluate(
    model: str | os.PathLike | torch.nn.Module,
    data: str | os.PathLike | Iterable[Any],
    *,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    processor: Any = None,
    recipe: Any = None,
    tolerance: int = 15,
    steps: int = 16,
    trust_remote_code: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    on_explanation: Callable[[Annotated, Any], None] | None = None,
    sanity: bool = False,
    sanity_images: int = 8,
    image_column: str | None = None,
    label_column: str | None = None,
    box_column: str | None = None,
    mask_column: str | None = None,
    labels: Sequence[str] | None = None,
    template: str | None = "This is a photo of {}.",
    **task_options: Any,
) -> Evaluation:
    """Explain every annotated image with every method (for its labelled class) and score the maps.

    Args:
        model: as for :func:`xai_recipes.explain`.
        data: a folder with ``annotations.json`` (:func:`load_annotations`), or an iterable of
            :class:`Annotated` or ``(image, label, box or mask)`` tuples (box: ``(x0, y0, x1, y1)``),
            or a ``datasets.Dataset`` read row by row (``image_column`` / ``label_column``: default
            its one ``Image`` and ``ClassLabel`` columns; ``box_column`` or ``mask_column``: required).
        methods: method names; default: the recipe's default method and ``gradcam``.
        metrics: any of ``pointing``, ``energy``, ``deletion``, ``insertion``.
        tolerance: the pointing game's tolerance in pixels of the original image.
        steps: deletion/insertion steps (each image's ``steps + 1`` perturbations run as one batch).
        progress: wraps the iteration over images (e.g. ``tqdm``).
        on_explanation: called with each ``(sample, explanation)``, e.g. to save overlays.
        sanity: also run the parameter-randomisation check per method on the first
            ``sanity_images`` images (``Evaluation.sanity``).
        labels, template: zero-shot models (CLIP, SigLIP): the candidate prompts (default: every
            category name in the data, in order of appearance) and the template each goes through.
        **task_options: detectors and segmenters (``threshold=``, ``top_k=``): every detection or
            segment is explained and scored (``pointing``, ``energy``) against the annotation it
            matches (:mod:`xai_recipes.evaluation_objects`; data: :func:`~xai_recipes.evaluation_objects.load_objects`).
    """
    from .engine import explain

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise XAIRecipesError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise XAIRecipesError(f"steps must be an integer ≥ 2, got {steps!r}")
    model, processor = loading.load(model, processor, None, trust_remote_code)
    chosen = registry.find_recipe(model, recipe)
    names = [registry.get_method(m).name for m in (methods or dict.fromkeys([chosen.default_method, "gradcam"]))]
    task = registry.find_task(model, chosen)
    if task.name in OBJECT_TASKS:  # detectors, segmenters: per detection or region, against the annotation it matches
        from .evaluation_objects import OBJECT_METRICS, evaluate_objects, load_objects

        objects = load_objects(data) if isinstance(data, (str, os.PathLike)) else list(data)
        chosen_metrics = [m for m in metrics if m in OBJECT_METRICS] if tuple(metrics) == METRICS else list(metrics)
        rows, summary = evaluate_objects(model, objects, names, explain, chosen_metrics, tolerance, progress=progress,
                                         on_explanation=on_explanation, processor=processor, recipe=chosen,
                                         **task_options)
        return Evaluation(rows, names, chosen_metrics, summary)
    if task_options:
        raise XAIRecipesError(f"option(s) {', '.join(sorted(task_options))} apply to detectors and segmenters; "
                              f"{type(model).__name__} is explained by task {task.name!r}")
    samples = (hfdata.Rows(data, image_column, label_column, box_column, mask_column) if hfdata.is_dataset(data)
               else _as_annotated(data))
    extra: dict[str, Any] = {}
    if "labels" in task.options:  # zero-shot: the data's category names are the prompts, through the template
        extra = {"labels": list(labels or dict.fromkeys(str(s.label) for s in samples)), "template": template}
    bound = task.bind(Call(model, processor, chosen, None, {**task.options, **extra}))
    id2label = bound.labels
    rows: list[dict[str, Any]] = []
    for sample in (progress or (lambda x: x))(samples):
        image = load_image(sample.image)
        pixels = np.asarray(image)
        region = sample.region(pixels.shape[:2])
        (label,) = resolve_targets(sample.label, id2label)
        for name in names:
            exp = explain(model, image, method=name, target=label, processor=processor, recipe=chosen, **extra)
            if on_explanation:
                on_explanation(sample, exp)
            row: dict[str, Any] = {"image": sample.source or str(sample.image), "label": id2label[label], "method": name,
                                   "predicted": exp.predictions[0][1], "probability": round(exp.scores[0], 6)}
            scorer = lambda images: probabilities(model, processor, bound.recipe, images, label,  # noqa: E731
                                                  bound.probabilities)
            row.update(score_map(exp.heatmaps[0], pixels, region, scorer, metrics, tolerance, steps))
            if "road" in metrics:
                row["road"] = road(model, bound.recipe, processor, image, to_input(exp.heatmaps[0], exp.geometry), label)
            rows.append(row)
    summary = {n: {m: float(np.mean([r[m] for r in rows if r["method"] == n])) for m in metrics} for n in names}
    reports = {}
    if sanity:
        from .sanity import parameter_randomisation

        images = [load_image(s.image) for s in samples[:sanity_images]]
        for name in names:
            reports[name] = parameter_randomisation(model, images, method=name, processor=processor, recipe=chosen)
    return Evaluation(rows, names, list(metrics), summary, reports)


def score_map(heatmap: np.ndarray, image: np.ndarray, region: np.ndarray,
              probabilities: Callable[[list[np.ndarray]], list[float]], metrics: Sequence[str] = METRICS,
              tolerance: int = 15, steps: int = 16) -> dict[str, float]:
    """Every metric of one heatmap (``H×W``, the image's size) of ``image`` against the object
    ``region``; ``probabilities(images)`` gives the target's probability on each perturbed image."""
    row: dict[str, float] = {}
    if "pointing" in metrics:
        row["pointing"] = pointing(heatmap, region, tolerance)
    if "energy" in metrics:
        row["energy"] = energy(heatmap, region)
    curves = [name for name in ("deletion", "insertion") if name in metrics]
    if curves:  # only the curves asked for, all their images in one batch
        deletion, insertion = perturbation_curves(heatmap, image, steps)
        images = {"deletion": deletion, "insertion": insertion}
        probs = probabilities([im for name in curves for im in images[name]])
        for i, name in enumerate(curves):
            row[name] = auc(probs[i * (steps + 1):(i + 1) * (steps + 1)])
    return row


def to_input(heatmap: np.ndarray, geometry: Any) -> np.ndarray:
    """An image-sized heatmap resampled onto the model input, through the processor's measured
    geometry (``image coordinate = scale · input coordinate + offset``)."""
    (sy, sx), (oy, ox) = geometry.scale, geometry.offset
    h, w = geometry.input_size
    ys = (sy * np.arange(h) + oy).astype(np.float32)
    xs = (sx * np.arange(w) + ox).astype(np.float32)
    map_x, map_y = np.meshgrid(xs, ys)
    return cv2.remap(heatmap.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def road(model: torch.nn.Module, recipe: Any, processor: Any, image: Image.Image, input_map: np.ndarray, label: int,
         percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90)) -> float:
    """grad-cam's ROAD score (``ROADCombined``) of ``input_map`` (on the model input) for ``label``."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    param = next(model.parameters())
    pixel_values = recipe.image_tensor(processor(images=image, return_tensors="pt")).to(param.device, param.dtype)
    with borrowed(model):
        score = ROADCombined(percentiles=list(percentiles))(pixel_values, input_map[None], [ClassifierOutputTarget(label)],
                                                           LogitsModel(model, recipe))
    return float(np.asarray(score).ravel()[0])


def probabilities(model: torch.nn.Module, processor: Any, recipe: Any, images: list[np.ndarray], label: int,
                  probs: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """The target's probability on each image (``probs`` of the scores: the task's; default the softmax),
    in one batched forward pass."""
    pixel_values = torch.cat([recipe.image_tensor(processor(images=Image.fromarray(im), return_tensors="pt"))
                              for im in images])
    param = next(model.parameters())
    with borrowed(model), torch.inference_mode():
        logits = LogitsModel(model, recipe)(pixel_values.to(param.device, param.dtype))
    return (probs or (lambda s: s.float().softmax(-1)))(logits)[:, label].tolist()


__all__ = ["Annotated", "Evaluation", "evaluate", "load_annotations", "pointing", "energy", "perturbation_curves", "auc",
           "score_map", "probabilities", "road", "to_input", "METRICS", "DIRECTION"]

