"""``explain()``: dispatch a model to its recipe and task, and run the requested method on images."""

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

from . import hfdata, layers, loading, registry
from .errors import ImageError, ImageSkippedWarning, MethodNotApplicableError, ModelOutputError, XAIRecipesError
from .explanation import Explanation
from .geometry import Geometry, measure
from .images import ImageInput, image_files, is_image_target, load_image
from .capture import module_names
from .lru import LRU
from .method import Batch, Method
from .modelstate import borrowed
from .recipe import Recipe
from .task import Bound, Call, Region, Task

_geometries: LRU = LRU(64)  # measured processor geometries by (processor config, image size)

#: What to do with an image of a batch that cannot be explained: raise, warn and skip, or call
#: ``on_error(source, error)`` and skip.
OnError = Union[Literal["raise", "warn"], Callable[[str, XAIRecipesError], None]]


def _is_many(image: Any) -> bool:
    if isinstance(image, (list, tuple, Iterator)) or hfdata.is_dataset(image):
        return True
    try:
        return isinstance(image, (str, os.PathLike)) and Path(image).is_dir()
    except (OSError, ValueError):  # a NUL byte, a name too long: load_image names the problem
        return False


def _sources(images: Any) -> Iterator[tuple[str, Any]]:
    """``(source name, image)`` pairs; a folder is listed eagerly so an empty one fails at once; a
    ``datasets.Dataset`` is read in batches (its one ``Image`` column; ``row i`` names the rows)."""
    if hfdata.is_dataset(images):
        return hfdata.sources(images)
    if isinstance(images, (str, os.PathLike)):
        files = image_files(images)
        if not files:
            raise ImageError(f"folder {images} holds no image files; pass a folder of images or a list")
        return ((str(f), f) for f in files)
    return ((str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>", x) for i, x in enumerate(images))


@dataclass
class _Run:
    """Everything one ``explain()`` call fixes before the first image: model, recipe, task, method, targets."""

    model: nn.Module
    processor: Any
    recipe: Recipe  # as found for the model: its image tensor, inputs and geometry
    task: Task
    bound: Bound  # the task's scores and targets for this call
    method: Method
    top_k: int
    options: dict[str, Any]

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
        if self.bound.select is not None or self.bound.for_images is not None:  # per image: T, the scores
            groups = [[i] for group in shapes.values() for i in group]
        else:
            groups = list(shapes.values())
        with borrowed(self.model, eager_attention=self.method.eager_attention):
            for group in groups:
                for i, exp in zip(group, self._explain_same_size([items[i] for i in group])):
                    out[i] = exp
        return out  # type: ignore[return-value]

    def choose(self, logits: torch.Tensor) -> list[list[int]]:
        """The targets per image: the user's, else the ``top_k`` highest scores."""
        if self.bound.wanted:
            return [list(self.bound.wanted) for _ in range(len(logits))]
        return logits.float().topk(min(self.top_k, len(self.bound.labels))).indices.tolist()

    def _explain_same_size(self, items: list[tuple[str | None, Image.Image, torch.Tensor]]) -> list[Explanation]:
        model, recipe, id2label = self.model, self.bound.recipe, self.bound.labels
        if self.bound.for_images is not None:
            recipe = self.bound.for_images([(pil.height, pil.width) for _, pil, _ in items])
        param = next(model.parameters())
        pixel_values = torch.cat([p for _, _, p in items]).to(param.device, param.dtype)
        if "target_layers" in self.method.needs and "head" not in self.method.needs:  # the stage fitting this input
            recipe = layers.at_input(model, recipe, pixel_values)[0]
        choose, picked = self.choose, []
        if self.bound.select is not None:
            sizes = [(pil.height, pil.width) for _, pil, _ in items]

            def choose(logits: torch.Tensor) -> list[list[int]]:
                picked[:] = self.bound.select(logits, sizes, self.top_k)
                return [[r.index for r in chosen] for chosen, _ in picked]

        result = self.method.run(Batch(model, recipe, pixel_values, choose, self.top_k, self.options))
        logits = result.logits.detach()
        if logits.dim() != 2 or (logits.shape != (len(items), len(id2label)) and not picked):
            raise XAIRecipesError(
                f"recipe {recipe.name!r} gives scores of shape {tuple(logits.shape)} for {len(items)} image(s) but "
                f"task {self.task.name!r} has {len(id2label)} labels; the recipe's logits wrapper does not fit this model"
            )
        bad = ("logits" if not bool(torch.isfinite(logits).all()) else
               "maps" if not all(np.isfinite(np.asarray(m, dtype=np.float32)).all() for m in result.maps) else None)
        if bad:  # NaN in, NaN out: never a silently blank or NaN map
            names = ", ".join(source or "<image>" for source, _, _ in items[:3])
            raise ModelOutputError(
                f"the model gives non-finite {bad} (NaN/inf) on {names}: its weights "
                "hold NaN/inf (check torch.isfinite(p).all() for model.parameters(); re-download or re-export the "
                "checkpoint) or a layer overflows in this dtype (run it in float32)"
            )
        targets = result.targets
        regions: list[list[Region]] | None = None
        if picked:  # the task chose targets per image: their labels, scores, boxes and masks are its own
            regions = [chosen for chosen, _ in picked]
            scores = [[r.score for r in chosen] for chosen in regions]
            predictions = [[(r.index, r.label, r.score) for r in every[:5]] for _, every in picked]
        else:
            probs = self.bound.probabilities(logits).float()
            top5 = probs.topk(min(5, len(id2label)))
            scores = result.scores or [[float(probs[b, i]) for i in targets[b]] for b in range(len(items))]
            predictions = [[(int(i), id2label[int(i)], float(p)) for p, i in zip(top5.values[b], top5.indices[b])]
                           for b in range(len(items))]
        layer_names = module_names(model, result.layers)
        results = []
        for b, (source, pil, _) in enumerate(items):
            geometry = self.geometry((pil.height, pil.width))
            heatmaps, coverage = geometry.to_image(result.maps[b])
            heads = None if result.heads is None else geometry.to_image(result.heads[b])[0]
            results.append(Explanation(
                image=pil,
                heatmaps=heatmaps,
                coverage=coverage,
                indices=targets[b],
                labels=[r.label for r in regions[b]] if regions else [id2label[i] for i in targets[b]],
                scores=scores[b],
                predictions=predictions[b],
                recipe=recipe.name,
                method=self.method.name,
                task=self.task.name,
                target_layers=layer_names,
                source=source,
                geometry=geometry,
                legend=None if result.legend is None else result.legend[b],
                contributions=None if result.contributions is None else result.contributions[b],
                intercepts=None if result.intercepts is None else result.intercepts[b],
                heads=heads,
                signed=bool(self.method.signed or result.signed),
                boxes=None if regions is None or all(r.box is None for r in regions[b]) else
                [r.box for r in regions[b]],
                masks=None if regions is None or all(r.mask is None for r in regions[b]) else
                np.stack([r.mask if r.mask is not None else np.zeros((pil.height, pil.width), bool) for r in regions[b]]),
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
    method: str | Method | None = None,
    target: Any = None,
    top_k: int | None = None,
    processor: Any = None,
    device: str | torch.device | None = None,
    recipe: str | Recipe | None = None,
    task: str | Task | None = None,
    trust_remote_code: bool = False,
    batch_size: int = 8,
    on_error: OnError = "warn",
    **options: Any,
) -> Explanation | Iterator[Explanation]:
    """Explain a vision model's output on one image, or stream explanations of many.

    Args:
        model: hub id (``"microsoft/resnet-50"``, ``"openai/clip-vit-base-patch32"``), local
            folder, or a loaded model: a ``*ForImageClassification``, a CLIP / SigLIP
            (``get_image_features`` + ``get_text_features``), a vision backbone (image similarity),
            or an ``open_clip`` model.
        image: path, PIL image or ``H×W×C`` array, any mode. A list (or iterator) of those, or
            a folder (searched recursively), gives a generator of explanations instead.
        method: a registered method (``xai-recipes methods``): the CAM family (``"gradcam"``,
            ``"hirescam"``, ...), the attention methods (``"attention"``, ``"rollout"``,
            ``"gradient-rollout"``, ``"legrad"``), ``"dff"`` (Deep Feature Factorization: one
            map per concept, named by the model's own head in ``legend``) or
            ``"patch-contributions"`` (exact per-patch logit contributions of a linear head).
            ``None``: the recipe's ``default_method``, the best-localising one measured for
            the family.
        target: what to explain, read by the task: for a classifier a label name
            (case-insensitive, any comma-separated synonym), class index, or a list of them; for a
            zero-shot model free-text prompts (``"a dog"``) or indices into ``labels``; a
            reference image (PIL image, array, or a list of them) for image similarity. ``None``
            explains the ``top_k`` highest scores.
        top_k: how many top scores to explain when ``target`` is None (``None``: the task's
            default: 1 class or prompt, up to 10 detections, 3 segments); for DFF, how many
            classes name each concept in the legend.
        processor: the image processor (for zero-shot models a processor with a tokenizer;
            loaded with the model when omitted).
        device: where to run; a model loaded by name is cached per device.
        recipe: recipe name or object, overriding dispatch by ``config.model_type``.
        task: a registered task (``xai-recipes tasks``), overriding the one found from the model
            and target: ``"image-classification"``, ``"zero-shot-image-classification"``,
            ``"image-feature-extraction"``.
        trust_remote_code: allow models whose code lives on the hub (off by default).
        batch_size: for many images, how many go through the model in one forward pass.
        on_error: for many images, what happens to one that cannot be read or processed:
            ``"warn"`` (an :class:`ImageSkippedWarning`, then skip), ``"raise"``, or a callable
            ``on_error(source, error)`` (then skip).
        **options: the task's options (``Task.options``: ``labels=``, ``template=`` for zero-shot)
            and the method's (``Method.options``), e.g. ``n_components=5`` for DFF,
            ``head_fusion="max"`` / ``discard_ratio=0.9`` for rollout, ``layers=4`` for LeGrad.

    Returns:
        An :class:`Explanation` whose ``heatmaps`` have the original image's size; for many
        images a generator yielding one per image, in order, one batch in memory at a time.
        The user's model is left as it was (train mode, attention implementation, hooks).
    """
    chosen_method = None if method is None else registry.get_method(method)
    chosen_task = None if task is None else registry.get_task(task)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise XAIRecipesError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise XAIRecipesError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_error not in ("raise", "warn") and not callable(on_error):
        raise XAIRecipesError(f"on_error must be 'raise', 'warn' or a callable, got {on_error!r}")
    model, processor = loading.load(model, processor, device, trust_remote_code,
                                    backbone=chosen_task is not None or is_image_target(target))
    chosen = registry.find_recipe(model, recipe)
    chosen_task = registry.find_task(model, chosen, target, chosen_task)
    chosen_method = chosen_method or registry.get_method(chosen.default_method)
    why_not = chosen_task.unsupported.get(chosen_method.name) or chosen_method.why_not(model, chosen)
    if why_not:
        raise MethodNotApplicableError(f"{chosen_method.name} cannot explain this model: {why_not}")
    if not chosen_method.takes_target and target is not None:
        raise XAIRecipesError(f"{chosen_method.name} chooses what it shows itself and takes no target (DFF names its "
                              "concepts by the model's own classes; use top_k for how many classes name each concept)")
    task_options = {k: options.pop(k) for k in list(options) if k in chosen_task.options}
    unknown = sorted(set(options) - set(chosen_method.options))
    if unknown:
        raise XAIRecipesError(f"method {chosen_method.name!r} (task {chosen_task.name!r}) takes no option "
                              f"{', '.join(map(repr, unknown))}; its options: {', '.join(chosen_method.options) or 'none'}"
                              f"; the task's: {', '.join(chosen_task.options) or 'none'}")
    options = {**chosen_method.options, **options}
    if "n_components" in options:
        n = options["n_components"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise XAIRecipesError(f"n_components must be a positive integer, got {n!r}")
    bound = chosen_task.bind(Call(model, processor, chosen, target, {**chosen_task.options, **task_options}))
    run = _Run(model, processor, chosen, chosen_task, bound, chosen_method, bound.top_k if top_k is None else top_k,
               options)
    if _is_many(image):
        return run.stream(_sources(image), batch_size, on_error)
    source = str(image) if isinstance(image, (str, os.PathLike)) else None
    return run.explain([run.prepare(source, image)])[0]
