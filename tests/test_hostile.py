"""Hostile input (tests/hostile.py's corpus): a typed error naming the input and the fix, or a valid
explanation; bounded in time; the model left exactly as it was; no pickle or remote code run unless asked.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED
from hostile import (
    EITHER,
    FIX,
    FRAME_COLOURS,
    OK,
    Case,
    bounded,
    detection_cases,
    explanation_cases,
    gam_cases,
    image_cases,
    model_cases,
    model_state,
    ran,
    state_differences,
    prompt_cases,
    region_cases,
    target_cases,
)
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

import xai_recipes
from xai_recipes import XAIRecipesError, explain, registry
from xai_recipes.images import load_image

#: Seconds any one case may take (2 shared CPU cores); header-checked bombs must be refused faster.
LIMIT, BOMB_LIMIT = 60.0, 10.0

CORPUS = Path(tempfile.mkdtemp(prefix="xai-recipes-hostile-"))
atexit.register(shutil.rmtree, CORPUS, True)
IMAGES = image_cases(CORPUS)
TARGETS = target_cases()
MODELS = model_cases(CORPUS, TRAINED / "resnet")
PHOTO = np.asarray(Image.open(CORPUS / "images" / "cmyk.jpg").convert("RGB"))  # any valid picture


@pytest.fixture(scope="module")
def resnet():
    """The trained tiny ResNet, in *train* mode: a call must give it back that way."""
    model = AutoModelForImageClassification.from_pretrained(TRAINED / "resnet")
    return model.train(), AutoImageProcessor.from_pretrained(TRAINED / "resnet")


def check(case: Case, result, error, elapsed: float, n_maps: int | None = None) -> None:
    """The contract: a typed error whose message names the input and the fix, or a valid explanation."""
    limit = BOMB_LIMIT if "bomb" in case.name else LIMIT
    assert elapsed < limit, f"{case.name} took {elapsed:.1f} s (limit {limit:g} s)"
    assert not ran(case.marker), f"{case.name}: code ran (marker {case.marker.name} exists)"
    if error is not None:
        assert isinstance(error, XAIRecipesError), f"{case.name}: untyped {type(error).__name__}: {error}"
        assert case.expect is not OK, f"{case.name}: expected an explanation, got {type(error).__name__}: {error}"
        if case.expect is not EITHER:
            assert isinstance(error, case.expect), f"{case.name}: {type(error).__name__} is not a {case.expect.__name__}"
        message = str(error)
        assert re.search(case.says, message, re.S), f"{case.name}: message does not match {case.says!r}: {message}"
        assert re.search(FIX, message), f"{case.name}: message names no fix: {message}"
        assert len(message) < 2000, f"{case.name}: a {len(message)}-character message"
        return
    assert case.expect in (OK, EITHER), f"{case.name}: expected {case.expect.__name__}, got an explanation"
    exp = result
    t, h, w = exp.heatmaps.shape
    assert (w, h) == exp.image.size and exp.coverage.shape == (h, w) and exp.image.mode == "RGB"
    assert np.isfinite(exp.heatmaps).all() and exp.heatmaps.min() >= 0 and exp.heatmaps.max() <= 1
    assert len(exp.indices) == len(exp.labels) == len(exp.scores) == t
    if n_maps is not None:
        assert t == n_maps


@pytest.mark.parametrize("case", IMAGES, ids=[c.name for c in IMAGES])
def test_image(case, resnet):
    model, processor = resnet
    before = model_state(model)
    result, error, elapsed = bounded(lambda: explain(model, case.make(), processor=processor), LIMIT)
    check(case, result, error, elapsed)
    assert not state_differences(before, model_state(model)), case.name
    if error is None and not case.name.startswith(("array:", "pil:")):
        source = case.make()
        assert result.image.size == load_image(source).size


def test_the_first_frame_of_animations_and_multipage_files_is_explained(resnet):
    model, processor = resnet
    for name in ("animated.gif", "animated.webp", "animated.png", "multi-page.tif"):
        exp = explain(model, CORPUS / "images" / name, processor=processor)
        disc = np.asarray(exp.image)[24, 16].astype(int)  # inside the disc
        assert np.abs(disc - FRAME_COLOURS[0]).max() < 40, f"{name}: {disc} is not the first frame's red"


def test_exif_rotation_gives_the_upright_size_for_files_and_opened_images():
    stored = Image.open(CORPUS / "images" / "exif-rotated-6.jpg")
    assert stored.size == (64, 48)
    assert load_image(CORPUS / "images" / "exif-rotated-6.jpg").size == (48, 64)
    assert load_image(stored).size == (48, 64) and stored.size == (64, 48)  # the user's image untouched


def test_eps_is_never_rendered(monkeypatch):
    """PIL renders EPS by running Ghostscript: refused before anything is parsed or run."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(xai_recipes.ImageError, match="EPS, which xai_recipes never opens"):
        load_image(CORPUS / "images" / "vector.eps")
    assert calls == []
    assert not any(p.suffix == ".eps" for p in xai_recipes.images.image_files(CORPUS / "images"))


def test_a_batch_skips_hostile_files_and_explains_the_rest(resnet):
    model, processor = resnet
    files = sorted((CORPUS / "images").glob("*.png"))
    with pytest.warns(xai_recipes.ImageSkippedWarning):
        results, error, elapsed = bounded(lambda: list(explain(model, files, processor=processor, batch_size=4)), LIMIT)
    assert error is None, error
    good = [c for c in IMAGES if c.name.startswith("file:") and str(c.value).endswith(".png") and c.expect is OK]
    assert {r.source for r in results} >= {str(c.value) for c in good}


@pytest.mark.parametrize("case", TARGETS, ids=[c.name for c in TARGETS])
def test_target(case, resnet):
    model, processor = resnet
    before = model_state(model)
    result, error, elapsed = bounded(lambda: explain(model, PHOTO, processor=processor, target=case.make()), LIMIT)
    items = case.value if isinstance(case.value, list) else list(np.atleast_1d(np.asarray(case.value)))
    check(case, result, error, elapsed, n_maps=len(items) if case.expect is OK else None)
    assert not state_differences(before, model_state(model)), case.name
    if error is None:
        by_index: dict[int, np.ndarray] = {}
        for i, heatmap in zip(result.indices, result.heatmaps):  # duplicates: the same map again
            assert np.array_equal(by_index.setdefault(i, heatmap), heatmap)


@pytest.fixture
def no_torch_load(monkeypatch):
    """Record every ``torch.load`` (pickle, even with weights_only) made while loading a model."""
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


@pytest.mark.parametrize("case", MODELS, ids=[c.name for c in MODELS])
def test_model_folder(case, no_torch_load):
    xai_recipes.loading.clear_cache()
    result, error, elapsed = bounded(lambda: explain(case.value, PHOTO), LIMIT)
    check(case, result, error, elapsed)
    assert no_torch_load == [], f"{case.name}: torch.load was called (pickle)"


def test_remote_code_runs_only_when_asked():
    """The marker mechanism works: with trust_remote_code=True the folder's code does run."""
    case = next(c for c in MODELS if c.name == "model:remote-code-custom-type")
    xai_recipes.loading.clear_cache()
    with pytest.raises(XAIRecipesError, match="trust_remote_code=True"):
        explain(case.value, PHOTO)
    assert not ran(case.marker)
    with pytest.raises(XAIRecipesError):  # its config class does not exist, but the module was imported
        explain(case.value, PHOTO, trust_remote_code=True)
    assert ran(case.marker)


def test_a_pickle_checkpoint_is_refused_but_the_user_may_load_it_themselves(tmp_path):
    """The opt-in the error names: load a trusted .bin yourself (transformers: torch.load(weights_only=True)),
    pass the model. The payload is real: unpickled without weights_only it runs."""
    case = next(c for c in MODELS if c.name == "model:pickle-only")
    with pytest.raises(xai_recipes.ModelLoadError, match="load it yourself"):
        explain(case.value, PHOTO)
    clean = tmp_path / "clean"
    shutil.copytree(case.value, clean)
    from safetensors.torch import load_file

    torch.save(load_file(TRAINED / "resnet" / "model.safetensors"), clean / "pytorch_model.bin")
    model = AutoModelForImageClassification.from_pretrained(clean, use_safetensors=False)
    exp = explain(model, PHOTO, processor=AutoImageProcessor.from_pretrained(clean))
    assert np.isfinite(exp.heatmaps).all()
    assert not ran(case.marker)
    torch.load(Path(case.value) / "pytorch_model.bin", weights_only=False)  # what xai_recipes never does
    assert ran(case.marker)
    case.marker.unlink()


# ---------------------------------------------------------------- GAM heads


@pytest.fixture(scope="module")
def gam_corpus(tmp_path_factory):
    from sklearn.linear_model import LogisticRegression
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("gam")
    torch.manual_seed(0)
    backbone = ViTModel(ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64), add_pooling_layer=False).eval()
    backbone.save_pretrained(folder / "backbone")
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(folder / "backbone")
    g = torch.Generator().manual_seed(1)
    gam = xai_recipes.gam_from_head(str(folder / "backbone"), torch.randn(3, 32, generator=g), torch.randn(3, generator=g),
                                    ["cat", "dog", "cup"], processor=processor)
    gam.save_pretrained(folder / "gam")
    rng = np.random.default_rng(0)
    head = LogisticRegression(max_iter=200).fit(rng.normal(size=(30, 32)), np.array(["a", "b", "c"] * 10))
    return gam_cases(folder, folder / "gam", folder / "backbone", head), folder / "backbone", processor


def test_gam_heads(gam_corpus, no_torch_load):
    cases, backbone, processor = gam_corpus
    failures = []
    for case in cases:
        xai_recipes.loading.clear_cache()
        if case.options["via"] == "folder":
            run = lambda: explain(case.value, PHOTO)  # noqa: E731
        else:
            run = lambda: explain(xai_recipes.gam_from_sklearn(case.value, str(backbone), processor=processor),  # noqa: E731
                                  PHOTO, method="patch-contributions")
        result, error, elapsed = bounded(run, LIMIT)
        if error is None and case.expect in (OK, EITHER):
            result.heatmaps = (result.heatmaps + 1) / 2  # signed patch contributions: [-1, 1] → [0, 1] for check()
        try:
            check(case, result, error, elapsed)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
    assert no_torch_load == []
    assert len(cases) >= 13


def test_a_pickled_head_runs_only_when_asked(gam_corpus):
    cases, backbone, processor = gam_corpus
    case = next(c for c in cases if c.name == "sklearn-head:head.pkl")
    with pytest.raises(xai_recipes.ModelLoadError, match="allow_pickle=True"):
        xai_recipes.gam_from_sklearn(case.value, str(backbone), processor=processor)
    assert not ran(case.marker)
    with pytest.raises(xai_recipes.ModelLoadError):  # opted in: it is unpickled (and is no classifier)
        xai_recipes.gam_from_sklearn(case.value, str(backbone), processor=processor, allow_pickle=True)
    assert ran(case.marker)


# ---------------------------------------------------------------- saved explanations


def test_saved_explanations(resnet, tmp_path):
    model, processor = resnet
    explain(model, PHOTO, processor=processor, top_k=2).save(tmp_path / "saved.npz")
    cases = explanation_cases(tmp_path, tmp_path / "saved.json")
    failures = []
    for case in cases:
        result, error, elapsed = bounded(lambda: xai_recipes.load(case.value), LIMIT)
        try:
            check(case, result, error, elapsed)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
    assert len(cases) >= 18


# ---------------------------------------------------------------- plugins


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def entry_points(monkeypatch, *modules: str) -> None:
    eps = [importlib.metadata.EntryPoint(m, m, "xai_recipes") for m in modules]
    eps.append(importlib.metadata.EntryPoint("resnet", "xai_recipes_builtin.resnet", "xai_recipes"))
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: eps if group == "xai_recipes" else real(**kw, **({"group": group} if group else {})))


def test_a_plugin_that_hangs_or_exits_at_import_is_reported_not_waited_for(plugin_dir, monkeypatch):
    release = plugin_dir / "release"
    (plugin_dir / "hangs_at_import_xyz.py").write_text(textwrap.dedent(f"""
        import os, time
        while not os.path.exists({str(release)!r}):  # a network call that never answers
            time.sleep(0.02)
    """))
    (plugin_dir / "exits_at_import_xyz.py").write_text("import sys\nsys.exit(3)\n")
    entry_points(monkeypatch, "hangs_at_import_xyz", "exits_at_import_xyz")
    monkeypatch.setattr(registry, "IMPORT_TIMEOUT", 1.0)
    fresh = registry.Registry()
    monkeypatch.setattr(registry, "_registry", fresh)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning) as warned:
        _, error, elapsed = bounded(fresh.load_entry_points, 30)
    assert {"hangs_at_import_xyz", "exits_at_import_xyz"} <= {n for w in warned for n in re.findall(r"'(\w+)'", str(w.message))}
    assert error is None and elapsed < 10, (error, elapsed)
    errors = {p.name: p.error for p in xai_recipes.plugins()}
    assert "did not finish within 1 s" in errors["hangs_at_import_xyz"] and "uninstall" in errors["hangs_at_import_xyz"]
    assert errors["exits_at_import_xyz"] == "import failed: SystemExit: 3"
    assert xai_recipes.list_recipes() == ["resnet"]  # the others keep working
    release.touch()  # let the abandoned import thread finish
    for thread in threading.enumerate():
        if thread.name.startswith("xai_recipes plugin import"):
            thread.join(10)
    assert time.perf_counter() - start < 30


def test_a_plugin_that_uses_the_registry_at_import_no_longer_deadlocks(plugin_dir, monkeypatch):
    """Before: the registry's lock, held while importing plugins, was asked for again by the plugin
    (same thread, non-reentrant lock): the host hung forever. Now: reported after the timeout."""
    (plugin_dir / "reentrant_plugin_xyz.py").write_text("import xai_recipes\nxai_recipes.list_recipes()\n")
    entry_points(monkeypatch, "reentrant_plugin_xyz")
    monkeypatch.setattr(registry, "IMPORT_TIMEOUT", 1.0)
    monkeypatch.setattr(registry, "_registry", None)
    with pytest.warns(RuntimeWarning, match="reentrant_plugin_xyz"):
        infos, error, elapsed = bounded(xai_recipes.plugins, 30)
    assert error is None and elapsed < 10
    assert "did not finish" in {p.name: p.error for p in infos}["reentrant_plugin_xyz"]
    for thread in threading.enumerate():
        if thread.name.startswith("xai_recipes plugin import"):
            thread.join(10)
    sys.modules.pop("reentrant_plugin_xyz", None)


# ---------------------------------------------------------------- EXIF orientation and the map


def _object_at_left(seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 72×96 photo (the trained models' task), a disc left of centre inside the processor's centre crop: (image, box)."""
    from synthetic import _clutter, _draw

    rng = np.random.default_rng(seed)
    img = _clutter(rng, 72, 96)
    cx, cy, r = 30, 38, 10
    _draw(img, "disc", cx, cy, r, (40, 90, 230))
    return img, (cx - r, cy - r, cx + r, cy + r)


#: ``exif_transpose`` turns a stored image by this for each EXIF orientation; the photo is stored
#: turned the other way, as a phone held sideways writes it.
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_rotated_phone_photo_is_explained_upright(orientation, tmp_path):
    """The photo shows its object at the left; the file stores the pixels turned and says so in
    EXIF. The map has the upright photo's size and its peak is on the object where the viewer sees it."""
    upright, (x0, y0, x1, y1) = _object_at_left()
    stored = Image.fromarray(upright).transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)  # the tiny model is JPEG-shy
    stored.save(tmp_path / "no-exif.jpg", quality=100, subsampling=0)

    def peak(exp) -> tuple[int, int]:
        y, x = np.unravel_index(np.argmax(exp.heatmaps[0]), exp.heatmaps.shape[1:])
        return int(x), int(y)

    exp = explain(TRAINED / "resnet", tmp_path / "phone.jpg", target="disc", method="gradcam")
    assert exp.heatmaps.shape == (1, 72, 96) and exp.image.size == (96, 72)
    x, y = peak(exp)
    assert x0 <= x <= x1 and y0 <= y <= y1, f"peak at ({x}, {y}), the object is at x {x0}..{x1}, y {y0}..{y1}"
    assert peak(explain(TRAINED / "resnet", upright, target="disc", method="gradcam")) == pytest.approx((x, y), abs=2)
    ignored = explain(TRAINED / "resnet", tmp_path / "no-exif.jpg", target="disc", method="gradcam")
    assert ignored.image.size == stored.size  # without the tag: the stored pixels as they are
    if orientation == 3:  # same size, object elsewhere: ignoring EXIF would put the map off the object
        ix, iy = peak(ignored)
        assert not (x0 <= ix <= x1 and y0 <= iy <= y1)


# ---------------------------------------------------------------- prompts and reference images (zero-shot, similarity)

PROMPTS = prompt_cases()


@pytest.fixture(scope="module")
def clip():
    """A random tiny CLIP with its offline tokenizer, in *train* mode: a call must give it back that way."""
    from zero_shot_models import as_processor, random_clip

    model, tokenizer, image_processor = random_clip(torch.float32)
    return model.train(), as_processor(tokenizer, image_processor)


@pytest.mark.parametrize("case", PROMPTS, ids=[c.name for c in PROMPTS])
def test_prompt(case, clip):
    model, processor = clip
    before = model_state(model)
    options = dict(case.options)
    if case.name.startswith("reference-"):
        options["task"] = "image-feature-extraction"
    result, error, elapsed = bounded(lambda: explain(model, PHOTO, processor=processor, method="gradcam",
                                                     target=case.make(), **options), LIMIT)
    n_maps = (len(case.value) if isinstance(case.value, list) else 1) if case.expect is OK else None
    check(case, result, error, elapsed, n_maps=n_maps)
    assert not state_differences(before, model_state(model)), case.name


# ---------------------------------------------------------------- detections and regions (detectors, segmenters)

DETECTIONS = detection_cases()
REGIONS = region_cases()


@pytest.fixture(scope="module")
def detr():
    from object_models import random_detr

    model, processor = random_detr()
    return model.train(), processor  # train mode: a call must give it back that way


@pytest.fixture(scope="module")
def segformer():
    from object_models import random_segformer

    model, processor = random_segformer()
    return model.train(), processor


@pytest.mark.parametrize("case", DETECTIONS, ids=[c.name for c in DETECTIONS])
def test_detection_target(case, detr):
    from object_models import IMAGE

    model, processor = detr
    before = model_state(model)
    options = {"threshold": 0.0, **case.options}
    result, error, elapsed = bounded(lambda: explain(model, IMAGE, processor=processor, method="gradcam",
                                                     target=case.make(), **options), LIMIT)
    check(case, result, error, elapsed)
    if error is None:
        assert result.boxes is not None and len(result.boxes) == len(result.labels)
    assert not state_differences(before, model_state(model)), case.name


@pytest.mark.parametrize("case", REGIONS, ids=[c.name for c in REGIONS])
def test_region(case, segformer):
    from object_models import IMAGE

    model, processor = segformer
    before = model_state(model)
    result, error, elapsed = bounded(lambda: explain(model, IMAGE, processor=processor, method="gradcam",
                                                     region=case.make()), LIMIT)
    check(case, result, error, elapsed)
    if error is None:
        assert result.masks is not None and result.masks.shape == result.heatmaps.shape
    assert not state_differences(before, model_state(model)), case.name
