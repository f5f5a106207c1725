"""The default layer of hierarchical models at the actual input size: the rule lives here, once.

A hierarchical model (ResNet, ConvNeXt, Swin, SegFormer, ...) halves its grid at every stage. At
the input size it was published for (224 px) its last stage is 7×7, the tutorial's layer; at
128 px the same stage is 4×4, too coarse for a heatmap to say where the object is. A recipe lists
its stages (:attr:`Recipe.stages`, shallow to deep); the CAM methods then read the **deepest stage
whose grid is at least** :data:`MIN_GRID` **on its short side at the input being explained** (the
finest stage when none is). Measured on trained three-stage test models whose last grid is 4×4
(tests/test_layers.py), the stage before the last puts GradCAM's peak on the object far more often.

The grids are read off one probe forward pass at each new input size (no gradients, cached per
model), so the rule holds for any recipe, hand-written or derived, without per-family formulas.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from .capture import LogitsModel, as_maps, first_tensor, module_names
from .errors import RecipeError
from .recipe import Recipe

#: A stage is explained only when its grid is at least this many cells on its short side (the
#: published models' last stage at 224 px: 7×7).
MIN_GRID = 7

_grids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(recipe, h, w): grids}
_lock = threading.Lock()


@dataclass(frozen=True)
class LayerChoice:
    """Which stage a hierarchical model is explained at for one input size, and why."""

    stage: int  # index into the recipe's stages
    names: list[str]  # the stages' module names, shallow to deep
    grids: list[tuple[int, int]]  # each stage's grid at this input
    input_hw: tuple[int, int]

    @property
    def reason(self) -> str:
        h, w = self.input_hw
        grids = ", ".join(f"{gh}×{gw}" for gh, gw in self.grids)
        chosen = f"stage {self.stage + 1} of {len(self.grids)} ({self.names[self.stage]})"
        if min(self.grids[self.stage]) >= MIN_GRID:
            why = f"the deepest stage whose grid is at least {MIN_GRID} on its short side"
        else:
            why = f"no stage's grid reaches {MIN_GRID} on its short side: the finest one"
        return f"at {h}×{w}: {chosen}, {why} (stage grids {grids})"


def choose(grids: list[tuple[int, int]], min_grid: int = MIN_GRID) -> int:
    """Index of the deepest grid whose short side is ≥ ``min_grid``; else of the finest grid."""
    fine = [i for i, g in enumerate(grids) if min(g) >= min_grid]
    return fine[-1] if fine else max(range(len(grids)), key=lambda i: (min(grids[i]), -i))


def stage_grids(model: nn.Module, recipe: Recipe, example: torch.Tensor) -> list[tuple[int, int]]:
    """Each of ``recipe.stages`` grids (``h, w`` after the recipe's reshape) for inputs shaped like
    ``example`` (``B×C×H×W``), from one probe forward pass of its first image, cached per model."""
    input_hw = tuple(example.shape[-2:])
    key = (recipe.name, *input_hw)
    with _lock:
        known = _grids.get(model, {}).get(key)
    if known is not None:
        return known
    stages = list(recipe.stages(model))
    seen: dict[int, torch.Tensor] = {}
    caller = threading.get_ident()

    def hook(module: nn.Module, args: object, output: object) -> None:
        tensor = first_tensor(output)
        if threading.get_ident() == caller and tensor is not None:
            seen.setdefault(id(module), tensor)

    with ExitStack() as stack:
        for stage in stages:
            stack.callback(stage.register_forward_hook(hook).remove)
        stack.enter_context(torch.no_grad())
        LogitsModel(model, recipe)(example[:1])
    missing = [type(s).__name__ for s in stages if id(s) not in seen]
    if missing:
        raise RecipeError(f"recipe {recipe.name!r}: stage(s) {missing} did not run in the forward pass; its stages "
                          "do not fit this model")
    grids = [tuple(as_maps(recipe, model, seen[id(s)], input_hw).shape[-2:]) for s in stages]
    with _lock:
        _grids.setdefault(model, {})[key] = grids
    return grids


def at_input(model: nn.Module, recipe: Recipe, example: torch.Tensor) -> tuple[Recipe, LayerChoice | None]:
    """``recipe`` with its target layer set to the stage :func:`choose` picks for ``example``'s
    size, and that choice; ``(recipe, None)`` for recipes that declare no stages."""
    if recipe.stages is None:
        return recipe, None
    stages = list(recipe.stages(model))
    grids = stage_grids(model, recipe, example)
    choice = LayerChoice(choose(grids), module_names(model, stages), grids, tuple(example.shape[-2:]))
    if choice.stage == len(stages) - 1:
        return recipe, choice  # the recipe's own target layer (its last stage)
    layer = stages[choice.stage]
    return dataclasses.replace(recipe, target_layers=lambda m, layer=layer: [layer]), choice
