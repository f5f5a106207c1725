"""``audit()``: what a model relies on across a whole data set — its strategies, its shortcuts, its concepts.

Per class, every image is explained for that class (the engine's batched path: one forward/backward
per batch; on Ray, :func:`xai_recipes.ray.explain_dataset`), and:

* **strategies** — Spectral Relevance Analysis (SpRAy, Lapuschkin et al., Nature Communications
  2019): the class's heatmaps, each resampled to ``resolution``² and normalised to unit mass, are
  clustered with spectral clustering (scikit-learn, a symmetric k-nearest-neighbour graph); the
  number of clusters is the one after the largest gap between the smallest eigenvalues of the
  graph's normalised Laplacian (the eigengap). Per cluster: its size, its mean map and the images
  nearest its centre.
* **shortcut flags** — a cluster is flagged ``fixed_position`` when its evidence sits at a fixed
  place across different images: the median share of an image's map mass inside one fixed window
  (``region``² cells of the ``resolution``² grid, placed where the cluster's mean map has the most
  mass) is at least ``position_threshold`` (with annotations, unless that evidence lies on the
  annotated objects); and ``off_object`` (with boxes or masks) when the median share of map mass
  on the object is no more than the object's share of the image times ``object_lift`` (a map
  spread at random scores 1). Clusters smaller than ``min_cluster`` images are never flagged.
* **concepts** — Deep Feature Factorization fitted CRAFT-style on the feature-layer activations of
  (a bounded sample of) all images of the class at once, not per image: NMF splits them into
  ``n_concepts`` concepts, each named by the model's own head (the recipe's ``head``), with the
  image crops where it is strongest.

Memory stays flat in the number of images: one batch of images and full-size maps at a time, per
image only its ``resolution``² map and a few numbers; the concept sample is bounded by
``concept_images`` per class. :mod:`xai_recipes.report` writes the static HTML report.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from . import loading, registry
from .errors import DatasetError, ImageError, XAIRecipesError
from .images import image_files, load_image
from .modelstate import borrowed
from .targets import resolve_targets

#: Rule names of :attr:`Cluster.flags`.
FIXED_POSITION, OFF_OBJECT = "fixed_position", "off_object"


# ----------------------------------------------------------------------------------------------- data


@dataclass
class _Item:
    ref: Any  # how to get the image again (a path, an index into the data), or None
    source: str
    image: Any  # what explain() takes
    label: Any  # label name or index as the data gives it; None: unlabelled (grouped by prediction)
    box: Any = None
    mask: Any = None


class _Data:
    """Any supported data as a stream of items, and a way back to an image by its ref."""

    def __init__(self, data: Any, image_column: str | None, label_column: str | None, box_column: str | None,
                 mask_column: str | None) -> None:
        from . import hfdata
        from .evaluation import Annotated, load_annotations

        self.paths: list[str] | None = None  # every item is a file (Ray can read them)
        self.reload: Callable[[Any], Any] | None = lambda ref: ref
        if isinstance(data, (str, os.PathLike)):
            folder = Path(data)
            if not folder.is_dir():
                raise DatasetError(f"{data} is not a folder; pass a folder of class folders (data/<class>/<image>), a "
                                   "folder with annotations.json, a datasets.Dataset or a list of (image, label)")
            if (folder / "annotations.json").is_file():
                items = [_Item(str(a.image), str(a.image), str(a.image), a.label, a.box, a.mask)
                         for a in load_annotations(folder)]
            else:
                files = image_files(folder)
                if not files:
                    raise ImageError(f"folder {data} holds no image files")
                labelled = all(len(f.relative_to(folder).parts) > 1 for f in files)
                items = [_Item(str(f), str(f), str(f), f.relative_to(folder).parts[0] if labelled else None)
                         for f in files]
            self.paths = [it.source for it in items]
            self._items: Iterable[_Item] = items
            self.count: int | None = len(items)
        elif hfdata.is_dataset(data):
            image = hfdata.image_column(data, image_column)
            label = hfdata.label_column(data, label_column, required=False)
            names = hfdata.label_names(data, label) if label else None
            columns = [c for c in (image, label, box_column, mask_column) if c]

            def from_dataset() -> Iterator[_Item]:
                for i, row in hfdata.rows(data, columns):
                    value = row[label] if label else None
                    if names is not None and value is not None:
                        value = names[int(value)]
                    yield _Item(i, f"row {i}", row[image], value, row[box_column] if box_column else None,
                                np.asarray(row[mask_column]) if mask_column else None)

            self._items = from_dataset()
            indexable = hasattr(data, "__getitem__") and hasattr(data, "__len__")
            self.count = len(data) if indexable else None
            self.reload = (lambda ref: data[int(ref)][image]) if indexable else None
        else:
            if isinstance(data, (bytes, bytearray, np.ndarray, Image.Image)):
                raise DatasetError("audit takes many images: a folder, a datasets.Dataset, or a list of (image, label)")
            reloadable = isinstance(data, SequenceABC)
            self.count = len(data) if reloadable else None

            def from_items() -> Iterator[_Item]:
                for i, entry in enumerate(data):
                    if isinstance(entry, Annotated):
                        image, label, box, mask = entry.image, entry.label, entry.box, entry.mask
                    elif isinstance(entry, tuple) and len(entry) in (2, 3):
                        image, label, where = (*entry, None) if len(entry) == 2 else entry
                        is_mask = isinstance(where, np.ndarray) and where.ndim == 2
                        box, mask = (None, where) if is_mask else (where, None)
                    else:
                        image, label, box, mask = entry, None, None, None
                    source = str(image) if isinstance(image, (str, os.PathLike)) else f"<image {i}>"
                    yield _Item(i if reloadable else None, source, image, label, box, mask)

            self._items = from_items()
            if reloadable:
                self.reload = lambda ref: _image_of(data[int(ref)])
            else:
                self.reload = None

    def __iter__(self) -> Iterator[_Item]:
        return iter(self._items)


def _image_of(entry: Any) -> Any:
    from .evaluation import Annotated

    if isinstance(entry, Annotated):
        return entry.image
    return entry[0] if isinstance(entry, tuple) else entry


def _region(item: _Item, shape: tuple[int, int]) -> np.ndarray | None:
    if item.box is None and item.mask is None:
        return None
    from .evaluation import Annotated

    return Annotated(None, None, item.box, item.mask, item.source).region(shape)


# ------------------------------------------------------------------------------------------- results


@dataclass
class ImageRecord:
    """One explained image: where it went and its numbers."""

    source: str
    ref: Any
    predicted: str
    score: float  # the class's probability
    cluster: int = -1
    position_share: float = 0.0  # share of its map mass in its cluster's fixed window
    object_share: float | None = None  # share of its map mass on the annotated object
    object_area: float | None = None  # the object's share of the image

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "predicted": self.predicted, "score": round(self.score, 6),
                "cluster": self.cluster, "position_share": round(self.position_share, 6),
                "object_share": None if self.object_share is None else round(self.object_share, 6),
                "object_area": None if self.object_area is None else round(self.object_area, 6)}


@dataclass
class Cluster:
    """One strategy of a class: a SpRAy cluster of its heatmaps."""

    id: int
    size: int
    share: float  # of the class's images
    mean_map: np.ndarray  # resolution × resolution, unit mass
    nearest: list[str]  # sources of the images nearest the cluster's centre
    region: tuple[float, float, float, float]  # the fixed window (x0, y0, x1, y1) as fractions of the image
    position_share: float  # median share of an image's map mass in the window
    object_share: float | None = None  # median share of map mass on the object
    object_lift: float | None = None  # median of object share / object area (1: no better than chance)
    flags: list[str] = field(default_factory=list)
    thumbnails: list[tuple[str, Image.Image]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "share": round(self.share, 6), "nearest": self.nearest,
                "region": [round(v, 6) for v in self.region], "position_share": round(self.position_share, 6),
                "object_share": None if self.object_share is None else round(self.object_share, 6),
                "object_lift": None if self.object_lift is None else round(self.object_lift, 6),
                "flags": self.flags, "mean_map": np.round(self.mean_map, 6).tolist()}


@dataclass
class Concept:
    """A concept of a class (DFF/NMF over all its sampled images), named by the model's head."""

    id: int
    labels: list[tuple[int, str, float]]  # the head's top classes for the concept's embedding
    class_probability: float  # the head's probability of the audited class
    share: float  # the concept's share of the sample's factorised activation
    top: list[str]  # sources of the images where it is strongest
    crops: list[tuple[str, Image.Image]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.labels[0][1] if self.labels else f"concept {self.id}"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "labels": [[i, label, round(p, 6)] for i, label, p in self.labels],
                "class_probability": round(self.class_probability, 6), "share": round(self.share, 6), "top": self.top}


@dataclass
class ClassAudit:
    """Everything the audit found for one class."""

    index: int
    label: str
    images: list[ImageRecord]
    eigenvalues: list[float]
    clusters: list[Cluster]
    concepts: list[Concept]
    concepts_note: str = ""
    worst: list[ImageRecord] = field(default_factory=list)
    worst_thumbnails: list[tuple[str, Image.Image]] = field(default_factory=list, repr=False)

    @property
    def flags(self) -> list[dict[str, Any]]:
        """One entry per flagged cluster and rule, with its numbers."""
        out = []
        for c in self.clusters:
            for rule in c.flags:
                entry = {"cluster": c.id, "rule": rule, "size": c.size, "share": round(c.share, 6)}
                if rule == FIXED_POSITION:
                    entry.update(position_share=round(c.position_share, 6), region=[round(v, 6) for v in c.region])
                else:
                    entry.update(object_share=round(c.object_share or 0.0, 6), object_lift=round(c.object_lift or 0.0, 6))
                out.append(entry)
        return out

    @property
    def flagged(self) -> bool:
        return any(c.flags for c in self.clusters)

    @property
    def annotated(self) -> bool:
        return any(r.object_share is not None for r in self.images)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "n_images": len(self.images), "flagged": self.flagged,
                "flags": self.flags, "n_clusters": len(self.clusters),
                "eigenvalues": [round(v, 6) for v in self.eigenvalues],
                "clusters": [c.as_dict() for c in self.clusters], "concepts": [c.as_dict() for c in self.concepts],
                "concepts_note": self.concepts_note, "worst": [r.as_dict() for r in self.worst],
                "images": [r.as_dict() for r in self.images]}


@dataclass
class Audit:
    """The result of :func:`audit`: one :class:`ClassAudit` per class with images, and how it was run."""

    model: str
    recipe: str
    method: str
    settings: dict[str, Any]
    classes: list[ClassAudit]
    skipped: list[dict[str, str]]
    timings: dict[str, float]

    @property
    def flagged(self) -> list[str]:
        """Labels of the classes with at least one flagged cluster."""
        return [c.label for c in self.classes if c.flagged]

    def __getitem__(self, label: str | int) -> ClassAudit:
        for c in self.classes:
            if label in (c.label, c.index):
                return c
        raise KeyError(label)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "recipe": self.recipe, "method": self.method, "settings": self.settings,
                "flagged": self.flagged, "n_images": sum(len(c.images) for c in self.classes),
                "classes": [c.as_dict() for c in self.classes], "skipped": self.skipped,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the report (``index.html``, ``audit.json``, figures) into ``folder``; its ``index.html``."""
        from .report import write_report

        return write_report(self, folder)

    def __repr__(self) -> str:
        flagged = ", ".join(self.flagged) or "none"
        return (f"Audit({self.model!r}, {self.method}: {sum(len(c.images) for c in self.classes)} images, "
                f"{len(self.classes)} classes, flagged: {flagged})")


# ---------------------------------------------------------------------------------------- strategies


def small_map(heatmap: np.ndarray, resolution: int) -> np.ndarray:
    """A heatmap resampled to ``resolution``² (area averaging), clipped at 0, normalised to unit mass
    (a map with no mass becomes uniform)."""
    m = cv2.resize(np.clip(np.asarray(heatmap, np.float32), 0, None), (resolution, resolution),
                   interpolation=cv2.INTER_AREA)
    total = float(m.sum())
    return (m / total if total > 0 else np.full_like(m, 1.0 / m.size)).astype(np.float32)


def eigengap(affinity: Any, max_clusters: int) -> tuple[int, list[float]]:
    """The number of clusters after the largest gap among the ``max_clusters + 1`` smallest eigenvalues
    of the normalised graph Laplacian of ``affinity``, and those eigenvalues."""
    from scipy.sparse import csgraph
    from scipy.sparse.linalg import eigsh

    n = affinity.shape[0]
    laplacian = csgraph.laplacian(affinity, normed=True)
    m = min(max_clusters + 1, n)
    if n <= 400:
        values = np.linalg.eigvalsh(laplacian.toarray() if hasattr(laplacian, "toarray") else laplacian)[:m]
    else:  # the largest of 2I - L are the smallest of L; ARPACK from a fixed start vector
        shifted = 2.0 * _identity(n) - laplacian
        values = np.sort(2.0 - eigsh(shifted, k=m, which="LA", v0=np.ones(n), tol=1e-8)[0])
    values = np.clip(values, 0.0, 2.0)
    gaps = np.diff(values)
    k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    return k, [float(v) for v in values]


def _identity(n: int) -> Any:
    from scipy.sparse import identity

    return identity(n, format="csr")


def spray(maps: np.ndarray, max_clusters: int = 8, neighbours: int = 10, seed: int = 0
          ) -> tuple[np.ndarray, list[float]]:
    """SpRAy on ``N×D`` normalised maps: ``(cluster of each map, Laplacian eigenvalues)``; clusters
    numbered by decreasing size."""
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import kneighbors_graph

    n = len(maps)
    if n < 6:
        return np.zeros(n, int), []
    graph = kneighbors_graph(maps.astype(np.float64), n_neighbors=min(neighbours, n - 1), include_self=False)
    affinity = graph.maximum(graph.T)
    k, values = eigengap(affinity, min(max_clusters, n - 1))
    if k == 1:
        return np.zeros(n, int), values
    with warnings.catch_warnings():  # a graph of several components: exactly the case of distinct strategies
        warnings.simplefilter("ignore")
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="cluster_qr",
                                    random_state=seed).fit_predict(affinity)
    order = sorted(range(k), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    remap = np.empty(k, int)
    remap[order] = np.arange(k)
    return remap[labels], values


def best_window(mean_map: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left cell ``(row, col)`` of the ``size``² window holding the most of ``mean_map``'s mass."""
    c = np.pad(mean_map, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    r, q = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(r), int(q)


# ------------------------------------------------------------------------------------------ concepts


def _preprocess(processor: Any, recipe: Any, image: Image.Image) -> torch.Tensor:
    return recipe.image_tensor(processor(images=image, return_tensors="pt"))


def concepts_of(model: torch.nn.Module, processor: Any, recipe: Any, images: list[tuple[str, Image.Image]],
                class_index: int, n_concepts: int, crops: int = 3, seed: int = 0) -> tuple[list[Concept], str]:
    """DFF fitted on the feature-layer activations of all ``images`` at once (CRAFT-style): each
    concept named by the recipe's head, with crops of the images where it is strongest."""
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
    from sklearn.exceptions import ConvergenceWarning

    from .capture import LogitsModel, as_maps, forward_with_capture
    from .geometry import measure

    if recipe.head is None:
        return [], f"recipe {recipe.name!r} declares no head: concepts cannot be named"
    if len(images) < 2:
        return [], "fewer than two images"
    param = next(model.parameters())
    acts: list[np.ndarray] = []  # per image C×h×w
    inputs: list[torch.Tensor] = []
    with borrowed(model):
        for _, image in images:
            pixels = _preprocess(processor, recipe, image)
            inputs.append(pixels)
            cap = forward_with_capture(LogitsModel(model, recipe), [recipe.features(model)],
                                       pixels.to(param.device, param.dtype))
            acts.append(as_maps(recipe, model, cap.activations[0].detach(), tuple(pixels.shape[-2:]))[0]
                        .float().cpu().numpy())
        channels = acts[0].shape[0]
        if n_concepts > channels:
            return [], f"n_concepts={n_concepts} exceeds the feature layer's {channels} channels"
        flat = np.concatenate([a.reshape(channels, -1) for a in acts], axis=1)  # C × all positions
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            embeddings, factors = dff(flat[None, :, None, :].copy(), n_components=n_concepts)
        with torch.no_grad():
            logits = recipe.head(model)(torch.from_numpy(embeddings.T.astype(np.float32)).to(param.device, param.dtype))
    probs = logits.float().softmax(-1).cpu().numpy()
    weights = factors[0, :, 0, :]  # k × positions
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    total = float(weights.sum()) or 1.0
    bounds = np.cumsum([0] + [a.shape[1] * a.shape[2] for a in acts])
    out, geometries = [], {}
    for k in range(n_concepts):
        per_image = [weights[k, bounds[i]:bounds[i + 1]].reshape(acts[i].shape[1:]) for i in range(len(acts))]
        strongest = sorted(range(len(acts)), key=lambda i: -float(per_image[i].max()))[:crops]
        top_crops = []
        for i in strongest:
            source, image = images[i]
            size = (image.height, image.width)
            if size not in geometries:
                geometries[size] = measure(lambda im: _preprocess(processor, recipe, im), size)
            geometry = geometries[size]
            input_map = cv2.resize(per_image[i].astype(np.float32), geometry.input_size[::-1],
                                   interpolation=cv2.INTER_LINEAR)
            on_image = geometry.to_image(input_map[None])[0][0]
            y, x = np.unravel_index(int(np.argmax(on_image)), on_image.shape)
            side = max(16, min(image.width, image.height) // 3)
            x0 = int(np.clip(x - side // 2, 0, max(image.width - side, 0)))
            y0 = int(np.clip(y - side // 2, 0, max(image.height - side, 0)))
            top_crops.append((source, image.crop((x0, y0, x0 + side, y0 + side))))
        row = probs[k]
        labels = [(int(i), id2label[int(i)], float(row[i])) for i in np.argsort(-row)[:3]]
        out.append(Concept(k, labels, float(row[class_index]), float(weights[k].sum() / total),
                           [images[i][0] for i in strongest], top_crops))
    out.sort(key=lambda c: -c.share)
    for i, c in enumerate(out):
        c.id = i
    return out, ""


# ---------------------------------------------------------------------------------------------- audit


@dataclass
class _ClassState:
    records: list[ImageRecord] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    sample: list[tuple[str, Any, Any]] = field(default_factory=list)  # (source, ref, image or None)
    seen: int = 0


def _thumb(image: Image.Image, side: int = 160) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def audit(
    model: Any,
    data: Any,
    *,
    method: str | None = None,
    processor: Any = None,
    device: str | None = None,
    recipe: str | None = None,
    trust_remote_code: bool = False,
    classes: Sequence[str | int] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    box_column: str | None = None,
    mask_column: str | None = None,
    batch_size: int = 16,
    resolution: int = 16,
    max_clusters: int = 8,
    neighbours: int = 10,
    region: int = 4,
    position_threshold: float = 0.5,
    object_lift: float = 1.0,
    min_cluster: float = 0.05,
    n_concepts: int = 4,
    concept_images: int = 32,
    nearest: int = 4,
    worst: int = 6,
    figures: bool = True,
    ray: bool | str = False,
    concurrency: int | None = None,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> Audit:
    """Audit what ``model`` relies on over ``data``, class by class (see the module docstring).

    Args:
        model: as for :func:`xai_recipes.explain`; a transformers ``pipeline("image-classification")`` too.
        data: a folder of class folders (``data/<class>/<image>``), a folder with a COCO-style
            ``annotations.json`` (boxes / masks: adds the on-object numbers), a ``datasets.Dataset``
            (an ``Image`` column and a label column; ``image_column`` / ``label_column`` /
            ``box_column`` (``x0, y0, x1, y1``) / ``mask_column`` name them), a list (or any
            sequence or iterator) of ``(image, label)``, ``(image, label, box or mask)`` or
            :class:`~xai_recipes.Annotated`. Images without labels are grouped by prediction.
            An iterator is read once: its nearest / worst images are then named but not pictured.
        method: the explanation method (default: the recipe's default).
        classes: audit only these classes (labels or indices).
        batch_size: images per forward/backward pass (per class).
        resolution: side of the grid the maps are clustered at.
        max_clusters, neighbours: SpRAy's largest number of clusters, and the k of its k-NN graph.
        region, position_threshold: the fixed window's side in cells, and the median share of map
            mass in it that flags a cluster ``fixed_position``.
        object_lift: with annotations, a cluster is flagged ``off_object`` when the median of
            (share of map mass on the object / the object's share of the image) is at most this.
        min_cluster: clusters smaller than this share of the class (and than 3 images) are not flagged.
        n_concepts, concept_images: concepts per class, and how many of its images (a uniform
            sample) they are fitted on.
        nearest, worst: images shown per cluster (nearest its centre), and worst-localised per class.
        figures: keep thumbnails of those images for the report (they are explained again).
        ray: explain on Ray Data actors (``True``: the Ray already initialised, or a local one; a
            string: the cluster's address) through :func:`xai_recipes.ray.explain_dataset`; the data
            must be files (a folder or a list of paths).
        concurrency: Ray actors.
        progress: wraps the iteration over the data's images (e.g. ``tqdm``).
        out: write the report (``index.html``, ``audit.json``, figures) into this folder.
        **options: the method's options.
    """
    from .engine import explain

    for name, value in (("batch_size", batch_size), ("resolution", resolution), ("max_clusters", max_clusters),
                        ("n_concepts", n_concepts), ("region", region), ("neighbours", neighbours)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise XAIRecipesError(f"{name} must be a positive integer, got {value!r}")
    if region > resolution:
        raise XAIRecipesError(f"region ({region} cells) cannot exceed resolution ({resolution})")
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(getattr(model, "model", model)).__name__
    ref = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None  # Ray actors load it by name
    model, processor = loading.load(model, processor, device, trust_remote_code)
    chosen = registry.find_recipe(model, recipe)
    method_name = registry.get_method(method or chosen.default_method).name
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    wanted = None if classes is None else set(resolve_targets(list(classes), id2label) or [])
    source = _Data(data, image_column, label_column, box_column, mask_column)
    rng = np.random.default_rng(seed)
    states: dict[int, _ClassState] = {}
    skipped: list[dict[str, str]] = []
    timings = {"explain": 0.0, "strategies": 0.0, "concepts": 0.0, "figures": 0.0}
    explain_options = {"method": method_name, "processor": processor, "recipe": chosen, **options}

    def class_of(item: _Item) -> int | None:
        if item.label is None:
            return None
        try:
            (index,) = resolve_targets(item.label, id2label)
        except XAIRecipesError as exc:
            raise DatasetError(f"{item.source}: its label {item.label!r} is not one of the model's classes ({exc}); "
                               "the data's labels must be the model's label names or indices") from None
        return index

    def record(item: _Item, index: int, heatmap: np.ndarray, predicted: str, score: float) -> None:
        state = states.setdefault(index, _ClassState())
        rec = ImageRecord(item.source, item.ref, predicted, score)
        where = _region(item, heatmap.shape)
        if where is not None:
            positive = np.clip(heatmap, 0, None)
            total = float(positive.sum())
            rec.object_share = float(positive[where].sum() / total) if total > 0 else 0.0
            rec.object_area = float(where.mean())
        state.records.append(rec)
        state.maps.append(small_map(heatmap, resolution).ravel())
        state.seen += 1  # reservoir sample for the concepts
        keep = (item.source, item.ref, None if item.ref is not None and source.reload else item.image)
        if len(state.sample) < concept_images:
            state.sample.append(keep)
        else:
            j = int(rng.integers(state.seen))
            if j < concept_images:
                state.sample[j] = keep

    items = (progress or (lambda x: x))(iter(source))
    t0 = time.perf_counter()
    if ray:
        _explain_on_ray(ref or model, processor, source, items, class_of, wanted, record, skipped, ray, concurrency,
                        batch_size, explain_options, id2label)
    else:
        buffers: dict[int | None, list[_Item]] = {}

        def flush(key: int | None) -> None:
            batch = buffers.pop(key, [])
            if not batch:
                return
            failed: set[int] = set()

            def on_error(src: str, error: Exception) -> None:
                for j, it in enumerate(batch):
                    if j not in failed and (src == it.source or src == f"<image {j}>"):
                        failed.add(j)
                        skipped.append({"image": it.source, "error": f"{type(error).__name__}: {error}"})
                        return

            results = explain(model, [it.image for it in batch], target=key, top_k=1, batch_size=len(batch),
                              on_error=on_error, **explain_options)
            first = next(results, None)  # every image is prepared before the first is yielded
            ok = [it for j, it in enumerate(batch) if j not in failed]
            for it, exp in zip(ok, [first, *results] if first is not None else []):
                index = key if key is not None else int(exp.indices[0])
                if wanted is None or index in wanted:
                    record(it, index, exp.heatmaps[0], exp.predictions[0][1], float(exp.scores[0]))

        for item in items:
            key = class_of(item)
            if key is not None and wanted is not None and key not in wanted:
                continue
            buffers.setdefault(key, []).append(item)
            if len(buffers[key]) >= batch_size:
                flush(key)
        for key in list(buffers):
            flush(key)
    timings["explain"] = time.perf_counter() - t0

    results: list[ClassAudit] = []
    for index in sorted(states):
        state = states[index]
        order = sorted(range(len(state.records)), key=lambda i: state.records[i].source)  # as Ray gives them too
        records = [state.records[i] for i in order]
        maps = np.stack([state.maps[i] for i in order]) if order else np.zeros((0, resolution ** 2), np.float32)
        state.records, state.maps = [], []
        t = time.perf_counter()
        clusters, values = _strategies(records, maps, resolution, max_clusters, neighbours, region, position_threshold,
                                       object_lift, min_cluster, nearest, seed)
        timings["strategies"] += time.perf_counter() - t
        t = time.perf_counter()
        sample = [(src, _load(source, ref, image)) for src, ref, image in sorted(state.sample, key=lambda s: s[0])]
        sample = [(src, im) for src, im in sample if im is not None]
        concepts, note = concepts_of(model, processor, chosen, sample, index, n_concepts, seed=seed)
        timings["concepts"] += time.perf_counter() - t
        annotated = [r for r in records if r.object_share is not None]
        worst_records = sorted(annotated, key=lambda r: (r.object_share, r.source))[:worst]
        found = ClassAudit(index, id2label[index], records, values, clusters, concepts, note, worst_records)
        if figures:
            t = time.perf_counter()
            _thumbnails(model, found, source, explain_options)
            timings["figures"] += time.perf_counter() - t
        results.append(found)
    settings = {"resolution": resolution, "max_clusters": max_clusters, "neighbours": neighbours, "region": region,
                "position_threshold": position_threshold, "object_lift": object_lift, "min_cluster": min_cluster,
                "n_concepts": n_concepts, "concept_images": concept_images, "batch_size": batch_size,
                "ray": bool(ray), "seed": seed, "options": {k: v for k, v in options.items()}}
    result = Audit(name, chosen.name, method_name, settings, results, skipped, timings)
    if out is not None:
        result.save(out)
    return result


def _load(source: _Data, ref: Any, image: Any) -> Image.Image | None:
    try:
        if image is None:
            if source.reload is None or ref is None:
                return None
            image = source.reload(ref)
        return load_image(image)
    except XAIRecipesError:
        return None


def _strategies(records: list[ImageRecord], maps: np.ndarray, resolution: int, max_clusters: int, neighbours: int,
                region: int, threshold: float, lift: float, min_cluster: float, nearest: int, seed: int
                ) -> tuple[list[Cluster], list[float]]:
    n = len(records)
    if n == 0:
        return [], []
    labels, values = spray(maps, max_clusters, neighbours, seed)
    smallest = max(3, int(np.ceil(min_cluster * n)))
    clusters = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        grid = maps[members].reshape(-1, resolution, resolution)
        mean = grid.mean(0)
        distance = np.linalg.norm(maps[members] - mean.ravel(), axis=1)
        close = [records[members[i]].source for i in np.argsort(distance, kind="stable")[:nearest]]
        r, q = best_window(mean, region)
        shares = grid[:, r:r + region, q:q + region].sum(axis=(1, 2))
        for i, s in zip(members, shares):
            records[i].cluster, records[i].position_share = c, float(s)
        cluster = Cluster(c, len(members), len(members) / n, mean, close,
                          (q / resolution, r / resolution, (q + region) / resolution, (r + region) / resolution),
                          float(np.median(shares)))
        on = [records[i] for i in members if records[i].object_share is not None]
        if on:
            cluster.object_share = float(np.median([x.object_share for x in on]))
            cluster.object_lift = float(np.median([x.object_share / max(x.object_area, 1e-9) for x in on]))
        if len(members) >= smallest:
            on_object = cluster.object_share is not None and cluster.object_share >= threshold
            if cluster.position_share >= threshold and not on_object:
                cluster.flags.append(FIXED_POSITION)
            if cluster.object_lift is not None and cluster.object_lift <= lift:
                cluster.flags.append(OFF_OBJECT)
        clusters.append(cluster)
    return clusters, values


def _thumbnails(model: Any, found: ClassAudit, source: _Data, explain_options: dict[str, Any]) -> None:
    """Overlays of each cluster's nearest images and the worst-localised ones (explained again)."""
    from .engine import explain

    refs = {r.source: r.ref for r in found.images}
    wanted = list(dict.fromkeys([s for c in found.clusters for s in c.nearest] + [r.source for r in found.worst]))
    loaded = [(s, _load(source, refs[s], None)) for s in wanted]
    loaded = [(s, im) for s, im in loaded if im is not None]
    if not loaded:
        return
    shown: dict[str, Image.Image] = {}
    exps = explain(model, [im for _, im in loaded], target=found.index, batch_size=len(loaded), on_error="warn",
                   **explain_options)
    for (s, _), exp in zip(loaded, exps):
        shown[s] = _thumb(exp.overlay(0))
    for c in found.clusters:
        c.thumbnails = [(s, shown[s]) for s in c.nearest if s in shown]
    found.worst_thumbnails = [(r.source, shown[r.source]) for r in found.worst if r.source in shown]


def _explain_on_ray(model: Any, processor: Any, source: _Data, items: Iterable[_Item], class_of: Callable,
                    wanted: set[int] | None, record: Callable, skipped: list[dict[str, str]], address: bool | str,
                    concurrency: int | None, batch_size: int, explain_options: dict[str, Any],
                    id2label: dict[int, str]) -> None:
    """The explanations from Ray Data actors (:func:`xai_recipes.ray.explain_dataset`, one target per row)."""
    try:
        import ray
        import ray.data

        from .ray import explain_dataset
    except ImportError as exc:
        raise XAIRecipesError(f"audit on Ray needs Ray Data ({exc}); pip install \"xai-recipes[ray]\"") from None
    if source.paths is None:
        raise DatasetError("an audit on Ray reads image files: pass a folder (class folders or annotations.json) or a "
                           "list of image paths")
    by_path: dict[str, _Item] = {}
    targets: dict[str, int] = {}
    for item in items:
        key = class_of(item)
        if key is not None and wanted is not None and key not in wanted:
            continue
        path = os.path.abspath(item.source)
        by_path[path] = item
        if key is not None:
            targets[path] = key
    if not by_path:
        return
    if not ray.is_initialized():
        ray.init(address=None if address is True else address, include_dashboard=False, log_to_driver=False)
    files = ray.data.read_binary_files(sorted(by_path), include_paths=True, num_cpus=0)
    if targets:
        files = files.map_batches(_WithTargets, fn_constructor_args=(targets,), batch_format="numpy",
                                  batch_size=batch_size, num_cpus=0, compute=ray.data.ActorPoolStrategy(size=1))
    options = {k: v for k, v in explain_options.items() if k not in ("processor", "recipe")}
    recipe = explain_options.get("recipe")
    rows = explain_dataset(files, model, top_k=1, batch_size=batch_size, concurrency=concurrency,
                           processor=processor, recipe=getattr(recipe, "name", recipe), **options)
    for row in rows.iter_rows():
        path = str(row["source"])
        item = by_path[path]
        if row["error"] is not None:
            skipped.append({"image": item.source, "error": str(row["error"])})
            continue
        index = targets.get(path, int(row["indices"][0]))
        if wanted is None or index in wanted:
            predictions = __import__("json").loads(row["predictions"])
            record(item, index, np.asarray(row["heatmaps"][0], np.float32), predictions[0][1], float(row["scores"][0]))


class _WithTargets:
    """Adds each file's target class (a ``target`` column) to a batch of ``read_binary_files`` rows."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = targets

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "target": np.array([self.targets[str(p)] for p in batch["path"]], np.int64)}
