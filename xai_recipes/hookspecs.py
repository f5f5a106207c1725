"""The plugin interface: pluggy markers and the hooks a plugin may implement.

A plugin is any module (or object) with functions marked ``@hookimpl``, announced through the
``xai_recipes`` entry-point group of its distribution::

    [project.entry-points.xai_recipes]
    my_family = "my_package.my_recipe"
"""

from __future__ import annotations

from typing import Callable

import pluggy

from .recipe import Recipe

hookspec = pluggy.HookspecMarker("xai_recipes")
hookimpl = pluggy.HookimplMarker("xai_recipes")


@hookspec
def register_recipes(register: Callable[[Recipe], None]) -> None:
    """Register recipes by calling ``register(Recipe(...))`` once per recipe."""
