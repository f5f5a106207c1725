"""Coverage-guided fuzzing of image decoding and ``explain()`` (atheris, i.e. libFuzzer for Python).

Each input is a byte string handed to ``explain(model, data)``: decoded as an image file by
``xai_recipes.images`` (PIL underneath, its Python plugins instrumented for coverage) and, when it
decodes, explained with a tiny ResNet. An input starting with ``PROMPT:`` is free text instead: split
at NUL bytes into up to 1,000 prompts (UTF-8, undecodable bytes replaced) and explained as a random
tiny CLIP's zero-shot targets (tests/zero_shot_models.py). An input starting with ``TARGET:`` is detection
targets for a random tiny DETR (tests/object_models.py; items split at ``;``: ``x0,y0,x1,y1`` a box, digits an
index, else a label), one starting with ``REGION:`` a ``region=`` mask for a random tiny SegFormer (two bytes
give its height and width, the rest its pixels). The contract under test: every input ends in an
``XAIRecipesError`` or in a valid explanation (finite heatmaps in [0, 1] of the image's size).
Anything else — another exception, or an invalid explanation — is a failure: one line
``UNTYPED <sha1> <what>`` on stderr (the input saved under ``$FUZZ_CRASH_DIR`` if set), counted,
and fuzzing goes on; ``FUZZ_STRICT=1`` raises instead, so libFuzzer stops and writes the crash file.
A hang is caught by libFuzzer's ``-timeout``, a memory bomb by ``-rss_limit_mb`` / its malloc limit.

    python fuzz/fuzz_explain.py CORPUS_DIR -max_total_time=60 -timeout=20
    python fuzz/fuzz_explain.py CORPUS_DIR -runs=2000

An empty (or new) ``CORPUS_DIR`` is first filled with seeds generated here: small valid PNG, JPEG
(with EXIF rotation), GIF (animated, transparent), WebP, TIFF (CMYK, 16-bit), BMP and ICO files, and a
few decompression-bomb headers. libFuzzer prints ``Done N runs in T second(s)`` at the end;
tests/test_hostile_fuzz.py runs this for a bounded time and asserts no failures.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import atheris
import numpy as np
import torch
import transformers  # noqa: F401 - imported before instrumentation: not instrumented (too big, not ours)

with atheris.instrument_imports(include=["PIL", "xai_recipes"]):
    from PIL import Image

    Image.init()  # every PIL format plugin imported now, so instrumented
    from xai_recipes import XAIRecipesError, explain, images

#: Inputs may declare sizes up to this (not 89 MP): a fuzzer soon writes valid headers of
#: large images, and decoding each would take seconds. The size check itself is the same code.
images.MAX_PIXELS = 1 << 20
STRICT = os.environ.get("FUZZ_STRICT") == "1"
CRASH_DIR = os.environ.get("FUZZ_CRASH_DIR")
failures = 0


def tiny_model() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                                       id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = transformers.ResNetForImageClassification(config).eval()
    return model, transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)


MODEL, PROCESSOR = tiny_model()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zero_shot_models import as_processor, random_clip  # noqa: E402

CLIP_MODEL, _tokenizer, _image_processor = random_clip(torch.float32)
CLIP_PROCESSOR = as_processor(_tokenizer, _image_processor)
PHOTO = np.random.default_rng(1).integers(0, 256, (24, 30, 3), dtype=np.uint8)
PROMPT = b"PROMPT:"
from object_models import IMAGE as OBJECT_IMAGE, random_detr, random_segformer  # noqa: E402

DETR, DETR_PROCESSOR = random_detr()
SEGFORMER, SEGFORMER_PROCESSOR = random_segformer()
TARGET, REGION = b"TARGET:", b"REGION:"


def detection_targets(text: str) -> list:
    """``TARGET:`` text as detection targets: ``x0,y0,x1,y1`` → a box, digits → an index, else a label."""
    out: list = []
    for item in text.split(";")[:50]:
        parts = item.split(",")
        if len(parts) == 4:
            try:
                out.append(tuple(float(p) for p in parts))
                continue
            except ValueError:
                pass
        out.append(int(item) if item.isdigit() and len(item) < 30 else item)
    return out


def region_mask(data: bytes) -> np.ndarray:
    """``REGION:`` bytes as a mask: height and width from the first two bytes, pixels (nonzero = inside) after."""
    if len(data) < 2:
        return np.zeros((0, 0), bool)
    h, w = data[0] % 100, data[1] % 100
    pixels = np.frombuffer(data[2:], np.uint8)
    mask = np.zeros(h * w, bool)
    mask[: min(len(pixels), h * w)] = pixels[: h * w] > 0
    return mask.reshape(h, w)


def problem_with(exp) -> str | None:
    """Why ``exp`` is not a valid explanation, or None."""
    heatmaps = exp.heatmaps
    if heatmaps.ndim != 3 or heatmaps.shape[1:] != (exp.image.height, exp.image.width):
        return f"heatmaps of shape {heatmaps.shape} for a {exp.image.size} image"
    if not np.isfinite(heatmaps).all() or heatmaps.min() < 0 or heatmaps.max() > 1:
        return "heatmaps not finite or outside [0, 1]"
    return None


def fail(data: bytes, what: str) -> None:
    global failures
    failures += 1
    digest = hashlib.sha1(data).hexdigest()[:12]
    print(f"UNTYPED {digest} {what[:300]}", file=sys.stderr, flush=True)
    if CRASH_DIR:
        Path(CRASH_DIR).mkdir(parents=True, exist_ok=True)
        (Path(CRASH_DIR) / f"untyped-{digest}").write_bytes(data)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data.startswith(PROMPT):
                prompts = data[len(PROMPT):].decode("utf-8", "replace").split("\0")[:1000]
                exp = explain(CLIP_MODEL, PHOTO, processor=CLIP_PROCESSOR, method="gradcam", target=prompts)
            elif data.startswith(TARGET):
                targets = detection_targets(data[len(TARGET):].decode("utf-8", "replace"))
                exp = explain(DETR, OBJECT_IMAGE, processor=DETR_PROCESSOR, method="gradcam", target=targets,
                              threshold=0.0)
            elif data.startswith(REGION):
                exp = explain(SEGFORMER, OBJECT_IMAGE, processor=SEGFORMER_PROCESSOR, method="gradcam",
                              region=region_mask(data[len(REGION):]))
            else:
                exp = explain(MODEL, data, processor=PROCESSOR, method="gradcam")
    except XAIRecipesError:
        return
    except Exception as exc:  # noqa: BLE001 - the failure being hunted
        if STRICT:
            raise
        fail(data, f"{type(exc).__name__}: {exc}")
        return
    problem = problem_with(exp)
    if problem:
        if STRICT:
            raise AssertionError(problem)
        fail(data, problem)


# ---------------------------------------------------------------- seeds


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def seeds() -> dict[str, bytes]:
    """Small valid files of every common format and mode, and bomb headers: where mutation starts."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = {
        "rgb.png": _encode(rgb, "PNG"),
        "palette-transparent.png": _encode(rgb.convert("P"), "PNG", transparency=3),
        "grey16.png": _encode(Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "rgb.jpg": _encode(rgb, "JPEG", quality=80),
        "exif6.jpg": _encode(rgb, "JPEG", exif=exif),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0),
        "rgb.webp": _encode(rgb, "WEBP"),
        "lossless.webp": _encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "cmyk.tif": _encode(rgb.convert("CMYK"), "TIFF"),
        "deflate.tif": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "float.tif": _encode(Image.fromarray(rng.random((10, 12)).astype(np.float32)), "TIFF"),
        "rgb.bmp": _encode(rgb, "BMP"),
        "rgb.ico": _encode(rgb, "ICO"),
        "bomb.png": _png_header(100_000, 100_000),
        "strip.png": _encode(Image.new("RGB", (300, 2)), "PNG"),
        "prompts.txt": PROMPT + "a dog\0a cat on a sofa\0the digit seven".encode(),
        "prompt-unicode.txt": PROMPT + "a d\u043eg \u202e\U0001f436".encode(),
        "prompt-long.txt": PROMPT + b"dog " * 300,
        "prompt-empty.txt": PROMPT,
        "targets.txt": TARGET + b"0;a;20,15,60,45",
        "target-box-outside.txt": TARGET + b"0,0,500,500",
        "region.bin": REGION + bytes([60, 80]) + bytes(60 * 40) + bytes([1]) * (60 * 40),
        "region-small.bin": REGION + bytes([10, 10]) + bytes([1]) * 100,
    }
    return out


def main() -> None:
    corpus = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        folder = Path(corpus)
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.iterdir()):
            for name, data in seeds().items():
                (folder / name).write_bytes(data)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
