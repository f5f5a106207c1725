"""CAM methods from the grad-cam package, run on a recipe's layer with one forward pass.

Gradient methods: one forward pass, then the gradients of all T target logits with respect to
the target layer's activations (one batched backward where autograd allows it). Only the layers
*after* the target layer are differentiated: the forward runs without a graph until the target
layer's hook switches gradients on. The weights/CAM formulas are grad-cam's own
(``get_cam_image`` of its classes), so results equal grad-cam's for the same layer.

ScoreCAM needs one forward pass per channel: each masked input is run once and scored for all T
targets (grad-cam reruns them per target), with grad-cam's weights and CAM formula. AblationCAM
runs through grad-cam's own class.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .errors import RecipeError, UnknownMethodError
from .recipe import Recipe

#: Method name → grad-cam class. Names are matched ignoring case, "-", "_" and "+" → "p".
METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
SCORECAM_BATCH = 32  # masked inputs per forward pass
#: grad-cam's classes want a model, but their CAM formulas (get_cam_image) never touch it: this
#: parameter-holding stand-in saves walking the real model in BaseCAM.__init__ on every call.
_FORMULA_HOST = nn.Linear(1, 1)


def _key(name: str) -> str:
    return name.lower().replace("+", "p").replace("-", "").replace("_", "").replace(" ", "")


#: Every method ``explain`` runs: the CAM methods, Deep Feature Factorization, exact patch contributions.
ALL_METHODS: tuple[str, ...] = (*METHODS, "dff", "patch-contributions")
_BY_KEY = {_key(n): n for n in ALL_METHODS}


def method_name(method: str) -> str:
    """Canonical method name for ``method`` ("Grad-CAM++" → "gradcam++"), or UnknownMethodError."""
    found = _BY_KEY.get(_key(str(method)))
    if found is None:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}")
    return found


class LogitsModel(nn.Module):
    """The tensor-output wrapper: ``pixel_values -> logits`` through the recipe."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.recipe.logits(self.model(**self.recipe.model_inputs(self.model, pixel_values)))


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


def _grads(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of each of the T outputs w.r.t. ``inputs`` → each ``T×input.shape``."""
    eye = torch.eye(output.numel(), dtype=output.dtype, device=output.device)
    try:
        return list(torch.autograd.grad(output, inputs, grad_outputs=eye, retain_graph=True, is_grads_batched=True))
    except RuntimeError:  # some ops have no batching rule: one backward per target instead
        per_target = [torch.autograd.grad(output[t], inputs, retain_graph=True) for t in range(output.numel())]
        return [torch.stack([g[i] for g in per_target]) for i in range(len(inputs))]


def as_maps(recipe: Recipe, model: nn.Module, tensor: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    maps = recipe.reshape(tensor, model, input_hw) if recipe.reshape else tensor
    if maps.dim() != 4:
        raise RecipeError(f"recipe {recipe.name!r} gives activations of shape {tuple(maps.shape)}, not B×C×h×w")
    return maps


def _scorecam_weights(wrapped: nn.Module, image: torch.Tensor, maps: torch.Tensor, targets: list[int], batch: int) -> np.ndarray:
    """grad-cam's ScoreCAM weights (``T×C``) for one image, every masked input run once for all T
    targets (grad-cam runs all C masked inputs again for each target) and masks made per chunk."""
    with torch.inference_mode():
        up = nn.functional.interpolate(maps.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)[0]
        lo, hi = up.flatten(1).min(-1)[0], up.flatten(1).max(-1)[0]
        up = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        scores = torch.cat([wrapped(image * up[i : i + batch, None].to(image.dtype))[:, targets].float()
                            for i in range(0, len(up), batch)])
        return scores.T.softmax(-1).cpu().numpy()


def compute_cams(
    model: nn.Module,
    recipe: Recipe,
    pixel_values: torch.Tensor,
    targets: list[list[int]],
    method: str,
    capture: Capture,
) -> np.ndarray:
    """``B×T×h×w`` maps in [0, 1] on the model input, for T target classes per image of the batch."""
    cls = METHODS[method]
    wrapped, layers = capture.wrapped, capture.layers
    input_hw = tuple(pixel_values.shape[-2:])
    B, T = len(targets), len(targets[0])
    flat_targets = [t for per_image in targets for t in per_image]
    cam_targets = [ClassifierOutputTarget(t) for t in flat_targets]
    if method == "ablationcam":
        return np.stack([_ablation_cams(model, recipe, pixel_values[b : b + 1], targets[b], capture) for b in range(B)])

    cam = cls(model=_FORMULA_HOST, target_layers=[])  # grad-cam's formulas only: no hooks, no model.eval() walk
    if cam.uses_gradients:
        index = torch.tensor(targets, device=capture.logits.device)
        selected = capture.logits.gather(1, index).sum(0)  # T: images are independent, so one sum per target
        grads = [g.transpose(0, 1).flatten(0, 1) for g in _grads(selected, capture.activations)]  # (B·T)×...
    else:
        grads = [None] * len(layers)
    per_layer = []
    for layer, act, grad in zip(layers, capture.activations, grads):
        act_maps = as_maps(recipe, model, act.detach(), input_hw)
        if method == "scorecam":
            weights = np.concatenate([
                _scorecam_weights(wrapped, pixel_values[b : b + 1], act_maps[b : b + 1], targets[b], SCORECAM_BATCH)
                for b in range(B)
            ])
            cam.get_cam_weights = lambda *args, w=weights: w  # grad-cam's CAM formula with these weights
        act_np = act_maps.float().cpu().numpy().repeat(T, axis=0)
        grad_np = None if grad is None else as_maps(recipe, model, grad, input_hw).float().cpu().numpy()
        image = cam.get_cam_image(pixel_values, layer, cam_targets, act_np, grad_np, eigen_smooth=False)
        per_layer.append(scale_cam_image(np.maximum(image, 0), (input_hw[1], input_hw[0]))[:, None])
    maps = scale_cam_image(np.maximum(np.concatenate(per_layer, axis=1), 0).mean(axis=1))
    return maps.reshape(B, T, *maps.shape[1:])


def _ablation_cams(model: nn.Module, recipe: Recipe, image: torch.Tensor, targets: list[int], capture: Capture) -> np.ndarray:
    """AblationCAM through grad-cam's own class, on the image replicated once per target."""
    wrapped, layers = capture.wrapped, capture.layers
    if any(capture.tuples):
        raise RecipeError(f"ablationcam swaps the target layer for grad-cam's AblationLayer, which needs a layer that "
                          f"returns a tensor; {type(layers[capture.tuples.index(True)]).__name__} returns a tuple. Use "
                          "scorecam (it masks the input instead) or a recipe whose target layer returns a tensor")
    input_hw = tuple(image.shape[-2:])
    reshape = partial(as_maps, recipe, model, input_hw=input_hw) if recipe.reshape else None
    ablation = AblationLayerVit() if capture.activations[0].dim() == 3 else AblationLayer()
    try:
        with AblationCAM(model=wrapped, target_layers=layers, reshape_transform=reshape, ablation_layer=ablation) as cam:
            cam.batch_size = 32
            with torch.no_grad():
                return cam(input_tensor=image.expand(len(targets), *image.shape[1:]),
                           targets=[ClassifierOutputTarget(t) for t in targets])
    finally:  # AblationCAM swaps the target layer out while it runs: never leave it swapped
        present = {id(m) for m in wrapped.modules()}
        for layer in (layer for layer in layers if id(layer) not in present):
            replace_layer_recursive(wrapped, ablation, layer)
