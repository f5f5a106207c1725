"""The object-detection task and the detector recipes, on tiny random detectors built from configs.

Every family (DETR, Deformable DETR plain and two-stage with box refinement, RT-DETR v1 and v2, YOLOS):
the detections equal ``pipeline("object-detection")``'s, each detection's score is its own query-class
logit through the family's score function, and its GradCAM map equals the grad-cam package's own
GradCAM of that logit at the layer the recipe chose. On the tiny DETR: targets by index, label and
box, their typed errors, one forward and one batched backward for all detections, save/load, the
figure's boxes, and the model given back unchanged also with 8 threads explaining at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

import xai_recipes
from xai_recipes import NoDetectionError, RegionError, TargetIndexError, UnknownLabelError, explain

LABELS = {0: "cat", 1: "dog", 2: "traffic light"}
IDS = dict(num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def picture(seed: int = 0) -> Image.Image:
    """A 60×80 picture of three coloured rectangles (shifted by ``seed``) on black."""
    a = np.zeros((60, 80, 3), np.uint8)
    a[5 + seed : 25 + seed, 5:30] = (255, 0, 0)
    a[30:55, 40 - seed : 75 - seed] = (0, 0, 255)
    a[10:20, 50:70] = (255, 255, 255)
    return Image.fromarray(a)


def unit_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm as the identity (random init may start gammas near 0, and every map would vanish)."""
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.ones_(bn.weight)
            torch.nn.init.zeros_(bn.bias)
    return model


def random_detr(seed: int = 0) -> tuple[T.DetrForObjectDetection, T.DetrImageProcessor]:
    """The brief's tiny DETR (2 decoder layers, 6 queries), its decoder's attention sharpened and its heads
    re-initialised so that the queries find different boxes and classes: on ``picture()``, 6 detections above
    0.5, 4 'traffic light' and 2 'dog', inside the image."""
    torch.manual_seed(seed)
    backbone = T.ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=8, layer_type="basic",
                              out_features=["stage2"])
    config = T.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                          encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=6, **IDS)
    model = T.DetrForObjectDetection(config)
    with torch.no_grad():
        model.model.query_position_embeddings.weight.normal_(0, 3)
        for layer in model.model.decoder.layers:
            for attention in (layer.self_attn, layer.encoder_attn):
                attention.q_proj.weight.mul_(8)
                attention.k_proj.weight.mul_(8)
                attention.v_proj.weight.mul_(3)
        for linear in model.bbox_predictor.layers:
            linear.weight.normal_(0, 0.15)
        model.class_labels_classifier.weight.normal_(0, 1)
    return model.double().eval(), T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def _resnet(config=T.ResNetConfig, **kwargs):
    return config(hidden_sizes=[16, 32, 32], depths=[1, 1, 1], layer_type="basic",
                  out_features=["stage1", "stage2", "stage3"], **kwargs)


def random_deformable(**kwargs) -> tuple[T.DeformableDetrForObjectDetection, T.DeformableDetrImageProcessor]:
    """Deformable DETR over 3 backbone levels + 1 extra. ``decoder_layers=2``: with 1, transformers 5 refuses to
    build it (``tie_weights_keys ... bbox_embed``: the per-layer heads 1.. it ties to head 0 do not exist)."""
    torch.manual_seed(0)
    config = T.DeformableDetrConfig(use_timm_backbone=False, backbone_config=_resnet(embedding_size=8),
                                    use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=2,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, num_queries=5, num_feature_levels=4, encoder_n_points=2,
                                    decoder_n_points=2, two_stage_num_proposals=5, **IDS, **kwargs)
    model = unit_batchnorm(T.DeformableDetrForObjectDetection(config))
    return model.double().eval(), T.DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def random_rt_detr(v2: bool = False) -> tuple[T.PreTrainedModel, T.RTDetrImageProcessor]:
    """RT-DETR (v2: ``RTDetrV2ForObjectDetection``) with a 3-stage RT-DETR ResNet, 5 queries."""
    torch.manual_seed(0)
    config_class, model_class = ((T.RTDetrV2Config, T.RTDetrV2ForObjectDetection) if v2 else
                                 (T.RTDetrConfig, T.RTDetrForObjectDetection))
    config = config_class(backbone_config=_resnet(T.RTDetrResNetConfig, embedding_size=16), encoder_hidden_dim=32,
                          encoder_in_channels=[16, 32, 32], feat_strides=[8, 16, 32], encoder_ffn_dim=64,
                          encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
                          decoder_attention_heads=2, decoder_layers=2, num_queries=5, decoder_n_points=2,
                          num_denoising=0, hidden_expansion=0.5, **IDS)
    model = unit_batchnorm(model_class(config))
    return model.double().eval(), T.RTDetrImageProcessor(size={"height": 64, "width": 64})


def random_yolos() -> tuple[T.YolosForObjectDetection, T.YolosImageProcessor]:
    """YOLOS with 5 detection tokens, patch 8; the detection tokens (zeros at init) drawn at random so that
    they differ."""
    torch.manual_seed(0)
    config = T.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=[64, 96], patch_size=8, num_detection_tokens=5, **IDS)
    model = T.YolosForObjectDetection(config)
    with torch.no_grad():
        model.vit.embeddings.detection_tokens.normal_(0, 1)
        model.class_labels_classifier.layers[-1].weight.normal_(0, 1)
    return model.double().eval(), T.YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)


#: family → (builder, recipe, the layer it reads on picture(), score function of one image's Q×C' logits). The
#: multi-level families at these inputs (about 64×85 and 64×64): levels at strides 4, 8, 16, grids 16×21, 8×11,
#: 4×5 (Deformable DETR), 16×16, 8×8, 4×4 (RT-DETR): the deepest whose grid is at least 7 is the middle one.
FAMILIES = {
    "detr": (random_detr, "detr", "model.input_projection", softmax),
    "deformable_detr": (random_deformable, "deformable_detr", "model.input_proj.1", torch.sigmoid),
    "deformable_detr-two-stage": (lambda: random_deformable(with_box_refine=True, two_stage=True), "deformable_detr",
                                  "model.input_proj.1", torch.sigmoid),
    "rt_detr": (random_rt_detr, "rt_detr", "model.decoder_input_proj.1", torch.sigmoid),
    "rt_detr_v2": (lambda: random_rt_detr(v2=True), "rt_detr", "model.decoder_input_proj.1", torch.sigmoid),
    "yolos": (random_yolos, "yolos", "vit.encoder.layer.1.layernorm_before", softmax),
}


def gradcam_reference(model, layer, reshape, pixel_values: torch.Tensor, indices: list[int]) -> np.ndarray:
    """grad-cam's own GradCAM of each flat logit ``q·C' + c``, the image replicated once per target."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits.flatten(1)

    with GradCAM(Flat(), [layer], reshape_transform=reshape) as cam:
        return cam(pixel_values.repeat(len(indices), 1, 1, 1), targets=[ClassifierOutputTarget(i) for i in indices])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detections_equal_the_pipeline_and_each_explains_its_own_logit(family):
    build, recipe_name, layer_name, score = FAMILIES[family]
    model, processor = build()
    image = picture()
    exp = explain(model, image, processor=processor, threshold=0.0, method="gradcam", top_k=100)
    assert exp.recipe == recipe_name and exp.task == "object-detection" and exp.target_layers == [layer_name]

    reference = T.pipeline("object-detection", model=model, image_processor=processor)(image, threshold=0.0)
    reference = sorted(reference, key=lambda r: -r["score"])  # DETR's post-processing keeps query order
    assert len(reference) >= 5 and len(exp.labels) == len(reference)
    assert exp.labels == [r["label"] for r in reference]
    np.testing.assert_allclose(exp.scores, [r["score"] for r in reference], atol=1e-6)
    boxes = np.array([[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in reference])
    assert np.abs(np.array(exp.boxes) - boxes).max() <= 1  # the pipeline truncates its boxes to int

    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].double()
    with torch.no_grad():
        output = model(pixel_values=pixel_values)
    n_classes = output.logits.shape[-1]
    probabilities = score(output.logits[0])
    for index, label, value, box in zip(exp.indices, exp.labels, exp.scores, exp.boxes):
        q, c = divmod(index, n_classes)
        assert label == LABELS[c]
        assert float(probabilities[q, c]) == pytest.approx(value, abs=1e-9)  # the logit the post-processing used
        cx, cy, w, h = output.pred_boxes[0, q].tolist()  # and that query's own box
        np.testing.assert_allclose(box, [(cx - w / 2) * 80, (cy - h / 2) * 60, (cx + w / 2) * 80, (cy + h / 2) * 60],
                                   atol=1e-4)

    layer = dict(model.named_modules())[layer_name]
    recipe = xai_recipes.get_recipe(recipe_name)
    reshape = None if recipe.reshape is None else (lambda t: recipe.reshape(t, model, tuple(pixel_values.shape[-2:])))
    maps = gradcam_reference(model, layer, reshape, pixel_values, exp.indices[:3])
    np.testing.assert_allclose(exp.heatmaps[:3], exp.geometry.to_image(maps)[0], atol=1e-4)
    assert exp.heatmaps[0].std() > 1e-3  # a map, not a constant


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.fixture(scope="module")
def detr():
    return random_detr()


@pytest.fixture(scope="module")
def found(detr):
    """The tiny DETR's detections on ``picture()`` at the default threshold, best first."""
    model, processor = detr
    return explain(model, picture(), processor=processor, method="gradcam")


def test_the_default_explains_every_detection_above_one_half_best_first(found):
    assert found.labels == ["traffic light", "traffic light", "traffic light", "dog", "dog", "traffic light"]
    assert found.scores == sorted(found.scores, reverse=True) and min(found.scores) > 0.5
    assert len(set(found.indices)) == 6 and all(0 <= b[0] < b[2] <= 80 and 0 <= b[1] < b[3] <= 60 for b in found.boxes)


def test_targets_by_index_label_and_box(detr, found):
    model, processor = detr
    one = explain(model, picture(), processor=processor, method="gradcam", target=[3, 0])
    assert one.indices == [found.indices[3], found.indices[0]] and one.boxes == [found.boxes[3], found.boxes[0]]
    np.testing.assert_allclose(one.heatmaps, found.heatmaps[[3, 0]], atol=1e-6)

    dogs = explain(model, picture(), processor=processor, method="gradcam", target="dog")
    assert dogs.labels == ["dog", "dog"] and dogs.indices == found.indices[3:5]

    drawn = (10.0, 20.0, 40.0, 50.0)
    near = explain(model, picture(), processor=processor, method="gradcam", target=drawn)
    assert near.indices == [found.indices[int(np.argmax([iou(drawn, b) for b in found.boxes]))]]  # max IoU
    exact = explain(model, picture(), processor=processor, method="gradcam", target=found.boxes[4])
    assert exact.indices == [found.indices[4]]
    mixed = explain(model, picture(), processor=processor, method="gradcam", target=[5, "dog", found.boxes[1]])
    assert mixed.indices == [found.indices[5], *found.indices[3:5], found.indices[1]]


@pytest.mark.parametrize("target, error, words", [
    ((0, 0, 8, 8), NoDetectionError, "IoU"),
    ((70, 50, 90, 59), RegionError, "outside the 80×60 image"),
    ((30, 10, 20, 40), RegionError, "x1 <= x0"),
    ("kat", UnknownLabelError, "'cat'"),
    (6, TargetIndexError, "only 6 detection(s)"),
    ("cat", NoDetectionError, "no 'cat' detected"),
])
def test_bad_targets_are_typed_errors_naming_the_fix(detr, target, error, words):
    model, processor = detr
    with pytest.raises(error) as raised:
        explain(model, picture(), processor=processor, method="gradcam", target=target)
    assert words in str(raised.value)


def test_no_detection_above_the_threshold(detr):
    model, processor = detr
    with pytest.raises(NoDetectionError, match="lower threshold="):
        explain(model, picture(), processor=processor, method="gradcam", threshold=0.99)


def test_all_detections_cost_one_forward_and_one_batched_backward(detr, monkeypatch):
    model, processor = detr
    forwards, backwards = [], []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(k.get("is_grads_batched")) or grad(*a, **k))
    handle = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        exp = explain(model, picture(), processor=processor, method="gradcam")
    finally:
        handle.remove()
    assert len(exp.indices) == 6 and len(forwards) == 1 and backwards == [True]


def test_save_and_load_keep_the_boxes(found, tmp_path):
    found.save(tmp_path / "detr.npz")
    back = xai_recipes.load(tmp_path / "detr.npz")
    assert back.task == "object-detection" and back.boxes == found.boxes and back.labels == found.labels
    assert back.scores == found.scores and back.indices == found.indices
    np.testing.assert_array_equal(back.heatmaps, found.heatmaps)


def test_the_figure_outlines_each_detection_in_green(found):
    figure = np.asarray(found.figure())
    H, W = 60, 80
    top = figure.shape[0] - H  # the overlays sit under their label strips, side by side
    assert figure.shape[1] == W * len(found.indices)
    for i, box in enumerate(found.boxes):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        overlay = figure[top:, i * W : (i + 1) * W]
        edges = [overlay[y0, x0:x1 + 1], overlay[y1, x0:x1 + 1], overlay[y0:y1 + 1, x0], overlay[y0:y1 + 1, x1]]
        assert all((edge == (0, 255, 0)).all() for edge in edges), f"box {i} is not outlined"
        assert not (overlay[y0 + 2 : y1 - 1, x0 + 2 : x1 - 1] == (0, 255, 0)).all(-1).all()  # only its outline


def test_the_model_is_given_back_unchanged_also_with_8_threads(detr):
    model, processor = detr
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    methods = ["gradcam", "hirescam"]
    alone = {(s, m): explain(model, picture(s), processor=processor, method=m) for s in range(2) for m in methods}
    # counted after a first call: transformers 5 installs its output-recording hooks on a model's first forward
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    with ThreadPoolExecutor(8) as pool:  # 8 explanations at once: each image and method twice
        results = list(pool.map(lambda i: explain(model, picture(i % 2), processor=processor, method=methods[i // 2 % 2]),
                                range(8)))
    for i, exp in enumerate(results):
        same = alone[(i % 2, methods[i // 2 % 2])]
        assert exp.indices == same.indices and exp.boxes == same.boxes
        np.testing.assert_allclose(exp.heatmaps, same.heatmaps, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    model.eval()
