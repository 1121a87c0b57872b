"""GridAssigner: MaxIoU restricted to the grid cells responsible for a GT (YOLOv3, mmdet 3.3.0).

Reads ``pred_instances.priors`` [A, 4] xyxy and ``pred_instances.responsible_flags`` [A] (bool or 0/1:
the prior's cell contains a GT center). Steps (the order matters):

1. every prior starts as ignored (-1);
2. negatives (0) by the best IoU over *all* priors' GTs: ``0 <= iou <= neg_iou_thr`` for a float,
   ``lo < iou <= hi`` for a ``(lo, hi)`` pair (note: ``<=`` and ``>``, unlike MaxIoUAssigner);
3. IoUs of non-responsible priors are set to -1; a responsible prior whose best IoU is
   ``> pos_iou_thr`` (strict) becomes a positive of that GT;
4. every GT whose best responsible IoU is ``> min_pos_iou`` (strict) claims its best responsible
   prior(s) (all ties with ``gt_max_assign_all``), the last GT winning, as in mmdet. This step always
   runs (there is no ``match_low_quality`` switch) and, because the test is strict, a GT with best
   IoU 0 claims nothing when ``min_pos_iou >= 0``.

``max_overlaps`` sentinels (as mmdet): the best IoU computed *after* step 3, so -1 for every
non-responsible prior; 0 everywhere when there is no GT or no prior. ``gt_instances_ignore`` is not
used (mmdet ignores it too). ``iou_calculator`` is read as every assigner reads it
(:func:`~detassign.assigners.base.parse_iou_calculator`; no rotated form). Deviation: an integer
``neg_iou_thr`` is treated as a float (mmdet assigns no negatives for it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..structures import AssignResult, Instances, Priors, labels_from_gt_inds
from .base import BaseAssigner, parse_iou_calculator
from .max_iou import NegThr, best_prior_hits, box_tensor, last_gt_wins, normalize_neg_iou_thr

__all__ = ["GridAssigner", "grid_assign", "responsible_flags"]


def responsible_flags(points: Tensor, strides: Tensor, gt_bboxes: Tensor) -> Tensor:
    """YOLOv3's responsible cells on every level: whether the grid cell of a prior holds a GT center.

    points [A, 2] px, strides [A] (or [A, 2]) px, gt_bboxes [M, 4] xyxy -> [A] bool.
    """
    stride = strides[:, None] if strides.dim() == 1 else strides                    # [A, 1] or [A, 2]
    centers = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2                              # [M, 2]
    cell = torch.floor(points / stride)                                              # [A, 2]
    gt_cell = torch.floor(centers[None] / stride[:, None])                           # [A, M, 2]
    return (gt_cell == cell[:, None]).all(-1).any(-1)


def grid_negative_mask(max_overlaps: Tensor, neg_iou_thr: NegThr) -> Tensor:
    """Step 2: [A] -> [A] bool, ``0 <= iou <= thr`` or ``lo < iou <= hi``."""
    if isinstance(neg_iou_thr, tuple):
        return (max_overlaps > neg_iou_thr[0]) & (max_overlaps <= neg_iou_thr[1])
    return (max_overlaps >= 0) & (max_overlaps <= neg_iou_thr)


def grid_assign(overlaps: Tensor, responsible: Tensor, pos_iou_thr: float, neg_iou_thr: NegThr,
                min_pos_iou: float = 0.0, gt_max_assign_all: bool = True) -> Tuple[Tensor, Tensor]:
    """Steps 1-4. overlaps [M, A] (M, A > 0), responsible [A] bool -> (gt_inds [A], max_overlaps [A])."""
    neg_iou_thr = normalize_neg_iou_thr(neg_iou_thr)
    gt_inds = torch.full((overlaps.shape[1],), -1, dtype=torch.long, device=overlaps.device)
    all_max = overlaps.amax(dim=0)                                                  # [A]
    gt_inds[grid_negative_mask(all_max, neg_iou_thr)] = 0

    overlaps = overlaps.masked_fill(~responsible[None, :], -1.0)                    # [M, A]
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)                             # [A]
    gt_max, gt_argmax = overlaps.max(dim=1)                                         # [M]
    positive = (max_overlaps > pos_iou_thr) & responsible
    gt_inds = torch.where(positive, argmax_overlaps + 1, gt_inds)

    hits = best_prior_hits(overlaps, gt_max, gt_argmax, gt_max > min_pos_iou, gt_max_assign_all,
                           allowed=responsible)                                     # [M, A]
    winner = last_gt_wins(hits)
    return torch.where(winner > 0, winner, gt_inds), max_overlaps


class GridAssigner(BaseAssigner):
    """YOLOv3's assigner: positives only among responsible priors (see the module docstring)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True, iou_calculator: dict = dict(type="BboxOverlaps2D")) -> None:
        self.pos_iou_thr = float(V.check_number("pos_iou_thr", pos_iou_thr, finite=False))
        self.neg_iou_thr = normalize_neg_iou_thr(neg_iou_thr)
        self.min_pos_iou = float(V.check_number("min_pos_iou", min_pos_iou, finite=False))
        self.gt_max_assign_all = V.check_flag("gt_max_assign_all", gt_max_assign_all)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign every prior of one image: gt_inds [A] (1-based, 0 negative, -1 ignore)."""
        priors = box_tensor("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"))
        flags = V.tensor_input("pred_instances.responsible_flags",
                               V.get_field(pred_instances, "responsible_flags", "pred_instances"), ("A",),
                               empty_rows=True)
        V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.responsible_flags", flags, 0)])
        gt_bboxes = box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",))
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances", required=False)
        V.check_same_device(priors=priors, responsible_flags=flags, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), allow_none=True,
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        V.check_binary("pred_instances.responsible_flags", flags)
        V.check_boxes("pred_instances.priors", priors)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)

        overlaps = self.iou_calculator.pairwise(gt_bboxes, priors)                      # [M, A]
        M, A = overlaps.shape
        if M == 0 or A == 0:
            gt_inds = torch.zeros(A, dtype=torch.long, device=priors.device)
            max_overlaps = overlaps.new_zeros(A)
        else:
            gt_inds, max_overlaps = grid_assign(overlaps, flags.bool(), self.pos_iou_thr, self.neg_iou_thr,
                                                self.min_pos_iou, self.gt_max_assign_all)
        labels = None if gt_labels is None else labels_from_gt_inds(gt_inds, gt_labels)
        return AssignResult(M, gt_inds, max_overlaps, labels)

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: the anchor boxes and the cells responsible for the GTs
        (:func:`responsible_flags`, on every level)."""
        name = type(self).__name__
        flags = responsible_flags(priors.points, priors.require("strides", name), gt_bboxes)
        return (Instances(priors=priors.require("boxes", name), responsible_flags=flags),
                Instances(bboxes=gt_bboxes, labels=gt_labels)), {}
