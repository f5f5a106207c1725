"""SigLIP 2 with its own NaFlex processor: patches ↔ image, exactly and in the right place."""

import numpy as np
import pytest
import tiny_archs
import torch
from transformers import Siglip2ImageProcessor

import xai_recipes
from xai_recipes import RecipeError, explain

PROCESSOR = Siglip2ImageProcessor(patch_size=8, max_num_patches=64)


@pytest.fixture(scope="module")
def model():
    return tiny_archs.tiny_model("siglip2")


def test_the_image_the_patches_encode_is_the_resized_photo():
    ramp = np.repeat(np.linspace(0, 255, 110)[None, :, None], 70, 0).repeat(3, 2).astype(np.uint8)  # dark left, light right
    processed = PROCESSOR(images=ramp, return_tensors="pt")
    h, w = processed["spatial_shapes"][0].tolist()
    image = xai_recipes.find_recipe(tiny_archs.tiny_model("siglip2")).image_tensor(processed)
    assert image.shape == (1, 3, 8 * h, 8 * w) and w > h  # the aspect ratio is kept
    columns, rows = image[0, 0].mean(0), image[0, 0].mean(1)
    assert (columns.diff() > 0).all(), "columns out of order: patches were put back in the wrong place"
    assert rows.std() < 1e-3 * columns.std()


def test_patches_round_trip_to_the_models_own_inputs(model):
    photo = np.random.default_rng(0).integers(0, 256, (70, 110, 3), dtype=np.uint8)
    processed = PROCESSOR(images=photo, return_tensors="pt")  # padded to max_num_patches, with a mask
    recipe = xai_recipes.find_recipe(model)
    with torch.no_grad():
        direct = model(**processed).logits
        again = model(**recipe.model_inputs(model, recipe.image_tensor(processed))).logits
    torch.testing.assert_close(again, direct, atol=1e-5, rtol=1e-5)


def test_explained_with_its_own_processor_at_the_photos_size(model):
    photo = np.random.default_rng(1).integers(0, 256, (70, 110, 3), dtype=np.uint8)
    exp = explain(model, photo, processor=PROCESSOR, top_k=2)
    assert exp.recipe == "siglip2" and exp.heatmaps.shape == (2, 70, 110) and exp.coverage.all()
    assert exp.heatmaps[0].std() > 1e-3 and not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3)


def test_an_input_off_the_patch_grid_is_refused_with_the_fix(model):
    from transformers import ViTImageProcessor

    with pytest.raises(RecipeError, match="not a multiple of the patch size 8.*Siglip2ImageProcessor"):
        explain(model, np.zeros((70, 70, 3), np.uint8), processor=ViTImageProcessor(size={"height": 60, "width": 60}))


def test_attention_methods_read_its_layers_and_legrads_score_is_its_own_head(model):
    """The recipe's attention: each encoder layer's probabilities over the patch tokens (no prefix, no readout);
    LeGrad's score on the last layer's output tokens is the model's own post_layernorm + mean + classifier."""
    photo = np.random.default_rng(2).integers(0, 256, (70, 110, 3), dtype=np.uint8)
    recipe = xai_recipes.find_recipe(model)
    inputs = recipe.model_inputs(model, recipe.image_tensor(PROCESSOR(images=photo, return_tensors="pt")))
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        torch.testing.assert_close(recipe.attention.score(model)(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=1e-5)
    for method in ("attention", "rollout", "gradient-rollout", "legrad"):
        exp = explain(model, photo, processor=PROCESSOR, method=method, top_k=2)
        assert exp.method == method and exp.heatmaps.shape == (2, 70, 110) and np.isfinite(exp.heatmaps).all()
        assert exp.heatmaps[0].std() > 1e-3
