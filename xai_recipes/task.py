"""The task: *what* is explained, as a recipe says *where* to look and a method *how*.

A task is plain data registered by a plugin (``register_tasks``), like recipes and methods. For
one ``explain()`` call the engine asks the task to :meth:`Task.bind` the user's targets: the task
resolves them (class names for a classifier, free-text prompts for a zero-shot model, a reference
image for image similarity) and hands back a :class:`Bound` — the recipe with its ``logits``
turned into the ``B×K`` scores the methods differentiate, the names of those K scores, which of
them the user asked for, and how scores become the probabilities the explanation shows. Methods
never know which task they serve: they explain ``recipe.scores(model, pixel_values)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .recipe import Recipe


@dataclass
class Call:
    """What one ``explain()`` call gives a task to bind.

    Attributes:
        model: the model (already loaded, on its device).
        processor: its processor (image processor, or a processor holding a tokenizer too).
        recipe: the recipe found for the model.
        target: the user's ``target=`` as given (``None``: the top-k).
        options: the task's options, defaults filled in (see :attr:`Task.options`).
    """

    model: nn.Module
    processor: Any
    recipe: Recipe
    target: Any
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Bound:
    """A task bound to one call: the scores explained and how to show them.

    Attributes:
        recipe: the recipe whose ``scores(model, pixel_values)`` give ``B×K`` task scores.
        labels: index → name of each of the K scores (classes, prompts, reference images).
        wanted: the score indices the user asked for (duplicates kept), ``None``: the top-k.
        probabilities: ``B×K`` scores → the probabilities shown (softmax, sigmoid, identity).
        unsupported: method name → why it cannot explain this task (and what to use instead).
    """

    recipe: Recipe
    labels: dict[int, str]
    wanted: list[int] | None
    probabilities: Callable[[torch.Tensor], torch.Tensor] = lambda s: s.float().softmax(-1)
    unsupported: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What to explain: a named way of turning a model's output and the user's targets into scores.

    Attributes:
        name: unique name, transformers' pipeline task where there is one
            (``"image-classification"``, ``"zero-shot-image-classification"``, ...).
        bind: ``Call -> Bound``; raises a typed :class:`xai_recipes.XAIRecipesError` naming bad
            targets or options.
        check: ``(model, recipe, target) -> None`` if this task can explain ``model`` (for this
            ``target``), else one sentence saying why not. The engine picks the first task, by
            ``priority`` (highest first), whose check passes; ``task=`` picks one by name.
        priority: order in which the engine tries tasks when none is named.
        options: option name → default; ``explain(..., **options)`` overrides them.
        unsupported: method name → why the method cannot explain this task.
        description: one line for listings and the gallery.
        reference: the pipeline or paper whose scores the task reproduces.
    """

    name: str
    bind: Callable[[Call], Bound]
    check: Callable[[nn.Module, Recipe, Any], str | None]
    priority: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
    plugin: str = ""  # set by the registry: which plugin registered it

    def why_not(self, model: nn.Module, recipe: Recipe, target: Any = None) -> str | None:
        """``None`` if this task can explain ``model`` with ``recipe`` (and ``target``), else why not."""
        return self.check(model, recipe, target)
