"""The generic recipe: for a classifier no recipe serves and none can be derived for.

Such a model has no spatial layer the logits depend on position by position (e.g. a head that
reads the flattened pixels through an MLP), so no CAM, attention or head method can read it.
Methods that need no recipe field still can: they attribute the logits to the model input
(Captum's attributions, FullGrad). The generic recipe declares only the tensor-output wrapper
(``target_layers=None``, no head, no attention); its default method is Integrated Gradients.
It is only returned when one probe forward pass through that wrapper gives ``B×labels`` logits;
otherwise :class:`NoRecipeError` says why.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from .derive import config_channels, config_input_size, find_logits
from .errors import NoRecipeError
from .modelstate import borrowed
from .recipe import Recipe

NAME = "generic"
DEFAULT_METHOD = "integrated-gradients"
_made: weakref.WeakKeyDictionary[nn.Module, Recipe | str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def generic_recipe(model: nn.Module, why: str = "") -> Recipe:
    """The logits-wrapper-only recipe for ``model`` (``why``: why no other recipe fits, for the
    description), or :class:`NoRecipeError` when the model does not give logits on a probe."""
    with _lock:
        made = _made.get(model)
        if made is None:
            try:
                made = _make(model, why)
            except NoRecipeError as exc:
                made = str(exc)
            _made[model] = made
    if isinstance(made, str):
        raise NoRecipeError(made)
    return made


def _make(model: nn.Module, why: str) -> Recipe:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    labels = len(getattr(config, "id2label", None) or {})
    hw = config_input_size(config)
    try:
        param = next(model.parameters())
        probe = torch.zeros(2, config_channels(config), *hw, dtype=param.dtype, device=param.device)
        with borrowed(model), torch.no_grad():
            logits = find_logits(model(pixel_values=probe))
    except Exception as exc:  # noqa: BLE001 - any failure: the model cannot be run on an image tensor
        raise NoRecipeError(f"not even the generic recipe fits: a probe forward pass on a {hw[0]}×{hw[1]} image "
                            f"failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or (labels and logits.shape[1] != labels):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise NoRecipeError(f"not even the generic recipe fits: the model's output {shape} is not B×{labels or 'labels'} logits")
    from . import registry

    refused = (f"no recipe serves model type {model_type!r} ({type(model).__name__}) and none could be derived "
               f"({why.rstrip('.')}); registered recipes: {', '.join(registry.list_recipes())}. Pass recipe='<name>' "
               "to use one anyway or write a plugin with a register_recipes hook; here only methods that need no "
               f"recipe field apply ({DEFAULT_METHOD}, saliency, ...)")
    return Recipe(
        name=NAME,
        model_types=(model_type,),
        target_layers=None,
        logits=find_logits,
        default_method=DEFAULT_METHOD,
        unsupported={m.name: refused for m in registry.methods_table().values() if m.needs},
        description=(f"generic: no recipe serves {model_type!r} and none could be derived ({why.rstrip('.')}); only "
                     f"methods that need no recipe field apply: input attributions, {DEFAULT_METHOD} by default"),
        plugin="xai_recipes (generic)",
    )
