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
not), an order that is unspecified and device-dependent. ``"torch"`` reproduces that choice on the same
device: the top-k of a GT is read off the pairs where it is unique, and only the GT rows whose k-th metric
is tied (usually a GT reaching zero-metric candidates) are rebuilt densely, in blocks within
``max_chunk_mib``, and ranked by ``torch.topk`` itself (:func:`detassign.assigners._pairs.reference_topk`;
the ``topk2`` rows likewise). Results agree exactly whenever no GT must choose among zero-metric
candidates.

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
:func:`detassign.integrations.ultralytics.ultralytics_targets` converts a result into ultralytics' 5-tuple
with its conventions, and :class:`detassign.integrations.ultralytics.RotatedTaskAlignedAssigner` is the
one-line swap for ultralytics' own class.

Inputs are checked as every assigner's (:mod:`detassign._validate`): lists / numpy arrays, wrong shapes,
NaN / Inf, probabilities outside [0, 1], labels outside [0, C) or fractional, and valid GTs with a
negative side are refused naming the argument; per image, an empty tensor of any dtype means no GT.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import compute_dtype
from ..rotated_boxes import aligned_probiou, inside_ultralytics_frames, ultralytics_box_frames, xywhr_to_corners
from ..structures import AssignResult, BatchAssignResult, as_priors
from . import _pairs
from . import _tal_ops as ops
from ._batch import check_padded_gts
from .base import BaseAssigner

__all__ = ["RotatedTaskAlignedAssigner", "ROTATED_TAL_PRESETS", "RotatedFrames", "rotated_candidate_frames",
           "rotated_candidate_pairs"]

_BASE = dict(topk=13, alpha=1.0, beta=6.0, topk2=None, strides=(8, 16, 32), widen_small_gt=True, eps=1e-9)
ROTATED_TAL_PRESETS = {
    "ultralytics": dict(_BASE),
    "ultralytics_loss": dict(_BASE, topk=10, alpha=0.5),
    "yolo26_one2many": dict(_BASE, topk=10, alpha=0.5),
    "yolo26_one2one": dict(_BASE, topk=7, alpha=0.5, topk2=1),
}
TIE_BREAKS = _pairs.TIE_BREAKS
_BYTES_PER_PAIR = 400      # peak of the gathered pair boxes and the ProbIoU temporaries per pair
_BYTES_PER_TEST = 40       # the inside test of one enumerated (GT, anchor) pair
_PAIR_BLOCK_MULTIPLE = 1024  # pair blocks keep vector alignment, so element-wise kernels round as one call
_BYTES_PER_DENSE_ELEMENT = 16  # a densely rebuilt tied row: the metric, the kept mask and topk's scratch


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


def rotated_candidate_frames(gt_bboxes: Tensor, gt_mask: Tensor, rows: Tensor,
                             min_size: Optional[float]) -> RotatedFrames:
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


def rotated_candidate_pairs(points: Tensor, frames: RotatedFrames, levels: Optional[List[_pairs.GridLevel]],
                            max_pairs: int) -> Tuple[Tensor, Tensor]:
    """Candidate (GT row, anchor) pairs. points [A, 2] -> (local [P] in [0, G), anchor [P]), ordered by
    row then anchor (ultralytics' ``nonzero`` order on its dense mask).

    The shared candidate plan (:func:`detassign.assigners._pairs.plan_candidates`): with grid ``levels``
    the cells under each GT's bounding box (a superset, cost proportional to the box areas), otherwise
    every anchor; then the exact inclusive test, at most ``max_pairs`` enumerated pairs at a time.
    """
    plan = _pairs.plan_candidates(levels, frames.window, points.shape[0])
    locals_, anchors = [], []
    for block in plan.blocks(max_pairs):
        local, anchor = plan.pairs(block)
        pts = points.index_select(0, anchor)
        keep = torch.nonzero(inside_ultralytics_frames(pts[:, 0], pts[:, 1], *frames.select(local))).squeeze(1)
        locals_.append(local.index_select(0, keep))
        anchors.append(anchor.index_select(0, keep))
    if not locals_:
        empty = torch.zeros(0, dtype=torch.long, device=points.device)
        return empty, empty
    return torch.cat(locals_), torch.cat(anchors)


class RotatedTaskAlignedAssigner(BaseAssigner):
    """Task-aligned assigner for oriented boxes (ultralytics' OBB assigner); see the module docstring.

    Args (None = from ``preset``, default ``"ultralytics"``):
        topk, alpha, beta: top-k per GT and the metric's exponents (alpha, beta >= 0).
        num_classes: checked against ``pred_scores`` when given.
        strides: pyramid strides in the anchors' layout order; ``strides[1]`` is the widening size.
        widen_small_gt: widen GT sides below ``strides[1]`` for the candidate test (ultralytics: always).
        topk2: keep each GT's best ``topk2`` anchors after de-duplication (YOLO26 one-to-one: 1).
        tie_break: ``"index"`` or ``"torch"`` (ultralytics' ``torch.topk`` tie order, rebuilt densely only
            on the tied GT rows).
        eps: in the target-score normaliser ``max_pos(t) + eps``.
        max_chunk_mib: temporary-memory budget of one block of pairs (None: 256 on CPU, 2048 elsewhere).

    Hyper-parameters are checked here (a string, a bool for a number, NaN: an error naming the argument).
    ``build_assigner(dict(type="RotatedTaskAlignedAssigner", preset="ultralytics_loss", num_classes=15))``.
    """

    def __init__(self, topk: Optional[int] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                 preset: Optional[str] = None, num_classes: Optional[int] = None, *,
                 strides: Optional[Sequence[float]] = None, widen_small_gt: Optional[bool] = None,
                 topk2: Optional[int] = None, tie_break: str = "index", eps: Optional[float] = None,
                 max_chunk_mib: Optional[float] = None) -> None:
        self.preset = V.check_choice("preset", "ultralytics" if preset is None else preset,
                                     tuple(ROTATED_TAL_PRESETS))
        cfg = dict(ROTATED_TAL_PRESETS[self.preset])
        given = dict(topk=topk, alpha=alpha, beta=beta, strides=strides, widen_small_gt=widen_small_gt,
                     topk2=topk2, eps=eps)
        cfg.update({k: v for k, v in given.items() if v is not None})
        self.topk = V.check_number("topk", cfg["topk"], low=1, integer=True)
        self.topk2 = V.check_number("topk2", cfg["topk2"], low=1, integer=True, allow_none=True)
        # a NaN or negative exponent gives NaN / Inf metrics (0 ** -1), never an error downstream
        self.alpha = float(V.check_number("alpha", cfg["alpha"], low=0))
        self.beta = float(V.check_number("beta", cfg["beta"], low=0))
        self.eps = float(V.check_number("eps", cfg["eps"], low=0))
        if not isinstance(cfg["strides"], (list, tuple)):
            raise V.ParameterTypeError(f"strides must be a list of positive numbers, got {cfg['strides']!r}")
        self.strides = tuple(float(V.check_number(f"strides[{i}]", s, low=0, low_open=True))
                             for i, s in enumerate(cfg["strides"]))
        self.widen_small_gt = V.check_flag("widen_small_gt", cfg["widen_small_gt"])
        self.num_classes = V.check_number("num_classes", num_classes, low=1, integer=True, allow_none=True)
        self.tie_break = V.check_choice("tie_break", tie_break, TIE_BREAKS)
        mib = V.check_number("max_chunk_mib", max_chunk_mib, low=0, low_open=True, allow_none=True)
        self.max_chunk_mib = None if mib is None else float(mib)
        if self.widen_small_gt and not self.strides:
            raise ValueError("widen_small_gt=True needs strides (sides are widened to strides[1])")

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
        gt_instances: ``bboxes`` [M, 5] xywhr, ``labels`` [M]. ``gt_instances_ignore`` is not used.
        An empty tensor of any dtype or rank means no GT (or no priors)."""
        priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A", None), floating=True, empty_rows=True)
        if priors.shape == (0, 0):
            priors = priors.new_zeros((0, 2))
        if priors.shape[1] not in (2, 5):
            raise ValueError(f"pred_instances.priors must be [A, 2] points or [A, 5] xywhr priors, got "
                             f"{tuple(priors.shape)}")
        bboxes = V.tensor_input("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                ("A", 5), floating=True, empty_rows=True)
        scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                                ("A", "C"), floating=True, empty_rows=True)
        V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.bboxes", bboxes, 0),
                            ("pred_instances.scores", scores, 0)])
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                  ("M", 5), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), num_classes=V.num_classes_of(scores),
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        V.check_predictions(("pred_instances.scores", "pred_instances.bboxes", "pred_instances.priors"), scores, bboxes,
                            priors, probabilities=True)
        V.check_rboxes("gt_instances.bboxes", gt_bboxes)
        num_gts = gt_bboxes.shape[0]
        if priors.shape[0] == 0:   # no priors, nothing to assign (empty scores need not even say C)
            gt_bboxes, gt_labels = gt_bboxes[:0], gt_labels[:0]
        result = self.assign_batch_probs(scores[None], bboxes[None], priors[:, :2], gt_labels[None],
                                         gt_bboxes[None])[0]
        result.num_gts = num_gts
        return result

    # ------------------------------------------------------------------ batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """Assign a padded batch (ultralytics' call order; scores are the head's logits, as for
        :meth:`TaskAlignedAssigner.assign_batch <detassign.assigners.task_aligned.TaskAlignedAssigner.assign_batch>`).

        pred_scores [B, A, C] logits (the sigmoid is applied here), pred_bboxes [B, A, 5] xywhr px,
        anchor_points [A, 2] px, gt_labels [B, M] or [B, M, 1], gt_bboxes [B, M, 5] xywhr px, gt_mask [B, M]
        or [B, M, 1] (None: all valid). Returns BatchAssignResult: gt_inds [B, A] (1-based padded GT index,
        0 negative), labels [B, A] (-1 non-positive), max_overlaps [B, A] (ProbIoU), extras
        ``target_boxes`` [B, A, 5], ``target_scores`` [B, A, C], ``assign_metrics`` [B, A]. M == 0 / no
        valid GT: all negative.
        """
        return self._assign(*self._check_batch(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes,
                                               gt_mask, probs=False))

    @torch.no_grad()
    def assign_batch_probs(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                           gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """:meth:`assign_batch` for callers that hold probabilities: pred_scores [B, A, C] in [0, 1]
        (ultralytics' ``RotatedTaskAlignedAssigner`` call, which receives ``sigmoid(logits)``)."""
        return self._assign(*self._check_batch(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes,
                                               gt_mask, probs=True))

    def _assign(self, scores: Tensor, pred: Tensor, points: Tensor, labels: Tensor, gts: Tensor,
                mask: Tensor) -> BatchAssignResult:
        """Steps 1-6. scores [B, A, C] probabilities, pred [B, A, 5], points [A, 2], labels [B, M], gts
        [B, M, 5] (compute dtype), mask [B, M]."""
        B, A, C = scores.shape
        M = gts.shape[1]
        rows = torch.nonzero(mask.reshape(-1)).squeeze(1)                                  # [G]
        if rows.numel() == 0 or A == 0:
            zero_l = torch.zeros(B * A, dtype=torch.long, device=scores.device)
            zero_f = torch.zeros(B * A, dtype=scores.dtype, device=scores.device)
            assign = ops.AnchorAssignment(zero_l.bool(), zero_l, zero_f, zero_f)
        else:
            pairs = self._candidate_pairs(scores, pred, points, labels, gts, mask, rows)    # steps 1-3
            assign = ops.resolve_conflicts(pairs, B, A, M, "all_gts")                        # step 4
            if self.topk2 is not None and self.topk2 != self.topk:                           # step 5
                assign = ops.keep_topk2(assign, B, A, M, self.topk2, stable=self.tie_break == "index",
                                        max_elems=self._dense_elements(scores.device))
        return self._build_result(assign, scores, labels, gts, mask)                         # step 6

    def _check_batch(self, pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, probs: bool):
        """Validated inputs in the compute dtype (scores as probabilities: logits go through the sigmoid
        after the upcast)."""
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "A", 5), floating=True)
        # the batched interface's priors: a detassign.Priors or the anchor points [A, 2]
        anchor_points = V.tensor_input("anchor_points", as_priors(anchor_points, "anchor_points").points, ("A", 2),
                                       floating=True)
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 5), floating=True)
        # the anchors are fixed by the model: name the tensor that disagrees with the others
        V.check_agree("A", [("anchor_points", anchor_points, 0), ("pred_scores", pred_scores, 1),
                            ("pred_bboxes", pred_bboxes, 1)])
        V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0),
                            ("gt_bboxes", gt_bboxes, 0)])
        C = pred_scores.shape[2]
        if self.num_classes is not None and C != self.num_classes and pred_scores.shape[1]:
            raise ValueError(f"pred_scores must have num_classes={self.num_classes} columns, got shape "
                             f"{tuple(pred_scores.shape)}")
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                            gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        labels, gts, mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, V.num_classes_of(pred_scores, 1),
                                             box_format="xywhr")
        V.check_predictions(("pred_scores", "pred_bboxes", "anchor_points"), pred_scores, pred_bboxes, anchor_points, probs)
        dtype = compute_dtype(pred_scores, pred_bboxes, gt_bboxes, anchor_points)
        scores = pred_scores.to(dtype) if probs else pred_scores.to(dtype).sigmoid()
        return scores, pred_bboxes.to(dtype), anchor_points.to(dtype), labels, gts.to(dtype), mask

    def _dense_elements(self, device: torch.device) -> int:
        """Elements of one block of densely rebuilt (tied) metric rows within ``max_chunk_mib``."""
        return max(1, int(self._chunk_bytes(device) / _BYTES_PER_DENSE_ELEMENT))

    # ------------------------------------------------------------------ steps 1-3 on candidate pairs
    def _candidate_pairs(self, scores, pred, points, labels, gts, mask, rows) -> ops.PairTable:
        B, A, C = scores.shape
        M = gts.shape[1]
        frames = rotated_candidate_frames(gts, mask, rows, self.min_candidate_size)
        levels = _pairs.detect_grid(points, self.strides)
        budget = self._chunk_bytes(points.device)
        local, anchor = rotated_candidate_pairs(points, frames, levels, max(1, int(budget / _BYTES_PER_TEST)))  # 1.
        row = rows.index_select(0, local)
        flat_anchor = torch.div(row, M, rounding_mode="floor") * A + anchor
        # ProbIoU in one call over all pairs where the budget allows (the reference's layout), else in
        # aligned blocks: its exp / log / sqrt round like that one call, element for element
        step = max(_PAIR_BLOCK_MULTIPLE, int(budget / _BYTES_PER_PAIR) // _PAIR_BLOCK_MULTIPLE * _PAIR_BLOCK_MULTIPLE)
        flat_gts, flat_pred = gts.reshape(-1, 5), pred.reshape(-1, 5)
        flat_scores, flat_labels = scores.reshape(-1), labels.reshape(-1)
        overlaps, metrics = [], []
        for lo in range(0, max(row.numel(), 1), step):
            r, fa = row[lo:lo + step], flat_anchor[lo:lo + step]
            overlap = aligned_probiou(flat_gts.index_select(0, r), flat_pred.index_select(0, fa)).clamp(min=0)   # 2.
            score = flat_scores.index_select(0, fa * C + flat_labels.index_select(0, r))
            overlaps.append(overlap)
            metrics.append(ops.alignment_metric(score, overlap, self.alpha, self.beta))
        overlap, metric = torch.cat(overlaps), torch.cat(metrics)
        # 3. ultralytics' torch.topk over the dense row (0 off the candidates) for "torch", rebuilt only where tied
        selected = _pairs.topk_in_segments(local, metric, rows.numel(), self.topk, self.tie_break, anchor, A,
                                           self._dense_elements(points.device))
        return ops.PairTable(flat_anchor, row - torch.div(row, M, rounding_mode="floor") * M, overlap, metric, selected)

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

