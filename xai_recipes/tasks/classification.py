"""Image classification: explain class logits; targets are label names or class indices.

The scores are the classifier's logits (``recipe.logits``), the probabilities its softmax, as in
``pipeline("image-classification")``; targets resolve against ``config.id2label`` (any
comma-separated synonym, case-insensitive, with did-you-mean).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..hookspecs import hookimpl
from ..recipe import Recipe
from ..targets import resolve_targets
from ..task import Bound, Call, Task


def classifier_problem(model: nn.Module) -> str | None:
    """Why ``model`` is not an image classifier with a trained head (``None`` if it is)."""
    from ..loading import check_classifier  # transformers' model tables: on first use
    from ..errors import NotAnImageClassifierError

    try:
        check_classifier(model)
    except NotAnImageClassifierError as exc:
        return str(exc)
    return None


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if recipe.embedding is not None:
        return (f"recipe {recipe.name!r} explains an embedding, not class logits: {type(model).__name__} has no "
                "classification head")
    return classifier_problem(model)


def bind(call: Call) -> Bound:
    id2label = {int(k): v for k, v in call.model.config.id2label.items()}
    return Bound(call.recipe, id2label, resolve_targets(call.target, id2label))


TASK = Task(
    name="image-classification",
    bind=bind,
    check=_check,
    priority=0,
    description="A class logit of an image classifier; targets: label names or indices, default the top-k",
    reference='transformers pipeline("image-classification")',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
