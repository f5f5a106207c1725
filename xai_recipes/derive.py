"""Derived recipes: for an image classifier no recipe serves, find one by probing the model.

One forward pass of a random batch of two images records every module's output. Candidates
are blocks (children of a ``ModuleList``/``Sequential``), norm and activation layers and the base
model's own children (not attention internals) whose output (or the first item of the tuple
that transformers' blocks return) is a spatial map of the input: ``B×C×h×w``, channels-last
``B×h×w×C``, or tokens ``B×(k + h·w)×C`` with ``k`` prefix (CLS, register) tokens, where ``h×w``
follows the input size by one stride (``infer_grid``). The target layer is the *last* candidate
whose spatial positions receive gradient from the logits — a CLS-token model's final norm does not (only its CLS token does),
so, as in the hand-written ViT recipe, the last block's input norm is chosen. For DFF the
last spatial candidate of all is the feature layer, and the head is the module that turns its
pooled output (mean, or the first token) into the logits: a linear layer (after a norm), else the
model's own tail replayed on the embedding — verified numerically, or left out.

Detectors (``B×Q×C`` logits: a class logit per object query) and semantic segmenters (``B×C×h×w``:
a class logit per pixel) are probed the same way, the logits reduced to one number per image —
each query's or pixel's largest class logit, summed — and the layer whose output *is* the logits
(a segmenter's classifier) is no candidate. Their derived recipe keeps ``output.logits`` as it is
(the object-detection and image-segmentation tasks turn it into scores) and has no DFF head and no
attention (both read a classifier's ``B×labels`` logits).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .capture import first_tensor, with_first
from .errors import NoRecipeError, RecipeError
from .modelstate import borrowed
from .recipe import Attention, Recipe, infer_grid, output_logits, tokens_to_map

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_KINDS = {2: "classifier", 3: "detector", 4: "segmenter"}  # by the logits' dimensions
_HEADS = {"detector": "ForObjectDetection", "segmenter": "ForSemanticSegmentation"}
_derived: weakref.WeakKeyDictionary[nn.Module, Recipe | str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass
class _Seen:
    name: str
    module: nn.Module
    output: torch.Tensor
    layout: str  # "maps", "channels_last" or "tokens"
    grid: tuple[int, int]
    prefix: int
    order: int


def config_input_size(config: Any) -> tuple[int, int]:
    for source in (config, getattr(config, "vision_config", None)):
        size = getattr(source, "image_size", None) if source is not None else None
        if size:
            return (size, size) if isinstance(size, int) else tuple(size)[-2:]
    return 224, 224


def config_channels(config: Any) -> int:
    for source in (config, getattr(config, "vision_config", None)):
        n = getattr(source, "num_channels", None) if source is not None else None
        if n:
            return int(n)
    return 3


def _layout(t: torch.Tensor, batch: int, hw: tuple[int, int]) -> tuple[str, tuple[int, int], int] | None:
    """How ``t`` is spatial in the input of size ``hw``, if it is."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.shape[0] != batch:
        return None
    if t.dim() == 4:
        for layout, (h, w) in (("maps", t.shape[2:]), ("channels_last", t.shape[1:3])):
            if h * w >= 4 and _stride_fits((h, w), hw):
                return layout, (int(h), int(w)), 0
    if t.dim() == 3 and t.shape[1] >= 4:
        try:
            grid, prefix = infer_grid(t.shape[1], hw)
        except RecipeError:
            return None
        if grid[0] * grid[1] >= 4 and t.shape[2] > 1:
            return "tokens", grid, prefix
    return None


def _stride_fits(grid: tuple[int, int], hw: tuple[int, int]) -> bool:
    try:
        return infer_grid(grid[0] * grid[1], hw, max_prefix=0)[0] == tuple(grid)
    except RecipeError:
        return False


def _candidate(name: str, module: nn.Module, parents: dict[int, nn.Module]) -> bool:
    """Main-stream modules: blocks, norm and activation layers, and the base model's own
    children — not the internals of an attention or MLP (they do not carry the feature map)."""
    inner = ("attention", "attn", "mlp", "intermediate", "ffn", "feed_forward")
    if not name or any(word in part for part in name.split(".")[:-1] for word in inner):
        return False
    parent = parents.get(id(module))
    kind = type(module)
    return (isinstance(module, _NORMS) or "Norm" in kind.__name__ or name.count(".") <= 1
            or kind.__module__ == "torch.nn.modules.activation" or "Activation" in kind.__name__
            or isinstance(parent, (nn.ModuleList, nn.Sequential)))


def _to_maps(layout: str) -> Callable[[torch.Tensor, nn.Module, tuple[int, int]], torch.Tensor] | None:
    if layout == "maps":
        return None
    if layout == "channels_last":
        return lambda x, m, hw: x.permute(0, 3, 1, 2)

    def tokens(x: torch.Tensor, m: nn.Module, hw: tuple[int, int]) -> torch.Tensor:
        grid, prefix = infer_grid(x.shape[1], hw)
        return tokens_to_map(x, grid, prefix)

    return tokens


def find_logits(output: Any) -> torch.Tensor:
    """``output.logits``, else the output's only ``B×labels`` tensor (some models put it elsewhere)."""
    if isinstance(output, torch.Tensor) or getattr(output, "logits", None) is not None:
        return output_logits(output)
    tensors = [v for v in (output.values() if hasattr(output, "values") else []) if isinstance(v, torch.Tensor) and v.dim() == 2]
    if len(tensors) != 1:
        raise NoRecipeError(f"the model's output {type(output).__name__} has no logits")
    return tensors[0]


def _probe(model: nn.Module, forward_kwargs: dict[str, Any], hw: tuple[int, int]) -> tuple[list[_Seen], torch.Tensor]:
    param = next(model.parameters())
    x = torch.randn(2, config_channels(model.config), *hw, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    seen: dict[int, _Seen] = {}
    runs: dict[int, int] = {}
    order = [0]

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            runs[id(module)] = runs.get(id(module), 0) + 1
            tensor = first_tensor(output)
            found = _layout(tensor, 2, hw)
            if found:
                order[0] += 1
                seen[id(module)] = _Seen(name, module, tensor, *found, order[0])
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if _candidate(n, m, parents)]
    try:
        with torch.enable_grad():
            logits = find_logits(model(pixel_values=x, **forward_kwargs))
    finally:
        for h in handles:
            h.remove()
    # a layer run twice cannot be hooked per pass; a segmenter's classifier outputs the logits themselves
    once = [s for s in seen.values() if runs[id(s.module)] == 1 and not _same(s.output, logits)]
    return sorted(once, key=lambda s: s.order), logits


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` holds the logits ``b``, maybe channels-last (a per-pixel linear classifier, permuted after)."""
    if a.numel() != b.numel() or a.dim() != b.dim():
        return False
    views = (a, a.permute(0, 3, 1, 2)) if a.dim() == 4 else (a,)
    return any(v.shape == b.shape and torch.equal(v.detach(), b.detach()) for v in views)


def _winners(logits: torch.Tensor) -> torch.Tensor:
    """The probe's scalar: per classifier row, detector query (``B×Q×C``) or segmenter pixel
    (``B×C×h×w``), the largest class logit, summed."""
    return (logits.max(1) if logits.dim() == 4 else logits.max(-1)).values.sum()


def _scales_with_input(model: nn.Module, kwargs: dict[str, Any], hw: tuple[int, int],
                       seen: list[_Seen]) -> tuple[list[_Seen], bool]:
    """Keep the candidates whose grid follows a second, wider input (a Perceiver's latents, say,
    look like a 16×16 grid but do not move with the input). Models that take one input size
    only cannot be checked: then all candidates stay, and the description says so. The wider input
    grows by a multiple of 16 px, else of 32 (feature pyramids that add strides 8 to 32 need it)."""
    for step in (16, 32):
        wider = (hw[0], hw[1] + max(hw[1] // 2, step) // step * step)
        try:
            with torch.no_grad():
                again, _ = _probe(model, kwargs, wider)
            break
        except Exception:  # noqa: BLE001 - fixed-size models refuse other sizes
            continue
    else:
        return seen, False
    grids = {s.name: (s.layout, s.grid, s.prefix) for s in again}
    return [s for s in seen if s.name in grids and grids[s.name][0] == s.layout and grids[s.name][2] == s.prefix
            and grids[s.name][1][0] == s.grid[0] and grids[s.name][1][1] > s.grid[1]], True


def _spatial_grad(seen: list[_Seen], logits: torch.Tensor) -> list[bool]:
    outputs = [s.output for s in seen]
    grads = torch.autograd.grad(_winners(logits), outputs, allow_unused=True)
    flags = []
    for s, g in zip(seen, grads):
        if g is None:
            flags.append(False)
            continue
        spatial = g[:, s.prefix:] if s.layout == "tokens" else g
        flags.append(bool(spatial.abs().amax() > 1e-12))
    return flags


def _replay(feature: _Seen, kwargs: dict[str, Any], hw: tuple[int, int]) -> Callable[[nn.Module], Callable]:
    """Head factory for models whose head is not one linear layer (a conv and activation after
    pooling, two averaged heads): the model's own tail, run with the feature layer's output
    replaced by the embedding at every position, so that pooling gives back the embedding."""
    name, shape, layout = feature.name, tuple(feature.output.shape[1:]), feature.layout  # not the probe's tensors

    def factory(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        layer = model.get_submodule(name)

        def head(vec: torch.Tensor) -> torch.Tensor:
            n = len(vec)
            at = {"maps": (slice(None), slice(None), None, None), "channels_last": (slice(None), None, None, slice(None)),
                  "tokens": (slice(None), None, slice(None))}[layout]
            filled = vec[at].expand(n, *shape).contiguous()
            handle = layer.register_forward_hook(
                lambda module, args, output: with_first(output, filled.to(first_tensor(output).dtype)))
            try:
                x = torch.zeros(n, config_channels(model.config), *hw, dtype=filled.dtype, device=filled.device)
                return find_logits(model(pixel_values=x, **kwargs))
            finally:
                handle.remove()

        return head

    return factory


def _head(model: nn.Module, feature: _Seen, logits: torch.Tensor, kwargs: dict[str, Any],
          hw: tuple[int, int]) -> tuple[Callable | None, str, str]:
    """(head factory, pooling, how) such that head(pool(feature output)) == logits, or (None, "mean", why not)."""
    out = feature.output.detach()
    pooled = {"mean": (out.mean((2, 3)) if feature.layout == "maps" else
                       out.mean((1, 2)) if feature.layout == "channels_last" else out[:, feature.prefix:].mean(1))}
    if feature.layout == "tokens" and feature.prefix:
        pooled["cls"] = out[:, 0]
    names = {id(m): n for n, m in model.named_modules()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == logits.shape[-1]]
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm,)) and m.normalized_shape[-1] == out.shape[-1 if feature.layout != "maps" else 1]]
    for linear in reversed(linears):
        for chain in [[], *[[n] for n in reversed(norms)]]:
            head = nn.Sequential(*chain, linear)
            for pooling, vec in pooled.items():
                with torch.no_grad():
                    try:
                        ok = torch.allclose(head(vec), logits.detach(), atol=1e-4, rtol=1e-3)
                    except RuntimeError:
                        ok = False
                if ok:
                    path = [names[id(m)] for m in chain + [linear]]
                    return (lambda m, p=path: nn.Sequential(*[m.get_submodule(n) for n in p])), pooling, " + ".join(path)
    replay = _replay(feature, kwargs, hw)
    try:
        with torch.no_grad():
            ok = torch.allclose(replay(model)(pooled["mean"]), logits.detach(), atol=1e-4, rtol=1e-3)
    except Exception:  # noqa: BLE001 - a tail that cannot take the replaced output
        ok = False
    if ok:
        return replay, "mean", f"the model's own layers after {feature.name}, replayed on the pooled embedding"
    return None, "mean", "neither a linear head nor the model's own tail reproduces the logits from it (DFF unavailable)"


def _attention(model: nn.Module, kwargs: dict[str, Any], hw: tuple[int, int], feature: _Seen,
               head: Callable | None, pooling: str) -> tuple[Attention | None, str]:
    """The model's self-attention probabilities, found by one probe in eager attention: modules
    whose output (or an item of the tuple they return) is ``B×heads×N×N`` with rows summing to 1
    over prefix + patch-grid tokens, each run once, each inside a block of a ``ModuleList``. The
    readout rows are those of the last attention that receive gradient from the logits (CLS);
    when patch rows do too, the patch rows' mean. LeGrad's per-block score is the feature layer
    (a per-token norm) + pooling + head, kept only if it reproduces the logits."""
    param = next(model.parameters())
    x = torch.randn(2, config_channels(model.config), *hw, generator=torch.Generator().manual_seed(1)).to(param.device, param.dtype)
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[int, tuple[nn.Module, int, torch.Tensor]] = {}
    runs: dict[int, int] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        runs[id(module)] = runs.get(id(module), 0) + 1
        if not isinstance(output, tuple):
            return
        for item, t in enumerate(output):
            # B×heads×N×K, or torch's MultiheadAttention's B×N×K (heads averaged; SigLIP's pooling head)
            dims = 3 if isinstance(module, nn.MultiheadAttention) else 4
            if isinstance(t, torch.Tensor) and t.dim() == dims and t.shape[0] == 2 and t.shape[-1] >= 4:
                if torch.allclose(t.detach().sum(-1), torch.ones((), dtype=t.dtype), atol=1e-3):
                    found.setdefault(id(module), (module, item, t))

    extra: dict[str, Any] = {}
    for extra in ({}, {"output_attentions": True}):  # older models return probabilities only when asked
        found.clear()
        runs.clear()
        handles = [m.register_forward_hook(hook) for m in model.modules()]
        try:
            with borrowed(model, eager_attention=True), torch.enable_grad():
                logits = find_logits(model(pixel_values=x.detach().requires_grad_(True), **kwargs, **extra))
        except Exception as exc:  # noqa: BLE001 - no attention is not an error: the CAM methods still work
            return None, f"no attention found (eager probe failed: {type(exc).__name__})"
        finally:
            for h in handles:
                h.remove()
        if found:
            break
    # the innermost module giving each probability tensor (an attention block wraps its self-attention)
    by_tensor: dict[int, tuple[nn.Module, int, torch.Tensor]] = {}
    for module, item, t in found.values():
        if runs[id(module)] == 1:
            by_tensor.setdefault(id(t), (module, item, t))
    attn = sorted(by_tensor.values(), key=lambda e: list(found).index(id(e[0])))
    if attn:  # only attention the logits depend on (SigLIP's classifier mean-pools; its pooling head is unused)
        grads = torch.autograd.grad(logits.max(-1).values.sum(), [e[2] for e in attn], allow_unused=True, retain_graph=True)
        attn = [e for e, g in zip(attn, grads) if g is not None and bool(g.abs().amax() > 0)]
    if not attn:
        return None, "no self-attention probabilities found (not an attention model, or SDPA could not be switched off)"
    n = attn[-1][2].shape[-1]
    patch = getattr(model.config, "patch_size", None)
    if isinstance(patch, int) and n - (hw[0] // patch) * (hw[1] // patch) >= 0:  # registers: trust the config
        prefix = n - (hw[0] // patch) * (hw[1] // patch)
    else:
        try:
            prefix = infer_grid(n, hw)[1]
        except RecipeError:
            return None, f"its attention's {n} tokens fit no patch grid"
    shape = tuple(attn[-1][2].shape[-2:])
    # one token sequence through every attention (a plain ViT), or only the last stage's (PVT, reduced keys)?
    spans = shape[0] == shape[1] and all(tuple(e[2].shape[-2:]) == shape for e in attn)
    attn = [e for e in attn if tuple(e[2].shape[-2:]) == shape]
    items = {e[1] for e in attn}
    if len(items) != 1:
        return None, "its attention modules return their probabilities at different places"

    def block_of(module: nn.Module) -> nn.Module | None:
        while id(module) in parents:
            parent = parents[id(module)]
            if isinstance(parent, nn.ModuleList):
                return module
            module = parent
        return None

    blocks = [block_of(m) for m, _, _ in attn]
    (grad,) = torch.autograd.grad(logits.max(-1).values.sum(), [attn[-1][2]], allow_unused=True)
    if grad is None:
        return None, "the logits do not depend on its last attention"
    rows = (grad.abs().flatten(0, -3).sum(0).sum(-1) > 1e-12).nonzero().flatten().tolist()
    readout = tuple(rows) if rows and max(rows) < prefix else None
    module_names = [names[id(m)] for m, _, _ in attn]
    block_names = [names[id(b)] for b in blocks] if all(b is not None for b in blocks) else None
    score: Callable | None = None
    if head is not None and block_names and isinstance(feature.module, _NORMS) and feature.layout == "tokens":

        def per_block(m: nn.Module, norm_name: str = feature.name, pooling: str = pooling, prefix: int = prefix) -> Callable:
            norm, h = m.get_submodule(norm_name), head(m)
            return lambda z: h(norm(z)[:, 0] if pooling == "cls" else norm(z)[:, prefix:].mean(1))

        last = first_tensor_of(model, block_names[-1], {**kwargs, **extra}, x.detach())
        with torch.no_grad():
            if torch.allclose(per_block(model)(last), logits.detach(), atol=1e-4, rtol=1e-3):
                score = per_block
    spec = Attention(
        modules=lambda m, ns=tuple(module_names): [m.get_submodule(n) for n in ns],
        item=items.pop(),
        prefix=lambda m, p=prefix: p,
        readout=readout,
        blocks=None if score is None else (lambda m, ns=tuple(block_names): [m.get_submodule(n) for n in ns]),
        score=score,
        spans_model=spans,
        forward_kwargs=extra,
    )
    where = f"{len(module_names)} attention modules ({module_names[-1]}, ...), {prefix} prefix token(s), readout " + (
        f"rows {list(readout)}" if readout else "mean of the patch rows") + ("" if spans else ", not spanning the model")
    return spec, where + ("" if score else "; no per-block score for LeGrad")


def _stages(targets: list[_Seen]) -> list[str] | None:
    """A hierarchical model's stages: the last candidate layer at each grid, the grid shrinking from
    one to the next and ending at the target layer (same layout, no prefix tokens); ``None`` for a
    model with one grid (a ViT) or one whose grid grows again."""
    target = targets[-1]
    ends: list[_Seen] = []
    for s in (s for s in targets if s.layout == target.layout and s.prefix == 0):
        if ends and s.grid == ends[-1].grid:
            ends[-1] = s
        elif not ends or s.grid[0] * s.grid[1] < ends[-1].grid[0] * ends[-1].grid[1]:
            ends.append(s)
        else:
            return None
    return [s.name for s in ends] if len(ends) > 1 and ends[-1] is target else None


def _default_method(attention: Attention | None) -> str:
    """A derived recipe's default, from the trained test models (tests/test_localisation.py): gradient
    rollout for a CLS readout through the whole model (DeiT 0.73, ViT 0.70; GradCAM 0.52 / 0.50),
    LeGrad for mean-pooled tokens (timm reg4-GAP 0.78, GradCAM 0.60), else GradCAM."""
    if attention is None:
        return "gradcam"
    if attention.readout is not None and attention.spans_model:
        return "gradient-rollout"
    return "legrad" if attention.score else "gradient-rollout" if attention.spans_model else "gradcam"


def first_tensor_of(model: nn.Module, name: str, kwargs: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The (first) output tensor of submodule ``name`` on input ``x``."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(first_tensor(o)))
    try:
        with torch.no_grad():
            model(pixel_values=x, **kwargs)
    finally:
        handle.remove()
    return seen[-1]


def _interpolates(model: nn.Module) -> bool:
    """Whether ``interpolate_pos_encoding=True`` reaches position embeddings (any input size)."""
    takes = inspect.signature(model.forward).parameters
    if "interpolate_pos_encoding" in takes:
        return True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
    return var_kw and any("interpolate_pos_encoding" in inspect.signature(m.forward).parameters for m in model.modules())


def derive(model: nn.Module) -> Recipe:
    """A recipe for ``model`` found by probing it, or :class:`NoRecipeError` saying why not."""
    with _lock:
        cached = _derived.get(model)
        if cached is None:
            try:
                with borrowed(model):  # eval mode for the probes; the caller's modes restored exactly
                    cached = _derive(model)
            except NoRecipeError as exc:
                cached = str(exc)
            _derived[model] = cached
    if isinstance(cached, str):
        raise NoRecipeError(cached)
    return cached


def _derive(model: nn.Module) -> Recipe:
    model_type = getattr(model.config, "model_type", type(model).__name__)
    kwargs = {"interpolate_pos_encoding": True} if _interpolates(model) else {}
    try:
        hw = config_input_size(model.config)
        try:
            seen, logits = _probe(model, kwargs, hw)
        except Exception:  # noqa: BLE001 - passed through **kwargs to a forward that does not take it
            if not kwargs:
                raise
            kwargs = {}
            seen, logits = _probe(model, kwargs, hw)
        seen, checked = _scales_with_input(model, kwargs, hw, seen)
        kind = _KINDS.get(logits.dim())
        if kind is None or kind != "classifier" and not type(model).__name__.endswith(_HEADS[kind]):
            raise NoRecipeError(f"cannot derive a recipe for {model_type!r}: its logits are {tuple(logits.shape)}, not "
                                "B×labels (a classifier), B×queries×classes (a *ForObjectDetection) or B×classes×h×w "
                                "(a *ForSemanticSegmentation)")
        flags = _spatial_grad(seen, logits) if seen else []
    except NoRecipeError:
        raise
    except Exception as exc:  # a model that cannot run a plain probe: say so, typed
        raise NoRecipeError(f"cannot derive a recipe for {model_type!r}: the probe forward pass failed "
                            f"({type(exc).__name__}: {exc}); pass recipe= or write a recipe plugin") from None
    targets = [s for s, ok in zip(seen, flags) if ok]
    if not targets:
        raise NoRecipeError(f"cannot derive a recipe for {model_type!r}: no block or norm layer outputs a spatial "
                            "map (B×C×h×w, or tokens on a patch grid) that the logits depend on position by position; "
                            "pass recipe= or write a recipe plugin")
    target = targets[-1]
    stages = _stages(targets)
    feature = [s for s in seen if s.layout == target.layout][-1]
    if kind == "classifier":
        head, pooling, how = _head(model, feature, logits, kwargs, hw)
        attention, where = _attention(model, kwargs, hw, feature, head, pooling)
    else:  # DFF and the attention readouts explain a classifier's B×labels logits
        head, pooling, how = None, "mean", f"none (a {kind}'s logits {tuple(logits.shape)[1:]})"
        attention, where = None, f"not probed (a {kind})"
    layout = {"maps": "B×C×h×w map", "channels_last": "B×h×w×C map",
              "tokens": f"tokens B×({target.prefix}+h·w)×C"}[target.layout]
    why = (f"derived: {target.name} is the last block/norm whose {layout} ({target.grid[0]}×{target.grid[1]} at "
           f"{config_input_size(model.config)[0]}×{config_input_size(model.config)[1]}) gets gradient at every position; "
           f"DFF features {feature.name}, head {how} ({pooling} pooling)"
           + ("" if checked else "; the model takes one input size, so the grid was not checked at a second one")
           + f"; attention: {where}")
    return Recipe(
        name=f"derived:{model_type}",
        model_types=(model_type,),
        target_layers=lambda m, n=target.name: [m.get_submodule(n)],
        logits=find_logits,
        reshape=_to_maps(target.layout),
        head=head,
        feature_layer=lambda m, n=feature.name: m.get_submodule(n),
        pooling=pooling if pooling in ("mean", "cls") else "mean",
        forward_kwargs=kwargs,
        attention=attention,
        stages=None if stages is None else lambda m, names=stages: [m.get_submodule(n) for n in names],
        default_method=_default_method(attention),
        description=why,
        plugin="xai_recipes (derived)",
    )
