"""Zero-shot image classification: explain a free-text prompt's score for a CLIP / SigLIP model.

The scores are ``pipeline("zero-shot-image-classification")``'s: each candidate label goes through
the template (``"This is a photo of {}."``; ``template=None``: the text as given), is tokenized as
the pipeline does (SigLIP: padded to 64 tokens), embedded once by the model's text tower (cached
per model and prompt set), and scored against the image embedding with the model's own
temperature (and bias): ``logit_scale.exp() · cos(image, text) (+ logit_bias)``. Probabilities:
CLIP's softmax over the candidates, SigLIP's independent sigmoid. The image side is the recipe's
(``Recipe.embedding``), so every method explains ``B×K`` prompt scores with one image forward and
one batched backward for all T prompts.
"""

from __future__ import annotations

import difflib
import threading
import warnings
import weakref
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import PromptError, TargetIndexError, UnknownLabelError
from ..hookspecs import hookimpl
from ..images import is_image_target
from ..lru import LRU
from ..modelstate import borrowed
from ..recipe import Recipe
from ..task import Bound, Call, Task

TEMPLATE = "This is a photo of {}."
TEXT_BATCH = 256  # prompts per text-tower forward pass
#: Fast tokenizers keep their padding/truncation settings on the shared Rust object and set them per call, so
#: concurrent calls (several threads explaining with one model) can pad with another call's settings: one at a time.
_tokenizing = threading.Lock()
_embeddings: LRU = LRU(32)  # (model id, prompts, ...) -> (weakref to model, K×D normalised text embeddings)


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text model takes was cut (as SigLIP's pipeline does)."""


def has_text_tower(model: nn.Module) -> bool:
    """Whether ``model`` embeds text into its image space (HF dual encoders, open_clip models)."""
    return callable(getattr(model, "get_text_features", None)) or callable(getattr(model, "encode_text", None))


def sigmoid_scores(model: nn.Module) -> bool:
    """SigLIP's independent sigmoid (the pipeline's rule: ``"siglip"`` in the model type) or CLIP's softmax."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:
        return "siglip" in model_type
    return getattr(model, "logit_bias", None) is not None  # open_clip's SigLIP models carry a bias


def _check(model: nn.Module, recipe: Recipe, target: Any) -> str | None:
    if recipe.embedding is None:
        return f"recipe {recipe.name!r} explains class logits, not an image embedding a prompt can be scored against"
    if not has_text_tower(model):
        return (f"{type(model).__name__} has no text tower (get_text_features), so it cannot score a text prompt; "
                "pass a reference image as target for image similarity")
    if is_image_target(target):
        return "the target is an image, not text: that is image similarity (task='image-feature-extraction')"
    return None


def _text(item: Any, what: str) -> str:
    if not isinstance(item, str):
        raise PromptError(f"{what} {str(item)[:60]!r} ({type(item).__name__}) is not text; pass a string prompt "
                          "(or, with labels=, an int index into them)")
    if not item.strip():
        raise PromptError(f"{what} {item!r} is empty; pass a prompt with words in it, e.g. 'a dog'")
    return item


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def resolve(target: Any, labels: Sequence[str] | None) -> tuple[list[str], list[int] | None]:
    """``(candidate labels, wanted indices)`` from ``target`` and ``labels=`` (see the module doc)."""
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise PromptError(f"labels must be a non-empty list of prompts, got {str(labels)[:60]!r}; pass e.g. "
                              "labels=['a dog', 'a cat']")
        labels = [_text(x, "label") for x in labels]
    if target is None:
        if labels is None:
            raise PromptError("a zero-shot model has no classes of its own: pass target='a prompt' (or a list), "
                              "or labels=[...] to explain the top_k of those candidates")
        return labels, None
    items = [target] if isinstance(target, (str, int)) or getattr(target, "ndim", None) == 0 else list(target)
    if not items:
        raise PromptError("target is an empty list; pass at least one prompt, or None with labels=")
    for t in items:
        if isinstance(t, bool) or "bool" in str(getattr(t, "dtype", "")):
            raise PromptError(f"target {t!r} is a boolean, not text; pass a string prompt or an index into labels=")
    if labels is None:
        if any(not isinstance(t, str) for t in items):
            bad = next(t for t in items if not isinstance(t, str))
            raise PromptError(f"target {str(bad)[:60]!r} is a class index, but a zero-shot model has no classes: pass "
                              "labels=[...] to index into, or the prompt text itself")
        prompts = [_text(t, "prompt") for t in items]
        return list(dict.fromkeys(prompts)), [list(dict.fromkeys(prompts)).index(p) for p in prompts]
    wanted = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, (str, int)) and getattr(t, "ndim", None) != 0:
            raise PromptError(f"target {str(t)[:60]!r} is neither a prompt nor an index into labels")
        if not isinstance(t, str):
            i = int(t)
            if not 0 <= i < len(labels):
                raise TargetIndexError(f"index {i} is out of range for the {len(labels)} labels; pass 0..{len(labels) - 1}")
            wanted.append(i)
            continue
        _text(t, "prompt")
        hits = [i for i, label in enumerate(labels) if label == t] or \
               [i for i, label in enumerate(labels) if _norm(label) == _norm(t)]
        if not hits:
            close = difflib.get_close_matches(t, labels, n=3, cutoff=0.6) if len(t) <= 200 else []
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownLabelError(f"prompt {t[:60]!r} is not among labels= ({len(labels)} candidates).{hint} Add it "
                                    "to labels, or leave labels out to score the prompts themselves")
        wanted.append(hits[0])
    return labels, wanted


def _tokenizer(call: Call) -> Any:
    tokenizer = call.options.get("tokenizer") or getattr(call.processor, "tokenizer", None)
    if tokenizer is None:
        raise PromptError(f"no tokenizer for {type(call.model).__name__}: pass processor= a processor holding one "
                          "(AutoProcessor.from_pretrained(...)) or tokenizer=")
    return tokenizer


def _max_tokens(model: nn.Module, tokenizer: Any) -> int | None:
    config = getattr(getattr(model, "config", None), "text_config", None)
    for value in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "context_length", None)):
        if isinstance(value, int) and value > 0:
            return value
    return None


def text_inputs(model: nn.Module, tokenizer: Any, sequences: list[str], truncate: bool | None) -> Any:
    """The text tower's inputs for ``sequences``, tokenized as the pipeline does; a prompt longer than
    the model takes is cut with a :class:`PromptTruncatedWarning` (SigLIP's pipeline cuts silently;
    ``truncate=None`` does so for SigLIP only) or refused with a :class:`PromptError`."""
    siglip = "siglip" in str(getattr(getattr(model, "config", None), "model_type", ""))
    if not hasattr(tokenizer, "model_input_names"):  # open_clip: a callable that pads and cuts to context_length
        limit = _max_tokens(model, tokenizer)
        lengths = [len(tokenizer.encode(s)) + 2 if hasattr(tokenizer, "encode") else 0 for s in sequences]
        longest = max(lengths)
        if limit and longest > limit:
            _too_long(sequences[lengths.index(longest)], longest, limit, truncate, siglip)
        return tokenizer(sequences)
    limit = _max_tokens(model, tokenizer)
    if limit:
        lengths = [len(ids) for ids in tokenizer(sequences, truncation=False)["input_ids"]]
        longest = max(lengths)
        if longest > limit:
            _too_long(sequences[lengths.index(longest)], longest, limit, truncate, siglip)
    kwargs: dict[str, Any] = {"padding": True, "truncation": True, "max_length": limit} if limit else {"padding": True}
    if siglip:
        kwargs.update(padding="max_length", max_length=64, truncation=True)
    return tokenizer(sequences, return_tensors="pt", **kwargs)


def _too_long(text: str, n: int, limit: int, truncate: bool | None, siglip: bool) -> None:
    cut = truncate if truncate is not None else siglip
    what = f"prompt {text[:50]!r}... is {n} tokens, but the text model takes at most {limit}"
    if not cut:
        raise PromptError(f"{what}; shorten it, or pass truncate=True to cut it to {limit} tokens")
    warnings.warn(f"{what}: cut to {limit} tokens (truncate=False refuses instead)", PromptTruncatedWarning,
                  stacklevel=4)


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def text_embeddings(model: nn.Module, tokenizer: Any, sequences: list[str], truncate: bool | None) -> torch.Tensor:
    """``K×D`` unit-norm text embeddings, computed once per model, tokenizer and prompt set."""
    param = next(model.parameters())
    key = (id(model), id(tokenizer), tuple(sequences), truncate, str(param.device), param.dtype,
           tuple(p._version for p in model.parameters()))  # in-place weight updates invalidate

    def compute() -> tuple[weakref.ref, torch.Tensor]:
        chunks = []
        with torch.no_grad():
            for i in range(0, len(sequences), TEXT_BATCH):
                with _tokenizing:
                    inputs = text_inputs(model, tokenizer, sequences[i : i + TEXT_BATCH], truncate)
                if isinstance(inputs, torch.Tensor):  # open_clip token ids
                    chunks.append(model.encode_text(inputs.to(param.device)))
                else:
                    inputs = {k: v.to(param.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
                    chunks.append(_features(model.get_text_features(**inputs)))
        text = torch.cat(chunks).to(param.dtype)
        return weakref.ref(model), text / text.norm(p=2, dim=-1, keepdim=True)

    ref, text = _embeddings.get_or_make(key, compute)
    return text if ref() is model else compute()[1]  # an id reused by a new model: never its predecessor's


def scorer(model: nn.Module, text: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image embeddings ``B×D`` → ``B×K`` scores: the model's own ``logit_scale.exp() · cos (+ logit_bias)``."""
    scale, bias = model.logit_scale, getattr(model, "logit_bias", None)

    def scores(image: torch.Tensor) -> torch.Tensor:
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        out = image @ text.to(image.dtype).T * scale.exp().to(image.dtype)
        return out + bias.to(image.dtype) if bias is not None else out

    return scores


def bind_embedding(recipe: Recipe, head: Callable[[torch.Tensor], torch.Tensor]) -> Recipe:
    """``recipe`` (an embedding recipe) with its scores ``head(embedding)``, LeGrad's per-block score too."""
    attention = recipe.attention
    if attention is not None and attention.embed is not None:
        embed = attention.embed
        attention = replace(attention, score=lambda m: (lambda z, f=embed(m): head(f(z))))
    return replace(recipe, logits=lambda output: head(recipe.embedding(output)), attention=attention)


def bind(call: Call) -> Bound:
    labels, wanted = resolve(call.target, call.options.get("labels"))
    template = call.options.get("template", TEMPLATE)
    if template is not None and (not isinstance(template, str) or "{}" not in template):
        raise PromptError(f"template must be a string holding '{{}}' (where the label goes), or None, got "
                          f"{str(template)[:60]!r}; pass e.g. template='a photo of {{}}.'")
    sequences = [template.format(label) if template is not None else label for label in labels]
    with borrowed(call.model):  # eval mode: no dropout in the text tower
        text = text_embeddings(call.model, _tokenizer(call), sequences, call.options.get("truncate"))
    probabilities = (lambda s: s.float().sigmoid()) if sigmoid_scores(call.model) else (lambda s: s.float().softmax(-1))
    return Bound(bind_embedding(call.recipe, scorer(call.model, text)), dict(enumerate(labels)), wanted, probabilities)


NOT_A_CLASSIFIER = ("{} names its maps by a classifier's own classes, and a zero-shot model has none (its classes "
                    "are your prompts); use gradcam, gradient-rollout or legrad")

TASK = Task(
    name="zero-shot-image-classification",
    bind=bind,
    check=_check,
    priority=20,
    options={"labels": None, "template": TEMPLATE, "truncate": None, "tokenizer": None},
    unsupported={m: NOT_A_CLASSIFIER.format(m) for m in ("dff", "patch-contributions")},
    description="A free-text prompt's score for a CLIP / SigLIP model; probabilities over labels= as the pipeline's",
    reference='transformers pipeline("zero-shot-image-classification")',
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(TASK)
