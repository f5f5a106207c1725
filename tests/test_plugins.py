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


def plugin_module(name, *recipes, raises=None, methods=None):
    """A plugin registering ``recipes``; with ``methods`` (a list) it registers those through
    ``register_methods`` too, and ``raises`` is raised by that hook instead."""
    module = types.ModuleType(name)

    def hook(items, fail):
        def register_all(register):
            for item in items:
                register(item)
            if fail:
                raise fail
        return hookimpl(register_all)

    module.register_recipes = hook(recipes, raises if methods is None else None)
    if methods is not None:
        module.register_methods = hook(methods, raises)
    return module


def recipe(name, model_types=("resnet",), matches=None):
    return Recipe(name=name, model_types=model_types, target_layers=lambda m: [m.resnet.encoder.stages[-1]], matches=matches)


def test_builtins_arrive_through_the_entry_point_group():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="xai_recipes")}
    for name in ("resnet", "regnet", "convnext", "mobilevit", "swin", "vit", "cvt", "segformer", "timm_wrapper"):
        assert eps[name] == f"xai_recipes_builtin.{name}"
        info = next(p for p in xai_recipes.plugins() if p.name == name)
        assert info.distribution == "xai-recipes" and info.version and info.recipes[0] == name and info.error is None


def test_plugin_that_fails_to_import_is_reported_and_skipped(fresh, monkeypatch):
    good = importlib.metadata.EntryPoint("resnet", "xai_recipes_builtin.resnet", "xai_recipes")
    bad = importlib.metadata.EntryPoint("broken", "no_such_module_xyz", "xai_recipes")
    real = importlib.metadata.entry_points  # other groups (triton's backends, ...) stay as they are
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [bad, good] if group == "xai_recipes" else real(**kw, **({"group": group} if group else {})))
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


# --- register_methods -------------------------------------------------------------------------


def method_plugin(name, *methods, raises=None, recipes=()):
    return plugin_module(name, *recipes, raises=raises, methods=list(methods))


def _mean_activation(batch):
    """The docs/hooks.md example method: mean over channels of the target layer, class-agnostic."""
    import numpy as np
    import torch

    model, recipe = batch.model, batch.recipe
    capture = xai_recipes.forward_with_capture(xai_recipes.LogitsModel(model, recipe), list(recipe.target_layers(model)),
                                               batch.pixel_values)
    maps = capture.activations[0].detach()
    maps = recipe.reshape(maps, model, batch.input_hw) if recipe.reshape else maps
    maps = torch.nn.functional.interpolate(maps.mean(1, keepdim=True), size=batch.input_hw, mode="bilinear")[:, 0]
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    maps = ((maps - lo) / (hi - lo + 1e-12)).numpy()
    targets = batch.choose(capture.logits.detach())
    return xai_recipes.Result(capture.logits.detach(), targets, np.repeat(maps[:, None], len(targets[0]), 1), capture.layers)


MEAN = xai_recipes.Method(name="Mean-Activation", run=_mean_activation, class_specific=False, description="example")


def test_builtin_methods_arrive_through_the_entry_point_group():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="xai_recipes")}
    assert eps["cam_methods"] == "xai_recipes.methods.cam" and eps["attention_methods"] == "xai_recipes.methods.attention"
    by_plugin = {p.name: p.methods for p in xai_recipes.plugins()}
    assert by_plugin["attention_methods"] == ["attention", "rollout", "gradient-rollout", "legrad"]
    assert "gradcam" in by_plugin["cam_methods"] and by_plugin["dff_method"] == ["dff"]
    assert xai_recipes.get_method("Grad-CAM++").name == "gradcam++" and xai_recipes.get_method("gradient_rollout").name == "gradient-rollout"
    with pytest.raises(xai_recipes.UnknownMethodError, match="legrad"):
        xai_recipes.get_method("no-such-method")


def test_a_third_party_method_is_dispatched_like_a_builtin(fresh):
    import numpy as np
    import transformers

    xai_recipes.register_plugin(importlib.import_module("xai_recipes_builtin.resnet"), name="resnet")
    xai_recipes.register_plugin(importlib.import_module("xai_recipes.tasks.classification"), name="classification")
    info = xai_recipes.register_plugin(method_plugin("mine", MEAN))
    assert info.error is None and info.methods == ["Mean-Activation"]
    model = tiny_model("resnet")
    processor = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exp = xai_recipes.explain(model, image, method="mean activation", processor=processor, target=[1, 2])
    assert exp.method == "Mean-Activation" and exp.heatmaps.shape == (2, 64, 64)
    np.testing.assert_array_equal(exp.heatmaps[0], exp.heatmaps[1])
    assert xai_recipes.describe(model).methods == {"Mean-Activation": "ok"}


def test_method_plugin_failures_skip_the_whole_plugin(fresh):
    with pytest.warns(RuntimeWarning, match="register_methods raised RuntimeError: boom"):
        info = xai_recipes.register_plugin(method_plugin("bad", MEAN, raises=RuntimeError("boom"), recipes=[recipe("r1")]))
    assert info.error and xai_recipes.list_methods() == [] and xai_recipes.list_recipes() == []
    xai_recipes.register_plugin(method_plugin("first", MEAN))
    with pytest.warns(RuntimeWarning, match="already registered by plugin 'first'"):
        xai_recipes.register_plugin(method_plugin("second", xai_recipes.Method(name="mean_activation", run=_mean_activation)))
    with pytest.warns(RuntimeWarning, match="wants a xai_recipes.Method, got Recipe"):
        xai_recipes.register_plugin(method_plugin("wrong", recipe("not-a-method")))
    assert xai_recipes.list_methods() == ["Mean-Activation"]
