"""Captum's attributions on the model input, for any model the recipe's logits wrapper runs.

These methods need nothing from a recipe but its tensor-output wrapper (:class:`LogitsModel`):
they attribute the target logits to the model input (``pixel_values``), and the engine maps the
``B×T×H×W`` maps back onto the photo through the processor's geometry like any other method.
They therefore also explain models for which no recipe could be derived (the generic recipe).

**Maps.** Captum returns ``B×T×C×H×W`` attributions (:func:`attributions`). By default
(``signed=False``) a map is the absolute attribution summed over the input channels, divided by
its maximum: in [0, 1]. With ``signed=True`` it is the signed sum over channels divided by its
largest magnitude: in [-1, 1], the sign kept (figures draw it red/blue, ``render.signed``); the
sanity check compares absolute values then. (:func:`to_maps`; Saliency's own ``abs`` follows
``signed``.)

**Batching.** Integrated Gradients, Saliency, Input × Gradient, SmoothGrad / ``noise_tunnel`` and
GradientSHAP compute their gradients through Captum's ``gradient_func``, which is replaced by
:class:`SharedGradients`: Captum is called once per target on the ``B`` images (the same steps,
the noise re-seeded identically), and each distinct batch of rows (IG's ``n_steps`` scaled images,
``internal_batch_size`` rows at a time; SmoothGrad's ``nt_samples`` noisy copies; GradientSHAP's
``n_samples`` points) goes through the model once, with one batched backward for all T targets
(one target: Captum's own call, unchanged).
Guided backprop and DeepLift (whose hooks change the backward pass) expand the ``B`` images ``T``
times along the batch (image-major) with the list of ``B·T`` targets, so one Captum call serves
every target, at most ``internal_batch_size`` model rows per pass. Perturbation methods (occlusion, feature ablation,
LIME, KernelSHAP) evaluate the same perturbations for every target: Captum is called once per
target on all ``B`` images (``perturbations_per_eval`` = ``internal_batch_size // B``), with the
random generator re-seeded each time, and the model outputs of the first target's call are
replayed for the others (checked by a fingerprint of each perturbed batch; a mismatch runs the
model), so T targets cost one set of forward passes.

**Randomness.** SmoothGrad / ``noise_tunnel``, GradientSHAP, LIME and KernelSHAP draw from
torch's generator (GradientSHAP's path points from numpy's), both seeded with ``seed`` for the
call and restored afterwards (the caller's state is untouched): the maps equal Captum's own on
the same input after ``torch.manual_seed(seed); np.random.seed(seed)``.

**Superpixels.** Feature ablation, LIME and KernelSHAP perturb superpixels of the model input
(``segments``): an int is the number of SLIC segments (scikit-image ``slic``, compactness 10, on
the input min-max scaled to [0, 1]); a callable ``(H×W×C float array) -> H×W int labels`` is used
as given. Occlusion slides a ``window``-pixel square (``stride``; default an eighth of the short
side and half a window).

**Baselines.** ``baseline`` is a value of the model input (after the processor's normalisation):
0 is the processor's mean colour for mean/std normalisation. GradientSHAP draws its baseline
from that one value plus Gaussian noise of ``stdevs``.

Without Captum installed the methods are listed, ``describe()`` says they need
``pip install "xai-recipes[captum]"``, and running one raises :class:`MissingExtraError`.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..capture import LogitsModel
from ..errors import MissingExtraError, RecipeError, XAIRecipesError
from ..hookspecs import hookimpl
from ..method import Batch, Method, Result
from ..recipe import Recipe

EXTRA = 'pip install "xai-recipes[captum]"'
NOISE_TUNNELS = ("smoothgrad", "smoothgrad_sq", "vargrad")
#: Options every gradient method takes: the sign, batching, and an optional NoiseTunnel around it.
_GRADIENT = {"signed": False, "internal_batch_size": 64, "noise_tunnel": None, "nt_samples": 16, "stdevs": 0.15, "seed": 0}
_PERTURBATION = {"signed": False, "internal_batch_size": 64, "baseline": 0.0}
_SEGMENTS = 50


@dataclass(frozen=True)
class Spec:
    """One Captum method: its class, family, options and what to cite."""

    captum: str  # class name in captum.attr
    family: str  # "gradient" or "perturbation"
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
    relu: bool = False  # only changes anything on models with nn.ReLU modules (guided backprop)


SPECS: dict[str, Spec] = {
    "integrated-gradients": Spec("IntegratedGradients", "gradient", {**_GRADIENT, "baseline": 0.0, "n_steps": 32,
                                 "ig_method": "gausslegendre"},
                                 "Integrated Gradients: gradients averaged along the path from a baseline to the input, "
                                 "times (input − baseline)", "Sundararajan et al., ICML 2017; Captum IntegratedGradients"),
    "saliency": Spec("Saliency", "gradient", _GRADIENT, "Saliency: the gradient of the target logit w.r.t. the input",
                     "Simonyan et al. 2014; Captum Saliency"),
    "input-x-gradient": Spec("InputXGradient", "gradient", _GRADIENT, "Input × Gradient",
                             "Shrikumar et al. 2016; Captum InputXGradient"),
    "smoothgrad": Spec("Saliency", "gradient", {**_GRADIENT, "noise_tunnel": "smoothgrad"},
                       "SmoothGrad: saliency averaged over noisy copies of the input (nt_samples, stdevs)",
                       "Smilkov et al. 2017; Captum NoiseTunnel(Saliency)"),
    "guided-backprop": Spec("GuidedBackprop", "gradient", _GRADIENT,
                            "Guided Backpropagation: gradients with negative values stopped at every ReLU",
                            "Springenberg et al. 2015; Captum GuidedBackprop", relu=True),
    "deeplift": Spec("DeepLift", "gradient", {**_GRADIENT, "baseline": 0.0},
                     "DeepLIFT (Rescale rule): contributions relative to a baseline", "Shrikumar et al., ICML 2017; Captum DeepLift"),
    "gradient-shap": Spec("GradientShap", "gradient", {**_GRADIENT, "baseline": 0.0, "n_samples": 16, "shap_stdevs": 0.09},
                          "GradientSHAP: expected gradients × (input − baseline) at random points between noisy baselines and the input",
                          "Lundberg & Lee, NeurIPS 2017; Captum GradientShap"),
    "occlusion": Spec("Occlusion", "perturbation", {**_PERTURBATION, "window": None, "stride": None},
                      "Occlusion: the logit drop when a sliding square of the input is set to the baseline",
                      "Zeiler & Fergus, ECCV 2014; Captum Occlusion"),
    "feature-ablation": Spec("FeatureAblation", "perturbation", {**_PERTURBATION, "segments": _SEGMENTS},
                             "Feature ablation: the logit drop when each superpixel is set to the baseline",
                             "Captum FeatureAblation"),
    "lime": Spec("Lime", "perturbation", {**_PERTURBATION, "segments": _SEGMENTS, "n_samples": 200, "seed": 0},
                 "LIME: a sparse linear model of the logit on random superpixel masks",
                 "Ribeiro et al., KDD 2016; Captum Lime"),
    "kernel-shap": Spec("KernelShap", "perturbation", {**_PERTURBATION, "segments": _SEGMENTS, "n_samples": 200, "seed": 0},
                        "KernelSHAP: Shapley values of the superpixels, by a weighted linear regression on random coalitions",
                        "Lundberg & Lee, NeurIPS 2017; Captum KernelShap"),
}


def captum_available() -> bool:
    """Whether Captum can be imported (without importing it)."""
    return importlib.util.find_spec("captum") is not None


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as exc:
        raise MissingExtraError(f"this method runs Captum, which is not installed: {EXTRA}") from exc
    return captum.attr


def has_relu(model: nn.Module) -> bool:
    """Whether ``model`` has ``nn.ReLU`` modules (what guided backprop changes)."""
    return any(isinstance(m, nn.ReLU) for m in model.modules())


def _positive_int(options: Mapping[str, Any], name: str) -> int:
    v = options[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise XAIRecipesError(f"{name} must be a positive integer, got {v!r}")
    return v


def superpixels(pixel_values: torch.Tensor, segments: int | Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """``B×1×H×W`` superpixel labels (0, 1, ...) of the model input: SLIC with ``segments`` segments
    on each image min-max scaled to [0, 1], or ``segments(image H×W×C) -> H×W`` labels."""
    masks = []
    for image in pixel_values.detach().float().cpu().numpy():
        hwc = np.moveaxis(image, 0, -1).astype(np.float64)
        hwc = (hwc - hwc.min()) / max(float(hwc.max() - hwc.min()), 1e-12)
        if callable(segments):
            labels = np.asarray(segments(hwc))
        else:
            if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
                raise XAIRecipesError(f"segments must be a positive integer (SLIC segments) or a callable, got {segments!r}")
            try:
                from skimage.segmentation import slic
            except ImportError as exc:
                raise MissingExtraError(f"superpixels (SLIC) need scikit-image: {EXTRA}") from exc
            labels = slic(hwc, n_segments=segments, compactness=10, start_label=0, channel_axis=-1)
            if labels.max() < 1:  # no structure SLIC can follow (noise, a flat image): a grid of about as many cells
                labels = grid(hwc.shape[:2], segments)
        if labels.shape != hwc.shape[:2]:
            raise XAIRecipesError(f"segments gave labels of shape {labels.shape} for a {hwc.shape[:2]} input")
        _, labels = np.unique(labels, return_inverse=True)  # 0 .. n-1, as Captum wants
        masks.append(labels.reshape(hwc.shape[:2]))
    return torch.from_numpy(np.stack(masks)[:, None]).to(pixel_values.device)


def grid(hw: tuple[int, int], cells: int) -> np.ndarray:
    """``H×W`` labels of a regular grid of about ``cells`` rectangles."""
    H, W = hw
    rows = max(1, round((cells * H / W) ** 0.5))
    cols = max(1, round(cells / rows))
    return (np.arange(H)[:, None] * rows // H) * cols + np.arange(W)[None, :] * cols // W


class Replay(nn.Module):
    """A forward that records the model's outputs on the first pass and replays them on later
    passes that feed the same batches in the same order (one fingerprint per batch; a mismatch
    runs the model): the perturbations of T targets cost one set of forward passes."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.record: list[tuple[tuple, torch.Tensor]] = []
        self.position: int | None = None  # None: recording
        self.calls = 0  # forward passes actually run

    @staticmethod
    def fingerprint(x: torch.Tensor) -> tuple:
        flat = x.detach().double().flatten()
        weights = torch.linspace(-1, 1, flat.numel(), dtype=torch.float64, device=flat.device)
        return tuple(x.shape), float(flat.sum()), float((flat * weights).sum())

    def replay(self) -> None:
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = self.fingerprint(x)
        if self.position is not None and self.position < len(self.record) and self.record[self.position][0] == key:
            self.position += 1
            return self.record[self.position - 1][1]
        self.calls += 1
        out = self.wrapped(x)
        if self.position is None:
            self.record.append((key, out.detach()))
        return out


def _seeded(seed: int, device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices)

    class _Ctx:
        def __enter__(self):
            rng.__enter__()
            self.numpy = np.random.get_state()
            torch.manual_seed(seed)
            np.random.seed(seed)  # GradientSHAP draws its path points with numpy

        def __exit__(self, *exc):
            np.random.set_state(self.numpy)
            return rng.__exit__(*exc)

    return _Ctx()


#: Gradient methods whose Captum class computes its gradients through ``gradient_func``: their T targets share passes.
SHARED = ("integrated-gradients", "saliency", "input-x-gradient", "smoothgrad", "gradient-shap")


class SharedGradients:
    """Captum's ``gradient_func`` for T targets at once: called with the image index of each row as
    its "target", it runs the model once on a batch of rows, takes the gradients of every target's
    logit in one batched backward, returns target :attr:`t`'s and keeps the others for the calls of
    the other targets, which Captum makes on the same rows (same steps; re-seeded noise)."""

    def __init__(self, targets: list[list[int]]) -> None:
        self.targets, self.t = targets, 0
        self.cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.passes = 0  # forward passes actually run

    def __call__(self, forward_fn: Callable, inputs: Any, target_ind: Any = None,
                 additional_forward_args: Any = None) -> tuple[torch.Tensor, ...]:
        from ..capture import target_grads

        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        key = tuple(Replay.fingerprint(x) for x in inputs)
        if key not in self.cache:
            images = torch.as_tensor(target_ind).flatten().tolist()
            with torch.enable_grad():
                logits = forward_fn(*inputs)
                self.passes += 1
                index = torch.tensor([self.targets[int(b)] for b in images], device=logits.device)  # rows × T
                selected = logits.gather(1, index).sum(0)  # T: each target's logit summed over the rows
                self.cache[key] = tuple(g.detach() for g in target_grads(selected, list(inputs)))
        return tuple(g[self.t] for g in self.cache[key])


def model_rows(name: str, options: Mapping[str, Any]) -> int:
    """How many model rows one input row makes in one Captum call (IG batches its own steps)."""
    rows = {"deeplift": 2, "gradient-shap": options.get("n_samples", 1)}.get(name, 1)
    return rows * (options["nt_samples"] if options.get("noise_tunnel") else 1)


def gradient_call(name: str, options: Mapping[str, Any], forward: nn.Module, inputs: torch.Tensor,
                  target: list[int], gradient_func: Callable | None = None) -> torch.Tensor:
    """One Captum call of gradient method ``name`` (with its NoiseTunnel if asked) on ``inputs``
    for ``target`` (one class per row), exactly as :func:`attributions` makes it; ``gradient_func``
    replaces Captum's ``compute_gradients`` (:class:`SharedGradients`)."""
    attr = _captum()
    spec = SPECS[name]
    algorithm = getattr(attr, spec.captum)(forward)
    if gradient_func is not None:
        algorithm.gradient_func = gradient_func
    kwargs: dict[str, Any] = {}
    if name == "integrated-gradients":
        kwargs = dict(baselines=float(options["baseline"]), n_steps=options["n_steps"], method=options["ig_method"],
                      internal_batch_size=options["internal_batch_size"])
    elif name == "deeplift":
        kwargs = dict(baselines=float(options["baseline"]))
    elif name == "gradient-shap":
        kwargs = dict(baselines=torch.full((1, *inputs.shape[1:]), float(options["baseline"]), dtype=inputs.dtype,
                                           device=inputs.device), n_samples=options["n_samples"], stdevs=options["shap_stdevs"])
    elif name in ("saliency", "smoothgrad"):
        kwargs = dict(abs=not options["signed"])
    if options.get("noise_tunnel"):
        nt_batch = None if name == "integrated-gradients" else max(1, options["internal_batch_size"] // max(1, len(inputs)))
        return attr.NoiseTunnel(algorithm).attribute(
            inputs, nt_type=options["noise_tunnel"], nt_samples=options["nt_samples"], stdevs=options["stdevs"],
            nt_samples_batch_size=None if nt_batch is None else min(nt_batch, options["nt_samples"]), target=target, **kwargs)
    return algorithm.attribute(inputs, target=target, **kwargs)


def perturbation_call(name: str, options: Mapping[str, Any], forward: nn.Module, inputs: torch.Tensor,
                      target: list[int], mask: torch.Tensor | None) -> torch.Tensor:
    """One Captum call of perturbation method ``name`` on ``inputs`` (``B`` rows) for ``target``."""
    attr = _captum()
    algorithm = getattr(attr, SPECS[name].captum)(forward)
    ppe = max(1, options["internal_batch_size"] // max(1, len(inputs)))
    baseline = float(options["baseline"])
    if name == "occlusion":
        window, stride = occlusion_window(inputs, options)
        return algorithm.attribute(inputs, sliding_window_shapes=(inputs.shape[1], window, window),
                                   strides=(inputs.shape[1], stride, stride), baselines=baseline, target=target,
                                   perturbations_per_eval=ppe)
    if name == "feature-ablation":
        return algorithm.attribute(inputs, baselines=baseline, target=target, feature_mask=mask, perturbations_per_eval=ppe)
    return algorithm.attribute(inputs, baselines=baseline, target=target, feature_mask=mask,
                               n_samples=options["n_samples"], perturbations_per_eval=ppe)


def occlusion_window(inputs: torch.Tensor, options: Mapping[str, Any]) -> tuple[int, int]:
    """Occlusion's ``(window, stride)`` in input pixels: default an eighth of the short side, half a window."""
    short = min(inputs.shape[-2:])
    window = options["window"] or max(1, short // 8)
    stride = options["stride"] or max(1, window // 2)
    for key, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise XAIRecipesError(f"{key} must be a positive integer (input pixels), got {v!r}")
    return window, stride


def attributions(model: nn.Module, recipe: Recipe, pixel_values: torch.Tensor, targets: list[list[int]],
                 name: str, options: Mapping[str, Any]) -> torch.Tensor:
    """Captum's raw attributions ``B×T×C×H×W`` of each image's T target logits (see the module's
    docstring for the batching and seeding)."""
    spec = SPECS[name]
    options = {**spec.options, **options}
    ibs = _positive_int(options, "internal_batch_size")
    if options.get("noise_tunnel") not in (None, *NOISE_TUNNELS):
        raise XAIRecipesError(f"noise_tunnel must be None or one of {', '.join(NOISE_TUNNELS)}, got {options['noise_tunnel']!r}")
    for key in ("n_steps", "nt_samples", "n_samples"):
        if key in options:
            _positive_int(options, key)
    wrapped = LogitsModel(model, recipe)
    B, T = len(targets), len(targets[0])
    stochastic = bool(options.get("noise_tunnel")) or name in ("gradient-shap", "lime", "kernel-shap")
    seed = int(options.get("seed", 0))
    if name in SHARED:  # one Captum call per target, the model's passes shared (SharedGradients)
        x, shared, per_target = pixel_values.detach(), SharedGradients(targets), []
        for t in range(T):
            shared.t = t
            with _seeded(seed, x.device) if stochastic else nullcontext():
                per_target.append((gradient_call(name, options, wrapped, x, list(range(B)), shared) if T > 1 else
                                   gradient_call(name, options, wrapped, x, [ts[0] for ts in targets])).detach())
        return torch.stack(per_target, 1)
    if spec.family == "gradient":
        rows = pixel_values.detach().repeat_interleave(T, 0)  # image-major: row b·T + t is image b, target t
        flat = [t for per_image in targets for t in per_image]
        chunk = len(rows) if name == "integrated-gradients" else max(1, ibs // model_rows(name, options))
        with _seeded(seed, rows.device) if stochastic else nullcontext():
            out = torch.cat([gradient_call(name, options, wrapped, rows[i : i + chunk], flat[i : i + chunk]).detach()
                             for i in range(0, len(rows), chunk)])
        return out.reshape(B, T, *out.shape[1:])
    x = pixel_values.detach()
    mask = superpixels(x, options["segments"]) if "segments" in options else None
    forward = Replay(wrapped) if T > 1 else wrapped  # one target: nothing to replay
    per_target = []
    with torch.no_grad():
        for t in range(T):
            with _seeded(seed, x.device) if stochastic else nullcontext():
                per_target.append(perturbation_call(name, options, forward, x, [ts[t] for ts in targets], mask).detach())
            if T > 1:
                forward.replay()
    return torch.stack(per_target, 1)


def to_maps(attributions: torch.Tensor, signed: bool = False) -> np.ndarray:
    """``B×T×C×H×W`` attributions → ``B×T×H×W`` maps: |a| summed over channels / its maximum (in
    [0, 1]), or with ``signed`` the sum over channels / its largest magnitude (in [-1, 1])."""
    a = attributions.detach().float()
    m = a.sum(2) if signed else a.abs().sum(2)
    peak = m.abs().amax((-2, -1), keepdim=True).clamp_min(1e-12)
    return (m / peak).cpu().numpy()


def _runner(name: str) -> Callable[[Batch], Result]:
    def run(batch: Batch) -> Result:
        _captum()
        model, recipe = batch.model, batch.recipe
        try:
            with torch.no_grad():
                logits = LogitsModel(model, recipe)(batch.pixel_values)
        except XAIRecipesError:
            raise
        except Exception as exc:  # e.g. a flattening head given another input size than it was built for
            raise RecipeError(f"the model cannot run on a {tuple(batch.pixel_values.shape)} input ({type(exc).__name__}: "
                              f"{exc}); pass a processor whose output size fits the model") from exc
        targets = batch.choose(logits)
        raw = attributions(model, recipe, batch.pixel_values, targets, name, batch.options)
        signed = bool(batch.options.get("signed", False))
        return Result(logits, targets, to_maps(raw, signed), signed=signed)

    return run


def _check(spec: Spec) -> Callable[[nn.Module, Recipe], str | None]:
    def check(model: nn.Module, recipe: Recipe) -> str | None:
        if not captum_available():
            return f"it runs Captum, which is not installed: {EXTRA}"
        if spec.relu and model is not None and not has_relu(model):
            return ("the model has no nn.ReLU module, so guided backpropagation would be the plain gradient; "
                    "use saliency or integrated-gradients")
        return None

    return check


METHODS = tuple(
    Method(name=name, run=_runner(name), needs=(), check=_check(spec), options=dict(spec.options),
           description=spec.description + " (Captum, on the model input)", reference=spec.reference)
    for name, spec in SPECS.items()
)


@hookimpl
def register_methods(register):
    for method in METHODS:
        register(method)
