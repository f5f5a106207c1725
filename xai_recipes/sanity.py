"""Sanity check of a saliency method: does its map depend on the model's weights at all?

The **model-parameter randomisation test** of Adebayo et al., "Sanity Checks for Saliency Maps"
(NeurIPS 2018, https://arxiv.org/abs/1810.03292), in its *cascading* form: the images are explained
with the trained model, then the model's blocks are re-initialised one after another from the
output (the classifier head) down towards the input, and after each step the same images are
explained again, for the same classes. Each randomised map is compared with the trained model's
map by Spearman's rank correlation (and SSIM where scikit-image is installed).

**Direction: lower is better.** A map that explains the model must change when the model does, so
its correlation with the trained map should fall as the cascade proceeds. A method whose maps
barely change (an edge detector, a map of the input alone) fails: whatever it shows, it does not
explain this model. :func:`parameter_randomisation` returns a :class:`SanityReport` that says so.

    >>> report = parameter_randomisation("tests/trained/resnet", images, method="gradcam")
    >>> print(report)          # a table: the block the cascade reached, rank correlation per step
    >>> report.passed, report.reason
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import loading, registry
from .errors import ImageError, XAIRecipesError
from .images import load_image
from .method import Method
from .modelstate import borrowed

#: Default cap on the number of cascade steps (evenly spaced over the blocks, head first, input last).
MAX_STEPS = 8
#: Up to this many distinct classes over all images, each step explains every image for all of them in one call.
MAX_JOINT_TARGETS = 8
REFERENCE = 'Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv:1810.03292)'

_CONTAINERS = (nn.ModuleList, nn.Sequential)


@dataclass
class SanityReport:
    """The outcome of :func:`parameter_randomisation`.

    Attributes:
        method: the method checked.
        steps: per cascade step, the block the randomisation has reached (every block from the
            head down to this one is randomised at that step).
        correlation: per step, the mean Spearman rank correlation between the randomised and the
            trained model's maps, over images × targets. Lower is better.
        passed: whether the correlation at the last step is below ``threshold``.
        threshold: the pass mark.
        reason: why the method failed (``None`` if it passed).
        blocks: per step, the blocks newly randomised at that step (in cascade order).
        per_map: per step, the correlation of every (image, target) map, image-major.
        ssim: per step, the mean SSIM of the maps (``None`` without scikit-image).
        targets: per image, the explained classes (the trained model's, reused at every step).
    """

    method: str
    steps: list[str]
    correlation: list[float]
    passed: bool
    threshold: float
    reason: str | None = None
    blocks: list[list[str]] = field(default_factory=list)
    per_map: list[list[float]] = field(default_factory=list)
    ssim: list[float] | None = None
    targets: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        out = asdict(self)
        out["direction"] = "lower"
        out["reference"] = REFERENCE
        return out

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        last = self.correlation[-1] if self.correlation else float("nan")
        sign = "<" if self.passed else "≥"
        lines = [f"parameter randomisation ({self.method}): {verdict}, rank correlation {last:.3f} at the last step "
                 f"{sign} {self.threshold:g} (lower is better)"]
        width = max([len("randomised down to")] + [len(s) for s in self.steps])
        head = f"{'step':>4}  {'randomised down to':{width}}  {'spearman ↓':>10}"
        lines.append(head + (f"  {'ssim ↓':>7}" if self.ssim else ""))
        for i, (step, r) in enumerate(zip(self.steps, self.correlation)):
            row = f"{i + 1:>4}  {step:{width}}  {r:10.3f}"
            if self.ssim:
                row += f"  {self.ssim[i]:7.3f}"
            lines.append(row)
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


@dataclass
class _Block:
    """A unit of the cascade: a whole module, or only a module's own parameters (``own``)."""

    name: str
    module: nn.Module
    own: bool = False  # only the parameters the module holds itself, not its children's


def _has_params(module: nn.Module, recurse: bool = True) -> bool:
    return next(module.parameters(recurse=recurse), None) is not None


def candidate_blocks(model: nn.Module) -> list[_Block]:
    """The model's top-level parametrised blocks, in ``named_modules()`` order (not yet by forward).

    Walking down from the model: a child of a ``ModuleList``/``Sequential`` that holds parameters
    (a block: a ResNet stage, a ViT layer, a head's ``Linear``) is one unit, and so is a module
    holding parameters with no parametrised children (a lone conv, norm or head); neither is
    split further. A module holding parameters itself *and* having parametrised children (ViT's
    embeddings with its CLS token and position embeddings; a timm ViT's ``cls_token``) gives a
    unit of its own parameters only, and the walk goes on into its children.
    """
    blocks: list[_Block] = []

    def walk(name: str, module: nn.Module, in_container: bool) -> None:
        children = [(n, c) for n, c in module.named_children() if _has_params(c)]
        if name and (in_container or not children) and _has_params(module):
            blocks.append(_Block(name, module))
            return
        if _has_params(module, recurse=False):
            own = ", ".join(n for n, _ in module.named_parameters(recurse=False))
            blocks.append(_Block(f"{name or type(module).__name__}[{own}]", module, own=True))
        for child_name, child in children:
            walk(f"{name}.{child_name}" if name else child_name, child, isinstance(module, _CONTAINERS))

    walk("", model, False)
    return blocks


def forward_order(model: nn.Module, blocks: list[_Block], inputs: Mapping[str, Any]) -> list[_Block]:
    """``blocks`` sorted by when their module first runs in one forward pass of ``inputs`` (recorded
    with forward pre-hooks, removed afterwards); blocks that never run are dropped."""
    first: dict[int, int] = {}
    handles = []

    def hook(module: nn.Module, args: Any) -> None:
        first.setdefault(id(module), len(first))

    try:
        for module in {id(b.module): b.module for b in blocks}.values():
            handles.append(module.register_forward_pre_hook(hook))
        with borrowed(model), torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    ran = [b for b in blocks if id(b.module) in first]
    # a module's own parameters come before its children (its pre-hook fired first); ties keep walk order
    return sorted(ran, key=lambda b: first[id(b.module)])


def randomise(block: _Block) -> None:
    """Re-initialise ``block``'s parameters in place: each module's own ``reset_parameters()`` where it
    has one, else ``normal(0, 0.02)`` for weights and zeros for biases. Buffers (BatchNorm's running
    statistics) are kept as they are."""
    modules = [block.module] if block.own else list(block.module.modules())
    with torch.no_grad():
        for module in modules:
            if not _has_params(module, recurse=False):
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and not block.own:
                buffers = {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if b is not None}
                try:
                    reset()
                except Exception:  # noqa: BLE001 - an odd reset_parameters: fall back to the plain rule
                    pass
                else:
                    for n, saved in buffers.items():
                        getattr(module, n).copy_(saved)
                    continue
            for n, p in module.named_parameters(recurse=False):
                if n.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02)


def cascade(n_blocks: int, layers: int | None) -> list[int]:
    """How many blocks (from the head) are randomised at each step: ``layers`` steps (default: all
    blocks, at most :data:`MAX_STEPS`) evenly spaced from the head alone to every block; one step
    randomises every block at once."""
    steps = min(n_blocks, MAX_STEPS if layers is None else layers)
    if steps <= 1:
        return [n_blocks]
    return sorted({int(round(1 + (n_blocks - 1) * i / (steps - 1))) for i in range(steps)})


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two flattened maps; a constant map shares no ranking with a varying one
    (0), two constant maps are the same ranking (1)."""
    from scipy.stats import spearmanr

    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def _ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    if min(a.shape) < 7:
        return None
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0))


def _as_list(images: Any) -> list[Any]:
    """A folder's image files, a list or iterator as a list, one image as a list of one (as ``explain`` reads them)."""
    from .engine import _is_many, _sources

    return [image for _, image in _sources(images)] if _is_many(images) else [images]


def parameter_randomisation(
    model: str | os.PathLike | nn.Module,
    images: Sequence[Any],
    *,
    method: str | Method | None = None,
    target: Any = None,
    processor: Any = None,
    recipe: Any = None,
    layers: int | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    method_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> SanityReport:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018) of an explanation method.

    The images are explained with the trained model; then, on a **deep copy** of the model (the
    user's model is never modified), the parameters of its top-level parametrised blocks (see
    :func:`candidate_blocks`: a ResNet stage, a ViT layer, the head's ``Linear``, ...; ordered by
    where they run in one forward pass, blocks that never run left out) are re-initialised
    cumulatively from the classifier head down to the input. After each step the same images
    are explained again **for the same classes** (the trained model's explained classes, passed
    as target indices), and each map is compared with the trained model's map by Spearman's rank
    correlation of the flattened maps (``scipy.stats.spearmanr`` over the pixels the model saw;
    absolute values for signed methods; a constant map against a varying one counts 0, two
    constant maps 1), averaged over images × targets; and by SSIM where scikit-image is installed.
    Each step explains all images in one call for all their classes together when they are at
    most 8 distinct classes (maps are computed per class, so this only saves forward passes).

    Re-initialisation uses each module's own ``reset_parameters()`` where it exists (a BatchNorm's
    or LayerNorm's affine goes back to 1 / 0), else ``normal(0, 0.02)`` for weights and zeros for
    biases, under ``torch.manual_seed(seed)`` (on a forked RNG: the caller's random state is
    untouched). BatchNorm running statistics (and all other buffers) are left as they are, as
    Adebayo et al. keep them.

    **Direction**: lower correlation after randomisation is better: the maps depend on what the
    model learnt. The method passes when the mean correlation at the last step is below
    ``threshold``; otherwise its maps barely change when the weights are randomised, so they do not
    explain this model (the classic failing case is an edge detector, a map of the input alone).

    Args:
        model: hub id, local folder or loaded classifier, as for :func:`xai_recipes.explain`.
        images: a list (or iterator, or folder) of images, anything ``explain`` accepts.
        method, target, processor, recipe: as for ``explain`` (``target=None``: the top
            prediction(s), then kept fixed for every step).
        layers: how many cascade steps. Default: one per block, but at most 8 (:data:`MAX_STEPS`),
            evenly spaced from "head only" to "every block"; ``1`` randomises every block at once.
        seed: the seed of the re-initialisation.
        threshold: the pass mark for the last step's rank correlation.
        method_options: the method's options, for those whose name this function takes itself
            (LeGrad's ``layers``).
        **options: further keywords for ``explain`` (``top_k``, ``batch_size``, ``device``,
            ``trust_remote_code``, method options such as ``discard_ratio``). Every image must
            be explained at every step, so an image that cannot be read raises (no ``on_error``).

    Returns:
        A :class:`SanityReport` (``print`` it for a table; ``as_dict()`` for JSON).

    Reference: Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency Maps",
    NeurIPS 2018, https://arxiv.org/abs/1810.03292 (the cascading model-parameter randomisation test).
    """
    from .engine import explain

    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise XAIRecipesError(f"layers must be a positive integer (the number of cascade steps), got {layers!r}")
    device = options.pop("device", None)
    trust_remote_code = options.pop("trust_remote_code", False)
    options.pop("on_error", None)  # every image must be explained at every step, or the maps would not pair up
    options = {**options, **(method_options or {})}
    model, processor = loading.load(model, processor, device, trust_remote_code)
    chosen = registry.find_recipe(model, recipe)
    chosen_method = registry.get_method(method if method is not None else chosen.default_method)
    pictures = [load_image(x) for x in _as_list(images)]
    if not pictures:
        raise ImageError("parameter_randomisation needs at least one image")

    def run(net: nn.Module, items: list[Any], wanted: Any) -> list[Any]:
        return list(explain(net, items, method=chosen_method, target=wanted, processor=processor, recipe=chosen,
                            on_error="raise", **options))

    trained = run(model, pictures, target)
    targets = [list(map(int, e.indices)) for e in trained]
    if not chosen_method.takes_target:  # DFF: its own concepts, compared map by map
        groups: dict[tuple[int, ...] | None, list[int]] = {None: list(range(len(pictures)))}
    else:
        union = tuple(dict.fromkeys(t for ts in targets for t in ts))
        if len(union) <= MAX_JOINT_TARGETS:  # one batched call per step, for all classes at once
            groups = {union: list(range(len(pictures)))}
        else:  # images sharing their targets share a call
            groups = {}
            for i, t in enumerate(targets):
                groups.setdefault(tuple(t), []).append(i)

    def flat(heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = heatmap[mask] if mask.sum() > 1 else heatmap.ravel()
        return np.abs(m) if chosen_method.signed or options.get("signed") else m  # signed maps: by magnitude

    copied = copy.deepcopy(model)
    try:
        param = next(copied.parameters())
        probe = chosen.image_tensor(processor(images=pictures[0], return_tensors="pt")).to(param.device, param.dtype)
        blocks = forward_order(copied, candidate_blocks(copied), chosen.model_inputs(copied, probe))
        if not blocks:
            raise XAIRecipesError(f"{type(model).__name__} has no parametrised block that runs in its forward pass")
        order = blocks[::-1]  # head first
        counts = cascade(len(order), layers)
        steps, correlation, ssim, per_map, newly = [], [], [], [], []
        done = 0
        devices = sorted({p.device.index or 0 for p in copied.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for count in counts:
                for block in order[done:count]:
                    randomise(block)
                newly.append([b.name for b in order[done:count]])
                done = count
                randomised: list[Any] = [None] * len(pictures)
                for wanted, members in groups.items():
                    explained = run(copied, [pictures[i] for i in members], None if wanted is None else list(wanted))
                    for i, exp in zip(members, explained):
                        randomised[i] = exp
                rhos, similarities = [], []
                for before, after, wanted in zip(trained, randomised, targets):
                    mask = np.asarray(before.coverage, bool)
                    pairs = (list(enumerate(range(min(len(before.heatmaps), len(after.heatmaps)))))
                             if not chosen_method.takes_target else
                             [(j, list(after.indices).index(t)) for j, t in enumerate(wanted)])
                    for j, k in pairs:
                        a, b = flat(before.heatmaps[j], mask), flat(after.heatmaps[k], mask)
                        rhos.append(_rank_correlation(a, b))
                        s = _ssim(np.abs(before.heatmaps[j]), np.abs(after.heatmaps[k]))
                        if s is not None:
                            similarities.append(s)
                steps.append(order[count - 1].name)
                per_map.append(rhos)
                correlation.append(float(np.mean(rhos)))
                ssim.append(float(np.mean(similarities)) if similarities else float("nan"))
    finally:
        del copied
    last = correlation[-1]
    passed = bool(last < threshold)
    reason = None if passed else (
        f"maps barely change when the model's weights are randomised (rank correlation {last:.3f} at the last "
        f"step): they do not explain this model")
    return SanityReport(
        method=chosen_method.name, steps=steps, correlation=correlation, passed=passed, threshold=threshold,
        reason=reason, blocks=newly, per_map=per_map, ssim=None if all(np.isnan(ssim)) else ssim, targets=targets,
    )


__all__ = ["SanityReport", "parameter_randomisation", "candidate_blocks", "forward_order", "randomise", "cascade",
           "MAX_STEPS", "REFERENCE"]
