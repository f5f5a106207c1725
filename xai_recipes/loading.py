"""Load (and cache) vision models and their processors, safely.

Image classifiers, zero-shot image classifiers (CLIP, SigLIP, ...: loaded with their processor,
which holds the tokenizer), vision backbones for image similarity (only when the call asks for
them: a backbone is no classifier), and ``open_clip`` models (``hf-hub:`` ids). Safetensors
weights only, ``trust_remote_code=False`` unless the caller opts in, and a check that the
checkpoint really carries the trained weights the task reads: transformers would otherwise attach
a random head to a backbone and every heatmap would be noise.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from . import gam, open_clip_models, registry, timm_models
from .errors import ModelLoadError, NotAnImageClassifierError, XAIRecipesError
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


def is_dual_encoder(model: Any) -> bool:
    """Whether ``model`` embeds images and text into one space (CLIP, SigLIP, AltCLIP, ...)."""
    return callable(getattr(model, "get_image_features", None)) and callable(getattr(model, "get_text_features", None))


def check_model(model: Any) -> None:
    """Raise :class:`NotAnImageClassifierError` unless ``model`` is a module a task can explain:
    a transformers model (``.config`` with ``model_type``) or an ``open_clip`` model. Whether it is
    a classifier, a dual encoder or a backbone is the task's question."""
    config = getattr(model, "config", None)
    if isinstance(model, nn.Module) and (open_clip_models.is_open_clip(model) or
                                         getattr(config, "model_type", None) is not None):
        return
    raise NotAnImageClassifierError(
        f"{type(model).__name__} is not a Hugging Face image-classification model (it needs a .config with "
        "model_type and id2label) nor a vision-language or backbone model; load one with "
        "AutoModelForImageClassification, AutoModelForZeroShotImageClassification or open_clip.create_model"
    )


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


#: Architecture-name endings → the transformers auto classes (model, processor) that load them (tasks beyond
#: classification). Open-vocabulary detectors (OWL-ViT, OWLv2: ``*ForObjectDetection`` too) are known by their model
#: type and load as zero-shot detectors, with the processor that holds their tokenizer.
_TASK_MODELS = {"ForObjectDetection": ("AutoModelForObjectDetection", "AutoImageProcessor"),
                "ForSemanticSegmentation": ("AutoModelForSemanticSegmentation", "AutoImageProcessor")}
_ZERO_SHOT_DETECTOR = ("AutoModelForZeroShotObjectDetection", "AutoProcessor")


def _task_model_class(archs: list[str], model_type: str | None = None) -> tuple[Any, Any] | None:
    """The auto classes ``(model, processor)`` for a detector or segmenter checkpoint, else ``None``."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES

    if archs and model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
        return tuple(getattr(transformers, name) for name in _ZERO_SHOT_DETECTOR)
    for arch in archs:
        for ending, autos in _TASK_MODELS.items():
            if str(arch).endswith(ending):
                return tuple(getattr(transformers, name) for name in autos)
    return None


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


def _remote_code(ref: str) -> dict[str, Any]:
    """The ``auto_map`` of a local folder's config.json (the custom code it asks to run), if any."""
    try:
        data = json.loads((Path(ref).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data.get("auto_map") or {} if isinstance(data, dict) else {}


def _check_finite(model: nn.Module, ref: str) -> None:
    """Refuse weights holding NaN or inf: every logit and map would be NaN (a corrupt download)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"the weights of {ref!r} hold NaN or infinite values (first in {name}): the file is "
                                 "corrupt or the training diverged; re-download or re-export the checkpoint")


def _from_pretrained(ref: str, trust_remote_code: bool, num_labels: int,
                     auto: Any = AutoModelForImageClassification) -> tuple[nn.Module, dict]:
    """``auto.from_pretrained`` with safetensors only; its failures as typed errors."""
    try:
        return auto.from_pretrained(
            ref, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
        )
    except SafetensorError as exc:
        raise ModelLoadError(
            f"the safetensors weights of {ref!r} are truncated or corrupt ({exc}); re-download the checkpoint or "
            "re-save it with save_pretrained()"
        ) from None
    except (OSError, EnvironmentError) as exc:
        raise ModelLoadError(
            f"cannot load {ref!r} with safetensors weights ({exc}). xai_recipes never loads pickle (.bin/.pt) "
            "weights, which can run code: convert the checkpoint with save_pretrained(..., safe_serialization=True), "
            "or, if you trust the file, load it yourself (AutoModelForImageClassification.from_pretrained(folder, "
            "use_safetensors=False)) and pass the model"
        ) from None
    except RuntimeError as exc:
        if "mismatch" not in str(exc):
            raise ModelLoadError(f"cannot load {ref!r}: {type(exc).__name__}: {exc}") from None
        raise ModelLoadError(
            f"the weights of {ref!r} do not fit its config.json: the config lists {num_labels} classes (id2label) "
            "but the classification head in model.safetensors has another number, or a layer's shape differs "
            "(transformers would re-initialise it randomly); fix id2label and label2id in config.json to list "
            "exactly the classes the head was trained on"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a hostile config reaches deep into transformers
        raise ModelLoadError(f"cannot load {ref!r}: {type(exc).__name__}: {exc}; check its config.json and weights") from None


def _load(ref: str, trust_remote_code: bool, backbone: bool = False) -> tuple[nn.Module, Any]:
    if ref.startswith(open_clip_models.HUB_PREFIX):
        return open_clip_models.load_hub(ref)
    path = os.path.expanduser(ref)
    if os.path.isfile(path):  # transformers would read a file as a (pickle) checkpoint
        raise ModelLoadError(f"model {ref!r} is a file; pass the folder that holds its config.json and model.safetensors")
    if ref.startswith((".", "/", "~")) and not os.path.isdir(path):
        raise ModelLoadError(f"model folder {ref!r} does not exist; pass a local folder or a hub id like 'microsoft/resnet-50'")
    if timm_models.is_timm_folder(ref):
        try:
            return timm_models.load_timm_folder(ref)
        except XAIRecipesError:
            raise
        except Exception as exc:  # noqa: BLE001 - unknown architecture, corrupt weights, a config timm rejects
            raise ModelLoadError(f"cannot load the timm folder {ref!r} ({type(exc).__name__}: {exc}); check its "
                                 "config.json (architecture, num_classes, pretrained_cfg) and model.safetensors") from None
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            code = sorted(set((_remote_code(ref) or {}).values())) or ["its own code"]
            raise ModelLoadError(
                f"{ref!r} needs custom code to load ({', '.join(map(str, code))} in its auto_map), and xai_recipes runs "
                "no code from a model folder or the hub unless asked. Read that code, then pass trust_remote_code=True "
                "if you trust it"
            ) from None
        raise ModelLoadError(f"cannot load a model config from {ref!r}: {exc}; pass a folder with a transformers "
                             "config.json (model_type, id2label) or a hub id") from None
    if config.model_type == gam.MODEL_TYPE:
        model = gam.DinoGAMForImageClassification.from_pretrained(ref, trust_remote_code)
        return model, model.processor
    archs = getattr(config, "architectures", None) or []
    classifier = not archs or any(str(a).endswith(_CLASSIFIER_SUFFIXES) for a in archs)
    if not classifier and config.model_type in MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return _load_other(ref, trust_remote_code, AutoModelForZeroShotImageClassification, AutoProcessor)
    task_auto = _task_model_class(archs, config.model_type)
    if not classifier and task_auto is not None:  # a detector or segmenter: its task explains it
        return _load_other(ref, trust_remote_code, *task_auto)
    if not classifier and backbone:
        return _load_other(ref, trust_remote_code, AutoModel, AutoImageProcessor)
    if not classifier:
        raise NotAnImageClassifierError(
            f"{ref!r} is a {', '.join(map(str, archs))} checkpoint, not an image classifier: it has no trained "
            "classification head, so a heatmap would explain a random head. Use a *ForImageClassification "
            "checkpoint (or fine-tune a head first), or pass target=<a reference image> to explain image similarity"
        )
    if not _auto_classifier(config) and not trust_remote_code:
        raise NotAnImageClassifierError(
            f"{ref!r} has model_type {config.model_type!r}, which has no image-classification model in "
            "transformers; pass an image-classification checkpoint"
        )
    model, info = _from_pretrained(ref, trust_remote_code, len(getattr(config, 'id2label', None) or {}))
    if info.get("missing_keys"):
        raise NotAnImageClassifierError(
            f"{ref!r} lacks trained weights for {sorted(info['missing_keys'])[:4]}...: transformers "
            "would initialise them randomly and the explanation would be meaningless; pass a checkpoint saved "
            "with its trained head (model.save_pretrained of the fine-tuned classifier)"
        )
    _check_finite(model, ref)
    try:
        processor = AutoImageProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the image processor of {ref!r}: {exc}; pass processor=") from None
    return model.eval(), processor


def _load_other(ref: str, trust_remote_code: bool, auto: Any, auto_processor: Any) -> tuple[nn.Module, Any]:
    """A zero-shot model or a backbone (``auto``) with its processor (``auto_processor``), safely."""
    model, info = _from_pretrained(ref, trust_remote_code, 0, auto)
    if info.get("missing_keys"):
        raise ModelLoadError(
            f"{ref!r} lacks trained weights for {sorted(info['missing_keys'])[:4]}...: transformers would initialise "
            f"them randomly and the explanation would be meaningless; pass a checkpoint saved with {auto.__name__}"
        )
    _check_finite(model, ref)
    try:
        processor = auto_processor.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the processor of {ref!r}: {exc}; pass processor=") from None
    return model.eval(), processor


def load(
    model: str | os.PathLike | nn.Module,
    processor: Any = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    need_processor: bool = True,
    backbone: bool = False,
) -> tuple[nn.Module, Any]:
    """``(model, processor)`` from a hub id, a local folder, or an already loaded model
    (processor ``None`` for a loaded model without one when ``need_processor`` is False).
    ``backbone``: a folder holding a vision backbone (no head) is loaded for image similarity
    instead of refused as no classifier.

    Loaded-by-name models are kept in :data:`cache` (the 4 most recent by default), keyed by
    name, device and ``trust_remote_code``.
    """
    if is_pipeline(model):  # a transformers pipeline: its model, and its image processor unless one is given
        processor = processor if processor is not None else getattr(model, "image_processor", None)
        model = model.model
    if isinstance(model, (str, os.PathLike)):
        ref = os.fspath(model)
        registry.plugins()  # plugins first: one may register the folder's model type with transformers

        def make() -> tuple[nn.Module, Any]:
            loaded, loaded_processor = _load(ref, trust_remote_code, backbone)
            return (loaded.to(device) if device is not None else loaded), loaded_processor

        hit = cache.get_or_make((ref, str(device), trust_remote_code, backbone), make)
        return hit[0], processor if processor is not None else hit[1]

    if timm_models.is_timm_model(model):
        model, wrapped_processor = timm_models.wrap_timm_model(model)
        processor = processor if processor is not None else wrapped_processor
    check_model(model)
    if open_clip_models.is_open_clip(model):
        processor = open_clip_models.as_processor(processor, model)
    if device is not None:
        model.to(device)
    if processor is None:
        processor = getattr(model, "processor", None)  # models that carry their own (a fitted GAM)
    if processor is None and need_processor:
        source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
        try:
            auto = AutoProcessor if is_dual_encoder(model) else AutoImageProcessor
            processor = auto.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception:
            raise ModelLoadError(
                f"no image processor given for this {type(model).__name__} and none found at "
                f"{source!r}; pass processor=AutoImageProcessor.from_pretrained(...)"
            ) from None
    return model, processor


def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``Pipeline`` (e.g. ``pipeline("image-classification")``) holding a model."""
    return type(obj).__module__.startswith("transformers.pipelines") and isinstance(getattr(obj, "model", None), nn.Module)


def clear_cache() -> None:
    """Forget every cached model."""
    cache.clear()
