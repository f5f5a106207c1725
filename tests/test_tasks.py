"""Tasks, the third plugin axis: registered through ``register_tasks`` like recipes and methods; the
engine finds a model's task (``task=`` overrides it); docs/hooks.md's example task runs as documented."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from transformers import ViTImageProcessor

import xai_recipes
from xai_recipes import registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})


@pytest.fixture
def fresh(monkeypatch):
    """An empty registry with the ResNet recipe, the CAM methods and the classification task."""
    fresh = registry.Registry()
    monkeypatch.setattr(registry, "_registry", fresh)
    for name, module in [("resnet", "xai_recipes_builtin.resnet"), ("cam", "xai_recipes.methods.cam"),
                         ("classification", "xai_recipes.tasks.classification")]:
        xai_recipes.register_plugin(importlib.import_module(module), name=name)
    return fresh


def documented_example() -> types.ModuleType:
    """The ```python block of docs/hooks.md's register_tasks section, as a module."""
    section = DOCS.read_text().split("## register_tasks(register)")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("log_probability")
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    return module


def test_builtin_tasks_arrive_through_the_entry_point_group():
    names = {p.name: p.tasks for p in xai_recipes.plugins()}
    assert names["classification_task"] == ["image-classification"]
    assert names["zero_shot_task"] == ["zero-shot-image-classification"]
    assert names["similarity_task"] == ["image-feature-extraction"]
    assert names["detection_task"] == ["object-detection"]
    assert names["segmentation_task"] == ["image-segmentation"]
    assert names["zero_shot_detection_task"] == ["zero-shot-object-detection"]
    assert list(xai_recipes.tasks_table()) == ["zero-shot-object-detection", "object-detection", "image-segmentation",
                                               "zero-shot-image-classification", "image-feature-extraction",
                                               "image-classification"]  # by priority


def test_the_documented_example_task_explains_log_probabilities(fresh):
    info = xai_recipes.register_plugin(documented_example(), name="log_probability")
    assert info.error is None and info.tasks == ["log-probability"]
    model = tiny_model("resnet")
    plain = xai_recipes.explain(model, IMAGE, processor=PROCESSOR, target=[0, 1], method="gradcam")
    assert plain.task == "image-classification"  # the higher-priority task wins without task=
    exp = xai_recipes.explain(model, IMAGE, processor=PROCESSOR, target=[0, 1], method="gradcam",
                              task="log-probability")
    assert exp.task == "log-probability" and exp.indices == [0, 1]
    with torch.no_grad():
        logits = model(pixel_values=PROCESSOR(images=IMAGE, return_tensors="pt")["pixel_values"]).logits[0]
    np.testing.assert_allclose(exp.scores, logits.softmax(-1)[:2].numpy(), atol=1e-5)  # exp(log-softmax) shown
    assert np.abs(exp.heatmaps - plain.heatmaps).max() > 1e-3  # log p(class) is not the logit: other maps


def test_a_failing_register_tasks_hook_skips_the_whole_plugin(fresh):
    module = types.ModuleType("broken_task")

    @xai_recipes.hookimpl
    def register_recipes(register):
        register(xai_recipes.Recipe(name="r-broken", model_types=("resnet",), target_layers=lambda m: []))

    @xai_recipes.hookimpl
    def register_tasks(register):
        raise RuntimeError("boom")

    module.register_recipes, module.register_tasks = register_recipes, register_tasks
    with pytest.warns(RuntimeWarning, match="register_tasks raised RuntimeError: boom"):
        info = xai_recipes.register_plugin(module, name="broken_task")
    assert info.error and "r-broken" not in xai_recipes.list_recipes()


def test_a_task_name_taken_twice_or_not_a_task_fails_the_plugin(fresh):
    module = types.ModuleType("again")
    taken = xai_recipes.get_task("image-classification")  # not inside the hook: the registry is locked there

    @xai_recipes.hookimpl
    def register_tasks(register):
        register(taken)

    module.register_tasks = register_tasks
    with pytest.warns(RuntimeWarning, match="already registered"):
        assert xai_recipes.register_plugin(module, name="again").error


def test_unknown_or_inapplicable_tasks_are_typed_errors():
    model = tiny_model("resnet")
    with pytest.raises(xai_recipes.UnknownTaskError, match="unknown task 'depth'.*image-classification"):
        xai_recipes.explain(model, IMAGE, processor=PROCESSOR, task="depth")
    with pytest.raises(xai_recipes.TaskNotApplicableError, match="explains class logits, not an image embedding"):
        xai_recipes.explain(model, IMAGE, processor=PROCESSOR, target="a dog", task="zero-shot-image-classification")
    with pytest.raises(xai_recipes.UnknownLabelError, match="not in this model's id2label"):
        xai_recipes.explain(model, IMAGE, processor=PROCESSOR, target="a dog")  # a classifier reads labels
    described = xai_recipes.describe(model)
    assert described.task == "image-classification" and described.tasks["image-classification"] == "ok"
    assert "explains class logits" in described.tasks["zero-shot-image-classification"]
