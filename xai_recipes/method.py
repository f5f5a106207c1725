"""The method: *how* a heatmap is computed, as a recipe says *where* to look.

A method is plain data registered by a plugin (``register_methods``), like a recipe. The engine
hands it one :class:`Batch` (model, recipe, images of one size, how to choose targets) and gets
one :class:`Result` back (logits, targets, maps on the model input); it maps them onto the
original images. A method declares what it needs from a recipe (``needs``) and may say why it
does not apply to a model (``check``), so ``describe()`` and ``xai-recipes methods MODEL`` can
tell users which methods apply before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .recipe import Recipe

#: What a method may need from a recipe, and how to tell whether the recipe provides it.
NEEDS: dict[str, Callable[[Recipe], bool]] = {
    "target_layers": lambda r: r.target_layers is not None,
    "head": lambda r: r.head is not None,
    "attention": lambda r: r.attention is not None,
    "queries": lambda r: r.queries is not None,
}


@dataclass
class Batch:
    """One forward pass' worth of work for a method: images of one size, already preprocessed.

    Attributes:
        model: the classifier, in eval mode for the call (eager attention if the method asked).
        recipe: the recipe explaining it.
        pixel_values: ``B×C×H×W`` on the model's device and dtype.
        choose: ``logits (B×labels) -> targets`` per image: the user's targets, else the top-k.
        top_k: how many classes the user asked for (DFF names each concept with that many).
        options: the method's options, defaults filled in (see :attr:`Method.options`).
    """

    model: nn.Module
    recipe: Recipe
    pixel_values: torch.Tensor
    choose: Callable[[torch.Tensor], list[list[int]]]
    top_k: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.pixel_values.shape[-2]), int(self.pixel_values.shape[-1])


@dataclass
class Result:
    """What a method returns for a batch of ``B`` images and ``T`` targets each.

    Attributes:
        logits: ``B×labels``, from the method's own forward pass.
        targets: per image, the ``T`` explained classes (from ``Batch.choose``, or the method's own).
        maps: ``B×T×H×W`` on the model input, in [0, 1] ([-1, 1] for signed methods).
        layers: the modules the maps were read from (named in the explanation).
        scores: per image and target, the score shown; default: the target's softmax probability.
        legend: per image and map, the classes read from it (DFF's concepts).
        contributions, intercepts: exact per-patch logit contributions ``B×T×h×w`` and ``B×T``.
        heads: ``B×heads×H×W`` per-head maps on the model input (attention).
        signed: the maps are signed, in [-1, 1] (a method whose sign is an option, e.g. Captum's
            ``signed=True``; methods that are always signed set :attr:`Method.signed`).
    """

    logits: torch.Tensor
    targets: list[list[int]]
    maps: np.ndarray | Sequence[np.ndarray]
    layers: Sequence[nn.Module] = ()
    scores: list[list[float]] | None = None
    legend: list[list[list[tuple[int, str, float]]]] | None = None
    contributions: np.ndarray | None = None
    intercepts: list[list[float]] | None = None
    heads: np.ndarray | None = None
    signed: bool = False


@dataclass(frozen=True)
class Method:
    """How to explain: a named way of turning a model, a recipe and images into heatmaps.

    Attributes:
        name: unique name, e.g. ``"gradient-rollout"``; matched ignoring case, ``-``, ``_``, spaces.
        run: ``Batch -> Result``.
        needs: recipe fields the method reads: ``"target_layers"``, ``"head"``, ``"attention"``,
            ``"queries"``.
        check: ``(model, recipe) -> None`` if the method applies, else one sentence saying why
            not and what to use instead (beyond ``needs``, e.g. "keys are spatially reduced").
        class_specific: whether maps differ per target class (attention maps do not).
        takes_target: whether users may pass ``target`` (DFF names its own concepts).
        signed: maps in [-1, 1] with their sign (exact contributions) instead of [0, 1].
        options: option name → default; ``explain(..., **options)`` overrides them.
        eager_attention: the model must compute attention probabilities (eager, not SDPA).
        description: one line for listings and the gallery.
        reference: the paper or library the method follows.
    """

    name: str
    run: Callable[[Batch], Result]
    needs: tuple[str, ...] = ("target_layers",)
    check: Callable[[nn.Module, Recipe], str | None] | None = None
    class_specific: bool = True
    takes_target: bool = True
    signed: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    eager_attention: bool = False
    description: str = ""
    reference: str = ""
    plugin: str = ""  # set by the registry: which plugin registered it

    def why_not(self, model: nn.Module, recipe: Recipe) -> str | None:
        """``None`` if this method can explain ``model`` with ``recipe``, else why not."""
        if self.name in recipe.unsupported:
            return recipe.unsupported[self.name]
        missing = [n for n in self.needs if not NEEDS.get(n, lambda r: True)(recipe)]
        if missing:
            return (f"recipe {recipe.name!r} declares no {' / '.join(missing)}, which {self.name} needs"
                    + (f" ({_HINT[missing[0]]})" if missing[0] in _HINT else ""))
        return self.check(model, recipe) if self.check else None


_HINT = {
    "target_layers": ("a spatial layer the logits depend on; none could be derived for this model: use a method that "
                      "needs no recipe field, e.g. integrated-gradients or saliency"),
    "head": "the classifier and any norm before it, on pooled features",
    "attention": "where the attention probabilities are: a model without attention layers has none; use gradcam",
    "queries": ("the object queries of an encoder-decoder detector (DETR) and their attention: a classifier or backbone "
                "has none; use attention, gradient-rollout or gradcam"),
}
