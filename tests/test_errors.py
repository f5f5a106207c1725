"""Bad input gets a typed error that names the problem and the fix."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from transformers import ViTConfig, ViTImageProcessor, ViTModel

import xai_recipes
from xai_recipes import (
    ImageError,
    ModelLoadError,
    NoRecipeError,
    NotAnImageClassifierError,
    TargetIndexError,
    UnknownLabelError,
    UnknownMethodError,
    explain,
)

PROCESSOR = ViTImageProcessor(size={"height": 64, "width": 64})
IMAGE = np.zeros((64, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def resnet():
    return tiny_model("resnet")


def test_unknown_family_that_cannot_be_derived_lists_recipes_and_the_fixes():
    from test_derive import FlatForImageClassification

    with pytest.raises(xai_recipes.MethodNotApplicableError) as err:  # the generic recipe runs input attributions only
        explain(FlatForImageClassification(), IMAGE, processor=PROCESSOR, method="gradcam")
    msg = str(err.value)
    assert "'flat'" in msg and "resnet" in msg and "recipe=" in msg and "register_recipes" in msg


def test_unknown_recipe_name():
    with pytest.raises(NoRecipeError, match="no recipe named 'nope'.*registered recipes: [a-z, _-]*clip, convnext"):
        xai_recipes.get_recipe("nope")


def test_backbone_without_head_is_not_an_image_classifier(tmp_path):
    backbone = ViTModel(ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(NotAnImageClassifierError, match="ViTModel is not an image classifier"):
        explain(backbone, IMAGE, processor=PROCESSOR)
    backbone.save_pretrained(tmp_path)
    PROCESSOR.save_pretrained(tmp_path)
    with pytest.raises(NotAnImageClassifierError, match="ViTModel checkpoint, not an image classifier"):
        explain(tmp_path, IMAGE)


def test_plain_module_is_not_an_image_classifier():
    with pytest.raises(NotAnImageClassifierError, match="not a Hugging Face image-classification model"):
        explain(torch.nn.Conv2d(3, 3, 1), IMAGE, processor=PROCESSOR)


def test_pickle_weights_are_refused(tmp_path, resnet):
    resnet.config.save_pretrained(tmp_path)
    PROCESSOR.save_pretrained(tmp_path)
    torch.save(resnet.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="never loads pickle"):
        explain(tmp_path, IMAGE)


def test_missing_folder():
    with pytest.raises(ModelLoadError, match="model folder '/nonexistent/model-folder' does not exist"):
        explain("/nonexistent/model-folder", IMAGE)


def test_undecodable_image(tmp_path, resnet):
    bad = tmp_path / "photo.png"
    bad.write_text("this is not a picture")
    with pytest.raises(ImageError, match="cannot decode .*photo.png"):
        explain(resnet, bad, processor=PROCESSOR)
    with pytest.raises(ImageError, match="does not exist"):
        explain(resnet, tmp_path / "missing.jpg", processor=PROCESSOR)


def test_empty_and_malformed_arrays(resnet):
    with pytest.raises(ImageError, match="empty"):
        explain(resnet, np.zeros((0, 10, 3), np.uint8), processor=PROCESSOR)
    with pytest.raises(ImageError, match="channels last"):
        explain(resnet, np.zeros((3, 64, 64, 2), np.uint8), processor=PROCESSOR)
    with pytest.raises(ImageError, match="NaN"):
        explain(resnet, np.full((8, 8, 3), np.nan, np.float32), processor=PROCESSOR)


def test_decompression_bomb_is_refused(tmp_path, resnet, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(xai_recipes.images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        explain(resnet, path, processor=PROCESSOR)
    with pytest.raises(ImageError, match="decompression bomb"):
        explain(resnet, np.zeros((200, 200, 3), np.uint8), processor=PROCESSOR)


def test_unknown_label_suggests_close_ones(resnet):
    with pytest.raises(UnknownLabelError, match="'tringle' is not in this model's id2label.*Did you mean 'triangle'"):
        explain(resnet, IMAGE, processor=PROCESSOR, target="tringle")


def test_ambiguous_label_lists_candidates():
    model = tiny_model("resnet")
    model.config.id2label = {0: "crane", 1: "crane", 2: "tabby, tabby cat", 3: "tabby, queen"}  # as in ImageNet/in22k
    with pytest.raises(UnknownLabelError, match="'crane' names several classes \\(0: 'crane'; 1: 'crane'\\)"):
        explain(model, IMAGE, processor=PROCESSOR, target="crane")
    with pytest.raises(UnknownLabelError, match="names several classes"):
        explain(model, IMAGE, processor=PROCESSOR, target="tabby")
    assert explain(model, IMAGE, processor=PROCESSOR, target="Tabby Cat").indices == [2]


def test_index_out_of_range(resnet):
    with pytest.raises(TargetIndexError, match="class index 4 is out of range: this model has classes 0..3"):
        explain(resnet, IMAGE, processor=PROCESSOR, target=[0, 4])
    with pytest.raises(TargetIndexError):
        explain(resnet, IMAGE, processor=PROCESSOR, target=-1)


def test_unknown_method(resnet):
    with pytest.raises(UnknownMethodError, match="unknown method 'gradcamz'; choose one of: .*gradcam, hirescam"):
        explain(resnet, IMAGE, processor=PROCESSOR, method="gradcamz")


def test_all_errors_share_a_base_class():
    for err in (ImageError, ModelLoadError, NoRecipeError, NotAnImageClassifierError, TargetIndexError, UnknownLabelError, UnknownMethodError):
        assert issubclass(err, xai_recipes.XAIRecipesError)
