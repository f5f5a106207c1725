"""Detections and segments beyond ``explain()``: saved explanations, figures, the CLI, the web page, evaluate and Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from object_models import IMAGE, random_detr, random_segformer
from PIL import Image

import xai_recipes
from xai_recipes import cli, explain
from xai_recipes.evaluation_objects import Annotation, Objects, load_objects

GREEN = np.array([0, 255, 0])


@pytest.fixture(scope="module")
def detr_folder(tmp_path_factory):
    model, processor = random_detr()
    folder = tmp_path_factory.mktemp("detr")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.fromarray(IMAGE).save(folder.parent / "scene.png")
    return folder


@pytest.fixture(scope="module")
def segformer_folder(tmp_path_factory):
    model, processor = random_segformer()
    folder = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_a_detection_round_trips_with_its_boxes_and_its_figure_draws_them(detr_folder, tmp_path):
    exp = explain(detr_folder, IMAGE, threshold=0.0, top_k=2)
    assert exp.task == "object-detection" and len(exp.boxes) == 2 and exp.masks is None
    files = exp.save(tmp_path / "det.npz")
    back = xai_recipes.load(files[0])
    assert back.boxes == [tuple(b) for b in exp.boxes] and back.labels == exp.labels and back.scores == exp.scores
    np.testing.assert_array_equal(back.heatmaps, exp.heatmaps)
    overlay = np.asarray(exp.overlay(0))
    x0, y0, x1, y1 = (int(round(v)) for v in exp.boxes[0])
    edge = overlay[y0, x0 + 1:x1]  # the box's top edge
    assert (edge == GREEN).all(axis=-1).mean() > 0.9
    inside = overlay[(y0 + y1) // 2, (x0 + x1) // 2]
    assert not (inside == GREEN).all()


def test_a_segment_round_trips_with_its_mask_and_its_figure_outlines_it(segformer_folder, tmp_path):
    exp = explain(segformer_folder, IMAGE, top_k=2)
    assert exp.task == "image-segmentation" and exp.masks.shape == exp.heatmaps.shape and exp.boxes is None
    back = xai_recipes.load(exp.save(tmp_path / "seg.npz")[0])
    np.testing.assert_array_equal(back.masks, exp.masks)
    overlay = np.asarray(exp.overlay(0))
    outlined = (overlay == GREEN).all(axis=-1)
    assert outlined.any() and outlined[~exp.masks[0]].sum() <= outlined.sum()  # drawn on the region's border
    assert not outlined[exp.masks[0] & ~np.roll(exp.masks[0], 3, 0) & ~np.roll(exp.masks[0], -3, 0)].all()


def test_a_saved_explanation_with_boxes_of_the_wrong_count_is_refused(detr_folder, tmp_path):
    exp = explain(detr_folder, IMAGE, threshold=0.0, top_k=2)
    meta = exp.save(tmp_path / "det.npz")[1]
    info = json.loads(meta.read_text())
    info["boxes"] = info["boxes"][:1]
    meta.write_text(json.dumps(info))
    with pytest.raises(xai_recipes.ExplanationFileError, match="boxes"):
        xai_recipes.load(meta)


def test_the_cli_lists_each_detection_with_its_box(detr_folder, tmp_path, capsys):
    image = detr_folder.parent / "scene.png"
    assert cli.main(["explain", str(detr_folder), str(image), "--threshold", "0", "--top-k", "3",
                     "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    reference = explain(detr_folder, IMAGE, threshold=0.0, top_k=3)
    for label, score, box in zip(reference.labels, reference.scores, reference.boxes):
        assert f"{label:22} {score:6.3f}  box ({', '.join(f'{round(v, 1):g}' for v in box)})" in out
    assert cli.main(["explain", str(detr_folder), str(image), "--threshold", "0", "--box", "20,15,60,45",
                     "--out", str(tmp_path / "o"), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["task"] == "object-detection" and len(row["boxes"]) == 1 and row["regions"] is None
    assert cli.main(["explain", str(detr_folder), str(image), "--box", "20,15,60", "--out", str(tmp_path / "o")]) == 2
    assert "4 comma-separated" in capsys.readouterr().err


def test_the_cli_explains_a_region(segformer_folder, detr_folder, tmp_path, capsys):
    image = detr_folder.parent / "scene.png"
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for region in ("20,10,50,30", str(tmp_path / "mask.png")):
        assert cli.main(["explain", str(segformer_folder), str(image), "--region", region, "--target", "a",
                         "--out", str(tmp_path / "o"), "--format", "json"]) == 0
        row = json.loads(capsys.readouterr().out)["results"][0]
        assert row["explained"] == ["a"] and row["regions"] == [600]


def test_the_web_page_draws_detections_and_offers_each_in_its_picker(detr_folder, tmp_path):
    pytest.importorskip("gradio")
    from xai_recipes import web

    image = detr_folder.parent / "scene.png"
    quiet = lambda *a, **k: None  # noqa: E731
    status, overlays, predictions, concepts, heads, download, picker = web.explain_image(
        str(image), None, str(detr_folder), None, None, 3, None, 0.0, progress=quiet)
    assert status.startswith("Explained with **detr"), status
    assert len(overlays) == len(picker["choices"]) >= 1 and picker["visible"]
    first = picker["choices"][0]
    label, key = first if isinstance(first, (tuple, list)) else (first, first)
    assert label.startswith("0 · ") and "box (" in label
    status, alone, *_ = web.explain_image(str(image), None, str(detr_folder), None, [key], 3, None, 0.0,
                                          progress=quiet)
    assert web.is_detector_ref(str(detr_folder)) and not web.is_detector_ref(web.DEMO_MODEL)
    assert len(alone) == 1 and alone[0][1] == overlays[0][1]


def test_evaluate_scores_each_detection_against_the_annotation_it_matches(detr_folder, tmp_path):
    reference = explain(detr_folder, IMAGE, threshold=0.0, top_k=2, method="gradcam")
    x0, y0, x1, y1 = reference.boxes[0]
    objects = [Objects(IMAGE, [Annotation(reference.labels[0], (x0, y0, x1, y1)), Annotation("zzz", (0, 0, 5, 5))],
                       "scene")]
    result = xai_recipes.evaluate(detr_folder, objects, methods=["gradcam"], threshold=0.0, top_k=2)
    assert result.metrics == ["pointing", "energy"]
    assert [r["label"] for r in result.rows] == reference.labels
    row = result.rows[0]
    assert row["matched"] and row["iou"] > 0.99
    region = np.zeros((60, 80), bool)
    region[int(round(y0)):int(round(y1)) + 1, int(round(x0)):int(round(x1)) + 1] = True
    assert row["energy"] == pytest.approx(reference.heatmaps[0][region].sum() / reference.heatmaps[0].sum(), rel=1e-5)
    with pytest.raises(xai_recipes.XAIRecipesError, match="deletion"):
        xai_recipes.evaluate(detr_folder, objects, methods=["gradcam"], metrics=["deletion"], threshold=0.0)


def test_evaluate_reads_coco_annotations_with_several_categories_per_image(detr_folder, tmp_path):
    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    mask = np.zeros((60, 80), np.uint8)
    mask[15:45, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "a-mask.png")
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [20, 15, 40, 30]},
                        {"image_id": 1, "category_id": 2, "mask": "a-mask.png"}]}))
    objects = load_objects(tmp_path)
    assert [a.label for a in objects[0].annotations] == ["a", "b"]
    assert objects[0].annotations[0].box == (20, 15, 59, 44) and objects[0].annotations[1].mask.sum() == 30 * 40
    result = xai_recipes.evaluate(detr_folder, tmp_path, methods=["gradcam"], threshold=0.0)
    assert result.rows and all(set(r) >= {"matched", "pointing", "energy"} for r in result.rows)


def test_ray_rows_carry_boxes_and_masks(detr_folder, segformer_folder, tmp_path):
    ray = pytest.importorskip("ray")
    from xai_recipes.ray import explain_dataset

    image = detr_folder.parent / "scene.png"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        check_ray_rows(explain_dataset, image, detr_folder, segformer_folder)
    finally:
        if started:  # tests/test_ray.py starts its own
            ray.shutdown()


def check_ray_rows(explain_dataset, image, detr_folder, segformer_folder) -> None:
    (row,) = explain_dataset([str(image)], str(detr_folder), threshold=0.0, top_k=2, concurrency=1).take_all()
    direct = explain(detr_folder, image, threshold=0.0, top_k=2)
    assert json.loads(row["boxes"]) == [list(b) for b in direct.boxes] and list(row["labels"]) == direct.labels
    np.testing.assert_allclose(row["heatmaps"], direct.heatmaps, atol=1e-6)
    (row,) = explain_dataset([str(image)], str(segformer_folder), top_k=2, concurrency=1).take_all()
    direct = explain(segformer_folder, image, top_k=2)
    np.testing.assert_array_equal(row["masks"], direct.masks)
    assert json.loads(row["boxes"]) is None


@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_the_users_model_is_unchanged_with_eight_threads(kind):
    from concurrent.futures import ThreadPoolExecutor

    from hostile import model_state, state_differences

    model, processor = random_detr() if kind == "detector" else random_segformer()
    model.train()
    before = model_state(model)
    region = np.zeros((60, 80), bool)
    region[5:40, 10:50] = True
    calls = ([{"threshold": 0.0, "top_k": 3}, {"threshold": 0.0, "target": (20, 15, 60, 45)}] if kind == "detector" else
             [{"top_k": 3}, {"region": region, "target": "a"}])
    alone = [explain(model, IMAGE, processor=processor, **c) for c in calls]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (i % 2, explain(model, IMAGE, processor=processor, **calls[i % 2])), range(16)))
    for i, exp in results:
        assert exp.boxes == alone[i].boxes and exp.labels == alone[i].labels
        np.testing.assert_allclose(exp.heatmaps, alone[i].heatmaps, atol=1e-5)
        if exp.masks is not None:
            np.testing.assert_array_equal(exp.masks, alone[i].masks)
    assert not state_differences(before, model_state(model))
    assert torch.is_grad_enabled()


def test_box_terms_add_the_iou_with_the_unperturbed_box_as_grad_cams_box_score_target():
    from xai_recipes.tasks.detection import box_iou

    model, processor = random_detr()
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert box_iou(boxes, boxes).item() == pytest.approx(1.0)
    assert box_iou(torch.tensor([[0.5, 0.5, 0.2, 0.4]]), torch.tensor([[0.6, 0.5, 0.2, 0.4]])).item() == pytest.approx(1 / 3)
    plain = explain(model, IMAGE, processor=processor, threshold=0.0, top_k=2, method="occlusion")
    boxed = explain(model, IMAGE, processor=processor, threshold=0.0, top_k=2, method="occlusion", box_terms=True)
    assert boxed.boxes == plain.boxes and boxed.scores == plain.scores  # the detections are the model's own
    assert np.abs(boxed.heatmaps - plain.heatmaps).max() > 1e-3  # occluding moves the boxes: the IoU term counts
    with pytest.raises(xai_recipes.XAIRecipesError, match="box_terms"):
        explain(model, IMAGE, processor=processor, threshold=0.0, box_terms="yes")
