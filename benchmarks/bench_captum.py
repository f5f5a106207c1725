"""What Captum's attributions cost through xai-recipes, next to bare inference and Captum's own per-target loop.

    python benchmarks/bench_captum.py [--rounds 3] [--threads 1] [--methods integrated-gradients saliency ...]

Model: the trained tiny ResNet of ``tests/trained/resnet`` (4 classes, 64-px input) on one held-out
synthetic image (``tests/synthetic.make_set(seed=2024)``), its saved processor. T targets cycle
through the 4 classes (T = 10 repeats them: only the cost matters here).

Per method, medians over ``--rounds``:

  bare           one forward of the image (``inference_mode``).
  ours T         ``xai_recipes.methods.captum.attributions`` for T targets: gradient methods expand the
                 image T times along the batch and make one Captum call (IG: ``internal_batch_size``
                 rows at a time); perturbation methods make one Captum call per target and replay the
                 first target's forward passes for the others.
  captum loop T  Captum's own per-target loop: the same Captum class and options (``n_steps``,
                 ``internal_batch_size`` / ``perturbations_per_eval``, samples, seed), called once per
                 target on the image, every call running the model.

Printed: ms per call, ``ours / bare``, and ``loop / ours`` (> 1: ours is faster) for T = 1 and T = 10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

METHODS = ["integrated-gradients", "saliency", "input-x-gradient", "smoothgrad", "guided-backprop", "deeplift",
           "gradient-shap", "occlusion", "feature-ablation", "lime", "kernel-shap"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch
    from synthetic import make_set
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import xai_recipes
    from xai_recipes import LogitsModel
    from xai_recipes.methods import captum as ours

    torch.set_num_threads(args.threads)
    path = ROOT / "tests" / "trained" / "resnet"
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    recipe = xai_recipes.find_recipe(model)
    image = make_set(seed=2024, n=1, sizes=[(72, 96)])[0].image
    x = processor(images=image, return_tensors="pt")["pixel_values"]
    wrapped = LogitsModel(model, recipe)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def bare() -> None:
        with torch.inference_mode():
            wrapped(x)

    def loop(name: str, options: dict, targets: list[int]) -> None:
        spec = ours.SPECS[name]
        stochastic = bool(options.get("noise_tunnel")) or name in ("gradient-shap", "lime", "kernel-shap")
        mask = ours.superpixels(x, options["segments"]) if "segments" in options else None
        for t in targets:  # Captum's own way: one call per target, each running the model
            if stochastic:
                torch.manual_seed(options.get("seed", 0))
            if spec.family == "gradient":
                ours.gradient_call(name, options, wrapped, x, [t])
            else:
                with torch.no_grad():
                    ours.perturbation_call(name, options, wrapped, x, [t], mask)

    print(f"tiny trained ResNet (tests/trained/resnet), 1 image 64×64, torch threads {args.threads}, "
          f"median of {args.rounds} rounds")
    print(f"{'method':22} {'bare ms':>8} {'ours T=1':>9} {'×bare':>7} {'loop/ours T=1':>14} {'ours T=10':>10} "
          f"{'×bare':>7} {'loop/ours T=10':>15}")
    for name in args.methods:
        options = dict(ours.SPECS[name].options)
        row = {}
        for T in (1, 10):
            targets = [i % 4 for i in range(T)]
            b, o, lp = [], [], []
            for _ in range(args.rounds):
                b.append(timed(bare))
                o.append(timed(lambda: ours.attributions(model, recipe, x, [targets], name, options)))
                lp.append(timed(lambda: loop(name, options, targets)))
            row[T] = statistics.median(b), statistics.median(o), statistics.median(lp)
        (b1, o1, l1), (b10, o10, l10) = row[1], row[10]
        print(f"{name:22} {1000 * b1:8.2f} {1000 * o1:9.1f} {o1 / b1:7.0f} {l1 / o1:14.2f} {1000 * o10:10.1f} "
              f"{o10 / b10:7.0f} {l10 / o10:15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
