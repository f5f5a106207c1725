"""Data sets on Ray Data (xai_recipes.ray): the same maps as explain(), failed rows, resumable output, the CLI.

One local Ray (2 CPUs, a small object store) serves the whole module; the trained tiny ResNet is
loaded by folder in each actor.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from synthetic import make_set

from conftest import TRAINED

import ray  # the [ray] extra is part of [dev]: .ci/run installs it
import xai_recipes
from xai_recipes import explain
from xai_recipes.cli import main

MODEL = str(TRAINED / "resnet")
SIZES = [(64, 64), (72, 96), (96, 64), (80, 80)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five small PNG/JPEG images (one JPEG stored sideways with an EXIF rotation) and one broken file."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    for i, s in enumerate(make_set(7, 4, SIZES)):
        Image.fromarray(s.image).save(folder / ("sub" if i == 2 else ".") / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(make_set(8, 1, [(72, 120)])[0].image).save(folder / "rotated.jpg", exif=exif, quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


def _files(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.is_file())


def _by_source(rows):
    return {r["source"]: r for r in rows}


def test_maps_equal_single_process_explain_and_bad_images_are_failed_rows(local_ray, images, tmp_path):
    from xai_recipes.ray import explain_dataset

    result = explain_dataset(images, MODEL, top_k=2, batch_size=3, concurrency=2).materialize()
    rows = _by_source(result.take_all())
    good = [f for f in _files(images) if not f.endswith("broken.jpg")]
    assert sorted(rows) == sorted(_files(images))
    for path in good:
        single, row = explain(MODEL, path, top_k=2), rows[path]
        assert row["error"] is None and list(row["indices"]) == single.indices and list(row["labels"]) == single.labels
        assert row["heatmaps"].shape == single.heatmaps.shape and row["heatmaps"].dtype == np.float32
        np.testing.assert_allclose(row["heatmaps"], single.heatmaps, atol=1e-4)
        np.testing.assert_array_equal(row["coverage"], single.coverage)
        np.testing.assert_allclose(row["scores"], single.scores, atol=1e-5)
        assert [tuple(p) for p in json.loads(row["predictions"])][0][:2] == single.predictions[0][:2]
        assert row["method"] == single.method and row["recipe"] == single.recipe
    assert Image.open(images / "rotated.jpg").size == (120, 72)  # stored 72 px tall, shown (and explained) upright
    assert rows[str(images / "rotated.jpg")]["heatmaps"].shape[1:] == (120, 72)

    broken = rows[str(images / "broken.jpg")]
    assert broken["error"].startswith("ImageError: cannot decode") and str(images / "broken.jpg") in broken["error"]
    assert "xai-recipes-ray-" not in broken["error"]  # the actor's scratch copy is not named
    assert list(broken["indices"]) == [] and broken["heatmaps"].shape == (0, 0, 0)

    result.write_parquet(str(tmp_path / "parquet"))
    back = _by_source(ray.data.read_parquet(str(tmp_path / "parquet")).take_all())
    assert sorted(back) == sorted(rows)
    np.testing.assert_array_equal(back[good[0]]["heatmaps"], rows[good[0]]["heatmaps"])


def test_a_ray_dataset_of_decoded_images(local_ray, images):
    from xai_recipes.ray import explain_dataset

    pngs = [f for f in _files(images) if f.endswith(".png")][:2]
    data = ray.data.read_images(pngs, include_paths=True, mode="RGB")
    rows = _by_source(explain_dataset(data, MODEL, method="gradcam", batch_size=2, concurrency=1).take_all())
    assert len(rows) == 2
    for path, row in rows.items():
        np.testing.assert_allclose(row["heatmaps"], explain(MODEL, path, method="gradcam").heatmaps, atol=1e-4)


def test_a_killed_run_resumes_without_explaining_written_images_again(local_ray, images, tmp_path):
    from xai_recipes.ray import explain_dataset, is_written, output_base

    out = tmp_path / "out"
    files = [f for f in _files(images) if not f.endswith("broken.jpg")]  # 5; failed images are retried on reruns
    first = explain_dataset(files[:2], MODEL, batch_size=2, concurrency=1, output=out).take_all()
    assert sorted(r["source"] for r in first) == files[:2]
    written = {f: output_base(f, out) for f in files[:2]}
    stamps = {f: [os.stat(str(b) + s).st_mtime_ns for s in (".npz", ".json")] for f, b in written.items()}
    # what a run killed while writing its 3rd image leaves: the .npz renamed into place, no .json yet,
    # and a half-written file in its actor's staging folder
    victim = files[2]
    Image.new("RGB", (4, 4)).save(str(output_base(victim, out)) + ".npz", format="PNG")
    (out / ".xai-recipes-partial" / "dead-actor").mkdir(parents=True)
    (out / ".xai-recipes-partial" / "dead-actor" / "half.npz").write_bytes(b"PK")
    assert not is_written(victim, out)

    second = explain_dataset(files, MODEL, batch_size=2, concurrency=1, output=out).take_all()
    redone = sorted(r["source"] for r in second)
    assert redone == files[2:]  # only the images without a .json
    for f, base in written.items():  # not rewritten
        assert [os.stat(str(base) + s).st_mtime_ns for s in (".npz", ".json")] == stamps[f]
    assert all(is_written(f, out) for f in files)
    assert all("heatmaps" not in r and r["error"] is None for r in second)  # the maps are in the files
    assert sorted(r["output"] for r in second) == sorted(str(output_base(f, out)) + ".json" for f in redone)
    loaded = xai_recipes.load(str(output_base(victim, out)) + ".json")  # the stale .npz was replaced
    np.testing.assert_allclose(loaded.heatmaps, explain(MODEL, victim).heatmaps, atol=1e-4)
    assert loaded.source == victim
    assert (out / ".xai-recipes-partial" / "dead-actor").exists()  # another run's files are left alone

    assert explain_dataset(files, MODEL, output=out).take_all() == []  # all written: nothing read, no actor


def test_cli_ray_writes_the_files(local_ray, images, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["explain", MODEL, str(images), "--out", str(out), "--quiet", "--format", "json", "--ray"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # broken.jpg skipped, the rest written
    assert len(report["results"]) == 5 and report["already_written"] == 0
    assert [s["image"] for s in report["skipped"]] == [str(images / "broken.jpg")]
    assert "ImageError" in report["skipped"][0]["error"]
    assert (out / "sub" / "img2.png.json").is_file() and (out / "sub" / "img2.png.png").is_file()
    rotated = {r["image"]: r for r in report["results"]}[str(images / "rotated.jpg")]
    assert rotated["maps"] == str(out / "rotated.jpg.json")
    loaded = xai_recipes.load(out / "rotated.jpg.npz")
    assert loaded.labels == rotated["explained"]
    np.testing.assert_allclose(loaded.heatmaps, explain(MODEL, images / "rotated.jpg").heatmaps, atol=1e-4)
    assert not (out / ".xai-recipes-partial").exists()


def test_a_bad_target_stops_the_job_with_its_typed_error(local_ray, images, tmp_path):
    from xai_recipes.ray import explain_dataset

    with pytest.raises(xai_recipes.UnknownLabelError, match="^label 'giraffe' is not in this model's id2label"):
        explain_dataset([images / "img0.png"], MODEL, target="giraffe", concurrency=1, output=tmp_path)


def test_bad_arguments_fail_before_any_actor_starts():
    from xai_recipes.errors import UnknownMethodError, XAIRecipesError
    from xai_recipes.ray import explain_dataset

    with pytest.raises(UnknownMethodError):
        explain_dataset(["x.png"], MODEL, method="no-such-method")
    with pytest.raises(XAIRecipesError, match="takes no option"):
        explain_dataset(["x.png"], MODEL, method="gradcam", n_components=3)
    with pytest.raises(xai_recipes.ImageError, match="do not exist"):
        explain_dataset(["/nonexistent/x.png"], MODEL)


def test_the_core_does_not_import_ray():
    code = "import sys, xai_recipes; xai_recipes.explain; from xai_recipes import cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


KILLED_RUN = """
import logging, sys
import ray
from xai_recipes.ray import explain_dataset
ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
         logging_level=logging.WARNING)
ray.data.DataContext.get_current().enable_progress_bars = False
explain_dataset(sys.argv[1], sys.argv[2], batch_size=1, concurrency=1, output=sys.argv[3]).take_all()
"""


def test_a_really_killed_run_resumes_without_explaining_written_images_again(local_ray, tmp_path):
    """A separate process runs the job on its own Ray; it and every process its Ray started are SIGKILLed once
    some images are written; the rerun explains only the rest and leaves the written files untouched."""
    import contextlib
    import time

    import psutil

    from xai_recipes.ray import explain_dataset, is_written, output_base

    folder, out = tmp_path / "many", tmp_path / "out"
    folder.mkdir()
    for i, s in enumerate(make_set(9, 300, [(64, 64)])):
        Image.fromarray(s.image).save(folder / f"img{i:03d}.png")
    files = _files(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own Ray, not this module's
    job = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(folder), MODEL, str(out)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while sum(is_written(f, out, folder) for f in files) < 3 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
    finally:  # the driver and every process its Ray started (GCS, raylet, the actor's worker), as a crash would
        tree = [job_process := psutil.Process(job.pid), *job_process.children(recursive=True)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(tree, timeout=30)
        job.wait()
    written = [f for f in files if is_written(f, out, folder)]
    assert written, f"the job wrote nothing before it was killed: {job.stderr.read().decode()[-2000:]}"
    assert 3 <= len(written) < len(files), f"{len(written)} of {len(files)} written when the job was killed"
    stamps = {f: os.stat(str(output_base(f, out, folder)) + ".json").st_mtime_ns for f in written}

    rerun = explain_dataset(str(folder), MODEL, batch_size=16, concurrency=1, output=out).take_all()
    assert sorted(r["source"] for r in rerun) == sorted(set(files) - set(written))
    assert {f: os.stat(str(output_base(f, out, folder)) + ".json").st_mtime_ns for f in written} == stamps
    assert all(is_written(f, out, folder) for f in files)


def test_zero_shot_prompts_on_ray_equal_single_process_explain(local_ray, images, tmp_path):
    """A saved CLIP folder (random weights, offline tokenizer) explained by prompts on Ray actors."""
    import torch

    from xai_recipes.ray import explain_dataset
    from zero_shot_models import as_processor, random_clip

    model, tokenizer, image_processor = random_clip(torch.float32)
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    as_processor(tokenizer, image_processor).save_pretrained(folder)
    labels = ["a dog", "a cat on a sofa", "a red car"]
    good = [f for f in _files(images) if not f.endswith("broken.jpg")][:2]
    rows = _by_source(explain_dataset(good, str(folder), target=["a dog", "a red car"], labels=labels,
                                      method="gradcam", batch_size=2, concurrency=1).take_all())
    for path in good:
        single, row = explain(str(folder), path, target=["a dog", "a red car"], labels=labels, method="gradcam"), rows[path]
        assert row["error"] is None and list(row["labels"]) == single.labels == ["a dog", "a red car"]
        np.testing.assert_allclose(row["scores"], single.scores, atol=1e-5)
        np.testing.assert_allclose(row["heatmaps"], single.heatmaps, atol=1e-4)
