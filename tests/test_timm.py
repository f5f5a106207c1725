"""timm models: model objects and timm hub-layout folders dispatch to the timm recipes."""

import numpy as np
import pytest
import timm
import torch
from transformers import ViTImageProcessor

from conftest import assert_head_reproduces_logits

import xai_recipes
from xai_recipes import ModelLoadError, NoRecipeError, explain

IMAGE = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def tiny_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=32, depth=2,
                             num_heads=2, num_classes=4, **kwargs)


MODELS = {  # name: (constructor, expected recipe, prefix tokens or target layer)
    "vit_reg4": (lambda: tiny_vit(reg_tokens=4, dynamic_img_size=True), "timm_vit"),
    "vit_reg4_gap": (lambda: tiny_vit(reg_tokens=4, global_pool="avg", class_token=False, dynamic_img_size=True), "timm_vit_gap"),
    "vit": (lambda: tiny_vit(dynamic_img_size=True), "timm_vit"),
    "resnet": (lambda: timm.create_model("test_resnet", num_classes=4), "timm_wrapper"),
    "convnext": (lambda: timm.create_model("test_convnext", num_classes=4, ls_init_value=1.0), "timm_wrapper"),
    "efficientnet": (lambda: timm.create_model("test_efficientnet", num_classes=4), "timm_wrapper"),
}


def build(name):
    torch.manual_seed(0)
    model = MODELS[name][0]().eval()
    for m in model.modules():  # some timm tests models start BN near zero: give them signal
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model


@pytest.mark.parametrize("size", [(96, 96), (80, 144)], ids=["96x96", "80x144"])  # ≥ 3×3 at stride 32
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_objects_dispatch_and_give_image_shaped_maps(name, size):
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    exp = explain(build(name), IMAGE, processor=processor, top_k=3)
    assert exp.recipe == MODELS[name][1]
    assert exp.heatmaps.shape == (3, 90, 120) and np.isfinite(exp.heatmaps).all()
    assert exp.heatmaps[0].std() > 1e-3
    assert not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_declared_head_reproduces_the_logits(name):
    assert_head_reproduces_logits(xai_recipes.wrap_timm_model(build(name))[0], (64, 64))


@pytest.mark.parametrize("name", ["vit_reg4_gap", "efficientnet"])
def test_timm_folder_loads_with_timm_preprocessing_and_labels(name, tmp_path):
    model = build(name)
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True, model_config={"label_names": ["a", "b", "c", "d"]})
    from_folder = explain(tmp_path, IMAGE, top_k=2)
    from_object = explain(model, IMAGE, top_k=2)
    np.testing.assert_allclose(from_folder.heatmaps, from_object.heatmaps, atol=1e-5)
    assert from_folder.labels[0] in "abcd" and from_folder.recipe == MODELS[name][1]
    # timm's eval transform resizes and centre-crops (crop_pct 0.9 / 0.875): the sides were not seen
    assert not from_folder.coverage[:, :5].any() and from_folder.coverage[45, 60]


def test_timm_folder_without_safetensors_is_refused(tmp_path):
    timm.models.save_for_hf(build("resnet"), tmp_path, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        explain(tmp_path, IMAGE)


def test_timm_architecture_without_a_recipe_is_a_typed_error():
    with pytest.raises(NoRecipeError, match="timm_wrapper"):
        explain(tiny_vit(global_pool="map"), IMAGE)
