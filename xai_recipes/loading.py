"""Load (and cache) image classifiers and their image processors, safely.

Safetensors weights only, ``trust_remote_code=False`` unless the caller opts in, and a check
that the checkpoint really carries a trained classification head: transformers would otherwise
attach a random head to a backbone and every heatmap would be noise.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from . import gam, registry, timm_models
from .errors import ModelLoadError, NotAnImageClassifierError
from .lru import LRU

#: Models loaded by name, by (name, device, trust_remote_code); set ``cache.size`` to keep more or fewer.
cache: LRU[tuple[nn.Module, Any]] = LRU(4)
_CLASSIFIER_SUFFIXES = ("ForImageClassification", "ForImageClassificationWithTeacher")


@functools.cache
def _classifier_class_names() -> frozenset[str]:
    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (tuple, list)) else [value])
    return frozenset(names)


def check_classifier(model: Any) -> None:
    """Raise :class:`NotAnImageClassifierError` unless ``model`` is an HF image classifier."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None or not getattr(config, "id2label", None):
        raise NotAnImageClassifierError(
            f"{name} is not a Hugging Face image-classification model (it needs a .config with "
            "model_type and id2label); load one with AutoModelForImageClassification"
        )
    if name not in _classifier_class_names() and not name.endswith(_CLASSIFIER_SUFFIXES):
        raise NotAnImageClassifierError(
            f"{name} is not an image classifier (no classification head); use its "
            "*ForImageClassification model, e.g. AutoModelForImageClassification.from_pretrained(...)"
        )


def _auto_classifier(config: Any) -> bool:
    """Whether ``AutoModelForImageClassification`` knows ``config``'s type: transformers' own image
    classifiers, and those a plugin registered (``AutoModelForImageClassification.register``)."""
    if config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return True
    try:
        AutoModelForImageClassification._model_mapping[type(config)]
    except Exception:  # noqa: BLE001 - KeyError, or a lazy import that fails: not a known classifier
        return False
    return True


def _load(ref: str, trust_remote_code: bool) -> tuple[nn.Module, Any]:
    if ref.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(ref)):
        raise ModelLoadError(f"model folder {ref!r} does not exist; pass a local folder or a hub id like 'microsoft/resnet-50'")
    if timm_models.is_timm_folder(ref):
        return timm_models.load_timm_folder(ref)
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a model config from {ref!r}: {exc}") from None
    if config.model_type == gam.MODEL_TYPE:
        model = gam.DinoGAMForImageClassification.from_pretrained(ref, trust_remote_code)
        return model, model.processor
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(_CLASSIFIER_SUFFIXES) for a in archs):
        raise NotAnImageClassifierError(
            f"{ref!r} is a {', '.join(archs)} checkpoint, not an image classifier: it has no trained "
            "classification head, so a heatmap would explain a random head. Use a *ForImageClassification "
            "checkpoint (or fine-tune a head first)"
        )
    if not _auto_classifier(config) and not trust_remote_code:
        raise NotAnImageClassifierError(
            f"{ref!r} has model_type {config.model_type!r}, which has no image-classification model in "
            "transformers; pass an image-classification checkpoint"
        )
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            ref, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
        )
    except (OSError, EnvironmentError) as exc:
        raise ModelLoadError(
            f"cannot load {ref!r} with safetensors weights ({exc}). xai_recipes never loads pickle "
            "(.bin/.pt) weights; convert the checkpoint with save_pretrained(..., safe_serialization=True)"
        ) from None
    if info.get("missing_keys"):
        raise NotAnImageClassifierError(
            f"{ref!r} lacks trained weights for {sorted(info['missing_keys'])[:4]}...: transformers "
            "would initialise them randomly and the explanation would be meaningless"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the image processor of {ref!r}: {exc}; pass processor=") from None
    return model.eval(), processor


def load(
    model: str | os.PathLike | nn.Module,
    processor: Any = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    need_processor: bool = True,
) -> tuple[nn.Module, Any]:
    """``(model, processor)`` from a hub id, a local folder, or an already loaded model
    (processor ``None`` for a loaded model without one when ``need_processor`` is False).

    Loaded-by-name models are kept in :data:`cache` (the 4 most recent by default), keyed by
    name, device and ``trust_remote_code``.
    """
    if isinstance(model, (str, os.PathLike)):
        ref = os.fspath(model)
        registry.plugins()  # plugins first: one may register the folder's model type with transformers

        def make() -> tuple[nn.Module, Any]:
            loaded, loaded_processor = _load(ref, trust_remote_code)
            return (loaded.to(device) if device is not None else loaded), loaded_processor

        hit = cache.get_or_make((ref, str(device), trust_remote_code), make)
        return hit[0], processor if processor is not None else hit[1]

    if timm_models.is_timm_model(model):
        model, wrapped_processor = timm_models.wrap_timm_model(model)
        processor = processor if processor is not None else wrapped_processor
    check_classifier(model)
    if device is not None:
        model.to(device)
    if processor is None:
        processor = getattr(model, "processor", None)  # models that carry their own (a fitted GAM)
    if processor is None and need_processor:
        source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
        try:
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception:
            raise ModelLoadError(
                f"no image processor given for this {type(model).__name__} and none found at "
                f"{source!r}; pass processor=AutoImageProcessor.from_pretrained(...)"
            ) from None
    return model, processor


def clear_cache() -> None:
    """Forget every cached model."""
    cache.clear()
