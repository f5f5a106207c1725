"""Attention methods: what a transformer attends to, read from its own attention probabilities.

All four run one forward pass with the recipe's attention modules hooked (the engine switches the
model to eager attention for the call, since SDPA computes no probabilities); the class-specific
ones add one batched backward for all T targets. With ``A_l`` the ``B×heads×N×N`` attention of
block ``l``, ``r`` the readout query rows (CLS; the mean of the patch rows for mean-pooled
models) and ``P`` the patch keys (prefix tokens dropped):

* ``attention`` — ``mean_h A_L[r, P]``: the last block's readout attention (DINO's
  visualisation), class-agnostic, with one map per head (``Explanation.heads``).
* ``rollout`` — Abnar & Zuidema 2020: ``R = Â_L ⋯ Â_1`` with ``Â = rownorm(½ fuse_h(A) + ½ I)``
  (``head_fusion`` mean/max/min, the lowest ``discard_ratio`` of entries zeroed, ``residual``
  identity), map ``R[r, P]``; class-agnostic.
* ``gradient-rollout`` — Chefer et al. ICCV 2021: ``R ← R + mean_h((∇A_l ⊙ A_l)⁺) R`` from
  ``R = I``, ``∇`` of the target logit; map ``R[r, P]``.
* ``legrad`` — Bousselham et al. 2024: for each block ``l``, the class score the model's own
  norm + pooling + head give from that block's tokens, its gradient with respect to ``A_l``,
  ``mean_{h, queries}(∇A_l)⁺[P]``, summed over blocks. Needs no readout token.
"""

from __future__ import annotations

import math
import threading
from contextlib import ExitStack
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..capture import first_tensor, target_grads, target_scores
from ..errors import MethodNotApplicableError, RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Attention, Recipe, infer_grid


def mha_with_probs(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's ``MultiheadAttention`` recomputed from its own weights, returning ``(output, B×heads×Nq×Nk
    probabilities)`` with the probabilities *on* the path to the output (torch returns a detached view of
    them, or none with ``need_weights=False``), so gradients with respect to them exist."""
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise RecipeError("this nn.MultiheadAttention uses separate q/k/v projections, bias_k/v or add_zero_attn, "
                          "which the attention methods do not recompute; use gradcam")
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    given = {**dict(zip(names, args)), **kwargs}
    q, k, v = (given[n] for n in names[:3])
    if not module.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    (B, Nq, E), Nk, H = q.shape, k.shape[1], module.num_heads
    wq, wk, wv = module.in_proj_weight.chunk(3)
    bq, bk, bv = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    split = lambda x, n: x.view(B, n, H, E // H).transpose(1, 2)  # noqa: E731
    q, k, v = split(nn.functional.linear(q, wq, bq), Nq), split(nn.functional.linear(k, wk, bk), Nk), \
        split(nn.functional.linear(v, wv, bv), Nk)
    scores = q @ k.transpose(-2, -1) / math.sqrt(E // H)
    mask = given.get("attn_mask")
    if mask is not None:
        mask = mask.view(B, H, Nq, Nk) if mask.dim() == 3 else mask
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    padding = given.get("key_padding_mask")
    if padding is not None:
        scores = scores.masked_fill(padding.bool()[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1)
    out = module.out_proj((probs @ v).transpose(1, 2).reshape(B, Nq, E))
    return (out if module.batch_first else out.transpose(0, 1)), probs


def capture_attention(batch: Batch, with_grad: bool, blocks: bool = False):
    """One forward pass recording each attention module's probabilities (and each block's output
    tokens if ``blocks``): ``(logits, [B×H×Nq×Nk, ...], [B×N×C, ...], pool)``, ``pool`` being the
    attention-pooling head's ``B×H×1×N`` probabilities (``None`` without one). With ``with_grad``,
    the graph is kept so gradients with respect to the probabilities can be taken."""
    model, recipe = batch.model, batch.recipe
    spec: Attention = recipe.attention
    pool = spec.pool(model) if spec.pool else None
    modules = list(spec.modules(model)) + ([pool] if pool is not None else [])
    block_modules = list(spec.blocks(model)) if blocks and spec.blocks else []
    probs: dict[int, torch.Tensor] = {}
    tokens: dict[int, torch.Tensor] = {}
    caller = threading.get_ident()

    def keep_probs(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() != caller:  # another thread's call on the same model
            return
        found = output if spec.item is None else (output[spec.item] if isinstance(output, (tuple, list)) else None)
        if isinstance(found, torch.Tensor) and found.dim() == 3:  # torch's MultiheadAttention: heads averaged
            found = found[:, None]
        if not isinstance(found, torch.Tensor) or found.dim() != 4:
            raise RecipeError(
                f"attention module {type(module).__name__} of recipe {recipe.name!r} gave no B×heads×N×N attention "
                f"probabilities (got {type(found).__name__}); the model may run fused attention the engine could not "
                "switch off, or the recipe's Attention.modules/item point at the wrong output")
        probs[id(module)] = found

    def keep_mha(module: nn.Module, args: tuple, *rest: object) -> object:
        if threading.get_ident() != caller:
            return None
        kwargs = rest[0] if len(rest) == 2 else {}  # torch may drop the kwargs while other threads (un)register hooks
        out, probs[id(module)] = mha_with_probs(module, args, kwargs)
        return out, probs[id(module)]

    def keep_tokens(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() == caller:
            tokens[id(module)] = first_tensor(output)

    pixel_values = batch.pixel_values.detach()
    with ExitStack() as stack:
        for module in modules:  # torch's MultiheadAttention: recomputed, so its probabilities carry gradients
            hook = (module.register_forward_hook(keep_mha, with_kwargs=True) if isinstance(module, nn.MultiheadAttention)
                    else module.register_forward_hook(keep_probs))
            stack.callback(hook.remove)
        for module in block_modules:
            stack.callback(module.register_forward_hook(keep_tokens).remove)
        if with_grad:  # the input as a leaf: a graph exists even if the user froze every parameter
            stack.enter_context(torch.enable_grad())
            pixel_values = pixel_values.requires_grad_(True)
        else:
            stack.enter_context(torch.no_grad())
        logits = recipe.scores(model, pixel_values, **spec.forward_kwargs)
    missing = [type(m).__name__ for m in modules if id(m) not in probs]
    if missing:
        raise RecipeError(f"attention module(s) {missing} of recipe {recipe.name!r} did not run in the forward pass")
    pooled = probs.pop(id(pool)).detach() if pool is not None else None
    return logits, [probs[id(m)] for m in modules if m is not pool], [tokens[id(m)] for m in block_modules], pooled


def _rows(a: torch.Tensor, spec: Attention, prefix: int, pool: torch.Tensor | None = None) -> torch.Tensor:
    """The readout rows of ``a`` (``...×B×N×K``), averaged: ``...×B×K``. With an attention-pooling
    head, its probe query's attention ``pool`` (``B×H×1×N``, mean over heads) weights the rows."""
    if pool is not None:
        weights = pool.mean(1)[:, 0].to(a.dtype)  # B×N
        return torch.einsum("bn,...bnk->...bk", weights, a)
    if spec.readout is None:
        return a[..., prefix:, :].mean(-2)
    return a[..., list(spec.readout), :].mean(-2)


def _to_maps(relevance: torch.Tensor, prefix: int, input_hw: tuple[int, int]) -> np.ndarray:
    """``...×K`` key relevances → ``...×H×W`` maps on the model input, each scaled to [0, 1]."""
    keys = relevance[..., prefix:].double()  # min-max scaling magnifies rounding of near-uniform maps
    grid = infer_grid(keys.shape[-1], input_hw, max_prefix=0)[0]
    lead = keys.shape[:-1]
    maps = keys.reshape(-1, 1, *grid)
    maps = nn.functional.interpolate(maps, size=input_hw, mode="bilinear", align_corners=False)[:, 0]
    lo = maps.flatten(1).min(-1).values[:, None, None]
    hi = maps.flatten(1).max(-1).values[:, None, None]
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    return maps.reshape(*lead, *input_hw).float().detach().cpu().numpy()


def _square(attentions: list[torch.Tensor], recipe: Recipe, method: str) -> None:
    if not recipe.attention.spans_model:
        raise MethodNotApplicableError(
            f"{method} multiplies the attention maps of every block, which needs one token sequence from the patch "
            f"embedding to the head; recipe {recipe.name!r} has attention only in part of the model (or spatially "
            "reduced keys). Use method='attention' or 'legrad' instead")
    shapes = {tuple(a.shape[-2:]) for a in attentions}
    if len(shapes) != 1 or any(n != k for n, k in shapes):
        raise MethodNotApplicableError(
            f"{method} needs square attention maps of one size in every block; recipe {recipe.name!r} gives "
            f"{sorted(shapes)} (queries × keys). Use method='attention' or 'legrad' instead")


def _repeat(maps: np.ndarray, targets: list[list[int]]) -> np.ndarray:
    """Class-agnostic ``B×H×W`` maps, once per target: ``B×T×H×W``."""
    return np.repeat(maps[:, None], len(targets[0]), axis=1)


def run_attention(batch: Batch) -> Result:
    logits, attentions, _, pool = capture_attention(batch, with_grad=False)
    spec, prefix = batch.recipe.attention, batch.recipe.attention.prefix(batch.model)
    rows = pool[:, :, 0] if pool is not None else _rows(attentions[-1], spec, prefix)  # B×heads×K; a probe's own
    heads = _to_maps(rows, prefix, batch.input_hw)
    mean = _to_maps(rows.mean(1), prefix, batch.input_hw)
    targets = batch.choose(logits)
    return Result(logits, targets, _repeat(mean, targets), list(batch.recipe.attention.modules(batch.model))[-1:],
                  heads=heads)


def rollout_matrix(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
                   residual: bool = True) -> torch.Tensor:
    """Abnar & Zuidema's attention rollout ``B×N×N`` of per-block attentions ``B×H×N×N``."""
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[head_fusion]
    result = None
    for a in attentions:
        fused = fuse(a.double())  # products of many maps: float64 keeps the small differences
        n = fused.shape[-1]
        if discard_ratio > 0:  # zero the weakest entries of each image's matrix (never readout → itself)
            flat = fused.flatten(1).clone()
            k = int(flat.shape[1] * discard_ratio)
            lowest = flat.topk(k, dim=1, largest=False).indices
            keep0 = flat[:, 0].clone()
            flat.scatter_(1, lowest, 0.0)
            flat[:, 0] = keep0
            fused = flat.view_as(fused)
        eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
        fused = 0.5 * fused + 0.5 * eye if residual else fused
        fused = fused / fused.sum(-1, keepdim=True).clamp_min(1e-12)
        result = fused if result is None else fused @ result
    return result


def run_rollout(batch: Batch) -> Result:
    options = batch.options
    if options["head_fusion"] not in ("mean", "max", "min"):
        raise RecipeError(f"head_fusion must be 'mean', 'max' or 'min', got {options['head_fusion']!r}")
    if not 0 <= float(options["discard_ratio"]) < 1:
        raise RecipeError(f"discard_ratio must be in [0, 1), got {options['discard_ratio']!r}")
    logits, attentions, _, pool = capture_attention(batch, with_grad=False)
    _square(attentions, batch.recipe, "rollout")
    spec, prefix = batch.recipe.attention, batch.recipe.attention.prefix(batch.model)
    joint = rollout_matrix(attentions, options["head_fusion"], float(options["discard_ratio"]), bool(options["residual"]))
    targets = batch.choose(logits)
    maps = _to_maps(_rows(joint, spec, prefix, pool), prefix, batch.input_hw)
    return Result(logits, targets, _repeat(maps, targets), list(spec.modules(batch.model)))


def run_gradient_rollout(batch: Batch) -> Result:
    logits, attentions, _, pool = capture_attention(batch, with_grad=True)
    _square(attentions, batch.recipe, "gradient-rollout")
    spec, prefix = batch.recipe.attention, batch.recipe.attention.prefix(batch.model)
    targets = batch.choose(logits.detach())
    grads = target_grads(target_scores(logits, targets), attentions)  # each T×B×H×N×N
    B, T, N = len(targets), len(targets[0]), attentions[0].shape[-1]
    relevance = torch.eye(N, device=logits.device, dtype=torch.float64).expand(T, B, N, N)
    for a, g in zip(attentions, grads):
        cam = (g * a.detach()[None]).clamp_min(0).mean(2).double()  # T×B×N×N
        relevance = relevance + cam @ relevance
    maps = _to_maps(_rows(relevance, spec, prefix, pool), prefix, batch.input_hw)  # T×B×H×W
    return Result(logits.detach(), targets, maps.transpose(1, 0, 2, 3), list(spec.modules(batch.model)))


def run_legrad(batch: Batch) -> Result:
    spec = batch.recipe.attention
    logits, attentions, tokens, _ = capture_attention(batch, with_grad=True, blocks=True)
    prefix, score = spec.prefix(batch.model), spec.score(batch.model)
    targets = batch.choose(logits.detach())
    layers = int(batch.options["layers"]) if batch.options["layers"] else len(attentions)
    if not 1 <= layers <= len(attentions):
        raise RecipeError(f"layers must be between 1 and {len(attentions)} (the model's attention blocks), got {layers}")
    total = None
    for a, z in list(zip(attentions, tokens))[-layers:]:
        (grad,) = target_grads(target_scores(score(z), targets), [a])  # T×B×H×Nq×Nk
        relevance = grad.clamp_min(0).mean((2, 3))  # T×B×Nk: mean over heads and queries
        total = relevance if total is None else total + relevance
    maps = _to_maps(total, prefix, batch.input_hw)
    return Result(logits.detach(), targets, maps.transpose(1, 0, 2, 3), list(spec.modules(batch.model))[-layers:])


def _legrad_check(model: nn.Module, recipe: Recipe) -> str | None:
    spec = recipe.attention
    if spec.blocks is None or (spec.score is None and spec.embed is None):
        return (f"legrad needs the recipe's Attention.blocks and Attention.score (the model's own head on any block's "
                f"tokens; Attention.embed for embedding models); recipe {recipe.name!r} declares none. Use "
                "gradient-rollout or attention")
    return None


def _rollout_check(model: nn.Module, recipe: Recipe) -> str | None:
    if not recipe.attention.spans_model:
        return (f"rollout multiplies every block's attention, but recipe {recipe.name!r} has global attention only in "
                "part of the model (or spatially reduced keys); use attention or legrad")
    return None


METHODS = (
    Method(name="attention", run=run_attention, needs=("attention",), class_specific=False, eager_attention=True,
           description="Last block's attention of the readout (CLS) token, mean over heads, and one map per head",
           reference="Caron et al. 2021 (DINO)"),
    Method(name="rollout", run=run_rollout, needs=("attention",), check=_rollout_check, class_specific=False,
           eager_attention=True, options={"head_fusion": "mean", "discard_ratio": 0.0, "residual": True},
           description="Attention rollout: attention maps multiplied through the blocks, residual identity added",
           reference="Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"),
    Method(name="gradient-rollout", run=run_gradient_rollout, needs=("attention",), check=_rollout_check,
           eager_attention=True,
           description="Gradient-weighted rollout: R += mean_heads((∇A ⊙ A)⁺) R through the blocks, readout row",
           reference="Chefer et al. ICCV 2021, 'Generic Attention-model Explainability'"),
    Method(name="legrad", run=run_legrad, needs=("attention",), check=_legrad_check, eager_attention=True,
           options={"layers": None},
           description="LeGrad: per block, positive gradient of that block's class score w.r.t. its attention, summed",
           reference="Bousselham et al. 2024, 'LeGrad'"),
)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    for method in METHODS:
        register(method)
