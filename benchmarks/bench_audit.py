"""Audit throughput against explain()'s batched throughput on the same images (the clustering's cost apart).

    python benchmarks/bench_audit.py [--images 400] [--batch-size 32] [--model tests/trained/resnet_watermark]

Both runs explain the same labelled synthetic scenes (tests/watermark.py) for their class with the recipe's
default method, one torch thread. ``audit`` adds per image a 16×16 map (and the on-object share), then per class
SpRAy (k-NN graph, eigengap, spectral clustering) and the concepts (one forward per sampled image + NMF); its
``timings`` give each part, so the explanation's throughput and the analysis's cost are reported apart.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from synthetic import SHAPES  # noqa: E402
from watermark import held_out  # noqa: E402

from xai_recipes import audit, explain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=str(ROOT / "tests" / "trained" / "resnet_watermark"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    scenes = held_out(seed=5, per_class=args.images // len(SHAPES))
    n = len(scenes)
    list(explain(args.model, [s.image for s in scenes[:8]], batch_size=8))  # warm: model loaded, geometry measured
    t0 = time.perf_counter()
    for label in range(len(SHAPES)):  # explain() for each class's images, as the audit explains them
        for _ in explain(args.model, [s.image for s in scenes if s.label == label], target=label,
                         batch_size=args.batch_size):
            pass
    explain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = audit(args.model, [(s.image, SHAPES[s.label], s.box) for s in scenes], batch_size=args.batch_size,
                   figures=False)
    audit_s = time.perf_counter() - t0
    t = result.timings
    print(f"{n} images of {Path(args.model).name}, batch {args.batch_size}, {result.method}, 1 torch thread")
    print(f"explain() batched:        {n / explain_s:7.1f} images/s ({explain_s:.2f} s)")
    print(f"audit, explanation part:  {n / t['explain']:7.1f} images/s ({t['explain']:.2f} s: "
          f"{t['explain'] / explain_s:.2f}× explain())")
    print(f"audit, end to end:        {n / audit_s:7.1f} images/s ({audit_s:.2f} s)")
    print(f"  strategies (SpRAy) {t['strategies']:.2f} s, concepts {t['concepts']:.2f} s, "
          f"flagged: {', '.join(result.flagged) or 'none'}")


if __name__ == "__main__":
    main()
