"""``explain()``: dispatch a model to its recipe and run the requested method on images."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import loading, registry
from .cam import LogitsModel, compute_cams, forward_with_capture, method_name
from .contributions import patch_contributions, signed_maps
from .dff import factorize
from .errors import ImageError, ImageSkippedWarning, XAIRecipesError
from .explanation import Explanation
from .geometry import Geometry, measure
from .images import ImageInput, image_files, load_image
from .lru import LRU
from .recipe import Recipe
from .targets import Target, resolve_targets

_geometries: LRU = LRU(64)  # measured processor geometries by (processor config, image size)

#: What to do with an image of a batch that cannot be explained: raise, warn and skip, or call
#: ``on_error(source, error)`` and skip.
OnError = Union[Literal["raise", "warn"], Callable[[str, XAIRecipesError], None]]


def module_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    """Dotted names of ``layers`` inside ``model``."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def _is_many(image: Any) -> bool:
    if isinstance(image, (list, tuple, Iterator)):
        return True
    return isinstance(image, (str, os.PathLike)) and Path(image).is_dir()


def _sources(images: Any) -> Iterator[tuple[str, Any]]:
    """``(source name, image)`` pairs; a folder is listed eagerly so an empty one fails at once."""
    if isinstance(images, (str, os.PathLike)):
        files = image_files(images)
        if not files:
            raise ImageError(f"folder {images} holds no image files; pass a folder of images or a list")
        return ((str(f), f) for f in files)
    return ((str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>", x) for i, x in enumerate(images))


@dataclass
class _Run:
    """Everything one ``explain()`` call fixes before the first image: model, recipe, targets."""

    model: nn.Module
    processor: Any
    recipe: Recipe
    method: str
    id2label: dict[int, str]
    wanted: list[int] | None
    top_k: int
    n_components: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.recipe.image_tensor(self.processor(images=image, return_tensors="pt"))

    def __post_init__(self) -> None:
        p = self.processor  # the geometry cache key, serialised once per call, not once per image
        self.processor_key = p.to_json_string() if hasattr(p, "to_json_string") else id(p)

    def geometry(self, size: tuple[int, int]) -> Geometry:
        return _geometries.get_or_make((self.processor_key, size), lambda: measure(self.preprocess, size))

    def prepare(self, source: str | None, image: ImageInput) -> tuple[str | None, Image.Image, torch.Tensor]:
        pil = load_image(image)
        try:
            pixels = self.preprocess(pil)
        except Exception as exc:  # the processor's own errors name no image
            raise ImageError(f"the image processor cannot process image {source or ''} "
                             f"({pil.width}×{pil.height}): {type(exc).__name__}: {exc}") from exc
        return source, pil, pixels

    def explain(self, items: list[tuple[str | None, Image.Image, torch.Tensor]]) -> list[Explanation]:
        """Explain prepared images with one forward pass per group of equal input sizes."""
        out: list[Explanation | None] = [None] * len(items)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, (_, _, pixels) in enumerate(items):
            shapes.setdefault(tuple(pixels.shape), []).append(i)
        for group in shapes.values():
            for i, exp in zip(group, self._explain_same_size([items[i] for i in group])):
                out[i] = exp
        return out  # type: ignore[return-value]

    def _explain_same_size(self, items: list[tuple[str | None, Image.Image, torch.Tensor]]) -> list[Explanation]:
        model, recipe, id2label = self.model, self.recipe, self.id2label
        param = next(model.parameters())
        pixel_values = torch.cat([p for _, _, p in items]).to(param.device, param.dtype)
        if self.method == "dff":
            capture, concepts = factorize(model, recipe, pixel_values, self.n_components)
        else:
            exact = self.method == "patch-contributions"
            layers = [recipe.features(model)] if exact else list(recipe.target_layers(model))
            capture = forward_with_capture(LogitsModel(model, recipe), layers, pixel_values)
        logits = capture.logits.detach()
        if logits.dim() != 2 or logits.shape != (len(items), len(id2label)):
            raise XAIRecipesError(
                f"recipe {recipe.name!r} gives logits of shape {tuple(logits.shape)} for {len(items)} image(s) but "
                f"the model has {len(id2label)} labels; the recipe's logits wrapper does not fit this model"
            )
        probs = logits.float().softmax(-1)
        top5 = probs.topk(min(5, len(id2label)))
        k = min(self.top_k, len(id2label))
        if self.method == "dff":  # one map per concept, named by the concept's top class
            maps = [c.maps for c in concepts]
            targets = [c.probs.argmax(-1).tolist() for c in concepts]
            scores = [c.probs.max(-1).tolist() for c in concepts]
            legends = [[[(int(i), id2label[int(i)], float(row[i])) for i in np.argsort(-row)[:k]] for row in c.probs]
                       for c in concepts]
        else:
            top_k = probs.topk(k).indices.tolist()
            targets = [self.wanted or top_k[b] for b in range(len(items))]
            scores = [[float(probs[b, i]) for i in targets[b]] for b in range(len(items))]
            legends = [None] * len(items)
        raw = intercepts = None
        if self.method == "patch-contributions":
            raw, intercepts = patch_contributions(model, recipe, capture, targets, tuple(pixel_values.shape[-2:]))
            maps = signed_maps(raw, tuple(pixel_values.shape[-2:]))
        elif self.method != "dff":
            maps = compute_cams(model, recipe, pixel_values, targets, self.method, capture)
        layers = module_names(model, capture.layers)
        results = []
        for b, (source, pil, _) in enumerate(items):
            geometry = self.geometry((pil.height, pil.width))
            heatmaps, coverage = geometry.to_image(maps[b])
            results.append(Explanation(
                image=pil,
                heatmaps=heatmaps,
                coverage=coverage,
                indices=targets[b],
                labels=[id2label[i] for i in targets[b]],
                scores=scores[b],
                predictions=[(int(i), id2label[int(i)], float(p)) for p, i in zip(top5.values[b], top5.indices[b])],
                recipe=recipe.name,
                method=self.method,
                target_layers=layers,
                source=source,
                geometry=geometry,
                legend=legends[b],
                contributions=None if raw is None else raw[b].cpu().numpy(),
                intercepts=None if intercepts is None else intercepts[b].tolist(),
            ))
        return results

    def stream(self, images: Iterable[tuple[str, Any]], batch_size: int, on_error: OnError) -> Iterator[Explanation]:
        batch: list[tuple[str | None, Image.Image, torch.Tensor]] = []
        for source, image in images:
            try:
                batch.append(self.prepare(source, image))
            except ImageError as exc:
                if on_error == "raise":
                    raise
                if on_error == "warn":
                    warnings.warn(f"skipped {source}: {exc}", ImageSkippedWarning, stacklevel=2)
                else:
                    on_error(source, exc)
                continue
            if len(batch) == batch_size:
                yield from self.explain(batch)
                batch = []
        if batch:
            yield from self.explain(batch)


def explain(
    model: str | os.PathLike | nn.Module,
    image: ImageInput | Sequence[ImageInput] | Iterator[ImageInput],
    *,
    method: str = "gradcam",
    target: Target | Sequence[Target] | None = None,
    top_k: int = 1,
    processor: Any = None,
    device: str | torch.device | None = None,
    recipe: str | Recipe | None = None,
    trust_remote_code: bool = False,
    batch_size: int = 8,
    on_error: OnError = "warn",
    n_components: int = 5,
) -> Explanation | Iterator[Explanation]:
    """Explain an image classifier's decision on one image, or stream explanations of many.

    Args:
        model: hub id (``"microsoft/resnet-50"``), local folder, or a loaded
            ``*ForImageClassification`` model.
        image: path, PIL image or ``H×W×C`` array, any mode. A list (or iterator) of those, or
            a folder (searched recursively), gives a generator of explanations instead.
        method: a CAM method name (see :data:`xai_recipes.METHODS`); ``"dff"``: Deep Feature
            Factorization into ``n_components`` concepts, one heatmap each, each concept named
            by its top classes (``legend``) through the model's own head; or
            ``"patch-contributions"``: exact per-patch logit contributions of a linear head
            (GAMs, average-pool + fc CNNs), raw numbers in ``contributions``.
        target: label name (case-insensitive, any comma-separated synonym), class index, or a
            list of them; ``None`` explains the ``top_k`` predictions. (Not used by DFF.)
        top_k: how many top predictions to explain when ``target`` is None; for DFF, how many
            classes name each concept in the legend.
        processor: the image processor (loaded with the model when omitted).
        device: where to run; a model loaded by name is cached per device.
        recipe: recipe name or object, overriding dispatch by ``config.model_type``.
        trust_remote_code: allow models whose code lives on the hub (off by default).
        batch_size: for many images, how many go through the model in one forward pass.
        on_error: for many images, what happens to one that cannot be read or processed:
            ``"warn"`` (an :class:`ImageSkippedWarning`, then skip), ``"raise"``, or a callable
            ``on_error(source, error)`` (then skip).
        n_components: DFF's number of concepts.

    Returns:
        An :class:`Explanation` whose ``heatmaps`` have the original image's size; for many
        images a generator yielding one per image, in order, one batch in memory at a time.
    """
    method = method_name(method)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise XAIRecipesError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise XAIRecipesError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_error not in ("raise", "warn") and not callable(on_error):
        raise XAIRecipesError(f"on_error must be 'raise', 'warn' or a callable, got {on_error!r}")
    if method == "dff" and target is not None:
        raise XAIRecipesError("DFF names its concepts by the model's own classes; it takes no target (use top_k "
                              "for how many classes name each concept)")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise XAIRecipesError(f"n_components must be a positive integer, got {n_components!r}")
    model, processor = loading.load(model, processor, device, trust_remote_code)
    model.eval()  # explanations of the deterministic model: no dropout, BN running statistics
    chosen = registry.find_recipe(model, recipe)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    run = _Run(model, processor, chosen, method, id2label, resolve_targets(target, id2label), top_k, n_components)
    if _is_many(image):
        return run.stream(_sources(image), batch_size, on_error)
    source = str(image) if isinstance(image, (str, os.PathLike)) else None
    return run.explain([run.prepare(source, image)])[0]
