"""Derived recipes for detectors and semantic segmenters no recipe serves (tiny random models, float64).

The probe reduces a detector's ``B×Q×C`` or a segmenter's ``B×C×h×w`` logits to one number per image and
skips the layer whose output is the logits; the derived recipe keeps ``output.logits``, has no DFF head and
no attention, and the object-detection / image-segmentation tasks explain with it. Each GradCAM map equals
grad-cam's own GradCAM, at the derived layer, of the query's class logit (detectors) or of the class's
logits summed over its predicted region (segmenters), mapped back to the image; the detections are the
pipeline's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget
from torch import nn

import tiny_object_archs as O
import xai_recipes
from xai_recipes import NoRecipeError, explain

IMAGE = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)

#: model type -> the layer derivation finds (no explicit recipe serves these types)
DETECTORS = {
    "d_fine": "model.decoder_input_proj.2",  # the last pyramid level fed to the decoder (B×C×h×w)
    "lw_detr": "model.backbone.projector.scale_layers.1",  # its windowed ViT projected to the ×2 level (B×C×h×w)
}
SEGMENTERS = {
    "sapiens2": "decode_head.conv_layers.0",
    "tipsv2_dpt": "decoder.activation",  # not decoder.head: its channels-last output is the logits, permuted
}


def tiny(kind: str, model_type: str) -> tuple[nn.Module, object]:
    return O.tiny_model(kind, model_type).double(), O.processor(kind, model_type)


def pixels(processor) -> torch.Tensor:
    return processor(images=IMAGE, return_tensors="pt")["pixel_values"].double()


def reshape_of(recipe, model, x: torch.Tensor):
    return None if recipe.reshape is None else (lambda t: recipe.reshape(t, model, tuple(x.shape[-2:])))


@pytest.mark.parametrize("model_type", list(DETECTORS))
def test_a_detector_gets_a_derived_recipe_whose_maps_are_grad_cams_of_each_detection(model_type):
    model, processor = tiny(O.DETECTION, model_type)
    recipe = xai_recipes.find_recipe(model)
    assert recipe.name == f"derived:{model_type}"
    assert recipe.head is None and recipe.attention is None
    assert "not checked at a second one" not in recipe.description  # the grid was checked at a wider input
    exp = explain(model, IMAGE, processor=processor, method="gradcam", threshold=0.0, top_k=3)
    assert (exp.task, exp.target_layers) == ("object-detection", [DETECTORS[model_type]])

    found = T.pipeline("object-detection", model=model, image_processor=processor)(Image.fromarray(IMAGE), threshold=0.0)
    found = sorted(found, key=lambda r: -r["score"])[:3]
    assert exp.labels == [r["label"] for r in found]
    np.testing.assert_allclose(exp.scores, [r["score"] for r in found], atol=1e-6)

    class Flat(nn.Module):  # the detector's query-class logits, flattened as the task scores them
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits.flatten(1)

    x = pixels(processor)
    layer = model.get_submodule(DETECTORS[model_type])
    with GradCAM(Flat(), [layer], reshape_transform=reshape_of(recipe, model, x)) as cam:
        ref = cam(x.repeat(len(exp.indices), 1, 1, 1), targets=[ClassifierOutputTarget(i) for i in exp.indices])
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(ref)[0], atol=1e-6)
    assert exp.heatmaps[0].std() > 1e-3  # (a later one may be all 0: D-FINE's last level is 2×2 at 64 px)
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[2]).max() > 0.05  # each detection its own map


class UpsampledLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x).logits
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("model_type", list(SEGMENTERS))
def test_a_segmenter_gets_a_derived_recipe_whose_maps_are_grad_cams_of_each_region(model_type):
    model, processor = tiny(O.SEMANTIC, model_type)
    recipe = xai_recipes.find_recipe(model)
    assert recipe.name == f"derived:{model_type}" and recipe.head is None and recipe.attention is None
    exp = explain(model, IMAGE, processor=processor, method="gradcam", top_k=2)
    assert (exp.task, exp.target_layers) == ("image-segmentation", [SEGMENTERS[model_type]])
    segments = T.pipeline("image-segmentation", model=model, image_processor=processor)(Image.fromarray(IMAGE),
                                                                                      subtask="semantic")
    assert len(exp.labels) == 2 and set(exp.labels) <= {s["label"] for s in segments}

    x, wrapper = pixels(processor), UpsampledLogits(model)
    with torch.no_grad():
        pred = wrapper(x)[0].argmax(0).numpy()
    targets = [SemanticSegmentationTarget(c, (pred == c).astype(np.float64)) for c in exp.indices]
    with GradCAM(wrapper, [model.get_submodule(SEGMENTERS[model_type])],
                 reshape_transform=reshape_of(recipe, model, x)) as cam:
        ref = cam(x.expand(len(targets), *x.shape[1:]), targets=targets)
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(ref)[0], atol=1e-6)
    assert all(m.std() > 1e-3 for m in exp.heatmaps) and np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 0.05


class Grid(nn.Module):
    """A conv net whose logits are ``B×C×h×w`` (or ``B×Q×C``) though it is no transformers segmenter/detector."""

    def __init__(self, per_query: bool) -> None:
        super().__init__()
        self.config = T.PretrainedConfig(num_labels=3)
        self.config.model_type = "grid"
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)
        self.per_query = per_query

    def forward(self, pixel_values):
        logits = self.classifier(self.stem(pixel_values))
        return T.modeling_outputs.SemanticSegmenterOutput(logits=logits.flatten(2).transpose(1, 2) if self.per_query
                                                          else logits)


@pytest.mark.parametrize("per_query", [False, True])
def test_other_models_with_such_logits_get_no_derived_recipe(per_query):
    from xai_recipes.derive import derive

    with pytest.raises(NoRecipeError, match="not B×labels .a classifier., B×queries×classes .a \\*ForObjectDetection"):
        derive(Grid(per_query).eval())
