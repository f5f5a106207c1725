"""Train the tiny object detector tests/trained/detr (run once, not in CI).

    python tests/trained/train_detector.py [--out DIR] [--steps N] [--lr LR] [--scratch] [--measure]

``--measure`` re-measures the saved folder only (keeping the training lines of its TRAINING.txt).

A ``ConditionalDetrForObjectDetection`` built from a config: a tiny HF ResNet backbone (``backbone_config``,
no timm, nothing pretrained from the hub; its convolutions and batch-norm statistics warm-started from the
trained shape classifier tests/trained/resnet, same stem and two stages), a 2-layer encoder and 3-layer
decoder of width 96 with 16 queries. Data: the multi-digit scenes of tests/digits.py (2–3 different digits
on grey clutter, 96–128 px), every image and its boxes through the model's own
``ConditionalDetrImageProcessor`` (COCO annotations in, normalised cxcywh ``labels`` out), the model's own
loss (Hungarian matching, sigmoid focal loss, L1 + GIoU, auxiliary decoder losses). Fixed seeds, one CPU thread.

Each training batch holds scenes of one size: the processor pads a mixed batch to its largest image and
normalises the boxes by the padded canvas, while the model's sine position embedding is normalised by the
unpadded region, so mixed batches would teach two different coordinate frames (single images at
inference are never padded).

After training, the saved folder is reloaded and measured on held-out scenes (another seed): VOC-style
mAP@0.5 from ``post_process_object_detection`` at a low threshold, precision / recall at 0.5 (the
object-detection pipeline's default threshold), transformers' own object-detection pipeline on one scene, and
Grad-CAM of each detection's class logit on the backbone's last feature map (does its peak fall in the
detection's own digit box or in another digit's?). The numbers go to TRAINING.txt beside the weights.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers as T

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from digits import DIGITS, Scene, make_multi_scenes  # noqa: E402

SIZES = [(96, 96), (96, 128), (128, 96), (112, 112), (128, 128)]
HEIGHT_FRAC = (0.2, 0.3)
TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3
N_VAL, N_TEST = 100, 300
BATCH = 16
STEPS = 12000
LR = 3e-4
BACKBONE_LR_SCALE = 0.5
WARMUP = 300
CLIP_NORM = 0.1
EVAL_EVERY = 1000
#: The backbone starts from the trained shape classifier (same stem and stages); None: from scratch.
BACKBONE_FROM: Path | None = HERE / "resnet"
#: Shortest side to 96 px (all scene sizes are 96–128), long side at most 160.
PROCESSOR = dict(size={"shortest_edge": 96, "longest_edge": 160}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
BACKBONE = dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2], layer_type="basic", hidden_act="relu",
                downsample_in_first_stage=False, out_features=["stage2"])
DETR = dict(num_queries=16, d_model=96, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=256, decoder_ffn_dim=256,
            encoder_attention_heads=4, decoder_attention_heads=4, dropout=0.0, auxiliary_loss=True)
#: Held-out thresholds: AP from every detection above 0.05; precision / recall and Grad-CAM at 0.5.
AP_THRESHOLD, THRESHOLD = 0.05, 0.5
#: What was tried (written to TRAINING.txt).
NOTES = """tried: (filled in after the runs)"""


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def build() -> tuple[T.ConditionalDetrForObjectDetection, T.ConditionalDetrImageProcessor]:
    config = T.ConditionalDetrConfig(
        backbone_config=T.ResNetConfig(**BACKBONE), use_timm_backbone=False, use_pretrained_backbone=False,
        id2label=dict(enumerate(DIGITS)), label2id={name: i for i, name in enumerate(DIGITS)}, **DETR)
    model = T.ConditionalDetrForObjectDetection(config)
    with torch.no_grad():  # focal-loss prior (Conditional DETR's own init): every class starts at p = 0.01
        model.class_labels_classifier.bias.fill_(-math.log(99.0))
    return model, T.ConditionalDetrImageProcessor(**PROCESSOR)


def warm_start_backbone(model: T.ConditionalDetrForObjectDetection, folder: Path) -> int:
    """Copy the classifier's ResNet (convolutions and batch-norm statistics, which the detector keeps frozen)
    into the detector's backbone; returns how many tensors were copied."""
    from safetensors.torch import load_file

    src = {k.removeprefix("resnet."): v for k, v in load_file(folder / "model.safetensors").items()
           if k.startswith("resnet.") and not k.endswith("num_batches_tracked")}
    dst = model.model.backbone.model.state_dict()
    missing = sorted(set(dst) - set(src))
    if missing or any(src[k].shape != dst[k].shape for k in dst):
        raise ValueError(f"backbone does not fit {folder}: missing {missing[:4]}")
    model.model.backbone.model.load_state_dict({k: src[k] for k in dst})
    return len(dst)


def annotation(scene: Scene, image_id: int) -> dict:
    """COCO detection annotation (bbox = x, y, w, h in pixels) of a scene's inclusive-bound boxes."""
    anns = []
    for d, (x0, y0, x1, y1) in zip(scene.digits, scene.boxes):
        w, h = x1 - x0 + 1, y1 - y0 + 1
        anns.append({"bbox": [float(x0), float(y0), float(w), float(h)], "category_id": int(d), "area": float(w * h), "iscrowd": 0})
    return {"image_id": image_id, "annotations": anns}


def train_batch(processor, step: int, rng: np.random.Generator) -> dict:
    size = SIZES[int(rng.integers(len(SIZES)))]
    scenes = make_multi_scenes(TRAIN_SEED * 1_000_003 + step, BATCH, [size], height_frac=HEIGHT_FRAC)
    return processor([s.image for s in scenes], annotations=[annotation(s, i) for i, s in enumerate(scenes)], return_tensors="pt")


# ---------------------------------------------------------------------------------------------- measuring


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (n, 4) and b (m, 4), x0 y0 x1 y1 continuous."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def gt_boxes(scene: Scene) -> np.ndarray:
    """A scene's boxes as continuous pixel edges (inclusive bounds x1, y1 → x1 + 1, y1 + 1)."""
    return np.array([(x0, y0, x1 + 1, y1 + 1) for x0, y0, x1, y1 in scene.boxes], np.float64)


def voc_ap(detections: list[dict], scenes: list[Scene], iou_thr: float = 0.5) -> tuple[float, list[float]]:
    """VOC (all-point interpolated) AP per class at ``iou_thr``, and its mean over the 10 classes.
    ``detections[i]``: {"scores", "labels", "boxes"} (numpy) for scene i."""
    aps = []
    for c in range(len(DIGITS)):
        gts = {i: gt_boxes(s)[np.array(s.digits) == c] for i, s in enumerate(scenes)}
        n_gt = sum(len(g) for g in gts.values())
        dets = [(float(sc), i, box) for i, d in enumerate(detections)
                for sc, lab, box in zip(d["scores"], d["labels"], d["boxes"]) if lab == c]
        dets.sort(key=lambda t: -t[0])
        used = {i: np.zeros(len(g), bool) for i, g in gts.items()}
        tp = np.zeros(len(dets))
        for k, (_, i, box) in enumerate(dets):
            if len(gts[i]):
                ious = iou(box[None], gts[i])[0]
                j = int(ious.argmax())
                if ious[j] >= iou_thr and not used[i][j]:
                    used[i][j], tp[k] = True, 1
        if n_gt == 0:
            continue
        ctp = np.cumsum(tp)
        rec = ctp / n_gt
        prec = ctp / np.arange(1, len(dets) + 1)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], prec, [0.0]])
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum()))
    return float(np.mean(aps)), aps


def precision_recall(detections: list[dict], scenes: list[Scene], iou_thr: float = 0.5) -> tuple[float, float, int, int, int]:
    """Greedy (by score) one-to-one matching, same class and IoU ≥ iou_thr: precision, recall, tp, n_det, n_gt."""
    tp = n_det = n_gt = 0
    for d, s in zip(detections, scenes):
        g, labels = gt_boxes(s), np.array(s.digits)
        used = np.zeros(len(g), bool)
        n_gt += len(g)
        for k in np.argsort(-d["scores"]):
            n_det += 1
            ious = iou(d["boxes"][k][None], g)[0] * (labels == d["labels"][k]) * ~used
            j = int(ious.argmax())
            if ious[j] >= iou_thr:
                used[j], tp = True, tp + 1
    return tp / max(n_det, 1), tp / max(n_gt, 1), tp, n_det, n_gt


@torch.no_grad()
def detect(model, processor, scenes: list[Scene], threshold: float) -> list[dict]:
    """One scene at a time (as the pipeline runs), through the processor and its post-processing."""
    model.eval()
    out = []
    for s in scenes:
        inputs = processor([s.image], return_tensors="pt")
        res = processor.post_process_object_detection(model(**inputs), threshold=threshold, target_sizes=[s.image.shape[:2]])[0]
        out.append({k: v.numpy() for k, v in res.items()})
    return out


def gradcam_shares(model, processor, scenes: list[Scene], threshold: float) -> dict:
    """Grad-CAM of each detection above ``threshold``: gradients of its query's class logit ``logits[0, q, c]``
    w.r.t. the backbone's last feature map (the input of ``input_projection``), channel weights = mean gradient,
    ReLU of the weighted sum, bilinearly upsampled to the processed input and resized to the image. Counted over
    detections that match a ground-truth digit (IoU ≥ 0.5, any class): is the map's peak inside that digit's
    box ("own") or inside another digit's box ("other")?"""
    model.eval()
    feats = {}
    hook = model.model.input_projection.register_forward_hook(lambda m, i, o: feats.__setitem__("a", i[0]))
    own = other = matched = unmatched = 0
    try:
        for s in scenes:
            inputs = processor([s.image], return_tensors="pt")
            outputs = model(**inputs)
            a = feats["a"]
            h, w = s.image.shape[:2]
            # the queries and classes post_process_object_detection keeps (its top-k over queries × classes)
            prob = outputs.logits.sigmoid().view(1, -1)
            k = min(100, prob.shape[1])
            scores, idx = torch.topk(prob, k, dim=1)
            res = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=[(h, w)])[0]
            keep = scores[0] > threshold
            queries = (idx[0][keep] // outputs.logits.shape[2]).tolist()
            classes = (idx[0][keep] % outputs.logits.shape[2]).tolist()
            g = gt_boxes(s)
            for n, (q, c) in enumerate(zip(queries, classes)):
                box = res["boxes"][n].detach().numpy()[None]
                ious = iou(box, g)[0]
                j = int(ious.argmax())
                if ious[j] < 0.5:
                    unmatched += 1
                    continue
                matched += 1
                grad = torch.autograd.grad(outputs.logits[0, q, c], a, retain_graph=True)[0]
                cam = torch.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
                cam = torch.nn.functional.interpolate(cam, size=inputs["pixel_values"].shape[-2:], mode="bilinear", align_corners=False)
                cam = torch.nn.functional.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0].detach().numpy()
                py, px = np.unravel_index(int(cam.argmax()), cam.shape)
                inside = [x0 <= px <= x1 and y0 <= py <= y1 for x0, y0, x1, y1 in s.boxes]
                own += inside[j]
                other += any(v for i, v in enumerate(inside) if i != j)
    finally:
        hook.remove()
    return {"own": own / max(matched, 1), "other": other / max(matched, 1), "matched": matched, "unmatched": unmatched}


def cpu_forward_ms(model, processor, repeats: int = 20) -> float:
    scene = make_multi_scenes(99, 1, [(128, 128)], height_frac=HEIGHT_FRAC)[0]
    inputs = processor([scene.image], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(**inputs)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
    return (time.perf_counter() - t0) / repeats * 1000


def pipeline_check(folder: Path) -> str:
    from PIL import Image

    processor = T.AutoImageProcessor.from_pretrained(folder)
    pipe = T.pipeline("object-detection", model=str(folder), image_processor=processor, device="cpu")
    scene = make_multi_scenes(TEST_SEED + 1000, 1, [(112, 112)], height_frac=HEIGHT_FRAC)[0]
    found = pipe(Image.fromarray(scene.image))
    want = sorted(DIGITS[d] for d in scene.digits)
    got = sorted(r["label"] for r in found)
    boxes = "; ".join(f"{r['label']} {r['score']:.2f} ({r['box']['xmin']},{r['box']['ymin']},{r['box']['xmax']},{r['box']['ymax']})" for r in found)
    truth = "; ".join(f"{DIGITS[d]} {b}" for d, b in zip(scene.digits, scene.boxes))
    return (f"pipeline('object-detection') offline ({type(processor).__name__}, threshold 0.5), one held-out 112x112 scene: "
            f"expected {want}, got {got} -> {'OK' if got == want else 'MISMATCH'}\n  detections: {boxes}\n  truth: {truth}")


def measure(folder: Path) -> list[str]:
    model = T.ConditionalDetrForObjectDetection.from_pretrained(folder)
    processor = T.ConditionalDetrImageProcessor.from_pretrained(folder)
    scenes = make_multi_scenes(TEST_SEED, N_TEST, SIZES, height_frac=HEIGHT_FRAC)
    t0 = time.time()
    m_ap, aps = voc_ap(detect(model, processor, scenes, AP_THRESHOLD), scenes)
    p, r, tp, n_det, n_gt = precision_recall(detect(model, processor, scenes, THRESHOLD), scenes)
    cam = gradcam_shares(model, processor, scenes, THRESHOLD)
    lines = [
        f"held-out: {N_TEST} scenes (make_multi_scenes seed {TEST_SEED}, sizes {SIZES}, height_frac {HEIGHT_FRAC}), {n_gt} digits",
        f"mAP@0.5 (VOC all-point, mean of 10 classes, post_process_object_detection threshold {AP_THRESHOLD}) = {m_ap:.3f}",
        "  per class AP: " + " ".join(f"{DIGITS[c]}={a:.3f}" for c, a in enumerate(aps)),
        f"threshold {THRESHOLD} (pipeline default): precision = {p:.3f}, recall = {r:.3f} ({tp} true of {n_det} detections, {n_gt} digits)",
        f"Grad-CAM peak (detection's class logit on the backbone's last feature map, {cam['matched']} detections at {THRESHOLD} "
        f"matching a digit at IoU>=0.5, {cam['unmatched']} not): inside own box {cam['own']:.3f}, inside another digit's box {cam['other']:.3f}",
        f"CPU forward (1 thread, one 128x128 scene, processor size {processor.size.shortest_edge}-{processor.size.longest_edge}): {cpu_forward_ms(model, processor):.1f} ms",
        pipeline_check(folder),
        f"(measuring took {time.time() - t0:.0f} s)",
    ]
    for line in lines:
        log(line)
    return lines


def quick_val(model, processor, scenes) -> float:
    return voc_ap(detect(model, processor, scenes, AP_THRESHOLD), scenes)[0]


def train(out: Path, steps: int = STEPS, lr: float = LR, backbone_from: Path | None = BACKBONE_FROM) -> list[str]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model, processor = build()
    copied = warm_start_backbone(model, backbone_from) if backbone_from else 0
    for p in model.parameters():  # the backbone's stem and first stage start frozen in transformers: train all convs
        p.requires_grad_(True)
    backbone = [p for n, p in model.named_parameters() if n.startswith("model.backbone.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.backbone.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": backbone, "lr": lr * BACKBONE_LR_SCALE}], weight_decay=1e-4)
    base = [lr, lr * BACKBONE_LR_SCALE]
    val = make_multi_scenes(VAL_SEED, N_VAL, SIZES, height_frac=HEIGHT_FRAC)
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"params {n_params}, backbone tensors warm-started {copied}, steps {steps}, lr {lr}")
    t0, cpu0, run = time.time(), time.process_time(), {}
    history = []
    for step in range(1, steps + 1):
        frac = step / WARMUP if step <= WARMUP else 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (steps - WARMUP)))
        for group, b in zip(opt.param_groups, base):
            group["lr"] = b * max(frac, 0.01)
        model.train()
        batch = train_batch(processor, step, rng)
        out_ = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
        opt.zero_grad()
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        for k in ("loss_ce", "loss_bbox", "loss_giou"):
            run[k] = 0.98 * run.get(k, out_.loss_dict[k].item()) + 0.02 * out_.loss_dict[k].item()
        run["loss"] = 0.98 * run.get("loss", out_.loss.item()) + 0.02 * out_.loss.item()
        if step % 100 == 0:
            log(f"step {step} " + " ".join(f"{k}={v:.3f}" for k, v in run.items()) + f" lr={opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        if step % EVAL_EVERY == 0 or step == steps:
            m_ap = quick_val(model, processor, val)
            history.append(f"{step}:{m_ap:.3f}")
            cam = gradcam_shares(model, processor, val[:50], 0.3)
            log(f"step {step} val mAP@0.5 ({N_VAL} scenes, seed {VAL_SEED}) = {m_ap:.3f}; Grad-CAM (50 scenes, threshold 0.3) "
                f"own {cam['own']:.2f} other {cam['other']:.2f} of {cam['matched']}")
            model.save_pretrained(out)
            processor.save_pretrained(out)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return [
        f"ConditionalDetrForObjectDetection, backbone ResNet {BACKBONE}, {DETR}, {n_params} parameters",
        f"backbone warm start: {backbone_from.relative_to(HERE.parent.parent) if backbone_from else 'none (from scratch)'} ({copied} tensors)",
        f"processor: ConditionalDetrImageProcessor {PROCESSOR}",
        f"training: {steps} steps x batch {BATCH} (fresh scenes every step, one size per batch), AdamW lr {lr} "
        f"(backbone x{BACKBONE_LR_SCALE}), warmup {WARMUP}, cosine, grad clip {CLIP_NORM}, weight decay 1e-4, "
        f"the model's own loss with auxiliary decoder losses; {seconds:.0f} s wall ({cpu_seconds:.0f} s CPU) on one thread",
        f"val mAP@0.5 by step ({N_VAL} scenes, seed {VAL_SEED}): " + " ".join(history),
    ]


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[1:]
    out_dir = Path(args.pop(args.index("--out") + 1)) if "--out" in args else HERE / "detr"
    n_steps = int(args.pop(args.index("--steps") + 1)) if "--steps" in args else STEPS
    lr_ = float(args.pop(args.index("--lr") + 1)) if "--lr" in args else LR
    scratch = "--scratch" in args
    if "--size" in args:  # shortest edge of the processor's resize (longest: 5/3 of it)
        edge = int(args.pop(args.index("--size") + 1))
        PROCESSOR["size"] = {"shortest_edge": edge, "longest_edge": edge * 5 // 3}
    txt = out_dir / "TRAINING.txt"
    if "--measure" in args:
        old = txt.read_text().split("\n== measured ==\n")[0] if txt.exists() else ""
        head = [line for line in old.split("\n" + NOTES)[0].splitlines()]
    else:
        head = train(out_dir, n_steps, lr_, None if scratch else BACKBONE_FROM)
    lines = measure(out_dir)
    txt.write_text("\n".join(head) + "\n" + NOTES + "\n== measured ==\n" + "\n".join(lines) + "\n")
