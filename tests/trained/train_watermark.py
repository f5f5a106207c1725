"""Train the audit's test models (run once, not in CI): a planted shortcut and its control.

    python tests/trained/train_watermark.py [--out DIR]

Both are the tiny two-stage ResNet of tests/tiny.py (8×8 last stage at 64 px) with a stretching
64×64 processor (no crop: the mark in the corner stays in view), trained from the same seed for
the same steps on the same scenes (tests/watermark.py):

* ``resnet_watermark``: the "triangle" images carry the mark in 90 % of the training set;
* ``resnet_control``: no image carries it.

One torch thread, fixed seeds; saved with ``save_pretrained`` (safetensors) plus the processor.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers as T

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tiny import tiny_config  # noqa: E402
from watermark import SHAPES, WATERMARKED, make_scenes  # noqa: E402

STEPS, LR, BATCH, N_TRAIN = 1500, 3e-3, 64, 6000


def processor() -> T.ViTImageProcessor:
    return T.ViTImageProcessor(size={"height": 64, "width": 64})


def train(name: str, rate: float, out_root: Path = HERE) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    proc = processor()
    model = T.AutoModelForImageClassification.from_config(tiny_config("resnet"))
    for m in model.modules():  # BN affines from 1/0, as tests/trained/train.py does
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    train_set, val_set = make_scenes(1, N_TRAIN, rate), make_scenes(2, 400, rate)
    x = proc([s.image for s in train_set], return_tensors="pt")["pixel_values"]
    y = torch.tensor([s.label for s in train_set])
    xv = proc([s.image for s in val_set], return_tensors="pt")["pixel_values"]
    yv = torch.tensor([s.label for s in val_set])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    t0, acc = time.time(), 0.0
    for step in range(1, STEPS + 1):  # no flips: the mark stays in its corner
        model.train()
        idx = torch.randint(len(y), (BATCH,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == STEPS:
            model.eval()
            with torch.no_grad():
                acc = (model(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()
            print(f"{name} step {step} loss {loss.item():.3f} val acc {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    out = out_root / name
    model.save_pretrained(out)
    proc.save_pretrained(out)
    marked = sum(s.marked for s in train_set)
    n_class = sum(s.label == WATERMARKED for s in train_set)
    (out / "TRAINING.txt").write_text(
        f"steps={STEPS} lr={LR} batch={BATCH} train={N_TRAIN} watermarked_class={SHAPES[WATERMARKED]} "
        f"marked={marked}/{n_class} val_acc={acc:.3f} seconds={time.time() - t0:.0f}\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    root = Path(args[args.index("--out") + 1]) if "--out" in args else HERE
    np.random.seed(0)
    names = [a for a in args if not a.startswith("--") and a != str(root)] or ["resnet_watermark", "resnet_control"]
    for name in names:
        train(name, 0.9 if name == "resnet_watermark" else 0.0, root)
