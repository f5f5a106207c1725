"""The offline demo: real ImageNet EfficientNet-Lite0 weights, real CC0 photos."""

import numpy as np
import pytest

from xai_recipes import cli, explain
from xai_recipes.demo import build_demo_model, photos


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("demo") / "efficientnet-lite0")


def test_real_model_recognises_and_localises_the_espresso(demo_model):
    exp = explain(demo_model, photos()["espresso"], target="espresso")
    assert exp.predictions[0][1] == "espresso" and exp.scores[0] > 0.5
    y, x = np.unravel_index(exp.heatmaps[0].argmax(), exp.heatmaps[0].shape)
    assert 180 <= x <= 420 and 40 <= y <= 220, "GradCAM peak is not on the cup's coffee"  # 600×400 photo
    assert exp.recipe == "timm_wrapper" and exp.target_layers == ["timm_model.bn2"]


def test_real_model_sees_a_cat(demo_model):
    exp = explain(demo_model, photos()["cat"], top_k=3)
    assert set(exp.labels) <= {"tiger cat", "Egyptian cat", "tabby, tabby cat"}
    assert not exp.coverage[:, :60].any() and exp.coverage[150, 225]  # timm's centre crop, mapped back


def test_demo_command_writes_overlays(demo_model, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--model-dir", str(demo_model)]) == 0
    assert (tmp_path / "demo-cat-gradcam.png").is_file() and (tmp_path / "demo-espresso-gradcam.png").is_file()
    assert "espresso (0.9" in capsys.readouterr().out
