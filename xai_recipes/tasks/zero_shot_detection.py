"""Zero-shot object detection: explain each box an open-vocabulary detector (OWL-ViT, OWLv2) finds for a prompt.

The detections are ``pipeline("zero-shot-object-detection")``'s: each candidate prompt is scored on
its own, and every candidate box (one per patch) whose ``sigmoid(logit)`` for that prompt exceeds
``threshold=`` (0.1, the pipeline's default) is a detection of that prompt, boxes in the image's
pixels by the image processor's own ``post_process_object_detection``, best first. The prompts
are tokenized as the zero-shot classification task does (the same checks and errors), embedded
once per model and prompt set by the text tower, and scored against the recipe's patch features
by the model's own class head (``class_predictor``): the scores the methods differentiate are
the ``B×P×K`` box-prompt logits flattened, one forward pass and one batched backward for T boxes.
A detection of box ``p`` for prompt ``k`` is score index ``p·K + k``; its map explains that logit.

Targets: a prompt or a list of prompts (each one's detections, best first, at most ``top_k`` each),
or ``labels=[...]`` with ``target=None`` (the ``top_k`` best detections over all of them) or with
indices into ``labels``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import NoDetectionError, RecipeError, XAIRecipesError
from ..hookspecs import hookimpl
from ..images import is_image_target
from ..modelstate import borrowed
from ..recipe import Recipe
from ..task import Bound, Call, Outputs, Region, Task
from .zero_shot import _tokenizer, resolve, text_embeddings

THRESHOLD = 0.1  # pipeline("zero-shot-object-detection")'s default
TOP_K = 10


@dataclass
class Boxes:
    """What the image processor's ``post_process_object_detection`` reads: ``logits`` ``B×P×K``,
    ``pred_boxes`` ``B×P×4`` (normalised ``cx, cy, w, h``)."""

    logits: torch.Tensor
    pred_boxes: torch.Tensor


def text_tower(model: nn.Module) -> nn.Module | None:
    """The part of ``model`` that embeds text (OWL's ``owlvit`` / ``owlv2`` CLIP), or ``None``."""
    return next((m for m in model.children() if callable(getattr(m, "get_text_features", None))), None)


def is_open_vocabulary(model: nn.Module) -> bool:
    """Whether ``model`` detects boxes for text prompts with OWL's heads (OWL-ViT, OWLv2)."""
    heads = ("image_embedder", "class_predictor", "box_predictor")
    return all(callable(getattr(model, name, None)) for name in heads) and text_tower(model) is not None


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if not is_open_vocabulary(model):
        name = type(model).__name__
        if name.endswith("ForObjectDetection"):
            return (f"{name} detects only its own classes and has no text tower, so it cannot detect a free-text "
                    "prompt; pass one of its labels (task 'object-detection'), or use an open-vocabulary detector "
                    "(OWL-ViT, OWLv2: AutoModelForZeroShotObjectDetection) for text")
        return f"{name} is not an open-vocabulary detector (OWL-ViT, OWLv2) that finds boxes for text prompts"
    if is_image_target(target):
        return ("the target is an image: image-guided detection (a query image) is not explained; pass text prompts, "
                "e.g. target='a red car'")
    return None


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def detections(processor: Any, found: Boxes, size: tuple[int, int], threshold: float,
               prompts: Sequence[str]) -> list[Region]:
    """One image's detections (``found`` of a batch of one), each prompt post-processed on its own as the
    pipeline does, best first. Each box is traced to its patch by its normalised corners (the processor's
    pixel boxes may be scaled by the longer side, as OWLv2's padded square is)."""
    post = getattr(processor, "image_processor", processor).post_process_object_detection
    n_prompts = found.logits.shape[-1]
    corners = _corners(found.pred_boxes[0].double())
    regions = []
    for k, prompt in enumerate(prompts):
        one = Boxes(found.logits[..., k : k + 1], found.pred_boxes)
        pixels = post(outputs=one, threshold=threshold, target_sizes=[size])[0]
        unit = post(outputs=one, threshold=threshold, target_sizes=None)[0]["boxes"]
        for score, box, normalised in zip(pixels["scores"].tolist(), pixels["boxes"].tolist(), unit.double()):
            p = int((corners - normalised.to(corners.device)).abs().sum(-1).argmin())
            regions.append(Region(p * n_prompts + k, prompt, float(score), tuple(float(v) for v in box)))
    return sorted(regions, key=lambda r: -r.score)  # stable: ties keep the pipeline's prompt order


def pick(found: list[Region], wanted: list[int] | None, top_k: int, threshold: float,
         prompts: Sequence[str]) -> list[Region]:
    """The detections asked for: each wanted prompt's best ``top_k``, or the ``top_k`` best of all."""
    if wanted is None:
        if not found:
            raise NoDetectionError(f"no box scores above threshold={threshold} for any of the {len(prompts)} prompts; "
                                   f"lower threshold= (e.g. threshold={threshold / 2:g}) or rephrase the prompts")
        return found[:top_k]
    chosen: list[Region] = []
    for k in wanted:
        hits = [r for r in found if r.label == prompts[k]][:top_k]
        if not hits:
            raise NoDetectionError(f"no box scores above threshold={threshold} for prompt {prompts[k][:60]!r}; lower "
                                   f"threshold= (e.g. threshold={threshold / 2:g}) or rephrase the prompt")
        chosen.extend(hits)
    return chosen


def bind(call: Call) -> Bound:
    prompts, wanted = resolve(call.target, call.options.get("labels"))
    threshold = call.options.get("threshold", THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 <= threshold < 1:
        raise XAIRecipesError(f"threshold must be a number in [0, 1), got {threshold!r}; pass e.g. threshold=0.1")
    model = call.model
    with borrowed(model):  # eval mode: no dropout in the text tower
        text = text_embeddings(text_tower(model), _tokenizer(call), list(prompts), call.options.get("truncate"))
    outputs = Outputs()

    def scores(features: Any) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            raise RecipeError(f"recipe {call.recipe.name!r} must give OWL's B×h×w×D patch features (image_embedder), "
                              f"got {type(features).__name__}")
        batch, h, w, dim = features.shape
        patches = features.reshape(batch, h * w, dim)
        logits = model.class_predictor(patches, text.to(patches.dtype)[None].expand(batch, -1, -1))[0]
        boxes = model.box_predictor(patches, features, interpolate_pos_encoding=True)  # in the graph: Captum hooks it
        flat = logits.flatten(1)
        outputs.keep(flat, Boxes(logits.detach(), boxes.detach()))
        return flat

    def select(scores_: torch.Tensor, sizes: Sequence[tuple[int, int]], top_k: int) -> list[tuple[list[Region], list[Region]]]:
        found = outputs.find(scores_)
        picked = []
        for b, size in enumerate(sizes):
            every = detections(call.processor, Boxes(found.logits[b : b + 1], found.pred_boxes[b : b + 1]), size,
                               float(threshold), prompts)
            picked.append((pick(every, wanted, top_k, float(threshold), prompts), every))
        return picked

    return Bound(replace(call.recipe, logits=scores), dict(enumerate(prompts)), None, lambda s: s.float().sigmoid(),
                 select=select, top_k=TOP_K)


NOT_FOR_DETECTION = "{} names its maps by a classifier's own classes; a detection is explained by its box's prompt logit"

TASK = Task(
    name="zero-shot-object-detection",
    bind=bind,
    check=_check,
    priority=40,  # above object-detection: OWL's class names are the prompts
    options={"labels": None, "threshold": THRESHOLD, "truncate": None, "tokenizer": None},
    unsupported={m: NOT_FOR_DETECTION.format(m) for m in ("dff", "patch-contributions")},
    description="Each box an open-vocabulary detector (OWL-ViT, OWLv2) finds for a text prompt (its prompt logit)",
    reference='transformers pipeline("zero-shot-object-detection")',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
