"""What the attention methods cost on a ViT-B/16 next to bare inference and next to the reference pattern.

    python benchmarks/bench_attention.py [--rounds 3] [--batch 1] [--device cpu|cuda] [--threads N]
    python benchmarks/bench_attention.py --small      # a 4-block, 192-wide ViT at 112 px: a quick smoke run

Everything timed runs in this one process, on one model: ``ViTForImageClassification`` with random
weights and the ViT-B/16 configuration (``ViTConfig(num_labels=1000)``: 224 px, 16-px patches, 12
blocks, 768 wide, 1000 labels; ``ViTConfig()`` alone has 2 labels). One table is printed, one row
per method and target count:

  bare inference     ``model(pixel_values=x)`` under ``torch.inference_mode()`` with the model's
                     default attention implementation (SDPA). Every "× bare" is a time divided by
                     this one, measured in the same round just before the row's group.
  run() T=1 / T=10   each method as the engine runs it: ``with borrowed(model, eager_attention=True):
                     method.run(Batch(model, recipe, x, choose, options=defaults))`` with ``choose``
                     returning [0] or [0..9] per image. Checked against the issue's targets:
                     attention, rollout ≤ 1.3×; gradient-rollout, legrad ≤ 2.5× (T=1), ≤ 4× (T=10).
  reference          for the class-specific methods, the pattern of Chefer et al.'s and LeGrad's
                     reference code: per target, one eager forward with ``output_attentions=True``
                     (and ``output_hidden_states=True`` for LeGrad), then the gradient of that
                     target's score w.r.t. the attention maps (``torch.autograd.grad``: no parameter
                     gradients, so a little cheaper than their ``backward()``; LeGrad: one grad
                     per block of that block's class score, as its code does), then the map.
                     "speed-up" = reference / ours, median over rounds of the same-round ratio.
                     Before timing, the reference maps are compared with ours (max |diff|).
  explain()          ``xai_recipes.explain(model, image, processor=ViTImageProcessor(), method=M,
                     target=[...])`` on one 300×400 PIL image: preprocessing, the method and the warp
                     of the maps back onto the image. "× e2e" = over processor + bare inference of
                     the same image in the same round.

Timing: one warm-up round (every operation except the T=10 reference and T=10 explain(), whose
kernels their T=1 siblings warm), then ``--rounds`` rounds; each round runs one group per method
(in an order rotated each round), each group starting with its own bare inference and processor +
bare inference, so load from other processes that comes and goes hits both sides of a ratio alike.
Times shown are medians over rounds; ratios are medians over rounds of same-round ratios. On CUDA
every timed call is bracketed by ``torch.cuda.synchronize()``. Torch threads are left as the
machine sets them unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

import xai_recipes
from xai_recipes.method import Batch
from xai_recipes.modelstate import borrowed

METHODS = ("attention", "rollout", "gradient-rollout", "legrad")
CLASS_SPECIFIC = ("gradient-rollout", "legrad")
TARGET_COUNTS = (1, 10)
#: the issue's limits on run() / bare inference, by method and target count
LIMITS = {("attention", 1): 1.3, ("attention", 10): 1.3, ("rollout", 1): 1.3, ("rollout", 10): 1.3,
          ("gradient-rollout", 1): 2.5, ("gradient-rollout", 10): 4.0, ("legrad", 1): 2.5, ("legrad", 10): 4.0}
IMAGE_HW = (300, 400)  # the explain() image: photo-sized, resized by the processor


# --------------------------------------------------------------------------------------------
# Setup


def make_config(small: bool) -> ViTConfig:
    if small:
        return ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                         image_size=112, patch_size=16, num_labels=1000)
    return ViTConfig(num_labels=1000)  # ViT-B/16 at 224 px (the default config has 2 labels)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def minmax_maps(relevance: torch.Tensor, grid: tuple[int, int], input_hw: tuple[int, int]) -> torch.Tensor:
    """``B×K`` patch relevances → ``B×H×W`` bilinear-upsampled maps, each min-max scaled (the references' way)."""
    maps = torch.nn.functional.interpolate(relevance.reshape(-1, 1, *grid), size=input_hw, mode="bilinear",
                                           align_corners=False)[:, 0]
    lo = maps.flatten(1).min(-1).values[:, None, None]
    hi = maps.flatten(1).max(-1).values[:, None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


class Bench:
    def __init__(self, small: bool, batch: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.config = make_config(small)
        self.device = device
        self.model = ViTForImageClassification(self.config).eval().to(device)
        self.recipe = xai_recipes.find_recipe(self.model)
        size = self.config.image_size
        self.processor = ViTImageProcessor(size={"height": size, "width": size})
        self.image = random_image(*IMAGE_HW)
        self.x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        self.x1 = self.processor(images=self.image, return_tensors="pt")["pixel_values"].to(device)
        self.grid = (size // self.config.patch_size, size // self.config.patch_size)
        self.sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # ---- the baselines
    def bare(self) -> Any:
        with torch.inference_mode():
            return self.model(pixel_values=self.x)

    def bare_eager(self) -> Any:  # information: what eager attention alone costs
        with borrowed(self.model, eager_attention=True), torch.inference_mode():
            return self.model(pixel_values=self.x)

    def bare_e2e(self) -> Any:  # processor + bare inference of the explain() image
        x = self.processor(images=self.image, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            return self.model(pixel_values=x)

    # ---- ours
    def run(self, name: str, targets: list[int]) -> np.ndarray:
        """The method as the engine runs it: ``B×T×H×W`` maps on the model input."""
        method = xai_recipes.get_method(name)
        with borrowed(self.model, eager_attention=method.eager_attention):
            result = method.run(Batch(self.model, self.recipe, self.x, lambda logits: [list(targets)] * len(logits),
                                      options=dict(method.options)))
        return np.asarray(result.maps)

    def explain(self, name: str, targets: list[int]) -> np.ndarray:
        return xai_recipes.explain(self.model, self.image, processor=self.processor, method=name,
                                   target=list(targets)).heatmaps

    # ---- the reference pattern: one forward + gradient per target
    def reference(self, name: str, targets: list[int]) -> np.ndarray:
        fn = self.reference_gradient_rollout if name == "gradient-rollout" else self.reference_legrad
        with borrowed(self.model, eager_attention=True):
            maps = [fn(t) for t in targets]
        return torch.stack(maps, 1).detach().cpu().numpy()  # B×T×H×W

    def reference_gradient_rollout(self, target: int) -> torch.Tensor:
        """Chefer et al.'s ViT explanation generator: R = I, R += mean_h((∇A ⊙ A)⁺) R per block, R[CLS, patches]."""
        out = self.model(pixel_values=self.x, output_attentions=True)
        attentions = list(out.attentions)
        grads = torch.autograd.grad(out.logits[:, target].sum(), attentions)
        B, N = attentions[0].shape[0], attentions[0].shape[-1]
        relevance = torch.eye(N, device=self.device).expand(B, N, N)
        for a, g in zip(attentions, grads):
            cam = (g * a.detach()).clamp(min=0).mean(1)
            relevance = relevance + cam @ relevance
        return minmax_maps(relevance[:, 0, 1:], self.grid, self.x.shape[-2:])

    def reference_legrad(self, target: int) -> torch.Tensor:
        """LeGrad: per block l, ∇ of the head's score on block l's tokens w.r.t. A_l, ⁺, mean over heads
        and queries, summed over blocks."""
        out = self.model(pixel_values=self.x, output_attentions=True, output_hidden_states=True)
        attentions, tokens = list(out.attentions), list(out.hidden_states)[1:]  # hidden_states[0]: the embeddings
        head = lambda z: self.model.classifier(self.model.vit.layernorm(z)[:, 0])  # noqa: E731
        total = None
        for a, z in zip(attentions, tokens):
            (grad,) = torch.autograd.grad(head(z)[:, target].sum(), [a], retain_graph=True)
            relevance = grad.clamp(min=0).mean(1).mean(1)[:, 1:]  # heads, then queries; patch keys
            total = relevance if total is None else total + relevance
        return minmax_maps(total, self.grid, self.x.shape[-2:])


# --------------------------------------------------------------------------------------------
# Timing


def timed(bench: Bench, fn: Callable[[], Any]) -> float:
    bench.sync()
    start = time.perf_counter()
    fn()
    bench.sync()
    return time.perf_counter() - start


def group_ops(bench: Bench, name: str) -> dict[str, Callable[[], Any]]:
    """One method's operations, in the order they run in a round (after the group's two baselines)."""
    ops: dict[str, Callable[[], Any]] = {}
    for T in TARGET_COUNTS:
        targets = list(range(T))
        ops[f"run{T}"] = (lambda t: lambda: bench.run(name, t))(targets)
        if name in CLASS_SPECIFIC:
            ops[f"ref{T}"] = (lambda t: lambda: bench.reference(name, t))(targets)
        ops[f"explain{T}"] = (lambda t: lambda: bench.explain(name, t))(targets)
    return ops


def measure(bench: Bench, rounds: int) -> dict[str, dict[str, list[float]]]:
    """``times[group][op]``: one wall time per round; every group has "bare" and "bare_e2e"."""
    groups = {"eager": {"bare_eager": bench.bare_eager}, **{name: group_ops(bench, name) for name in METHODS}}
    names = list(groups)
    for name in names:  # warm-up: T=10 reference and explain() reuse their T=1 siblings' kernels
        bench.bare(), bench.bare_e2e()
        for op, fn in groups[name].items():
            if op not in ("ref10", "explain10"):
                fn()
    times = {name: {op: [] for op in ("bare", "bare_e2e", *groups[name])} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name]["bare"].append(timed(bench, bench.bare))
            times[name]["bare_e2e"].append(timed(bench, bench.bare_e2e))
            for op, fn in groups[name].items():
                times[name][op].append(timed(bench, fn))
        print(f"  round {r + 1}/{rounds} done, load average {load_average()}", flush=True)
    return times


def over(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b in the same round."""
    return statistics.median(x / y for x, y in zip(a, b))


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------------------------


def check_maps(bench: Bench) -> dict[str, str]:
    """max |ours - reference| over the T=10 maps of each class-specific method (also a warm-up)."""
    notes = {}
    targets = list(range(max(TARGET_COUNTS)))
    for name in CLASS_SPECIFIC:
        ours, ref = bench.run(name, targets), bench.reference(name, targets)
        diff = np.abs(ours - ref).max()
        notes[name] = f"max |ours - reference| over {ref.shape[1]} maps × {ref.shape[0]} image(s): {diff:.1e}"
    return notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round (default 3)")
    ap.add_argument("--batch", type=int, default=1, help="images per run() / reference / bare inference (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--small", action="store_true", help="a 4-block, 192-wide ViT at 112 px: a quick smoke run")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the machine's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    bench = Bench(args.small, args.batch, device)
    c = bench.config
    params = sum(p.numel() for p in bench.model.parameters()) / 1e6
    print(f"xai_recipes attention benchmark: {'small ViT (smoke config)' if args.small else 'ViT-B/16'} random init, "
          f"{c.num_hidden_layers} blocks × {c.num_attention_heads} heads, width {c.hidden_size}, "
          f"{c.num_labels} labels, {params:.1f} M parameters, recipe {bench.recipe.name!r}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", default attention {bench.model.config._attn_implementation!r}")
    print(f"input {tuple(bench.x.shape)} ({bench.grid[0]}×{bench.grid[1]} patches + CLS = "
          f"{bench.grid[0] * bench.grid[1] + 1} tokens); explain() image {IMAGE_HW[0]}×{IMAGE_HW[1]} → "
          f"{tuple(bench.x1.shape)}; 1 warm-up round + {args.rounds} rounds; load average {load_average()}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: other processes are using the CPU; timings may be noisy")
    notes = check_maps(bench)
    times = measure(bench, args.rounds)

    W = 132
    print("-" * W)
    print(f"{'':<26}{'run()':>11}{'':>8}{'target':>9}{'':>7}{'reference':>12}{'speed-up':>10}"
          f"{'explain()':>12}{'':>8}{'explain()':>12}")
    print(f"{'method':<22}{'T':>4}{'median':>11}{'× bare':>8}{'':>9}{'':>7}{'per target':>12}{'ref/ours':>10}"
          f"{'median':>12}{'× e2e':>8}{'- run()':>12}")
    print("-" * W)
    bare_all = [t for g in times.values() for t in g["bare"]]
    e2e_all = [t for g in times.values() for t in g["bare_e2e"]]
    print(f"{'bare inference (SDPA)':<26}{statistics.median(bare_all) * 1000:8.1f} ms{1.0:7.2f}×"
          f"{'':>16}{'':>22}{statistics.median(e2e_all) * 1000:9.1f} ms{1.0:7.2f}×   (e2e: processor + bare, 1 image)")
    g = times["eager"]
    print(f"{'  same, eager attention':<26}{statistics.median(g['bare_eager']) * 1000:8.1f} ms"
          f"{over(g['bare_eager'], g['bare']):7.2f}×   (information: eager instead of SDPA, no gradients)")
    verdicts = []
    for name in METHODS:
        g = times[name]
        for T in TARGET_COUNTS:
            run, ratio, limit = g[f"run{T}"], over(g[f"run{T}"], g["bare"]), LIMITS[(name, T)]
            verdict = "PASS" if ratio <= limit else "FAIL"
            verdicts.append(verdict)
            ref = speedup = ""
            if f"ref{T}" in g:
                ref = f"{statistics.median(g[f'ref{T}']) / T * 1000:9.1f} ms"
                speedup = f"{over(g[f'ref{T}'], run):8.2f}×"
            e2e = g[f"explain{T}"]
            extra = statistics.median(a - b for a, b in zip(e2e, run)) * 1000 if args.batch == 1 else float("nan")
            print(f"{name:<22}{T:>4}{statistics.median(run) * 1000:8.1f} ms{ratio:7.2f}×{f'≤ {limit:g}×':>9}{verdict:>7}"
                  f"{ref:>12}{speedup:>10}{statistics.median(e2e) * 1000:9.1f} ms{over(e2e, g['bare_e2e']):7.2f}×"
                  f"{extra:9.1f} ms")
    print("-" * W)
    for name in CLASS_SPECIFIC:
        print(f"{name}: reference T=10 total {statistics.median(times[name]['ref10']) * 1000:.0f} ms; {notes[name]}")
    print(f"targets: {verdicts.count('PASS')}/{len(verdicts)} PASS. × bare = median over rounds of run() / bare "
          f"inference in the same round; explain() - run() (median of same-round differences): preprocessing, geometry, warp (batch 1 only)")
    print(f"total {time.perf_counter() - started:.0f} s, load average now {load_average()}")


if __name__ == "__main__":
    main()
