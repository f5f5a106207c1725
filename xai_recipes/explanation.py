"""The result of :func:`xai_recipes.explain`."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .geometry import Geometry

FORMAT = "xai-recipes.explanation/1"
_METADATA = ("indices", "labels", "scores", "predictions", "recipe", "method", "target_layers", "source", "legend",
             "intercepts", "task", "boxes")


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Explanation:
    """Heatmaps for T targets on one image, at the original image's size.

    Attributes:
        image: the (RGB) image that was explained.
        heatmaps: ``T×H×W`` float32 in [0, 1]; 0 where the model saw nothing (see ``coverage``).
        coverage: ``H×W`` bool, True where the model's input came from (centre crops drop borders).
        indices, labels, scores: the explained classes, their names and softmax probabilities.
        predictions: the model's top-5 as ``(index, label, probability)``.
        recipe, method: which recipe and CAM method produced the maps.
        target_layers: names of the modules whose activations were used.
        source: where the image came from (its path, or ``<image i>`` in a list).
        geometry: the processor's measured map from model input to image pixels.
        legend: DFF only: per concept (heatmap), the classes the model reads from it, as
            ``(index, label, probability)``; ``indices``/``labels``/``scores`` hold the first.
        contributions, intercepts: patch contributions only: ``T×h×w`` per-patch logit
            contributions (``contributions[t].sum() + intercepts[t]`` is the logit); there the
            heatmaps are signed, in [-1, 1] (divided by the largest magnitude).
        heads: ``attention`` only: ``heads×H×W`` maps, one per attention head of the last
            block, each in [0, 1] (``heatmaps`` holds their mean).
        task: what was explained (``"image-classification"``, ``"zero-shot-image-classification"``:
            ``labels`` are the prompts and ``scores`` the pipeline's probabilities,
            ``"image-feature-extraction"``: ``labels`` name the reference images and ``scores``
            are cosine similarities; ``"object-detection"``: one map per detection, ``scores``
            the post-processing's; ``"image-segmentation"``: one map per segment, ``scores``
            its share of the image).
        boxes: detections only: per map, its box ``(x0, y0, x1, y1)`` in image pixels.
        masks: segments only: ``T×H×W`` bool, per map the region explained.
    """

    image: Image.Image
    heatmaps: np.ndarray
    coverage: np.ndarray
    indices: list[int]
    labels: list[str]
    scores: list[float]
    predictions: list[tuple[int, str, float]]
    recipe: str
    method: str
    target_layers: list[str] = field(default_factory=list)
    source: str | None = None
    geometry: Geometry | None = None
    legend: list[list[tuple[int, str, float]]] | None = None
    signed: bool = False  # heatmaps in [-1, 1], sign kept (patch contributions, Captum with signed=True)
    contributions: np.ndarray | None = None
    intercepts: list[float] | None = None
    heads: np.ndarray | None = None
    task: str = "image-classification"
    boxes: list[tuple[float, float, float, float]] | None = None
    masks: np.ndarray | None = None

    def overlay(self, i: int = 0, image_weight: float = 0.5) -> Image.Image:
        """The ``i``-th heatmap blended over the image (pixels outside ``coverage`` dimmed), unlabelled; a
        detection's box and a segment's mask are outlined on it."""
        if self.contributions is not None or self.signed:  # diverging: red positive, blue negative
            picture = render.signed(self.image, self.heatmaps[i], self.coverage, image_weight)
        else:
            picture = render.heat(self.image, self.heatmaps[i], self.coverage, image_weight)
        if self.boxes is not None or self.masks is not None:  # the detection's box, the segment's outline
            picture = render.outline(picture, None if self.boxes is None else self.boxes[i],
                                     None if self.masks is None else self.masks[i])
        return picture

    def caption(self, i: int = 0) -> str:
        """The text of the ``i``-th overlay's label strip: label, score and method."""
        return render.caption(self.labels[i], self.scores[i], self.method)

    def labelled(self, i: int = 0, image_weight: float = 0.5) -> Image.Image:
        """:meth:`overlay` ``i`` with a strip above it naming the target, its score and the method."""
        return render.labelled(self.overlay(i, image_weight), self.caption(i))

    def head_overlays(self) -> list[Image.Image]:
        """``attention`` only: one labelled overlay per attention head (empty when there are none)."""
        if self.heads is None:
            return []
        return [render.labelled(render.heat(self.image, h, self.coverage), f"head {n} · {self.method}")
                for n, h in enumerate(self.heads)]

    def figure(self) -> Image.Image:
        """All targets' labelled overlays side by side; for DFF, the concepts in colour with their legend.

        Each overlay has a label strip above it (target, score, method) whose text scales with
        the image's width, so it stays readable however large the image is."""
        if self.legend is not None:
            picture = render.factorization(self.image, self.heatmaps, self.coverage, self.legend)
            title = f"{self.method} · {len(self.legend)} concepts, named by the classes the model reads from them"
            return render.labelled(picture, title, render.text_size(self.image.width))
        return render.labelled_row([self.overlay(i) for i in range(len(self.indices))], self.captions())

    def captions(self) -> list[str]:
        """The text drawn on :meth:`figure`: one caption per overlay; for DFF, the legend's lines."""
        if self.legend is not None:
            return render.legend_lines(self.legend)
        return [self.caption(i) for i in range(len(self.indices))]

    def plot(self, ax=None) -> Image.Image:
        """The labelled :meth:`figure` as a PIL image (no matplotlib needed); given a matplotlib
        ``ax``, it is also drawn into it (axes hidden)."""
        picture = self.figure()
        if ax is not None:
            ax.imshow(np.asarray(picture))
            ax.set_axis_off()
            ax.set_title(self.recipe + " / " + self.method)
        return picture

    def save(self, path: str | os.PathLike) -> list[Path]:
        """Write the result; returns the files written.

        ``result.npz`` (any suffix that is not an image format) writes the arrays (heatmaps,
        coverage, image) to ``result.npz`` and everything else (labels, scores, predictions,
        recipe, method, layers, geometry, the figure's captions) to ``result.json``, no pickle:
        :func:`load` reads them back. An image suffix (``.png``, ``.jpg``, ...) writes the
        labelled :meth:`figure` instead.
        """
        path = Path(path)
        if path.suffix.lower() in Image.registered_extensions():
            self.figure().save(path)
            return [path]
        arrays, meta = path.with_suffix(".npz"), path.with_suffix(".json")
        extra = {k: getattr(self, k) for k in ("contributions", "heads", "masks") if getattr(self, k) is not None}
        np.savez_compressed(arrays, heatmaps=self.heatmaps, coverage=self.coverage, image=np.asarray(self.image), **extra)
        info = {k: getattr(self, k) for k in _METADATA}
        info["geometry"] = dataclasses.asdict(self.geometry) if self.geometry else None
        info["captions"] = self.captions()
        if self.signed:
            info["signed"] = True
        meta.write_text(json.dumps({"format": FORMAT, "arrays": arrays.name, **info}, indent=1))
        return [arrays, meta]

    def _repr_png_(self) -> bytes:
        return _png(self.figure())

    def _repr_html_(self) -> str:
        """Jupyter's view: the labelled overlays (or DFF's concepts and legend) and the top-5 predictions."""
        pictures = [self.figure()] if self.legend is not None else [self.labelled(i) for i in range(len(self.indices))]
        images = "".join(
            f'<img src="data:image/png;base64,{base64.b64encode(_png(p)).decode()}" alt="{html.escape(alt)}" '
            f'style="max-width:100%;height:auto;margin:0 6px 6px 0">'
            for p, alt in zip(pictures, [self.method] if self.legend is not None else self.captions()))
        rows = "".join(f"<tr><td style='text-align:right'>{i}</td><td style='text-align:left'>{html.escape(label)}</td>"
                       f"<td style='text-align:right'>{p:.3f}</td></tr>" for i, label, p in self.predictions)
        return (f"<div class='xai-recipes-explanation'><div><b>{html.escape(self.recipe)}</b> / "
                f"<b>{html.escape(self.method)}</b>{' · ' + html.escape(self.source) if self.source else ''}</div>"
                f"<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>{images}</div>"
                "<table><caption style='text-align:left'>top-5 predictions</caption><thead><tr><th>class</th><th>label</th><th>probability</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")

    def __repr__(self) -> str:
        targets = ", ".join(f"{l!r} ({s:.3f})" for l, s in zip(self.labels, self.scores))
        return f"Explanation(recipe={self.recipe!r}, method={self.method!r}, targets=[{targets}], size={self.heatmaps.shape})"


def load(path: str | os.PathLike) -> Explanation:
    """Read an :class:`Explanation` written by :meth:`Explanation.save` (its ``.npz`` or ``.json``).

    Nothing is unpickled, and the file is checked before it is trusted: array sizes are read from
    the ``.npz`` headers before any data (no bombs), then every array and field is checked against
    the image (shapes, types, finite maps in range). A truncated, foreign or hostile file raises
    :class:`~xai_recipes.errors.ExplanationFileError` naming it.
    """
    from .errors import ExplanationFileError

    meta_path = Path(path).with_suffix(".json")

    def bad(why: str) -> ExplanationFileError:
        return ExplanationFileError(f"cannot load an explanation from {path}: {why}; pass the .npz or .json written "
                                    "by Explanation.save() (save it again if the file was damaged)")

    try:
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise bad(f"{meta_path.name} has {meta_path.stat().st_size:,} bytes, too many for an explanation's metadata")
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except ExplanationFileError:
        raise
    except (OSError, ValueError) as exc:  # missing, unreadable, not UTF-8, not JSON
        raise bad(f"cannot read {meta_path.name} ({type(exc).__name__}: {exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise bad(f"{meta_path.name} is not in the format {FORMAT!r}")
    name = info.get("arrays")
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise bad(f"its 'arrays' entry {str(name)[:80]!r} is not the name of a file beside it")
    signed = info.get("signed") is True
    arrays = _read_arrays(meta_path.with_name(name), bad, signed)
    heatmaps = arrays["heatmaps"]
    if "masks" in arrays and len(arrays["masks"]) != len(heatmaps):
        raise bad(f"it holds {len(arrays['masks'])} masks for {len(heatmaps)} maps")
    fields = _check_metadata(info, len(heatmaps), bad)
    geometry = _check_geometry(info.get("geometry"), arrays["image"].shape[:2], bad)
    return Explanation(
        image=Image.fromarray(arrays["image"]),
        heatmaps=heatmaps,
        coverage=arrays["coverage"],
        geometry=geometry,
        contributions=arrays.get("contributions"),
        heads=arrays.get("heads"),
        masks=arrays.get("masks"),
        signed=signed,
        **fields,
    )


_MAX_META_BYTES = 64 * 2**20
_MAX_MAPS = 4096  # heatmaps (targets, concepts) or attention heads in one explanation


def _read_arrays(npz: Path, bad, signed: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a saved explanation, each header checked (no object dtype, shapes fitting the
    image, sizes within :data:`xai_recipes.images.MAX_PIXELS`) before its data is read."""
    import zipfile

    from .errors import ExplanationFileError
    from .images import MAX_PIXELS

    def shape_ok(key: str, shape: tuple[int, ...], dtype: np.dtype, hw: tuple[int, ...]) -> bool:
        if key == "image":
            return len(shape) == 3 and shape[2] == 3 and dtype == np.uint8 and 0 < shape[0] * shape[1] <= MAX_PIXELS
        if key == "coverage":
            return shape == hw and dtype == np.bool_
        if key == "masks":  # segments: one per map, at the image's size
            return len(shape) == 3 and dtype == np.bool_ and 0 < shape[0] <= _MAX_MAPS and shape[1:] == hw
        if dtype.kind != "f":
            return False
        if key == "contributions":  # on the model's patch grid
            return len(shape) == 3 and 0 < shape[0] <= _MAX_MAPS and 0 < shape[1] * shape[2] <= MAX_PIXELS
        return len(shape) == 3 and 0 < shape[0] <= _MAX_MAPS and shape[1:] == hw  # heatmaps, heads

    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(npz) as archive:
            members = {m.removesuffix(".npy"): m for m in archive.namelist()}
            missing = [k for k in ("image", "coverage", "heatmaps") if k not in members]
            if missing:
                raise bad(f"{npz.name} lacks the arrays {missing}")
            for key in ("image", "coverage", "heatmaps", "contributions", "heads", "masks"):
                if key not in members:
                    continue
                with archive.open(members[key]) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise bad(f"{npz.name}'s {key!r} holds Python objects, which only pickle can read; it is not "
                              "an explanation file (nothing was unpickled)")
                hw = tuple(out["image"].shape[:2]) if "image" in out else ()
                if not shape_ok(key, tuple(shape), dtype, hw):
                    raise bad(f"{npz.name}'s {key!r} is a {dtype} array of shape {tuple(shape)}, which does not fit an "
                              f"explanation of a {hw or 'H×W'} image")
                with archive.open(members[key]) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except ExplanationFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged zip fails in many ways (BadZipFile, zlib.error, EOFError...)
        raise bad(f"cannot read {npz.name} ({type(exc).__name__}: {exc})") from None
    low = -1.0 if "contributions" in out or signed else 0.0  # patch contributions, signed attributions
    for key in ("heatmaps", "heads", "contributions"):
        if key in out and not np.isfinite(out[key]).all():
            raise bad(f"{npz.name}'s {key!r} holds NaN or infinite values")
    for key in ("heatmaps", "heads"):
        if key in out and out[key].size and (out[key].min() < low - 1e-4 or out[key].max() > 1 + 1e-4):
            raise bad(f"{npz.name}'s {key!r} has values outside [{low:g}, 1], which no explanation writes")
    return out


def _check_metadata(info: dict, n_maps: int, bad) -> dict:
    """The metadata fields of :class:`Explanation`, each checked for its type (and one entry per map)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def index(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def triple(v) -> bool:
        return isinstance(v, list) and len(v) == 3 and index(v[0]) and isinstance(v[1], str) and number(v[2])

    def per_map(check):
        return lambda v: isinstance(v, list) and len(v) == n_maps and all(map(check, v))

    checks = {
        "indices": per_map(index), "labels": per_map(lambda v: isinstance(v, str)), "scores": per_map(number),
        "predictions": lambda v: isinstance(v, list) and all(map(triple, v)),
        "recipe": lambda v: isinstance(v, str), "method": lambda v: isinstance(v, str),
        "target_layers": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "source": lambda v: v is None or isinstance(v, str),
        "legend": lambda v: v is None or (isinstance(v, list) and all(isinstance(x, list) and all(map(triple, x)) for x in v)),
        "intercepts": lambda v: v is None or per_map(number)(v),
        "task": lambda v: isinstance(v, str) and 0 < len(v) <= 100,
        "boxes": lambda v: v is None or per_map(lambda b: isinstance(b, list) and len(b) == 4 and all(map(number, b))
                                                and all(np.isfinite(b)) and b[0] <= b[2] and b[1] <= b[3])(v),
    }
    fields = {}
    info = {"task": "image-classification", "boxes": None, **info}  # files written before tasks, boxes existed
    for key in _METADATA:
        if key not in info:
            raise bad(f"its metadata lacks {key!r}")
        if key in checks and not checks[key](info[key]):
            raise bad(f"its metadata {key!r} = {str(info[key])[:80]} is not what Explanation.save() writes "
                      f"({n_maps} map(s) in the arrays)")
        fields[key] = info[key]
    fields["predictions"] = [tuple(p) for p in fields["predictions"]]
    if fields["boxes"] is not None:
        fields["boxes"] = [tuple(float(x) for x in b) for b in fields["boxes"]]
    if fields["legend"] is not None:
        fields["legend"] = [[tuple(name) for name in names] for names in fields["legend"]]
    return fields


def _check_geometry(geometry, image_size: tuple[int, ...], bad) -> Geometry | None:
    if geometry is None:
        return None
    keys = ("image_size", "input_size", "scale", "offset")
    pairs = isinstance(geometry, dict) and set(geometry) == set(keys) and all(
        isinstance(geometry[k], list) and len(geometry[k]) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in geometry[k])
        for k in keys)
    if not pairs or tuple(geometry["image_size"]) != tuple(image_size) or min(geometry["scale"]) <= 0:
        raise bad(f"its geometry {str(geometry)[:120]} is not a resize/crop map of its {tuple(image_size)} image")
    return Geometry(**{k: tuple(geometry[k]) for k in keys})
