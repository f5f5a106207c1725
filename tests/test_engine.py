"""The engine: fast path equals grad-cam, targets, hooks, caching, Explanation output."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from transformers import ViTImageProcessor

import xai_recipes
from xai_recipes import LogitsModel, RecipeError, explain, forward_with_capture
from xai_recipes.methods.cam import CLASSES, compute_cams, grad_cam_class

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})
IMAGE = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models():
    return {f: tiny_model(f) for f in ("resnet", "vit", "swin")}


@pytest.mark.parametrize("family", ["resnet", "vit", "swin"])
@pytest.mark.parametrize("method", [m for m in CLASSES if m != "ablationcam"])
def test_one_forward_path_equals_gradcam_packages_replicated_path(models, family, method):
    """Ours: one forward + batched gradients from the target layer (ScoreCAM: each masked input
    run once for all targets). Reference: grad-cam's own class on the image replicated once per
    target (the tutorial's pattern)."""
    model = models[family]
    recipe = xai_recipes.find_recipe(model)
    x = PROCESSOR(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"]
    targets = [0, 2, 3]
    layers = list(recipe.target_layers(model))
    wrapped = LogitsModel(model, recipe)
    ours = compute_cams(model, recipe, x, [targets], method, forward_with_capture(wrapped, layers, x))[0]
    reshape = (lambda t: recipe.reshape(t, model, (64, 64))) if recipe.reshape else None
    with grad_cam_class(method)(model=wrapped, target_layers=layers, reshape_transform=reshape) as cam:
        reference = cam(input_tensor=x.repeat(len(targets), 1, 1, 1), targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == reference.shape == (3, 64, 64)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_several_target_layers_equal_gradcam_package(models):
    """Two layers, one after the other: gradients must still reach the earlier one."""
    model = models["resnet"]
    base = xai_recipes.find_recipe(model)
    recipe = dataclasses.replace(base, target_layers=lambda m: [m.resnet.encoder.stages[-1].layers[0], m.resnet.encoder.stages[-1].layers[1]])
    x = PROCESSOR(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"]
    wrapped, layers = LogitsModel(model, recipe), list(recipe.target_layers(model))
    ours = compute_cams(model, recipe, x, [[1, 3]], "gradcam", forward_with_capture(wrapped, layers, x))[0]
    with grad_cam_class("gradcam")(model=wrapped, target_layers=layers) as cam:
        reference = cam(input_tensor=x.repeat(2, 1, 1, 1), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_failed_ablation_leaves_the_model_intact(models):
    model = models["resnet"]
    base = xai_recipes.find_recipe(model)
    broken = dataclasses.replace(base, name="broken", logits=lambda out: out.logits if out.logits.shape[0] == 1 else 1 / 0)
    before = [type(m) for m in model.modules()]
    with pytest.raises(ZeroDivisionError):
        explain(model, IMAGE, processor=PROCESSOR, method="ablationcam", recipe=broken)
    assert [type(m) for m in model.modules()] == before and all_hooks(model) == 0


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_perturbation_methods_run_and_differ_per_target(models, family, method):
    exp = explain(models[family], IMAGE, processor=PROCESSOR, method=method, top_k=2)
    assert exp.heatmaps.shape == (2, 70, 90) and np.isfinite(exp.heatmaps).all()
    assert exp.heatmaps[0].std() > 1e-3
    assert not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3)


def test_method_names_are_forgiving(models):
    a = explain(models["resnet"], IMAGE, processor=PROCESSOR, method="Grad-CAM++")
    b = explain(models["resnet"], IMAGE, processor=PROCESSOR, method="gradcam++")
    assert a.method == b.method == "gradcam++"
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_no_hook_survives_100_calls_including_failures(models):
    model = models["vit"]
    good = xai_recipes.find_recipe(model)
    bad = dataclasses.replace(good, name="bad-grid", reshape=lambda x, m, hw: xai_recipes.tokens_to_map(x, (3, 3), 1))
    before = all_hooks(model)
    failures = 0
    for i in range(100):
        if i % 3 == 0:
            with pytest.raises(RecipeError):
                explain(model, IMAGE, processor=PROCESSOR, recipe=bad, method="gradcam")
            failures += 1
        elif i % 3 == 1:
            with pytest.raises(xai_recipes.UnknownLabelError):
                explain(model, IMAGE, processor=PROCESSOR, target="no such label")
            failures += 1
        else:
            explain(model, IMAGE, processor=PROCESSOR, method="gradcam" if i % 2 else "layercam")
    assert failures == 67
    assert all_hooks(model) == before == 0
    assert torch.is_grad_enabled()


def test_targets_by_name_synonym_case_and_index(tmp_path):
    model = tiny_model("resnet")
    model.config.id2label = {0: "tabby, tabby cat", 1: "remote control, remote", 2: "Egyptian_cat", 3: "espresso"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    exp = explain(model, IMAGE, processor=PROCESSOR, target=["Remote Control", "tabby cat", "egyptian cat", 3])
    assert exp.indices == [1, 0, 2, 3]
    assert exp.labels == ["remote control, remote", "tabby, tabby cat", "Egyptian_cat", "espresso"]
    probs = torch.tensor([p for _, _, p in exp.predictions])
    assert abs(sum(exp.scores) - 1) < 1e-5 and (probs[:-1] >= probs[1:]).all()


def test_top_k_explains_the_top_predictions(models):
    exp = explain(models["swin"], IMAGE, processor=PROCESSOR, top_k=2)
    assert exp.indices == [p[0] for p in exp.predictions[:2]]
    assert exp.scores == pytest.approx([p[2] for p in exp.predictions[:2]])


def test_explanation_renders_and_saves(models, tmp_path):
    exp = explain(models["resnet"], IMAGE, processor=PROCESSOR, top_k=2)
    overlay = exp.overlay(1)
    assert overlay.size == (90, 70) and overlay.mode == "RGB"
    exp.save(tmp_path / "out.png")
    saved = Image.open(tmp_path / "out.png")
    assert saved.size[0] == 180 and saved.size[1] > 70  # two overlays side by side, label strips above them
    assert exp._repr_png_().startswith(b"\x89PNG")
    assert "resnet" in repr(exp)


def test_models_loaded_by_path_are_cached_and_the_cache_is_bounded(tmp_path, monkeypatch):
    from xai_recipes import loading

    for name in ("a", "b"):
        tiny_model("resnet").save_pretrained(tmp_path / name)
        PROCESSOR.save_pretrained(tmp_path / name)
    loading.clear_cache()
    first, _ = loading.load(str(tmp_path / "a"))
    assert loading.load(tmp_path / "a")[0] is first
    a, b = explain(tmp_path / "a", IMAGE), explain(str(tmp_path / "a"), IMAGE)
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)
    monkeypatch.setattr(loading.cache, "size", 1)
    loading.load(tmp_path / "b")
    assert len(loading.cache) == 1 and loading.load(tmp_path / "a")[0] is not first


def test_recipe_argument_overrides_dispatch(models):
    exp = explain(models["resnet"], IMAGE, processor=PROCESSOR, recipe="resnet")
    assert exp.recipe == "resnet" and exp.target_layers == ["resnet.encoder.stages.1.layers.1"]
    listed = xai_recipes.list_recipes("*vi*")
    assert listed == sorted(listed) and {"mobilevit", "timm_vit", "timm_vit_gap", "vit"} <= set(listed)
    assert all("vi" in name for name in listed)


def test_threads_sharing_one_model_get_the_serial_maps(models):
    """Hooks are per call: 8 threads × 25 concurrent explain() calls on one model neither cross nor leak."""
    from concurrent.futures import ThreadPoolExecutor

    model = models["vit"]
    images = [np.random.default_rng(i).integers(0, 256, (60 + i, 80, 3), dtype=np.uint8) for i in range(8)]
    serial = [explain(model, im, processor=PROCESSOR, top_k=2).heatmaps for im in images]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: explain(model, images[i % 8], processor=PROCESSOR, top_k=2).heatmaps, range(200)))
    for i, maps in enumerate(results):
        np.testing.assert_allclose(maps, serial[i % 8], atol=1e-5)
    assert all_hooks(model) == 0


def test_end_to_end_maps_equal_gradcam_when_the_processor_keeps_the_size(models):
    """No resize: the measured geometry is exactly the identity, so explain()'s image-sized maps
    are grad-cam's maps on the model input (nothing lost in the warp back)."""
    model = models["vit"]
    image = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exp = explain(model, image, processor=PROCESSOR, target=[1, 2], method="gradcam")
    assert exp.geometry.scale == (1.0, 1.0) and exp.geometry.offset == (0.0, 0.0)
    recipe = xai_recipes.find_recipe(model)
    x = PROCESSOR(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
    reshape = lambda t: recipe.reshape(t, model, (64, 64))  # noqa: E731
    with grad_cam_class("gradcam")(model=LogitsModel(model, recipe), target_layers=list(recipe.target_layers(model)), reshape_transform=reshape) as cam:
        reference = cam(input_tensor=x.repeat(2, 1, 1, 1), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    np.testing.assert_allclose(exp.heatmaps, reference, atol=1e-5)
