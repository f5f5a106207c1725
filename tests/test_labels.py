"""Labelled figures: every overlay the library writes names its target, score and method (OCR-free checks),
and the notebook views (``_repr_png_``, ``_repr_html_``, ``plot``)."""

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_recipes import render
from xai_recipes.explanation import Explanation

PREDICTIONS = [(0, "tabby, tabby cat", 0.6), (1, "remote control, remote", 0.2), (2, "espresso", 0.1),
               (3, "tiger cat", 0.05), (4, "lynx, catamount", 0.03)]


def make(width=90, height=70, labels=("tabby, tabby cat", "remote control, remote"), scores=(0.6, 0.2),
         method="gradcam", seed=0, **extra) -> Explanation:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    yy, xx = np.mgrid[:height, :width]
    maps = np.stack([np.exp(-((xx - width * f) ** 2 + (yy - height / 2) ** 2) / (0.05 * width * height))
                     for f in (0.3, 0.7)[:len(labels)]]).astype(np.float32)
    return Explanation(image=image, heatmaps=maps, coverage=np.ones((height, width), bool),
                       indices=list(range(len(labels))), labels=list(labels), scores=list(scores),
                       predictions=PREDICTIONS, recipe="resnet", method=method, **extra)


def strips(exp: Explanation) -> list[np.ndarray]:
    """The label strip above each overlay of ``exp.figure()``."""
    fig = np.asarray(exp.figure())
    top = fig.shape[0] - exp.image.height
    w = exp.image.width
    return [fig[:top, i * w:(i + 1) * w] for i in range(len(exp.indices))]


def ink(strip: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` of the dark (text) pixels of a white strip."""
    ys, xs = np.nonzero(strip.min(axis=2) < 128)
    assert len(xs), "a label strip without text"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_figure_is_the_overlays_under_their_label_strips():
    exp = make()
    fig = exp.figure()
    top = fig.height - 70
    assert fig.width == 180 and top == max(render.strip(c, 90).height for c in exp.captions()) > 0
    body = np.asarray(fig)[top:]
    for i in range(2):  # under the strip: exactly the raw overlay
        assert (body[:, i * 90:(i + 1) * 90] == np.asarray(exp.overlay(i))).all()
    assert exp.captions() == ["tabby 0.60 · gradcam", "remote control 0.20 · gradcam"]


def test_strip_pixels_differ_per_label_score_and_method_and_repeat_for_the_same_caption():
    a, b = strips(make())
    assert not np.array_equal(a, b)
    swapped = strips(make(labels=("remote control, remote", "tabby, tabby cat"), scores=(0.2, 0.6), seed=1))
    assert np.array_equal(swapped[0], b) and np.array_equal(swapped[1], a)  # the caption alone decides the strip
    assert not np.array_equal(strips(make(scores=(0.7, 0.2)))[0], a)  # the score is drawn
    assert not np.array_equal(strips(make(method="hirescam"))[0], a)  # and the method
    x0, y0, x1, y1 = ink(a)
    assert x1 - x0 > 40 and y1 - y0 >= 7, "the text is too small to read"


@pytest.mark.parametrize("width", [48, 224, 451, 1200, 3000])
def test_labels_are_readable_at_any_size(width):
    exp = make(width=width, height=max(32, width * 2 // 3), labels=("tiger cat",), scores=(0.39,))
    (strip,) = strips(exp)
    x0, y0, x1, y1 = ink(strip)
    size = render.text_size(width)
    assert size == min(render.MAX_TEXT, max(render.MIN_TEXT, round(width / 24)))
    assert y1 - y0 >= 0.6 * size and x1 <= width, "glyphs shorter than the font size, or cut off on the right"
    if width >= 224:  # one line: a band about 1.5 × the font size
        assert strip.shape[0] == size + 2 * max(2, size // 4) < exp.image.height / 4
    else:  # narrow: wrapped onto at most three lines, never below the minimum size
        assert strip.shape[0] <= 4 * size and size == render.MIN_TEXT


def test_long_labels_wrap_onto_three_lines_then_end_in_an_ellipsis_within_the_width():
    long = "a very long label that cannot possibly fit, with synonyms"
    (strip,) = strips(make(width=60, height=60, labels=(long,), scores=(0.5,)))
    assert ink(strip)[2] <= 60
    lines, face = render._fit(render.caption(long, 0.5, "gradcam"), 60 - 4, render.text_size(60))
    assert len(lines) == 3 and lines[-1].endswith("…") and face.size == render.MIN_TEXT
    assert all(face.getlength(line) <= 56 for line in lines)
    assert render._fit("tiger cat 0.39 · gradcam", 44, 10)[0] == ["tiger cat", "0.39 ·", "gradcam"]


def test_label_sizes_grow_with_the_image():
    small, large = (ink(strips(make(width=w, height=w, labels=("tiger cat",), scores=(0.4,)))[0]) for w in (200, 1000))
    assert (large[3] - large[1]) > 3 * (small[3] - small[1])


def test_saved_png_is_the_labelled_figure_and_the_json_has_the_captions(tmp_path):
    exp = make()
    (png,) = exp.save(tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(exp.figure()))
    _, meta = exp.save(tmp_path / "out.npz")
    info = json.loads(meta.read_text())
    assert info["captions"] == exp.captions() and info["labels"] == exp.labels and info["method"] == "gradcam"


def test_dff_figure_has_a_title_strip_and_its_legend_text_in_the_json(tmp_path):
    legend = [[(0, "tabby, tabby cat", 0.7), (3, "tiger cat", 0.2)], [(2, "espresso", 0.9), (1, "remote control", 0.05)]]
    exp = make(method="dff", legend=legend)
    fig = exp.figure()
    assert fig.width > 90 and fig.height > 70
    top = np.asarray(fig)[:fig.height - 70]
    assert ink(top)[2] > 40  # the title
    _, meta = exp.save(tmp_path / "dff.npz")
    info = json.loads(meta.read_text())
    assert info["captions"] == ["tabby 0.70, tiger cat 0.20", "espresso 0.90, remote control 0.05"]
    assert info["legend"] == [[list(n) for n in names] for names in legend]
    other = make(method="dff", legend=[legend[1], legend[0]])  # the legend panel shows the text
    assert not np.array_equal(np.asarray(other.figure()), np.asarray(fig))


def test_repr_html_shows_labelled_overlays_and_the_top5():
    exp = make()
    page = exp._repr_html_()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 2
    for i, data in enumerate(pngs):
        shown = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        assert np.array_equal(np.asarray(shown), np.asarray(exp.labelled(i)))
    assert all(label in page for _, label, _ in PREDICTIONS) and "0.600" in page and "<table>" in page
    assert exp._repr_png_() == _png_bytes(exp.figure())


def _png_bytes(picture):
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_head_overlays_are_labelled_per_head():
    exp = make(labels=("tabby, tabby cat",), scores=(0.6,), method="attention",
               heads=np.random.default_rng(0).random((3, 70, 90)).astype(np.float32))
    heads = exp.head_overlays()
    assert len(heads) == 3 and all(h.size == (90, 70 + render.strip("x", 90).height) for h in heads)
    assert not np.array_equal(np.asarray(heads[0])[:10], np.asarray(heads[1])[:10])  # "head 0" vs "head 1"
    assert make().head_overlays() == []


def test_plot_draws_into_a_matplotlib_axis():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = make()
    fig, ax = plt.subplots()
    picture = exp.plot(ax)
    assert np.array_equal(np.asarray(ax.images[0].get_array()), np.asarray(picture))
    assert np.array_equal(np.asarray(picture), np.asarray(exp.figure()))
    plt.close(fig)


def test_plot_and_views_work_without_matplotlib(tmp_path):
    exp = make()
    exp.save(tmp_path / "e.npz")
    code = f"""
import sys
sys.modules["matplotlib"] = None  # import matplotlib raises ImportError
from xai_recipes.explanation import load
exp = load({str(tmp_path / "e.npz")!r})
picture = exp.plot()
assert picture.size == exp.figure().size and exp._repr_html_() and exp._repr_png_()
assert "matplotlib" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok", picture.size)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]
