"""Figures drawn with numpy and PIL only: heatmap overlays, signed maps, concept maps with their
legend, and the label strips that name what each overlay shows.

(grad-cam's ``show_factorization_on_image`` calls ``matplotlib.cm.get_cmap``, which current
matplotlib no longer has.)
"""

from __future__ import annotations

import colorsys
import re
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Label text size relative to the picture's width, and its bounds in pixels.
TEXT_PER_WIDTH = 1 / 24
MIN_TEXT, MAX_TEXT = 10, 64


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` pixels (the same glyphs on every machine)."""
    return ImageFont.load_default(size=size)


def text_size(width: int) -> int:
    """The label font size for a picture ``width`` pixels wide: scales with it, within bounds."""
    return int(min(MAX_TEXT, max(MIN_TEXT, round(width * TEXT_PER_WIDTH))))


def _cut(text: str, width: int, face: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """``text``, or its longest start that fits ``width`` with an ellipsis."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _fit(text: str, width: int, size: int, max_lines: int = 3) -> tuple[list[str], ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    """Lines of ``text`` that fit ``width``: one line, shrinking the font to 3/4 of ``size`` (not
    below ``MIN_TEXT``) if needed; else wrapped at spaces into up to ``max_lines`` lines, the
    last (and any word longer than a line) cut with an ellipsis."""
    smallest = max(MIN_TEXT, min(size, round(size * 3 / 4)))
    while size > smallest and font(size).getlength(text) > width:
        size -= 1
    face = font(size)
    if face.getlength(text) <= width:
        return [text], face
    lines: list[str] = []
    words = re.split(r" +(?!·)", text.strip())  # a "·" separator stays at the end of its line
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and face.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = lines[-1] + " " + " ".join(words)
    return [_cut(line, width, face) for line in lines], face


def caption(label: str, score: float, method: str) -> str:
    """What a label strip says: ``"tiger cat 0.62 · gradcam"`` (the label's first synonym)."""
    return f"{label.split(',')[0].strip()} {score:.2f} · {method}"


def strip(text: str, width: int, size: int | None = None) -> Image.Image:
    """A white band ``width`` wide with ``text`` in black, sized to the width (see :func:`text_size`);
    text too long for one line is wrapped (narrow images) or cut with an ellipsis."""
    size = size or text_size(width)
    pad = max(2, size // 4)
    lines, face = _fit(text, width - 2 * pad, size)
    line_h = round(face.size * 1.15)
    band = Image.new("RGB", (width, line_h * (len(lines) - 1) + face.size + 2 * pad), "white")
    draw = ImageDraw.Draw(band)
    for n, line in enumerate(lines):
        draw.text((pad, pad + n * line_h + face.size // 2), line, fill="black", font=face, anchor="lm")
    return band


def labelled(picture: Image.Image, text: str, size: int | None = None, height: int = 0) -> Image.Image:
    """``picture`` with a label strip saying ``text`` above it (the strip at least ``height`` high)."""
    band = strip(text, picture.width, size)
    top = max(band.height, height)
    out = Image.new("RGB", (picture.width, top + picture.height), "white")
    out.paste(band, (0, 0))
    out.paste(picture.convert("RGB"), (0, top))
    return out


def labelled_row(pictures: list[Image.Image], texts: list[str]) -> Image.Image:
    """Each picture under its label strip, side by side; the strips share one height, so the
    pictures stay aligned when one label needs more lines than another."""
    height = max(strip(t, p.width).height for p, t in zip(pictures, texts))
    return side_by_side([labelled(p, t, height=height) for p, t in zip(pictures, texts)])


def side_by_side(pictures: list[Image.Image], gap: int = 0) -> Image.Image:
    """Pictures in one row, top-aligned, on white."""
    out = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1),
                            max(p.height for p in pictures)), "white")
    x = 0
    for p in pictures:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


def palette(n: int) -> np.ndarray:
    """``n`` well-separated saturated colours, ``n×3`` uint8."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)] for i in range(n)], np.uint8)


def legend_lines(legend: list[list[tuple[int, str, float]]]) -> list[str]:
    """One line per concept: the classes the model reads from it, with probabilities."""
    return [", ".join(f"{label.split(',')[0]} {score:.2f}" for _, label, score in names) for names in legend]


def heat(image: Image.Image, heatmap: np.ndarray, coverage: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """A map in [0, 1] as a jet colour overlay on the image (pixels outside ``coverage`` dimmed).

    The same pixels as grad-cam's ``show_cam_on_image`` (which imports matplotlib's pyplot)."""
    import cv2

    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    rgb = np.asarray(image, dtype=np.float32) / 255
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    cam = (1 - image_weight) * (np.float32(colours) / 255) + image_weight * rgb
    out = np.uint8(255 * (cam / np.max(cam)))
    out[~coverage] = (np.asarray(image)[~coverage] * 0.35).astype(np.uint8)
    return Image.fromarray(out)


def factorization(image: Image.Image, maps: np.ndarray, coverage: np.ndarray,
                  legend: list[list[tuple[int, str, float]]], image_weight: float = 0.3) -> Image.Image:
    """Each pixel coloured by its strongest concept (brightness = that concept's map), with a
    legend panel: one swatch per concept and the classes that name it."""
    colours = palette(len(maps))
    strongest = maps.argmax(0)
    strength = maps.max(0)[..., None]
    rgb = np.asarray(image, np.float32)
    paint = colours[strongest].astype(np.float32) * strength
    mixed = image_weight * rgb + (1 - image_weight) * paint
    mixed[~coverage] = rgb[~coverage] * 0.35
    picture = Image.fromarray(mixed.clip(0, 255).astype(np.uint8))

    face = font(max(MIN_TEXT, min(text_size(image.width), image.height // 12)))
    lines = legend_lines(legend)
    line_h = face.size + 6
    swatch = face.size + 4
    width = swatch + 14 + max(int(face.getlength(text)) for text in lines) + 8
    panel = Image.new("RGB", (width, max(image.height, line_h * len(lines) + 8)), "white")
    draw = ImageDraw.Draw(panel)
    for c, text in enumerate(lines):
        y = 4 + c * line_h
        draw.rectangle([6, y + 2, 6 + swatch - 4, y + face.size], fill=tuple(int(v) for v in colours[c]))
        draw.text((swatch + 8, y), text, fill="black", font=face)
    out = Image.new("RGB", (picture.width + panel.width, max(picture.height, panel.height)), "white")
    out.paste(picture, (0, 0))
    out.paste(panel, (picture.width, 0))
    return out


def signed(image: Image.Image, heatmap: np.ndarray, coverage: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """A signed map in [-1, 1] over the image: red for positive evidence, blue for negative."""
    rgb = np.asarray(image, np.float32)
    pos, neg = heatmap.clip(0, 1)[..., None], (-heatmap).clip(0, 1)[..., None]
    paint = pos * np.float32([230, 30, 30]) + neg * np.float32([30, 60, 230]) + (1 - pos - neg) * rgb
    mixed = image_weight * rgb + (1 - image_weight) * paint
    mixed[~coverage] = rgb[~coverage] * 0.35
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def outline(picture: Image.Image, box: tuple[float, float, float, float] | None = None,
            mask: np.ndarray | None = None, colour: tuple[int, int, int] = (0, 255, 0)) -> Image.Image:
    """``picture`` with a detection's box and/or a segment's mask outlined on it (lines scaled to its size)."""
    out = np.array(picture.convert("RGB"))
    width = max(1, round(min(out.shape[:2]) / 150))
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, width)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, width)
    return Image.fromarray(out)
