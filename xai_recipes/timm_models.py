"""timm models as Hugging Face classifiers: ``timm/<name>`` ids, timm folders, ``timm.create_model`` objects.

transformers' ``TimmWrapperForImageClassification`` holds a timm model in ``.timm_model`` and its
``TimmWrapperImageProcessor`` applies timm's own eval transform (``resolve_data_config`` +
``create_transform``: resize, centre crop), whose geometry the engine measures like any other
processor. Hub ids go through transformers directly; a local folder in timm's hub layout
(``config.json`` with ``architecture``, ``model.safetensors``) and a model object are wrapped
here, so timm recipes see one kind of model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

from .errors import ModelLoadError


def is_timm_model(model: Any) -> bool:
    """A bare timm model object (not yet wrapped)."""
    return isinstance(model, nn.Module) and hasattr(model, "pretrained_cfg") and not hasattr(model, "config")


def is_timm_folder(ref: str | os.PathLike) -> bool:
    """A local folder in timm's hub layout: ``config.json`` names a timm ``architecture``."""
    config = Path(ref) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "architecture" in data and "model_type" not in data


def _wrap(timm_config: dict[str, Any], timm_model: nn.Module | None = None) -> tuple[nn.Module, Any]:
    timm_config = dict(timm_config)
    # transformers passes num_classes itself; timm also records it in model_args (would clash)
    timm_config["model_args"] = {k: v for k, v in (timm_config.get("model_args") or {}).items() if k != "num_classes"}
    config = TimmWrapperConfig.from_dict(timm_config)
    if timm_model is None:
        model = TimmWrapperForImageClassification(config)
    else:
        with torch.device("meta"):  # the wrapper builds its own timm model: keep it weightless
            model = TimmWrapperForImageClassification(config)
        model.timm_model = timm_model
    pretrained = dict(timm_config["pretrained_cfg"])
    embed = getattr(model.timm_model, "patch_embed", None)
    if getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None):
        pretrained["input_size"] = (3, *embed.img_size)  # a ViT built with img_size=... takes only that size
    processor = TimmWrapperImageProcessor(pretrained_cfg=pretrained, architecture=config.architecture)
    if timm_model is None:
        return model.eval(), processor
    model.training = timm_model.training  # the user's timm model keeps its mode (explain borrows it)
    return model, processor


def wrap_timm_model(timm_model: nn.Module, labels: list[str] | None = None) -> tuple[nn.Module, Any]:
    """``(TimmWrapperForImageClassification, processor)`` around a ``timm.create_model`` object."""
    pretrained = dict(timm_model.pretrained_cfg)
    pool = getattr(timm_model, "global_pool", None)
    config = {"architecture": pretrained.get("architecture", type(timm_model).__name__),
              "num_classes": timm_model.num_classes, "num_features": timm_model.num_features,
              "pretrained_cfg": pretrained, **({"global_pool": pool} if isinstance(pool, str) else {})}
    if labels is not None:
        config["label_names"] = list(labels)
    return _wrap(config, timm_model)


def load_timm_folder(folder: str | os.PathLike) -> tuple[nn.Module, Any]:
    """A timm hub-layout folder, safetensors only."""
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{folder} has no model.safetensors; xai_recipes never loads pickle weights "
                             "(save with timm.models.save_for_hf(..., safe_serialization=True))")
    model, processor = _wrap(json.loads((folder / "config.json").read_text()))
    try:
        model.timm_model.load_state_dict(load_file(weights))
    except RuntimeError as exc:
        raise ModelLoadError(f"the weights in {weights} do not fit {model.config.architecture}: {exc}") from None
    return model, processor
