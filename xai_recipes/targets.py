"""Resolve ``target=`` (label names, synonyms, indices) against a model's ``id2label``."""

from __future__ import annotations

import difflib
import numbers
import operator
import unicodedata
from typing import Mapping, Sequence, Union

from .errors import TargetIndexError, UnknownLabelError

Target = Union[str, int]


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").lower().split())


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 10 MB label must not become a 10 MB message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or "bool" in str(getattr(value, "dtype", ""))  # numpy / torch booleans too


def _lookalikes(text: str, id2label: Mapping[int, str]) -> str:
    """A sentence naming the characters of ``text`` that appear in no label (e.g. a Cyrillic 'а'
    in 'cаt'), with their Unicode names: they look like letters but never match one."""
    known = {c for label in id2label.values() for c in label.lower()}
    odd = [c for c in dict.fromkeys(text.lower()) if not c.isascii() and c not in known]
    if not odd:
        return ""
    names = ", ".join(f"{c!r} (U+{ord(c):04X} {unicodedata.name(c, 'unnamed')})" for c in odd[:3])
    return f" It contains {names}, which no label has: a look-alike of a letter matches nothing."


def _index(target: object, id2label: Mapping[int, str]) -> int:
    n = len(id2label)
    if _is_bool(target):
        raise UnknownLabelError(f"target {_short(target)} is a boolean, not a class index or label; pass an int index "
                                "or a label name")
    if not isinstance(target, str):
        try:
            index = operator.index(target)  # int, numpy and 0-d torch integers; not floats, bytes, lists
        except TypeError:
            raise UnknownLabelError(f"target {_short(target)} ({type(target).__name__}) is neither a label name nor a "
                                    "class index; pass a str label or an int index (a list of them for several)") from None
        if not 0 <= index < n:
            raise TargetIndexError(f"class index {_short(index)} is out of range: this model has classes 0..{n - 1}; "
                                   "pass an index in that range or a label name")
        return index
    wanted = _norm(target)
    if not wanted:
        raise UnknownLabelError(f"target {_short(target)} is an empty label; pass a label name or a class index")
    hits = sorted(int(i) for i, label in id2label.items() if _norm(label) == wanted)  # the full label
    if not hits:  # else any comma-separated synonym
        hits = sorted(int(i) for i, label in id2label.items() if wanted in (_norm(s) for s in label.split(",")))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        options = "; ".join(f"{i}: {id2label[i]!r}" for i in hits[:10])
        raise UnknownLabelError(f"label {_short(target)} names several classes ({options}); pass the index or the full label")
    synonyms = sorted({_norm(s) for label in id2label.values() for s in label.split(",")} - {""})
    close = difflib.get_close_matches(wanted, synonyms, n=3, cutoff=0.6) if len(wanted) <= 200 else []
    if close:
        hint = f"Did you mean {', '.join(repr(c) for c in close)}?"
    elif n <= 20:
        hint = f"Its labels: {', '.join(repr(id2label[i]) for i in sorted(id2label))}."
    else:
        hint = "Pass a label from model.config.id2label or a class index."
    raise UnknownLabelError(f"label {_short(target)} is not in this model's id2label ({n} classes).{_lookalikes(target, id2label)} {hint}")


def resolve_targets(target: Target | Sequence[Target] | None, id2label: Mapping[int, str]) -> list[int] | None:
    """Class indices for ``target`` (``None`` stays ``None``: use the top predictions).

    Labels match case-insensitively, by full label or comma-separated synonym; indices are
    ints (numpy and 0-d torch integers too). Duplicates are kept, in order: one (identical) map
    each. Booleans, floats, bytes and Unicode look-alikes of a label are refused by name."""
    if target is None:
        return None
    if isinstance(target, (str, bytes, bytearray, numbers.Number)) or getattr(target, "ndim", None) == 0:
        items = [target]  # one target (bytes and floats are refused by _index, by name)
    else:
        try:
            items = list(target)  # type: ignore[call-overload]
        except TypeError:
            items = [target]
    if not items:
        raise UnknownLabelError("target is an empty list; pass at least one label or index, or None")
    return [_index(t, id2label) for t in items]
