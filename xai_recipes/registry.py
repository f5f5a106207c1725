"""The registry of recipes, methods and tasks: plugins found through the ``xai_recipes`` entry-point group.

Built-in recipes and methods arrive exactly like third-party ones. A plugin that fails to import, or whose
hook raises, is reported (a warning, and in :func:`plugins`) and skipped; the rest keep working. Each
plugin is imported in a daemon thread with a time limit (:data:`IMPORT_TIMEOUT`): one whose import hangs
(a network call, a deadlock, ``input()``) or calls ``sys.exit`` is reported as broken instead of taking the
host with it.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy
from torch import nn

from . import hookspecs
from .errors import NoRecipeError, UnknownMethodError, UnknownTaskError
from .method import Method
from .recipe import Recipe
from .task import Task

ENTRY_POINT_GROUP = "xai_recipes"
#: Seconds a plugin's import may take before it is reported as broken and skipped (environment variable
#: ``XAI_RECIPES_PLUGIN_TIMEOUT``). The built-ins import grad-cam and torchvision: seconds on a loaded machine.
def _timeout_from_env(default: float = 120.0) -> float:
    try:
        return float(os.environ.get("XAI_RECIPES_PLUGIN_TIMEOUT", default))
    except ValueError:
        return default


IMPORT_TIMEOUT = _timeout_from_env()


class _ImportTimeout(Exception):
    pass


def _import(ep: importlib.metadata.EntryPoint, timeout: float) -> tuple[Any, BaseException | None]:
    """``ep.load()`` in a daemon thread: ``(plugin, None)``, or ``(None, the exception it raised)`` (any,
    ``SystemExit`` included); :class:`_ImportTimeout` when it has not finished after ``timeout`` seconds
    (the thread is left behind, blocked; the host goes on)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["plugin"] = ep.load()
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt at import: a broken plugin
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"xai_recipes plugin import {ep.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _ImportTimeout(f"import did not finish within {timeout:g} s (it hangs, or deadlocks importing "
                             "xai_recipes' registry itself); fix or uninstall the plugin, or raise "
                             "XAI_RECIPES_PLUGIN_TIMEOUT if it is only slow")
    return box.get("plugin"), box.get("error")


@dataclass
class PluginInfo:
    """One plugin: where it came from, what it registered, and what went wrong if anything."""

    name: str
    distribution: str | None = None
    version: str | None = None
    recipes: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    error: str | None = None


def method_key(name: str) -> str:
    """How method names are matched: case, ``-``, ``_`` and spaces ignored, ``+`` read as ``p``."""
    return str(name).lower().replace("+", "p").replace("-", "").replace("_", "").replace(" ", "")


class Registry:
    """Recipes, methods and tasks by name, filled from plugins. Use the module-level functions, not this class."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("xai_recipes")
        self.pm.add_hookspecs(hookspecs)
        self.recipes: dict[str, Recipe] = {}
        self.methods: dict[str, Method] = {}  # by method_key
        self.tasks: dict[str, Task] = {}  # by method_key of the name
        self.plugins: dict[str, PluginInfo] = {}

    def load_entry_points(self) -> None:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None)
            try:
                plugin, error = _import(ep, IMPORT_TIMEOUT)
            except _ImportTimeout as exc:
                self._fail(info, str(exc))
                continue
            if error is not None:  # a broken plugin (even one calling sys.exit) must not break the host
                self._fail(info, f"import failed: {type(error).__name__}: {error}")
                continue
            self.add_plugin(plugin, info)

    def add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        if self.pm.is_registered(plugin):
            return
        self.pm.register(plugin, name=info.name)
        recipes = self._collect(plugin, info, "register_recipes", Recipe, lambda r: r.name, self.recipes)
        methods = None if recipes is None else self._collect(
            plugin, info, "register_methods", Method, lambda m: method_key(m.name), self.methods)
        tasks = None if methods is None else self._collect(
            plugin, info, "register_tasks", Task, lambda t: method_key(t.name), self.tasks)
        if recipes is None or methods is None or tasks is None:  # a failing hook fails the whole plugin
            return
        for recipe in recipes:
            self.recipes[recipe.name] = replace(recipe, plugin=info.name)
            info.recipes.append(recipe.name)
        for method in methods:
            self.methods[method_key(method.name)] = replace(method, plugin=info.name)
            info.methods.append(method.name)
        for task in tasks:
            self.tasks[method_key(task.name)] = replace(task, plugin=info.name)
            info.tasks.append(task.name)

    def _collect(self, plugin: Any, info: PluginInfo, hook: str, kind: type, key: Any, taken: dict) -> list | None:
        """What ``plugin``'s ``hook`` registers, checked; ``None`` (and the plugin failed) if it raises."""
        added: list = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                impl.function(register=added.append)
                for item in added:
                    if not isinstance(item, kind):
                        raise TypeError(f"register() wants a xai_recipes.{kind.__name__}, got {type(item).__name__}")
                    if key(item) in taken:
                        raise ValueError(f"{kind.__name__.lower()} name {item.name!r} is already registered by plugin "
                                         f"{taken[key(item)].plugin!r}")
            except Exception as exc:
                self._fail(info, f"{hook} raised {type(exc).__name__}: {exc}")
                return None
        return added

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.error = error
        self.plugins[info.name] = info
        warnings.warn(f"xai_recipes plugin {info.name!r} skipped: {error}", RuntimeWarning, stacklevel=3)


_lock = threading.Lock()
_registry: Registry | None = None


def _get() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            registry = Registry()
            registry.load_entry_points()
            _registry = registry
        return _registry


def register_plugin(plugin: Any, name: str | None = None) -> PluginInfo:
    """Register a plugin object (module or instance with ``@hookimpl`` functions) at run time,
    e.g. from a notebook. Returns its :class:`PluginInfo` (check ``.error``)."""
    info = PluginInfo(name or getattr(plugin, "__name__", type(plugin).__name__))
    registry = _get()
    with _lock:
        registry.add_plugin(plugin, info)
    return info


def plugins() -> list[PluginInfo]:
    """Every plugin seen, with its version, recipes and error (if it was skipped)."""
    return list(_get().plugins.values())


def recipes() -> dict[str, Recipe]:
    """All registered recipes by name."""
    return dict(_get().recipes)


def methods_table() -> dict[str, Method]:
    """All registered methods by name."""
    return {m.name: m for m in _get().methods.values()}


def list_methods(pattern: str = "*") -> list[str]:
    """Names of registered methods matching a shell-style ``pattern``, in registration order."""
    return [m.name for m in _get().methods.values() if fnmatch.fnmatchcase(m.name, pattern)]


def get_method(name: str | Method) -> Method:
    """The method called ``name`` ("Grad-CAM++" finds "gradcam++"), or :class:`UnknownMethodError`."""
    if isinstance(name, Method):
        return name
    found = _get().methods.get(method_key(name))
    if found is None:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(list_methods())} "
                                 "(xai-recipes methods MODEL says which apply to a model)")
    return found


def tasks_table() -> dict[str, Task]:
    """All registered tasks by name, highest priority first."""
    return {t.name: t for t in sorted(_get().tasks.values(), key=lambda t: -t.priority)}


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (matched like method names), or :class:`UnknownTaskError`."""
    if isinstance(name, Task):
        return name
    found = _get().tasks.get(method_key(name))
    if found is None:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of: {', '.join(tasks_table())}")
    return found


def find_task(model: nn.Module, recipe: Recipe, target: Any = None, task: str | Task | None = None) -> Task:
    """The task that explains ``model`` for ``target``: ``task`` if given (it must apply), else the
    highest-priority registered task whose check passes. :class:`TaskNotApplicableError` names
    each task's reason when none does."""
    from .errors import TaskNotApplicableError

    candidates = [get_task(task)] if task is not None else list(tasks_table().values())
    if not candidates:
        raise TaskNotApplicableError("no task is registered, so nothing says what to explain: install xai-recipes "
                                     "with its built-in plugins (pip install -e .) or register a task plugin")
    reasons = []
    for candidate in candidates:
        why = candidate.why_not(model, recipe, target)
        if why is None:
            return candidate
        reasons.append(f"{candidate.name}: {why}")
    raise TaskNotApplicableError(f"no task can explain {type(model).__name__} with recipe {recipe.name!r} for this "
                                 f"target — " + "; ".join(reasons))


def list_recipes(pattern: str = "*") -> list[str]:
    """Sorted names of registered recipes matching a shell-style ``pattern`` (e.g. ``"vi*"``)."""
    return sorted(n for n in _get().recipes if fnmatch.fnmatchcase(n, pattern))


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`NoRecipeError` with the registered names otherwise."""
    found = _get().recipes.get(name)
    if found is None:
        raise NoRecipeError(f"no recipe named {name!r}; registered recipes: {', '.join(list_recipes())}")
    return found


def find_recipe(model: nn.Module, recipe: str | Recipe | None = None, derive: bool = True) -> Recipe:
    """The recipe for ``model``: ``recipe`` if given (name or object), else the registered one
    serving its ``config.model_type``. Several candidates: the one with a ``matches`` function
    that accepts the model wins over a plain one; ties go to the alphabetically first plugin.
    None: a recipe derived by probing the model (see :mod:`xai_recipes.derive`), if ``derive``."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe is not None:
        return get_recipe(recipe)
    candidates = [r for r in _get().recipes.values() if r.serves(model)]
    if candidates:
        return min(candidates, key=lambda r: (r.matches is None, r.plugin, r.name))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reason = ""
    if derive:
        from .derive import derive as derive_recipe

        try:
            return derive_recipe(model)
        except NoRecipeError as exc:
            reason = f" No recipe could be derived either: {exc}."
            from .generic import generic_recipe  # input attributions need no recipe field: logits wrapper only

            try:
                return generic_recipe(model, str(exc))
            except NoRecipeError as generic_exc:
                reason += f" {generic_exc}."
    raise NoRecipeError(
        f"no recipe for model type {model_type!r} ({type(model).__name__}).{reason} Registered recipes: "
        f"{', '.join(list_recipes())}. Pass recipe='<name>' to use one of them anyway, or write a "
        "plugin: a module with a @xai_recipes.hookimpl register_recipes(register) function, "
        f"announced in the {ENTRY_POINT_GROUP!r} entry-point group."
    )
