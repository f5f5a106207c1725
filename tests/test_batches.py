"""Many images: batches through one model load, streamed, bad images skipped; results saved and loaded."""

import warnings

import numpy as np
import pytest
from conftest import tiny_model
from PIL import Image
from transformers import ConvNextImageProcessor, ViTImageProcessor

import xai_recipes
from xai_recipes import ImageError, ImageSkippedWarning, explain

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})
RNG = np.random.default_rng(3)
IMAGES = [RNG.integers(0, 256, (60 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8) for i in range(7)]


@pytest.fixture(scope="module")
def resnet():
    return tiny_model("resnet")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_batches_give_the_maps_of_single_calls_in_order(resnet, method):
    single = [explain(resnet, im, processor=PROCESSOR, method=method, top_k=2) for im in IMAGES]
    batched = explain(resnet, IMAGES, processor=PROCESSOR, method=method, top_k=2, batch_size=3)
    assert not isinstance(batched, list)  # a generator
    batched = list(batched)
    assert [e.source for e in batched] == [f"<image {i}>" for i in range(7)]
    for one, many in zip(single, batched):
        assert many.indices == one.indices and many.heatmaps.shape == one.heatmaps.shape
        np.testing.assert_allclose(many.heatmaps, one.heatmaps, atol=1e-4)


def test_inputs_of_different_model_sizes_share_a_batch(resnet):
    """A processor that keeps the image size gives pixel tensors of several shapes in one batch."""
    keep = ConvNextImageProcessor(do_resize=False)
    single = [explain(resnet, im, processor=keep, target=[0, 3]) for im in IMAGES[:4]]
    batched = list(explain(resnet, IMAGES[:4], processor=keep, target=[0, 3], batch_size=4))
    for one, many in zip(single, batched):
        np.testing.assert_allclose(many.heatmaps, one.heatmaps, atol=1e-4)


def test_results_stream_one_batch_at_a_time(resnet):
    consumed = []

    def images():
        for i in range(1000):
            consumed.append(i)
            yield IMAGES[i % 7]

    stream = explain(resnet, images(), processor=PROCESSOR, batch_size=4)
    assert consumed == []  # nothing runs before the first result is asked for
    first = next(stream)
    assert first.heatmaps.shape == (1, 60, 90) and len(consumed) == 4
    for _ in range(4):
        next(stream)
    assert len(consumed) == 8


def test_a_folder_is_explained_recursively_bad_files_skipped(resnet, tmp_path):
    (tmp_path / "sub").mkdir()
    for i, im in enumerate(IMAGES[:3]):
        Image.fromarray(im).save(tmp_path / ("sub" if i == 1 else ".") / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("not an image, not even tried")
    with pytest.warns(ImageSkippedWarning, match="broken.jpg"):
        results = list(explain(resnet, tmp_path, processor=PROCESSOR, batch_size=2))
    assert [r.source for r in results] == [str(tmp_path / "img0.png"), str(tmp_path / "img2.png"), str(tmp_path / "sub/img1.png")]
    errors = []
    list(explain(resnet, tmp_path, processor=PROCESSOR, on_error=lambda source, err: errors.append((source, err))))
    assert len(errors) == 1 and isinstance(errors[0][1], ImageError) and errors[0][0].endswith("broken.jpg")
    with pytest.raises(ImageError, match="broken.jpg"), warnings.catch_warnings():
        list(explain(resnet, tmp_path, processor=PROCESSOR, on_error="raise"))


def test_an_empty_folder_fails_at_once(resnet, tmp_path):
    with pytest.raises(ImageError, match="no image files"):
        explain(resnet, tmp_path, processor=PROCESSOR)


def test_save_and_load_round_trip(resnet, tmp_path):
    crop = ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.8)  # a crop: coverage matters
    exp = explain(resnet, IMAGES[2], processor=crop, top_k=2)
    written = exp.save(tmp_path / "result.npz")
    assert sorted(p.name for p in written) == ["result.json", "result.npz"]
    back = xai_recipes.load(tmp_path / "result.json")
    np.testing.assert_array_equal(back.heatmaps, exp.heatmaps)
    np.testing.assert_array_equal(back.coverage, exp.coverage)
    assert not exp.coverage.all()
    assert np.array_equal(np.asarray(back.image), np.asarray(exp.image))
    for name in ("indices", "labels", "scores", "predictions", "recipe", "method", "target_layers", "geometry"):
        assert getattr(back, name) == getattr(exp, name), name
    assert back.overlay(1).tobytes() == exp.overlay(1).tobytes()  # re-rendered from the loaded result
    with np.load(tmp_path / "result.npz", allow_pickle=False) as arrays:  # no pickle inside
        assert set(arrays.files) == {"heatmaps", "coverage", "image"}


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(xai_recipes.XAIRecipesError, match="cannot load an explanation"):
        xai_recipes.load(tmp_path / "x.json")
    with pytest.raises(xai_recipes.XAIRecipesError, match="cannot load an explanation"):
        xai_recipes.load(tmp_path / "missing.npz")


def test_memory_stays_flat_over_1000_calls(resnet):
    """No growth from hooks, graphs or caches beyond their bound (resident memory and live tensors)."""
    import gc

    import torch

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def tensors():
        gc.collect()
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    images = [RNG.integers(0, 256, (40 + i % 30, 50, 3), dtype=np.uint8) for i in range(100)]  # 30 sizes: 30 geometries
    for im in images:
        explain(resnet, im, processor=PROCESSOR, top_k=2)
    before, live = rss_mib(), tensors()
    for i in range(1000):
        explain(resnet, images[i % 100], processor=PROCESSOR, top_k=2, method="gradcam" if i % 2 else "layercam")
    growth = rss_mib() - before
    assert tensors() == live
    assert growth < 8, f"resident memory grew by {growth:.1f} MiB over 1000 calls"
