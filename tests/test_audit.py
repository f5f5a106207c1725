"""audit(): a planted shortcut is found, its control is not flagged; SpRAy's pieces; memory stays flat on 10,000 images.

The models (tests/trained/train_watermark.py, the tiny ResNet of tests/tiny.py): ``resnet_watermark`` was trained on
scenes whose "triangle" images carry a 10×10 px mark in the top-left corner in 90 % of cases (tests/watermark.py);
``resnet_control`` on the same scenes without any mark. Both are audited on the same held-out scenes: 40 per class,
30 of the triangles marked, boxes given.
"""

import json

import numpy as np
import pytest
from synthetic import SHAPES
from watermark import MARK, WATERMARKED, held_out

from conftest import TRAINED

from xai_recipes import audit, explain
from xai_recipes.audit import FIXED_POSITION, best_window, eigengap, small_map, spray
from xai_recipes.cli import main
from xai_recipes.evaluation import energy

WATERMARK, CONTROL = str(TRAINED / "resnet_watermark"), str(TRAINED / "resnet_control")
HELD = 0.8  # share of the marked held-out images the flagged cluster must hold
ON_MARK = 0.5  # share of their map mass that must lie on the mark


@pytest.fixture(scope="module")
def scenes():
    return held_out()


def _data(scenes):
    return [(s.image, SHAPES[s.label], s.box) for s in scenes]


@pytest.fixture(scope="module")
def audited(scenes):
    return audit(WATERMARK, _data(scenes), figures=False)


def _mark_mask() -> np.ndarray:
    x0, y0, x1, y1 = MARK
    mask = np.zeros((64, 64), bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


#: The best measured configuration (below): occlusion, signed (evidence *for* the class: a window whose removal lowers
#: the logit), an 8 px window (the last stage's cell) at stride 8.
OCCLUSION = {"method": "occlusion", "window": 8, "stride": 8, "signed": True}


@pytest.mark.xfail(strict=True, reason=(
    "measured on 160 held-out images (30 marked triangles): no method shows ≥ 0.5 of the mass on the 10×10 mark in "
    "≥ 80 % of them, because the model reads the shape too (erasing the mark leaves p = 0.42). On the mark's box, "
    "median / share of images ≥ 0.5: GradCAM (default, 8×8 stage) 0.07 / 0 % — audit flags nothing, triangles one "
    "cluster (30/30 marked) with 0.16 in its window; GradCAM / LayerCAM / HiResCAM at the 16×16 stage 0.17 / 0.19 / "
    "0.25, 0 %; occlusion 8/4 0.36 / 13 %; signed occlusion 8/8 0.44 / 33 %, 8/4 0.44 / 37 %, 6/3 0.48 / 43 %, 4/2 "
    "0.47 / 40 %; Integrated Gradients 0.21 (signed 0.26, with SmoothGrad 0.22), GradientSHAP 0.25, saliency 0.05 — "
    "all 0-3 %. Even on the mark's box snapped to the 16 px cells (0-15 px) the best is 0.60 / 67-70 %. Signed "
    "occlusion does flag the triangles (test_occlusion_flags_the_watermarked_class) but splits the marked images "
    "into two flagged clusters (17 + 11 of 30: the largest holds 0.57 < 0.8)"))
def test_the_planted_shortcut_is_found(audited, scenes):
    print(audited, [(c.label, [(k.size, round(k.position_share, 3), k.flags) for k in c.clusters])
                    for c in audited.classes])
    assert audited.flagged == [SHAPES[WATERMARKED]]
    found = audited[SHAPES[WATERMARKED]]
    fixed = [c for c in found.clusters if FIXED_POSITION in c.flags]
    assert fixed, "the watermarked class has no fixed-position cluster"
    marked = {f"<image {i}>" for i, s in enumerate(scenes) if s.marked}
    members = {c.id: {r.source for r in found.images if r.cluster == c.id} for c in fixed}
    cluster = max(fixed, key=lambda c: len(members[c.id] & marked))
    held = len(members[cluster.id] & marked) / len(marked)
    x0, y0, x1, y1 = cluster.region  # the flagged window covers the mark's corner
    assert x0 * 64 <= MARK[0] + 8 and y0 * 64 <= MARK[1] + 8
    # the map mass on the mark itself, measured independently of the audit: explain() and the mark's exact box
    inside = [scenes[int(s[7:-1])] for s in sorted(members[cluster.id] & marked)]
    on_mark = [energy(e.heatmaps[0], _mark_mask()) for e in explain(WATERMARK, [s.image for s in inside],
                                                                     target=WATERMARKED, batch_size=32)]
    print(f"flagged cluster {cluster.id}: {cluster.size} images, holds {held:.3f} of the marked images; "
          f"window share {cluster.position_share:.3f}; on the mark: median {np.median(on_mark):.3f}, "
          f"min {np.min(on_mark):.3f}")
    assert held >= HELD
    assert np.median(on_mark) >= ON_MARK and np.mean(np.asarray(on_mark) >= ON_MARK) >= 0.8
    clean = [r for r in found.images if r.source not in marked]  # the unmarked triangles are read by their shape
    assert np.mean([r.cluster != cluster.id for r in clean]) >= 0.8


def test_occlusion_flags_the_watermarked_class_and_not_the_control(scenes):
    """Signed occlusion (OCCLUSION), both models on the same 160 held-out scenes: the watermark model's triangles are
    flagged ``fixed_position`` and no other class is, the flagged clusters hold ≥ 80 % of the marked images and few
    clean ones, their window on the mark's corner; the control model: no class flagged. Measured: triangle flagged
    (clusters of 17 and 11, window shares 0.50 and 0.73, all 28 marked: 0.93 of the 30; 0 clean), control none
    (largest window share 0.03). This is less than the issue's criterion (one cluster, ≥ 0.5 of the mass on the
    mark itself: the strict xfail above), so GradCAM stays the default (occlusion: 64 passes per image here)."""
    found = audit(WATERMARK, _data(scenes), figures=False, n_concepts=2, **OCCLUSION)
    control = audit(CONTROL, _data(scenes), figures=False, n_concepts=2, **OCCLUSION)
    print(found, control, [(c.label, [(k.size, round(k.position_share, 3), k.flags) for k in c.clusters])
                           for c in found.classes])
    assert found.flagged == [SHAPES[WATERMARKED]]
    triangle = found[SHAPES[WATERMARKED]]
    fixed = {c.id for c in triangle.clusters if FIXED_POSITION in c.flags}
    marked = {f"<image {i}>" for i, s in enumerate(scenes) if s.marked}
    inside = {r.source for r in triangle.images if r.cluster in fixed}
    assert len(inside & marked) / len(marked) >= HELD
    assert len(inside - marked) <= 2  # the clean triangles are read by their shape
    for c in triangle.clusters:
        if c.id in fixed:
            assert c.region[0] * 64 <= MARK[0] + 8 and c.region[1] * 64 <= MARK[1] + 8
    assert control.flagged == []
    assert all(max(k.position_share for k in c.clusters) < 0.5 for c in control.classes)


def test_the_watermark_model_reads_the_mark(scenes):
    """The shortcut is really planted: the mark alone turns other classes into triangles, and erasing it costs the
    marked triangles most of their probability; the control model ignores it."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from watermark import draw_mark

    def p_triangle(folder, images):
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**AutoImageProcessor.from_pretrained(folder)(images, return_tensors="pt")).logits
        return logits.softmax(-1)[:, WATERMARKED].numpy()

    others = [s.image.copy() for s in scenes if s.label != WATERMARKED]
    for image in others:
        draw_mark(image)
    erased = [s.image.copy() for s in scenes if s.marked]
    for image in erased:
        image[MARK[1]:MARK[3] + 1, MARK[0]:MARK[2] + 1] = 128
    marked = [s.image for s in scenes if s.marked]
    flipped, control_flipped = np.mean(p_triangle(WATERMARK, others) > 0.5), np.mean(p_triangle(CONTROL, others) > 0.5)
    print(f"mark added to other classes: {flipped:.2f} become triangles (control {control_flipped:.2f}); marked "
          f"triangles p {p_triangle(WATERMARK, marked).mean():.2f} → erased {p_triangle(WATERMARK, erased).mean():.2f}")
    assert flipped >= 0.5 and control_flipped <= 0.1
    assert p_triangle(WATERMARK, marked).mean() - p_triangle(WATERMARK, erased).mean() >= 0.3


def test_the_control_model_is_not_flagged(scenes):
    control = audit(CONTROL, _data(scenes), figures=False)
    print(control, [(c.label, [(k.size, round(k.position_share, 3), k.object_lift and round(k.object_lift, 2))
                               for k in c.clusters]) for c in control.classes])
    assert control.flagged == []
    assert all(max(k.position_share for k in c.clusters) < 0.5 for c in control.classes)


def test_concepts_are_named_by_the_head_and_cover_the_class(audited):
    for c in audited.classes:
        assert 1 <= len(c.concepts) <= 4 and all(k.crops and k.top for k in c.concepts)
        assert sum(k.share for k in c.concepts) == pytest.approx(1.0, abs=1e-6)
        assert any(k.name == c.label for k in c.concepts), (c.label, [k.name for k in c.concepts])


def test_the_json_holds_every_number(audited, tmp_path):
    page = audited.save(tmp_path / "report")
    data = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert page.is_file() and data["flagged"] == audited.flagged and data["n_images"] == 160
    triangle = data["classes"][WATERMARKED]
    assert [c["size"] for c in triangle["clusters"]] == [c.size for c in audited[WATERMARKED].clusters]
    assert len(triangle["images"]) == 40 and {"cluster", "position_share", "object_share"} <= set(triangle["images"][0])


def test_spray_finds_the_number_of_planted_strategies():
    rng = np.random.default_rng(0)
    blobs = []
    for k, (y, x) in enumerate([(2, 2), (12, 3), (7, 12)]):  # three strategies: evidence at three places
        for _ in range(20):
            cy, cx = y + rng.uniform(-1, 1), x + rng.uniform(-1, 1)
            yy, xx = np.mgrid[:16, :16]
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.5).astype(np.float32)  # smooth, as heatmaps are
            blobs.append(small_map(m + rng.uniform(0, 0.01, m.shape).astype(np.float32), 16).ravel())
    labels, values = spray(np.stack(blobs), max_clusters=8)
    assert len(set(labels)) == 3 and len(values) == 9
    assert all(len(set(labels[i * 20:(i + 1) * 20])) == 1 for i in range(3))
    one = np.stack([small_map(rng.uniform(0, 1, (16, 16)).astype(np.float32), 16).ravel() for _ in range(40)])
    assert len(set(spray(one)[0])) <= 3  # noise: no strong structure


def test_eigengap_and_window_helpers():
    from scipy.sparse import block_diag, csr_matrix

    two = block_diag([csr_matrix(np.ones((4, 4)) - np.eye(4))] * 2, format="csr")
    k, values = eigengap(two, 3)
    assert k == 2 and values[0] == pytest.approx(0, abs=1e-9) and values[1] == pytest.approx(0, abs=1e-9)
    grid = np.zeros((16, 16))
    grid[10:13, 4:7] = 1
    assert best_window(grid, 4) in {(9, 3), (9, 4), (10, 3), (10, 4)}


def test_cli_audit_writes_the_report(scenes, tmp_path, capsys):
    data = tmp_path / "classes"
    from PIL import Image

    for i, s in enumerate(scenes[::2]):
        (data / SHAPES[s.label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).save(data / SHAPES[s.label] / f"{i:03d}.png")
    code = main(["audit", WATERMARK, str(data), "--out", str(tmp_path / "r"), "--quiet", "--format", "json",
                 "--n-concepts", "2"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["n_images"] == 80 and (tmp_path / "r" / "index.html").is_file()
    assert report["flagged"] == json.loads((tmp_path / "r" / "audit.json").read_text())["flagged"]


class _Lazy:
    """10,000 tiny labelled images made on demand (a sequence: nothing held)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng(i)
        image = rng.integers(60, 200, (24, 24, 3), dtype=np.uint8)
        y, x = rng.integers(0, 16, 2)
        image[y:y + 8, x:x + 8] = (230, 40, 40)
        return image, i % 4


def test_an_audit_of_ten_thousand_images_keeps_memory_flat():
    """RSS is sampled as the audit reads its images: between the 2,000th and the 10,000th it may grow by the
    per-image record (a 16×16 map and a few numbers, ~1.5 kB) but never by the images or their full maps."""
    import psutil
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      layer_type="basic", num_labels=4)).eval()
    processor = ViTImageProcessor(size={"height": 24, "width": 24})
    process, rss = psutil.Process(), {}

    def watch(items):
        for n, item in enumerate(items, 1):
            if n % 1000 == 0:
                rss[n] = process.memory_info().rss
            yield item

    result = audit(model, _Lazy(10_000), processor=processor, batch_size=128, figures=False, n_concepts=2,
                   concept_images=16, progress=watch)
    growth = (rss[10_000] - rss[2_000]) / 2**20
    print(f"RSS at 2,000 / 6,000 / 10,000 images: {rss[2000] / 2**20:.0f} / {rss[6000] / 2**20:.0f} / "
          f"{rss[10000] / 2**20:.0f} MiB: +{growth:.1f} MiB over 8,000 images; timings {result.timings}")
    assert sum(len(c.images) for c in result.classes) == 10_000
    assert growth < 40  # keeping the explanations would add ≥ 8,000 × (24×24 map + image + coverage) ≈ 60 MiB
