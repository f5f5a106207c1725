"""Object detection: explain the detections the model's own post-processing keeps, one map each.

The detections are ``pipeline("object-detection")``'s: the image processor's
``post_process_object_detection`` at ``threshold=`` (0.5, the pipeline's default) with boxes in the
image's pixels, best first, at most ``top_k`` (default 10). Each detection is one object query
``q`` read as class ``c``, and its map explains that query's class logit ``logits[q, c]``: the
scores the methods differentiate are the model's ``B×Q×C`` logits flattened, so T detections cost
one forward pass and one batched backward. Targets: an index in best-first order, a label (every
detection of it), or a box ``(x0, y0, x1, y1)`` in image pixels (the detection overlapping it most,
IoU ≥ 0.1), or a list of those. ``box_terms=True`` adds the box terms, as grad-cam's
``FasterRCNNBoxScoreTarget`` does: each query's score becomes its class logit plus the IoU of its
predicted box with its box on the unperturbed image (the image's first forward pass), so the map
explains where the box is as well as what is in it. (At the unperturbed image the IoU is at its
maximum, 1, where its gradient vanishes: the term changes what perturbation methods see, occlusion,
feature ablation, the SHAP family, not the gradient methods' maps — as with grad-cam's target.)
"""

from __future__ import annotations

import math
from dataclasses import replace
from numbers import Real
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import NoDetectionError, RegionError, TargetIndexError, UnknownLabelError, XAIRecipesError
from ..hookspecs import hookimpl
from ..recipe import Recipe
from ..targets import resolve_targets
from ..task import Bound, Call, Outputs, Region, Task
from .zero_shot_detection import is_open_vocabulary

THRESHOLD = 0.5  # pipeline("object-detection")'s default
MIN_IOU = 0.1
TOP_K = 10


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers object detector (``*ForObjectDetection``)."""
    return type(model).__name__.endswith("ForObjectDetection") and getattr(model, "config", None) is not None


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if not is_detector(model):
        return f"{type(model).__name__} is not an object detector (an AutoModelForObjectDetection model)"
    if is_open_vocabulary(model):
        return (f"{type(model).__name__} detects text prompts, not classes of its own: pass target='a prompt' "
                "(task 'zero-shot-object-detection')")
    if recipe.embedding is not None:
        return f"recipe {recipe.name!r} explains an image embedding, not a detector's query logits"
    return None


def _box(value: Any) -> tuple[float, float, float, float] | None:
    """``value`` as a box if it is a tuple (or 1-d array) of 4 numbers, else ``None``."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1 and value.shape[0] == 4:
        value = tuple(value.tolist())
    if not (isinstance(value, tuple) and len(value) == 4):
        return None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise RegionError(f"box {str(value)[:80]} must be 4 numbers; pass (x0, y0, x1, y1) in image pixels")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RegionError(f"box {value!r} holds NaN or infinity; pass 4 finite pixel coordinates (x0, y0, x1, y1)")
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"box {value!r} has x1 <= x0 or y1 <= y0; pass (x0, y0, x1, y1) with the top-left corner "
                          "first, e.g. (10, 20, 110, 140)")
    return x0, y0, x1, y1


def parse_targets(target: Any, id2label: dict[int, str]) -> list[tuple[str, Any]] | None:
    """``[("index", i) | ("label", class id) | ("box", (x0, y0, x1, y1)), ...]``, or ``None`` (the top-k)."""
    if target is None:
        return None
    box = _box(target)
    items = [target] if box is not None or not isinstance(target, (list, np.ndarray, torch.Tensor)) else list(target)
    if not items:
        raise TargetIndexError("target is an empty list; pass detection indices, labels or boxes, or None for the top_k")
    out: list[tuple[str, Any]] = []
    for item in items:
        box = _box(item)
        if box is not None:
            out.append(("box", box))
        elif isinstance(item, str):
            try:
                out.append(("label", resolve_targets(item, id2label)[0]))
            except UnknownLabelError as exc:
                raise UnknownLabelError(f"{exc} (a detector finds only its own classes; free-text prompts need an "
                                        "open-vocabulary detector such as OWL-ViT or OWLv2)") from None
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) or getattr(item, "ndim", None) == 0 \
                and "int" in str(getattr(item, "dtype", "")):
            if int(item) < 0:
                raise TargetIndexError(f"detection index {int(item)} is negative; pass 0 for the best detection")
            out.append(("index", int(item)))
        else:
            raise TargetIndexError(f"target {str(item)[:60]!r} is not a detection index, a label or a box; pass an "
                                   "int (0: the best detection), a label, or (x0, y0, x1, y1) as a tuple of 4 numbers")
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _corners(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``Q×4`` normalised ``(cx, cy, w, h)`` → ``(x0, y0, x1, y1)`` in pixels of an image of ``size``."""
    cx, cy, w, h = boxes.float().unbind(-1)
    H, W = size
    return torch.stack([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], -1)


def image_output(output: Any, b: int) -> Any:
    """Image ``b``'s part of a batch's detector output, detached: every batched tensor field (the
    post-processing of some families reads more than ``logits`` and ``pred_boxes``, e.g. ``order_logits``)."""
    batch = output.logits.shape[0]
    fields = {k: v[b : b + 1].detach() for k, v in output.items()
              if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch}
    return type(output)(**fields)


def detections(processor: Any, output: Any, size: tuple[int, int], threshold: float,
               id2label: dict[int, str]) -> list[Region]:
    """The detections of one image (``output`` of a batch of one), best first, each a query-class score."""
    logits, boxes = output.logits.detach(), output.pred_boxes.detach()
    found = processor.post_process_object_detection(output, threshold=threshold, target_sizes=[size])[0]
    n_classes = logits.shape[-1]
    corners = _corners(boxes[0], size)
    regions, used = [], set()
    for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].float()):
        distance = (corners - box.to(corners.device)).abs().sum(-1)  # the query the box was read from
        for q in distance.argsort().tolist():
            if (q, label) not in used:
                break
        used.add((q, label))
        regions.append(Region(q * n_classes + int(label), id2label.get(int(label), str(label)), float(score),
                              tuple(float(v) for v in box.tolist())))
    return sorted(regions, key=lambda r: -r.score)


def pick(found: list[Region], wanted: list[tuple[str, Any]] | None, top_k: int, size: tuple[int, int],
         threshold: float, id2label: dict[int, str]) -> list[Region]:
    """The detections ``wanted`` asks for (``None``: the ``top_k`` best), or a typed error naming why none."""
    if not found:
        raise NoDetectionError(f"no detection above threshold={threshold} in this image; lower threshold= (e.g. "
                               f"threshold={threshold / 2:g}) or check that the image shows what the detector knows")
    if wanted is None:
        return found[:top_k]
    H, W = size
    chosen: list[Region] = []
    for kind, value in wanted:
        if kind == "index":
            if value >= len(found):
                raise TargetIndexError(f"detection {value} asked for, but only {len(found)} detection(s) are above "
                                       f"threshold={threshold}; pass 0..{len(found) - 1} or lower threshold=")
            chosen.append(found[value])
        elif kind == "label":
            hits = [r for r in found if r.label == id2label[value]]
            if not hits:
                seen = sorted({r.label for r in found})
                raise NoDetectionError(f"no {id2label[value]!r} detected above threshold={threshold} (detected: "
                                       f"{', '.join(seen)}); lower threshold= or pick one of those")
            chosen.extend(hits)
        else:
            x0, y0, x1, y1 = value
            if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
                raise RegionError(f"box {value} lies outside the {W}×{H} image; pass pixel coordinates within "
                                  f"0..{W} (x) and 0..{H} (y)")
            overlaps = [iou(value, r.box) for r in found]
            best = int(np.argmax(overlaps))
            if overlaps[best] < MIN_IOU:
                raise NoDetectionError(f"no detection overlaps box {value} (best IoU {overlaps[best]:.2f} < {MIN_IOU}); "
                                       f"pass a box over one of the detections: "
                                       f"{[tuple(round(v) for v in r.box) for r in found[:5]]}")
            chosen.append(found[best])
    return chosen


def bind(call: Call) -> Bound:
    id2label = {int(k): v for k, v in call.model.config.id2label.items()}
    wanted = parse_targets(call.target, id2label)
    threshold = call.options.get("threshold", THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 <= threshold < 1:
        raise XAIRecipesError(f"threshold must be a number in [0, 1), got {threshold!r}; pass e.g. threshold=0.5")
    outputs = Outputs()
    recipe = call.recipe

    def scorer(reference: dict[str, torch.Tensor] | None) -> Callable[[Any], torch.Tensor]:
        def scores(output: Any) -> torch.Tensor:
            logits = recipe.logits(output)
            if reference is not None:  # box terms: + each query's box IoU with its box on the unperturbed image
                boxes = output.pred_boxes
                reference.setdefault("boxes", boxes.detach())
                logits = logits + box_iou(boxes, reference["boxes"])[..., None].to(logits.dtype)
            flat = logits.flatten(1)
            outputs.keep(flat, output)
            return flat
        return scores

    box_terms = call.options.get("box_terms", False)
    if not isinstance(box_terms, bool):
        raise XAIRecipesError(f"box_terms must be True or False, got {box_terms!r}; pass box_terms=True to add each "
                              "detection's box IoU to its score")

    def select(scores_: torch.Tensor, sizes: Sequence[tuple[int, int]], top_k: int) -> list[tuple[list[Region], list[Region]]]:
        output = outputs.find(scores_)
        picked = []
        for b, size in enumerate(sizes):
            one = image_output(output, b)
            found = detections(call.processor, one, size, float(threshold), id2label)
            picked.append((pick(found, wanted, top_k, size, float(threshold), id2label), found))
        return picked

    def for_images(sizes: Sequence[tuple[int, int]]) -> Recipe:  # the reference boxes: the image's first forward
        return replace(recipe, logits=scorer({}))

    return Bound(replace(recipe, logits=scorer(None)), {}, None, lambda s: s.float(), select=select, top_k=TOP_K,
                 for_images=for_images if box_terms else None)


def box_iou(boxes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU of ``…×4`` normalised ``(cx, cy, w, h)`` boxes with ``reference`` (differentiable in ``boxes``)."""
    def corners(b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cx, cy, w, h = b.unbind(-1)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    ax0, ay0, ax1, ay1 = corners(boxes)
    bx0, by0, bx1, by1 = corners(reference)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) * \
            (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union.clamp(min=1e-12)


NOT_FOR_DETECTION = "{} names its maps by a classifier's own classes; a detection is explained by its query's logit"

TASK = Task(
    name="object-detection",
    bind=bind,
    check=_check,
    priority=30,
    options={"threshold": THRESHOLD, "box_terms": False},
    unsupported={m: NOT_FOR_DETECTION.format(m) for m in ("dff", "patch-contributions")},
    description="Each detection of an object detector (its query's class logit), after the model's own post-processing",
    reference='transformers pipeline("object-detection")',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
