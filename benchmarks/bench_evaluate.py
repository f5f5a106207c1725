"""What ``xai_recipes.evaluate()`` costs per image, metric by metric, next to bare inference.

    python benchmarks/bench_evaluate.py [--rounds 3] [--images 8] [--large-rounds 3] [--large-images 1] [--threads N]
                                        [--device cpu|cuda]
    python benchmarks/bench_evaluate.py --small      # the two tiny models, 3 images: a smoke run

Everything timed runs in this one process, on three models:

  resnet, vit   the trained tiny ResNet and ViT of ``tests/trained/{resnet,vit}`` (4 shape classes,
                64-px inputs, their saved processors) on ``--images`` synthetic images of
                ``tests/synthetic.make_set(seed=2024, sizes=[(72, 96), (80, 80)])``, each with its
                label and object box.
  resnet50      ``ResNetForImageClassification(ResNetConfig(num_labels=1000))``, random weights,
                ``ConvNextImageProcessor`` at 224 px, on the first ``--large-images`` of the same
                synthetic images (their boxes as they are: only timing matters here), label 0.
                Left out by ``--small``.

One table is printed, one section per model, one row per measurement:

  bare inference     per image: processor + ``model(pixel_values=x)`` under ``torch.inference_mode()``,
                     batch 1. Every "× bare" is a time per image divided by this one, measured in
                     the same round (each row's group measures bare inference just before its
                     operation; a round's baseline is the median of those, so one measurement hit
                     by a burst of load does not skew a row).
  explain only       per image: ``explain(model, image, method="gradcam", target=label,
                     processor=processor)`` — what evaluate() spends before any metric.
  evaluate M         ``evaluate(model, data, methods=["gradcam"], metrics=[M], processor=processor)``
                     for M in pointing, energy, deletion, insertion, road. "metric's own" = evaluate
                     - explain only, per image (median of same-round differences): pointing and
                     energy need no forward pass, so theirs is ~0. "forwards/img": model calls and
                     images through the model per image, counted once (untimed) by a hook on the
                     model's first convolution.
  sanity             one ``parameter_randomisation(model, images, method="gradcam", processor=processor)``
                     on ``min(8, images)`` images (what ``evaluate(sanity=True)`` adds per method);
                     ms per image of the set, × bare.
  batched forwards   the issue's target for deletion/insertion: "≤ 2 forwards' worth of time per
                     16 perturbation steps". On the first image's deletion sequence (17 = steps + 1
                     images from ``perturbation_curves`` of its gradcam map): the forward alone on the
                     preprocessed batch of 17 (``recipe.logits(model(**recipe.model_inputs(...)))``
                     under ``borrowed(model)`` and ``inference_mode``, as ``probabilities`` runs it),
                     divided by the same forward on one preprocessed image — checked against ≤ 2
                     (PASS/FAIL, reported, not asserted); then, for information, ``probabilities(
                     model, processor, recipe, images_17, label)`` (preprocessing included) and the
                     preprocessing of the 17 images alone, over the same batch-1 forward.

Timing: one untimed census pass (every operation once on one image, counting forwards; it is the
warm-up too), then rounds; each round runs every row's group (its bare inference, then the
operation) in an order rotated each round, so load from other processes that comes and goes hits
both sides of a ratio alike. Fast operations are repeated within a measurement (so that each
lasts ≥ ~50 ms) and their mean is taken. Times shown are medians over rounds; ratios are medians
over rounds of same-round ratios. ResNet-50's ROAD and deletion/insertion take seconds per image
on a CPU, hence its own ``--large-images`` (default 1) and ``--large-rounds``. Torch threads are
left as the machine sets them unless ``--threads`` is given. ``--device cuda`` puts the models (and
every timed tensor) on the GPU and synchronises it around each timed call: the batched-forward target
is meant for an accelerator, where a batch of 17 small images costs about one forward.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
)

import xai_recipes
from xai_recipes.evaluation import Annotated, evaluate, perturbation_curves, probabilities
from xai_recipes.modelstate import borrowed
from xai_recipes.sanity import parameter_randomisation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from synthetic import make_set  # noqa: E402

METRICS = ("pointing", "energy", "deletion", "insertion", "road")
METHOD = "gradcam"
STEPS = 16  # evaluate()'s default deletion/insertion steps
BATCH_LIMIT = 2.0  # the target: batch-of-17 forward ≤ 2 batch-1 forwards
SANITY_IMAGES = 8  # evaluate()'s default sanity_images
MIN_MEASURE_S = 0.05  # fast operations are repeated until a measurement lasts about this long


# --------------------------------------------------------------------------------------------
# Setup


class Subject:
    """One model with its processor, recipe and annotated images."""

    def __init__(self, name: str, n_images: int, device: torch.device) -> None:
        self.name, self.device = name, device
        samples = make_set(seed=2024, n=n_images, sizes=[(72, 96), (80, 80)])
        if name == "resnet50":
            torch.manual_seed(0)
            self.model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval().to(device)
            self.processor = ConvNextImageProcessor(size={"shortest_edge": 224})
            self.about = "random init, 1000 labels, 224 px"
            labels = [0] * len(samples)
        else:
            folder = ROOT / "tests" / "trained" / name
            self.model = AutoModelForImageClassification.from_pretrained(folder).eval().to(device)
            self.processor = AutoImageProcessor.from_pretrained(folder)
            self.about = f"tiny, trained, {len(self.model.config.id2label)} labels, 64 px"
            labels = [s.label for s in samples]
        self.recipe = xai_recipes.find_recipe(self.model)
        self.images = [Image.fromarray(s.image) for s in samples]
        self.data = [Annotated(im, label, s.box, source=f"synthetic {i}")
                     for i, (im, label, s) in enumerate(zip(self.images, labels, samples))]
        self.params = sum(p.numel() for p in self.model.parameters()) / 1e6
        # the batched-forward check: the first image's deletion sequence (steps + 1 images)
        first = self.data[0]
        heatmap = xai_recipes.explain(self.model, first.image, method=METHOD, target=first.label,
                                      processor=self.processor, recipe=self.recipe).heatmaps[0]
        self.images_17 = perturbation_curves(heatmap, np.asarray(first.image), STEPS)[0]
        self.x1 = self.preprocess([np.asarray(first.image)])
        self.x17 = self.preprocess(self.images_17)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """As ``probabilities`` does: the processor per image, concatenated."""
        return torch.cat([self.recipe.image_tensor(self.processor(images=Image.fromarray(im), return_tensors="pt"))
                          for im in images]).to(self.device)

    # ---- the operations (each over all of ``data`` unless said otherwise)
    def bare(self, data: list[Annotated]) -> None:
        for d in data:
            x = self.processor(images=d.image, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                self.model(pixel_values=x)

    def explain_only(self, data: list[Annotated]) -> None:
        for d in data:
            xai_recipes.explain(self.model, d.image, method=METHOD, target=d.label, processor=self.processor,
                                recipe=self.recipe)

    def evaluate(self, data: list[Annotated], metric: str) -> None:
        evaluate(self.model, data, methods=[METHOD], metrics=[metric], processor=self.processor)

    def sanity(self, data: list[Annotated]) -> Any:
        return parameter_randomisation(self.model, [d.image for d in data], method=METHOD, processor=self.processor,
                                       recipe=self.recipe)

    def forward(self, x: torch.Tensor) -> None:
        with borrowed(self.model), torch.inference_mode():
            self.recipe.logits(self.model(**self.recipe.model_inputs(self.model, x)))

    def probabilities_17(self) -> None:
        probabilities(self.model, self.processor, self.recipe, self.images_17, self.data[0].label)


class Counter:
    """Model calls and images through the model: a hook on the first convolution (the stem/patch embedding)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), model)
        self.calls = self.images = 0

    def __enter__(self) -> "Counter":
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            self.calls += 1
            self.images += int(x.shape[0])

        self.handle = self.module.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------------------------
# Timing


SYNC: Callable[[], None] = lambda: None  # torch.cuda.synchronize with --device cuda


def timed(fn: Callable[[], Any], reps: int = 1) -> float:
    """Mean wall time of ``reps`` calls (the device's queued work finished on both sides)."""
    SYNC()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    SYNC()
    return (time.perf_counter() - start) / reps


def over(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b in the same round."""
    return statistics.median(x / y for x, y in zip(a, b))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def groups_of(s: Subject) -> dict[str, dict[str, Callable[[], Any]]]:
    """Row group → its operations, in the order they run in a round; every group but "batch" starts with bare."""
    data, few = s.data, s.data[:SANITY_IMAGES]
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "explain": {"bare": lambda: s.bare(data), "op": lambda: s.explain_only(data)}}
    for m in METRICS:
        groups[m] = {"bare": lambda: s.bare(data), "op": (lambda m: lambda: s.evaluate(data, m))(m)}
    groups["sanity"] = {"bare": lambda: s.bare(few), "op": lambda: s.sanity(few)}
    groups["batch"] = {"f1": lambda: s.forward(s.x1), "f17": lambda: s.forward(s.x17),
                       "prep17": lambda: s.preprocess(s.images_17), "p17": s.probabilities_17}
    return groups


def census(s: Subject) -> tuple[dict[str, tuple[int, int]], dict[str, dict[str, int]], dict[str, Any]]:
    """Every operation once on one image (the warm-up): forwards per image, repetitions per measurement."""
    one = s.data[:1]
    forwards, info = {}, {}
    counted = {"bare": lambda: s.bare(one), "explain": lambda: s.explain_only(one),
               **{m: (lambda m: lambda: s.evaluate(one, m))(m) for m in METRICS}}
    seconds = {}
    for name, fn in counted.items():
        with Counter(s.model) as c:
            seconds[name] = timed(fn)
        forwards[name] = (c.calls, c.images)
    with Counter(s.model) as c:
        start = time.perf_counter()
        report = s.sanity(s.data[:1])
        seconds["sanity"] = (time.perf_counter() - start) * min(len(s.data), SANITY_IMAGES)
    info["sanity_steps"] = len(report.steps)
    forwards["sanity"] = (c.calls, c.images)
    for name, fn in groups_of(s)["batch"].items():
        seconds[name] = timed(fn)
    n = len(s.data)
    reps = {}
    for group, ops in groups_of(s).items():
        reps[group] = {}
        for op in ops:
            if group == "batch":
                t = seconds[op]
            elif op == "bare":
                t = seconds["bare"] * (min(n, SANITY_IMAGES) if group == "sanity" else n)
            else:
                t = seconds[group] * (1 if group == "sanity" else n)
            reps[group][op] = max(1, math.ceil(MIN_MEASURE_S / max(t, 1e-6)))
    return forwards, reps, info


def measure(s: Subject, rounds: int, reps: dict[str, dict[str, int]]) -> dict[str, dict[str, list[float]]]:
    """``times[group][op]``: one time per round (mean over that measurement's repetitions)."""
    groups = groups_of(s)
    names = list(groups)
    times = {g: {op: [] for op in ops} for g, ops in groups.items()}
    for r in range(rounds):
        for g in names[r % len(names):] + names[:r % len(names)]:
            for op, fn in groups[g].items():
                times[g][op].append(timed(fn, reps[g][op]))
        print(f"  {s.name}: round {r + 1}/{rounds} done, load average {load_average()}", flush=True)
    return times


# --------------------------------------------------------------------------------------------
# Report

W = 118


def header() -> None:
    print(f"{'row':<34}{'img/s':>9}{'ms/img':>10}{'× bare':>9}{'own ms/img':>12}{'own × bare':>12}   "
          f"{'forwards/img (calls, images)':<34}")


def report(s: Subject, times: dict[str, dict[str, list[float]]], forwards: dict[str, tuple[int, int]],
           info: dict[str, Any]) -> list[str]:
    n = len(s.data)
    med = statistics.median
    print("-" * W)
    print(f"{s.name}: {type(s.model).__name__}, {s.about}, {s.params:.2f} M parameters, recipe {s.recipe.name!r}; "
          f"{plural(n, 'image')} ({sorted({im.size for im in s.images})} W×H) → input {tuple(s.x1.shape[-2:])}")
    print("-" * W)
    header()

    def fw(name: str) -> str:
        calls, images = forwards[name]
        return f"{plural(calls, 'call')}, {plural(images, 'image')}"

    k = min(n, SANITY_IMAGES)
    size = {g: (k if g == "sanity" else n) for g in times if g != "batch"}
    # the round's bare inference per image: the median of that round's bare measurements (one per group)
    bare = [med(times[g]["bare"][r] / size[g] for g in size) for r in range(len(times["explain"]["bare"]))]
    b = med(bare)

    def x_bare(op: list[float], images: int) -> float:
        return med(t / images / bb for t, bb in zip(op, bare))

    print(f"{'bare inference (e2e, batch 1)':<34}{1 / b:9.1f}{b * 1000:10.2f}{1.0:8.2f}×{'':>12}{'':>12}   {fw('bare')}")
    explain = times["explain"]["op"]
    x = med(explain) / n
    print(f"{'explain only (' + METHOD + ')':<34}{1 / x:9.1f}{x * 1000:10.2f}{x_bare(explain, n):8.2f}×"
          f"{'':>12}{'':>12}   {fw('explain')}")
    for m in METRICS:
        op = times[m]["op"]
        t = med(op) / n
        own = [a - e for a, e in zip(op, explain)]
        print(f"{'evaluate ' + m:<34}{1 / t:9.1f}{t * 1000:10.2f}{x_bare(op, n):8.2f}×"
              f"{med(own) / n * 1000:+12.2f}{x_bare(own, n):11.2f}×   {fw(m)}")
    op = times["sanity"]["op"]
    t = med(op) / k
    label = f"sanity ({METHOD}, {k} img, {info['sanity_steps']} steps)"
    print(f"{label:<34}{1 / t:9.1f}{t * 1000:10.2f}{x_bare(op, k):8.2f}×{'':>12}{'':>12}   {fw('sanity')} (on 1 image)")
    g = times["batch"]
    f1 = med(g["f1"])
    ratio17 = over(g["f17"], g["f1"])
    verdict = "PASS" if ratio17 <= BATCH_LIMIT else "FAIL"
    print(f"  batched forwards (steps={STEPS}: {STEPS + 1} images of the first image's deletion curve); ms per call; "
          f"× = over the forward alone, batch 1: {f1 * 1000:.2f} ms")
    print(f"{'  forward alone, batch 17':<34}{'':>9}{med(g['f17']) * 1000:10.2f}{ratio17:8.2f}×"
          f"{f'≤ {BATCH_LIMIT:g}× forwards':>24}  {verdict}")
    print(f"{'  probabilities(images_17)':<34}{'':>9}{med(g['p17']) * 1000:10.2f}{over(g['p17'], g['f1']):8.2f}×"
          f"{'':>24}  (info: includes preprocessing 17 images)")
    print(f"{'  preprocessing 17 images':<34}{'':>9}{med(g['prep17']) * 1000:10.2f}{over(g['prep17'], g['f1']):8.2f}×"
          f"{'':>24}  (info: separate from the target)")
    return [verdict]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds for the tiny models (default 3, also with --small)")
    ap.add_argument("--images", type=int, default=None, help="images for the tiny models (default 8; --small 3)")
    ap.add_argument("--large-rounds", type=int, default=3, help="timed rounds for ResNet-50 (default 3)")
    ap.add_argument("--large-images", type=int, default=1, help="images for ResNet-50 (default 1)")
    ap.add_argument("--small", action="store_true", help="only the tiny models, 3 images: a smoke run")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the machine's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    args = ap.parse_args()
    global SYNC
    device = torch.device(args.device)
    if device.type == "cuda":
        SYNC = lambda: torch.cuda.synchronize(device)  # noqa: E731
    rounds = args.rounds or 3
    images = args.images or (3 if args.small else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    plan = [("resnet", images, rounds), ("vit", images, rounds)]
    if not args.small:
        plan.append(("resnet50", args.large_images, args.large_rounds))
    models = ", ".join(f"{m} ({plural(n, 'image')}, {plural(r, 'round')})" for m, n, r in plan)
    print(f"xai_recipes evaluate() benchmark: method {METHOD!r}, metrics {', '.join(METRICS)}; steps {STEPS}; "
          f"models {models}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {where}; 1 census/warm-up pass + rounds; "
          f"load average {load_average()}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: other processes are using the CPU; timings may be noisy (--threads 1 is steadier then)")
    results = []
    for name, n, r in plan:
        s = Subject(name, n, device)
        forwards, reps, info = census(s)
        results.append((s, measure(s, r, reps), forwards, info))
    print("=" * W)
    verdicts = []
    for s, times, forwards, info in results:
        verdicts += report(s, times, forwards, info)
    print("=" * W)
    print("img/s, ms/img: medians over rounds; × bare: median over rounds of time per image / bare inference (processor "
          "+ batch-1 forward; the median of the round's bare measurements) in the same round; own = evaluate - explain only (same round); batched forwards: × = "
          "over the batch-1 forward alone (preprocessed); forwards/img counted on 1 image")
    print(f"batched-forward target (forward alone, batch 17 ≤ {BATCH_LIMIT:g}× batch 1): "
          f"{verdicts.count('PASS')}/{len(verdicts)} PASS (reported, not asserted)")
    print(f"total {time.perf_counter() - started:.0f} s, load average now {load_average()}")


if __name__ == "__main__":
    main()
