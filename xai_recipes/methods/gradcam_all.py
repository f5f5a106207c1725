"""Every other CAM the grad-cam package ships, found in the package itself, and Guided Grad-CAM.

:func:`discover` reads ``pytorch_grad_cam``'s sources (its ``__init__`` exports and their class
definitions, without importing the package: registration stays instant) and lists every exported
CAM class: subclasses of ``BaseCAM`` and the meta-methods built on a ``base_method`` (FinerCAM,
RefineCAM, SESS). Those :mod:`xai_recipes.methods.cam` does not register already become methods
here, named after the class (``KPCA_CAM`` → ``kpca-cam``), so a new grad-cam release's CAMs appear
without code here. How each runs:

* CAMs whose formula reads only the target layer's activations and gradients (FEM, KPCA-CAM,
  RandomCAM, Seg-Eigen-CAM) take the one-forward path of the built-in CAMs
  (:func:`~xai_recipes.methods.cam.compute_cams`) with grad-cam's own ``get_cam_image``.
* The others (ShapleyCAM's Hessian-vector product, FullGrad's biases of every layer, FinerCAM,
  RefineCAM, SESS, and any class not known here) run through grad-cam's own class on the images
  replicated once per target, with the recipe's layer(s) and reshape: their maps are grad-cam's.
  FullGrad's biases are paired with the gradients of their own layers (:func:`full_grad_by_layer`;
  grad-cam pairs them by order, which RT-DETR's encoder and a ResNet's shortcuts break). FinerCAM
  contrasts each target with the three classes whose logits are closest to it (grad-cam's
  ``target_idx`` rule); RefineCAM multiplies GradCAM++ over the recipe's stages (its target layer
  alone without stages); SESS runs the CAM on patches of ``num_scales`` rescaled copies.
* ``guided-gradcam``: Guided Backpropagation (grad-cam's ``GuidedBackpropReLUasModule`` in place of
  every ``nn.ReLU`` for the call; one batched backward for all targets) times the Grad-CAM map
  (Selvaraju et al. 2017); the map is |product| summed over channels (``signed=True``: the signed sum).

grad-cam's gradient methods call ``backward`` on the model: the parameters' ``.grad`` are put
back as they were afterwards.
"""

from __future__ import annotations

import ast
import importlib.util
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..capture import LogitsModel, as_maps, forward_with_capture
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Recipe
from .cam import CLASSES, compute_cams
from .captum import has_relu, to_maps

REFERENCE = "grad-cam package (jacobgil/pytorch-grad-cam)"
#: CAMs whose formula needs only the target layer's activations and gradients: the one-forward path.
FORMULA_ONLY = {"FEM", "KPCA_CAM", "RandomCAM", "SegEigenCAM"}
#: Known classes: (description, reference, class-specific).
KNOWN: dict[str, tuple[str, str, bool]] = {
    "FEM": ("FEM: channels weighted by the share of positions above their mean + k·std, class-agnostic",
            "Fuad et al., IPTA 2020", False),
    "KPCA_CAM": ("KPCA-CAM: first kernel principal component of the activations, class-agnostic",
                 "Karmani et al. 2024 (arXiv:2410.00267)", False),
    "RandomCAM": ("Random-CAM: random channel weights in [-1, 1], a baseline any method should beat",
                  "grad-cam package (a sanity baseline)", False),
    "SegEigenCAM": ("Seg-Eigen-CAM: first principal component of |gradient| × activations, sign-corrected",
                    "Chung & Ying, Applied Sciences 2025", True),
    "ShapleyCAM": ("ShapleyCAM: channel weights from the gradient and the Hessian-vector product (Shapley view of CAMs)",
                   "Cai 2025 (arXiv:2501.06261)", True),
    "FullGrad": ("FullGrad: input gradient × input plus the bias gradients of every conv/BatchNorm layer",
                 "Srinivas & Fleuret, NeurIPS 2019", True),
    "FinerCAM": ("Finer-CAM: Grad-CAM of the target's logit minus the logits of the three most similar classes",
                 "Zhang et al., CVPR 2025 (arXiv:2501.11309)", True),
    "RefineCAM": ("RefineCAM: Grad-CAM++ multiplied over the recipe's stages (denoises early layers)",
                  "grad-cam package RefineCAM (arXiv:2605.14641)", True),
    "SESS": ("SESS: the Grad-CAM of patches of rescaled copies, weighted by their scores and fused",
             "Tyagi et al. 2022 (arXiv:2207.01769)", True),
}


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("pytorch_grad_cam")
    return Path(spec.origin).parent if spec and spec.origin else None


@lru_cache(maxsize=1)
def discover() -> tuple[str, ...]:
    """Names of the CAM classes ``pytorch_grad_cam`` exports, read from its sources: ``BaseCAM``
    subclasses (directly or through other classes of the package) and classes built on a
    ``base_method`` with ``target_layers``."""
    root = _package_dir()
    if root is None:
        return ()
    init = ast.parse((root / "__init__.py").read_text(encoding="utf-8"))
    exported = [a.asname or a.name for node in init.body if isinstance(node, ast.ImportFrom) for a in node.names]
    bases: dict[str, list[str]] = {}
    args: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            bases[node.name] = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                                for b in node.bases]
            init_fn = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
            args[node.name] = {a.arg for a in init_fn.args.args + init_fn.args.kwonlyargs} if init_fn else set()

    def is_cam(name: str, seen: frozenset = frozenset()) -> bool:
        if name == "BaseCAM":
            return True
        if name in seen or name not in bases:
            return False
        return any(is_cam(b, seen | {name}) for b in bases[name])

    return tuple(n for n in exported if n != "BaseCAM" and
                 (is_cam(n) or {"base_method", "target_layers"} <= args.get(n, set())))


def method_name(cls: str) -> str:
    """A grad-cam class's method name: ``KPCA_CAM`` → ``kpca-cam``, ``ShapleyCAM`` → ``shapleycam``."""
    return cls.lower().replace("_", "-")


@contextmanager
def kept_grads(model: nn.Module) -> Iterator[None]:
    """The parameters' ``.grad`` as they were before the block (grad-cam calls ``backward``)."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def _reshape(recipe: Recipe, model: nn.Module, input_hw: tuple[int, int]) -> Callable[[Any], torch.Tensor]:
    def reshape(activations: Any) -> torch.Tensor:
        if not isinstance(activations, torch.Tensor):
            raise RecipeError(f"grad-cam's own classes need target layers that return a tensor; the recipe's layer returns "
                              f"{type(activations).__name__}. Use gradcam (it reads the tuple's first item)")
        return as_maps(recipe, model, activations, input_hw)

    return reshape


def _release(cam: Any) -> None:
    for part in (cam, getattr(cam, "base_cam", None), *getattr(cam, "base_cam_per_layer", [])):
        hooks = getattr(part, "activations_and_grads", None)
        if hooks is not None:
            # grad-cam's release() first detaches what it kept in place, which raises on a gradient that is a view
            # (kept with its graph by ShapleyCAM, for a target layer whose output is reshaped after it, as DETR's
            # input projection is flattened): dropping the references frees them all the same.
            hooks.activations.clear()
            hooks.gradients.clear()
            hooks.release()


def cam_layers(cls: str, model: nn.Module, recipe: Recipe) -> list[nn.Module]:
    """The layers grad-cam's class ``cls`` is given: none for FullGrad (it finds its own), the recipe's
    stages for RefineCAM (its target layer without stages), else the recipe's target layers."""
    if cls == "FullGrad":
        return []
    if cls == "RefineCAM" and recipe.stages is not None:
        return list(recipe.stages(model))
    return list(recipe.target_layers(model))


def finer_targets(logits: torch.Tensor, targets: list[list[int]], alpha: float) -> list[Any]:
    """grad-cam's ``FinerWeightedTarget`` per (image, target): the target against the three classes
    whose logits are closest to its own (grad-cam's ``target_idx`` rule)."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    out = []
    data = logits.detach().float().cpu().numpy()
    for b, per_image in enumerate(targets):
        for t in per_image:
            order = np.argsort(np.abs(data[b] - data[b, t]))
            out.append(FinerWeightedTarget(int(t), [int(order[i]) for i in (1, 2, 3) if i < len(order)], alpha))
    return out


@lru_cache(maxsize=1)
def full_grad_by_layer() -> type:
    """grad-cam's ``FullGrad`` with each bias paired with the gradient of its own layer's output.

    grad-cam pairs its list of biases (in module registration order) with its list of gradients (in the
    order the backward reaches the layers), which are the same only when every Conv2d / BatchNorm2d layer
    runs once, in registration order: an RT-DETR's hybrid encoder runs its FPN before modules registered
    earlier, and the shapes then clash; a ResNet's shortcut BatchNorm (registered before its block's layers,
    run after them) is silently paired with another layer's gradient of the same shape. Here each layer's
    gradients are kept with the layer (one per call; a layer that never ran adds nothing), and the formula
    is grad-cam's own."""
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    class GradientsByLayer(ActivationsAndGradients):
        def __init__(self, *args: Any) -> None:
            self.by_layer: dict[int, list[torch.Tensor]] = {}
            super().__init__(*args)

        def save_gradient(self, module: nn.Module, input: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self.by_layer.setdefault(id(module), []).append(grad.cpu().detach()))

        def __call__(self, x: torch.Tensor) -> Any:
            self.by_layer = {}
            return super().__call__(x)

    class FullGradByLayer(FullGrad):
        def __init__(self, model: nn.Module, target_layers: list, reshape_transform: Any = None) -> None:
            super().__init__(model, target_layers, reshape_transform)
            self.activations_and_grads.release()  # nothing kept yet: only its hooks go
            self.activations_and_grads = GradientsByLayer(self.model, self.target_layers, None, self.detach)
            self.bias_by_layer = [(id(layer), bias) for layer, bias in zip(self.target_layers, self.bias_data)]

        def compute_cam_per_layer(self, input_tensor: torch.Tensor, target_category: Any, eigen_smooth: bool) -> Any:
            found = self.activations_and_grads.by_layer
            pairs = [(bias, grad) for key, bias in self.bias_by_layer for grad in found.get(key, [])]
            self.bias_data = [bias for bias, _ in pairs]
            self.activations_and_grads.gradients = [grad for _, grad in pairs]
            return super().compute_cam_per_layer(input_tensor, target_category, eigen_smooth)

    return FullGradByLayer


def direct_cams(cls: str, model: nn.Module, recipe: Recipe, pixel_values: torch.Tensor, targets: list[list[int]],
                logits: torch.Tensor, options: dict[str, Any]) -> np.ndarray:
    """``B×T×H×W`` maps of grad-cam's class ``cls``, run as grad-cam runs it on the images replicated
    once per target (image-major), with the recipe's layers and reshape."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    B, T = len(targets), len(targets[0])
    hw = tuple(pixel_values.shape[-2:])
    rows = pixel_values.detach().repeat_interleave(T, 0)
    kwargs: dict[str, Any] = {}
    if cls == "SESS":
        kwargs = {"num_scales": options.get("num_scales", 12), "batch_size": options.get("batch_size", 32)}
        hw = (min(hw), min(hw))  # SESS's patches are squares of the short side
    cam_targets = (finer_targets(logits, targets, options.get("alpha", 1.0)) if cls == "FinerCAM" else
                   [ClassifierOutputTarget(t) for per_image in targets for t in per_image])
    reshape = None if cls == "FullGrad" else _reshape(recipe, model, hw)  # FullGrad reads its own conv/BN layers
    cam_class = full_grad_by_layer() if cls == "FullGrad" else getattr(pytorch_grad_cam, cls)
    cam = cam_class(LogitsModel(model, recipe), cam_layers(cls, model, recipe), reshape_transform=reshape, **kwargs)
    try:
        with kept_grads(model):
            maps = cam(rows, cam_targets)
    finally:
        _release(cam)
    return np.asarray(maps, np.float32).reshape(B, T, *maps.shape[1:])


def guided_gradients(model: nn.Module, recipe: Recipe, pixel_values: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """``B×T×C×H×W`` guided-backprop gradients: every ``nn.ReLU`` swapped for grad-cam's
    ``GuidedBackpropReLUasModule`` for the call (and put back), one backward for all rows."""
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule

    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.ReLU)]
    B, T = len(targets), len(targets[0])
    rows = pixel_values.detach().repeat_interleave(T, 0).requires_grad_(True)
    index = torch.tensor([t for per_image in targets for t in per_image], device=rows.device)
    try:
        for parent, name, _ in swapped:
            setattr(parent, name, GuidedBackpropReLUasModule())
        with torch.enable_grad():
            logits = LogitsModel(model, recipe)(rows)
            (grad,) = torch.autograd.grad(logits.gather(1, index[:, None]).sum(), rows)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
    return grad.reshape(B, T, *grad.shape[1:])


def _guided_gradcam(batch: Batch) -> Result:
    model, recipe, x = batch.model, batch.recipe, batch.pixel_values
    capture = forward_with_capture(LogitsModel(model, recipe), list(recipe.target_layers(model)), x)
    targets = batch.choose(capture.logits.detach())
    cams = compute_cams(model, recipe, x, targets, "gradcam", capture)
    guided = guided_gradients(model, recipe, x, targets)
    signed = bool(batch.options.get("signed", False))
    product = guided * torch.from_numpy(np.ascontiguousarray(cams)).to(guided)[:, :, None]
    return Result(capture.logits.detach(), targets, to_maps(product, signed), capture.layers, signed=signed)


def _formula_runner(cls: str) -> Callable[[Batch], Result]:
    def run(batch: Batch) -> Result:
        model, recipe = batch.model, batch.recipe
        capture = forward_with_capture(LogitsModel(model, recipe), list(recipe.target_layers(model)), batch.pixel_values)
        targets = batch.choose(capture.logits.detach())
        return Result(capture.logits.detach(), targets, compute_cams(model, recipe, batch.pixel_values, targets, cls, capture),
                      capture.layers)

    return run


def _direct_runner(cls: str) -> Callable[[Batch], Result]:
    def run(batch: Batch) -> Result:
        model, recipe = batch.model, batch.recipe
        with torch.no_grad():
            logits = LogitsModel(model, recipe)(batch.pixel_values)
        targets = batch.choose(logits)
        layers = cam_layers(cls, model, recipe)
        return Result(logits, targets, direct_cams(cls, model, recipe, batch.pixel_values, targets, logits,
                                                   dict(batch.options)), layers)

    return run


def _fullgrad_check(model: nn.Module, recipe: Recipe) -> str | None:
    if model is None:
        return None
    if not any(type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None for m in model.modules()):
        return "FullGrad reads the biases of Conv2d / BatchNorm2d layers, and this model has none; use integrated-gradients"
    return None


def _shapley_check(model: nn.Module, recipe: Recipe) -> str | None:
    if recipe.reshape is not None:
        return ("grad-cam's ShapleyCAM applies the recipe's reshape to its gradients but not to the activations it "
                "weights, so it needs a target layer that outputs B×C×h×w maps (a CNN's); use gradcam or hirescam")
    return None


def _relu_check(model: nn.Module, recipe: Recipe) -> str | None:
    if model is not None and not has_relu(model):
        return "the model has no nn.ReLU module, so guided backpropagation would be the plain gradient; use gradcam"
    return None


def methods() -> list[Method]:
    """The methods of :func:`discover`'s classes not registered by the CAM plugin, and guided-gradcam."""
    taken = set(CLASSES.values())
    out = []
    for cls in discover():
        if cls in taken:
            continue
        description, reference, specific = KNOWN.get(cls, (f"grad-cam's {cls}", REFERENCE, True))
        options = {"SESS": {"num_scales": 12, "batch_size": 32}, "FinerCAM": {"alpha": 1.0}}.get(cls, {})
        out.append(Method(
            name=method_name(cls),
            run=_formula_runner(cls) if cls in FORMULA_ONLY else _direct_runner(cls),
            needs=() if cls == "FullGrad" else ("target_layers",),
            check={"FullGrad": _fullgrad_check, "ShapleyCAM": _shapley_check}.get(cls),
            class_specific=specific, options=options,
            eager_attention=cls == "ShapleyCAM",  # a Hessian-vector product: SDPA has no double backward
            description=f"{description} (grad-cam's {cls})", reference=f"{reference}; {REFERENCE}",
        ))
    out.append(Method(
        name="guided-gradcam", run=_guided_gradcam, needs=("target_layers",), check=_relu_check,
        options={"signed": False},
        description="Guided Grad-CAM: guided backpropagation × the Grad-CAM map, at input resolution",
        reference=f"Selvaraju et al., ICCV 2017; {REFERENCE} (GuidedBackpropReLU)",
    ))
    return out


@hookimpl
def register_methods(register):
    for method in methods():
        register(method)
