"""Query methods: where an encoder-decoder detector (DETR) looks for one detection, from its own attention.

A detection is one object query ``q`` read as class ``c`` (the flat score index ``q·C' + c``, with
``C' = K / Q`` scores per query). Both methods run one forward pass with the recipe's
:class:`~xai_recipes.Queries` modules hooked (the engine switches the model to eager attention for
the call, since SDPA computes no probabilities) and read the ``N = h·w`` image tokens on the grid of
``Queries.grid``'s output:

* ``cross-attention`` — DETR's own visualisation (Carion et al. 2020): the decoder's cross-attention
  of query ``q`` over the image tokens, layer ``layer`` (default the last), mean over heads, and one
  map per head (``Explanation.heads``, for each image's first detection). Query-specific, not
  class-specific.
* ``bimodal-rollout`` — Chefer, Gur & Wolf, ICCV 2021, the encoder-decoder (DETR) case, as in their
  ``Generator.generate_ours(use_lrp=False)``: with ``Ā = mean_h((∇A ⊙ A)⁺)`` (``∇`` of the detection's
  class logit) and ``R_ii = I``, ``R_qq = I``, ``R_qi = 0``: every encoder layer ``R_ii += Ā R_ii``;
  every decoder layer ``R_qq += Ā R_qq``, ``R_qi += Ā R_qi`` (self-attention), then
  ``R_qi += R̄_qqᵀ Ā R̄_ii`` (cross-attention), where ``R̄ = rownorm(R − I) + I`` (eqs. 8–9). The map is
  row ``q`` of ``R_qi``. One difference from the reference code: a row of ``R − I`` that sums to 0
  (a query with no positive relevance yet) stays 0 here, where the reference divides by 0 and its
  NaN guard then drops that layer's whole cross-attention update. Such rows are common: DETR's first
  decoder layer sees all-zero query contents, so its values are all the value bias and each
  query's self-attention gradient has one sign per head; with one decoder layer, every query but
  the explained one has a zero row. One forward pass per batch, one backward per detection.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import ExitStack
from numbers import Integral
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..capture import target_scores
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Queries


def capture_queries(batch: Batch, with_grad: bool):
    """One forward pass recording the attention probabilities of the recipe's :class:`Queries`:
    ``(scores B×K, encoder [B×H×N×N], decoder [B×H×Q×Q], cross [B×H×Q×N], (h, w))``; with
    ``with_grad`` the graph is kept so gradients with respect to the probabilities can be taken.
    Modules whose ``forward`` takes ``output_attentions`` (Table Transformer's) get it for the call,
    not the model: transformers 5 answers a model-level ``output_attentions=True`` by installing
    recording hooks on the user's model for good."""
    model, recipe = batch.model, batch.recipe
    spec: Queries = recipe.queries
    groups = [list(spec.encoder(model)), list(spec.decoder(model)), list(spec.cross(model))]
    grid_module = spec.grid(model)
    probs: dict[int, torch.Tensor] = {}
    grid: list[tuple[int, int]] = []
    caller = threading.get_ident()

    def keep_probs(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() != caller:  # another thread's call on the same model
            return
        found = output[spec.item] if isinstance(output, (tuple, list)) and len(output) > spec.item else None
        if not isinstance(found, torch.Tensor) or found.dim() != 4:
            raise RecipeError(
                f"attention module {type(module).__name__} of recipe {recipe.name!r} gave no B×heads×queries×keys "
                f"probabilities as item {spec.item} (got {type(found).__name__}); the model may run fused attention "
                "the engine could not switch off, or Queries.item / forward_kwargs do not fit this model")
        probs[id(module)] = found

    def keep_grid(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() == caller and isinstance(output, torch.Tensor) and output.dim() == 4:
            grid.append((int(output.shape[-2]), int(output.shape[-1])))

    def ask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return (args, {**kwargs, "output_attentions": True}) if threading.get_ident() == caller else None

    pixel_values = batch.pixel_values.detach()
    with ExitStack() as stack:
        for module in {id(m): m for group in groups for m in group}.values():
            stack.callback(module.register_forward_hook(keep_probs).remove)
            if "output_attentions" in inspect.signature(module.forward).parameters:  # returns them only when asked
                stack.callback(module.register_forward_pre_hook(ask, with_kwargs=True).remove)
        stack.callback(grid_module.register_forward_hook(keep_grid).remove)
        if with_grad:  # the input as a leaf: a graph exists even if the user froze every parameter
            stack.enter_context(torch.enable_grad())
            pixel_values = pixel_values.requires_grad_(True)
        else:
            stack.enter_context(torch.no_grad())
        scores = recipe.scores(model, pixel_values, **spec.forward_kwargs)
    missing = [type(m).__name__ for group in groups for m in group if id(m) not in probs]
    if missing or len(grid) != 1 or not all(groups):
        raise RecipeError(f"recipe {recipe.name!r}: attention module(s) {missing or 'of some group'} or the grid "
                          f"module did not run once in the forward pass (grid seen {len(grid)} times); Queries does "
                          "not fit this model")
    encoder, decoder, cross = ([probs[id(m)] for m in group] for group in groups)
    (h, w), n, q = grid[0], encoder[0].shape[-1], decoder[0].shape[-1]
    if n != h * w:
        raise RecipeError(f"recipe {recipe.name!r}: the encoder attends over {n} tokens, but Queries.grid gives a "
                          f"{h}×{w} map; Queries.grid must be the map the encoder flattens into its tokens")
    want = {"encoder": (encoder, (n, n)), "decoder": (decoder, (q, q)), "cross": (cross, (q, n))}
    for name, (tensors, shape) in want.items():
        if any(tuple(a.shape[-2:]) != shape for a in tensors) or len(cross) != len(decoder):
            raise RecipeError(f"recipe {recipe.name!r}: the {name} attention is {[tuple(a.shape) for a in tensors]}, "
                              f"not ...×{shape} (one per decoder layer) for {q} queries and {n} image tokens; "
                              "Queries does not fit this model")
    if scores.dim() != 2 or scores.shape[1] % q:
        raise RecipeError(f"recipe {recipe.name!r} gives scores of shape {tuple(scores.shape)}, not "
                          f"B×(queries·classes) for {q} object queries; explain detectors with the object-detection "
                          "task")
    return scores, encoder, decoder, cross, (h, w)


def _query_of(targets: list[list[int]], scores: torch.Tensor, n_queries: int) -> list[list[int]]:
    """The object query of each target (flat index ``q·C' + c``)."""
    per_query = scores.shape[1] // n_queries
    return [[k // per_query for k in row] for row in targets]


def to_maps(tokens: torch.Tensor, grid: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """``...×N`` token relevances on the ``h×w`` grid → ``...×H×W`` maps on the model input, each in [0, 1]."""
    lead = tokens.shape[:-1]
    maps = tokens.detach().double().reshape(-1, 1, *grid)
    maps = nn.functional.interpolate(maps, size=input_hw, mode="bilinear", align_corners=False)[:, 0]
    lo = maps.flatten(1).min(-1).values[:, None, None]
    hi = maps.flatten(1).max(-1).values[:, None, None]
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    return maps.reshape(*lead, *input_hw).float().cpu().numpy()


def run_cross_attention(batch: Batch) -> Result:
    layer, modules = batch.options["layer"], list(batch.recipe.queries.cross(batch.model))
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not -len(modules) <= layer < len(modules):
        raise RecipeError(f"layer must be an integer decoder layer in {-len(modules)}..{len(modules) - 1} (-1: the "
                          f"last), got {layer!r}")
    scores, _, _, cross, grid = capture_queries(batch, with_grad=False)
    targets = batch.choose(scores)
    queries = _query_of(targets, scores, cross[0].shape[-2])
    attention = cross[int(layer)]  # B×heads×Q×N
    rows = torch.stack([attention[b][:, qs] for b, qs in enumerate(queries)])  # B×heads×T×N
    maps = to_maps(rows.mean(1), grid, batch.input_hw)
    heads = to_maps(rows[:, :, 0], grid, batch.input_hw)
    return Result(scores, targets, maps, [modules[int(layer)]], heads=heads)


def normalise(relevance: torch.Tensor) -> torch.Tensor:
    """Eqs. 8–9: ``rownorm(R − I) + I``; a row of ``R − I`` summing to 0 stays 0."""
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    hat = relevance - eye
    total = hat.sum(-1, keepdim=True)
    return torch.where(total != 0, hat / torch.where(total != 0, total, torch.ones_like(total)), 0.0) + eye


def bimodal_rows(encoder: list[torch.Tensor], decoder: list[torch.Tensor], cross: list[torch.Tensor],
                 query: list[int]) -> torch.Tensor:
    """Row ``query[b]`` of ``R_qi`` for each image ``b`` (``B×N``), from the head-averaged ``Ā`` of each layer
    (``B×n×m``). ``R̄_ii`` is the same in every decoder layer, so ``R_qi = P R̄_ii`` with ``P ← (I + Ā_qq) P +
    R̄_qqᵀ Ā_qi``; and ``p R̄_ii = (p D⁺)(R_ii − I) + p``, ``R_ii = (I + Ā_L)⋯(I + Ā_1)``, ``D`` the row sums of
    ``R_ii − I``: vector-matrix products, ``N²`` per encoder layer instead of ``N³``."""
    (b, n), q, like = encoder[0].shape[:2], decoder[0].shape[-1], encoder[0]
    r_qq = torch.eye(q, dtype=like.dtype, device=like.device).expand(b, q, q)
    p = torch.zeros(b, q, n, dtype=like.dtype, device=like.device)
    for a_self, a_cross in zip(decoder, cross):
        r_qq, p = r_qq + a_self @ r_qq, p + a_self @ p
        p = p + normalise(r_qq).transpose(-1, -2) @ a_cross
    row = p[torch.arange(b), torch.tensor(query)]  # B×N
    sums = torch.ones(b, n, 1, dtype=like.dtype, device=like.device)
    for a in encoder:  # R_ii 1
        sums = sums + a @ sums
    total = sums[..., 0] - 1
    u = torch.where(total != 0, row / torch.where(total != 0, total, torch.ones_like(total)), 0.0)  # p D⁺
    v = u[:, None]
    for a in reversed(encoder):  # u R_ii
        v = v + v @ a
    return v[:, 0] - u + row


def run_bimodal_rollout(batch: Batch) -> Result:
    scores, encoder, decoder, cross, grid = capture_queries(batch, with_grad=True)
    targets = batch.choose(scores.detach())
    queries = _query_of(targets, scores, decoder[0].shape[-1])
    per_target = target_scores(scores, targets)  # T sums over the batch: each image's t-th detection
    attentions = encoder + decoder + cross
    e, d, rows = len(encoder), len(decoder), []
    for t in range(per_target.numel()):  # one backward per detection keeps one set of gradients in memory
        grads = torch.autograd.grad(per_target[t], attentions, retain_graph=t + 1 < per_target.numel())
        cams = [(g * a.detach()).clamp_min(0).mean(1).double() for a, g in zip(attentions, grads)]  # B×n×m
        rows.append(bimodal_rows(cams[:e], cams[e:e + d], cams[e + d:], [qs[t] for qs in queries]))
    maps = to_maps(torch.stack(rows, 1), grid, batch.input_hw)  # B×T×H×W
    spec = batch.recipe.queries
    layers = [*spec.encoder(batch.model), *spec.decoder(batch.model), *spec.cross(batch.model)]
    return Result(scores.detach(), targets, maps, layers)


METHODS = (
    Method(name="cross-attention", run=run_cross_attention, needs=("queries",), class_specific=False,
           eager_attention=True, options={"layer": -1},
           description="A detection's object query: its decoder cross-attention over the image tokens, mean over "
                       "heads, and one map per head",
           reference="Carion et al. 2020, 'End-to-End Object Detection with Transformers' (DETR)"),
    Method(name="bimodal-rollout", run=run_bimodal_rollout, needs=("queries",), eager_attention=True,
           description="Gradient-weighted relevance through encoder self-, decoder self- and cross-attention: row q of "
                       "R_qi",
           reference="Chefer, Gur & Wolf ICCV 2021, 'Generic Attention-model Explainability for Interpreting Bi-Modal "
                     "and Encoder-Decoder Transformers'"),
)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    for method in METHODS:
        register(method)
