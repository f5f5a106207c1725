"""The plugin interface: pluggy markers and the hooks a plugin may implement.

A plugin is any module (or object) with functions marked ``@hookimpl``, announced through the
``xai_recipes`` entry-point group of its distribution::

    [project.entry-points.xai_recipes]
    my_family = "my_package.my_recipe"

Every hook is documented in ``docs/hooks.md`` (arguments, when it is called, an example), and
``tests/test_hookspecs.py`` fails for a hook without a docstring, documentation or test. The
complete example plugin is ``examples/xai-recipes-deit``.
"""

from __future__ import annotations

from typing import Callable

import pluggy

from .method import Method
from .recipe import Recipe
from .task import Task

hookspec = pluggy.HookspecMarker("xai_recipes")
hookimpl = pluggy.HookimplMarker("xai_recipes")


@hookspec
def register_recipes(register: Callable[[Recipe], None]) -> None:
    """Register recipes by calling ``register(Recipe(...))`` once per recipe.

    Called once per plugin, when the plugin is added to the registry: for plugins announced in
    the ``xai_recipes`` entry-point group, on the first use of the registry in a process
    (``explain``, ``describe``, ``find_recipe``, ``plugins``, ...); for plugins passed to
    :func:`xai_recipes.register_plugin`, at that call.

    Args:
        register: call it with each :class:`xai_recipes.Recipe` the plugin provides. Anything
            else, or a recipe name that is already registered, makes the whole plugin fail.

    Returns nothing. If the hook raises, none of the plugin's recipes is kept: the plugin is
    skipped with a ``RuntimeWarning`` and its error is shown by ``xai-recipes plugins``.
    """


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register explanation methods by calling ``register(Method(...))`` once per method.

    Called exactly like :func:`register_recipes` (once per plugin, when it is added), and a
    plugin may implement both. Method names are matched ignoring case, ``-``, ``_`` and spaces.

    Args:
        register: call it with each :class:`xai_recipes.Method` the plugin provides. Anything
            else, or a method name that is already registered, makes the whole plugin fail.

    Returns nothing. If the hook raises, none of the plugin's recipes or methods is kept: the
    plugin is skipped with a ``RuntimeWarning`` and its error is shown by ``xai-recipes plugins``.
    """


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks — *what* is explained — by calling ``register(Task(...))`` once per task.

    Called exactly like :func:`register_recipes` (once per plugin, when it is added), and a plugin
    may implement it beside the other hooks. The engine picks a model's task by each task's
    ``check`` in order of ``priority`` (highest first); ``explain(..., task=NAME)`` names one.

    Args:
        register: call it with each :class:`xai_recipes.Task` the plugin provides. Anything
            else, or a task name that is already registered, makes the whole plugin fail.

    Returns nothing. If the hook raises, none of the plugin's recipes, methods or tasks is kept:
    the plugin is skipped with a ``RuntimeWarning`` and its error is shown by ``xai-recipes plugins``.
    """
