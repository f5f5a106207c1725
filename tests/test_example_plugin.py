"""The example third-party plugin (examples/xai-recipes-deit), pip-installed for real.

The fixture builds and installs the example package into this interpreter's environment the way a
user would (offline: ``--no-index --no-deps --no-build-isolation``, from a copy so the source
tree gets no ``build/``), reloads the registry, and uninstalls it again at teardown, so the rest of
the suite sees the environment it found.
"""

import contextlib
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_head_reproduces_logits
from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher, ViTImageProcessor

import xai_recipes
from xai_recipes import RecipeError, cli, explain, registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "xai-recipes-deit"
DIST = "xai-recipes-deit"
SIZES = [(64, 64), (80, 112)]  # model input sizes (height, width); the second is non-square


def pip(*args):
    done = subprocess.run([sys.executable, "-m", "pip", *args], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def reload_registry():
    """Forget the loaded registry (and the import system's cached view of site-packages): the
    next registry call scans the ``xai_recipes`` entry-point group afresh."""
    importlib.invalidate_caches()
    registry._registry = None


@contextlib.contextmanager
def installed_example(tmp_path_factory, example: Path, dist: str, package: str, undo=lambda: None):
    """``example`` pip-installed offline from a copy for the block, then uninstalled, its modules
    forgotten, ``undo()`` called and the registry put back as it was (or None: rescan without it)."""
    source = tmp_path_factory.mktemp("example") / example.name
    shutil.copytree(example, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    saved = registry._registry
    try:
        pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source))
        reload_registry()
        yield
    finally:
        pip("uninstall", "-y", "-q", dist)
        for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[name]
        undo()
        importlib.invalidate_caches()
        registry._registry = saved


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    with installed_example(tmp_path_factory, EXAMPLE, DIST, "xai_recipes_deit"):
        yield


def tiny_deit(cls):
    config = DeiTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, id2label={i: f"class {i}" for i in range(4)},
                        label2id={f"class {i}": i for i in range(4)})
    torch.manual_seed(0)
    return cls(config).eval()


def test_installed_plugin_is_listed_with_its_version_and_recipes(installed):
    info = next(p for p in xai_recipes.plugins() if p.name == "deit")
    assert (info.distribution, info.version, info.error) == (DIST, "0.1.0", None)
    assert info.recipes == ["deit", "deit_distilled"]
    assert xai_recipes.get_recipe("deit").plugin == "deit"
    assert {"deit", "deit_distilled", "vit", "resnet"} <= set(xai_recipes.list_recipes())  # built-ins still there


def test_cli_shows_the_plugin(installed, capsys):
    assert cli.main(["plugins", "--format", "json"]) == 0
    found = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert found["deit"] == {"name": "deit", "distribution": DIST, "version": "0.1.0",
                             "recipes": ["deit", "deit_distilled"], "methods": [], "tasks": [], "error": None}
    assert found["vit"]["distribution"] == "xai-recipes"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("cls, expected", [(DeiTForImageClassification, "deit"),
                                            (DeiTForImageClassificationWithTeacher, "deit_distilled")],
                         ids=["deit", "deit-with-teacher"])
def test_explain_dispatches_to_the_plugin(installed, cls, expected, size):
    model = tiny_deit(cls)
    assert xai_recipes.find_recipe(model).name == expected
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    image = np.random.default_rng(0).integers(0, 256, (size[0] + 13, size[1] + 7, 3), dtype=np.uint8)
    exp = explain(model, image, processor=processor, target=[0, 1])  # no recipe=: dispatched by the registry
    assert exp.recipe == expected
    assert exp.heatmaps.shape == (2, *image.shape[:2]) and exp.heatmaps.dtype == np.float32
    assert np.isfinite(exp.heatmaps).all()
    assert all(exp.heatmaps[t].std() > 1e-3 for t in range(2)), "a constant heatmap"
    assert not np.allclose(exp.heatmaps[0], exp.heatmaps[1], atol=1e-3), "both targets give the same map"


def test_declared_head_reproduces_the_logits(installed):
    """``deit`` declares classifier(final norm's CLS token) for DFF; the teacher model, whose
    logits average two heads on two tokens, declares none and DFF says so."""
    model = tiny_deit(DeiTForImageClassification)
    assert xai_recipes.find_recipe(model).name == "deit"
    assert_head_reproduces_logits(model, (64, 96))
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    exp = explain(model, image, processor=processor, method="dff", n_components=2)
    assert exp.heatmaps.shape == (2, 64, 64) and np.isfinite(exp.heatmaps).all()
    with pytest.raises(RecipeError, match="'deit_distilled' declares no head"):
        explain(tiny_deit(DeiTForImageClassificationWithTeacher), image, processor=processor, method="dff")
