"""The published coverage tables (docs/coverage.md) are what the code does now."""

import json
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def generated():
    import sys

    sys.path.insert(0, str(DOCS))
    import gen_coverage

    return gen_coverage, gen_coverage.rows()


def test_checked_in_table_matches_the_code(generated):
    gen, rows = generated
    assert {"rows": rows} == json.loads((DOCS / "coverage.json").read_text()), "run python docs/gen_coverage.py"
    assert (DOCS / "coverage.md").read_text() == gen.markdown(rows)


#: Heads that read more than the pooled patch features: DINOv2 concatenates the CLS token with the
#: patch mean; Perceiver's decoder cross-attends from a query to its latents.
NO_DFF_HEAD = {"dinov2", "dinov2_with_registers", "perceiver"}


def test_every_architecture_with_a_spatial_layer_works(generated):
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    gen, rows = generated
    rows = [r for r in rows if r["table"] == gen.CLASSIFICATION]
    assert [r["model_type"] for r in rows] == list(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    for r in rows:
        if r["status"] in ("explicit", "derived"):
            assert r["gradcam"] and set(r["gradcam"].values()) == {"ok"}, r
            assert set(r["default"].values()) == {"ok"}, r  # the default method works wherever GradCAM does
            assert r["task"] == "image-classification", r
            if r["model_type"] in NO_DFF_HEAD:
                assert r["note"].startswith("DFF: "), r  # the derived head search's or the recipe's reason
            else:
                assert set(r["dff"].values()) == {"ok"}, r
        else:
            assert r["note"], f"{r['model_type']}: {r['status']} without a reason"
    assert sum(r["status"] in ("explicit", "derived") for r in rows) >= 39
    attention = {r["model_type"] for r in rows if "gradient-rollout" in r["attention_methods"]}
    assert {"vit", "deit", "beit", "data2vec-vision", "dinov2", "dinov2_with_registers"} <= attention, attention


def test_every_served_zero_shot_architecture_works(generated):
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    gen, rows = generated
    rows = [r for r in rows if r["table"] == gen.ZERO_SHOT]
    assert [r["model_type"] for r in rows] == list(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    for r in rows:
        if r["status"] in ("explicit", "derived"):
            assert r["task"] == "zero-shot-image-classification", r
            assert r["gradcam"] and set(r["gradcam"].values()) == {"ok"}, r
            assert r["default"] and set(r["default"].values()) == {"ok"}, r
            assert len(r["gradcam"]) == len(r["default"]) >= 2, r  # 64×64 and another size
            assert r["scores"] == "ok", r  # the explained scores are the model's own
        else:
            assert r["status"] in ("unsupported", "unbuildable here"), r
            assert r["note"], f"{r['model_type']}: {r['status']} without a reason"
            if r["status"] == "unsupported":  # the engine's own typed error
                assert r["note"].split(" ")[0].rstrip(":").endswith("Error"), r
    by_type = {r["model_type"]: r for r in rows}
    assert by_type["clip"]["status"] == "explicit" and by_type["clip"]["recipe"] == "clip", by_type["clip"]
    assert by_type["siglip"]["status"] == "explicit" and by_type["siglip"]["recipe"] == "siglip", by_type["siglip"]
    assert by_type["siglip2"]["status"] == "explicit", by_type["siglip2"]
    attention = {r["model_type"] for r in rows if {"gradient-rollout", "legrad"} <= set(r["attention_methods"])}
    assert {"clip", "siglip", "siglip2"} <= attention, attention


#: per table: the architectures' mapping, the task that explains them, and how many at least are explained
#: (explicit or derived recipe, GradCAM ok) — the PP-OCR text detectors, PP-DocLayout and the mask-query
#: segmenters without a recipe are the rest, each with its reason
OBJECT_TABLES = {
    "object-detection": ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "object-detection", 12),
    "image-segmentation": ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "image-segmentation", 10),
    "universal-segmentation": ("MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES", "image-segmentation", 2),
}


@pytest.mark.parametrize("table", list(OBJECT_TABLES))
def test_every_detector_and_segmenter_is_explained_or_says_why_not(generated, table):
    from transformers.models.auto import modeling_auto

    mapping, task, at_least = OBJECT_TABLES[table]
    gen, rows = generated
    rows = [r for r in rows if r["table"] == table]
    assert [r["model_type"] for r in rows] == list(getattr(modeling_auto, mapping))
    for r in rows:
        if r["status"] in ("explicit", "derived"):
            assert (r["task"], r["gradcam"], r["pipeline"]) == (task, "ok", "ok"), r  # the pipeline's detections / labels
            assert r["layer"] and r["recipe"].startswith("derived:") == (r["status"] == "derived"), r
        elif r["status"] == "failed":  # a recipe and a task, but explain() raised or its maps were constant
            assert r["recipe"] and r["task"] == task and r["gradcam"].startswith("no: ") and r["note"], r
        else:
            assert r["status"] in ("unsupported", "not yet explained", "unbuildable here"), r
            assert "Error" in r["note"] or r["status"] == "unbuildable here", r  # the engine's own typed error
    assert sum(r["status"] in ("explicit", "derived") for r in rows) >= at_least


def test_detectors_and_segmenters_without_a_recipe_are_derived(generated):
    """No recipe serves these types: the probe finds their spatial layer (B×Q×C and B×C×h×w logits)."""
    gen, rows = generated
    by_type = {(r["table"], r["model_type"]): r for r in rows}
    for key in [("object-detection", t) for t in ("d_fine", "lw_detr", "rf_detr")] + \
               [("image-segmentation", t) for t in ("sapiens2", "tipsv2_dpt")]:
        assert by_type[key]["status"] in ("derived", "explicit"), by_type[key]
    assert by_type[("object-detection", "detr")]["recipe"] == "detr"
    assert by_type[("image-segmentation", "segformer")]["recipe"] == "segformer-semantic"
