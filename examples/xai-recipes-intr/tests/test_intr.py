"""Tests of the INTR plugin: model, recipe and the ``intr-attention`` method.

Run from this folder: ``pytest`` (with the package installed, ``pip install -e ".[test]"``, or
from a checkout: conftest.py then registers the plugin at run time). Tiny random INTRs check the
plumbing at any input size; the shipped checkpoint checks that the explanation is right.
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, ViTImageProcessor

import xai_recipes
from xai_recipes import Batch, MethodNotApplicableError, explain
from xai_recipes_intr import INTR, INTR_ATTENTION, TRAINED, IntrForImageClassification, init_for_training_, tiny_config

LABELS = {0: "disc", 1: "square", 2: "triangle", 3: "cross"}


def tiny(seed: int = 0, **kwargs) -> IntrForImageClassification:
    torch.manual_seed(seed)
    return init_for_training_(IntrForImageClassification(tiny_config(LABELS, **kwargs))).eval()


def shape_image(height: int, width: int, cx: int, cy: int, r: int, label: int) -> np.ndarray:
    """A coloured disc / square / cross on flat grey (what the checkpoint was trained to find)."""
    y, x = np.mgrid[:height, :width]
    inside = {0: (x - cx) ** 2 + (y - cy) ** 2 <= r * r,
              1: (abs(x - cx) <= r) & (abs(y - cy) <= r),
              3: ((abs(x - cx) <= r) & (abs(y - cy) <= max(2, r // 3))) | ((abs(y - cy) <= r) & (abs(x - cx) <= max(2, r // 3)))}[label]
    image = np.full((height, width, 3), 120, np.uint8)
    image[inside] = (30, 60, 230)
    return image


def reference(model, pixel_values, targets):
    """The targets' rows of the model's own output_attentions, mean over heads, upsampled, in [0, 1]."""
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_attentions=True)
    H, W = pixel_values.shape[-2:]
    grid = (-(-H // 8), -(-W // 8))  # ConvNeXt stem (4×4, stride 4) then 2×2 stride 2: exact for multiples of 8
    rows = torch.stack([out.attentions[-1][b, :, targets[b]].mean(0) for b in range(len(targets))])
    maps = torch.nn.functional.interpolate(rows.reshape(-1, 1, *grid), size=(H, W), mode="bilinear", align_corners=False)
    maps = maps.reshape(len(targets), -1, H, W).numpy()
    lo, hi = maps.min(axis=(2, 3), keepdims=True), maps.max(axis=(2, 3), keepdims=True)
    return (maps - lo) / (hi - lo)


def test_plugin_is_loaded():
    info = next((p for p in xai_recipes.plugins() if p.name == "intr"), None)
    assert info is not None and info.error is None
    assert (info.recipes, info.methods) == (["intr"], ["intr-attention"])
    assert xai_recipes.get_method("intr-attention").plugin == "intr"


def test_save_and_load_roundtrip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)  # registered on import
    assert type(loaded) is IntrForImageClassification and loaded.config.model_type == "intr"
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits)


def test_one_query_per_class_is_enforced():
    config = tiny_config(LABELS)
    config.num_queries = 5
    with pytest.raises(ValueError, match="one decoder query per class"):
        IntrForImageClassification(config)


@pytest.mark.parametrize("size", [(64, 64), (80, 112)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_random_model_maps_equal_reference(size):
    model = tiny(decoder_layers=2)
    model.set_attn_implementation("eager")
    pixel_values = torch.randn(2, 3, *size)
    targets = [[2, 0], [1, 3]]
    result = INTR_ATTENTION.run(Batch(model, INTR, pixel_values, lambda logits: targets, options={"layer": -1}))
    assert result.maps.shape == (2, 2, *size) and result.heads.shape == (2, 4, *size)
    np.testing.assert_allclose(result.maps, reference(model, pixel_values, targets), atol=1e-5, rtol=0)
    assert not np.allclose(result.maps[0, 0], result.maps[0, 1], atol=1e-3)


def test_explain_dispatches_and_restores_the_model():
    model = tiny()
    assert model.config._attn_implementation == "sdpa"
    image = np.random.default_rng(0).integers(0, 256, (77, 101, 3), dtype=np.uint8)
    exp = explain(model, image, processor=ViTImageProcessor(size={"height": 64, "width": 64}), target=[0, 1])
    assert (exp.recipe, exp.method) == ("intr", "intr-attention")
    assert exp.heatmaps.shape == (2, 77, 101) and exp.heads.shape == (4, 77, 101)
    assert model.config._attn_implementation == "sdpa"  # the engine put SDPA back


def test_layer_option_and_not_applicable_methods():
    model = tiny(decoder_layers=2)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    first = explain(model, image, processor=processor, target=0, layer=0)
    last = explain(model, image, processor=processor, target=0)
    assert first.target_layers == ["model.decoder.layers.0.encoder_attn"]
    assert last.target_layers == ["model.decoder.layers.1.encoder_attn"]
    with pytest.raises(MethodNotApplicableError, match="rollout multiplies every block"):
        explain(model, image, processor=processor, method="gradient-rollout")


@pytest.mark.parametrize("label, centre", [(0, (20, 22)), (1, (60, 44)), (3, (40, 56))])
def test_trained_checkpoint_finds_the_shape(label, centre):
    image = shape_image(72, 88, *centre, r=11, label=label)
    exp = explain(TRAINED, image)  # the shipped checkpoint, by folder; intr-attention by default
    assert exp.method == "intr-attention" and exp.indices == [label]
    y, x = np.unravel_index(np.argmax(exp.heatmaps[0]), exp.heatmaps[0].shape)
    assert abs(x - centre[0]) <= 11 and abs(y - centre[1]) <= 11
