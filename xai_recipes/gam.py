"""Patch-embedding GAMs (DINO-GAM): a frozen backbone's patch tokens, one linear head.

The Emb-GAM idea extended to images: a frozen self-supervised ViT (DINO, DINOv2, a plain ViT —
any backbone ``AutoModel`` loads whose ``last_hidden_state`` has patch tokens) embeds each
patch, and a linear head scores class ``c`` as ``logit_c = Σ_p w_c·e_p / P + b_c`` (``"mean"``
pooling, what :func:`fit_gam` trains) or ``Σ_p w_c·e_p + b_c`` (``"sum"``, as the published
``emb-gam-dino`` card applies its head). The patch contributions are exact, not approximate.

A GAM is saved as a folder: ``config.json`` (backbone reference, pooling, labels), the head as
``head.safetensors`` (``weight``, ``bias``) and the backbone's image-processor config, and it is
loaded by ``explain(folder, ...)`` like any other image classifier.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from .errors import ModelLoadError, RecipeError
from .recipe import infer_grid

MODEL_TYPE = "dino_gam"
HEAD_FILE = "head.safetensors"


class DinoGAMConfig(PretrainedConfig):
    """``backbone``: hub id or folder of the frozen backbone (a relative folder is looked up beside the GAM's
    own folder first, e.g. ``"../dinov2"``, so the two can move together); ``pooling``: ``"mean"`` or ``"sum"``."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: str = "", pooling: Literal["mean", "sum"] = "mean", hidden_size: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.backbone, self.pooling, self.hidden_size = backbone, pooling, hidden_size


AutoConfig.register(MODEL_TYPE, DinoGAMConfig, exist_ok=True)


class DinoGAMForImageClassification(nn.Module):
    """Frozen backbone → patch tokens (``self.tokens``, a hook point) → pooled → linear ``classifier``."""

    def __init__(self, config: DinoGAMConfig, backbone: nn.Module, processor: Any = None) -> None:
        super().__init__()
        self.config, self.backbone, self.processor = config, backbone.eval().requires_grad_(False), processor
        self.tokens = nn.Identity()  # output: B×(h·w)×C, the patch embeddings the head reads
        self.classifier = nn.Linear(config.hidden_size, len(config.id2label))
        # The GAM's patch embedding: the backbone's patch token, standardised per channel (shift, scale).
        self.register_buffer("shift", torch.zeros(config.hidden_size))
        self.register_buffer("scale", torch.ones(config.hidden_size))

    @staticmethod
    def run_backbone(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's ``last_hidden_state``, ``B×tokens×C`` (any input size where it can)."""
        takes = inspect.signature(backbone.forward).parameters
        kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in takes else {}
        hidden = getattr(backbone(pixel_values=pixel_values, **kwargs), "last_hidden_state", None)
        if hidden is not None and hidden.dim() == 4:  # a CNN's B×C×h×w map: its positions are the patches
            hidden = hidden.flatten(2).transpose(1, 2)
        if hidden is None or hidden.dim() != 3:
            raise RecipeError(f"the backbone {type(backbone).__name__} gives no patch tokens (last_hidden_state "
                              f"{None if hidden is None else tuple(hidden.shape)}); a patch-embedding GAM needs a "
                              "backbone whose last_hidden_state is B×tokens×C (a ViT) or a B×C×h×w map")
        return hidden

    @classmethod
    def patch_tokens(cls, backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's patch tokens ``B×(h·w)×C``: leading CLS/register tokens counted off by
        the grid that fits the input size."""
        hidden = cls.run_backbone(backbone, pixel_values)
        return hidden[:, infer_grid(hidden.shape[1], tuple(pixel_values.shape[-2:]))[1]:]

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> ImageClassifierOutput:
        patches = self.tokens((self.patch_tokens(self.backbone, pixel_values) - self.shift) / self.scale)
        pooled = patches.mean(1) if self.config.pooling == "mean" else patches.sum(1)
        return ImageClassifierOutput(logits=self.classifier(pooled))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json``, ``head.safetensors`` and the backbone's processor config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(folder)
        save_file({"weight": self.classifier.weight.detach().contiguous(), "bias": self.classifier.bias.detach().contiguous(),
                   "shift": self.shift.contiguous(), "scale": self.scale.contiguous()}, folder / HEAD_FILE)
        if self.processor is not None:
            self.processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, trust_remote_code: bool = False) -> DinoGAMForImageClassification:
        """A GAM saved by :meth:`save_pretrained`: safetensors head, backbone safetensors only; a
        damaged or mismatched folder raises :class:`ModelLoadError` naming the file."""
        folder = Path(folder) if Path(folder).is_dir() else Path(snapshot_download(str(folder), allow_patterns=["*.json", HEAD_FILE]))
        try:
            config = DinoGAMConfig.from_pretrained(folder)
            head = load_file(folder / HEAD_FILE)
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(f"{folder} is not a saved GAM (config.json + {HEAD_FILE}), or a file of it is truncated "
                                 f"or corrupt ({type(exc).__name__}: {exc}); save it again with save_pretrained()") from None
        _check_head(head, config, folder / HEAD_FILE)
        backbone = load_backbone(_beside(folder, config.backbone), trust_remote_code)
        try:
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - a missing or hostile preprocessor_config.json
            raise ModelLoadError(f"cannot load the image processor of the GAM {folder} ({type(exc).__name__}: {exc}); "
                                 "save the backbone's processor into the folder") from None
        model = cls(config, backbone, processor)
        check_width(backbone, head["weight"].shape[1])
        model.classifier.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        model.shift.copy_(head.get("shift", model.shift))
        model.scale.copy_(head.get("scale", model.scale))
        return model.eval()


def _beside(folder: Path, ref: str) -> str:
    """A relative backbone folder that exists relative to the GAM's folder, resolved there; else ``ref`` as it is."""
    if ref and not Path(ref).is_absolute() and (folder / ref).is_dir():
        return str((folder / ref).resolve())
    return ref


def _check_head(head: dict[str, torch.Tensor], config: DinoGAMConfig, path: Path) -> None:
    """The head file holds ``weight`` (labels × width), ``bias`` (labels) and optional ``shift``/``scale``
    (width), all finite, fitting the config's labels and width."""
    labels, width = len(config.id2label), config.hidden_size
    want = {"weight": (labels, width), "bias": (labels,), "shift": (width,), "scale": (width,)}
    for key, shape in want.items():
        tensor = head.get(key)
        if tensor is None and key in ("shift", "scale"):
            continue
        problem = ("is missing" if tensor is None else f"has shape {tuple(tensor.shape)}, not {shape}"
                   if tuple(tensor.shape) != shape else "holds NaN or inf" if not torch.isfinite(tensor).all() else "")
        if problem:
            raise ModelLoadError(f"{path}: the head's {key!r} {problem} (config.json: {labels} labels, hidden_size "
                                 f"{width}); the folder is damaged or its files do not belong together: save the GAM again")


def load_backbone(ref: str | os.PathLike | nn.Module, trust_remote_code: bool = False) -> nn.Module:
    """The frozen backbone, safetensors only."""
    if isinstance(ref, nn.Module):
        return ref
    try:
        return AutoModel.from_pretrained(ref, use_safetensors=True, trust_remote_code=trust_remote_code).eval()
    except Exception as exc:  # noqa: BLE001 - missing, pickle-only, truncated, custom code not trusted...
        raise ModelLoadError(f"cannot load the GAM's backbone {str(ref)!r} with safetensors weights ({type(exc).__name__}: "
                             f"{exc}); xai_recipes never loads pickle weights nor runs a folder's code unless "
                             "trust_remote_code=True: point config.json's backbone at a safetensors checkpoint") from None


def check_width(backbone: nn.Module, width: int) -> None:
    hidden = getattr(backbone.config, "hidden_size", None) or (getattr(backbone.config, "hidden_sizes", None) or [None])[-1]
    if hidden is not None and hidden != width:
        raise RecipeError(f"the GAM head expects {width}-wide patch embeddings but the backbone "
                          f"{type(backbone).__name__} gives {hidden}; fit the head on this backbone")


def gam_from_head(backbone: str | os.PathLike | nn.Module, weight: torch.Tensor, bias: torch.Tensor,
                  labels: list[str], *, pooling: Literal["mean", "sum"] = "mean", processor: Any = None,
                  shift: Any = None, scale: Any = None, trust_remote_code: bool = False) -> DinoGAMForImageClassification:
    """A GAM from a backbone and a head's coefficients (``labels × C``) and intercepts, applied to
    the patch tokens standardised as ``(token - shift) / scale`` (default: as they are)."""
    net = load_backbone(backbone, trust_remote_code)
    weight, bias = torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
    if weight.dim() != 2 or weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise RecipeError(f"head of shape {tuple(weight.shape)} + {tuple(bias.shape)} does not fit {len(labels)} labels")
    check_width(net, weight.shape[1])
    name = backbone if isinstance(backbone, (str, os.PathLike)) else getattr(net.config, "_name_or_path", "")
    if processor is None and name:
        processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    config = DinoGAMConfig(backbone=str(name), pooling=pooling, hidden_size=weight.shape[1],
                           id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    model = DinoGAMForImageClassification(config, net, processor)
    model.classifier.load_state_dict({"weight": weight, "bias": bias})
    if shift is not None:
        model.shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
    if scale is not None:
        model.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
    return model.eval()
