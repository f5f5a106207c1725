"""Resolve ``target=`` (label names, synonyms, indices) against a model's ``id2label``."""

from __future__ import annotations

import difflib
import numbers
from typing import Mapping, Sequence, Union

from .errors import TargetIndexError, UnknownLabelError

Target = Union[str, int]


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").lower().split())


def _index(target: Target, id2label: Mapping[int, str]) -> int:
    n = len(id2label)
    if isinstance(target, bool) or not isinstance(target, (numbers.Integral, str)):
        raise UnknownLabelError(f"target {target!r} is neither a label name nor a class index")
    if isinstance(target, numbers.Integral):
        if not 0 <= int(target) < n:
            raise TargetIndexError(f"class index {int(target)} is out of range: this model has classes 0..{n - 1}")
        return int(target)
    wanted = _norm(target)
    hits = sorted(int(i) for i, label in id2label.items() if _norm(label) == wanted)  # the full label
    if not hits:  # else any comma-separated synonym
        hits = sorted(int(i) for i, label in id2label.items() if wanted in (_norm(s) for s in label.split(",")))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        options = "; ".join(f"{i}: {id2label[i]!r}" for i in hits)
        raise UnknownLabelError(f"label {target!r} names several classes ({options}); pass the index or the full label")
    synonyms = sorted({_norm(s) for label in id2label.values() for s in label.split(",")})
    close = difflib.get_close_matches(wanted, synonyms, n=3, cutoff=0.6)
    if close:
        hint = f"Did you mean {', '.join(repr(c) for c in close)}?"
    elif n <= 20:
        hint = f"Its labels: {', '.join(repr(id2label[i]) for i in sorted(id2label))}."
    else:
        hint = "Pass a label from model.config.id2label or a class index."
    raise UnknownLabelError(f"label {target!r} is not in this model's id2label ({n} classes). {hint}")


def resolve_targets(target: Target | Sequence[Target] | None, id2label: Mapping[int, str]) -> list[int] | None:
    """Class indices for ``target`` (``None`` stays ``None``: use the top predictions)."""
    if target is None:
        return None
    items = [target] if isinstance(target, (str, numbers.Integral)) else list(target)
    if not items:
        raise UnknownLabelError("target is an empty list; pass at least one label or index, or None")
    return [_index(t, id2label) for t in items]
