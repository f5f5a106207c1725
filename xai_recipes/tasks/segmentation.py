"""Semantic segmentation: explain the model's own predicted region of a class, or a region the user gives.

The score of class ``c`` is grad-cam's ``SemanticSegmentationTarget``: the sum of the class's logits
over a region, here on the logits upsampled to the model input (bilinear, as the processor's
post-processing upsamples them). The region is the model's own prediction (the pixels whose argmax is
``c``), or ``region=`` an ``H×W`` mask or a box ``(x0, y0, x1, y1)`` on the image, mapped into the model
input through the processor's measured geometry. Targets: class names or indices (default: the
``top_k`` largest predicted classes, 3 by default; inside ``region=``, the largest there). The
regions shown are ``pipeline("image-segmentation", subtask="semantic")``'s: the processor's
``post_process_semantic_segmentation`` at the image's size; each carries its mask and its share of
the image (of the region, with ``region=``) as score. Mask classifiers (MaskFormer, Mask2Former: a class
and a mask per query) are segmenters too where their recipe's ``logits`` give their per-pixel class scores
``B×C×h×w``, the map their ``post_process_semantic_segmentation`` upsamples and argmaxes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import NoDetectionError, RegionError
from ..geometry import measure
from ..hookspecs import hookimpl
from ..recipe import Recipe, output_logits
from ..targets import resolve_targets
from ..task import Bound, Call, Outputs, Region, Task
from .detection import _box

TOP_K = 3
#: Mask classifiers: a class and a mask per query (``Mask2FormerForUniversalSegmentation``,
#: ``MaskFormerForInstanceSegmentation``).
MASK_CLASSIFIERS = ("ForUniversalSegmentation", "ForInstanceSegmentation")


def is_segmenter(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers semantic segmenter (``*ForSemanticSegmentation``) or mask classifier."""
    name = type(model).__name__
    return name.endswith(("ForSemanticSegmentation", *MASK_CLASSIFIERS)) and getattr(model, "config", None) is not None


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if not is_segmenter(model):
        return f"{type(model).__name__} is not a semantic segmenter (an AutoModelForSemanticSegmentation model)"
    if type(model).__name__.endswith(MASK_CLASSIFIERS) and recipe.logits is output_logits:
        return (f"{type(model).__name__} predicts a class and a mask per query, and recipe {recipe.name!r} does not "
                "turn them into per-pixel class scores (the mask2former and maskformer recipes do)")
    if recipe.embedding is not None:
        return f"recipe {recipe.name!r} explains an image embedding, not per-pixel class logits"
    return None


def upsampled(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B×C×h×w`` logits at ``size``, as the processors' post-processing upsamples them."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _region(region: Any) -> np.ndarray | tuple[float, float, float, float] | None:
    """``region=`` checked: an ``H×W`` mask (bool or 0/1) or a box; ``None`` if not given."""
    if region is None:
        return None
    box = _box(region)
    if box is not None:
        return box
    if isinstance(region, Image.Image):
        region = np.asarray(region.convert("L")) > 127
    mask = np.asarray(region.detach().cpu() if isinstance(region, torch.Tensor) else region)
    if mask.ndim != 2 or mask.dtype.kind not in "biuf":
        raise RegionError(f"region is a {type(region).__name__} of shape {getattr(mask, 'shape', '?')}; pass an H×W "
                          "mask (bool, or 0/1 numbers) at the image's size or a box (x0, y0, x1, y1)")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise RegionError("region mask holds NaN or infinity; pass a bool mask")
    mask = mask > 0.5 if mask.dtype.kind == "f" else mask.astype(bool)
    if not mask.any():
        raise RegionError("region mask is empty (no pixel set); pass a mask with the region's pixels True")
    return mask


def region_mask(region: np.ndarray | tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    """The ``H×W`` bool mask of ``region`` on an image of ``size``; a typed error if it does not fit."""
    H, W = size
    if isinstance(region, tuple):
        x0, y0, x1, y1 = region
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            raise RegionError(f"region box {region} lies outside the {W}×{H} image; pass coordinates within 0..{W} "
                              f"(x) and 0..{H} (y)")
        mask = np.zeros((H, W), bool)
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        return mask
    if region.shape != (H, W):
        raise RegionError(f"region mask is {region.shape[0]}×{region.shape[1]} (H×W) but the image is {H}×{W}; pass a "
                          "mask of the image's own size")
    return region


def bind(call: Call) -> Bound:
    model, processor, recipe = call.model, call.processor, call.recipe
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    wanted = resolve_targets(call.target, id2label)
    region = _region(call.options.get("region"))
    outputs = Outputs()

    def with_region(inside: Callable[[torch.Tensor], tuple[Any, torch.Tensor]]) -> Recipe:
        scores = _RegionScores(recipe, inside, outputs)
        return replace(recipe, logits=scores.logits, inputs=scores.inputs)

    def select(scores: torch.Tensor, sizes: Sequence[tuple[int, int]], top_k: int) -> list[tuple[list[Region], list[Region]]]:
        logits, pred = outputs.find(scores)
        picked = []
        for b, size in enumerate(sizes):
            seg = segmentation(processor, logits[b : b + 1], size).cpu().numpy()
            user = None if region is None else region_mask(region, size)
            area = seg[user] if user is not None else seg.ravel()
            counts = np.bincount(area.ravel().astype(np.int64), minlength=len(id2label))  # np.unique sorts: slow
            classes = np.flatnonzero(counts)
            counts = counts[classes]
            order = [int(c) for c in classes[np.argsort(-counts, kind="stable")]]
            share = dict(zip(classes.tolist(), (counts / counts.sum()).tolist()))
            present = set(present_classes(pred[b]).tolist()) if user is None else set(order)
            # every class of the image-size segmentation (the pipeline's); explained: those whose region at
            # the model input is not empty (a sliver that only upsampling to the image creates scores 0)
            every = [Region(c, id2label.get(c, str(c)), float(share[c]), None, user if user is not None else seg == c)
                     for c in order]
            explainable = [r for r in every if r.index in present]
            if wanted is None:
                chosen = explainable[:top_k]
            else:
                chosen = []
                for c in wanted:
                    hit = [r for r in explainable if r.index == c]
                    if not hit and user is not None:  # the user's region: any class's score over it
                        hit = [Region(c, id2label.get(c, str(c)), 0.0, None, user)]
                    if not hit and c in order:
                        raise NoDetectionError(
                            f"the model's {id2label.get(c, c)!r} region exists only at the image's size (upsampled "
                            f"from the logits: {round(share[c] * area.size)} pixels) and is empty at the model's input, "
                            "so its region score is 0; pass region= a mask or box around it to explain the class there")
                    if not hit:
                        raise NoDetectionError(
                            f"the model predicts no {id2label.get(c, c)!r} region in this image (predicted: "
                            f"{', '.join(r.label for r in every[:8])}); pass region= a mask or box to explain the "
                            "class's score over it, or target one of the predicted classes")
                    chosen.extend(hit)
            picked.append((chosen, every))
        return picked

    for_images = None
    if region is not None:
        def for_images(sizes: Sequence[tuple[int, int]]) -> Recipe:
            masks = [region_mask(region, size) for size in sizes]
            mapped: dict[tuple[int, ...], torch.Tensor] = {}  # by input size: measured once, not per forward pass

            def inside(pred: torch.Tensor) -> tuple[None, torch.Tensor]:
                hw = tuple(pred.shape[-2:])
                if hw not in mapped:
                    out = [_to_input(mask, processor, recipe, size, hw) for mask, size in zip(masks, sizes)]
                    mapped[hw] = torch.from_numpy(np.stack(out))[:, None]
                return None, mapped[hw].to(pred.device)

            return with_region(inside)

    return Bound(with_region(predicted), id2label, wanted, lambda s: s.float(), select=select, top_k=TOP_K,
                 for_images=for_images)


def segmentation(processor: Any, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ``H×W`` class map at ``size`` of ``1×C×h×w`` logits, as the processor's post-processing makes it. A mask
    classifier's processor reads its queries, not logits: its ``post_process_semantic_segmentation`` upsamples the
    per-pixel class scores (the recipe's logits) bilinearly to ``size`` and takes the argmax, done here."""
    if hasattr(processor, "post_process_panoptic_segmentation"):
        return upsampled(logits, size)[0].argmax(0)
    return processor.post_process_semantic_segmentation(type_output(logits), target_sizes=[size])[0]


def type_output(logits: torch.Tensor) -> Any:
    """``logits`` as the output object the processors' post-processing reads."""
    from transformers.modeling_outputs import SemanticSegmenterOutput

    return SemanticSegmenterOutput(logits=logits)


def present_classes(pred: torch.Tensor) -> torch.Tensor:
    """The classes that occur in the argmax map ``pred`` (a bincount: ``unique`` sorts every pixel)."""
    return torch.bincount(pred.flatten()).nonzero().flatten()


def predicted(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted classes ``P`` and each one's own pixels ``B×|P|×H×W`` (``pred``: the ``B×H×W`` argmax)."""
    classes = present_classes(pred)
    return classes, pred[:, None] == classes[None, :, None, None]


def summed_over(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Σ_p upsampled(logits)[b, k, p] · masks[b, k, p]`` without upsampling ``logits`` with a graph: bilinear
    upsampling is linear, so the sum is ``logits`` against the upsampling's adjoint applied to the masks."""
    with torch.enable_grad():
        low = torch.zeros(masks.shape[0], masks.shape[1], *logits.shape[-2:], dtype=logits.dtype,
                          device=logits.device, requires_grad=True)
        (weights,) = torch.autograd.grad(upsampled(low, tuple(masks.shape[-2:])), low,
                                         grad_outputs=masks.to(logits.dtype))
    return weights


class _RegionScores:
    """The recipe's logits turned into ``B×C`` region scores: each class's logits (upsampled to the model
    input, whose size :meth:`inputs` notes on the way in) summed over its region. ``inside(argmax)`` gives the
    regions: ``(classes, B×|classes|×H×W masks)``, or ``(None, B×1×H×W)``, one region for every class."""

    def __init__(self, recipe: Recipe, inside: Callable[[torch.Tensor], tuple[Any, torch.Tensor]],
                 outputs: Outputs) -> None:
        self.recipe, self.inside, self.outputs = recipe, inside, outputs
        self.input_size: tuple[int, int] | None = None

    def inputs(self, model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
        self.input_size = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        return self.recipe.model_inputs(model, pixel_values)

    def logits(self, output: Any) -> torch.Tensor:
        logits = self.recipe.logits(output)
        with torch.no_grad():
            pred = upsampled(logits.detach(), self.input_size or tuple(logits.shape[-2:])).argmax(1)
        classes, masks = self.inside(pred)
        weights = summed_over(logits, masks)  # B×|P|×h×w, or B×1×h×w: one region for every class
        if masks.shape[1] == 1:
            scores = (logits * weights).flatten(2).sum(-1)
        else:
            picked = (logits[:, classes] * weights).flatten(2).sum(-1)
            scores = logits.new_zeros(logits.shape[:2]).index_add(1, classes, picked)
        self.outputs.keep(scores, (logits.detach(), pred))
        return scores


def _to_input(mask: np.ndarray, processor: Any, recipe: Recipe, size: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """``mask`` (on the image) sampled at each model-input pixel, through the processor's measured geometry."""
    geometry = measure(lambda pil: recipe.image_tensor(processor(images=pil, return_tensors="pt")), size)
    (sy, sx), (oy, ox) = geometry.scale, geometry.offset
    forward = np.float32([[sx, 0, ox], [0, sy, oy]])  # input pixel (u, v) -> image pixel (x, y)
    h, w = geometry.input_size
    out = cv2.warpAffine(mask.astype(np.uint8), forward, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    if (h, w) != tuple(input_hw):
        out = cv2.resize(out.astype(np.uint8), input_hw[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    if not out.any():
        raise RegionError("the region falls outside what the model sees of the image (its processor crops it away); "
                          "pass a region inside the model's view")
    return out


NOT_FOR_SEGMENTS = "{} names its maps by a classifier's own classes; a segment is explained by its class's region score"
NOT_FINER = ("finercam weighs the classes it contrasts by the softmax of the scores, and a segment's score is its class's "
             "logits summed over its region (one term per pixel): that softmax is 1 for the largest score and about 0 "
             "for the others, so the contrast vanishes; use gradcam or hirescam")

TASK = Task(
    name="image-segmentation",
    bind=bind,
    check=_check,
    priority=30,
    options={"region": None},
    unsupported={**{m: NOT_FOR_SEGMENTS.format(m) for m in ("dff", "patch-contributions")}, "finercam": NOT_FINER},
    description="A class's region of a semantic segmenter (the sum of its logits over the region, as grad-cam's "
                "SemanticSegmentationTarget), the region the model's own or one you give",
    reference='transformers pipeline("image-segmentation", subtask="semantic"); grad-cam SemanticSegmentationTarget',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
