"""Borrow the user's model for one call and give it back exactly as it was.

Explaining needs the model in eval mode, and the attention methods need it to compute attention
probabilities (transformers 5 runs SDPA by default, which returns none; timm fuses attention).
:func:`borrowed` switches both for the duration of a call and restores every module's training
flag, every config's attention implementation and every timm ``fused_attn`` flag afterwards.
Calls may overlap on several threads: the first to enter saves the state, the last to leave
restores it, so no thread ever sees another one's restore half-way through its forward.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import nn

_lock = threading.Lock()


@dataclass
class _Loan:
    users: int = 0
    training: dict[nn.Module, bool] = field(default_factory=dict)
    eager_users: int = 0
    attn: list[tuple[Any, str, Any]] = field(default_factory=list)  # (object, attribute, saved value)


_loans: weakref.WeakKeyDictionary[nn.Module, _Loan] = weakref.WeakKeyDictionary()


def _attention_switches(model: nn.Module) -> list[tuple[Any, str, Any]]:
    """Every (object, attribute, value) that must change for attention probabilities to exist."""
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            configs[id(config)] = config
            for name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, name, None)
                if sub is not None and hasattr(sub, "_attn_implementation_internal"):
                    configs[id(sub)] = sub
    switches = [(c, "_attn_implementation_internal", "eager") for c in configs.values()]
    switches += [(m, "fused_attn", False) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for m in model.modules():  # older transformers models pick an SDPA subclass at init: run its eager parent
        kind = type(m)
        if "Sdpa" in kind.__name__ and kind.__bases__ and kind.__bases__[0].__name__ == kind.__name__.replace("Sdpa", ""):
            switches.append((m, "__class__", kind.__bases__[0]))
    return switches


@contextmanager
def borrowed(model: nn.Module, eager_attention: bool = False) -> Iterator[nn.Module]:
    """``model`` in eval mode (and computing attention probabilities if asked) inside the block."""
    with _lock:
        loan = _loans.setdefault(model, _Loan())
        if loan.users == 0:
            loan.training = {m: m.training for m in model.modules()}
            model.eval()
        loan.users += 1
        if eager_attention:
            if loan.eager_users == 0:
                switches = _attention_switches(model)
                loan.attn = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in switches]
                for obj, attr, value in switches:
                    setattr(obj, attr, value)
            loan.eager_users += 1
    try:
        yield model
    finally:
        with _lock:
            if eager_attention:
                loan.eager_users -= 1
                if loan.eager_users == 0:
                    for obj, attr, value in loan.attn:
                        setattr(obj, attr, value)
                    loan.attn = []
            loan.users -= 1
            if loan.users == 0:
                for module, training in loan.training.items():
                    module.training = training
                loan.training = {}
