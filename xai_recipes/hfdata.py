"""Hugging Face ``datasets`` in and out: image data sets to explain, evaluate or audit; maps back as a data set.

A ``datasets.Dataset`` (or ``IterableDataset``) with an ``Image`` column and a label column is read
in batches (``Dataset.iter``), never whole: ``explain(model, ds)`` streams explanations of its
images, ``evaluate`` and ``audit`` take it as ``data`` (column names configurable; by default the
one ``Image`` column and the ``ClassLabel`` column, else one named ``label``/``labels``).
:func:`to_dataset` writes explanations — from :func:`xai_recipes.explain` or the rows of
:func:`xai_recipes.ray.explain_dataset` — as a ``datasets.Dataset`` whose maps are arrays
(``push_to_hub`` publishes it).

``datasets`` is imported only when such an object is passed (``pip install "xai-recipes[hf]"``).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import DatasetError

#: Rows read per ``Dataset.iter`` batch.
READ_BATCH = 64


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset`` or ``IterableDataset`` (without importing ``datasets``)."""
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, (mod.Dataset, mod.IterableDataset))


def _features(ds: Any) -> dict[str, Any]:
    features = getattr(ds, "features", None)
    if not features:
        raise DatasetError("this data set declares no features (an IterableDataset read without them); cast it with "
                           "ds.cast_column('image', datasets.Image()) or pass image_column= and label_column=")
    return dict(features)


def image_column(ds: Any, name: str | None = None) -> str:
    """The column holding the images: ``name``, else the one column of type ``datasets.Image``."""
    import datasets

    features = _features(ds)
    if name is not None:
        if name not in features:
            raise DatasetError(f"the data set has no column {name!r}; its columns: {', '.join(features)}")
        return name
    found = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if len(found) != 1:
        raise DatasetError(f"the data set has {len(found)} Image columns ({', '.join(found) or 'none'}); name the one "
                           f"to use with image_column= (its columns: {', '.join(features)})")
    return found[0]


def label_column(ds: Any, name: str | None = None, required: bool = True) -> str | None:
    """The label column: ``name``, else the one ``ClassLabel`` column, else ``label`` or ``labels``."""
    import datasets

    features = _features(ds)
    if name is not None:
        if name not in features:
            raise DatasetError(f"the data set has no column {name!r}; its columns: {', '.join(features)}")
        return name
    found = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    found = found if len(found) == 1 else [c for c in ("label", "labels") if c in features]
    if len(found) != 1:
        if not required:
            return None
        raise DatasetError(f"cannot tell the label column of this data set (columns: {', '.join(features)}); "
                           "name it with label_column=")
    return found[0]


def label_names(ds: Any, column: str) -> list[str] | None:
    """The class names of a ``ClassLabel`` column (labels are stored as their indices), else None."""
    import datasets

    feature = _features(ds).get(column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def rows(ds: Any, columns: Sequence[str], batch_size: int = READ_BATCH) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row index, {column: value})`` for every row, read ``batch_size`` rows at a time (the
    ``Image`` column decoded to PIL images one batch at a time)."""
    i = 0
    for batch in ds.select_columns(list(columns)).iter(batch_size=batch_size):
        n = len(batch[columns[0]])
        for j in range(n):
            yield i, {c: batch[c][j] for c in columns}
            i += 1


def sources(ds: Any, image_col: str | None = None, batch_size: int = READ_BATCH) -> Iterator[tuple[str, Any]]:
    """``(source name, image)`` pairs of a data set's images, for :func:`xai_recipes.explain`."""
    column = image_column(ds, image_col)
    for i, row in rows(ds, [column], batch_size):
        yield f"row {i}", row[column]


class Rows(Sequence):
    """A ``datasets.Dataset`` as a lazy sequence of ``(image, label, where)`` items for ``evaluate``:
    rows are read when indexed or iterated (in batches), never all at once."""

    def __init__(self, ds: Any, image_col: str | None = None, label_col: str | None = None,
                 box_col: str | None = None, mask_col: str | None = None) -> None:
        if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
            raise DatasetError("evaluate needs a datasets.Dataset it can index (not a streaming IterableDataset)")
        if box_col is None and mask_col is None:
            raise DatasetError("evaluating a data set needs the object's box or mask: name its column with "
                               "box_column= (x0, y0, x1, y1) or mask_column=")
        self.ds, self.image = ds, image_column(ds, image_col)
        self.label = label_column(ds, label_col)
        self.names = label_names(ds, self.label)
        self.box, self.mask = box_col, mask_col
        self.columns = [c for c in (self.image, self.label, box_col, mask_col) if c]

    def __len__(self) -> int:
        return len(self.ds)

    def _item(self, i: int, row: dict[str, Any]) -> Any:
        from .evaluation import Annotated

        label = row[self.label]
        if self.names is not None and isinstance(label, (int, np.integer)):
            label = self.names[int(label)]
        mask = None if self.mask is None else np.asarray(row[self.mask])
        box = None if self.box is None else tuple(row[self.box])
        return Annotated(row[self.image], label, box, mask, f"row {i}")

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index) + (len(self) if int(index) < 0 else 0)
        return self._item(i, self.ds.select_columns(self.columns)[i])

    def __iter__(self) -> Iterator[Any]:
        for i, row in rows(self.ds, self.columns):
            yield self._item(i, row)


def _from_explanation(exp: Any) -> dict[str, Any]:
    return {"source": exp.source or "", "indices": [int(i) for i in exp.indices], "labels": list(exp.labels),
            "scores": [float(s) for s in exp.scores], "predictions": json.dumps(exp.predictions),
            "recipe": exp.recipe, "method": exp.method, "heatmaps": np.asarray(exp.heatmaps, np.float32),
            "coverage": np.asarray(exp.coverage, bool), "error": None}


def _row(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):  # an explain_dataset row
        row = {k: item.get(k) for k in ("source", "indices", "labels", "scores", "predictions", "recipe", "method",
                                         "heatmaps", "coverage", "error")}
        row["indices"] = [int(i) for i in (row["indices"] if row["indices"] is not None else [])]
        row["labels"] = [str(s) for s in (row["labels"] if row["labels"] is not None else [])]
        row["scores"] = [float(s) for s in (row["scores"] if row["scores"] is not None else [])]
        if row["heatmaps"] is None:
            raise DatasetError("these rows carry no maps (explain_dataset with output= writes them to files); "
                               "load those with xai_recipes.load, or run explain_dataset without output=")
        row["heatmaps"] = np.asarray(row["heatmaps"], np.float32)
        row["coverage"] = np.asarray(row["coverage"], bool)
        return row
    return _from_explanation(item)


def features() -> Any:
    """The ``datasets.Features`` of :func:`to_dataset`: maps as nested float32 arrays ``T×H×W``."""
    import datasets

    return datasets.Features({
        "source": datasets.Value("string"), "indices": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("string")), "scores": datasets.List(datasets.Value("float64")),
        "predictions": datasets.Value("string"), "recipe": datasets.Value("string"),
        "method": datasets.Value("string"),
        "heatmaps": datasets.List(datasets.List(datasets.List(datasets.Value("float32")))),
        "coverage": datasets.List(datasets.List(datasets.Value("bool"))), "error": datasets.Value("string"),
    })


def to_dataset(explanations: Iterable[Any], **from_generator: Any) -> Any:
    """Explanations as a ``datasets.Dataset`` (written to ``datasets``' Arrow cache as they come, so
    a generator of many is never held in memory), one row per image: ``source``, ``indices``,
    ``labels``, ``scores``, ``predictions`` (JSON), ``recipe``, ``method``, ``heatmaps`` (``T×H×W``
    float32), ``coverage`` (``H×W``) and ``error``; ``.with_format("numpy")`` gives the maps back
    as arrays. ``explanations``: :class:`~xai_recipes.Explanation` objects (a list, or the generator
    of ``explain(model, many)``), rows of :func:`xai_recipes.ray.explain_dataset` (dicts), or that
    Ray Dataset itself (read with ``iter_rows``). ``from_generator``: passed on (``cache_dir``, ...)."""
    import datasets

    if hasattr(explanations, "iter_rows") and not isinstance(explanations, (list, tuple)):
        explanations = explanations.iter_rows()  # a Ray Dataset: streamed from the cluster
    source = iter(explanations)

    def generate() -> Iterator[dict[str, Any]]:
        for item in source:
            yield _row(item)

    # a fresh fingerprint: the generator's state is not hashable, and no earlier call's cache may be reused
    from_generator.setdefault("fingerprint", uuid.uuid4().hex)
    return datasets.Dataset.from_generator(generate, features=features(), **from_generator)
