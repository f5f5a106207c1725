"""Train the tiny INTR shipped in xai_recipes_intr/trained/ (run once; not part of the tests).

    python examples/xai-recipes-intr/train_intr.py [--out DIR] [--max-steps N] [--encoder-layers N] [--seed N]

The synthetic task of the main test suite (tests/synthetic.py: which of 4 coloured shapes lies
somewhere on grey clutter), the model's own processor (ViTImageProcessor, 64×64) applied to every
training image, fixed seeds, CPU, one thread (faster than two on a shared 2-core machine), early
stop once validation accuracy reaches the goal. Saves with ``save_pretrained`` (safetensors) plus
the processor config and a TRAINING.txt, so ``xai_recipes.explain(folder, image)`` loads it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import ViTImageProcessor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # the repo's synthetic task
sys.path.insert(0, str(HERE))
from synthetic import SHAPES, make_set  # noqa: E402

from xai_recipes_intr.modeling_intr import IntrForImageClassification, init_for_training_, tiny_config  # noqa: E402

TRAIN_SIZES = [(64, 64), (72, 72), (80, 80), (64, 80), (80, 64), (72, 96), (96, 72), (88, 88)]  # as tests/trained/train.py


def processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixels(proc, samples) -> torch.Tensor:
    return proc([s.image for s in samples], return_tensors="pt")["pixel_values"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "xai_recipes_intr" / "trained")
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder-layers", type=int, default=0)
    parser.add_argument("--decoder-layers", type=int, default=1)
    parser.add_argument("--backbone", default="convnext", choices=["convnext", "resnet"])
    parser.add_argument("--goal", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    proc = processor()
    train_set, val_set = make_set(1, args.n_train, TRAIN_SIZES), make_set(2, 500, TRAIN_SIZES)
    x, y = pixels(proc, train_set), torch.tensor([s.label for s in train_set])
    xv, yv = pixels(proc, val_set), torch.tensor([s.label for s in val_set])
    data_seconds = time.time() - t0
    model = init_for_training_(IntrForImageClassification(tiny_config(dict(enumerate(SHAPES)), encoder_layers=args.encoder_layers,
                                                   decoder_layers=args.decoder_layers, backbone=args.backbone)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.max_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    t1, acc, step = time.time(), 0.0, 0
    for step in range(1, args.max_steps + 1):
        model.train()
        idx = torch.randint(len(x), (args.batch,), generator=g)
        xb, yb = x[idx].clone(), y[idx]
        flip = torch.rand(args.batch, generator=g) < 0.5  # left-right flips keep every shape's class
        xb[flip] = xb[flip].flip(-1)
        loss = model(pixel_values=xb, labels=yb).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # DETR's own recipe clips at 0.1-1
        opt.step()
        sched.step()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} val acc {acc:.3f} ({time.time() - t1:.0f}s)", flush=True)
            if acc >= args.goal:
                break
    seconds = time.time() - t1
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    (args.out / "TRAINING.txt").write_text(
        f"trained by train_intr.py (seed {args.seed}, encoder_layers {args.encoder_layers}, decoder_layers "
        f"{args.decoder_layers}, batch {args.batch}, lr {args.lr}, {args.n_train} training images)\n"
        f"steps={step} val_acc={acc:.3f} seconds={seconds:.0f} (training; data generation {data_seconds:.0f}s; "
        f"1 CPU thread)\n")
    print(f"saved to {args.out}: steps={step} val_acc={acc:.3f} seconds={seconds:.0f}")


if __name__ == "__main__":
    main()
