"""Cost of a warm ``explain()`` relative to plain model passes and to the tutorial's pattern.

    python benchmarks/bench_explain.py [--model resnet50|vit-base] [--repeats 5]

Everything runs in this one process on the same model (random weights, real architecture size)
and the same 224×224-processed photo. Printed: median seconds and ratios against
  * one bare forward + backward of the model (logit of one class, gradients into the parameters),
  * the tutorial's pattern: grad-cam's GradCAM on the image replicated once per target.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from transformers import (
    AutoModelForImageClassification,
    ConvNextImageProcessor,
    ResNetConfig,
    ViTConfig,
    ViTImageProcessor,
)

import xai_recipes
from xai_recipes.cam import LogitsModel


def build(name: str):
    torch.manual_seed(0)
    if name == "resnet50":
        config, processor = ResNetConfig(num_labels=1000), ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    else:
        config, processor = ViTConfig(num_labels=1000), ViTImageProcessor(size={"height": 224, "width": 224})
    return AutoModelForImageClassification.from_config(config).eval(), processor


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50", choices=["resnet50", "vit-base"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, processor = build(args.model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    x = processor(images=image, return_tensors="pt")["pixel_values"]
    recipe = xai_recipes.find_recipe(model)
    wrapped = LogitsModel(model, recipe)
    layers = list(recipe.target_layers(model))
    reshape = (lambda t: recipe.reshape(t, model, tuple(x.shape[-2:]))) if recipe.reshape else None

    def forward_backward():
        model.zero_grad(set_to_none=True)
        wrapped(x)[0, 1].backward()

    def bare_inference():
        with torch.no_grad():
            wrapped(processor(images=image, return_tensors="pt")["pixel_values"])

    def tutorial(T: int):
        def run():
            inp = processor(images=image, return_tensors="pt")["pixel_values"]
            with GradCAM(model=wrapped, target_layers=layers, reshape_transform=reshape) as cam:
                cam(input_tensor=inp.repeat(T, 1, 1, 1), targets=[ClassifierOutputTarget(t) for t in range(T)])
        return run

    def ours(T: int):
        return lambda: xai_recipes.explain(model, image, processor=processor, target=list(range(T)))

    r = args.repeats
    base_fb = timed(forward_backward, r)
    base_inf = timed(bare_inference, r)
    print(f"model {args.model}, input {tuple(x.shape)}, torch threads {torch.get_num_threads()}, median of {r}")
    print(f"bare forward+backward   {base_fb * 1000:8.1f} ms")
    print(f"bare inference (image)  {base_inf * 1000:8.1f} ms")
    for T in (1, 5):
        ours_t, tut_t = timed(ours(T), r), timed(tutorial(T), r)
        print(f"T={T}: explain() {ours_t * 1000:8.1f} ms = {ours_t / base_fb:5.2f}× forward+backward, "
              f"{ours_t / base_inf:5.2f}× inference; tutorial pattern {tut_t * 1000:8.1f} ms; "
              f"explain/tutorial = {ours_t / tut_t:5.2f}")


if __name__ == "__main__":
    main()
