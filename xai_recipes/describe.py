"""``describe()``: which recipe, layers, reshape and output wrapper a model would be explained with."""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import loading, registry
from .engine import module_names
from .recipe import Recipe


def _code(fn: Callable | None) -> str | None:
    """One line naming ``fn``: a lambda's source, otherwise its qualified name."""
    if fn is None:
        return None
    if getattr(fn, "__name__", "") == "<lambda>":
        try:
            line = " ".join(inspect.getsource(fn).split())
        except (OSError, TypeError):
            return "<lambda>"
        return line[line.index("lambda"):].rstrip(",")
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(frozen=True)
class Description:
    """How a model would be explained, decided without running it."""

    model_type: str
    architecture: str
    recipe: str
    plugin: str
    description: str
    target_layers: list[str]
    reshape: str | None
    logits: str | None
    head: str | None
    pooling: str
    forward_kwargs: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in self.as_dict().items()]
        return "\n".join(f"{k:15} {v}" for k, v in rows if v not in (None, {}, ""))


def describe(
    model: str | os.PathLike | nn.Module,
    *,
    recipe: str | Recipe | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> Description:
    """The recipe ``explain(model, ...)`` would use and what it declares, without a forward pass."""
    model, _ = loading.load(model, None, device, trust_remote_code, need_processor=False)
    chosen = registry.find_recipe(model, recipe)
    return Description(
        model_type=model.config.model_type,
        architecture=type(model).__name__,
        recipe=chosen.name,
        plugin=chosen.plugin,
        description=chosen.description,
        target_layers=module_names(model, list(chosen.target_layers(model))),
        reshape=_code(chosen.reshape),
        logits=_code(chosen.logits),
        head=_code(chosen.head),
        pooling=chosen.pooling,
        forward_kwargs=dict(chosen.forward_kwargs),
    )
