"""Train tests/trained/pixel_mlp: an MLP on the flattened 64×64 pixels (no recipe can be derived for it).

    python tests/trained/pixel_mlp/train.py

Data from tests/synthetic.py (class = which shape, anywhere on grey clutter), the ViT-style
processor (stretch to 64×64, mean/std 0.5), Adam, fixed seeds, one torch thread; stops when the
held-out accuracy reaches the goal or after MAX_EPOCHS. Saves with save_pretrained (safetensors)
plus the processor and TRAINING.txt.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import ViTImageProcessor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from pixel_mlp import PixelMLPConfig, PixelMLPForImageClassification  # noqa: E402
from synthetic import SHAPES, make_set  # noqa: E402

TRAIN_SIZES = [(64, 64), (72, 72), (80, 80), (64, 80), (80, 64), (72, 96), (96, 72), (88, 88)]
N_TRAIN, MAX_EPOCHS, BATCH, LR, GOAL = 24000, 12, 128, 1e-3, 0.9


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    config = PixelMLPConfig(id2label=dict(enumerate(SHAPES)), label2id={s: i for i, s in enumerate(SHAPES)})
    model = PixelMLPForImageClassification(config)
    train, val = make_set(1, N_TRAIN, TRAIN_SIZES), make_set(2, 500, TRAIN_SIZES)
    x = processor([s.image for s in train], return_tensors="pt")["pixel_values"]
    y = torch.tensor([s.label for s in train])
    xv = processor([s.image for s in val], return_tensors="pt")["pixel_values"]
    yv = torch.tensor([s.label for s in val])
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    accuracy = 0.0
    for epoch in range(MAX_EPOCHS):
        model.train()
        for idx in torch.randperm(len(x)).split(BATCH):
            loss = model(pixel_values=x[idx], labels=y[idx]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()
        print(f"epoch {epoch} loss {loss.item():.3f} val_acc {accuracy:.3f} {time.perf_counter() - t0:.0f}s", flush=True)
        if accuracy >= GOAL:
            break
    model.save_pretrained(HERE, safe_serialization=True)
    processor.save_pretrained(HERE)
    (HERE / "TRAINING.txt").write_text(f"epochs={epoch + 1} val_acc={accuracy:.3f} seconds={time.perf_counter() - t0:.0f}\n")


if __name__ == "__main__":
    main()
