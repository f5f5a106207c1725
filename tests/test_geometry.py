"""Heatmaps map back through each processor's resize and centre-crop to the original pixels."""

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_processor

from xai_recipes.geometry import measure

PROCESSORS = ["resnet", "vit", "segformer", "mobilevit"]  # ConvNeXt crop_pct, ViT/SegFormer stretch, MobileViT crop+BGR


def preprocess(processor):
    return lambda img: processor(images=img, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("family", PROCESSORS)
@pytest.mark.parametrize("size", [(72, 96), (96, 72), (80, 80), (50, 200)])
def test_a_marked_pixel_maps_back_to_where_it_was(family, size):
    """Draw a bright 3×3 dot, find it in the processor's output, map that input pixel back."""
    proc = tiny_processor(family)
    geometry = measure(preprocess(proc), size)
    H, W = size
    rng = np.random.default_rng(1)
    for _ in range(5):
        cy, cx = int(rng.integers(H // 2 - H // 4, H // 2 + H // 4)), int(rng.integers(W // 2 - min(H, W) // 4, W // 2 + min(H, W) // 4))
        img = np.zeros((H, W, 3), np.uint8)
        img[cy - 1 : cy + 2, cx - 1 : cx + 2] = 255
        out = preprocess(proc)(Image.fromarray(img))[0].mean(0)
        v, u = np.unravel_index(np.argmax(out), out.shape)
        (sy, sx), (oy, ox) = geometry.scale, geometry.offset
        assert abs(sx * u + ox - cx) <= max(1.5, sx), (u, cx)
        assert abs(sy * v + oy - cy) <= max(1.5, sy), (v, cy)
        # and the heatmap of a delta at (v, u), warped back, peaks at the dot
        delta = np.zeros((1, *geometry.input_size), np.float32)
        delta[0, v, u] = 1
        back, coverage = geometry.to_image(delta)
        py, px = np.unravel_index(np.argmax(back[0]), back[0].shape)
        assert abs(px - cx) <= max(1.5, sx) + 1 and abs(py - cy) <= max(1.5, sy) + 1
        assert back.shape == (1, H, W) and coverage.shape == (H, W)


def test_centre_crop_coverage_matches_the_crop():
    geometry = measure(preprocess(tiny_processor("resnet")), (72, 96))
    _, coverage = geometry.to_image(np.zeros((1, 64, 64), np.float32))
    rows, cols = np.where(coverage)
    # shortest edge 72 → 64/0.875 = 73, crop 64: 64/73 of each side kept, centred
    kept = 72 * 64 / 73
    assert abs((rows.max() - rows.min() + 1) - kept) <= 1.5
    assert abs((cols.max() - cols.min() + 1) - 96 * 64 / 97) <= 1.5
    assert abs((cols.min() + cols.max()) / 2 - 47.5) <= 1
    assert not coverage[:, :10].any()  # the left border was cropped away


def test_stretching_processor_covers_everything():
    geometry = measure(preprocess(tiny_processor("vit")), (50, 200))
    assert geometry.scale == pytest.approx((50 / 64, 200 / 64), rel=0.01)
    _, coverage = geometry.to_image(np.zeros((1, 64, 64), np.float32))
    assert coverage.all()
