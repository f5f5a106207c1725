"""Hugging Face data tools: a datasets.Dataset into explain / evaluate / audit (streamed in batches), explanations
and explain_dataset's rows out as a datasets.Dataset, a transformers pipeline wherever a model goes, and the
audit on a local Ray giving the clusters of the single process.

One local Ray (2 CPUs, small object store) serves the Ray tests, as in tests/test_ray.py.
"""

import logging

import numpy as np
import pytest
from PIL import Image
from synthetic import SHAPES
from watermark import held_out

from conftest import TRAINED

datasets = pytest.importorskip("datasets", reason="datasets is missing: pip install -e '.[hf]'")

import xai_recipes  # noqa: E402
from xai_recipes import audit, explain  # noqa: E402
from xai_recipes.errors import DatasetError  # noqa: E402
from xai_recipes.hfdata import to_dataset  # noqa: E402

MODEL = str(TRAINED / "resnet_watermark")
FEATURES = datasets.Features({"picture": datasets.Image(), "shape": datasets.ClassLabel(names=list(SHAPES)),
                              "box": datasets.List(datasets.Value("int32"))})


@pytest.fixture(scope="module")
def scenes():
    return held_out(seed=7, per_class=10)


@pytest.fixture(scope="module")
def dataset(scenes):
    """40 scenes with boxes; the columns deliberately not called image/label."""
    return datasets.Dataset.from_dict({"picture": [Image.fromarray(s.image) for s in scenes],
                                       "shape": [s.label for s in scenes], "box": [list(s.box) for s in scenes]},
                                      features=FEATURES)


def test_explain_streams_a_dataset_and_its_maps_round_trip_as_a_dataset(dataset, scenes, tmp_path):
    streamed = explain(MODEL, dataset, batch_size=8)
    assert not isinstance(streamed, list)  # a generator: one batch at a time
    out = to_dataset(streamed, cache_dir=str(tmp_path))
    assert isinstance(out, datasets.Dataset) and len(out) == len(scenes)
    rows = out.with_format("numpy")
    for i in (0, 13, 39):
        single = explain(MODEL, scenes[i].image)
        row = rows[i]
        assert row["source"] == f"row {i}" and list(row["labels"]) == single.labels
        assert row["heatmaps"].dtype == np.float32 and row["heatmaps"].shape == single.heatmaps.shape
        np.testing.assert_allclose(row["heatmaps"], single.heatmaps, atol=1e-5)
        np.testing.assert_array_equal(row["coverage"], single.coverage)
    saved = tmp_path / "saved"
    out.save_to_disk(str(saved))  # what push_to_hub publishes: plain Arrow columns
    back = datasets.load_from_disk(str(saved)).with_format("numpy")
    np.testing.assert_array_equal(back[5]["heatmaps"], rows[5]["heatmaps"])


def test_evaluate_reads_a_dataset_with_named_columns(dataset):
    result = xai_recipes.evaluate(MODEL, dataset, methods=["gradcam"], metrics=["pointing", "energy"],
                                  image_column="picture", label_column="shape", box_column="box")
    assert len(result.rows) == len(dataset)
    assert result.rows[0]["image"] == "row 0" and result.rows[0]["label"] == SHAPES[0]
    assert 0 < result.summary["gradcam"]["energy"] <= 1
    with pytest.raises(DatasetError, match="box_column"):
        xai_recipes.evaluate(MODEL, dataset, methods=["gradcam"], metrics=["pointing"])


def test_audit_of_a_dataset_equals_the_audit_of_the_same_list(dataset, scenes):
    from_dataset = audit(MODEL, dataset, box_column="box", figures=False, n_concepts=2)
    from_list = audit(MODEL, [(s.image, SHAPES[s.label], s.box) for s in scenes], figures=False, n_concepts=2)
    assert [c.label for c in from_dataset.classes] == list(SHAPES)
    for a, b in zip(from_dataset.classes, from_list.classes):
        assert [r.cluster for r in a.images] == [r.cluster for r in b.images]
        assert [r.object_share for r in a.images] == pytest.approx([r.object_share for r in b.images], abs=1e-6)


def test_a_pipeline_is_accepted_wherever_a_model_is(scenes):
    from transformers import pipeline

    pipe = pipeline("image-classification", model=MODEL, device="cpu")
    image = Image.fromarray(scenes[3].image)
    np.testing.assert_allclose(explain(pipe, image).heatmaps, explain(MODEL, image).heatmaps, atol=1e-6)
    assert xai_recipes.describe(pipe).recipe == "resnet"
    result = audit(pipe, [(s.image, SHAPES[s.label]) for s in scenes[:20]], figures=False, n_concepts=2)
    assert result.model == "ResNetForImageClassification" and len(result.classes) == 2


def test_a_dataset_without_an_obvious_image_column_is_refused_by_name():
    two = datasets.Dataset.from_dict({"a": [Image.new("RGB", (8, 8))], "b": [Image.new("RGB", (8, 8))]},
                                     features=datasets.Features({"a": datasets.Image(), "b": datasets.Image()}))
    with pytest.raises(DatasetError, match="2 Image columns"):
        list(explain(MODEL, two))


# --------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class folders of 64 held-out scenes (16 per class, 12 of the triangles marked)."""
    root = tmp_path_factory.mktemp("classes")
    for i, s in enumerate(held_out(seed=11, per_class=16)):
        (root / SHAPES[s.label]).mkdir(exist_ok=True)
        Image.fromarray(s.image).save(root / SHAPES[s.label] / f"{i:03d}.png")
    return root


def test_audit_on_ray_gives_the_clusters_of_one_process(local_ray, folder):
    single = audit(MODEL, folder, figures=False, n_concepts=2)
    on_ray = audit(MODEL, folder, figures=False, n_concepts=2, ray=True, concurrency=1, batch_size=16)
    assert on_ray.settings["ray"] and not single.settings["ray"]
    assert [c.label for c in on_ray.classes] == [c.label for c in single.classes] == list(SHAPES)
    for a, b in zip(single.classes, on_ray.classes):
        assert [r.source for r in a.images] == [r.source for r in b.images]
        assert [r.cluster for r in a.images] == [r.cluster for r in b.images]
        assert [c.size for c in a.clusters] == [c.size for c in b.clusters]
        assert [c.flags for c in a.clusters] == [c.flags for c in b.clusters]
        for x, y in zip(a.clusters, b.clusters):
            np.testing.assert_allclose(x.mean_map, y.mean_map, atol=1e-5)
    assert single.flagged == on_ray.flagged


def test_explain_dataset_rows_become_a_dataset_with_the_maps_of_explain(local_ray, folder, tmp_path):
    from xai_recipes.ray import explain_dataset

    files = sorted(str(p) for p in folder.rglob("*.png"))[:6]
    rows = explain_dataset(files, MODEL, batch_size=3, concurrency=1)
    out = to_dataset(rows, cache_dir=str(tmp_path)).with_format("numpy")
    assert sorted(out["source"]) == files
    for row in out:
        np.testing.assert_allclose(row["heatmaps"], explain(MODEL, row["source"]).heatmaps, atol=1e-4)
