"""DINO-GAM: exact patch contributions, fitting from a folder, skops import, saving and loading."""

import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image
from synthetic import SHAPES, make_set
from test_localisation import peak_in_box
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTConfig, ViTImageProcessor, ViTModel

import xai_recipes
from xai_recipes import DatasetError, ImageSkippedWarning, ModelLoadError, RecipeError, explain

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})
IMAGE = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)


def vit_backbone():
    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return ViTModel(config, add_pooling_layer=False).eval()  # 1 CLS token


def registers_backbone():
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_register_tokens=4)
    return Dinov2WithRegistersModel(config).eval()  # CLS + 4 registers


def random_gam(backbone, pooling="mean", labels=("cat", "dog", "cup")):
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(len(labels), 32, generator=g), torch.randn(len(labels), generator=g)
    shift, scale = torch.randn(32, generator=g), torch.rand(32, generator=g) + 0.5
    return xai_recipes.gam_from_head(backbone, weight, bias, list(labels), pooling=pooling, processor=PROCESSOR,
                                     shift=shift, scale=scale)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["64x64", "48x80"])
@pytest.mark.parametrize("make, pooling", [(vit_backbone, "mean"), (registers_backbone, "sum")], ids=["vit-cls", "dinov2-registers"])
def test_contributions_plus_intercept_are_the_logits(make, pooling, size):
    gam = random_gam(make(), pooling)
    processor = ViTImageProcessor(size={"height": size[0], "width": size[1]})
    exp = explain(gam, IMAGE, processor=processor, method="patch-contributions", target=["cat", "dog", "cup"])
    assert exp.recipe == "dino_gam" and exp.contributions.shape == (3, size[0] // 8, size[1] // 8)
    with torch.no_grad():
        logits = gam(processor(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"]).logits[0].double()
    total = exp.contributions.astype(np.float64).sum((1, 2)) + np.array(exp.intercepts)
    np.testing.assert_allclose(total, logits.numpy(), rtol=1e-5, atol=1e-5)
    assert exp.heatmaps.shape == (3, 70, 90) and np.abs(exp.heatmaps).max() == pytest.approx(1, abs=1e-3)
    assert (exp.heatmaps < 0).any() and (exp.heatmaps > 0).any()  # signed


def test_contributions_of_a_cnn_with_average_pooling_and_fc_are_exact_too():
    model = tiny_model("resnet")
    exp = explain(model, IMAGE, processor=PROCESSOR, method="patch-contributions", top_k=3)
    with torch.no_grad():
        logits = model(pixel_values=PROCESSOR(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"]).logits[0]
    np.testing.assert_allclose(exp.contributions.sum((1, 2)) + exp.intercepts, logits[exp.indices].numpy(), rtol=1e-4, atol=1e-5)


def test_models_without_a_linear_head_are_refused():
    with pytest.raises(RecipeError, match="single linear head"):
        explain(tiny_model("convnext"), IMAGE, processor=PROCESSOR, method="patch-contributions")


def test_saved_gam_is_safetensors_and_json_and_loads_by_folder(tmp_path):
    backbone = vit_backbone()
    backbone.save_pretrained(tmp_path / "backbone")
    PROCESSOR.save_pretrained(tmp_path / "backbone")
    gam = random_gam(str(tmp_path / "backbone"))
    gam.save_pretrained(tmp_path / "gam")
    assert sorted(p.name for p in (tmp_path / "gam").iterdir()) == ["config.json", "head.safetensors", "preprocessor_config.json"]
    a = explain(gam, IMAGE, method="patch-contributions", target="dog")
    b = explain(tmp_path / "gam", IMAGE, method="patch-contributions", target="dog")
    np.testing.assert_allclose(b.contributions, a.contributions, atol=1e-6)
    assert b.recipe == "dino_gam" and b.labels == ["dog"]
    assert xai_recipes.describe(tmp_path / "gam").target_layers == ["tokens"]


def test_a_relative_backbone_folder_is_found_beside_the_gam_from_any_working_directory(tmp_path, monkeypatch):
    """config.json's backbone "../backbone": the GAM and its backbone move together (tests/trained/dino_gam)."""
    backbone = vit_backbone()
    backbone.save_pretrained(tmp_path / "models" / "backbone")
    PROCESSOR.save_pretrained(tmp_path / "models" / "backbone")
    gam = random_gam(str(tmp_path / "models" / "backbone"))
    gam.config.backbone = "../backbone"
    gam.save_pretrained(tmp_path / "models" / "gam")
    monkeypatch.chdir(tmp_path)  # "../backbone" from here does not exist
    exp = explain(tmp_path / "models" / "gam", IMAGE, method="patch-contributions", target="dog")
    np.testing.assert_allclose(exp.contributions, explain(gam, IMAGE, method="patch-contributions", target="dog").contributions,
                               atol=1e-6)


def test_head_width_must_match_the_backbone():
    with pytest.raises(RecipeError, match="expects 16-wide patch embeddings"):
        xai_recipes.gam_from_head(vit_backbone(), torch.zeros(2, 16), torch.zeros(2), ["a", "b"], processor=PROCESSOR)


def test_a_backbone_without_patch_tokens_is_refused():
    class Pooled(torch.nn.Module):
        config = ViTConfig(hidden_size=32)

        def forward(self, pixel_values):
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=pixel_values.mean((2, 3)).repeat(1, 11)[:, :32])

    gam = xai_recipes.gam_from_head(Pooled(), torch.zeros(2, 32), torch.zeros(2), ["a", "b"], processor=PROCESSOR)
    with pytest.raises(RecipeError, match="gives no patch tokens"):
        explain(gam, IMAGE)


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    for i, s in enumerate(make_set(11, 160, [(72, 96), (80, 80), (96, 72)])):
        (root / SHAPES[s.label]).mkdir(exist_ok=True)
        Image.fromarray(s.image).save(root / SHAPES[s.label] / f"{i}.png")
    (root / "disc" / "broken.png").write_bytes(b"\x89PNG nope")
    return root


def test_fit_gam_from_a_folder_localises_the_object(shape_folder, trained_dir, tmp_path):
    """Frozen backbone (the trained tiny ResNet's feature extractor), logistic-regression head:
    on held-out images the true class's most positive patch lies on the object."""
    with pytest.warns(ImageSkippedWarning, match="broken.png"):
        gam = xai_recipes.fit_gam(trained_dir / "resnet", shape_folder, progress=False)
    report = gam.fit_report
    assert report.classes == sorted(SHAPES) and report.n_test == 32 and report.accuracy >= 0.9
    assert [path.endswith("broken.png") for path, _ in report.skipped] == [True]
    gam.save_pretrained(tmp_path / "gam")
    held_out = make_set(2024, 40, [(72, 96), (96, 72), (80, 80)])
    hits = 0
    for s in held_out:
        exp = explain(tmp_path / "gam", s.image, method="patch-contributions", target=SHAPES[s.label])
        hits += peak_in_box(exp.heatmaps[0], s.box)
    assert hits / len(held_out) >= 0.8, f"most positive patch on the object in only {hits / len(held_out):.2f}"


def test_fit_gam_needs_two_classes(tmp_path, trained_dir):
    (tmp_path / "only").mkdir()
    Image.fromarray(IMAGE).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetError, match="at least two"):
        xai_recipes.fit_gam(trained_dir / "resnet", tmp_path, progress=False)


def test_fit_gam_command(shape_folder, trained_dir, tmp_path, capsys):
    from xai_recipes import cli

    with pytest.warns(ImageSkippedWarning):
        code = cli.main(["fit-gam", str(trained_dir / "resnet"), str(shape_folder), "--out", str(tmp_path / "g"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1 and "held-out accuracy" in out and "skipped" in out and "broken.png" in out
    assert explain(tmp_path / "g", IMAGE).recipe == "dino_gam"


def sklearn_head(tmp_path):
    from sklearn.linear_model import LogisticRegressionCV

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 32)), np.array(["cat", "dog", "cup"] * 20)
    return LogisticRegressionCV(Cs=3, cv=3, max_iter=500).fit(x + (y == "dog")[:, None], y)


def test_import_a_skops_head_like_the_emb_gam_card(tmp_path):
    import skops.io as sio

    head = sklearn_head(tmp_path)
    sio.dump(head, tmp_path / "head.skops")
    gam = xai_recipes.gam_from_sklearn(tmp_path / "head.skops", vit_backbone(), processor=PROCESSOR)
    assert gam.config.pooling == "sum" and list(gam.config.id2label.values()) == ["cat", "cup", "dog"]
    exp = explain(gam, IMAGE, method="patch-contributions", target="dog")
    tokens = xai_recipes.DinoGAMForImageClassification.run_backbone(gam.backbone, PROCESSOR(images=Image.fromarray(IMAGE), return_tensors="pt")["pixel_values"])
    expected = head.decision_function(tokens[:, 1:].sum(1).detach().numpy())[0, 2]  # the card: head on summed patches
    assert exp.contributions.sum() + exp.intercepts[0] == pytest.approx(expected, rel=1e-4)


def test_a_pickled_head_is_refused_unless_opted_in(tmp_path):
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(sklearn_head(tmp_path), f)
    with pytest.raises(ModelLoadError, match="pickle.*arbitrary code.*allow_pickle=True"):
        xai_recipes.gam_from_sklearn(tmp_path / "model.pkl", vit_backbone(), processor=PROCESSOR)
    gam = xai_recipes.gam_from_sklearn(tmp_path / "model.pkl", vit_backbone(), processor=PROCESSOR, allow_pickle=True)
    assert gam.classifier.weight.shape == (3, 32)
