"""The recipe: everything xai_recipes must know about one model family.

A recipe names the layer(s) whose activations explain the prediction, turns those activations
into ``B×C×h×w`` feature maps, and turns the model's output into a logits tensor. Recipes are
plain data; the engine does the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from .errors import RecipeError

#: ``reshape(activations, model, (input_height, input_width)) -> B×C×h×w``
Reshape = Callable[[torch.Tensor, nn.Module, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class Attention:
    """Where a transformer family's attention probabilities are, for the attention methods.

    Attributes:
        modules: ``model -> [module, ...]``, one per block in forward order, each giving the
            attention probabilities ``B×heads×queries×keys`` as its output (``item=None``) or
            as item ``item`` of the tuple it returns (transformers' attention modules return
            ``(output, weights)``: ``item=1``). The engine makes the model compute them for the
            call (eager attention instead of SDPA) and puts everything back afterwards.
        prefix: ``model -> n``: tokens before the patch grid (CLS, distillation, registers).
        readout: the query rows the classifier reads: ``(0,)`` for a CLS token, ``(0, 1)`` for
            DeiT's CLS + distillation tokens; ``None`` when it mean-pools the patch tokens.
        blocks: ``model -> [module, ...]``, the blocks whose output tokens ``score`` reads, one
            per attention module (LeGrad's per-layer class scores); ``None``: no LeGrad.
        score: ``model -> (tokens B×N×C -> logits B×labels)``: the model's own final norm,
            pooling and classifier applied to any block's output tokens.
        spans_model: whether ``modules`` carry one token sequence from the patch embedding to
            the head, so that products of attention maps trace tokens back to patches
            (rollout, gradient rollout). ``False`` for a last stage over other stages (CvT) or
            spatially reduced keys (SegFormer): only ``attention`` and ``legrad`` apply there.
        forward_kwargs: extra model arguments for the attention methods' forward pass, e.g.
            ``output_attentions=True`` for models that return probabilities only when asked.
        embed: ``model -> (tokens B×N×C -> B×D)``: for models whose output is an image
            embedding (:attr:`Recipe.embedding`), the model's own final norm, pooling and
            projection on any block's tokens; tasks turn it into LeGrad's per-block score (the
            similarity to a prompt's or a reference image's embedding).
        pool: ``model -> module`` of an attention-pooling head (SigLIP's probe query) whose
            output item ``item`` is its attention over the last block's tokens ``B×(heads)×1×N``:
            the readout row of the attention methods, and what LeGrad differentiates per block.
    """

    modules: Callable[[nn.Module], Sequence[nn.Module]]
    item: int | None = 1
    prefix: Callable[[nn.Module], int] = lambda m: 1
    readout: tuple[int, ...] | None = (0,)
    blocks: Callable[[nn.Module], Sequence[nn.Module]] | None = None
    score: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] | None = None
    spans_model: bool = True
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    embed: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] | None = None
    pool: Callable[[nn.Module], nn.Module] | None = None


@dataclass(frozen=True)
class Queries:
    """Where an encoder-decoder detector's (DETR's) attention probabilities are, for the query methods.

    The encoder attends among the ``N = h·w`` image tokens, the decoder among its ``Q`` object
    queries and from the queries to the image tokens; each detection is one query.

    Attributes:
        encoder: ``model -> [module, ...]``: the encoder's self-attention, one per layer in forward
            order, each giving ``B×heads×N×N`` probabilities as item ``item`` of its output.
        decoder: ``model -> [module, ...]``: the decoder's self-attention among the queries
            (``B×heads×Q×Q``), one per layer.
        cross: ``model -> [module, ...]``: the decoder's cross-attention from the queries to the
            image tokens (``B×heads×Q×N``), one per layer, in the order of ``decoder``.
        grid: ``model -> module`` whose ``B×C×h×w`` output the encoder flattens, row by row, into
            its ``N = h·w`` tokens: the grid the maps are read on, at any input size.
        item: the item of each module's output tuple holding the probabilities (transformers'
            attention modules return ``(output, weights)``: ``1``). The engine makes the model
            compute them for the call (eager attention instead of SDPA) and restores it afterwards.
        forward_kwargs: extra model arguments for the forward pass. Attention modules whose
            ``forward`` takes ``output_attentions`` are asked for their probabilities directly;
            a model-level ``output_attentions=True`` is best avoided: transformers 5 answers it by
            installing recording hooks on the user's model for good.
    """

    encoder: Callable[[nn.Module], Sequence[nn.Module]]
    decoder: Callable[[nn.Module], Sequence[nn.Module]]
    cross: Callable[[nn.Module], Sequence[nn.Module]]
    grid: Callable[[nn.Module], nn.Module]
    item: int = 1
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)


def output_logits(output: Any) -> torch.Tensor:
    """The default tensor-output wrapper: ``ModelOutput.logits`` (or a plain tensor)."""
    return output if isinstance(output, torch.Tensor) else output.logits


@dataclass(frozen=True)
class Recipe:
    """How to explain one family of image classifiers.

    Attributes:
        name: unique recipe name, e.g. ``"vit"``.
        model_types: ``config.model_type`` values this recipe serves.
        target_layers: ``model -> [module, ...]`` whose outputs CAM methods read; ``None`` for the
            generic recipe of a model with no spatial layer (only methods needing no recipe field apply).
        reshape: activations (tokens ``B×N×C`` or maps) → ``B×C×h×w``; ``None`` for CNN maps.
            It receives the model and the actual input size, so the grid is never hard-coded.
        logits: tensor-output wrapper, ``model output -> B×num_labels`` logits.
        head: ``model -> callable`` mapping pooled features ``N×C`` to logits, including any
            norm the model applies before its classifier (for Deep Feature Factorization).
        feature_layer: ``model -> module`` whose output the model pools into ``head``, when that
            is not the (last) target layer; reshaped with ``reshape`` like the target layers.
        pooling: how the model pools ``feature_layer``'s output before ``head``:
            ``"mean"`` over positions or the ``"cls"`` token (first token).
        forward_kwargs: extra keyword arguments for ``model(pixel_values=..., **kwargs)``,
            e.g. ``interpolate_pos_encoding=True`` so ViTs accept any input size.
        matches: optional ``model -> bool`` refining ``model_types`` (e.g. by architecture).
        image: the processor's output → the image tensor ``B×C×H×W`` it encodes, for models
            whose processor hands them something else (SigLIP 2's patches); default
            ``output["pixel_values"]``. Geometry, masking and batching work on that image.
        inputs: ``(model, image tensor) -> model keyword arguments``; default
            ``{"pixel_values": image, **forward_kwargs}``.
        attention: where the attention probabilities are (:class:`Attention`), for the
            attention methods; ``None`` for models without attention.
        queries: where an encoder-decoder detector's attention is (:class:`Queries`), for the
            query methods (``cross-attention``, ``bimodal-rollout``); ``None`` for other models.
        stages: ``model -> [module, ...]``: for hierarchical models, the output of each stage,
            shallow to deep, the last being the target layer; ``reshape`` must take each one's
            activations. The CAM methods then read the deepest stage whose grid is at least 7 on
            its short side at the actual input size (:mod:`xai_recipes.layers`): the last stage
            at 224 px, the one before it at 128 px. ``None``: always ``target_layers``.
        default_method: the method ``explain`` uses when none is asked for: the one that
            localises best on this family, as measured (see the gallery's quality tables).
        unsupported: method name → why that method cannot explain this family and what to use
            instead (e.g. Swin's window attention has no global readout).
        call: ``(model, keyword arguments) -> output``: how the model runs on :meth:`model_inputs`;
            default ``model(**kwargs)``. Dual encoders run their image tower alone
            (``model.get_image_features(**kwargs)``): the text side is the task's.
        embedding: ``model output -> B×D`` pooled image embedding, for models explained through
            an embedding (zero-shot prompts, image similarity) rather than class logits;
            ``None``: the model is a classifier (``logits``).
        description: one line for listings and the gallery.
    """

    name: str
    model_types: tuple[str, ...]
    target_layers: Callable[[nn.Module], Sequence[nn.Module]] | None
    reshape: Reshape | None = None
    logits: Callable[[Any], torch.Tensor] = output_logits
    head: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] | None = None
    feature_layer: Callable[[nn.Module], nn.Module] | None = None
    pooling: Literal["mean", "cls"] = "mean"
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    matches: Callable[[nn.Module], bool] | None = None
    image: Callable[[Mapping[str, Any]], torch.Tensor] | None = None
    inputs: Callable[[nn.Module, torch.Tensor], dict[str, Any]] | None = None
    attention: Attention | None = None
    queries: Queries | None = None
    stages: Callable[[nn.Module], Sequence[nn.Module]] | None = None
    default_method: str = "gradcam"
    unsupported: Mapping[str, str] = field(default_factory=dict)
    call: Callable[[nn.Module, Mapping[str, Any]], Any] | None = None
    embedding: Callable[[Any], torch.Tensor] | None = None
    description: str = ""
    plugin: str = ""  # set by the registry: which plugin registered it

    def features(self, model: nn.Module) -> nn.Module:
        """The module whose output is pooled into :attr:`head`."""
        return self.feature_layer(model) if self.feature_layer else list(self.target_layers(model))[-1]

    def image_tensor(self, processed: Mapping[str, Any]) -> torch.Tensor:
        """The ``B×C×H×W`` image a processor's output encodes."""
        return self.image(processed) if self.image else processed["pixel_values"]

    def model_inputs(self, model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments that run ``model`` on the image tensor ``pixel_values``."""
        if self.inputs:
            return self.inputs(model, pixel_values)
        return {"pixel_values": pixel_values, **self.forward_kwargs}

    def output(self, model: nn.Module, pixel_values: torch.Tensor, **extra: Any) -> Any:
        """The model's raw output on the image tensor ``pixel_values`` (``extra``: more model arguments)."""
        kwargs = {**self.model_inputs(model, pixel_values), **extra}
        return self.call(model, kwargs) if self.call else model(**kwargs)

    def scores(self, model: nn.Module, pixel_values: torch.Tensor, **extra: Any) -> torch.Tensor:
        """``B×K`` scores the methods explain: the logits (a task binds them to its own scores)."""
        return self.logits(self.output(model, pixel_values, **extra))

    def serves(self, model: nn.Module) -> bool:
        """Whether this recipe applies to ``model``: its ``config.model_type`` is one of
        ``model_types`` (and ``matches`` accepts it); with no ``model_types``, ``matches`` alone
        decides (models without a transformers config, e.g. open_clip's)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if not self.model_types:
            return self.matches is not None and bool(self.matches(model))
        if model_type not in self.model_types:
            return False
        return self.matches is None or bool(self.matches(model))


def conv_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - kernel) // stride + 1


def halvings(size: int, times: int) -> int:
    """Length after ``times`` stride-2 merges that pad odd lengths (Swin's patch merging)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def infer_grid(n_tokens: int, input_hw: tuple[int, int], max_prefix: int = 16) -> tuple[tuple[int, int], int]:
    """``((h, w), prefix)`` for ``n_tokens`` = prefix + h·w patch tokens of an input of ``input_hw``.

    The grid must follow the input by one stride ``s`` (``h`` = ⌊H/s⌋ or ⌈H/s⌉, same for ``w``);
    the fewest prefix (CLS, distillation, register) tokens that allow such a grid win.
    Raises :class:`RecipeError` when none does.
    """
    H, W = input_hw
    for prefix in range(min(max_prefix, n_tokens - 1) + 1):
        n = n_tokens - prefix
        for s in range(1, min(H, W) + 1):
            for h in {H // s, -(-H // s)}:
                for w in {W // s, -(-W // s)}:
                    if h * w == n:
                        return (h, w), prefix
    raise RecipeError(f"{n_tokens} tokens fit no patch grid of a {H}×{W} input (with ≤ {max_prefix} prefix tokens)")


def stage_grid(n_tokens: int, grids: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The grid among ``grids`` (a hierarchical model's stages at this input) that holds ``n_tokens``
    tokens; raises :class:`RecipeError` when none does."""
    for grid in grids:
        if grid[0] * grid[1] == n_tokens:
            return grid
    raise RecipeError(f"{n_tokens} tokens fit none of the stage grids {list(grids)}; the recipe's grids do not fit "
                      "this model or input size")


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int], prefix: int = 0) -> torch.Tensor:
    """``B×N×C`` tokens → ``B×C×h×w``, dropping ``prefix`` leading (CLS/register) tokens.

    Raises :class:`RecipeError` when ``N - prefix`` is not ``h·w``: a wrong grid would
    otherwise scramble the heatmap silently.
    """
    h, w = grid
    if tokens.dim() != 3 or tokens.shape[1] - prefix != h * w:
        raise RecipeError(
            f"expected tokens B×({prefix}+{h}·{w})×C for a {h}×{w} grid, got {tuple(tokens.shape)}; "
            "the recipe's grid or prefix-token count does not fit this model/input size"
        )
    spatial = tokens[:, prefix:, :]
    return spatial.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)
