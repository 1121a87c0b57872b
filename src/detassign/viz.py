"""Pictures: detections over images, loss curves, the IoU-variant figure, and *which priors an assigner
made positive* (one panel per pyramid level, coloured by GT, with per-GT positive counts).

Everything renders off-screen (matplotlib ``Agg``; overlays with Pillow) and writes PNG files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .structures import Priors

__all__ = [
    "draw_boxes", "save_overlay", "plot_loss_curves", "iou_curves", "aspect_curves", "iou_figure",
    "GridInputs", "grid_inputs", "assign_on_grid", "compute_assignment", "check_on_grid", "per_gt_counts",
    "assignment_summary", "assignment_figure", "draw_assignments", "drawable_assigners", "gt_colors",
    "class_colors", "draw_detections", "save_detections",
]

PathLike = Union[str, Path]


def pyplot():
    """matplotlib's pyplot, off-screen (Agg) unless the user already chose a backend."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # off-screen unless the user already chose a backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def gt_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1] ([n, 3]), cycling through tab20."""
    plt = pyplot()
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


def save_overlay(image: np.ndarray, path: PathLike, pred_boxes=None, pred_scores=None, gt_bboxes=None,
                 conf: float = 0.25, show_scores: bool = False) -> Path:
    """Ground truth in blue (thin), predictions scoring >= ``conf`` in yellow; writes a PNG."""
    from PIL import ImageDraw

    im = draw_boxes(image, gt_bboxes if gt_bboxes is not None else np.zeros((0, 4)), color=(40, 120, 255), width=1)
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
    plt = pyplot()
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
    return save_figure(fig, path)


# --------------------------------------------------------------------------- IoU variants


def iou_curves(offsets: np.ndarray, size: Tuple[float, float] = (10.0, 10.0),
               moving: Tuple[float, float] = (10.0, 10.0), dy: Optional[float] = None) -> Dict[str, np.ndarray]:
    """IoU / GIoU / DIoU / CIoU between a fixed box of ``size`` (w, h) centered at (0, 0) and a ``moving``
    box (w, h) whose center is at (offset, dy) for each of ``offsets``. ``dy`` defaults to 0.2 * h of the
    fixed box (2 px for 10 x 10), so that the centers never coincide exactly; y grows downwards."""
    w, h = size
    mw, mh = moving
    dy = 0.2 * h if dy is None else float(dy)
    fixed = torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64).expand(len(offsets), 4)
    cx = torch.as_tensor(offsets, dtype=torch.float64)
    cy = torch.full_like(cx, dy)
    slide = torch.stack((cx - mw / 2, cy - mh / 2, cx + mw / 2, cy + mh / 2), dim=1)
    return _iou_variants(slide, fixed)


def _iou_variants(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Dict[str, np.ndarray]:
    from . import boxes as B

    return {
        "IoU": B.aligned_iou(boxes1, boxes2, convention="ultralytics").numpy(),
        "GIoU": B.aligned_giou(boxes1, boxes2, convention="ultralytics").numpy(),
        "DIoU": B.aligned_diou(boxes1, boxes2).numpy(),
        "CIoU": B.aligned_ciou(boxes1, boxes2).numpy(),
    }


def aspect_curves(ratios: np.ndarray, size: Tuple[float, float] = (10.0, 10.0)) -> Dict[str, np.ndarray]:
    """The four variants between a fixed box of ``size`` and a box of the same area and the same center
    whose aspect ratio w / h is each of ``ratios``: the centers coincide, so DIoU equals IoU and only
    CIoU's aspect term ``alpha * v`` separates them."""
    w, h = size
    r = torch.as_tensor(ratios, dtype=torch.float64)
    mw, mh = torch.sqrt(w * h * r), torch.sqrt(w * h / r)
    fixed = torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64).expand(len(r), 4)
    moving = torch.stack((-mw / 2, -mh / 2, mw / 2, mh / 2), dim=1)
    return _iou_variants(moving, fixed)


_IOU_STYLES = (("IoU", "-"), ("GIoU", "--"), ("DIoU", "-."), ("CIoU", ":"))


def _sketch(ax, fixed: Tuple[float, float], moving: Tuple[float, float], offsets: Sequence[float], dy: float,
            where=(0.02, 0.56, 0.34, 0.4)):
    """Inset drawing of the fixed box (black) and the moving box at a few offsets (blue), with the
    direction of the slide: the figure says exactly which offset it varies."""
    inset = ax.inset_axes(list(where))
    w, h = fixed
    mw, mh = moving
    inset.add_patch(pyplot().Rectangle((-w / 2, -h / 2), w, h, fill=False, lw=1.5, color="black"))
    last = len(offsets) - 1
    for k, dx in enumerate(offsets):  # earlier positions dashed and paler, the last one solid
        inset.add_patch(pyplot().Rectangle((dx - mw / 2, dy - mh / 2), mw, mh, fill=False, lw=1.0, color="C0",
                                         ls="-" if k == last else "--", alpha=0.5 + 0.5 * k / max(last, 1)))
    if len(offsets) > 1:
        inset.annotate("", xy=(offsets[-1], dy), xytext=(offsets[0], dy),
                       arrowprops=dict(arrowstyle="->", color="C3", lw=1.2))
    span = max(abs(o) for o in offsets) + max(w, mw) / 2 + 2 if offsets else max(w, mw)
    inset.set_xlim(-span, span)
    inset.set_ylim(span * 0.6, -span * 0.6)
    inset.set_aspect("equal")
    inset.set_xticks([])
    inset.set_yticks([])
    return inset


def iou_figure(path: PathLike, span: float = 25.0, num: int = 401) -> Path:
    """Three panels. Left and middle: a 10 x 10 and a 20 x 10 box slide horizontally past a fixed 10 x 10
    box, their center 2 px below the fixed center; the x axis is the horizontal offset of the centers.
    IoU is flat at 0 once they separate, GIoU / DIoU keep a gradient. Right: the centers coincide and the
    moving box keeps the area (100 px^2) but changes its aspect ratio: DIoU equals IoU there, CIoU is
    lower by its aspect term ``alpha * v`` (drawn on the right axis)."""
    plt = pyplot()
    offsets = np.linspace(-span, span, num)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    dy = 2.0
    for ax, moving in ((axes[0], (10.0, 10.0)), (axes[1], (20.0, 10.0))):
        curves = iou_curves(offsets, moving=moving, dy=dy)
        for name, style in _IOU_STYLES:
            ax.plot(offsets, curves[name], style, lw=2, label=name)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"{moving[0]:g} x {moving[1]:g} box sliding past a fixed 10 x 10 box\n"
                     f"(its center {dy:g} px below; x = horizontal offset)", fontsize=10)
        ax.set_xlabel("horizontal offset of the moving box's center (px)")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
        _sketch(ax, (10.0, 10.0), moving, [-0.6 * span, 0.0, 0.6 * span], dy, where=(0.02, 0.03, 0.3, 0.3))
    axes[0].set_ylabel("overlap measure")
    axes[0].legend(loc="upper right", fontsize=9)
    ax = axes[2]
    ratios = np.geomspace(1 / 8, 8, num)
    curves = aspect_curves(ratios)
    for name, style in _IOU_STYLES:
        ax.plot(ratios, curves[name], style, lw=2, label=name)
    ax.set_xscale("log")
    ticks = [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.minorticks_off()
    ax.set_xlabel("aspect ratio w / h of the moving box (same center, same 100 px^2 area)")
    ax.set_title("same center, different aspect ratio:\nDIoU = IoU, CIoU lower by alpha * v", fontsize=10)
    ax.set_ylim(-0.3, 1.05)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    gap, = twin.plot(ratios, curves["DIoU"] - curves["CIoU"], color="C3", lw=1.2, alpha=0.8,
                     label="DIoU - CIoU (right axis)")
    twin.set_ylabel("DIoU - CIoU (aspect term alpha * v)", color="C3")
    twin.tick_params(axis="y", colors="C3")
    twin.set_ylim(0, max(float((curves["DIoU"] - curves["CIoU"]).max()) * 1.15, 1e-3))
    ax.legend(handles=ax.get_lines() + [gap], loc="lower center", fontsize=8)
    inset = ax.inset_axes([0.68, 0.6, 0.3, 0.36])
    for r, color in ((1.0, "black"), (4.0, "C0")):
        mw, mh = 10 * math.sqrt(r), 10 / math.sqrt(r)
        inset.add_patch(plt.Rectangle((-mw / 2, -mh / 2), mw, mh, fill=False, lw=1.3, color=color))
    inset.set_xlim(-12, 12)
    inset.set_ylim(8, -8)
    inset.set_aspect("equal")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("w / h = 1 and 4", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- assignments


def _model_predictions(model, image: torch.Tensor, num_classes: int):
    """(class logits [1, A, C], pred_bboxes [1, A, 4] xyxy px) from a YOLO11 in eval mode."""
    from .boxes import cxcywh_to_xyxy

    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(image)  # [1, 4 + C, A], class probabilities
    model.train(was)
    # The picture's priors and GTs live on the CPU: bring a CUDA model's predictions there.
    out = out.transpose(1, 2).float().cpu()
    probs = out[..., 4:4 + num_classes]
    return torch.logit(probs.clamp(1e-6, 1 - 1e-6)), cxcywh_to_xyxy(out[..., :4])


@dataclass
class GridInputs:
    """One image on YOLO grid priors, as the detection loss sees it.

    priors: :class:`detassign.Priors` (``Priors.grid``: cell centers, strides, level shapes, square anchor
    boxes of side ``prior_scale * stride``, the image size); logits [A, C] class logits; pred_boxes [A, 4]
    xyxy px; gt_bboxes [M, 4] xyxy px, gt_labels [M].
    """

    priors: Priors
    logits: torch.Tensor
    pred_boxes: torch.Tensor
    gt_bboxes: torch.Tensor
    gt_labels: torch.Tensor

    @property
    def level_strides(self) -> List[int]:
        starts = np.cumsum([0] + list(self.priors.level_sizes[:-1]))
        return [int(self.priors.strides[s]) for s in starts.tolist()] if len(self.priors) else []


def grid_inputs(gt_bboxes: torch.Tensor, gt_labels: torch.Tensor, image_size: Tuple[int, int], num_classes: int,
                model=None, image: Optional[torch.Tensor] = None, strides: Sequence[int] = (8, 16, 32),
                prior_scale: float = 5.0) -> GridInputs:
    """:class:`GridInputs` for one image: ``model``'s predictions on ``image`` (float [1, 3, H, W] in
    [0, 1]) when both are given, else logits 0 (scores 0.5) and predicted boxes equal to the square priors."""
    priors = Priors.grid(image_size, strides, anchor_scale=prior_scale)
    a = len(priors)
    if model is not None and image is not None:
        logits, pred_boxes = _model_predictions(model, image, num_classes)
        if logits.shape[1] != a:
            raise ValueError(f"model gives {logits.shape[1]} predictions but the grid has {a} priors: pass "
                             f"an image whose sides are multiples of {max(strides)}")
        logits, pred_boxes = logits[0], pred_boxes[0]
    else:
        logits = torch.zeros(a, num_classes)
        pred_boxes = priors.boxes.clone()
    return GridInputs(priors, logits, pred_boxes, torch.as_tensor(gt_bboxes).float().reshape(-1, 4),
                      torch.as_tensor(gt_labels).long().reshape(-1))


def _one_gt_grid() -> GridInputs:
    """A 64 x 64 image with one 24 x 20 px GT: the probe :func:`check_on_grid` runs an assigner on."""
    return grid_inputs(torch.tensor([[20.0, 10.0, 44.0, 30.0]]), torch.tensor([0]), (64, 64), 1)


def check_on_grid(assigner) -> None:
    """Raise ``ValueError`` ("NAME cannot run on grid priors: <the assigner's own reason>") unless
    ``assigner`` (an object or a config dict) runs through the batched interface on YOLO grid priors.

    It is run once on a one-GT probe image (:func:`_one_gt_grid`), so the answer is the assigner's own, never a
    list kept here; a config that does not build raises its own error.
    """
    from . import build_assigner

    name = str(assigner.get("type", "")).split(".")[-1] if isinstance(assigner, dict) else type(assigner).__name__
    built = build_assigner(dict(assigner)) if isinstance(assigner, dict) else assigner
    try:
        assign_on_grid(built, _one_gt_grid())
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot run on grid priors: {err}") from None


def drawable_assigners() -> List[str]:
    """Registry names whose default configuration runs on grid priors (:func:`check_on_grid`; an assigner
    with required arguments is tried with ``detassign.compare.EXAMPLE_ARGUMENTS``). Builds every assigner."""
    from .compare import EXAMPLE_ARGUMENTS, parse_assigners
    from .registry import ASSIGNERS

    names = []
    for name in sorted(ASSIGNERS):
        text = f"{name}:{EXAMPLE_ARGUMENTS[name]}" if name in EXAMPLE_ARGUMENTS else name
        try:
            check_on_grid(parse_assigners(text)[0].config)
        except (TypeError, ValueError):
            continue
        names.append(name)
    return names


def assign_on_grid(assigner, g: GridInputs) -> Dict[str, Any]:
    """Run ``assigner`` (an object or a config dict) on :class:`GridInputs` and describe what it did.

    Every assigner gets exactly what :class:`detassign.yolo.loss.DetectionLoss` gives it, through the
    batched interface (:func:`detassign.yolo.loss.assign_like_loss` on a batch of one image), and the
    soft targets are the loss' own. An assigner that cannot run there raises its own error.

    Returns dict: ``name``; ``gt_inds`` [A] (1-based, 0 negative, -1 ignored); ``strength`` [A] the soft
    target the loss would train each prior with (max over classes; 0 off the positives); ``stats``
    (:class:`detassign.stats.AssignmentStats`); ``points`` [A, 2], ``strides`` [A], ``num_level_priors``,
    ``level_shapes``; ``assigner`` (repr).
    """
    from .stats import assignment_stats
    from .yolo.loss import as_assigner, assign_like_loss

    assigner = as_assigner(assigner)
    name = type(assigner).__name__
    gt_mask = torch.ones(1, len(g.gt_bboxes), dtype=torch.bool)
    targets = assign_like_loss(assigner, g.logits[None], g.pred_boxes[None], g.priors, g.gt_labels[None],
                               g.gt_bboxes[None], gt_mask, g.logits.shape[-1])
    result = targets.result
    gt_inds = result.gt_inds.reshape(-1)
    if tuple(result.gt_inds.shape) != (1, len(g.priors)):
        raise ValueError(f"{name} returned gt_inds of shape {tuple(result.gt_inds.shape)}, expected one per prior "
                         f"(1, {len(g.priors)})")
    strength = (targets.target_scores[0].amax(-1) * (gt_inds > 0)).float().cpu()
    stats = assignment_stats(result, g.gt_bboxes[None], gt_mask, level_sizes=list(g.priors.level_sizes),
                             strides=g.level_strides)
    return {"name": name, "gt_inds": gt_inds.cpu(), "strength": strength, "stats": stats, "points": g.priors.points,
            "strides": g.priors.strides, "num_level_priors": list(g.priors.level_sizes),
            "level_shapes": list(g.priors.level_shapes), "assigner": repr(assigner)}


def compute_assignment(assigner, gt_bboxes: torch.Tensor, gt_labels: torch.Tensor, image_size: Tuple[int, int],
                       num_classes: int, model=None, image: Optional[torch.Tensor] = None,
                       strides: Sequence[int] = (8, 16, 32), prior_scale: float = 5.0) -> Dict[str, Any]:
    """Run ``assigner`` (an object or a config dict) on one image's GTs over YOLO grid priors: :func:`grid_inputs`
    then :func:`assign_on_grid` (every assigner through the batched interface, as the loss calls it).

    Score-based assigners (TAL, SimOTA, DynamicSoftLabel) read ``model``'s predictions on ``image``
    (float [1, 3, H, W] in [0, 1]); without a model, scores are 0.5 and predicted boxes equal the square
    priors of side ``prior_scale * stride``.
    """
    g = grid_inputs(gt_bboxes, gt_labels, image_size, num_classes, model, image, strides, prior_scale)
    return assign_on_grid(assigner, g)


def per_gt_counts(assignment: Dict[str, Any], num_gts: int) -> np.ndarray:
    """[L, M] positives of each GT on each pyramid level (sum over axis 0: positives per GT)."""
    gt_inds = assignment["gt_inds"].numpy()
    out, start = [], 0
    for n in assignment["num_level_priors"]:
        inds = gt_inds[start:start + n]
        start += n
        out.append(np.bincount(inds[inds > 0] - 1, minlength=num_gts)[:num_gts] if num_gts else np.zeros(0, int))
    return np.array(out, dtype=np.int64).reshape(len(out), num_gts)


def assignment_summary(assignment: Dict[str, Any], gt_bboxes) -> Dict[str, Any]:
    """JSON-ready numbers of one assignment: :meth:`AssignmentStats.to_dict` plus one row per GT (its box,
    area, COCO size, positives in all and per level)."""
    from .stats import SIZE_BUCKETS

    boxes = np.asarray(torch.as_tensor(gt_bboxes).float()).reshape(-1, 4)
    counts = per_gt_counts(assignment, len(boxes))
    rows = []
    for j, box in enumerate(boxes.tolist()):
        area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        size = next(name for name, low, high in SIZE_BUCKETS if low <= area < high)
        rows.append({"gt": j + 1, "box": [round(v, 2) for v in box], "area": round(area, 1), "size": size,
                     "positives": int(counts[:, j].sum()), "per_level": counts[:, j].tolist()})
    return dict(assigner=assignment["name"], config=assignment["assigner"], **assignment["stats"].to_dict(),
                per_gt=rows)


def _label(ax, x: float, y: float, text: str, color, size: float = 7.5) -> None:
    ax.text(x + 1, y + 1, text, fontsize=size, va="top", ha="left", color="black",
            bbox=dict(boxstyle="square,pad=0.12", fc=tuple(color) + (0.85,), ec="none"))


_LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P")


def _assignment_colors(n: int) -> np.ndarray:
    """[n, 3] GT colours for assignment pictures: tab20 without its two reds, which mean "no positive" there."""
    plt = pyplot()
    cmap = plt.get_cmap("tab20")
    palette = [cmap(i)[:3] for i in range(20) if i not in (6, 7)]
    return np.array([palette[i % len(palette)] for i in range(n)], dtype=np.float32).reshape(-1, 3)


def _draw_gts(ax, boxes: np.ndarray, colors: np.ndarray, totals: np.ndarray, labels: Optional[np.ndarray]) -> None:
    """GT outlines (dashed when the GT has no positive at all) and, where ``labels`` is given, their counts."""
    plt = pyplot()
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        zero = totals[j] == 0
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6 if zero else 1.2,
                                   color="red" if zero else colors[j], ls="--" if zero else "-"))
        if labels is not None and (labels[j] > 0 or zero):
            _label(ax, x1, y1, f"#{j + 1}: 0" if zero else str(int(labels[j])), (1.0, 0.3, 0.3) if zero else colors[j])


def _draw_priors(ax, points: np.ndarray, gt_inds: np.ndarray, strength: np.ndarray, colors: np.ndarray,
                 marker: str = "o", show_ignored: bool = True) -> None:
    """Positive priors as markers in their GT's colour, area growing with the soft target; ignored priors as
    grey crosses."""
    pos = gt_inds > 0
    if pos.any():
        ax.scatter(points[pos, 0], points[pos, 1], s=6 + 70 * np.clip(strength[pos], 0, 1), marker=marker,
                   c=colors[gt_inds[pos] - 1], edgecolors="black", linewidths=0.4, zorder=3)
    ignored = gt_inds == -1
    if show_ignored and ignored.any():
        ax.scatter(points[ignored, 0], points[ignored, 1], s=7, marker="x", c="0.55", linewidths=0.6, zorder=2)


def _legend(fig, num_levels: int, level_names: Sequence[str]) -> None:
    plt = pyplot()
    Line2D = __import__("matplotlib.lines", fromlist=["Line2D"]).Line2D
    handles = [Line2D([], [], ls="", marker="o", ms=math.sqrt(6 + 70 * s), mfc="0.6", mec="black", mew=0.4,
                      label=f"soft target {s:g}") for s in (0.1, 0.5, 1.0)]
    handles += [Line2D([], [], ls="", marker=_LEVEL_MARKERS[i % len(_LEVEL_MARKERS)], ms=6, mfc="white",
                       mec="black", label=level_names[i]) for i in range(num_levels)]
    handles += [Line2D([], [], ls="", marker="x", ms=5, mec="0.55", label="ignored prior"),
                plt.Rectangle((0, 0), 1, 1, fill=False, ec="red", ls="--", label="GT with no positive")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def _row_caption(assignment: Dict[str, Any], boxes: np.ndarray, totals: np.ndarray) -> str:
    s = assignment["stats"]
    zero = np.flatnonzero(totals == 0)
    listed = ", ".join(f"#{j + 1} ({boxes[j, 2] - boxes[j, 0]:.0f}x{boxes[j, 3] - boxes[j, 1]:.0f})"
                       for j in zero[:8]) + (" ..." if len(zero) > 8 else "")
    small = s.by_size["small"]
    text = (f"{assignment['name']}: {s.num_positives} positives for {s.num_gts} GTs, {s.mean_positives_per_gt:.1f} "
            f"per GT (min {int(totals.min()) if len(totals) else 0}, max {int(totals.max()) if len(totals) else 0})"
            f"; small GTs {small['gts']}, {small['zero_positive_gts']} without a positive")
    if s.ignored_priors:
        text += f"; {s.ignored_priors} ignored priors"
    return text + (f"\nno positive: {listed}" if len(zero) else "\nevery GT has a positive")


def assignment_figure(image: np.ndarray, gt_bboxes, assignment, path: PathLike, title: str = "") -> Path:
    """:func:`draw_assignments` written to ``path`` (PNG, parents created); returns the path."""
    return save_figure(draw_assignments(image, gt_bboxes, assignment, title), path, dpi=100)


def draw_assignments(image: np.ndarray, gt_bboxes, assignment, title: str = ""):
    """Which priors an assigner made positive, one row per assignment (``assignment``: one dict from
    :func:`compute_assignment` or a list of them, e.g. several assigners on the same image).

    Columns: all levels together (marker shape = level; each GT labelled with its positives in all), then
    one panel per pyramid level (GTs labelled with their positives on that level). Every panel shows the
    whole image on the image's own pixel scale, so a GT sits at the same place in every panel. Positive
    priors are markers in their GT's colour whose area grows with the soft target the loss trains them
    with; ignored priors are grey crosses; a GT without any positive is dashed red, labelled ``#k: 0`` and
    listed under its row. Returns the matplotlib figure.
    """
    plt = pyplot()
    rows = assignment if isinstance(assignment, (list, tuple)) else [assignment]
    if not rows:
        raise ValueError("assignment_figure needs at least one assignment, got an empty list")
    boxes = np.asarray(torch.as_tensor(gt_bboxes).float()).reshape(-1, 4)
    h, w = image.shape[:2]
    colors = _assignment_colors(len(boxes))
    num_levels = len(rows[0]["num_level_priors"])
    starts = np.cumsum([0] + list(rows[0]["num_level_priors"][:-1]))
    strides = [int(s) for s in np.asarray(rows[0]["strides"])[starts].tolist()]
    level_names = [f"P{int(round(math.log2(s)))} (stride {s})" if s > 0 else f"level {i}"
                   for i, s in enumerate(strides)]
    # Axes placed by hand (inches), all of one size: every panel has the image's own scale and aspect,
    # and no caption or label can shrink a panel as a layout engine would.
    cols, pad = num_levels + 1, 0.12
    pw = 4.2 if w >= h else 4.2 * w / h
    ph = pw * h / w
    head, cap, top, foot = 0.3, 0.5, 0.45 if title else 0.1, 0.45
    row_h = head + ph + cap
    fig_w, fig_h = cols * (pw + pad) + pad, top + len(rows) * row_h + foot
    fig = plt.figure(figsize=(fig_w, fig_h))
    for r, a in enumerate(rows):
        counts = per_gt_counts(a, len(boxes))  # [L, M]
        totals = counts.sum(0)
        gt_inds, strength, points = a["gt_inds"].numpy(), a["strength"].numpy(), a["points"].numpy()
        bounds = np.cumsum([0] + list(a["num_level_priors"]))
        bottom = fig_h - top - r * row_h - head - ph
        for c in range(cols):
            ax = fig.add_axes(((pad + c * (pw + pad)) / fig_w, bottom / fig_h, pw / fig_w, ph / fig_h))
            ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
            if c == 0:
                _draw_gts(ax, boxes, colors, totals, totals)
                for lvl in range(num_levels):
                    sl = slice(bounds[lvl], bounds[lvl + 1])
                    _draw_priors(ax, points[sl], gt_inds[sl], strength[sl], colors,
                                 _LEVEL_MARKERS[lvl % len(_LEVEL_MARKERS)], show_ignored=False)
                ax.set_title(f"{a['name']}, all levels: {int((gt_inds > 0).sum())} positives", fontsize=9,
                             fontweight="bold")
            else:
                sl = slice(bounds[c - 1], bounds[c])
                _draw_gts(ax, boxes, colors, totals, counts[c - 1])
                _draw_priors(ax, points[sl], gt_inds[sl], strength[sl], colors,
                             _LEVEL_MARKERS[(c - 1) % len(_LEVEL_MARKERS)])
                ax.set_title(f"{level_names[c - 1]}: {int((gt_inds[sl] > 0).sum())} positives", fontsize=9)
            ax.set_xlim(0, w)  # priors off the image must not rescale a panel
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.text(pad / fig_w, (bottom - 0.06) / fig_h, _row_caption(a, boxes, totals), fontsize=8.5, va="top",
                 ha="left")
    if title:
        fig.text(0.5, 1 - 0.08 / fig_h, title, fontsize=10, ha="center", va="top")
    _legend(fig, num_levels, level_names)
    return fig


# --------------------------------------------------------------------------- detections and evaluation plots


def class_colors(n: int) -> np.ndarray:
    """``n`` RGB colours as uint8 ([n, 3]), one per class: tab20's saturated half first (tab10: neighbours
    in the class list stay distinct), then its light half, cycling."""
    cmap = pyplot().get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    colors = np.array([cmap(order[i % 20])[:3] for i in range(n)], dtype=np.float64).reshape(-1, 3)
    return (colors * 255).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def draw_detections(image: np.ndarray, boxes, scores, labels, class_names: Sequence[str], gt_bboxes=None,
                    legend: bool = True):
    """PIL image of ``image`` ([H, W, 3] uint8) with detections: ``boxes`` [N, 4] xyxy px, ``scores`` [N],
    ``labels`` [N] class indices into ``class_names``. One colour per class; each box carries "name 0.87"
    on a tab of its colour; a legend (top right) lists the classes present with their counts. ``gt_bboxes``
    [M, 4], when given, are outlined thin in white underneath."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    boxes = np.asarray(torch.as_tensor(boxes).detach().cpu().float()).reshape(-1, 4)
    scores = np.asarray(torch.as_tensor(scores).detach().cpu().float()).reshape(-1)
    labels = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores and labels must have one row per detection, got {len(boxes)}, "
                         f"{len(scores)} and {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must index class_names (0 .. {len(class_names) - 1}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    colors = [tuple(int(v) for v in c) for c in class_colors(len(class_names))]
    side = im.width + im.height
    line, font = max(1, round(side * 0.0015)), _font(max(9, round(side * 0.009)))
    if gt_bboxes is not None:
        for x1, y1, x2, y2 in np.asarray(torch.as_tensor(gt_bboxes).float()).reshape(-1, 4).tolist():
            draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 255), width=1)
    for (x1, y1, x2, y2), s, c in sorted(zip(boxes.tolist(), scores.tolist(), labels.tolist()), key=lambda r: r[1]):
        draw.rectangle([x1, y1, x2, y2], outline=colors[c], width=line)  # low scores first: best drawn on top
        text = f"{class_names[c]} {s:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, inside it at the image's top edge
        draw.rectangle([x1, ty, x1 + tw + 3, ty + th + 2], fill=colors[c])
        luminance = 0.299 * colors[c][0] + 0.587 * colors[c][1] + 0.114 * colors[c][2]
        draw.text((x1 + 1 - left, ty + 1 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
                  font=font)
    present = np.unique(labels)
    if legend and len(present):
        counts = np.bincount(labels, minlength=len(class_names))
        entries = [(colors[c], f"{class_names[c]}: {counts[c]}") for c in present]
        heights = [draw.textbbox((0, 0), t, font=font) for _, t in entries]
        th = max(b[3] - b[1] for b in heights)
        tw = max(b[2] - b[0] for b in heights)
        pad, swatch = 4, th
        width, height = pad * 3 + swatch + tw, pad + len(entries) * (th + pad)
        x0 = max(im.width - width - 2, 0)
        draw.rectangle([x0, 2, x0 + width, 2 + height], fill=(255, 255, 255), outline=(0, 0, 0))
        for k, ((color, text), b) in enumerate(zip(entries, heights)):
            y = 2 + pad + k * (th + pad)
            draw.rectangle([x0 + pad, y, x0 + pad + swatch, y + th], fill=color)
            draw.text((x0 + 2 * pad + swatch - b[0], y - b[1]), text, fill=(0, 0, 0), font=font)
    return im


def save_detections(image: np.ndarray, path: PathLike, boxes, scores, labels, class_names: Sequence[str],
                    gt_bboxes=None, legend: bool = True) -> Path:
    """:func:`draw_detections` written to ``path`` (PNG; parents created). Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, boxes, scores, labels, class_names, gt_bboxes, legend).save(path)
    return path
