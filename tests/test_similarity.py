"""Image similarity on a real model: the pretrained DINOv2 ViT-S/14 of tests/real_dinov2.py, loaded as
any user would (``Dinov2Model`` from a folder), explained through ``explain(model, scene, target=reference)``.

The scene: scikit-image's grass photo with two real photos pasted apart on it — chelsea the cat and
the coffee cup. References: a *different* view of one of them (the cat flipped and rescaled, the cup
cropped tighter and rescaled), and each whole photo. The map must show the object the reference
shows: its peak inside that object's box, and more of its mass there than the box's area share.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

import real_dinov2
import xai_recipes

CAT_BOX = (60, 180, 260, 330)  # x0, y0, x1, y1 of the pasted cat (exclusive ends)
CUP_BOX = (300, 200, 480, 350)


def scene() -> np.ndarray:
    canvas = np.array(Image.fromarray(skimage.data.grass()).convert("RGB").resize((512, 512)))
    x0, y0, x1, y1 = CAT_BOX
    canvas[y0:y1, x0:x1] = np.array(Image.fromarray(skimage.data.chelsea()).resize((x1 - x0, y1 - y0)))
    x0, y0, x1, y1 = CUP_BOX
    canvas[y0:y1, x0:x1] = np.array(Image.fromarray(skimage.data.coffee()).resize((x1 - x0, y1 - y0)))
    return canvas


REFERENCES = {  # name -> (reference image, the box it should light up)
    "cat, flipped crop": (np.array(Image.fromarray(skimage.data.chelsea()[20:280, 60:420, :][:, ::-1]).resize((200, 150))),
                          CAT_BOX),
    "cup, tighter crop": (np.array(Image.fromarray(skimage.data.coffee()[40:360, 100:520]).resize((220, 170))), CUP_BOX),
    "cat photo": (skimage.data.chelsea(), CAT_BOX),
    "cup photo": (skimage.data.coffee(), CUP_BOX),
}


@pytest.fixture(scope="module")
def dinov2():
    from transformers import AutoImageProcessor, AutoModel

    folder = real_dinov2.cached_folder()
    # a crop-free processor: the 512 px scene resized whole to 224, so both objects stay in view
    processor = AutoImageProcessor.from_pretrained(folder, do_center_crop=False, size={"height": 224, "width": 224})
    return AutoModel.from_pretrained(folder).eval(), processor


def in_box(heatmap: np.ndarray, box) -> tuple[bool, float]:
    """(peak inside the box, map mass inside ÷ the box's area share)."""
    x0, y0, x1, y1 = box
    inside = np.zeros(heatmap.shape, bool)
    inside[y0:y1, x0:x1] = True
    y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
    return bool(inside[y, x]), float(heatmap[inside].sum() / heatmap.sum() / inside.mean())


@pytest.mark.parametrize("method", ["gradcam", "gradient-rollout", "legrad"])
def test_the_map_shows_what_makes_the_scene_like_the_reference(dinov2, method, capsys):
    model, processor = dinov2
    exp = xai_recipes.explain(model, scene(), target=[ref for ref, _ in REFERENCES.values()], processor=processor,
                              method=method)
    assert exp.task == "image-feature-extraction" and exp.recipe == "dinov2-backbone"
    rows = []
    for i, (name, (_, box)) in enumerate(REFERENCES.items()):
        peak, ratio = in_box(exp.heatmaps[i], box)
        rows.append((name, peak, ratio, exp.scores[i]))
    with capsys.disabled():
        print(f"\n{method}: " + "; ".join(f"{n}: peak in box {p}, mass ratio {r:.2f}, cosine {s:.3f}"
                                          for n, p, r, s in rows))
    assert all(peak for _, peak, _, _ in rows), rows  # every method: each reference lights up its own object
    assert all(ratio > (3.0 if method == xai_recipes.find_recipe(model).default_method else 1.5)
               for _, _, ratio, _ in rows), rows


def test_a_reference_crop_is_more_like_its_own_photo(dinov2):
    """The cosine scores themselves: the cat crop is closer to the cat photo than to the cup photo."""
    model, processor = dinov2
    cat_crop = REFERENCES["cat, flipped crop"][0]
    exp = xai_recipes.explain(model, cat_crop, target=[skimage.data.chelsea(), skimage.data.coffee()],
                              processor=processor, method="gradcam")
    assert exp.scores[0] > exp.scores[1] + 0.1
