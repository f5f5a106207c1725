"""Fit a patch-embedding GAM from a folder of images, or import a scikit-learn head.

The transfer-learning recipe: a frozen backbone embeds every image (the mean of its patch
tokens), a logistic regression learns the classes on those embeddings, and the fitted
coefficients become the GAM's linear head — so every explanation of it is exact.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm
from transformers import AutoImageProcessor

from .errors import DatasetError, ImageError, ImageSkippedWarning, ModelLoadError
from .gam import DinoGAMForImageClassification, gam_from_head, load_backbone
from .images import image_files, load_image

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
#: scikit-learn types a skops head file may hold without ``trusted=`` (linear classifiers).
LINEAR_TYPES = {
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._ridge.RidgeClassifierCV",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.model_selection._split.KFold",
}


@dataclass
class FitReport:
    """What :func:`fit_gam` saw: held-out accuracy, split sizes, and the files it skipped."""

    accuracy: float
    n_train: int
    n_test: int
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"held-out accuracy {self.accuracy:.3f} on {self.n_test} images ({self.n_train} for training), "
                 f"{len(self.classes)} classes: {', '.join(self.classes)}"]
        lines += [f"skipped {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def _split(folder: Path, held_out: float, seed: int) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and image_files(d)) if folder.is_dir() else []
    if len(classes) < 2:
        raise DatasetError(f"{folder} has {len(classes)} class folder(s) with images; a GAM needs at least two, "
                           "laid out as root/<class>/<image>")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        files = image_files(folder / name)
        rng.shuffle(files)
        n_test = min(len(files) - 1, max(1, round(held_out * len(files)))) if held_out > 0 else 0
        test += [(f, label) for f in files[:n_test]]
        train += [(f, label) for f in files[n_test:]]
    return classes, train, test


def embed_images(backbone: nn.Module, processor: Any, files: list[tuple[Path, int]], batch_size: int,
                 skipped: list[tuple[str, str]], progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per readable image: mean and mean square of its patch tokens (prefix tokens dropped), and its label."""
    feats, squares, labels, batch = [], [], [], []

    def flush() -> None:
        pixels = torch.cat([p for p, _ in batch])
        with torch.no_grad():
            patches = DinoGAMForImageClassification.patch_tokens(backbone, pixels).float()
        feats.append(patches.mean(1).numpy())
        squares.append(patches.square().mean(1).numpy())
        labels.extend(label for _, label in batch)
        batch.clear()

    for path, label in tqdm(files, unit="image", desc="embedding", disable=not progress):
        try:
            batch.append((processor(images=load_image(path), return_tensors="pt")["pixel_values"], label))
        except (ImageError, OSError, ValueError) as exc:
            skipped.append((str(path), str(exc)))
            warnings.warn(f"skipped {path}: {exc}", ImageSkippedWarning, stacklevel=3)
            continue
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.array(labels)
    return np.concatenate(feats), np.concatenate(squares), np.array(labels)


def fit_gam(
    backbone: str | os.PathLike | nn.Module,
    folder: str | os.PathLike,
    *,
    processor: Any = None,
    held_out: float = 0.2,
    C: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> DinoGAMForImageClassification:
    """Fit a GAM head on a frozen backbone from ``folder/<class>/<image>``.

    A stratified ``held_out`` share of each class is kept for the accuracy report
    (``model.fit_report``); unreadable images are reported (warning) and skipped. Save the
    result with ``model.save_pretrained(dir)``; ``explain(dir, image)`` then explains it.
    """
    classes, train, test = _split(Path(folder), held_out, seed)
    net = load_backbone(backbone, trust_remote_code)
    name = backbone if isinstance(backbone, (str, os.PathLike)) else getattr(net.config, "_name_or_path", "")
    processor = processor or AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    skipped: list[tuple[str, str]] = []
    x_train, sq_train, y_train = embed_images(net, processor, train, batch_size, skipped, progress)
    x_test, _, y_test = embed_images(net, processor, test, batch_size, skipped, progress)
    if len(set(y_train.tolist())) < len(classes):
        raise DatasetError(f"after skipping unreadable images, some classes of {folder} have no training image")
    # Standardise patch tokens by the training patches' mean and spread: a patch then contributes
    # by how it differs from the average patch (the intercept is the average patch's logit).
    shift = x_train.mean(0)
    scale = np.sqrt(np.maximum(sq_train.mean(0) - shift**2, 0)) + 1e-6
    head = LogisticRegression(C=C, max_iter=2000).fit((x_train - shift) / scale, y_train)
    weight, bias = _multiclass(head.coef_, head.intercept_)
    model = gam_from_head(net, weight, bias, classes, pooling="mean", processor=processor, shift=shift, scale=scale)
    model.config.backbone = str(name)
    accuracy = float((head.predict((x_test - shift) / scale) == y_test).mean()) if len(y_test) else float("nan")
    model.fit_report = FitReport(accuracy, len(y_train), len(y_test), classes, skipped)
    return model


def _multiclass(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's binary head (one row) as two softmax rows with the same probabilities."""
    if coef.shape[0] == 1:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def gam_from_sklearn(
    path: str | os.PathLike,
    backbone: str | os.PathLike | nn.Module,
    *,
    labels: list[str] | None = None,
    pooling: Literal["mean", "sum"] = "sum",
    trusted: list[str] | None = None,
    allow_pickle: bool = False,
    processor: Any = None,
    trust_remote_code: bool = False,
) -> DinoGAMForImageClassification:
    """Import a fitted scikit-learn linear classifier (e.g. the ``emb-gam-dino`` card's
    ``LogisticRegressionCV``) as a GAM head, from the safe ``skops`` format.

    ``pooling="sum"`` matches that card, which applies its head to the *sum* of patch
    embeddings. A pickle file is refused unless ``allow_pickle=True``: unpickling runs
    arbitrary code, so only do it for files you trust (better: convert them to skops).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the head file {path} ({exc}); pass the path of a .skops file") from None
    # by content, not name: a pickle renamed .skops is still a pickle (protocol 2+ starts with 0x80)
    if path.suffix.lower() in PICKLE_SUFFIXES or magic[:1] == b"\x80":
        if not allow_pickle:
            raise ModelLoadError(
                f"{path} is a pickle file, and loading pickle can run arbitrary code. Convert it to skops "
                "(skops.io.dump(estimator, 'head.skops')) and import that, or pass allow_pickle=True if you trust the file"
            )
        with open(path, "rb") as f:
            estimator = pickle.load(f)  # noqa: S301 - the user opted in explicitly
    else:
        import skops.io as sio

        try:
            found = sio.get_untrusted_types(file=path)
        except Exception as exc:  # noqa: BLE001 - not a zip (truncated, another format), a damaged schema...
            raise ModelLoadError(f"{path} is not a readable skops file ({type(exc).__name__}: {exc}); it may be truncated "
                                 "or in another format: export the head again with skops.io.dump(estimator, path)") from None
        unknown = [t for t in found if t not in LINEAR_TYPES and t not in (trusted or [])]
        if unknown:
            raise ModelLoadError(f"{path} holds types that are not known linear classifiers: {unknown}; "
                                 "pass trusted=[...] after checking them")
        try:
            estimator = sio.load(path, trusted=found)
        except Exception as exc:  # noqa: BLE001 - as above, found while loading
            raise ModelLoadError(f"cannot load the skops file {path} ({type(exc).__name__}: {exc}); export the head "
                                 "again with skops.io.dump(estimator, path)") from None
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        raise ModelLoadError(f"{path} holds a {type(estimator).__name__}, not a fitted linear classifier (no coef_); "
                             "fit it, or pass the file of a fitted LogisticRegression-like head")
    try:
        coef, intercept = np.asarray(coef, dtype=np.float64), np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    except (TypeError, ValueError):
        coef, intercept = np.zeros(0), np.zeros(0)  # refused just below
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],) or not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ModelLoadError(f"{path}: the head's coef_ {coef.shape} and intercept_ {intercept.shape} are not a finite "
                             "classes × features matrix and vector; export a fitted linear classifier")
    weight, bias = _multiclass(coef, intercept)
    names = labels or [str(c) for c in getattr(estimator, "classes_", range(weight.shape[0]))]
    return gam_from_head(backbone, weight, bias, names, pooling=pooling, processor=processor,
                         trust_remote_code=trust_remote_code)
