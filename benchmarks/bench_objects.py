"""What explaining detections and segments costs, next to bare inference with the model's own post-processing.

    python benchmarks/bench_objects.py [--rounds 5] [--device cpu|cuda] [--threads N] [--size 480] [--only detr|segformer]

Everything timed runs in this one process, on random-weight models with the published layouts:
DETR-ResNet-50 (``DetrConfig()``: timm ResNet-50 backbone, 6+6 layers, 256 wide, 100 queries, 91 classes)
at ``--size`` px on the short side (the hub processor's 800 is slow on a CPU; the ratios hold), and
SegFormer-B0 (``SegformerConfig()``: MiT-b0, 150 classes) at 512×512. The image is a fixed random
picture of 4:3. Rows:

  bare          the pipeline's work: the processor, a forward pass under ``torch.inference_mode()``, and
                the processor's post-processing (``post_process_object_detection`` at threshold 0 /
                ``post_process_semantic_segmentation`` at the image's size).
  floor T       the compute floor for T targets: the processor, one forward with a graph, the
                post-processing, and T input-only backwards from the T scores to the target layer's
                output in one batched call (``is_grads_batched``).
  gradcam T     ``explain(model, image, method="gradcam", top_k=T)``: the whole engine (processor,
                geometry, post-processing, maps back on the image).

Checked against the issue's targets: GradCAM for one detection ≤ 1.3× bare; ten detections within 1.2×
of the ten-target floor (the same for segments). Ratios are medians of same-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
import transformers as T

import xai_recipes
from xai_recipes import registry
from xai_recipes.tasks.segmentation import summed_over, upsampled


def detr(size: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    torch.manual_seed(0)
    model = T.DetrForObjectDetection(T.DetrConfig(use_pretrained_backbone=False)).eval()
    processor = T.DetrImageProcessor(size={"shortest_edge": size, "longest_edge": size * 4 // 3 + 1})
    return model, processor, {"threshold": 0.0}


def segformer(size: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    torch.manual_seed(0)
    model = T.SegformerForSemanticSegmentation(T.SegformerConfig()).eval()
    return model, T.SegformerImageProcessor(size={"height": 512, "width": 512}), {}


def post_process(model: torch.nn.Module, processor: Any, output: Any, size: tuple[int, int]) -> Any:
    if hasattr(output, "pred_boxes"):
        return processor.post_process_object_detection(output, threshold=0.0, target_sizes=[size])
    return processor.post_process_semantic_segmentation(output, target_sizes=[size])


def bench(name: str, model: torch.nn.Module, processor: Any, options: dict[str, Any], image: np.ndarray,
          rounds: int, device: torch.device) -> list[tuple[str, float, float]]:
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.to(device)
    size = image.shape[:2]
    layer = registry.find_recipe(model).target_layers(model)[-1]
    first = xai_recipes.explain(model, image, processor=processor, method="gradcam", top_k=10, **options)
    targets = first.indices  # the ten best detections (flat query-class indices) / largest classes

    def pixels() -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"].to(device)

    def scores_of(output: Any, indices: list[int]) -> torch.Tensor:
        if hasattr(output, "pred_boxes"):
            return output.logits.flatten(1)[0, indices]
        with torch.no_grad():
            pred = upsampled(output.logits, pixel_size).argmax(1)
        classes = torch.tensor(indices, device=pred.device)
        weights = summed_over(output.logits, pred[:, None] == classes[None, :, None, None])  # no upsampling graph
        return (output.logits[:, classes] * weights).flatten(2).sum(-1)[0]

    pixel_size = tuple(pixels().shape[-2:])

    def bare() -> Any:
        with torch.inference_mode():
            return post_process(model, processor, model(pixel_values=pixels()), size)

    def floor(n: int) -> Callable[[], Any]:
        def run() -> Any:
            kept: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda m, a, o: kept.append(o))
            try:
                output = model(pixel_values=pixels())
            finally:
                handle.remove()
            post_process(model, processor, type(output)(**{k: v.detach() for k, v in output.items()
                                                           if k in ("logits", "pred_boxes")}), size)
            out = scores_of(output, targets[:n])
            return torch.autograd.grad(out, kept[0], grad_outputs=torch.eye(n, device=device), is_grads_batched=True)
        return run

    def gradcam(n: int) -> Callable[[], Any]:
        return lambda: xai_recipes.explain(model, image, processor=processor, method="gradcam", top_k=n, **options)

    n = min(10, len(targets))
    rows = {"bare": bare, "floor 1": floor(1), f"floor {n}": floor(n), "gradcam 1": gradcam(1), f"gradcam {n}": gradcam(n)}

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    for fn in rows.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    ratio_bare: dict[str, list[float]] = {k: [] for k in rows}
    ratio_floor: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for key, fn in rows.items():
            b, f = timed(bare), timed(rows[f"floor {n}"])
            t = timed(fn)
            times[key].append(t)
            ratio_bare[key].append(t / b)
            ratio_floor[key].append(t / f)
    med = statistics.median
    print(f"{name} on {device} ({torch.get_num_threads()} threads), input {tuple(pixel_size)}, {rounds} rounds, "
          f"{n} targets")
    print(f"{'row':14} {'ms':>9} {'× bare':>8} {f'× floor{n}':>10}")
    for key in rows:
        print(f"{key:14} {med(times[key]) * 1e3:9.1f} {med(ratio_bare[key]):8.2f} {med(ratio_floor[key]):10.2f}")
    checks = [(f"{name}: gradcam, 1 target ≤ 1.3× bare", med(ratio_bare["gradcam 1"]), 1.3),
              (f"{name}: gradcam, {n} targets ≤ 1.2× floor", med(ratio_floor[f"gradcam {n}"]), 1.2)]
    for what, value, limit in checks:
        print(f"{'ok ' if value <= limit else 'MISS'} {what}: {value:.2f}")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--size", type=int, default=480, help="DETR's input short side (the hub's is 800)")
    parser.add_argument("--only", choices=("detr", "segformer"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for name, build in (("DETR-ResNet-50", detr), ("SegFormer-B0", segformer)):
        if args.only and not name.lower().startswith(args.only):
            continue
        model, processor, options = build(args.size)
        bench(name, model, processor, options, image, args.rounds, device)


if __name__ == "__main__":
    main()
