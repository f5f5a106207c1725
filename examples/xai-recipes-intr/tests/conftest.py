"""Run the tests against the installed plugin (``pip install -e .``), or, from a plain checkout,
against the source tree: then the plugin is registered at run time with ``register_plugin``."""

import importlib.metadata
import sys
from pathlib import Path

import xai_recipes

try:
    importlib.metadata.distribution("xai-recipes-intr")
except importlib.metadata.PackageNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import xai_recipes_intr

    xai_recipes.register_plugin(xai_recipes_intr, "intr")
