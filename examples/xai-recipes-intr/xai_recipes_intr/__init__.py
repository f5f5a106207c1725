"""xai-recipes-intr: an example third-party plugin that brings a model family *and* its own method.

* :mod:`xai_recipes_intr.modeling_intr`: a tiny INTR classifier (one DETR decoder query per class,
  logits from one shared presence vector), registered with transformers' Auto classes on import.
* :data:`INTR`: the recipe (``model_type == "intr"``): GradCAM on the backbone's last stage, the
  decoder's cross-attention for the attention methods, and ``default_method="intr-attention"``.
* :data:`INTR_ATTENTION`: the method ``"intr-attention"``: for each target class ``c``, the
  cross-attention of class ``c``'s query over the image in the last decoder layer, mean over heads,
  with one map per head of the first target in ``Explanation.heads``. One forward pass, no gradients.
* :data:`TRAINED`: a tiny INTR trained on the synthetic shapes task (``train_intr.py``).

Both reach xai-recipes through the ``xai_recipes`` entry-point group (see pyproject.toml).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from xai_recipes import Attention, Batch, Method, Recipe, RecipeError, Result, hookimpl

from .modeling_intr import IntrConfig, IntrForImageClassification, init_for_training_, tiny_config

__all__ = ["INTR", "INTR_ATTENTION", "TRAINED", "IntrConfig", "IntrForImageClassification", "cross_attention_maps",
           "init_for_training_", "tiny_config"]

#: The shipped checkpoint: ``explain(TRAINED, image)``.
TRAINED = Path(__file__).resolve().parent / "trained"


def _cross_attentions(model: nn.Module) -> list[nn.Module]:
    return [layer.encoder_attn for layer in model.model.decoder.layers]


def _score(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Any decoder layer's query tokens B×classes×C → logits, as the model scores its last layer's."""
    return lambda tokens: model.presence(model.model.decoder.layernorm(tokens)).squeeze(-1)


INTR = Recipe(
    name="intr",
    model_types=("intr",),
    # The 1×1 projection of the backbone's last feature map to d_model: B×d_model×h×w at stride 8, the
    # decoder's keys and values. (Not the backbone's last stage: the backbone returns its stage outputs
    # through transformers' output recording, which a hook's replacement output does not reach, so
    # GradCAM there gets no gradient.)
    target_layers=lambda m: [m.model.input_projection],
    attention=Attention(
        modules=_cross_attentions,  # DetrCrossAttention returns (output, B×heads×classes×(h·w)) in eager mode
        item=1,
        prefix=lambda m: 0,  # keys are the feature map's positions, nothing before them
        readout=None,  # built-in "attention": the mean over all class queries (class-agnostic)
        blocks=lambda m: list(m.model.decoder.layers),
        score=_score,  # LeGrad: each decoder layer's queries through the final norm and presence vector
        spans_model=False,  # queries × image keys, not one token sequence: no rollout
    ),
    default_method="intr-attention",
    description="INTR (DETR decoder with one query per class, shared presence vector); "
                "explained by each class query's cross-attention",
)


def _to_maps(weights: torch.Tensor, grid: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """``...×(h·w)`` attention over the feature map → ``...×H×W`` on the model input, each scaled to [0, 1]."""
    lead = weights.shape[:-1]
    maps = weights.float().reshape(-1, 1, *grid)
    maps = nn.functional.interpolate(maps, size=input_hw, mode="bilinear", align_corners=False)[:, 0]
    lo = maps.flatten(1).min(-1).values[:, None, None]
    hi = maps.flatten(1).max(-1).values[:, None, None]
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    return maps.reshape(*lead, *input_hw).cpu().numpy()


def cross_attention_maps(attention: torch.Tensor, targets: list[list[int]], grid: tuple[int, int],
                         input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """From one decoder layer's cross-attention ``B×heads×classes×(h·w)``: the targets' maps
    ``B×T×H×W`` (mean over heads) and the first target's per-head maps ``B×heads×H×W``."""
    index = torch.tensor(targets, device=attention.device)  # B×T
    rows = attention.transpose(1, 2)[torch.arange(len(targets), device=attention.device)[:, None], index]  # B×T×heads×K
    return _to_maps(rows.mean(2), grid, input_hw), _to_maps(rows[:, 0], grid, input_hw)


def run_intr_attention(batch: Batch) -> Result:
    model, recipe = batch.model, batch.recipe
    modules = list(recipe.attention.modules(model))
    layer = int(batch.options["layer"])
    if not -len(modules) <= layer < len(modules):
        raise RecipeError(f"layer must index one of the {len(modules)} decoder layers (-1: the last), got {layer}")
    attention_module, feature_module = modules[layer], list(recipe.target_layers(model))[-1]
    seen: dict[str, object] = {}
    caller = threading.get_ident()

    def keep_attention(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() == caller:  # another thread's call on the same model is not ours
            seen["attention"] = output[recipe.attention.item] if isinstance(output, tuple) else None

    def keep_grid(module: nn.Module, args: object, output: object) -> None:
        if threading.get_ident() == caller:
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            seen["grid"] = tuple(tensor.shape[-2:])

    with ExitStack() as stack, torch.no_grad():
        stack.callback(attention_module.register_forward_hook(keep_attention).remove)
        stack.callback(feature_module.register_forward_hook(keep_grid).remove)
        logits = recipe.logits(model(**recipe.model_inputs(model, batch.pixel_values)))
    attention = seen.get("attention")
    if not isinstance(attention, torch.Tensor) or attention.dim() != 4:
        raise RecipeError(f"{type(attention_module).__name__} gave no B×heads×classes×positions attention "
                          f"probabilities (got {type(attention).__name__}): the model did not run eager attention")
    grid = seen["grid"]
    if attention.shape[2] != logits.shape[1] or attention.shape[3] != grid[0] * grid[1]:
        raise RecipeError(f"cross-attention {tuple(attention.shape)} does not fit {logits.shape[1]} class queries over "
                          f"a {grid[0]}×{grid[1]} feature map")
    targets = batch.choose(logits)
    maps, heads = cross_attention_maps(attention, targets, grid, batch.input_hw)
    return Result(logits, targets, maps, [attention_module], heads=heads)


def _one_query_per_class(model: nn.Module, recipe: Recipe) -> str | None:
    config = getattr(model, "config", None)
    queries, labels = getattr(config, "num_queries", None), getattr(config, "num_labels", None)
    if queries != labels:
        return (f"intr-attention reads one decoder query per class (INTR), but this model has {queries} queries for "
                f"{labels} classes; use attention or legrad")
    return None


INTR_ATTENTION = Method(
    name="intr-attention",
    run=run_intr_attention,
    needs=("attention", "target_layers"),  # the cross-attention modules, and the feature map giving their grid
    check=_one_query_per_class,
    class_specific=True,
    eager_attention=True,  # DETR's attention computes probabilities only in eager mode
    options={"layer": -1},  # which decoder layer's cross-attention (-1: the last, the one the logits read)
    description="INTR: each target class query's cross-attention over the image (last decoder layer), mean over "
                "heads, and one map per head for the first target",
    reference="Paul et al. ICLR 2024, 'A Simple Interpretable Transformer for Fine-Grained Image Classification "
              "and Analysis'",
)


@hookimpl
def register_recipes(register: Callable[[Recipe], None]) -> None:
    register(INTR)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(INTR_ATTENTION)
