"""Pictures: detections over images, loss curves, the IoU-variant figure, and *which priors an assigner
made positive* (one panel per pyramid level, coloured by GT, with per-GT positive counts).

Everything renders off-screen (matplotlib ``Agg``; overlays with Pillow) and writes PNG files.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "draw_boxes", "save_overlay", "plot_loss_curves", "iou_curves", "iou_figure", "make_priors",
    "compute_assignment", "assignment_figure", "gt_colors",
]

PathLike = Union[str, Path]


def _plt():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # off-screen unless the user already chose a backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def gt_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1] ([n, 3]), cycling through tab20."""
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return np.array([cmap(i % 20)[:3] for i in range(n)], dtype=np.float32).reshape(-1, 3)


def draw_boxes(image: np.ndarray, boxes, color=(0, 255, 0), width: int = 2, labels: Optional[Sequence[str]] = None):
    """Return a PIL image of ``image`` ([H, W, 3] uint8) with xyxy ``boxes`` ([N, 4]) outlined."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    boxes = np.asarray(torch.as_tensor(boxes).detach().cpu().float()).reshape(-1, 4)
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        draw.rectangle([x1, y1, x2, y2], outline=tuple(color), width=width)
        if labels is not None:
            draw.text((x1 + 2, y1 + 1), str(labels[j]), fill=tuple(color))
    return im


def save_overlay(image: np.ndarray, path: PathLike, pred_boxes=None, pred_scores=None, gt_boxes=None,
                 conf: float = 0.25, show_scores: bool = False) -> Path:
    """Ground truth in blue (thin), predictions scoring >= ``conf`` in yellow; writes a PNG."""
    from PIL import ImageDraw

    im = draw_boxes(image, gt_boxes if gt_boxes is not None else np.zeros((0, 4)), color=(40, 120, 255), width=1)
    draw = ImageDraw.Draw(im)
    if pred_boxes is not None:
        boxes = np.asarray(torch.as_tensor(pred_boxes).detach().cpu().float()).reshape(-1, 4)
        scores = (np.asarray(torch.as_tensor(pred_scores).detach().cpu().float()).reshape(-1)
                  if pred_scores is not None else np.ones(len(boxes)))
        for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist()):
            if s < conf:
                continue
            draw.rectangle([x1, y1, x2, y2], outline=(255, 220, 0), width=2)
            if show_scores:
                draw.text((x1 + 2, y1 + 1), f"{s:.2f}", fill=(255, 220, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def plot_loss_curves(history: Dict[str, list], path: PathLike) -> Path:
    """Box / cls / DFL loss per epoch (with the per-step values faint behind) and validation mAP."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    steps = np.asarray(history.get("step_loss") or np.zeros((0, 3)), dtype=np.float64).reshape(-1, 3)
    epochs = np.asarray(history.get("epoch", []), dtype=np.float64)
    per_epoch = len(steps) / max(len(epochs), 1) if len(epochs) else 1.0
    for j, (key, title) in enumerate((("box", "box (CIoU) loss"), ("cls", "cls (BCE) loss"), ("dfl", "DFL loss"))):
        ax = axes[j]
        if len(steps):
            ax.plot(np.arange(1, len(steps) + 1) / per_epoch, steps[:, j], color="0.75", lw=0.7, label="batch")
        if len(history.get(key, [])):
            ax.plot(epochs, history[key], "o-", color="C0", ms=3, label="epoch mean")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[3]
    for key, label in (("map50", "mAP50"), ("map", "mAP50-95")):
        vals = np.asarray(history.get(key, []), dtype=np.float64)
        if len(vals) and np.isfinite(vals).any():
            ok = np.isfinite(vals)
            ax.plot(epochs[: len(vals)][ok], vals[ok], "o-", ms=3, label=label)
    ax.set_title("validation (EMA model)")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- IoU variants


def iou_curves(offsets: np.ndarray, size: Tuple[float, float] = (10.0, 10.0),
               moving: Tuple[float, float] = (10.0, 10.0)) -> Dict[str, np.ndarray]:
    """IoU / GIoU / DIoU / CIoU between a fixed box of ``size`` (w, h) centred at 0 and a ``moving`` box whose
    centre slides along x by ``offsets`` (and sits 0.2 * h lower, so the centres never coincide exactly)."""
    from . import boxes as B

    w, h = size
    mw, mh = moving
    fixed = torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64).expand(len(offsets), 4)
    cx = torch.as_tensor(offsets, dtype=torch.float64)
    cy = torch.full_like(cx, 0.2 * h)
    slide = torch.stack((cx - mw / 2, cy - mh / 2, cx + mw / 2, cy + mh / 2), dim=1)
    return {
        "IoU": B.aligned_iou(slide, fixed, convention="ultralytics").numpy(),
        "GIoU": B.aligned_giou(slide, fixed, convention="ultralytics").numpy(),
        "DIoU": B.aligned_diou(slide, fixed).numpy(),
        "CIoU": B.aligned_ciou(slide, fixed).numpy(),
    }


def iou_figure(path: PathLike, span: float = 25.0, num: int = 401) -> Path:
    """Two panels: a same-size box and a 2:1 box sliding across a 10 x 10 box; IoU is flat at 0 once they
    separate, GIoU / DIoU keep a gradient, CIoU also penalises the aspect mismatch (right panel)."""
    plt = _plt()
    offsets = np.linspace(-span, span, num)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, moving, title in ((axes[0], (10.0, 10.0), "sliding 10x10 box vs fixed 10x10"),
                              (axes[1], (20.0, 10.0), "sliding 20x10 box vs fixed 10x10")):
        curves = iou_curves(offsets, moving=moving)
        for name, style in (("IoU", "-"), ("GIoU", "--"), ("DIoU", "-."), ("CIoU", ":")):
            ax.plot(offsets, curves[name], style, lw=2, label=name)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("horizontal offset of the centres (px)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overlap measure")
    axes[0].legend()
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- assignments


def make_priors(image_size: Tuple[int, int], strides: Sequence[int] = (8, 16, 32), prior_scale: float = 5.0):
    """Grid priors for an (H, W) input: (anchor_points [A, 2] px cell centres, priors [A, 4] xyxy squares of side
    ``prior_scale * stride`` centred on them, strides [A], num_level_priors list, level shapes list)."""
    h, w = image_size
    points, boxes, strides_all, counts, shapes = [], [], [], [], []
    for s in strides:
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = torch.meshgrid(torch.arange(gh) + 0.5, torch.arange(gw) + 0.5, indexing="ij")
        pts = torch.stack((xs, ys), -1).reshape(-1, 2).float() * s
        half = prior_scale * s / 2
        points.append(pts)
        boxes.append(torch.cat((pts - half, pts + half), 1))
        strides_all.append(torch.full((len(pts),), float(s)))
        counts.append(len(pts))
        shapes.append((gh, gw))
    return torch.cat(points), torch.cat(boxes), torch.cat(strides_all), counts, shapes


def _model_predictions(model, image: torch.Tensor, num_classes: int):
    """(pred_scores [1, A, C] probabilities, pred_bboxes [1, A, 4] xyxy px) from a YOLO11 in eval mode."""
    from .boxes import cxcywh_to_xyxy

    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(image)  # [1, 4 + C, A]
    model.train(was)
    # The picture's priors and GTs live on the CPU: bring a CUDA model's predictions there.
    out = out.transpose(1, 2).float().cpu()
    return out[..., 4:4 + num_classes], cxcywh_to_xyxy(out[..., :4])


def compute_assignment(assigner, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, image_size: Tuple[int, int],
                       num_classes: int, model=None, image: Optional[torch.Tensor] = None,
                       strides: Sequence[int] = (8, 16, 32), prior_scale: float = 5.0) -> Dict[str, Any]:
    """Run ``assigner`` (an object or a config dict) on one image's GTs over YOLO grid priors, feeding it
    exactly what :class:`detassign.yolo.loss.DetectionLoss` feeds it during training.

    Score-based assigners (TAL, SimOTA, DynamicSoftLabel) read ``model``'s predictions on ``image``
    (float [1, 3, H, W] in [0, 1]); without a model, scores are 0.5 and predicted boxes equal the square
    priors. TAL gets probabilities and anchor points, ATSS square priors of side ``prior_scale * stride``,
    SimOTA probabilities and (cx, cy, s, s) point priors, DynamicSoftLabel logits and point priors; any
    other assigner gets mmdet-style ``assign(pred_instances(priors=squares, bboxes, scores), gt_instances)``.
    Returns dict with ``gt_inds [A]`` (1-based, 0 negative), ``points [A, 2]``, ``strides [A]``,
    ``num_level_priors``, ``level_shapes``.
    """
    from . import build_assigner
    from .structures import Instances

    if isinstance(assigner, dict):
        assigner = build_assigner(assigner)
    points, priors, stride_t, counts, shapes = make_priors(image_size, strides, prior_scale)
    a = len(points)
    if model is not None and image is not None:
        probs, pred_boxes = _model_predictions(model, image, num_classes)
        if probs.shape[1] != a:
            raise ValueError(f"model gives {probs.shape[1]} predictions but the grid has {a} priors: pass "
                             f"an image whose sides are multiples of {max(strides)}")
    else:
        probs = torch.full((1, a, num_classes), 0.5)
        pred_boxes = priors[None].clone()
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    point_priors = torch.cat((points, stride_t[:, None], stride_t[:, None]), 1)  # (cx, cy, s, s)
    gt_boxes = gt_boxes.float().reshape(1, -1, 4)
    gt_labels = gt_labels.long().reshape(1, -1)
    gt_mask = torch.ones(gt_labels.shape, dtype=torch.bool)
    kind = type(assigner).__name__
    if kind == "ATSSAssigner":
        result = assigner.assign_batch(priors, counts, gt_labels, gt_boxes, gt_mask, pred_scores=logits,
                                       pred_bboxes=pred_boxes)
    elif kind == "SimOTAAssigner":
        result = assigner.assign_batch(probs, pred_boxes, point_priors, gt_labels, gt_boxes, gt_mask)
    elif kind == "DynamicSoftLabelAssigner":
        result = assigner.assign_batch(logits, pred_boxes, point_priors, gt_labels, gt_boxes, gt_mask)
    elif hasattr(assigner, "assign_batch") and "anchor_points" in inspect.signature(assigner.assign_batch).parameters:
        result = assigner.assign_batch(probs, pred_boxes, points, gt_labels, gt_boxes, gt_mask)
    else:
        pred = Instances(priors=priors, bboxes=pred_boxes[0], scores=probs[0])
        gts = Instances(bboxes=gt_boxes[0], labels=gt_labels[0])
        result = assigner.assign(pred, gts)
    gt_inds = result.gt_inds.reshape(-1)
    return {"gt_inds": gt_inds.cpu(), "points": points, "strides": stride_t, "num_level_priors": counts,
            "level_shapes": shapes, "assigner": repr(assigner)}


def assignment_figure(image: np.ndarray, gt_boxes, assignment: Dict[str, Any], path: PathLike,
                      title: str = "") -> Path:
    """One panel per pyramid level: the image, GT boxes outlined in their colours, and every positive prior of
    that level as a dot in its GT's colour; panel titles give the positives per level, and a text line the
    positives per GT (a GT with 0 is drawn dashed: it receives no training signal)."""
    plt = _plt()
    gt_boxes = np.asarray(torch.as_tensor(gt_boxes).float()).reshape(-1, 4)
    gt_inds = assignment["gt_inds"].numpy()
    points = assignment["points"].numpy()
    counts = assignment["num_level_priors"]
    colors = gt_colors(len(gt_boxes))
    per_gt = np.bincount(gt_inds[gt_inds > 0] - 1, minlength=len(gt_boxes)) if len(gt_boxes) else np.zeros(0, int)
    strides = assignment["strides"].numpy()
    fig, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 5.6))
    axes = np.atleast_1d(axes)
    start = 0
    for lvl, (ax, n) in enumerate(zip(axes, counts)):
        sl = slice(start, start + n)
        start += n
        ax.imshow(image)
        for j, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, color=colors[j],
                                       ls="-" if per_gt[j] else "--"))
        inds = gt_inds[sl]
        pos = inds > 0
        if pos.any():
            ax.scatter(points[sl][pos, 0], points[sl][pos, 1], s=14, c=colors[inds[pos] - 1],
                       edgecolors="black", linewidths=0.4)
        s = int(strides[sl][0]) if n else 0
        ax.set_title(f"P{lvl + 3} (stride {s}): {int(pos.sum())} positives")
        ax.set_axis_off()
    zero = int((per_gt == 0).sum())
    summary = (f"{len(gt_boxes)} GTs, {int((gt_inds > 0).sum())} positives; per GT: min {per_gt.min() if len(per_gt) else 0}"
               f", median {int(np.median(per_gt)) if len(per_gt) else 0}, max {per_gt.max() if len(per_gt) else 0}; "
               f"{zero} GT(s) without a positive (dashed)")
    fig.suptitle((title + "\n" if title else "") + summary, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)
