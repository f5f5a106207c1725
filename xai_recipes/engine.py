"""``explain()``: dispatch a model to its recipe and run the requested method."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from . import loading, registry
from .cam import LogitsModel, compute_cams, forward_with_capture, method_name
from .errors import XAIRecipesError
from .explanation import Explanation
from .geometry import measure
from .images import ImageInput, load_image
from .lru import LRU
from .recipe import Recipe
from .targets import Target, resolve_targets

_geometries: LRU = LRU(64)  # measured processor geometries by (processor config, image size)


def _module_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def explain(
    model: str | os.PathLike | nn.Module,
    image: ImageInput,
    *,
    method: str = "gradcam",
    target: Target | Sequence[Target] | None = None,
    top_k: int = 1,
    processor: Any = None,
    device: str | torch.device | None = None,
    recipe: str | Recipe | None = None,
    trust_remote_code: bool = False,
) -> Explanation:
    """Explain an image classifier's decision on one image.

    Args:
        model: hub id (``"microsoft/resnet-50"``), local folder, or a loaded
            ``*ForImageClassification`` model.
        image: path, PIL image or ``H×W×C`` array, any mode.
        method: a CAM method name, see :data:`xai_recipes.METHODS`.
        target: label name (case-insensitive, any comma-separated synonym), class index, or a
            list of them; ``None`` explains the ``top_k`` predictions.
        top_k: how many top predictions to explain when ``target`` is None.
        processor: the image processor (loaded with the model when omitted).
        device: where to run; a model loaded by name is cached per device.
        recipe: recipe name or object, overriding dispatch by ``config.model_type``.
        trust_remote_code: allow models whose code lives on the hub (off by default).

    Returns:
        An :class:`Explanation` whose ``heatmaps`` have the original image's size.
    """
    method = method_name(method)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise XAIRecipesError(f"top_k must be a positive integer, got {top_k!r}")
    model, processor = loading.load(model, processor, device, trust_remote_code)
    model.eval()  # explanations of the deterministic model: no dropout, BN running statistics
    chosen = registry.find_recipe(model, recipe)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    wanted = resolve_targets(target, id2label)
    pil = load_image(image)

    param = next(model.parameters())

    def preprocess(img):
        return processor(images=img, return_tensors="pt")["pixel_values"]

    pixel_values = preprocess(pil).to(param.device, param.dtype)
    key = processor.to_json_string() if hasattr(processor, "to_json_string") else id(processor)
    size = (pil.height, pil.width)
    geometry = _geometries.get_or_make((key, size), lambda: measure(preprocess, size))
    capture = forward_with_capture(LogitsModel(model, chosen), list(chosen.target_layers(model)), pixel_values)
    logits = capture.logits.detach()
    if logits.dim() != 2 or logits.shape[-1] != len(id2label):
        raise XAIRecipesError(
            f"recipe {chosen.name!r} gives logits of shape {tuple(logits.shape)} but the model has "
            f"{len(id2label)} labels; the recipe's logits wrapper does not fit this model"
        )
    probs = logits.float().softmax(-1)[0]
    top = probs.topk(min(5, len(id2label)))
    predictions = [(int(i), id2label[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    indices = wanted if wanted is not None else [int(i) for i in probs.topk(min(top_k, len(id2label))).indices]

    maps = compute_cams(model, chosen, pixel_values, indices, method, capture)
    heatmaps, coverage = geometry.to_image(maps)
    return Explanation(
        image=pil,
        heatmaps=heatmaps,
        coverage=coverage,
        indices=indices,
        labels=[id2label[i] for i in indices],
        scores=[float(probs[i]) for i in indices],
        predictions=predictions,
        recipe=chosen.name,
        method=method,
        target_layers=_module_names(model, capture.layers),
    )
