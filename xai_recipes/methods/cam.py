"""The CAM family (the grad-cam package) on a recipe's target layers, with one forward pass.

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

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capture import Capture, LogitsModel, as_maps, forward_with_capture, target_grads, target_scores
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Recipe

#: Method name → grad-cam class name (imported when a method runs: grad-cam takes seconds to import).
CLASSES: dict[str, str] = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
SCORECAM_BATCH = 32  # masked inputs per forward pass
_formula_host: list[nn.Module] = []


def grad_cam_class(method: str) -> Any:
    """The grad-cam class behind ``method`` (e.g. ``pytorch_grad_cam.GradCAM`` for "gradcam"), or the class
    named ``method`` itself (e.g. "FEM": the CAMs of :mod:`xai_recipes.methods.gradcam_all`)."""
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CLASSES.get(method, method))


def _scorecam_weights(wrapped: nn.Module, image: torch.Tensor, maps: torch.Tensor, targets: list[int], batch: int) -> np.ndarray:
    """grad-cam's ScoreCAM weights (``T×C``) for one image, every masked input run once for all T
    targets (grad-cam runs all C masked inputs again for each target) and masks made per chunk. Without
    gradients but not in inference mode: a task's scores may take a gradient of their own (the segmentation
    task sums a class's logits over its region through the upsampling's adjoint), which inference mode forbids."""
    with torch.no_grad():
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
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped, layers = capture.wrapped, capture.layers
    input_hw = tuple(pixel_values.shape[-2:])
    B, T = len(targets), len(targets[0])
    flat_targets = [t for per_image in targets for t in per_image]
    cam_targets = [ClassifierOutputTarget(t) for t in flat_targets]
    if method == "ablationcam":
        return np.stack([_ablation_cams(model, recipe, pixel_values[b : b + 1], targets[b], capture) for b in range(B)])

    # grad-cam's classes want a model, but their CAM formulas (get_cam_image) never touch it: a
    # one-parameter stand-in saves walking the real model in BaseCAM.__init__ on every call.
    if not _formula_host:
        _formula_host.append(nn.Linear(1, 1))
    cam = grad_cam_class(method)(model=_formula_host[0], target_layers=[])
    if cam.uses_gradients:
        selected = target_scores(capture.logits, targets)
        grads = [g.transpose(0, 1).flatten(0, 1) for g in target_grads(selected, capture.activations)]  # (B·T)×...
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


def _any_inputs(cls: type) -> type:
    """grad-cam's ablation layer ``cls`` taking whatever inputs the layer it stands in for takes (DPT's fusion
    layers take the fused map and a residual): it returns that layer's recorded activations, ablated, and
    never reads its inputs."""

    class AnyInputs(cls):
        def __call__(self, x: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            return super().__call__(x)

    return AnyInputs


def _ablation_cams(model: nn.Module, recipe: Recipe, image: torch.Tensor, targets: list[int], capture: Capture) -> np.ndarray:
    """AblationCAM through grad-cam's own class, on the image replicated once per target."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
    from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped, layers = capture.wrapped, capture.layers
    if any(capture.tuples):
        raise RecipeError(f"ablationcam swaps the target layer for grad-cam's AblationLayer, which needs a layer that "
                          f"returns a tensor; {type(layers[capture.tuples.index(True)]).__name__} returns a tuple. Use "
                          "scorecam (it masks the input instead) or a recipe whose target layer returns a tensor")
    input_hw = tuple(image.shape[-2:])
    reshape = partial(as_maps, recipe, model, input_hw=input_hw) if recipe.reshape else None
    ablation = _any_inputs(AblationLayerVit if capture.activations[0].dim() == 3 else AblationLayer)()
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


def _runner(method: str):
    def run(batch: Batch) -> Result:
        model, recipe = batch.model, batch.recipe
        capture = forward_with_capture(LogitsModel(model, recipe), list(recipe.target_layers(model)), batch.pixel_values)
        targets = batch.choose(capture.logits.detach())
        maps = compute_cams(model, recipe, batch.pixel_values, targets, method, capture)
        return Result(capture.logits.detach(), targets, maps, capture.layers)

    return run


_DESCRIPTIONS = {
    "gradcam": "Grad-CAM: activations weighted by their gradient averaged over positions (Selvaraju et al. 2017)",
    "hirescam": "HiResCAM: activations times their gradient, position by position (Draelos & Carin 2020)",
    "gradcam++": "Grad-CAM++: second-order gradient weights (Chattopadhay et al. 2018)",
    "xgradcam": "XGrad-CAM: axiom-based gradient weights (Fu et al. 2020)",
    "layercam": "LayerCAM: positive gradients times activations per position (Jiang et al. 2021)",
    "eigencam": "Eigen-CAM: first principal component of the activations, class-agnostic (Muhammad & Yeasin 2020)",
    "eigengradcam": "Eigen-Grad-CAM: first principal component of gradient × activations",
    "gradcamelementwise": "Grad-CAM element-wise: ReLU of gradient × activations, summed over channels",
    "scorecam": "Score-CAM: channels weighted by the score of the input masked by them (Wang et al. 2020)",
    "ablationcam": "Ablation-CAM: channels weighted by the score drop when each is zeroed (Desai & Ramaswamy 2020)",
}

METHODS = tuple(
    Method(name=name, run=_runner(name), needs=("target_layers",), class_specific=name != "eigencam",
           description=_DESCRIPTIONS[name], reference="grad-cam package (jacobgil/pytorch-grad-cam)")
    for name in CLASSES
)


@hookimpl
def register_methods(register):
    for method in METHODS:
        register(method)
