"""A model no recipe can be derived for is still explained: the generic recipe (logits wrapper only)
runs the methods that need no recipe field, Integrated Gradients by default.

The test model (tests/trained/pixel_mlp, trained by the train.py beside it, 6 min on one thread)
is an MLP on the flattened 64×64 pixels: no layer outputs a spatial map. Held-out accuracy 0.53
(chance 0.25; an MLP must learn each shape at every position). Measured on the 60 held-out
images of tests/test_localisation.py (share of peaks in the object's box): Integrated Gradients
0.95, a random map 0.05, while plain gradients (saliency 0.13, SmoothGrad 0.12) peak on clutter.
"""

import numpy as np
import pixel_mlp  # noqa: F401 - registers the pixel_mlp model type with transformers' Auto classes
import pytest
import torch
from test_localisation import HELD_OUT, peak_in_box, random_map

import xai_recipes
from xai_recipes import MethodNotApplicableError, NoRecipeError, explain
from xai_recipes.generic import generic_recipe

pytest.importorskip("captum")
IG_SHARE, THRESHOLD = 0.95, 0.85  # measured; the test fails below THRESHOLD


@pytest.fixture(scope="module")
def path(trained_dir):
    return trained_dir / "pixel_mlp"


def test_no_recipe_can_be_derived_so_the_generic_one_is_used(path):
    from xai_recipes.derive import derive
    from xai_recipes.loading import load

    model, _ = load(path, None, None, False)
    with pytest.raises(NoRecipeError, match="no block or norm layer outputs a spatial map"):
        derive(model)
    recipe = xai_recipes.find_recipe(model)
    assert recipe.name == "generic" and recipe.target_layers is None and recipe.head is None
    assert recipe.default_method == "integrated-gradients"
    described = xai_recipes.describe(path)
    assert described.recipe == "generic" and described.default_method == "integrated-gradients"
    assert "none could be derived" in described.description and "integrated-gradients by default" in described.description
    assert described.target_layers == []
    methods = described.methods
    for name in ("integrated-gradients", "saliency", "smoothgrad", "occlusion", "lime", "guided-backprop"):
        assert methods[name] == "ok", name
    for name in ("gradcam", "dff", "rollout", "patch-contributions", "guided-gradcam"):
        assert "none could be derived" in methods[name] and "integrated-gradients" in methods[name], name
    assert "Conv2d" in methods["fullgrad"]  # needs no recipe field, but biased convolutions
    with pytest.raises(MethodNotApplicableError, match="no block or norm layer outputs a spatial map"):
        explain(path, HELD_OUT[0].image, method="gradcam")


def test_integrated_gradients_peak_lands_on_the_object(path):
    rng = np.random.default_rng(0)
    hits = random_hits = 0
    for sample in HELD_OUT:
        exp = explain(path, sample.image, target=sample.label)
        assert exp.method == "integrated-gradients" and exp.recipe == "generic"
        hits += peak_in_box(exp.heatmaps[0], sample.box)
        random_hits += peak_in_box(random_map(rng, exp.heatmaps[0].shape, exp.coverage), sample.box)
    share, chance = hits / len(HELD_OUT), random_hits / len(HELD_OUT)
    assert share >= THRESHOLD and chance <= 0.15, (share, chance)
    assert share == pytest.approx(IG_SHARE, abs=0.05)


class Broken(torch.nn.Module):
    """Has a config and labels but cannot run on an image tensor."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
        self.config.model_type = "broken"
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, pixel_values, **_):
        raise RuntimeError("this model takes no images")


def test_no_recipe_error_only_when_not_even_the_generic_recipe_runs():
    with pytest.raises(NoRecipeError) as err:
        xai_recipes.find_recipe(Broken())
    msg = str(err.value)
    assert "no recipe for model type 'broken'" in msg and "not even the generic recipe fits" in msg
    assert "this model takes no images" in msg
    with pytest.raises(NoRecipeError, match="not even the generic recipe fits"):
        generic_recipe(Broken())


def test_the_flat_model_of_test_derive_gets_integrated_gradients():
    from test_derive import FlatForImageClassification
    from transformers import ViTImageProcessor

    exp = explain(FlatForImageClassification(), np.zeros((16, 16, 3), np.uint8) + 100,
                  processor=ViTImageProcessor(size={"height": 16, "width": 16}), target=[0, 1])
    assert exp.recipe == "generic" and exp.method == "integrated-gradients" and exp.heatmaps.shape == (2, 16, 16)
