"""Tests for the DeiT recipes, on tiny random models (no download, a few seconds on a CPU).

Run after installing the package (``pip install -e ".[test]"``): the recipes must reach
xai-recipes through the entry point, exactly as they will for users.
"""

import numpy as np
import pytest
import torch
from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher, ViTImageProcessor

import xai_recipes
from xai_recipes import explain

SIZES = [(64, 64), (80, 112)]  # model input sizes (height, width): the config's, and a non-square one
MODELS = {"deit": DeiTForImageClassification, "deit_distilled": DeiTForImageClassificationWithTeacher}


def tiny(cls):
    """A DeiT of the published structure, small enough to run in milliseconds."""
    labels = {i: f"class {i}" for i in range(4)}
    config = DeiTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    return cls(config).eval()


def test_plugin_is_loaded():
    info = next((p for p in xai_recipes.plugins() if p.distribution == "xai-recipes-deit"), None)
    assert info is not None, "not installed? run: pip install -e ."
    assert info.error is None and info.recipes == ["deit", "deit_distilled"]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_heatmaps(name, size):
    model = tiny(MODELS[name])
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    image = np.random.default_rng(0).integers(0, 256, (size[0] + 13, size[1] + 7, 3), dtype=np.uint8)
    exp = explain(model, image, processor=processor, target=[0, 1])
    assert exp.recipe == name  # dispatched by the registry, no recipe= needed
    assert exp.heatmaps.shape == (2, *image.shape[:2])  # the image's size, not the model input's
    assert np.isfinite(exp.heatmaps).all()
    assert exp.heatmaps[0].std() > 1e-3 and exp.heatmaps[1].std() > 1e-3  # not constant
    assert not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3)  # each target its own map


def test_head_reproduces_the_logits():
    """What DFF relies on: feature layer → pooling → head gives the model's own logits."""
    model = tiny(DeiTForImageClassification)
    recipe = xai_recipes.find_recipe(model)
    seen = {}
    hook = recipe.features(model).register_forward_hook(lambda module, args, out: seen.update(out=out))
    with torch.no_grad():
        logits = recipe.logits(model(pixel_values=torch.randn(2, 3, 64, 96), **recipe.forward_kwargs))
        hook.remove()
        pooled = seen["out"][:, 0]  # pooling="cls"
        torch.testing.assert_close(recipe.head(model)(pooled), logits)
