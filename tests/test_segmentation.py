"""The image-segmentation task and the segmenter recipes.

Every gradcam map here equals ``pytorch_grad_cam.GradCAM`` called directly on a wrapper that returns the
model's logits upsampled to its input (bilinear, ``align_corners=False``) with grad-cam's own
``SemanticSegmentationTarget(category, mask)``: the mask the model's own argmax region of the class (or
the region the user gives), the layer the recipe's. The explained classes and their masks are
``pipeline("image-segmentation", subtask="semantic")``'s. Tiny random models in float64.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import transformers as T
from conftest import calibrate_batchnorm
from hostile import model_state, state_differences
from object_models import IMAGE, random_segformer
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

import xai_recipes
from xai_recipes import NoDetectionError, RegionError, UnknownLabelError, explain

LABELS = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e", 5: "f"}
SIX = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
SQUARE = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)  # the input's size: geometry = identity
#: The families' picture: 10-pixel cells of random colours (on it every random family predicts 3 to 6 classes),
#: not the input's size, so masks are resampled and maps mapped back.
PICTURE = Image.fromarray(np.kron((np.random.default_rng(4).random((7, 9, 3)) * 255).astype(np.uint8),
                                  np.ones((10, 10, 1), np.uint8)))


class UpsampledLogits(nn.Module):
    """``pixel_values -> logits`` at the input's size, as the task (and the processors) upsample them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x).logits
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PostProcessedScores(nn.Module):
    """``pixel_values -> `` a mask classifier's per-pixel class scores at the input's size, as its processor's own
    ``post_process_semantic_segmentation(..., return_segmentation_scores=True)`` computes them (differentiably)."""

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        self.model, self.processor = model, processor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.processor.post_process_semantic_segmentation(
            self.model(pixel_values=x), target_sizes=[x.shape[-2:]] * len(x), return_segmentation_scores=True)
        return torch.stack([o.segmentation_scores for o in out])


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: list[int],
             region: np.ndarray | None = None, wrapper: nn.Module | None = None) -> np.ndarray:
    """grad-cam's GradCAM of ``SemanticSegmentationTarget(c, mask)`` for each class on the model input ``x``
    (``1×3×H×W``): ``mask`` the model's own argmax region of ``c``, or ``region``; the scores the model's logits
    upsampled to the input, or ``wrapper``'s."""
    wrapper = wrapper or UpsampledLogits(model)
    with torch.no_grad():
        pred = wrapper(x)[0].argmax(0).numpy()
    masks = [(pred == c) if region is None else region for c in classes]
    targets = [SemanticSegmentationTarget(c, mask.astype(np.float64)) for c, mask in zip(classes, masks)]
    with GradCAM(model=wrapper, target_layers=[layer]) as cam:  # the image once per target: grad-cam's batch
        return cam(input_tensor=x.expand(len(classes), *x.shape[1:]), targets=targets)


def pixels(processor, image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"].to(torch.float64)


def pipeline_segments(model, processor, image) -> list[tuple[str, np.ndarray]]:
    """The pipeline's (label, mask) pairs, largest first (ties: the lower class id first)."""
    segments = T.pipeline("image-segmentation", model=model, image_processor=processor)(image, subtask="semantic")
    label2id = {v: k for k, v in model.config.id2label.items()}
    pairs = [(s["label"], np.asarray(s["mask"]) > 0) for s in segments]
    return sorted(pairs, key=lambda p: (-int(p[1].sum()), label2id[p[0]]))


@pytest.fixture(scope="module")
def segformer():
    model, processor = random_segformer(dtype=torch.float64)
    return model, processor


# ---- the task, on a tiny SegFormer -------------------------------------------------------------------------


def test_each_predicted_class_is_grad_cams_semantic_segmentation_target(segformer):
    model, processor = segformer
    exp = explain(model, SQUARE, processor=processor, method="gradcam", top_k=4)
    assert exp.task == "image-segmentation" and exp.recipe == "segformer-semantic"
    assert exp.target_layers == ["decode_head.linear_fuse"]
    segments = pipeline_segments(model, processor, Image.fromarray(SQUARE))
    assert len(segments) >= 2  # several classes: the test can tell them apart
    assert exp.labels == [label for label, _ in segments][:4]
    ref = grad_cam(model, model.decode_head.linear_fuse, pixels(processor, SQUARE), exp.indices)
    assert exp.geometry.scale == (1.0, 1.0) and exp.geometry.offset == (0.0, 0.0)
    np.testing.assert_allclose(exp.heatmaps, ref, atol=1e-5)  # compared on the model input itself
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 0.05  # each class its own map


def test_on_a_picture_of_another_size_the_maps_are_grad_cams_mapped_back(segformer):
    model, processor = segformer
    exp = explain(model, IMAGE, processor=processor, method="gradcam", top_k=5)
    segments = pipeline_segments(model, processor, Image.fromarray(IMAGE))
    assert [p[1] for p in exp.predictions] == [label for label, _ in segments][:5]
    for label, mask in zip(exp.labels, exp.masks):
        np.testing.assert_array_equal(mask, dict(segments)[label])
    ref = grad_cam(model, model.decode_head.linear_fuse, pixels(processor, IMAGE), exp.indices)
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(ref)[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["box", "mask"])
def test_a_region_explains_the_class_score_summed_over_it(segformer, kind):
    model, processor = segformer
    box = (8, 20, 40, 52)
    region = np.zeros((64, 64), bool)
    region[20:52, 8:40] = True
    if kind == "mask":  # not a box: a disc, so the region's own shape matters
        yy, xx = np.mgrid[:64, :64]
        region = (yy - 32) ** 2 + (xx - 30) ** 2 < 15 ** 2
    exp = explain(model, SQUARE, processor=processor, method="gradcam", target=[0, 3],
                  region=box if kind == "box" else region)
    assert exp.indices == [0, 3]
    for mask in exp.masks:
        np.testing.assert_array_equal(mask, region)  # the region shown is the user's
    ref = grad_cam(model, model.decode_head.linear_fuse, pixels(processor, SQUARE), [0, 3], region=region)
    np.testing.assert_allclose(exp.heatmaps, ref, atol=1e-5)
    own = explain(model, SQUARE, processor=processor, method="gradcam", target=exp.labels[0])
    assert np.abs(own.heatmaps[0] - exp.heatmaps[0]).max() > 0.05  # not the model's own region's map


@pytest.mark.parametrize("region, words", [
    (np.ones((32, 64), bool), "is 32×64 (H×W) but the image is 64×64"),
    (np.zeros((64, 64), bool), "empty"),
    ((10, 10, 80, 40), "outside the 64×64 image"),
    ((30, 10, 30, 40), "x1 <= x0"),
    ((30, 10, 20, 40), "x1 <= x0"),
])
def test_a_bad_region_is_a_region_error_naming_the_problem(segformer, region, words):
    model, processor = segformer
    with pytest.raises(RegionError, match=words.replace("(", r"\(").replace(")", r"\)")):
        explain(model, SQUARE, processor=processor, method="gradcam", region=region)


def test_a_class_the_model_does_not_predict_is_a_no_detection_error_naming_those_it_does(segformer):
    model, processor = segformer
    white = np.full((64, 64, 3), 255, np.uint8)
    predicted = [label for label, _ in pipeline_segments(model, processor, Image.fromarray(white))]
    absent = [v for v in model.config.id2label.values() if v not in predicted]
    assert absent  # on a white picture the random model predicts some of its four classes only
    with pytest.raises(NoDetectionError, match=f"no '{absent[0]}' region") as err:
        explain(model, white, processor=processor, method="gradcam", target=absent[0])
    assert all(label in str(err.value) for label in predicted) and "region=" in str(err.value)
    with pytest.raises(UnknownLabelError, match="zebra"):
        explain(model, SQUARE, processor=processor, method="gradcam", target="zebra")


def test_masks_survive_save_and_load_and_are_outlined_on_the_figure(segformer, tmp_path):
    model, processor = segformer
    exp = explain(model, IMAGE, processor=processor, method="gradcam", top_k=2)
    exp.save(tmp_path / "seg.npz")
    back = xai_recipes.load(tmp_path / "seg.npz")
    assert back.masks.dtype == bool and back.labels == exp.labels and back.task == "image-segmentation"
    np.testing.assert_array_equal(back.masks, exp.masks)
    for i, mask in enumerate(exp.masks):
        overlay = np.asarray(exp.overlay(i))
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        edge = np.concatenate([c[:, 0] for c in contours])  # (x, y) of each boundary pixel
        assert (overlay[edge[:, 1], edge[:, 0]] == (0, 255, 0)).all()  # drawn in green
        green = (overlay == (0, 255, 0)).all(-1)
        assert green.sum() < mask.size / 2  # an outline, not a fill
    figure = exp.figure()
    assert figure.width >= 2 * IMAGE.shape[1]  # both segments side by side


def test_the_model_is_returned_as_it_was(segformer):
    model, processor = segformer
    model.train()
    try:
        before = model_state(model)
        explain(model, IMAGE, processor=processor, method="gradcam", top_k=2)
        explain(model, SQUARE, processor=processor, method="gradcam", target=[1], region=(0, 0, 32, 32))
        assert state_differences(before, model_state(model)) == []
    finally:
        model.eval()


# ---- the segmenter families --------------------------------------------------------------------------------

STAGES = ["stage1", "stage2", "stage3", "stage4"]
VIT = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
           intermediate_size=64)
UPERHEAD = dict(out_indices=[1, 2, 3, 4], pool_scales=[1, 2, 3, 6], use_auxiliary_head=False)
MOBILEVIT = dict(image_size=64, neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], hidden_sizes=[16, 24, 32],
                 num_attention_heads=2)


def family_config(family: str) -> T.PretrainedConfig:
    """A tiny random segmenter's config: 6 classes, 64×64 inputs, every family's head as published."""
    if family.startswith("upernet"):
        backbone = (T.ConvNextConfig(patch_size=2, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                     out_features=STAGES) if family == "upernet-convnext" else
                    T.SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                 window_size=4, out_features=STAGES))
        return T.UperNetConfig(backbone_config=backbone, hidden_size=16, pool_scales=[1, 2, 3, 6],
                               use_auxiliary_head=False, **SIX)
    if family == "dpt":
        return T.DPTConfig(**VIT, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 16],
                           fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], use_auxiliary_head=False, **SIX)
    if family == "beit":
        return T.BeitConfig(**VIT, **UPERHEAD, use_relative_position_bias=True, **SIX)
    if family == "data2vec-vision":
        return T.Data2VecVisionConfig(**VIT, **UPERHEAD, **SIX)
    if family == "mobilevit":
        return T.MobileViTConfig(**MOBILEVIT, expand_ratio=2.0, output_stride=8, aspp_out_channels=16, **SIX)
    if family == "mobilevitv2":
        return T.MobileViTV2Config(image_size=64, width_multiplier=0.25, n_attn_blocks=[1, 1, 1], output_stride=8,
                                   aspp_out_channels=16, **SIX)
    return T.MobileNetV2Config(image_size=64, depth_multiplier=0.35, output_stride=8, **SIX)


SQUARE_PROCESSOR = dict(size={"height": 64, "width": 64})
#: family -> (model class, processor, recipe, target layer's name)
FAMILIES = {
    "upernet-convnext": (T.UperNetForSemanticSegmentation, lambda: T.SegformerImageProcessor(**SQUARE_PROCESSOR),
                         "upernet", "decode_head.fpn_bottleneck"),
    "upernet-swin": (T.UperNetForSemanticSegmentation, lambda: T.SegformerImageProcessor(**SQUARE_PROCESSOR),
                     "upernet", "decode_head.fpn_bottleneck"),
    "dpt": (T.DPTForSemanticSegmentation, lambda: T.DPTImageProcessor(**SQUARE_PROCESSOR),
            "dpt-semantic", "neck.fusion_stage.layers.3"),
    "beit": (T.BeitForSemanticSegmentation, lambda: T.BeitImageProcessor(**SQUARE_PROCESSOR, do_center_crop=False),
             "beit-semantic", "decode_head.fpn_bottleneck"),
    "data2vec-vision": (T.Data2VecVisionForSemanticSegmentation,
                        lambda: T.BeitImageProcessor(**SQUARE_PROCESSOR, do_center_crop=False),
                        "beit-semantic", "decode_head.fpn_bottleneck"),
    "mobilevit": (T.MobileViTForSemanticSegmentation, lambda: T.MobileViTImageProcessor(
                      size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}, do_flip_channel_order=True),
                  "deeplabv3", "segmentation_head.aspp"),
    "mobilevitv2": (T.MobileViTV2ForSemanticSegmentation, lambda: T.MobileViTImageProcessor(
                        size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}, do_flip_channel_order=True),
                    "deeplabv3", "segmentation_head.aspp"),
    "mobilenet_v2": (T.MobileNetV2ForSemanticSegmentation, lambda: T.MobileNetV2ImageProcessor(
                         size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}),
                     "deeplabv3plus", "segmentation_head.conv_projection"),
}


def family_model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(FAMILIES[family][0](family_config(family))).to(torch.float64)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_explains_the_pipelines_segments_with_grad_cams_maps(family):
    model = family_model(family)
    processor, recipe, layer = FAMILIES[family][1](), FAMILIES[family][2], FAMILIES[family][3]
    exp = explain(model, PICTURE, processor=processor, method="gradcam", top_k=5)
    assert (exp.recipe, exp.target_layers, exp.task) == (recipe, [layer], "image-segmentation")
    segments = pipeline_segments(model, processor, PICTURE)
    assert len(segments) >= 3, [label for label, _ in segments]  # several classes: the test can tell them apart
    assert [p[1] for p in exp.predictions] == [label for label, _ in segments][:5]
    assert exp.labels == [label for label, _ in segments][:5]  # each has pixels at the input here: all explained
    for label, mask in zip(exp.labels, exp.masks):
        np.testing.assert_array_equal(mask, dict(segments)[label])
    ref = grad_cam(model, model.get_submodule(layer), pixels(processor, PICTURE), exp.indices)
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(ref)[0], atol=1e-5)
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 0.05


def test_the_classifiers_and_depth_estimators_of_these_model_types_keep_their_recipes():
    torch.manual_seed(0)
    mobilevit = T.MobileViTForImageClassification(T.MobileViTConfig(**MOBILEVIT))
    assert xai_recipes.find_recipe(mobilevit).name == "mobilevit"
    depth = T.DPTForDepthEstimation(T.DPTConfig(**VIT, neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16,
                                                backbone_out_indices=[0, 1, 2, 3]))
    for model, recipe in [(depth, "dpt-semantic"), (T.BeitForImageClassification(T.BeitConfig(**VIT)), "beit-semantic"),
                          (T.Data2VecVisionForImageClassification(T.Data2VecVisionConfig(**VIT)), "beit-semantic"),
                          (mobilevit, "deeplabv3"),
                          (T.MobileNetV2ForImageClassification(T.MobileNetV2Config(depth_multiplier=0.35)),
                           "deeplabv3plus")]:
        assert not xai_recipes.get_recipe(recipe).serves(model), (recipe, type(model).__name__)
    for family in FAMILIES:  # and each segmenter's own recipe wins over any recipe of its model type
        model = FAMILIES[family][0](family_config(family))
        assert xai_recipes.find_recipe(model).name == FAMILIES[family][2], family


# ---- mask classifiers: a class and a mask per query --------------------------------------------------------


def mask_classifier(family: str) -> tuple[nn.Module, object]:
    """A random Mask2Former or MaskFormer (tiny Swin backbone, 8 queries, 6 classes) and its processor at 64×64.
    Random heads predict one class everywhere: the queries, class and mask heads are drawn wider (and MaskFormer's
    cross-attention sharpened) so that it predicts three classes on :data:`PICTURE`."""
    swin = T.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                        window_size=4, out_features=STAGES)
    torch.manual_seed(1 if family == "mask2former" else 0)
    if family == "mask2former":
        model = T.Mask2FormerForUniversalSegmentation(T.Mask2FormerConfig(
            backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
            dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=8, **SIX))
        processor = T.Mask2FormerImageProcessor(size={"height": 64, "width": 64}, size_divisor=0)
    else:
        decoder = dict(model_type="detr", d_model=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                       encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_queries=8)
        model = T.MaskFormerForInstanceSegmentation(T.MaskFormerConfig(
            backbone_config=swin, fpn_feature_size=32, mask_feature_size=32, decoder_config=decoder, **SIX))
        processor = T.MaskFormerImageProcessor(size={"height": 64, "width": 64}, size_divisor=0)
    model = calibrate_batchnorm(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask_embedder.2.0.weight" in name or name == "class_predictor.weight":
                p.copy_(torch.randn(p.shape, generator=g) * 2)
            elif name == "class_predictor.bias":
                p.zero_()
            elif name.startswith("model.transformer_module.queries_"):
                p.copy_(torch.randn(p.shape, generator=g) * 3)
            elif family == "maskformer" and name.endswith(("encoder_attn.q_proj.weight", "encoder_attn.k_proj.weight")):
                p.mul_(5)
    return model.to(torch.float64), processor


@pytest.mark.parametrize("family", ["mask2former", "maskformer"])
def test_mask_classifiers_explain_their_semantic_post_processing(family):
    model, processor = mask_classifier(family)
    exp = explain(model, PICTURE, processor=processor, method="gradcam", top_k=5)
    layer = "model.pixel_level_module.decoder.mask_projection"
    assert (exp.recipe, exp.target_layers, exp.task) == (family, [layer], "image-segmentation")
    segments = pipeline_segments(model, processor, PICTURE)
    assert len(segments) >= 3, [label for label, _ in segments]
    assert [p[1] for p in exp.predictions] == exp.labels == [label for label, _ in segments][:5]
    for label, mask in zip(exp.labels, exp.masks):
        np.testing.assert_array_equal(mask, dict(segments)[label])
    x = pixels(processor, PICTURE)
    with torch.no_grad():  # the recipe's scores are the processor's own, upsampled as it does
        ours = xai_recipes.get_recipe(family).logits(model(pixel_values=x))
        theirs = PostProcessedScores(model, processor)(x)
    torch.testing.assert_close(nn.functional.interpolate(ours, size=(64, 64), mode="bilinear", align_corners=False),
                               theirs, atol=1e-12, rtol=0)
    ref = grad_cam(model, model.get_submodule(layer), x, exp.indices, wrapper=PostProcessedScores(model, processor))
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(ref)[0], atol=1e-5)
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 0.05


def test_a_mask_classifier_needs_a_recipe_that_gives_per_pixel_scores():
    model, processor = mask_classifier("maskformer")
    bare = xai_recipes.Recipe(name="bare", model_types=("maskformer",),
                              target_layers=lambda m: [m.model.pixel_level_module.decoder.mask_projection])
    with pytest.raises(xai_recipes.TaskNotApplicableError, match="a class and a mask per query.*mask2former and mask"):
        explain(model, PICTURE, processor=processor, method="gradcam", recipe=bare, task="image-segmentation")
