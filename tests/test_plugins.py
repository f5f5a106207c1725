"""Plugins: entry-point discovery, isolation of broken plugins, deterministic dispatch."""

import importlib.metadata
import types

import pytest
from conftest import tiny_model

import xai_recipes
from xai_recipes import NoRecipeError, Recipe, hookimpl, registry


@pytest.fixture
def fresh(monkeypatch):
    """An empty registry in place of the global one, for the duration of a test."""
    fresh = registry.Registry()
    monkeypatch.setattr(registry, "_registry", fresh)
    return fresh


def plugin_module(name, *recipes, raises=None):
    module = types.ModuleType(name)

    @hookimpl
    def register_recipes(register):
        for r in recipes:
            register(r)
        if raises:
            raise raises

    module.register_recipes = register_recipes
    return module


def recipe(name, model_types=("resnet",), matches=None):
    return Recipe(name=name, model_types=model_types, target_layers=lambda m: [m.resnet.encoder.stages[-1]], matches=matches)


def test_builtins_arrive_through_the_entry_point_group():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="xai_recipes")}
    for name in ("resnet", "regnet", "convnext", "mobilevit", "swin", "vit", "cvt", "segformer", "timm_wrapper"):
        assert eps[name] == f"xai_recipes_builtin.{name}"
        info = next(p for p in xai_recipes.plugins() if p.name == name)
        assert info.distribution == "xai-recipes" and info.version and info.recipes == [name] and info.error is None


def test_plugin_that_fails_to_import_is_reported_and_skipped(fresh, monkeypatch):
    good = importlib.metadata.EntryPoint("resnet", "xai_recipes_builtin.resnet", "xai_recipes")
    bad = importlib.metadata.EntryPoint("broken", "no_such_module_xyz", "xai_recipes")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [bad, good])
    with pytest.warns(RuntimeWarning, match="plugin 'broken' skipped: import failed: ModuleNotFoundError"):
        fresh.load_entry_points()
    assert xai_recipes.list_recipes() == ["resnet"]
    broken = next(p for p in xai_recipes.plugins() if p.name == "broken")
    assert "no_such_module_xyz" in broken.error and broken.recipes == []
    assert xai_recipes.find_recipe(tiny_model("resnet")).name == "resnet"


def test_plugin_whose_hook_raises_is_reported_and_skipped(fresh):
    xai_recipes.register_plugin(plugin_module("fine", recipe("fine")))
    with pytest.warns(RuntimeWarning, match="'exploding' skipped: register_recipes raised ValueError: boom"):
        info = xai_recipes.register_plugin(plugin_module("exploding", recipe("half-registered"), raises=ValueError("boom")))
    assert info.error and xai_recipes.list_recipes() == ["fine"]  # nothing of the failing plugin is kept


def test_duplicate_recipe_name_is_refused(fresh):
    xai_recipes.register_plugin(plugin_module("first", recipe("same")))
    with pytest.warns(RuntimeWarning, match="'same' is already registered by plugin 'first'"):
        xai_recipes.register_plugin(plugin_module("second", recipe("same")))
    assert xai_recipes.get_recipe("same").plugin == "first"


def test_two_plugins_for_one_model_type_dispatch_deterministically(fresh):
    model = tiny_model("resnet")
    xai_recipes.register_plugin(plugin_module("b_plugin", recipe("from-b")))
    xai_recipes.register_plugin(plugin_module("a_plugin", recipe("from-a")))
    assert xai_recipes.find_recipe(model).name == "from-a"  # alphabetically first plugin
    xai_recipes.register_plugin(plugin_module("z_plugin", recipe("specific", matches=lambda m: m.config.num_labels == 4)))
    assert xai_recipes.find_recipe(model).name == "specific"  # a matching `matches` wins
    assert xai_recipes.find_recipe(model, "from-b").name == "from-b"  # the user's choice wins over all
    xai_recipes.register_plugin(plugin_module("y_plugin", recipe("never", matches=lambda m: False)))
    assert xai_recipes.find_recipe(model).name == "specific"


def test_no_recipe_when_only_other_types_are_registered(fresh):
    xai_recipes.register_plugin(plugin_module("vit_only", recipe("v", model_types=("vit",))))
    with pytest.raises(NoRecipeError, match="no recipe for model type 'resnet'"):
        xai_recipes.find_recipe(tiny_model("resnet"), derive=False)
    assert xai_recipes.find_recipe(tiny_model("resnet")).name == "derived:resnet"  # unless derived


def test_register_wants_recipes(fresh):
    with pytest.warns(RuntimeWarning, match="wants a xai_recipes.Recipe, got dict"):
        xai_recipes.register_plugin(plugin_module("wrong", {"name": "x"}))
