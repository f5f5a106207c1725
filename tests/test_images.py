"""Any image mode or array layout becomes the same RGB picture."""

import numpy as np
import pytest
from PIL import Image

from xai_recipes.images import load_image

RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1", "I", "I;16", "F", "YCbCr", "HSV"])
def test_pil_modes_become_rgb_of_the_same_size(mode, tmp_path):
    img = Image.fromarray(RGB).convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode in ("RGBA", "CMYK", "YCbCr"):
        assert np.abs(np.asarray(out, int) - RGB).max() <= 3


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = np.asarray(load_image(rgba))
    assert (out == 255).all()


def test_16_bit_and_float_arrays_are_scaled_not_clipped():
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    out = np.asarray(load_image(grey16))
    assert out[0, 0, 0] == 0 and out[2, 3, 0] == round(55000 * 255 / 65535)
    floats = np.full((3, 4, 3), 0.5, np.float32)
    assert (np.asarray(load_image(floats)) == 128).all()
    i16 = Image.fromarray(grey16).convert("I;16")
    assert np.asarray(load_image(i16))[2, 3, 0] == round(55000 * 255 / 65535)


def test_grey_arrays_with_and_without_channel_axis():
    grey = RGB[:, :, 0]
    for arr in (grey, grey[:, :, None]):
        out = np.asarray(load_image(arr))
        assert out.shape == (20, 30, 3) and (out[:, :, 1] == grey).all()


def test_files_with_exif_rotation_are_upright(tmp_path):
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 30)
