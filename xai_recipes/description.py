"""``describe()``: which recipe, layers, reshape and output wrapper a model would be explained with."""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import layers, loading, registry
from .derive import config_channels, config_input_size
from .capture import module_names
from .modelstate import borrowed
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
    """How a model would be explained (at one input size, for the layer of hierarchical models)."""

    model_type: str
    architecture: str
    recipe: str
    plugin: str
    description: str
    target_layers: list[str]  # the CAM methods' layers at ``input_size``
    layer_choice: str | None  # hierarchical models: which stage at ``input_size`` and why
    reshape: str | None
    logits: str | None
    head: str | None
    pooling: str
    forward_kwargs: dict[str, Any]
    default_method: str
    attention: list[str]
    input_size: tuple[int, int]
    methods: dict[str, str]  # method -> "ok" or why it does not apply (for ``task``)
    task: str | None = None  # what explain() explains without a target (or with an image target)
    tasks: dict[str, str] | None = None  # task -> "ok" or why it does not apply

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in self.as_dict().items()
                if k not in ("methods", "tasks")]
        lines = [f"{k:15} {v}" for k, v in rows if v not in (None, {}, "", [])]
        ok = [m for m, why in self.methods.items() if why == "ok"]
        lines.append(f"{'methods':15} {', '.join(ok)}")
        lines += [f"{'  not ' + m:15} {why}" for m, why in self.methods.items() if why != "ok"]
        for name, why in (self.tasks or {}).items():
            lines.append(f"{'task ' + name:15} {why}")
        return "\n".join(lines)


def describe(
    model: str | os.PathLike | nn.Module,
    *,
    recipe: str | Recipe | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    input_size: int | tuple[int, int] | None = None,
) -> Description:
    """The recipe ``explain(model, ...)`` would use, what it declares, its default method and which
    registered methods apply (and why the others do not).

    ``input_size`` (the model input's ``H×W``, default the config's ``image_size`` or 224) fixes
    which stage of a hierarchical model the CAM methods read (:mod:`xai_recipes.layers`): that
    takes one probe forward pass; nothing else runs the model."""
    model, _ = loading.load(model, None, device, trust_remote_code, need_processor=False)
    chosen = registry.find_recipe(model, recipe)
    tasks = task_status(model, chosen)
    task = next((registry.get_task(name) for name, why in tasks.items() if why == "ok"), None)
    spec = chosen.attention
    size = _size(model, input_size)
    target, choice = chosen, None
    if chosen.stages is not None:
        param = next(model.parameters())
        with borrowed(model):
            target, choice = layers.at_input(model, chosen, torch.zeros(1, config_channels(model.config), *size).to(param))
    return Description(
        model_type=getattr(getattr(model, "config", None), "model_type", type(model).__module__.split(".")[0]),
        architecture=type(model).__name__,
        recipe=chosen.name,
        plugin=chosen.plugin,
        description=chosen.description,
        target_layers=[] if target.target_layers is None else module_names(model, list(target.target_layers(model))),
        layer_choice=None if choice is None else choice.reason,
        reshape=_code(chosen.reshape),
        logits=_code(chosen.logits),
        head=_code(chosen.head),
        pooling=chosen.pooling,
        forward_kwargs=dict(chosen.forward_kwargs),
        default_method=chosen.default_method,
        attention=[] if spec is None else module_names(model, list(spec.modules(model))),
        input_size=size,
        methods=applicable(model, chosen, task),
        task=None if task is None else task.name,
        tasks=tasks,
    )


def task_status(model: nn.Module, recipe: Recipe) -> dict[str, str]:
    """Every registered task → ``"ok"`` or why it cannot explain ``model`` (checked without a target,
    and with a reference image for the tasks that need one)."""
    from PIL import Image

    probe = Image.new("RGB", (8, 8))
    out = {}
    for name, task in registry.tasks_table().items():
        try:
            why = task.why_not(model, recipe, None)
            out[name] = "ok" if why is None or task.why_not(model, recipe, probe) is None else why
        except Exception as exc:  # noqa: BLE001 - a plugin's check must not break describe()
            out[name] = f"its check failed: {type(exc).__name__}: {exc}"
    return out


def _size(model: nn.Module, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        config = getattr(model, "config", None)
        return config_input_size(config) if config is not None else (224, 224)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    return int(h), int(w)


def applicable(model: nn.Module, recipe: Recipe, task: Any = None) -> dict[str, str]:
    """Every registered method → ``"ok"`` or why it cannot explain ``model`` with ``recipe`` (for ``task``)."""
    out = {}
    for name, method in registry.methods_table().items():
        try:
            out[name] = (task.unsupported.get(method.name) if task is not None else None) or \
                method.why_not(model, recipe) or "ok"
        except Exception as exc:  # noqa: BLE001 - a plugin's check must not break describe()
            out[name] = f"its check failed: {type(exc).__name__}: {exc}"
    return out
