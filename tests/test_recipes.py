"""Every built-in recipe on a tiny random model of its family: shapes, values, targets, head."""

import numpy as np
import pytest
import tiny_archs
import torch
from conftest import assert_head_reproduces_logits, calibrate_batchnorm, tiny_model
from tiny import FAMILIES
from transformers import ViTImageProcessor

import xai_recipes
from xai_recipes import explain

SIZES = [(64, 64), (80, 112)]  # model input sizes (height, width); the second is non-square


def tiny_timm_wrapper():
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    labels = {i: f"class {i}" for i in range(4)}
    config = TimmWrapperConfig(architecture="test_efficientnet", id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    return calibrate_batchnorm(TimmWrapperForImageClassification(config))


def tiny_gam():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    backbone = ViTModel(ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64), add_pooling_layer=False)
    g = torch.Generator().manual_seed(0)
    labels = [f"class {i}" for i in range(4)]
    return xai_recipes.gam_from_head(backbone, torch.randn(4, 32, generator=g), torch.randn(4, generator=g), labels,
                                     processor=ViTImageProcessor(size={"height": 64, "width": 64}))


def tiny_timm_vit(**kwargs):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, num_classes=4, reg_tokens=4, dynamic_img_size=True, **kwargs)
    return xai_recipes.wrap_timm_model(vit, labels=[f"class {i}" for i in range(4)])[0]


def builtin_models():
    models = {family: (lambda f=family: tiny_model(f)) for family in FAMILIES}
    models["timm_wrapper"] = tiny_timm_wrapper
    models["dino_gam"] = tiny_gam
    models["timm_vit"] = tiny_timm_vit
    models["timm_vit_gap"] = lambda: tiny_timm_vit(global_pool="avg", class_token=False)
    models["siglip2"] = lambda: tiny_archs.tiny_model("siglip2")
    models["dinov2"] = lambda: tiny_archs.tiny_model("dinov2")
    return models


MODELS = builtin_models()


#: Recipes explained through an embedding (zero-shot prompts, image similarity) → the test file running them on
#: models of their family (random and trained CLIP / SigLIP / SigLIP 2, open_clip, the real DINOv2).
EMBEDDING_RECIPES = {"clip": "test_zero_shot.py", "siglip": "test_zero_shot.py", "siglip2-dual": "test_zero_shot.py",
                     "open_clip": "test_open_clip.py", "dinov2-backbone": "test_similarity.py"}


#: Detector and segmenter recipes → the test file that runs them on tiny random models of their families
#: (against the pipelines' detections and segments, and grad-cam's maps).
OBJECT_RECIPES = {"detr": "test_detection.py", "deformable_detr": "test_detection.py", "rt_detr": "test_detection.py",
                  "yolos": "test_detection.py", "owlvit": "test_zero_shot_detection.py",
                  **{name: "test_segmentation.py" for name in ("segformer-semantic", "upernet", "dpt-semantic",
                                                               "beit-semantic", "deeplabv3", "deeplabv3plus",
                                                               "mask2former", "maskformer")}}


def test_every_builtin_recipe_has_a_tiny_model():
    from pathlib import Path

    recipes = xai_recipes.recipes()
    builtin = {r.name for r in recipes.values() if r.plugin in {p.name for p in xai_recipes.plugins() if p.distribution == "xai-recipes"}}
    objects = builtin & set(OBJECT_RECIPES)
    assert objects == set(OBJECT_RECIPES), f"detector/segmenter recipes not registered: {set(OBJECT_RECIPES) - objects}"
    classifiers = {name for name in builtin - objects if recipes[name].embedding is None}
    assert classifiers == set(MODELS), "a built-in recipe is registered without a test model (or vice versa)"
    assert builtin - classifiers - objects == set(EMBEDDING_RECIPES), "an embedding recipe without its test (or vice versa)"
    for name, file in {**EMBEDDING_RECIPES, **OBJECT_RECIPES}.items():
        assert f'"{name}"' in (Path(__file__).parent / file).read_text(), f"{file} does not run recipe {name}"


@pytest.fixture(scope="module", params=sorted(MODELS))
def family_model(request):
    return request.param, MODELS[request.param]()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_heatmaps_have_image_shape_and_real_values(family_model, size):
    family, model = family_model
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size[0] + 13, size[1] + 7, 3), dtype=np.uint8)  # not the input size
    exp = explain(model, image, processor=processor, top_k=3)
    assert exp.recipe == family
    assert exp.heatmaps.shape == (3, image.shape[0], image.shape[1])
    assert exp.heatmaps.dtype == np.float32
    assert np.isfinite(exp.heatmaps).all()
    assert exp.heatmaps.min() >= 0 and exp.heatmaps.max() <= 1
    # The top class has positive evidence somewhere; a lower one may legitimately have none (all 0).
    assert exp.heatmaps[0].std() > 1e-3, "constant heatmap for the top prediction"
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(exp.heatmaps[i], exp.heatmaps[j], atol=1e-3), f"targets {i} and {j} give the same map"
    assert exp.indices == [p[0] for p in exp.predictions[:3]]
    assert len(exp.predictions) == min(5, model.config.num_labels)


#: Recipes that declare no pooled-features head (DINOv2's reads concat(CLS, patch mean)): DFF refuses them.
NO_HEAD = {"dinov2"}


@pytest.mark.parametrize("family", sorted(set(MODELS) - NO_HEAD))
def test_declared_head_reproduces_the_logits(family):
    assert_head_reproduces_logits(MODELS[family](), (64, 96))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dff_concepts_have_image_shape_and_are_named_from_id2label(family_model, size):
    family, model = family_model
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    image = np.random.default_rng(1).integers(0, 256, (size[0] + 5, size[1] + 11, 3), dtype=np.uint8)
    if family in NO_HEAD:
        with pytest.raises(xai_recipes.MethodNotApplicableError, match="dff"):
            explain(model, image, processor=processor, method="dff", n_components=3, top_k=2)
        return
    exp = explain(model, image, processor=processor, method="dff", n_components=3, top_k=2)
    assert exp.heatmaps.shape == (3, *image.shape[:2]) and np.isfinite(exp.heatmaps).all()
    assert all(exp.heatmaps[c].std() > 1e-3 for c in range(3)), "a constant concept map"
    labels = model.config.id2label
    assert len(exp.legend) == 3 and all(len(names) == 2 for names in exp.legend)
    for c, names in enumerate(exp.legend):
        assert all(labels[i] == label for i, label, _ in names)
        assert names[0][2] >= names[1][2] and (exp.indices[c], exp.labels[c], exp.scores[c]) == names[0]
    assert exp.figure().width > image.shape[1]  # the legend panel beside the picture
