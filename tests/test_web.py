"""The web page's callbacks, called directly (no browser): tests/test_web_e2e.py drives the page itself."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web page needs gradio: pip install -e '.[web]'")

from xai_recipes import demo, web  # noqa: E402

from conftest import TRAINED  # noqa: E402

VIT = str(TRAINED / "vit")  # a trained tiny ViT (classes: the synthetic shapes)


def quiet(*_, **__):
    return None


def run(upload=None, photo="cat", model=VIT, method=None, targets=None, top_k=1):
    return web.explain_image(upload, photo, model, method, targets, top_k, progress=quiet)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web") / "efficientnet-lite0"
    with pytest.MonkeyPatch.context() as mp:  # the page's bundled model, built here instead of ~/.cache
        mp.setattr(demo, "default_folder", lambda: folder)
        yield demo.build_demo_model(folder)


def test_an_undecodable_upload_gives_a_message(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not a PNG")
    shown, message = web.preview(str(bad), None)
    assert shown is None and "ImageError" in message and "cannot decode" in message
    assert "'photo.png'" in message and str(tmp_path) not in message  # the file's name, not the server's path
    status, overlays, predictions, concepts, heads, download, picker = run(upload=str(bad))
    assert "cannot decode" in status and "Traceback" not in status
    assert overlays is None and predictions is None and download is None
    assert concepts["visible"] is False and heads["visible"] is False and picker["visible"] is False


def test_a_bad_label_gives_a_message_with_suggestions():
    status, overlays, *_ = run(targets=["sqare"])
    assert status.startswith("**UnknownLabelError:**") and "'square'" in status and overlays is None


def test_no_image_no_model_and_an_unloadable_folder_give_messages(tmp_path):
    assert "no image yet" in run(photo=None)[0]
    assert "no model chosen" in run(model=" ")[0]
    assert "ModelLoadError" in run(model=str(tmp_path))[0]  # an empty folder: no config.json
    assert "top-k must be between" in run(top_k=50)[0]


def test_targets_give_one_labelled_overlay_each_and_the_download_holds_the_saved_explanation(tmp_path):
    image = np.full((80, 120, 3), 128, np.uint8)
    image[20:50, 30:70] = (220, 40, 40)
    path = tmp_path / "shape.png"
    Image.fromarray(image).save(path)
    status, overlays, predictions, concepts, heads, download, picker = run(upload=str(path), method="gradcam",
                                                                    targets=["disc", "1"])
    assert status.startswith("Explained with **vit / gradcam**")
    assert [caption.split(" · ")[0] for _, caption in overlays] == ["disc", "square"]
    for picture, _ in overlays:
        assert picture.width == 120 and picture.height > 80  # the overlay under its label strip
        assert np.abs(np.asarray(picture)[-80:].astype(int) - image).mean() > 10  # not the input
    assert not np.array_equal(np.asarray(overlays[0][0])[:10], np.asarray(overlays[1][0])[:10])  # strips differ
    assert picker["visible"] is False  # a classifier: no detections to pick
    assert len(predictions) == 4 and abs(sum(predictions.values()) - 1) < 1e-4
    assert concepts["visible"] is False and heads["visible"] is False
    with zipfile.ZipFile(download) as zf:
        names = sorted(zf.namelist())
        assert names == ["explanation.json", "explanation.npz", "explanation.png"]
        info = json.loads(zf.read("explanation.json"))
    assert info["labels"] == ["disc", "square"] and info["method"] == "gradcam"
    assert info["captions"][0].startswith("disc ") and info["captions"][0].endswith(" · gradcam")


def test_attention_shows_one_map_per_head_and_dff_its_concepts():
    *_, heads, _, _ = run(method="attention")
    assert heads["visible"] is True and [c for _, c in heads["value"]] == ["head 0", "head 1", "head 2", "head 3"]
    status, overlays, _, concepts, heads, download, _ = run(method="dff", top_k=2)
    assert "dff" in status and len(overlays) == 1 and overlays[0][1] == "dff: 5 concepts"
    assert concepts["visible"] is True and concepts["value"].count("\n| <span") == 5 and heads["visible"] is False


def test_model_options_put_the_recipes_default_first_and_leave_out_what_does_not_apply():
    methods, default, labels, zero_shot = web.model_options(VIT)
    assert not zero_shot
    assert default == methods[0] == "gradient-rollout" and "attention" in methods
    assert "patch-contributions" not in methods and labels == ["disc", "square", "triangle", "cross"]
    method_update, targets_update, candidates_update, threshold_update, message = web.choose_model(VIT)
    assert candidates_update["visible"] is False and threshold_update["visible"] is False
    assert method_update["choices"] == methods and method_update["value"] == "gradient-rollout"
    assert targets_update["choices"] == labels and targets_update["value"] == [] and "4 classes" in message
    *_, message = web.choose_model("")
    assert "no model chosen" in message


def test_the_bundled_model_explains_the_bundled_cat(demo_folder):
    methods, default, labels, _ = web.model_options(web.DEMO_MODEL)
    assert default == "gradcam" and "dff" in methods and "attention" not in methods and len(labels) == 1000
    status, overlays, predictions, *_ = run(model=web.DEMO_MODEL, targets=["tiger cat"])
    assert "timm_wrapper / gradcam" in status and overlays[0][1].startswith("tiger cat · ")
    assert max(predictions, key=predictions.get) == "tiger cat"
    status, *_ = run(model=web.DEMO_MODEL, targets=["tiger kat"])
    assert "UnknownLabelError" in status and "'tiger cat'" in status


def test_the_page_builds_with_its_components(demo_folder):
    app = web.build_app([VIT])
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"upload", "photo", "model", "method", "targets", "explain", "overlays", "predictions", "concepts",
            "heads", "download", "status"} <= ids
    model = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model")
    assert model.value == VIT and [c[1] for c in model.choices] == [VIT, web.DEMO_MODEL]
