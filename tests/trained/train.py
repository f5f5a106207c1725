"""Train the tiny localisation models under tests/trained/<family>/ (run once, not in CI).

    python tests/trained/train.py [family ...]

Reproducible: fixed seeds, data from tests/synthetic.py, each family's own processor applied to
every training image, early stop once held-out accuracy reaches the goal. Saves with
``save_pretrained`` (safetensors) plus the processor, so tests load them like a hub checkpoint.
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
from synthetic import make_set  # noqa: E402
from tiny import FAMILIES, tiny_config, tiny_processor  # noqa: E402

TRAIN_SIZES = [(64, 64), (72, 72), (80, 80), (64, 80), (80, 64), (72, 96), (96, 72), (88, 88)]
LR = {"vit": 1e-3, "swin": 1e-3, "cvt": 2e-3, "segformer": 2e-3, "mobilevit": 2e-3}
BATCH = {"mobilevit": 32}  # HF MobileViT is slow on CPU (unfold/fold per block)


TOKEN_LABELLED = {"vit": 8, "cvt": 8}  # CLS-token families → stride of their token grid


def pixels(processor, samples) -> torch.Tensor:
    out = processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
    return out.to(torch.float16)


def input_masks(processor, samples) -> torch.Tensor:
    """Each object's mask as the model sees it (after the processor's resize/crop), ``N×h×w`` in [0, 1]."""
    masks = processor([np.repeat(s.mask[:, :, None].astype(np.uint8) * 255, 3, 2) for s in samples], return_tensors="pt")["pixel_values"]
    flat = masks.mean(1)
    lo, hi = flat.amin((1, 2), keepdim=True), flat.amax((1, 2), keepdim=True)
    return ((flat - lo) / (hi - lo + 1e-6)).to(torch.float16)


def token_targets(masks: torch.Tensor, labels: torch.Tensor, stride: int, background: int) -> torch.Tensor:
    """Per-token labels (LV-ViT-style token labelling): the class where the object covers ≥ 30 %
    of the token's patch, else an extra background class. ``N×h'×w'``."""
    cover = torch.nn.functional.avg_pool2d(masks.float()[:, None], stride)[:, 0]
    return torch.where(cover >= 0.3, labels[:, None, None].expand_as(cover), torch.full_like(cover, background, dtype=torch.long))


def patch_tokens(model, out) -> torch.Tensor:
    """The last layer's patch tokens ``B×N×C`` (CLS dropped) from ``output_hidden_states``."""
    last = out.hidden_states[-1]
    return last.flatten(2).transpose(1, 2) if last.dim() == 4 else last[:, 1:]


def train(family: str, n_train: int = 12000, max_steps: int = 5000, goal: float = 0.97) -> None:
    torch.manual_seed(0)
    batch = BATCH.get(family, 64)
    processor = tiny_processor(family)
    train_set, val_set = make_set(1, n_train, TRAIN_SIZES), make_set(2, 500, TRAIN_SIZES)
    x, y, masks = pixels(processor, train_set), torch.tensor([s.label for s in train_set]), input_masks(processor, train_set)
    xv, yv = pixels(processor, val_set).float(), torch.tensor([s.label for s in val_set])
    model = T.AutoModelForImageClassification.from_config(tiny_config(family))
    n_classes = model.config.num_labels
    token_head = None
    if family in TOKEN_LABELLED:  # auxiliary, training only: not saved with the model
        width = model.config.hidden_size if family == "vit" else model.config.embed_dim[-1]
        token_head = torch.nn.Linear(width, n_classes + 1)
    for m in model.modules():  # transformers starts some families' BN gammas near 0: train from 1/0
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    params = list(model.parameters()) + (list(token_head.parameters()) if token_head else [])
    opt = torch.optim.AdamW(params, lr=LR.get(family, 3e-3), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR.get(family, 3e-3), total_steps=max_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    ce = torch.nn.functional.cross_entropy
    t0, acc = time.time(), 0.0
    for step in range(1, max_steps + 1):
        model.train()
        idx = torch.randint(len(x), (batch,), generator=g)
        xb, mb, yb = x[idx].float(), masks[idx], y[idx]
        flip = torch.rand(batch, generator=g) < 0.5  # left-right flips keep every object's class
        xb[flip], mb[flip] = xb[flip].flip(-1), mb[flip].flip(-1)
        out = model(pixel_values=xb, output_hidden_states=token_head is not None)
        loss = ce(out.logits, yb)
        if token_head is not None:
            tb = token_targets(mb, yb, TOKEN_LABELLED[family], background=n_classes)
            token_logits = token_head(patch_tokens(model, out))
            loss = loss + 0.5 * ce(token_logits.flatten(0, 1), tb.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()
            print(f"{family} step {step} loss {loss.item():.3f} val acc {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if acc >= goal:
                break
    model.eval()
    out = HERE / family
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "TRAINING.txt").write_text(f"steps={step} val_acc={acc:.3f} seconds={time.time() - t0:.0f}\n")


if __name__ == "__main__":
    for fam in sys.argv[1:] or FAMILIES:
        train(fam)
