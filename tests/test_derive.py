"""Derived recipes: models no recipe serves are probed for their last spatial layer."""

import numpy as np
import pytest
import torch
from conftest import assert_head_reproduces_logits, calibrate_batchnorm, tiny_model
from tiny import DERIVED, tiny_config
from transformers import (
    AutoModelForImageClassification,
    BeitConfig,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    PretrainedConfig,
    ViTImageProcessor,
)

import xai_recipes
from xai_recipes import NoRecipeError, explain
from xai_recipes.derive import derive
from xai_recipes.capture import module_names

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 96})
IMAGE = np.random.default_rng(4).integers(0, 256, (70, 90, 3), dtype=np.uint8)
SMALL = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=4)


@pytest.mark.parametrize("family", ["vit", "cvt", "mobilevit"])
def test_derivation_finds_the_hand_written_layer(family):
    """Probing alone lands where the tutorial's per-family knowledge does."""
    model = tiny_model(family)
    derived, explicit = derive(model), xai_recipes.get_recipe(family)
    assert module_names(model, derived.target_layers(model)) == module_names(model, explicit.target_layers(model))
    assert derived.pooling == explicit.pooling


def unknown_models():
    models = {f: lambda f=f: calibrate_batchnorm(AutoModelForImageClassification.from_config(tiny_config(f))) for f in DERIVED}
    models["beit"] = lambda: AutoModelForImageClassification.from_config(BeitConfig(**SMALL, use_mean_pooling=True))
    models["deit"] = lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL))  # CLS + distillation token
    return models


@pytest.mark.parametrize("name, make", sorted(unknown_models().items()))
def test_architectures_without_a_recipe_are_explained_by_a_derived_one(name, make):
    torch.manual_seed(0)
    model = make().eval()
    exp = explain(model, IMAGE, processor=PROCESSOR, top_k=2, method="gradcam")
    assert exp.recipe == f"derived:{model.config.model_type}"
    assert exp.heatmaps.shape == (2, 70, 90) and np.isfinite(exp.heatmaps).all() and exp.heatmaps[0].std() > 1e-3
    assert not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3)
    described = xai_recipes.describe(model)
    assert described.recipe == exp.recipe and described.target_layers == exp.target_layers
    assert "derived:" in described.description and "gets gradient at every position" in described.description
    if name == "deit":  # logits = mean of two heads on two tokens: no single head to name concepts with
        assert "DFF unavailable" in described.description
        with pytest.raises(xai_recipes.RecipeError, match="declares no head"):
            explain(model, IMAGE, processor=PROCESSOR, method="dff")
        return
    dff = explain(model, IMAGE, processor=PROCESSOR, method="dff", n_components=2)
    assert dff.heatmaps.shape == (2, 70, 90) and len(dff.legend) == 2


@pytest.mark.parametrize("model_type, size", [("pp_lcnet", (80, 96)), ("swiftformer", (64, 96)), ("levit", (64, 64))])
def test_a_head_that_is_not_one_linear_layer_is_the_models_own_tail_replayed(model_type, size):
    """PP-LCNet (pool → 1×1 conv → act → linear), SwiftFormer and LeViT (two heads averaged): DFF
    names concepts by running the model's own layers after the feature layer, exactly."""
    import tiny_archs

    model = tiny_archs.tiny_model(model_type)
    recipe = derive(model)
    assert "replayed on the pooled embedding" in recipe.description
    assert_head_reproduces_logits(model, size)


@pytest.mark.parametrize("model_type", ["donut-swin", "hiera"])
def test_a_block_that_returns_a_tuple_is_read_at_its_first_item(model_type):
    """Donut-Swin's and Hiera's last spatial tokens exist only as the first item of a block's tuple."""
    import tiny_archs

    model = tiny_archs.tiny_model(model_type)
    layer = derive(model).target_layers(model)[0]
    outputs = []
    handle = layer.register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        model(pixel_values=torch.randn(1, 3, 64, 64))
    handle.remove()
    assert isinstance(outputs[0], tuple)
    assert_head_reproduces_logits(model, (64, 96))  # DFF's head, read from that first item
    exp = explain(model, IMAGE, processor=PROCESSOR, method="dff", n_components=2)
    assert exp.heatmaps.shape == (2, 70, 90) and np.isfinite(exp.heatmaps).all()


def test_explicit_recipes_win_over_derivation():
    assert xai_recipes.find_recipe(tiny_model("resnet")).name == "resnet"


class FlatForImageClassification(torch.nn.Module):
    """An 'image classifier' with no spatial layer at all: flatten, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
        self.config.model_type = "flat"
        self.config.image_size = 16
        self.classifier = torch.nn.Linear(3 * 16 * 16, 2)

    def forward(self, pixel_values, **_):
        return self.classifier(pixel_values.flatten(1))


def test_no_spatial_layer_is_a_typed_error_with_the_reason():
    """No recipe can be derived: the generic recipe explains it with input attributions
    (tests/test_generic_recipe.py); a method that needs a layer is refused with the reason."""
    with pytest.raises(xai_recipes.MethodNotApplicableError) as err:
        explain(FlatForImageClassification(), np.zeros((16, 16, 3), np.uint8), processor=ViTImageProcessor(size={"height": 16, "width": 16}),
                method="gradcam")
    msg = str(err.value)
    assert "no block or norm layer outputs a spatial map" in msg  # why derivation failed
    assert "'flat'" in msg and "resnet" in msg and "recipe=" in msg and "register_recipes" in msg  # and the fixes


def test_ablationcam_on_a_block_that_returns_a_tuple_says_what_to_use_instead():
    import tiny_archs

    model = tiny_archs.tiny_model("donut-swin")
    with pytest.raises(xai_recipes.RecipeError, match="returns a tuple. Use scorecam"):
        explain(model, IMAGE, processor=PROCESSOR, method="ablationcam")
    assert explain(model, IMAGE, processor=PROCESSOR, method="scorecam").heatmaps.shape == (1, 70, 90)
