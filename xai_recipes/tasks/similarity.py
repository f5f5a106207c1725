"""Image similarity (the image-feature-extraction task): what in an image makes it like a reference.

``explain(model, image, target=reference)`` on any model whose recipe gives a pooled image
embedding (``Recipe.embedding``: DINOv2 and other backbones, CLIP's or SigLIP's image tower, open_clip
models): the score is the cosine similarity of the two embeddings, one map per reference image.
References are embedded once per call, in eval mode, through the same recipe and processor.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ImageError, TaskNotApplicableError
from ..hookspecs import hookimpl
from ..images import is_image_target, load_image
from ..modelstate import borrowed
from ..recipe import Recipe
from ..task import Bound, Call, Task
from .zero_shot import bind_embedding


def _references(target: Any) -> list[Any]:
    return list(target) if isinstance(target, (list, tuple)) else [target]


def _not_images(target: Any) -> str | None:
    """Why ``target`` is not one or more reference images (PIL, array, bytes, or image files), or ``None``."""
    if target is None:
        return "image similarity needs target=<a reference image> (PIL image, array, or a list of them); pass one"
    if is_image_target(target) or all(isinstance(t, (str, os.PathLike)) and os.path.isfile(t)
                                       for t in _references(target)):
        return None
    return (f"the target {str(target)[:60]!r} is not an image: pass a PIL image, an H×W×C array, encoded bytes or an "
            "image file (a text prompt needs a model with a text tower, e.g. CLIP)")


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if recipe.embedding is None:
        return f"recipe {recipe.name!r} explains class logits, not a pooled image embedding to compare"
    return _not_images(target)


def bind(call: Call) -> Bound:
    problem = _not_images(call.target)
    if problem:
        raise TaskNotApplicableError(problem)
    references = _references(call.target)
    recipe, model = call.recipe, call.model
    pixels = []
    for i, reference in enumerate(references):
        picture = load_image(reference)
        try:
            pixels.append(recipe.image_tensor(call.processor(images=picture, return_tensors="pt")))
        except Exception as exc:  # the processor's own errors name no image
            raise ImageError(f"the image processor cannot process reference image {i} ({picture.width}×"
                             f"{picture.height}): {type(exc).__name__}: {exc}") from exc
    param = next(model.parameters())
    with borrowed(model), torch.no_grad():
        embeddings = torch.cat([recipe.embedding(recipe.output(model, p.to(param.device, param.dtype))) for p in pixels])
    embeddings = embeddings / embeddings.norm(p=2, dim=-1, keepdim=True)

    def cosine(image: torch.Tensor) -> torch.Tensor:
        return (image / image.norm(p=2, dim=-1, keepdim=True)) @ embeddings.to(image.dtype).T

    names = {i: str(r) if isinstance(r, (str, os.PathLike)) else f"reference {i}" for i, r in enumerate(references)}
    return Bound(bind_embedding(recipe, cosine), names, list(range(len(references))), lambda s: s.float())


NO_CLASSES = ("{} names its maps by a classifier's own classes; image similarity has none; use gradcam, "
              "gradient-rollout or legrad")

TASK = Task(
    name="image-feature-extraction",
    bind=bind,
    check=_check,
    priority=10,
    unsupported={m: NO_CLASSES.format(m) for m in ("dff", "patch-contributions")},
    description="Cosine similarity of the image's pooled embedding to a reference image's; one map per reference",
    reference='transformers pipeline("image-feature-extraction") embeddings, cosine similarity',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
