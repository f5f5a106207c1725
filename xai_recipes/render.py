"""Pictures of concept maps with their legend, drawn with numpy and PIL only.

(grad-cam's ``show_factorization_on_image`` calls ``matplotlib.cm.get_cmap``, which current
matplotlib no longer has.)
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """``n`` well-separated saturated colours, ``n×3`` uint8."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)] for i in range(n)], np.uint8)


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

    font = ImageFont.load_default(size=max(10, min(16, image.height // 20)))
    lines = [(c, ", ".join(f"{label.split(',')[0]} {score:.2f}" for _, label, score in names))
             for c, names in enumerate(legend)]
    line_h = font.size + 6
    width = 28 + max(int(font.getlength(text)) for _, text in lines) + 8
    panel = Image.new("RGB", (width, max(image.height, line_h * len(lines) + 8)), "white")
    draw = ImageDraw.Draw(panel)
    for row, (c, text) in enumerate(lines):
        y = 4 + row * line_h
        draw.rectangle([6, y + 2, 20, y + font.size], fill=tuple(int(v) for v in colours[c]))
        draw.text((28, y), text, fill="black", font=font)
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
