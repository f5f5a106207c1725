"""``open_clip`` models (the ``open-clip-torch`` package) as the engine sees every other model.

An ``open_clip.create_model(...)`` object has no transformers config and no image processor: its
preprocessing is a torchvision transform and its tokenizer a callable returning token ids.
:class:`Processor` wraps both so that ``processor(images=..., return_tensors="pt")`` gives
``pixel_values`` (the geometry of the transform is measured like any processor's) and
``processor.tokenizer(texts)`` gives the ids ``model.encode_text`` takes. ``hf-hub:`` ids load
through ``open_clip.create_model_and_transforms`` (needs the hub: online only).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelLoadError

HUB_PREFIX = "hf-hub:"


def is_open_clip(model: Any) -> bool:
    """Whether ``model`` is an open_clip CLIP-family model (without importing open_clip)."""
    return type(model).__module__.startswith("open_clip.") and hasattr(model, "encode_image") \
        and hasattr(model, "visual")


class Processor:
    """An open_clip model's image transform and tokenizer behind a transformers-like processor."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], tokenizer: Callable[..., torch.Tensor] | None) -> None:
        self.transform, self.tokenizer = transform, tokenizer

    def __call__(self, images: Any = None, return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        items = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.stack([self.transform(image) for image in items])}

    def to_json_string(self) -> str:  # the geometry cache key
        return repr(self.transform)


def _transform_for(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    import open_clip

    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = getattr(model.visual, "image_size", 224)
    return open_clip.image_transform(size, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"))


def as_processor(processor: Any, model: nn.Module) -> Processor:
    """``processor`` as a :class:`Processor`: a torchvision transform (open_clip's ``preprocess``),
    a ``(transform, tokenizer)`` pair, a Processor already, or ``None`` (the model's own eval
    transform; no tokenizer: pass ``tokenizer=`` for prompts)."""
    if isinstance(processor, Processor):
        return processor
    if isinstance(processor, tuple) and len(processor) == 2:
        return Processor(*processor)
    if processor is None:
        return Processor(_transform_for(model), None)
    if callable(processor):
        return Processor(processor, None)
    raise ModelLoadError(f"an open_clip model's processor must be its preprocess transform or (preprocess, tokenizer), "
                         f"got {type(processor).__name__}")


def load_hub(ref: str) -> tuple[nn.Module, Processor]:
    """An ``hf-hub:`` open_clip model, its eval transform and tokenizer (needs the hub)."""
    try:
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(ref)
        tokenizer = open_clip.get_tokenizer(ref)
    except ImportError:
        raise ModelLoadError(f"{ref!r} is an open_clip model: pip install open-clip-torch") from None
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, weights open_clip cannot read
        raise ModelLoadError(f"cannot load the open_clip model {ref!r}: {type(exc).__name__}: {exc}; "
                             "without the hub, build it with open_clip.create_model(name, pretrained=PATH)") from None
    return model.eval(), Processor(preprocess, tokenizer)
