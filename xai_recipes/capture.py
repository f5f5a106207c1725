"""One forward pass with chosen layers' outputs kept, and gradients started there.

The machinery every method shares: the tensor-output wrapper (``pixel_values -> logits``
through the recipe), a forward pass whose hooks record target layers' outputs (read at the
first item of the tuples transformers' blocks return) and are always removed, and the batched
gradients of T target logits. Forward hooks act only on the calling thread, so several threads
may explain with one model at once.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .errors import RecipeError
from .recipe import Recipe


class LogitsModel(nn.Module):
    """The tensor-output wrapper: ``pixel_values -> logits`` through the recipe."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.recipe.scores(self.model, pixel_values)


@dataclass
class Capture:
    """Forward pass with the target layers' outputs kept (and gradients started there)."""

    wrapped: LogitsModel
    layers: list[nn.Module]
    logits: torch.Tensor
    activations: list[torch.Tensor]
    tuples: list[bool]  # whether each layer returned a tuple (read at its first item)


def first_tensor(output: object) -> torch.Tensor | None:
    """A layer's output tensor: the output itself, or the first item of the tuple that
    transformers' blocks return (hidden states, then attentions...)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def with_first(output: object, tensor: torch.Tensor) -> object:
    """``output`` with its tensor (see :func:`first_tensor`) replaced by ``tensor``."""
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def forward_with_capture(wrapped: LogitsModel, layers: list[nn.Module], pixel_values: torch.Tensor) -> Capture:
    """Run the model once; hooks record each target layer's output and are always removed."""
    seen: dict[int, torch.Tensor] = {}
    tuples: dict[int, bool] = {}
    caller = threading.get_ident()

    def hook(module: nn.Module, args: object, output: object) -> object:
        if threading.get_ident() != caller:  # another thread's explain() on the same model: not ours
            return None
        tensor = first_tensor(output)
        if tensor is None:
            raise RecipeError(
                f"target layer {type(module).__name__} returns {type(output).__name__}, not a tensor; "
                "choose a layer whose output is a tensor or a tuple starting with one (see the recipe guide)"
            )
        if id(module) in seen:
            raise RecipeError(f"target layer {type(module).__name__} runs more than once per forward pass")
        torch.set_grad_enabled(True)  # the graph starts here: no backward through the backbone
        tuples[id(module)] = tensor is not output
        if tensor.requires_grad:
            seen[id(module)] = tensor
            return None
        leaf = tensor.detach().requires_grad_(True)
        seen[id(module)] = leaf
        return with_first(output, leaf.clone())  # downstream in-place ops must not touch the leaf

    with ExitStack() as stack:
        for layer in layers:
            stack.callback(layer.register_forward_hook(hook).remove)
        stack.enter_context(torch.no_grad())
        logits = wrapped(pixel_values)
    missing = [type(layer).__name__ for layer in layers if id(layer) not in seen]
    if missing:
        raise RecipeError(f"target layer(s) {missing} did not run in the forward pass; the recipe does not fit this model")
    return Capture(wrapped, layers, logits, [seen[id(layer)] for layer in layers], [tuples[id(layer)] for layer in layers])


def target_scores(logits: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """``T`` sums over the batch of each image's t-th target logit: images are independent, so the
    gradient of the t-th sum with respect to an image's tensors is that image's own."""
    index = torch.tensor(targets, device=logits.device)
    return logits.gather(1, index).sum(0)


def target_grads(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of each of the T outputs w.r.t. ``inputs`` → each ``T×input.shape``."""
    eye = torch.eye(output.numel(), dtype=output.dtype, device=output.device)
    try:
        return list(torch.autograd.grad(output, inputs, grad_outputs=eye, retain_graph=True, is_grads_batched=True))
    except RuntimeError:  # some ops have no batching rule: one backward per target instead
        per_target = [torch.autograd.grad(output[t], inputs, retain_graph=True) for t in range(output.numel())]
        return [torch.stack([g[i] for g in per_target]) for i in range(len(inputs))]


def as_maps(recipe: Recipe, model: nn.Module, tensor: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """A layer's activations as ``B×C×h×w`` maps, through the recipe's reshape."""
    maps = recipe.reshape(tensor, model, input_hw) if recipe.reshape else tensor
    if maps.dim() != 4:
        raise RecipeError(f"recipe {recipe.name!r} gives activations of shape {tuple(maps.shape)}, not B×C×h×w")
    return maps


def module_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    """Dotted names of ``layers`` inside ``model``."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]
