"""Exact linear patch contributions: ``logit_c = Σ_p contribution_c(p) + intercept_c``.

For any model whose classifier is one linear layer on the mean (or sum) of a layer's patch
features — a patch-embedding GAM (DINO-GAM), but also ResNet's average-pool + fc (the original
CAM) — the contribution of patch ``p`` to class ``c`` is ``w_c·e_p / P`` (``w_c·e_p`` for sum
pooling). Nothing is approximated, and it is checked: the contributions plus the intercept
must give the model's own logits, or a :class:`RecipeError` says the head is not linear there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..capture import Capture, LogitsModel, as_maps, forward_with_capture
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Recipe


def patch_contributions(
    model: nn.Module, recipe: Recipe, capture: Capture, targets: list[list[int]], input_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B×T×h×w contributions, B×T intercepts)`` in logit units, from a forward pass that
    captured the recipe's feature layer (:meth:`Recipe.features`)."""
    head = recipe.head(model) if recipe.head else None
    if not isinstance(head, nn.Linear) or recipe.pooling == "cls":
        raise RecipeError(f"recipe {recipe.name!r}: patch contributions need a single linear head on pooled patch "
                          "features (a GAM, or a CNN with average pooling + fc); this model's head is "
                          f"{type(head).__name__} on {recipe.pooling} pooling. Use a CAM method instead")
    with torch.no_grad():
        maps = as_maps(recipe, model, capture.activations[0].detach(), input_hw)
        index = torch.tensor(targets, device=maps.device)
        weight = head.weight[index]  # B×T×C
        raw = torch.einsum("btc,bchw->bthw", weight.to(maps.dtype), maps).double()
        bias = (head.bias[index] if head.bias is not None else torch.zeros(index.shape)).double()
        logits = capture.logits.detach().gather(1, index).double()
        for scale in (1 / (maps.shape[-2] * maps.shape[-1]), 1.0):  # mean pooling, then sum pooling
            contributions = raw * scale
            if torch.allclose(contributions.sum((-2, -1)) + bias, logits, rtol=1e-4, atol=1e-4):
                return contributions.float(), bias.float()
    raise RecipeError(f"recipe {recipe.name!r}: the patch contributions plus intercepts do not give the model's "
                      "logits, so its head is not linear in the pooled features of the recipe's feature layer")


def signed_maps(contributions: torch.Tensor, input_hw: tuple[int, int]) -> list:
    """Per image ``T×H×W`` maps on the model input: each patch's contribution over its pixels,
    divided by the largest magnitude per target (so in [-1, 1], sign kept)."""
    peak = contributions.abs().amax((-2, -1), keepdim=True).clamp_min(1e-12)
    up = nn.functional.interpolate(contributions / peak, size=input_hw, mode="nearest")
    return list(up.cpu().numpy())


def run(batch: Batch) -> Result:
    """Capture the feature layer, choose targets, split each target logit into patch contributions."""
    model, recipe = batch.model, batch.recipe
    capture = forward_with_capture(LogitsModel(model, recipe), [recipe.features(model)], batch.pixel_values)
    targets = batch.choose(capture.logits.detach())
    raw, intercepts = patch_contributions(model, recipe, capture, targets, batch.input_hw)
    return Result(capture.logits.detach(), targets, signed_maps(raw, batch.input_hw), capture.layers,
                  contributions=raw.cpu().numpy(), intercepts=intercepts.tolist())


def _check(model: nn.Module, recipe: Recipe) -> str | None:
    head = recipe.head(model)
    if not isinstance(head, nn.Linear) or recipe.pooling == "cls":
        return (f"patch contributions need a single linear head on mean- or sum-pooled patch features (a GAM, or a CNN "
                f"with average pooling + fc); this model's head is {type(head).__name__} on {recipe.pooling} pooling. "
                "Use a CAM or attention method instead")
    return None


METHOD = Method(
    name="patch-contributions", run=run, needs=("head",), check=_check, signed=True,
    description="Exact linear patch contributions: logit = Σ patches + intercept (GAMs, average-pool + fc CNNs)",
    reference="Emb-GAM (Singh & Gao 2023); CAM (Zhou et al. 2016)",
)


@hookimpl
def register_methods(register):
    register(METHOD)
