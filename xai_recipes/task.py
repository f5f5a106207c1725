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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
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


@dataclass(frozen=True)
class Region:
    """One explained target of a task whose targets depend on the image (a detection, a segment).

    Attributes:
        index: which of the ``K`` scores it is (e.g. a query's class logit, a class's region score).
        label: its name (the class).
        score: what the model's own post-processing says of it (a detection's score; a segment's
            share of the image).
        box: ``(x0, y0, x1, y1)`` in image pixels (detections).
        mask: ``H×W`` bool at the image's size (segments).
    """

    index: int
    label: str
    score: float
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)


#: ``(scores B×K, image sizes [(H, W)], top_k) -> per image (chosen regions, every region best first)``.
Select = Callable[[torch.Tensor, Sequence[tuple[int, int]], int], list[tuple[list[Region], list[Region]]]]


@dataclass
class Bound:
    """A task bound to one call: the scores explained and how to show them.

    Attributes:
        recipe: the recipe whose ``scores(model, pixel_values)`` give ``B×K`` task scores.
        labels: index → name of each of the K scores (classes, prompts, reference images).
        wanted: the score indices the user asked for (duplicates kept), ``None``: the top-k.
        probabilities: ``B×K`` scores → the probabilities shown (softmax, sigmoid, identity).
        unsupported: method name → why it cannot explain this task (and what to use instead).
        select: for targets that depend on the image (detections, segments): the task's own
            choice of targets from the scores of the method's forward pass (:data:`Select`); the
            engine then explains one image at a time and the explanation carries each target's
            box or mask. ``None``: targets are ``wanted`` or the top-k scores.
        top_k: how many targets to explain when the user gives none and ``top_k`` is not passed.
        for_images: ``image sizes [(H, W)] -> recipe``: for scores that depend on the image's own
            geometry (a region the user drew on it), the recipe for images of these sizes; the
            engine then explains one image at a time. ``None``: ``recipe`` for every image.
    """

    recipe: Recipe
    labels: dict[int, str]
    wanted: list[int] | None
    probabilities: Callable[[torch.Tensor], torch.Tensor] = lambda s: s.float().softmax(-1)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    select: Select | None = None
    top_k: int = 1
    for_images: Callable[[Sequence[tuple[int, int]]], Recipe] | None = None


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


class Outputs:
    """The model outputs behind the last few score tensors a bound recipe gave, found again by those
    scores: a task whose targets depend on the image (:attr:`Bound.select`) reads the boxes or
    segmentation of the very forward pass whose scores a method hands to ``choose``. One per bound
    call (an ``explain()`` call runs its images one after another)."""

    def __init__(self, keep: int = 4) -> None:
        self._kept: list[tuple[torch.Tensor, Any]] = []
        self._keep = keep

    def keep(self, scores: torch.Tensor, output: Any) -> None:
        """Remember ``output`` (detached by the caller) as the source of ``scores``."""
        self._kept = [*self._kept[-(self._keep - 1):], (scores.detach(), output)]

    def find(self, scores: torch.Tensor) -> Any:
        """The output whose scores equal ``scores`` (the newest first)."""
        for kept, output in reversed(self._kept):
            same = kept.data_ptr() == scores.data_ptr() and kept.shape == scores.shape
            if same or (kept.shape == scores.shape and torch.equal(kept, scores.detach().to(kept.device, kept.dtype))):
                return output
        raise RuntimeError("the scores a method chose targets from come from no forward pass of this call's recipe; "
                           "a method must choose targets from recipe.scores(...) of the images it explains")
