"""evaluate(): every metric can fail — a perfect map scores best, a random one near chance, an
inverted one worst — and it runs from Python and the CLI on folders with boxes and with masks."""

import json

import numpy as np
import pytest
from PIL import Image
from synthetic import SHAPES, make_set

import xai_recipes
from xai_recipes import cli
from xai_recipes.evaluation import (
    Annotated,
    auc,
    energy,
    evaluate,
    load_annotations,
    perturbation_curves,
    pointing,
    probabilities,
    road,
    score_map,
    to_input,
)

SAMPLES = make_set(seed=31, n=8, sizes=[(72, 96), (80, 80)])


def box_mask(sample):
    mask = np.zeros(sample.image.shape[:2], bool)
    x0, y0, x1, y1 = sample.box
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def maps(sample, rng):
    """(perfect, random, inverted) heatmaps for a sample: the object, blurred noise, everything else."""
    import cv2

    region = box_mask(sample).astype(np.float32)
    perfect = cv2.GaussianBlur(region, (0, 0), 2) * region
    noise = cv2.GaussianBlur(rng.random(region.shape).astype(np.float32), (0, 0), 4)
    return perfect, noise, 1 - region


def test_localisation_metrics_rank_perfect_random_inverted():
    rng = np.random.default_rng(0)
    scores = {"perfect": [], "random": [], "inverted": []}
    for s in SAMPLES:
        region = box_mask(s)
        for name, m in zip(scores, maps(s, rng)):
            scores[name].append((pointing(m, region, tolerance=0), energy(m, region), region.mean()))
    mean = {k: np.mean(v, axis=0) for k, v in scores.items()}
    assert mean["perfect"][0] == 1 and mean["perfect"][1] > 0.99
    assert mean["inverted"][0] == 0 and mean["inverted"][1] == 0
    share = mean["random"][2]  # a random map's energy on the object ≈ the object's area share
    assert abs(mean["random"][1] - share) < 0.05 and mean["random"][0] <= 0.5
    # tolerance: a peak 10 px beside the box counts at 15 px, not at 5 px
    s = SAMPLES[0]
    beside = np.zeros(s.image.shape[:2], np.float32)
    beside[s.box[1], min(s.box[2] + 10, beside.shape[1] - 1)] = 1
    assert pointing(beside, box_mask(s), tolerance=15) == 1 and pointing(beside, box_mask(s), tolerance=5) == 0


def test_maps_resampled_onto_the_model_input_come_back_through_the_geometry(trained_dir):
    """to_input inverts Geometry.to_image where the model saw the image (ConvNeXt-style crop): a
    linear ramp (which bilinear resampling keeps exactly) comes back unchanged inside the crop."""
    s = SAMPLES[0]
    geometry = xai_recipes.explain(str(trained_dir / "resnet"), s.image, method="gradcam").geometry
    h, w = s.image.shape[:2]
    ramp = (np.arange(w)[None, :] + 2 * np.arange(h)[:, None]).astype(np.float32) / (w + 2 * h)
    on_input = to_input(ramp, geometry)
    assert on_input.shape == geometry.input_size
    back, coverage = geometry.to_image(on_input[None])
    import cv2

    inner = cv2.erode(coverage.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # not the blended border
    assert inner.sum() > 0.5 * coverage.sum()
    np.testing.assert_allclose(back[0][inner], ramp[inner], atol=2e-3)


def test_perturbation_sequences_and_auc():
    s = SAMPLES[0]
    perfect, _, _ = maps(s, np.random.default_rng(0))
    deletion, insertion = perturbation_curves(perfect, s.image, steps=4)
    assert len(deletion) == len(insertion) == 5
    np.testing.assert_array_equal(deletion[0], s.image)  # nothing deleted yet
    np.testing.assert_array_equal(insertion[-1], s.image)  # everything inserted
    np.testing.assert_array_equal(deletion[-1], insertion[0])  # both ends: the blurred image
    changed = (deletion[1] != s.image).any(-1)  # the first quarter deleted: the map's top pixels
    assert changed.sum() > 0 and perfect[changed].min() >= np.quantile(perfect, 0.74)
    assert auc([1, 1, 1]) == 1 and auc([1, 0]) == 0.5


@pytest.fixture(scope="module")
def resnet(trained_dir):
    return str(trained_dir / "resnet")


def test_deletion_and_insertion_rank_perfect_random_inverted(resnet):
    """On the trained ResNet (its evidence is the object): deleting the object first drops the
    probability fastest (lowest deletion AUC), inserting it first raises it fastest."""
    from xai_recipes.loading import load

    model, processor = load(resnet)
    recipe = xai_recipes.find_recipe(model)
    rng = np.random.default_rng(1)
    results = {"perfect": [], "random": [], "inverted": []}
    for s in SAMPLES:
        scorer = lambda images, s=s: probabilities(model, processor, recipe, images, s.label)  # noqa: E731
        geometry = xai_recipes.explain(model, s.image, processor=processor, method="gradcam").geometry
        for name, heatmap in zip(results, maps(s, rng)):
            row = score_map(heatmap, s.image, box_mask(s), scorer, steps=8)
            row["road"] = road(model, recipe, processor, Image.fromarray(s.image), to_input(heatmap, geometry), s.label,
                               percentiles=(20, 50, 80))
            results[name].append(row)
    mean = {m: {k: np.mean([r[k] for r in rows]) for k in rows[0]} for m, rows in results.items()}
    assert mean["perfect"]["deletion"] < mean["random"]["deletion"] < mean["inverted"]["deletion"], mean
    assert mean["perfect"]["insertion"] > mean["random"]["insertion"] > mean["inverted"]["insertion"], mean
    assert mean["perfect"]["road"] > mean["random"]["road"] > mean["inverted"]["road"], mean
    assert mean["perfect"]["pointing"] == 1 and mean["inverted"]["pointing"] < 0.5


def write_folder(root, samples, masks: bool):
    root.mkdir()
    images, annotations = [], []
    for i, s in enumerate(samples):
        Image.fromarray(s.image).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        x0, y0, x1, y1 = s.box
        entry = {"image_id": i, "category_id": s.label}
        if masks:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(box_mask(s).astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
            entry["mask"] = f"masks/{i}.png"
        else:
            entry["bbox"] = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
        annotations.append(entry)
    categories = [{"id": i, "name": n} for i, n in enumerate(SHAPES)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "categories": categories,
                                                       "annotations": annotations}))
    return root


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks"])
def test_evaluate_a_folder_from_python_and_the_cli(resnet, tmp_path, capsys, masks):
    folder = write_folder(tmp_path / "data", SAMPLES[:4], masks)
    loaded = load_annotations(folder)
    assert [a.label for a in loaded] == [SHAPES[s.label] for s in SAMPLES[:4]]
    np.testing.assert_array_equal(loaded[0].region(SAMPLES[0].image.shape[:2]), box_mask(SAMPLES[0]))
    result = xai_recipes.evaluate(resnet, folder, methods=["gradcam", "eigencam"], steps=4)
    assert len(result.rows) == 8 and set(result.summary) == {"gradcam", "eigencam"}
    assert result.summary["gradcam"]["pointing"] >= 0.75  # the trained ResNet localises (0.97 on 60 images)
    out = tmp_path / "out"
    assert cli.main(["evaluate", resnet, str(folder), "--method", "gradcam", "--steps", "4", "--format", "json",
                     "--out", str(out), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["direction"]["deletion"] == "lower" and len(printed["rows"]) == 4
    assert printed["summary"]["gradcam"]["pointing"] == pytest.approx(result.summary["gradcam"]["pointing"])
    assert (out / "rows.csv").read_text().count("\n") == 5 and len(list(out.glob("*-gradcam.png"))) == 4
    assert cli.main(["evaluate", resnet, str(folder), "--method", "gradcam", "--steps", "4", "--quiet", "--sanity",
                     "--metric", "pointing"]) == 0
    printed = capsys.readouterr().out
    assert "pointing ↑" in printed and "sanity gradcam: rank correlation after randomisation" in printed


def test_bad_data_gets_typed_errors(resnet, tmp_path):
    with pytest.raises(xai_recipes.DatasetError, match="annotations.json"):
        load_annotations(tmp_path)
    with pytest.raises(xai_recipes.DatasetError, match="neither a box nor a mask"):
        evaluate(resnet, [Annotated(SAMPLES[0].image, 0)])
    with pytest.raises(xai_recipes.XAIRecipesError, match="unknown metric"):
        evaluate(resnet, [(SAMPLES[0].image, 0, SAMPLES[0].box)], metrics=["accuracy"])
    with pytest.raises(xai_recipes.UnknownLabelError):
        evaluate(resnet, [(SAMPLES[0].image, "giraffe", SAMPLES[0].box)])


def test_one_curve_asked_for_sends_only_its_images():
    s = SAMPLES[1]
    perfect, _, _ = maps(s, np.random.default_rng(0))
    sent = []

    def fake(images):  # a "probability" that is the mean brightness: same curve whichever batch it is in
        sent.append(len(images))
        return [float(im.mean()) / 255 for im in images]

    both = score_map(perfect, s.image, box_mask(s), fake, metrics=["deletion", "insertion"], steps=4)
    only = score_map(perfect, s.image, box_mask(s), fake, metrics=["insertion"], steps=4)
    assert sent == [10, 5] and only == {"insertion": both["insertion"]}
