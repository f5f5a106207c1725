"""The recipe registry: plugins found through the ``xai_recipes`` entry-point group.

Built-in recipes arrive exactly like third-party ones. A plugin that fails to import, or whose
hook raises, is reported (a warning, and in :func:`plugins`) and skipped; the rest keep working.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy
from torch import nn

from . import hookspecs
from .errors import NoRecipeError
from .recipe import Recipe

ENTRY_POINT_GROUP = "xai_recipes"


@dataclass
class PluginInfo:
    """One plugin: where it came from, what it registered, and what went wrong if anything."""

    name: str
    distribution: str | None = None
    version: str | None = None
    recipes: list[str] = field(default_factory=list)
    error: str | None = None


class Registry:
    """Recipes by name, filled from plugins. Use the module-level functions, not this class."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("xai_recipes")
        self.pm.add_hookspecs(hookspecs)
        self.recipes: dict[str, Recipe] = {}
        self.plugins: dict[str, PluginInfo] = {}

    def load_entry_points(self) -> None:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None)
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the host
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self.add_plugin(plugin, info)

    def add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        if self.pm.is_registered(plugin):
            return
        self.pm.register(plugin, name=info.name)
        for impl in self.pm.hook.register_recipes.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            added: list[Recipe] = []
            try:
                impl.function(register=added.append)
                for recipe in added:
                    if not isinstance(recipe, Recipe):
                        raise TypeError(f"register() wants a xai_recipes.Recipe, got {type(recipe).__name__}")
                    if recipe.name in self.recipes:
                        raise ValueError(
                            f"recipe name {recipe.name!r} is already registered by plugin "
                            f"{self.recipes[recipe.name].plugin!r}"
                        )
            except Exception as exc:
                self._fail(info, f"register_recipes raised {type(exc).__name__}: {exc}")
                return
            for recipe in added:
                self.recipes[recipe.name] = replace(recipe, plugin=info.name)
                info.recipes.append(recipe.name)

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
    raise NoRecipeError(
        f"no recipe for model type {model_type!r} ({type(model).__name__}).{reason} Registered recipes: "
        f"{', '.join(list_recipes())}. Pass recipe='<name>' to use one of them anyway, or write a "
        "plugin: a module with a @xai_recipes.hookimpl register_recipes(register) function, "
        f"announced in the {ENTRY_POINT_GROUP!r} entry-point group."
    )
