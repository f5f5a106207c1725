"""Throughput of ``xai_recipes.ray.explain_dataset`` (Ray Data actors) against the single-process batched path.

    python benchmarks/bench_ray.py [--images 48] [--batch-size 8] [--actors 1 2] [--model demo|resnet]
                                   [--cpus-per-actor 1] [--num-gpus 0] [--address ADDRESS]

Everything runs in this one process, on this machine (or, with ``--address``, on a running cluster):

  model       ``demo`` (default): the bundled real EfficientNet-Lite0 (ImageNet, 224 px,
              ``xai_recipes.demo.build_demo_model``); ``resnet``: the trained tiny ResNet of
              ``tests/trained/resnet`` (64 px). Both loaded by folder, as a cluster would.
  images      ``--images`` synthetic images (``tests/synthetic.make_set``, 160×213 and
              200×200 px) written as JPEG files to a temporary folder: both paths read and decode
              the same files.
  single      ``explain(folder, files, batch_size=B)``, the whole generator consumed, after one
              untimed warm-up call (model loaded and cached, imports done). Torch threads as the
              machine sets them (all cores), then with one thread (what an actor with one CPU
              gets).
  ray N       ``explain_dataset(files, folder, batch_size=B, concurrency=N).materialize()`` on a
              local Ray started here with every core (``num_cpus`` = cores), each actor holding
              ``--cpus-per-actor`` CPUs (so Ray gives its torch that many threads). Two numbers:
              "end to end" includes starting the N actors (process start, imports, model load);
              "actors at work" leaves that out: Ray Data's own throughput of the map operator
              (``Dataset.stats()``: rows over the time from its first task's start to its last
              task's end), the rate a long job settles at.

Printed: one row per path with images/s and its ratio to the single-process path (all threads),
and to the single process on one thread (a like-for-like per core comparison with one actor).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from synthetic import make_set  # noqa: E402


def images(folder: Path, n: int) -> list[str]:
    paths = []
    for i, sample in enumerate(make_set(seed=11, n=n, sizes=[(160, 213), (200, 200)])):
        path = folder / f"image{i:04d}.jpg"
        Image.fromarray(sample.image).save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", choices=["demo", "resnet"], default="demo")
    parser.add_argument("--cpus-per-actor", type=float, default=1)
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (the single path then runs on cuda)")
    parser.add_argument("--address", help="a running Ray cluster (default: a local Ray on this machine's cores)")
    args = parser.parse_args()

    import ray
    import torch

    from xai_recipes import explain
    from xai_recipes.ray import explain_dataset

    if args.model == "demo":
        from xai_recipes.demo import build_demo_model, default_folder

        model = str(build_demo_model(default_folder()))
    else:
        model = str(ROOT / "tests" / "trained" / "resnet")
    device = "cuda" if args.num_gpus else None
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        files = images(Path(tmp), args.images)
        head = files[: max(args.actors) * args.batch_size]
        print(f"{args.model} model, {len(files)} images, batch {args.batch_size}, {cores} cores, "
              f"torch threads {torch.get_num_threads()}, device {device or 'cpu'}")

        list(explain(model, head[:2], batch_size=args.batch_size, device=device))  # warm-up

        def single_process() -> float:
            start = time.perf_counter()
            n = sum(1 for _ in explain(model, files, batch_size=args.batch_size, device=device))
            return n / (time.perf_counter() - start)

        threads = torch.get_num_threads()
        single = single_process()
        rows = [(f"single process, {threads} threads", single, None)]
        if threads > 1 and not args.num_gpus:  # what one actor's torch gets with one CPU
            torch.set_num_threads(1)
            rows.append(("single process, 1 thread", single_process(), None))
            torch.set_num_threads(threads)

        ray.init(address=args.address, num_cpus=None if args.address else cores, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False

        for actors in args.actors:
            start = time.perf_counter()
            ds = explain_dataset(files, model, batch_size=args.batch_size, concurrency=actors,
                                 num_cpus=args.cpus_per_actor, num_gpus=args.num_gpus).materialize()
            total = time.perf_counter() - start
            assert ds.count() == len(files)
            rows.append((f"ray, {actors} actor(s), end to end", len(files) / total, f"{total:.1f} s"))
            busy = re.search(r"MapBatches\(_Explainer\).*?Ray Data throughput: ([0-9.]+) rows/s", ds.stats(), re.S)
            if busy:  # Ray's own count: rows over the operator's time, from its first task to its last
                rows.append((f"ray, {actors} actor(s), actors at work", float(busy.group(1)), "without actor startup"))
        ray.shutdown()

    one = next((rate for name, rate, _ in rows if name == "single process, 1 thread"), None)
    print(f"{'path':34} {'images/s':>9} {'× single':>9}" + (f" {'× 1 thread':>10}" if one else ""))
    for name, rate, note in rows:
        print(f"{name:34} {rate:9.2f} {rate / single:9.2f}" + (f" {rate / one:10.2f}" if one else "")
              + (f"   ({note})" if note else ""))


if __name__ == "__main__":
    main()
