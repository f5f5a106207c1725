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
    default_method: str
    attention: list[str]
    methods: dict[str, str]  # method -> "ok" or why it does not apply

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in self.as_dict().items() if k != "methods"]
        lines = [f"{k:15} {v}" for k, v in rows if v not in (None, {}, "", [])]
        ok = [m for m, why in self.methods.items() if why == "ok"]
        lines.append(f"{'methods':15} {', '.join(ok)}")
        lines += [f"{'  not ' + m:15} {why}" for m, why in self.methods.items() if why != "ok"]
        return "\n".join(lines)


def describe(
    model: str | os.PathLike | nn.Module,
    *,
    recipe: str | Recipe | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> Description:
    """The recipe ``explain(model, ...)`` would use, what it declares, its default method and which
    registered methods apply (and why the others do not), without a forward pass."""
    model, _ = loading.load(model, None, device, trust_remote_code, need_processor=False)
    chosen = registry.find_recipe(model, recipe)
    spec = chosen.attention
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
        default_method=chosen.default_method,
        attention=[] if spec is None else module_names(model, list(spec.modules(model))),
        methods=applicable(model, chosen),
    )


def applicable(model: nn.Module, recipe: Recipe) -> dict[str, str]:
    """Every registered method → ``"ok"`` or why it cannot explain ``model`` with ``recipe``."""
    out = {}
    for name, method in registry.methods_table().items():
        try:
            out[name] = method.why_not(model, recipe) or "ok"
        except Exception as exc:  # noqa: BLE001 - a plugin's check must not break describe()
            out[name] = f"its check failed: {type(exc).__name__}: {exc}"
    return out
