"""Turn whatever the user passes as an image into an 8-bit RGB PIL image, or an :class:`ImageError`.

Inputs come from anywhere (downloads, uploads, phones), so every failure of the decoder is
answered with an ``ImageError`` naming the input and what to do, never an exception from deep
inside PIL. Safety defaults: sizes are checked from the header before any pixel is decoded
(decompression bombs), thin strips whose resize would balloon are refused, and formats that PIL
renders by running an external program (EPS: Ghostscript) are never opened. Animated files
(GIF, WebP, APNG) and multi-page TIFFs give their **first** frame; EXIF orientation is applied.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, IO[bytes], Image.Image, np.ndarray]

#: Largest image accepted, in pixels (PIL's decompression-bomb limit), checked from the header.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970
#: Longest side over shortest side accepted. Processors resize the short side, so a 2×200000
#: strip (a few kilobytes) would become a 256×25-million-pixel intermediate (gigabytes).
MAX_ASPECT = 50
#: Smallest side accepted: the map is put back on the image by measuring how the processor
#: resizes each side (:mod:`xai_recipes.geometry`), which a 1-pixel side does not show.
MIN_SIDE = 2
#: PIL formats never opened: PIL renders EPS by running Ghostscript, an external program.
BLOCKED_FORMATS = frozenset({"EPS"})
_FIX = "pass a PNG/JPEG/WebP/TIFF/GIF file, a PIL image or an H×W×3 array"


def _check_size(width: int, height: int, what: str) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"{what} is empty ({width}×{height} pixels); pass an image with content")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{what} has {width}×{height} = {width * height:,} pixels, more than the {MAX_PIXELS:,} allowed "
            "(a possible decompression bomb); downscale it first, or raise xai_recipes.images.MAX_PIXELS "
            "if you trust it"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{what} is {width}×{height} pixels: a side shorter than {MIN_SIDE} pixels leaves nothing to place "
            f"a map on (how the processor resizes a side is measured on it); pass an image at least "
            f"{MIN_SIDE}×{MIN_SIDE} pixels, e.g. upscale it"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"{what} is {width}×{height} pixels, an aspect ratio over {MAX_ASPECT}:1: resizing its short side to the "
            "model's input would blow the long side up to millions of pixels. Crop or pad it first, or raise "
            "xai_recipes.images.MAX_ASPECT if you need it"
        )


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return np.clip(arr.astype(np.float64) * (255 / top), 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{what} contains NaN or infinite values; replace them (np.nan_to_num) or pass "
                             "finite pixels")
        arr = arr.astype(np.float64)  # float16 * 255 could overflow
        scale = 255 if arr.max(initial=0) <= 1.0 else 1
        return np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    raise ImageError(f"{what} has dtype {arr.dtype}, which is not pixels; pass uint8, uint16, bool or float pixels")


def _from_array(arr: np.ndarray, what: str = "image array") -> Image.Image:
    what = f"{what} of shape {arr.shape}"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(
            f"{what} is not H×W, H×W×1, H×W×3 or H×W×4 (channels last); for a C×H×W tensor use "
            "arr.transpose(1, 2, 0), for a batch pass a list of images"
        )
    _check_size(arr.shape[1], arr.shape[0], what)
    return Image.fromarray(np.ascontiguousarray(_to_uint8(arr, what)))


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _formats() -> list[str]:
    Image.init()
    return [f for f in Image.OPEN if f not in BLOCKED_FORMATS]


def _upright(img: Image.Image, what: str) -> Image.Image:
    """``img`` turned as its EXIF orientation says (a new image; ``img`` itself if it has none).
    An unreadable EXIF block leaves the pixels as stored, with a warning."""
    try:
        if img.getexif().get(0x0112, 1) == 1:
            return img
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - corrupt EXIF fails in many ways
        warnings.warn(f"{what}: cannot read its EXIF orientation ({type(exc).__name__}: {exc}); "
                      "used as stored", UserWarning, stacklevel=4)
        return img


def _blocked(prefix: bytes) -> str | None:
    """The blocked format whose signature ``prefix`` has (PIL's own check, nothing parsed), if any."""
    for fmt in sorted(BLOCKED_FORMATS):
        accept = Image.OPEN.get(fmt, (None, None))[1]
        if accept is not None and accept(prefix):
            return fmt
    return None


def _decode(source: Path | IO[bytes], what: str) -> Image.Image:
    """The first frame of an encoded image, upright, its size checked before decoding."""
    try:
        with Image.open(source, formats=_formats()) as opened:
            _check_size(*opened.size, what)
            opened.load()  # the first frame of an animation
            upright = _upright(opened, what)
            return upright.copy() if upright is opened else upright  # the file closes after this block
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what} is too large to decode safely ({exc}); downscale it first") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt files fail in many ways (OSError, SyntaxError,
        # struct.error, EOFError, ValueError, MemoryError...): every one means the bytes are not a usable image
        error = f"{type(exc).__name__}: {exc}"
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                prefix = f.read(16)
        else:
            source.seek(0)
            prefix = source.read(16)
    except Exception:  # noqa: BLE001 - only used to name a blocked format
        prefix = b""
    blocked = _blocked(prefix)
    if blocked:
        raise ImageError(f"{what} is {blocked}, which xai_recipes never opens (PIL renders it by running an external "
                         f"program); convert it to PNG yourself if you trust it")
    raise ImageError(f"cannot decode {what} as an image ({error}); {_FIX}")


def _from_pil(img: Image.Image, what: str) -> Image.Image:
    _check_size(*img.size, what)
    try:
        img.load()  # a lazily opened file decodes here
    except Exception as exc:  # noqa: BLE001 - see _decode
        raise ImageError(f"cannot decode {what} ({type(exc).__name__}: {exc}); {_FIX}") from None
    return _upright(img, what)


def load_image(image: ImageInput) -> Image.Image:
    """Path, encoded bytes (or a binary file object), PIL image or ``H×W[×C]`` array → RGB PIL image.

    Any PIL mode works: transparency is composited on white, 16-bit and float images are
    scaled to 8 bits, CMYK/palette/grey are converted, EXIF orientation is applied (files and
    PIL images opened from files). Animated images and multi-page TIFFs give their first frame.
    Anything else raises :class:`ImageError`.
    """
    if isinstance(image, np.ndarray):
        what = "image array"
        img = _from_array(image)
    elif isinstance(image, Image.Image):
        what = f"PIL image ({image.mode}, {image.width}×{image.height})"
        img = _from_pil(image, what)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        what = f"image bytes ({len(image):,} bytes)"
        img = _decode(io.BytesIO(bytes(image)), what)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        what = f"image {str(path)!r}"
        try:
            exists, is_file = path.exists(), path.is_file()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long...
            raise ImageError(f"{what} is not a usable path ({exc}); pass the path of an image file") from None
        if not is_file:
            kind = "is not a regular file (a folder, pipe or device)" if exists else "does not exist"
            raise ImageError(f"{what} {kind}; pass the path of an image file")
        img = _decode(path, what)
    elif hasattr(image, "read") and hasattr(image, "seek"):
        what = f"image file object {getattr(image, 'name', type(image).__name__)!r}"
        img = _decode(image, what)  # type: ignore[arg-type]
    else:
        raise ImageError(f"cannot use a {type(image).__name__} as an image; pass a path, encoded bytes, a PIL image "
                         "or a numpy array (a torch tensor: tensor.permute(1, 2, 0).numpy())")

    try:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            img = _from_array(np.asarray(img), f"{what} ({img.mode} pixels)")
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            return _flatten_alpha(img)
        return img.convert("RGB") if img.mode != "RGB" else img
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - modes PIL cannot convert to RGB (LAB, ...)
        raise ImageError(f"cannot convert {what} of mode {img.mode!r} to RGB ({type(exc).__name__}: {exc}); "
                         "convert it to RGB yourself first") from None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose extension PIL can decode (blocked formats left out)."""
    Image.init()
    extensions = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt not in BLOCKED_FORMATS}
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def is_image_target(target: object) -> bool:
    """Whether ``target`` is a reference image (PIL image, array, encoded bytes) or a list of them: image
    similarity's target, not a label or a prompt (paths count only where the task is named)."""
    items = target if isinstance(target, (list, tuple)) else [target]
    return bool(items) and all(isinstance(t, (Image.Image, np.ndarray, bytes, bytearray)) for t in items)
