"""Turn whatever the user passes as an image into an 8-bit RGB PIL image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Largest image accepted, in pixels (PIL's decompression-bomb limit).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970


def _check_size(width: int, height: int, what: str) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"{what} is empty ({width}×{height} pixels); pass an image with content")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{what} has {width}×{height} = {width * height:,} pixels, more than the {MAX_PIXELS:,} allowed "
            "(a possible decompression bomb); downscale it first, or raise xai_recipes.images.MAX_PIXELS "
            "if you trust it"
        )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return np.clip(arr.astype(np.float64) * (255 / top), 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("image array contains NaN or infinite values")
        scale = 255 if arr.max(initial=0) <= 1.0 else 1
        return np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    raise ImageError(f"unsupported image array dtype {arr.dtype}; pass uint8, uint16 or float pixels")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(
            f"image array of shape {arr.shape} is not H×W, H×W×1, H×W×3 or H×W×4 (channels last); "
            "for a C×H×W tensor use arr.transpose(1, 2, 0)"
        )
    _check_size(arr.shape[1], arr.shape[0], "image array")
    return Image.fromarray(np.ascontiguousarray(_to_uint8(arr)))


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load_image(image: ImageInput) -> Image.Image:
    """Path, PIL image or ``H×W[×C]`` array → RGB PIL image.

    Any PIL mode works: transparency is composited on white, 16-bit and float images are
    scaled to 8 bits, CMYK/palette/grey are converted, EXIF rotation is applied for files.
    """
    if isinstance(image, np.ndarray):
        img = _from_array(image)
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as opened:
                _check_size(*opened.size, f"image {str(path)!r}")
                opened.load()
                img = ImageOps.exif_transpose(opened)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image {str(path)!r} is too large to decode safely: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(
                f"cannot decode {str(path)!r} as an image ({type(exc).__name__}: {exc}); "
                "pass a PNG/JPEG/... file, a PIL image or an H×W×3 array"
            ) from None
    else:
        raise ImageError(f"cannot use a {type(image).__name__} as an image; pass a path, PIL image or numpy array")

    _check_size(*img.size, "image")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _from_array(np.asarray(img))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose extension PIL can decode."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
