"""Every CAM grad-cam ships is registered, and each equals grad-cam called directly with the
recipe's layer and reshape (the images replicated once per target, grad-cam's own pattern)."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from synthetic import make_sample
from transformers import ViTImageProcessor

import xai_recipes
from xai_recipes import LogitsModel, explain
from xai_recipes.method import Batch
from xai_recipes.methods import gradcam_all
from xai_recipes.methods.cam import CLASSES

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})
IMAGE = make_sample(np.random.default_rng(3), 70, 90).image
TARGETS = [0, 2, 3]
GRAD_CAM_1_5_7 = {"AblationCAM", "EigenCAM", "EigenGradCAM", "FEM", "FinerCAM", "FullGrad", "GradCAM", "GradCAMElementWise",
                  "GradCAMPlusPlus", "HiResCAM", "KPCA_CAM", "LayerCAM", "RandomCAM", "RefineCAM", "SESS", "ScoreCAM",
                  "SegEigenCAM", "ShapleyCAM", "XGradCAM"}
NEW = ["fem", "kpca-cam", "randomcam", "segeigencam", "shapleycam", "fullgrad", "finercam", "refinecam", "sess"]
OPTIONS = {"sess": {"num_scales": 3}}


@pytest.fixture(scope="module")
def models():
    return {f: tiny_model(f) for f in ("resnet", "vit")}


@pytest.fixture(scope="module")
def pixels():
    return PROCESSOR(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"]


def test_every_cam_class_of_the_package_is_a_method():
    assert set(gradcam_all.discover()) == GRAD_CAM_1_5_7  # found in grad-cam's sources: 19 classes
    registered = set(xai_recipes.list_methods())
    for cls in GRAD_CAM_1_5_7:
        name = next((m for m, c in CLASSES.items() if c == cls), gradcam_all.method_name(cls))
        assert name in registered, cls
        method = xai_recipes.get_method(name)
        assert method.reference and method.description
    assert "guided-gradcam" in registered


def test_a_new_release_class_appears_without_code(tmp_path, monkeypatch):
    (tmp_path / "__init__.py").write_text("from pytorch_grad_cam.grad_cam import GradCAM\nfrom pytorch_grad_cam.shiny import ShinyCAM\n"
                                          "from pytorch_grad_cam.meta import MetaCAM\nfrom pytorch_grad_cam.util import Helper\n")
    (tmp_path / "grad_cam.py").write_text("from pytorch_grad_cam.base_cam import BaseCAM\nclass GradCAM(BaseCAM):\n    pass\n")
    (tmp_path / "shiny.py").write_text("from pytorch_grad_cam.grad_cam import GradCAM\nclass ShinyCAM(GradCAM):\n    pass\n")
    (tmp_path / "meta.py").write_text("class MetaCAM:\n    def __init__(self, model, target_layers, base_method=None):\n        pass\n")
    (tmp_path / "util.py").write_text("class Helper:\n    def __init__(self, model, target_layers):\n        pass\n")
    monkeypatch.setattr(gradcam_all, "_package_dir", lambda: tmp_path)
    gradcam_all.discover.cache_clear()
    try:
        assert gradcam_all.discover() == ("GradCAM", "ShinyCAM", "MetaCAM")
        names = [m.name for m in gradcam_all.methods()]
        assert names == ["shinycam", "metacam", "guided-gradcam"]  # GradCAM is the CAM plugin's
        assert gradcam_all.methods()[0].needs == ("target_layers",)
    finally:
        gradcam_all.discover.cache_clear()


def reference(model, recipe, x, name, targets=TARGETS):
    """grad-cam's own class, called directly, with the recipe's layer(s) and reshape."""
    import pytorch_grad_cam

    cls = next(c for c in gradcam_all.discover() if gradcam_all.method_name(c) == name)
    wrapped = LogitsModel(model, recipe)
    layers = gradcam_all.cam_layers(cls, model, recipe)
    reshape = None if recipe.reshape is None or cls == "FullGrad" else (lambda t: recipe.reshape(t, model, (64, 64)))
    kwargs = {"num_scales": 3} if cls == "SESS" else {}
    if cls == "FinerCAM":  # grad-cam's own rule: the target against its three closest classes
        with pytorch_grad_cam.FinerCAM(wrapped, layers, reshape_transform=reshape) as cam:
            return np.concatenate([cam(x, targets=None, target_idx=t) for t in targets])
    cam = getattr(pytorch_grad_cam, cls)(wrapped, layers, reshape_transform=reshape, **kwargs)
    if cls == "FullGrad":  # grad-cam lists its biases in registration order but its gradients in the order the layers
        ran = []           # run (a ResNet's shortcut BatchNorm is registered first, run last): its biases in run order
        hooks = [layer.register_forward_hook(lambda m, i, o: ran.append(m)) for layer in cam.target_layers]
        with torch.no_grad():
            wrapped(x)
        for hook in hooks:
            hook.remove()
        cam.bias_data = [cam.get_bias_data(layer).cpu().numpy() for layer in ran]
    try:
        return cam(x.repeat(len(targets), 1, 1, 1), [ClassifierOutputTarget(t) for t in targets])
    finally:
        gradcam_all._release(cam)


def ours(model, x, name, targets=TARGETS):
    method = xai_recipes.get_method(name)
    recipe = xai_recipes.find_recipe(model)
    assert method.why_not(model, recipe) is None
    batch = Batch(model, recipe, x, lambda logits: [list(targets)] * len(logits), 1, {**method.options, **OPTIONS.get(name, {})})
    return np.asarray(method.run(batch).maps)[0]


CASES = [("resnet", n) for n in NEW] + [("vit", n) for n in NEW if n != "shapleycam"]


@pytest.mark.parametrize("family,name", CASES)
def test_equals_grad_cam_called_directly(models, pixels, family, name):
    model = models[family]
    recipe = xai_recipes.find_recipe(model)
    np.random.seed(0)  # RandomCAM draws its weights from numpy's generator
    expected = reference(model, recipe, pixels, name)
    grads = [p.grad for p in model.parameters()]  # grad-cam's own backward leaves .grad on the model
    np.random.seed(0)
    got = ours(model, pixels, name)
    assert got.shape == expected.shape == (3, 64, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))  # grad-cam's backward left no .grad behind
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["shapleycam", "fullgrad", "fem"])
def test_class_specific_ones_differ_per_target(models, pixels, name):
    maps = ours(models["resnet"], pixels, name)
    assert np.isfinite(maps).all()
    if xai_recipes.get_method(name).class_specific:
        assert not np.allclose(maps[0], maps[1], atol=1e-3)
    else:
        np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)


def test_guided_gradcam_is_guided_backprop_times_gradcam(models, pixels):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel

    model = models["resnet"]
    recipe = xai_recipes.find_recipe(model)
    got = ours(model, pixels, "guided-gradcam")
    wrapped = LogitsModel(model, recipe)
    with GradCAM(wrapped, list(recipe.target_layers(model))) as cam:
        cams = cam(pixels.repeat(3, 1, 1, 1), [ClassifierOutputTarget(t) for t in TARGETS])
    for i, t in enumerate(TARGETS):
        # H×W×C; a fresh copy each time: grad-cam sets requires_grad on its input and reads its accumulated .grad
        guided = GuidedBackpropReLUModel(wrapped, device="cpu")(pixels.clone(), target_category=t)
        product = np.abs(cams[i][..., None] * guided).sum(-1)
        np.testing.assert_allclose(got[i], product / max(product.max(), 1e-12), atol=1e-4)  # a zero CAM: a zero map
    assert got[1].max() == pytest.approx(1.0)


def test_refusals_say_why(models):
    vit = tiny_model("vit")
    why = xai_recipes.describe(vit).methods
    assert "no nn.ReLU" in why["guided-gradcam"]
    assert "reshape" in why["shapleycam"]
    assert why["fem"] == why["sess"] == why["fullgrad"] == "ok"  # the patch embedding is a biased conv
    exp = explain(models["resnet"], IMAGE, processor=PROCESSOR, method="finercam", top_k=2)
    assert exp.heatmaps.shape == (2, 70, 90) and exp.method == "finercam"
