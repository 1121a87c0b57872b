"""Task-aligned assignment for oriented boxes, as ultralytics 8.4.190 ``RotatedTaskAlignedAssigner`` (OBB).

Shape symbols: B batch, A anchors, M padded GTs, C classes, G valid GT rows, P candidate pairs.
Boxes are ``xywhr`` [..., 5] (radians, see :mod:`detassign.rotated_boxes`), in pixels.

Algorithm (``utils/tal.py`` of ultralytics 8.4.190; the rotated class overrides two methods of its
``TaskAlignedAssigner``):

1. candidates (``select_candidates_in_gts``): GT sides shorter than ``stride_val`` (``strides[1]``, 16 px
   for strides 8 / 16 / 32) are set to ``stride_val`` (valid GTs only, the angle and centre unchanged);
   with the corners a, b, _, d of that box an anchor point p is a candidate when
   ``0 <= (p - a).(b - a) <= |b - a|^2`` and ``0 <= (p - a).(d - a) <= |d - a|^2`` - an **inclusive**
   test (the horizontal assigner's is strict, ``> 1e-9``);
2. overlap (``iou_calculation``): ProbIoU(GT, predicted box) clamped at 0, on candidate pairs only;
   metric t = s^alpha * u^beta with s the predicted probability of the GT's class;
3. top-k per GT by t over the dense row (non-candidates hold 0), intersected with the candidates;
4. an anchor chosen by several GTs goes to the argmax of its overlap over all GTs (0 off the
   candidates, ties to the lowest GT index);
5. optional ``topk2``: each GT keeps its best ``topk2`` anchors by t after step 4;
6. targets: the GT's box [5] and label; soft class target t * max_pos(u) / (max_pos(t) + eps), maxima per
   GT over its final positives.

Here no ``[B, M, A]`` tensor is built: the widened GT's axis-aligned bounding box selects, per pyramid
level, the grid cells that can hold candidates (anchor points laid out as ultralytics ``make_anchors``,
detected exactly; otherwise a chunked test over all anchors), the exact inclusive test runs on those
pairs with the reference's float operations (corners, edges and squared lengths computed on the padded
``[B, M, 5]`` tensor exactly as there, so the decisions are bit-identical), and steps 2-6 run on the
candidate pairs in ultralytics' order. Memory is proportional to the candidate pairs plus the
``[B, A, C]`` target scores, so thousands of oriented GTs per image (aerial scenes) fit on a CPU.

Ties (``tie_break``): ``"index"`` (default) ranks equal metrics by anchor index among the candidates;
ultralytics' ``torch.topk`` over the dense row may instead keep other zero-metric anchors (candidates or
not), an order that is unspecified and device-dependent. ``"torch"`` rebuilds the dense ``[B, M, A]``
metric and calls ``torch.topk`` on it (and on the dense ``topk2`` rows) as the reference does, which
reproduces its choice on the same device (at its memory cost). Results agree exactly whenever no GT
must choose among zero-metric candidates.

Presets (``ROTATED_TAL_PRESETS``; explicit arguments override them):

====================  ==================================================================================
``"ultralytics"``     the class defaults: topk 13, alpha 1.0, beta 6.0, strides (8, 16, 32), eps 1e-9
``"ultralytics_loss"`` ``v8OBBLoss``: topk 10, alpha 0.5, beta 6.0 (YOLOv8 / YOLO11 OBB training)
``"yolo26_one2many"`` YOLO26-OBB one-to-many branch: ``E2ELoss(model, v8OBBLoss)`` builds
                      ``v8OBBLoss(model, tal_topk=10)``: topk 10, alpha 0.5, beta 6.0
``"yolo26_one2one"``  YOLO26-OBB one-to-one branch: ``v8OBBLoss(model, tal_topk=7, tal_topk2=1)``:
                      topk 7 then ``topk2 = 1`` (one anchor per GT after de-duplication)
====================  ==================================================================================

``v8OBBLoss`` drops GTs whose side is below 2 px (``(rw >= 2) & (rh >= 2)``) before calling the
assigner: that is a loss-side filter (the caller's job), not part of the assignment.
``max_overlaps`` holds the assigned pair's ProbIoU (0 elsewhere), ``assign_metrics`` its t; negatives get
zero target boxes and label -1 (ultralytics returns GT 0's box and label there, read by no loss);
:func:`ultralytics_targets` converts a result into ultralytics' 5-tuple with its conventions.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..rotated_boxes import aligned_probiou, inside_ultralytics_frames, ultralytics_box_frames, xywhr_to_corners
from ..structures import AssignResult, BatchAssignResult
from . import _tal_ops as ops
from .base import BaseAssigner

__all__ = ["RotatedTaskAlignedAssigner", "ROTATED_TAL_PRESETS", "ultralytics_targets", "RotatedFrames",
           "rotated_candidate_frames", "rotated_candidate_pairs"]

_BASE = dict(topk=13, alpha=1.0, beta=6.0, topk2=None, strides=(8, 16, 32), widen_small_gt=True, eps=1e-9)
ROTATED_TAL_PRESETS = {
    "ultralytics": dict(_BASE),
    "ultralytics_loss": dict(_BASE, topk=10, alpha=0.5),
    "yolo26_one2many": dict(_BASE, topk=10, alpha=0.5),
    "yolo26_one2one": dict(_BASE, topk=7, alpha=0.5, topk2=1),
}
TIE_BREAKS = ("index", "torch")
_BYTES_PER_PAIR = 400      # peak of the gathered pair boxes and the ProbIoU temporaries per pair
_BYTES_PER_TEST = 40       # the inside test of one (GT, anchor) pair in the generic (non-grid) path
_PAIR_BLOCK_MULTIPLE = 1024  # pair blocks keep vector alignment, so element-wise kernels round as one call


class RotatedFrames(NamedTuple):
    """Per valid GT row (each [G]): corner a, edges ab / ad, their squared lengths (the inside test), and
    the axis-aligned bounding box [G, 4] of the widened GT (the candidate window)."""

    ax: Tensor
    ay: Tensor
    abx: Tensor
    aby: Tensor
    adx: Tensor
    ady: Tensor
    norm_ab: Tensor
    norm_ad: Tensor
    window: Tensor

    def select(self, index: Tensor) -> Tuple[Tensor, ...]:
        return tuple(f.index_select(0, index) for f in self[:8])


def rotated_candidate_frames(gt_bboxes: Tensor, gt_mask: Tensor, rows: Tensor, min_size: Optional[float]) -> RotatedFrames:
    """Step 1's geometry. gt_bboxes [B, M, 5], gt_mask [B, M], rows [G] flat ``b * M + m`` -> RotatedFrames.

    The widening and the corners are computed on the whole padded ``[B, M, 5]`` tensor with ultralytics'
    operations (``torch.where`` on the sides of valid GTs, then ``xywhr2xyxyxyxy``), so that every value is
    produced by the same kernel on the same layout as in the reference: the inside decisions are then
    identical, also for anchors lying exactly on a side.
    """
    boxes = gt_bboxes.clone()
    if min_size is not None:
        sides = boxes[..., 2:4]
        small = (sides < min_size) & gt_mask[..., None]
        boxes[..., 2:4] = torch.where(small, torch.tensor(min_size, dtype=boxes.dtype, device=boxes.device), sides)
    frames = [f.reshape(-1).index_select(0, rows) for f in ultralytics_box_frames(boxes)]      # each [G]
    corners = xywhr_to_corners(boxes).reshape(-1, 4, 2).index_select(0, rows)                  # [G, 4, 2]
    window = torch.cat((corners.amin(1), corners.amax(1)), -1)
    return RotatedFrames(*frames, window)


def rotated_candidate_pairs(points: Tensor, frames: RotatedFrames, levels: Optional[List[ops.GridLevel]],
                            max_tests: int) -> Tuple[Tensor, Tensor]:
    """Candidate (GT row, anchor) pairs. points [A, 2] -> (local [P] in [0, G), anchor [P]), ordered by
    row then anchor (ultralytics' ``nonzero`` order on its dense mask).

    With grid ``levels`` the cells under each GT's bounding box are enumerated (a superset, cost
    proportional to the box areas); otherwise blocks of GT rows are tested against every anchor, at most
    ``max_tests`` pairs at a time.
    """
    G = frames.window.shape[0]
    if levels is not None:
        windows = frames.window[:, None, :].expand(-1, len(levels), -1)
        local, anchor = ops.enumerate_cells(levels, *ops.grid_cells(levels, windows))
        pts = points.index_select(0, anchor)
        inside = inside_ultralytics_frames(pts[:, 0], pts[:, 1], *frames.select(local))
        keep = torch.nonzero(inside).squeeze(1)
        return local.index_select(0, keep), anchor.index_select(0, keep)
    A = points.shape[0]
    step = max(1, max_tests // max(A, 1))
    px, py = points[None, :, 0], points[None, :, 1]
    locals_, anchors = [], []
    for lo in range(0, G, step):
        block = torch.arange(lo, min(G, lo + step), device=points.device)
        inside = inside_ultralytics_frames(px, py, *(f[:, None] for f in frames.select(block)))  # [g, A]
        r, a = torch.nonzero(inside, as_tuple=True)
        locals_.append(r + lo)
        anchors.append(a)
    if not locals_:
        empty = torch.zeros(0, dtype=torch.long, device=points.device)
        return empty, empty
    return torch.cat(locals_), torch.cat(anchors)


class RotatedTaskAlignedAssigner(BaseAssigner):
    """Task-aligned assigner for oriented boxes (ultralytics' OBB assigner); see the module docstring.

    Args (None = from ``preset``, default ``"ultralytics"``):
        topk, alpha, beta: top-k per GT and the metric's exponents.
        num_classes: checked against ``pred_scores`` when given.
        strides: pyramid strides in the anchors' layout order; ``strides[1]`` is the widening size.
        widen_small_gt: widen GT sides below ``strides[1]`` for the candidate test (ultralytics: always).
        topk2: keep each GT's best ``topk2`` anchors after de-duplication (YOLO26 one-to-one: 1).
        tie_break: ``"index"`` or ``"torch"`` (ultralytics' ``torch.topk`` tie order, dense memory).
        eps: in the target-score normaliser ``max_pos(t) + eps``.
        max_chunk_mib: temporary-memory budget of one block of pairs (None: 256 on CPU, 2048 elsewhere).

    ``build_assigner(dict(type="RotatedTaskAlignedAssigner", preset="ultralytics_loss", num_classes=15))``.
    """

    def __init__(self, topk: Optional[int] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                 preset: Optional[str] = None, num_classes: Optional[int] = None, *,
                 strides: Optional[Sequence[float]] = None, widen_small_gt: Optional[bool] = None,
                 topk2: Optional[int] = None, tie_break: str = "index", eps: Optional[float] = None,
                 max_chunk_mib: Optional[float] = None) -> None:
        preset = "ultralytics" if preset is None else preset
        if preset not in ROTATED_TAL_PRESETS:
            raise ValueError(f"preset must be one of {sorted(ROTATED_TAL_PRESETS)}, got {preset!r}")
        cfg = dict(ROTATED_TAL_PRESETS[preset])
        given = dict(topk=topk, alpha=alpha, beta=beta, strides=strides, widen_small_gt=widen_small_gt,
                     topk2=topk2, eps=eps)
        cfg.update({k: v for k, v in given.items() if v is not None})
        self.preset = preset
        self.topk, self.alpha, self.beta = cfg["topk"], float(cfg["alpha"]), float(cfg["beta"])
        self.topk2, self.eps = cfg["topk2"], float(cfg["eps"])
        self.strides = tuple(float(s) for s in cfg["strides"]) if cfg["strides"] else ()
        self.widen_small_gt = bool(cfg["widen_small_gt"])
        self.num_classes = num_classes
        self.tie_break = tie_break
        self.max_chunk_mib = None if max_chunk_mib is None else float(max_chunk_mib)
        self._check_config()

    def _check_config(self) -> None:
        for name in ("topk", "topk2", "num_classes"):
            value = getattr(self, name)
            if value is None and name != "topk":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1{' or None' if name != 'topk' else ''}, got {value!r}")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if any(s <= 0 for s in self.strides):
            raise ValueError(f"strides must be positive, got {self.strides}")
        if self.widen_small_gt and not self.strides:
            raise ValueError("widen_small_gt=True needs strides (sides are widened to strides[1])")
        if self.max_chunk_mib is not None and not self.max_chunk_mib > 0:
            raise ValueError(f"max_chunk_mib must be positive or None, got {self.max_chunk_mib}")

    @property
    def min_candidate_size(self) -> Optional[float]:
        """Side length small GTs are widened to for the candidate test (ultralytics ``stride_val``)."""
        if not self.widen_small_gt:
            return None
        return self.strides[1] if len(self.strides) > 1 else self.strides[0]

    def _chunk_bytes(self, device: torch.device) -> float:
        mib = self.max_chunk_mib if self.max_chunk_mib is not None else (256.0 if device.type == "cpu" else 2048.0)
        return mib * 2 ** 20

    # ------------------------------------------------------------------ per image
    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None) -> AssignResult:
        """One image. pred_instances: ``priors`` [A, 2] anchor points (or [A, 5] rotated priors, whose
        centres are used), ``bboxes`` [A, 5] decoded xywhr, ``scores`` [A, C] probabilities;
        gt_instances: ``bboxes`` [M, 5] xywhr, ``labels`` [M]. ``gt_instances_ignore`` is not used."""
        priors = V.get_field(pred_instances, "priors", "pred_instances")
        V.check_tensor("pred_instances.priors", priors, ("A", None), floating=True)
        if priors.shape[1] not in (2, 5):
            raise ValueError(f"pred_instances.priors must be [A, 2] points or [A, 5] xywhr priors, got "
                             f"{tuple(priors.shape)}")
        bboxes = V.get_field(pred_instances, "bboxes", "pred_instances")
        scores = V.get_field(pred_instances, "scores", "pred_instances")
        gt_boxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_tensor("gt_instances.bboxes", gt_boxes, ("M", 5), floating=True)
        V.check_tensor("gt_instances.labels", gt_labels, (gt_boxes.shape[0],))
        return self.assign_batch(scores[None], bboxes[None], priors[:, :2], gt_labels[None], gt_boxes[None])[0]

    # ------------------------------------------------------------------ batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """Assign a padded batch (ultralytics' call order).

        pred_scores [B, A, C] probabilities, pred_bboxes [B, A, 5] xywhr px, anchor_points [A, 2] px,
        gt_labels [B, M] or [B, M, 1], gt_bboxes [B, M, 5] xywhr px, gt_mask [B, M] or [B, M, 1] (None: all
        valid). Returns BatchAssignResult: gt_inds [B, A] (1-based padded GT index, 0 negative), labels
        [B, A] (-1 non-positive), max_overlaps [B, A] (ProbIoU), extras ``target_boxes`` [B, A, 5],
        ``target_scores`` [B, A, C], ``assign_metrics`` [B, A]. M == 0 / no valid GT: all negative.
        """
        scores, pred, points, labels, gts, mask = self._check_batch(pred_scores, pred_bboxes, anchor_points,
                                                                    gt_labels, gt_bboxes, gt_mask)
        B, A, C = scores.shape
        M = gts.shape[1]
        rows = torch.nonzero(mask.reshape(-1)).squeeze(1)                                  # [G]
        if rows.numel() == 0 or A == 0:
            zero_l = torch.zeros(B * A, dtype=torch.long, device=scores.device)
            zero_f = torch.zeros(B * A, dtype=scores.dtype, device=scores.device)
            assign = ops.AnchorAssignment(zero_l.bool(), zero_l, zero_f, zero_f)
        else:
            pairs = self._pairs(scores, pred, points, labels, gts, mask, rows)
            assign = ops.resolve_conflicts(pairs, B, A, M, "all_gts")
            if self.topk2 is not None and self.topk2 != self.topk:
                assign = ops.keep_topk2(assign, B, A, M, self.topk2, stable=self.tie_break == "index")
        return self._build_result(assign, scores, labels, gts, mask)

    def _check_batch(self, pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask):
        V.check_tensor("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
        B, A, C = pred_scores.shape
        V.check_tensor("pred_bboxes", pred_bboxes, (B, A, 5), floating=True)
        V.check_tensor("anchor_points", anchor_points, (A, 2), floating=True)
        V.check_tensor("gt_bboxes", gt_bboxes, (B, "M", 5), floating=True)
        M = gt_bboxes.shape[1]
        if self.num_classes is not None and C != self.num_classes:
            raise ValueError(f"pred_scores must have num_classes={self.num_classes} columns, got shape "
                             f"{tuple(pred_scores.shape)}")
        if gt_labels is None:
            raise TypeError("gt_labels is required, got None")
        if gt_labels.dim() == 3 and gt_labels.shape[-1] == 1:
            gt_labels = gt_labels[..., 0]
        V.check_tensor("gt_labels", gt_labels, (B, M))
        if gt_mask is None:
            gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device)
        elif gt_mask.dim() == 3 and gt_mask.shape[-1] == 1:
            gt_mask = gt_mask[..., 0]
        V.check_tensor("gt_mask", gt_mask, (B, M))
        gt_mask = gt_mask.bool()
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                            gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        if gt_labels.is_floating_point() and V.value_checks_enabled() and bool((gt_labels != gt_labels.round()).any()):
            raise ValueError("gt_labels must hold integral class indices, got fractional values")
        gt_labels = gt_labels.long()
        if V.value_checks_enabled():
            V.check_range("pred_scores", pred_scores, 0.0, 1.0)
            V.check_finite("pred_bboxes", pred_bboxes)
            V.check_finite("anchor_points", anchor_points)
            valid_boxes = gt_bboxes[gt_mask]
            V.check_finite("gt_bboxes", valid_boxes)
            if bool((valid_boxes[:, 2:4] < 0).any()):
                raise ValueError("gt_bboxes must be xywhr with non-negative w and h for valid GTs")
            V.check_labels("gt_labels", gt_labels, C, gt_mask)
        dtype = torch.float64 if torch.float64 in (pred_scores.dtype, pred_bboxes.dtype, gt_bboxes.dtype,
                                                   anchor_points.dtype) else torch.float32
        return (pred_scores.to(dtype), pred_bboxes.to(dtype), anchor_points.to(dtype), gt_labels,
                gt_bboxes.to(dtype), gt_mask)

    # ------------------------------------------------------------------ steps 1-3 on candidate pairs
    def _pairs(self, scores, pred, points, labels, gts, mask, rows) -> ops.PairTable:
        B, A, C = scores.shape
        M = gts.shape[1]
        frames = rotated_candidate_frames(gts, mask, rows, self.min_candidate_size)
        levels = ops.detect_grid(points, self.strides)
        budget = self._chunk_bytes(points.device)
        local, anchor = rotated_candidate_pairs(points, frames, levels, int(budget / _BYTES_PER_TEST))
        row = rows.index_select(0, local)
        flat_anchor = torch.div(row, M, rounding_mode="floor") * A + anchor
        # one call over all pairs where the budget allows (the reference's layout); else aligned blocks
        step = max(_PAIR_BLOCK_MULTIPLE, int(budget / _BYTES_PER_PAIR) // _PAIR_BLOCK_MULTIPLE * _PAIR_BLOCK_MULTIPLE)
        flat_gts, flat_pred = gts.reshape(-1, 5), pred.reshape(-1, 5)
        flat_scores, flat_labels = scores.reshape(-1), labels.reshape(-1)
        overlaps, metrics = [], []
        for lo in range(0, max(row.numel(), 1), step):
            r, fa = row[lo:lo + step], flat_anchor[lo:lo + step]
            overlap = aligned_probiou(flat_gts.index_select(0, r), flat_pred.index_select(0, fa)).clamp(min=0)
            score = flat_scores.index_select(0, fa * C + flat_labels.index_select(0, r))
            overlaps.append(overlap)
            metrics.append(ops.alignment_metric(score, overlap, self.alpha, self.beta))
        overlap, metric = torch.cat(overlaps), torch.cat(metrics)
        if self.tie_break == "index":
            selected = ops.rank_in_segments(local, metric, rows.numel(), nonnegative=True) < self.topk
        else:
            selected = self._dense_topk(row, anchor, metric, B, M, A)
        return ops.PairTable(row, anchor, overlap, metric, selected)

    def _dense_topk(self, row: Tensor, anchor: Tensor, metric: Tensor, B: int, M: int, A: int) -> Tensor:
        """``torch.topk`` over the dense [B, M, A] metric (0 off the candidates), as ultralytics runs it."""
        dense = torch.zeros(B * M, A, dtype=metric.dtype, device=metric.device)
        dense[row, anchor] = metric
        k = min(self.topk, A)
        top = torch.topk(dense.view(B, M, A), k, dim=-1, largest=True).indices.view(B * M, k)
        chosen = torch.zeros(B * M, A, dtype=torch.bool, device=metric.device).scatter_(1, top, True)
        return chosen[row, anchor]

    # ------------------------------------------------------------------ outputs
    def _build_result(self, assign: ops.AnchorAssignment, scores: Tensor, labels: Tensor, gts: Tensor,
                      mask: Tensor) -> BatchAssignResult:
        B, A, C = scores.shape
        M = gts.shape[1]
        fg = assign.fg
        anchor_b = torch.arange(B, device=fg.device)[:, None].expand(B, A).reshape(-1)             # [B * A]
        if M:
            gid = anchor_b * M + assign.gt
            gt_label = labels.reshape(-1).index_select(0, gid)
            gt_box = gts.reshape(-1, 5).index_select(0, gid)
            norm = ops.normalized_scores(assign, B, A, M, self.eps, gid)
        else:
            gt_label = torch.zeros(B * A, dtype=torch.long, device=fg.device)
            gt_box = gts.new_zeros(B * A, 5)
            norm = torch.zeros_like(assign.metric)
        target_scores = ops.zeros_buffer((B * A, C), scores.dtype, fg.device)
        if C:
            pos = torch.nonzero(fg).squeeze(1)
            target_scores.view(-1).index_copy_(0, pos * C + gt_label.index_select(0, pos).clamp(0, C - 1),
                                               norm.index_select(0, pos))
        return BatchAssignResult(
            mask.sum(1),
            torch.where(fg, assign.gt + 1, 0).view(B, A),
            torch.where(fg, assign.overlap, torch.zeros_like(assign.overlap)).view(B, A),
            torch.where(fg, gt_label, -1).view(B, A),
            target_boxes=gt_box.masked_fill(~fg[:, None], 0).view(B, A, 5),
            target_scores=target_scores.view(B, A, C),
            assign_metrics=assign.metric.masked_fill(~fg, 0).view(B, A),
        )


def ultralytics_targets(result: BatchAssignResult, gt_labels: Tensor, gt_bboxes: Tensor):
    """A batched TAL result -> ultralytics' ``(target_labels [B, A], target_bboxes [B, A, D],
    target_scores [B, A, C], fg_mask [B, A], target_gt_idx [B, A])`` with its conventions for negatives
    (GT index 0, GT 0's label clamped at 0 and box). gt_labels [B, M] or [B, M, 1], gt_bboxes [B, M, D]
    (D = 4 or 5): what the caller passed to the assigner. M == 0: ultralytics' empty outputs (labels
    ``num_classes``, zeros)."""
    fg = result.fg_mask
    B, A = fg.shape
    C = result.target_scores.shape[-1]
    M, D = gt_bboxes.shape[1], gt_bboxes.shape[-1]
    if M == 0:
        return (torch.full((B, A), C, dtype=torch.long, device=fg.device), gt_bboxes.new_zeros(B, A, D),
                result.target_scores, fg, torch.zeros(B, A, dtype=torch.long, device=fg.device))
    gt_idx = torch.where(fg, result.gt_inds - 1, 0)
    flat = torch.arange(B, device=fg.device)[:, None] * M + gt_idx
    labels = gt_labels.reshape(B, M).long().reshape(-1)[flat].clamp(min=0)
    boxes = gt_bboxes.reshape(-1, D)[flat]
    return labels, boxes, result.target_scores, fg, gt_idx
