"""The published coverage table (docs/coverage.md) is what the code does now."""

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
    assert rows == json.loads((DOCS / "coverage.json").read_text()), "run python docs/gen_coverage.py"
    assert (DOCS / "coverage.md").read_text() == gen.markdown(rows)


#: Heads that read more than the pooled patch features: DINOv2 concatenates the CLS token with the
#: patch mean; Perceiver's decoder cross-attends from a query to its latents.
NO_DFF_HEAD = {"dinov2", "dinov2_with_registers", "perceiver"}


def test_every_architecture_with_a_spatial_layer_works(generated):
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    _, rows = generated
    assert [r["model_type"] for r in rows] == list(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    for r in rows:
        if r["status"] in ("explicit", "derived"):
            assert r["gradcam"] and set(r["gradcam"].values()) == {"ok"}, r
            assert set(r["default"].values()) == {"ok"}, r  # the default method works wherever GradCAM does
            if r["model_type"] in NO_DFF_HEAD:
                assert r["note"].startswith("DFF: "), r  # the derived head search's or the recipe's reason
            else:
                assert set(r["dff"].values()) == {"ok"}, r
        else:
            assert r["note"], f"{r['model_type']}: {r['status']} without a reason"
    assert sum(r["status"] in ("explicit", "derived") for r in rows) >= 39
    attention = {r["model_type"] for r in rows if "gradient-rollout" in r["attention_methods"]}
    assert {"vit", "deit", "beit", "data2vec-vision", "dinov2", "dinov2_with_registers"} <= attention, attention
