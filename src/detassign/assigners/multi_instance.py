"""Several GTs per proposal (CrowdDet), mmdetection 3.3.0 ``MultiInstanceAssigner``.

Each proposal predicts ``num_instance`` (k) boxes, so it is assigned its k highest-IoU GTs.
Algorithm (N proposals, M GTs, I ignore boxes):
    1. boxes = GTs (+ ignore boxes); proposals = priors + boxes       # the GTs join the proposals
    2. iou [N+M+I, M+I] against normal GTs, iof against ignore boxes (each zero on the other kind)
    3. sort each row descending; keep the first k of each              # [N+M+I, k]
    4. a slot takes the ignore box instead when its IoU < pos_iou_thr and the iof is larger
    5. labels: 1 if overlap >= pos_iou_thr and the box is not an ignore box, 0 if
       0 <= overlap < neg_iou_thr, else the box's label (GT label + 1, or -1 for ignore)

Output coding differs from the other assigners (mmdet's, reproduced): every array is
``[N + M + I, k]``; ``gt_inds`` are **0-based** indices into ``cat(gt_bboxes, ignore_bboxes)``
(mmdet's MultiInstanceSamplingResult adds 1 itself); ``labels`` are 1 foreground / 0 background
/ -1 ignore (other values: the raw label, see step 5); ``max_overlaps`` the slot's IoU or iof;
``num_gts`` = M + I. Positives are ``labels > 0``, not ``gt_inds > 0``.

Quirks of mmdet kept: ignore boxes that carry ``labels`` use those labels as given (only -1
marks them as ignore, so labelled ignore boxes act as GTs); foreground labels are binary (1).
Deviations (mmdet breaks): with fewer than k boxes (M + I < k, including M = 0) mmdet reshapes
a short row and returns misaligned or (0, k) arrays or raises; we fill the missing slots with
gt index 0, overlap 0 and label 0 (background), giving [N + M + I, k] arrays. ``labels`` are
always int64 (mmdet gives float when ignore boxes have no labels). ``min_pos_iou``,
``gt_max_assign_all``, ``ignore_iof_thr``, ``ignore_wrt_candidates`` and ``match_low_quality``
are accepted for config compatibility and, as in mmdet, have no effect; ``gpu_assign_thr``
only moved work to the CPU in mmdet and has no effect on results.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import pairwise_iof, pairwise_iou
from ..structures import AssignResult
from .base import BaseAssigner
from .topk_hungarian import _check_iou_calculator

__all__ = ["MultiInstanceAssigner", "top_overlaps"]


def _all_boxes(gt_bboxes: Tensor, gt_labels: Tensor, gt_instances_ignore):
    """GT (labels + 1) and ignore boxes (labels given, else -1) -> boxes [M+I, 4], labels [M+I] long."""
    labels = gt_labels.long() + 1
    if gt_instances_ignore is None:
        return gt_bboxes, labels
    ignore_boxes = V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore")
    V.check_tensor("gt_instances_ignore.bboxes", ignore_boxes, ("I", 4), floating=True)
    ignore_labels = getattr(gt_instances_ignore, "labels", None)
    if ignore_labels is None:
        ignore_labels = torch.full((len(ignore_boxes),), -1, dtype=torch.long, device=ignore_boxes.device)
    boxes = torch.cat([gt_bboxes, ignore_boxes.to(gt_bboxes.dtype)], dim=0)
    return boxes, torch.cat([labels, ignore_labels.long()], dim=0)


def top_overlaps(overlaps: Tensor, k: int):
    """overlaps [R, G] -> (values [R, k], indices [R, k]) of each row's k largest, missing slots 0 / 0.

    Uses the same descending ``sort`` as mmdet so ties resolve identically.
    """
    values, indices = overlaps.sort(descending=True, dim=1)
    values, indices = values[:, :k], indices[:, :k]
    missing = k - values.shape[1]
    if missing > 0:
        values = torch.cat([values, values.new_zeros(values.shape[0], missing)], dim=1)
        indices = torch.cat([indices, indices.new_zeros(indices.shape[0], missing)], dim=1)
    return values, indices


class MultiInstanceAssigner(BaseAssigner):
    """Assign each proposal its ``num_instance`` best GTs (CrowdDet).

    Args:
        num_instance: GTs per proposal (k).
        pos_iou_thr: a slot is foreground when its IoU >= this. neg_iou_thr: background below it.
        min_pos_iou, gt_max_assign_all, ignore_iof_thr, ignore_wrt_candidates, match_low_quality,
            gpu_assign_thr: accepted for mmdet config compatibility; no effect (as in mmdet).
        iou_calculator: only ``dict(type='BboxOverlaps2D')``.
    """

    def __init__(self, num_instance: int = 2, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.5,
                 min_pos_iou: float = 0.0, gt_max_assign_all: bool = True, ignore_iof_thr: float = -1,
                 ignore_wrt_candidates: bool = True, match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: Mapping = dict(type="BboxOverlaps2D")) -> None:
        if int(num_instance) < 1:
            raise ValueError(f"num_instance must be >= 1, got {num_instance}")
        if not isinstance(neg_iou_thr, (int, float)):
            raise ValueError(f"neg_iou_thr must be a number for MultiInstanceAssigner, got {neg_iou_thr!r}")
        _check_iou_calculator(iou_calculator)
        self.num_instance = int(num_instance)
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = ignore_iof_thr
        self.ignore_wrt_candidates = ignore_wrt_candidates
        self.match_low_quality = match_low_quality
        self.gpu_assign_thr = gpu_assign_thr
        self.iou_calculator = iou_calculator

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """pred_instances.priors [N, 4] xyxy; gt_instances.bboxes [M, 4], .labels [M];
        gt_instances_ignore.bboxes [I, 4] (optional .labels). Extra kwargs are ignored.

        Returns AssignResult(num_gts=M+I, gt_inds [N+M+I, k] 0-based, max_overlaps [N+M+I, k],
        labels [N+M+I, k] in {1, 0, -1}).
        """
        priors = V.get_field(pred_instances, "priors", "pred_instances")
        V.check_tensor("pred_instances.priors", priors, ("N", 4), floating=True)
        gt_bboxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        V.check_tensor("gt_instances.bboxes", gt_bboxes, ("M", 4), floating=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_tensor("gt_instances.labels", gt_labels, (gt_bboxes.shape[0],), floating=False)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        boxes, box_labels = _all_boxes(gt_bboxes, gt_labels, gt_instances_ignore)
        proposals = torch.cat([priors, boxes.to(priors.dtype)], dim=0)  # [N+M+I, 4]
        is_ignore = box_labels.eq(-1)[None, :]                          # [1, M+I]
        iou = pairwise_iou(proposals, boxes) * ~is_ignore
        iof = pairwise_iof(proposals, boxes) * is_ignore
        k = self.num_instance
        iou_top, iou_idx = top_overlaps(iou, k)
        iof_top, iof_idx = top_overlaps(iof, k)
        use_ignore = (iou_top < self.pos_iou_thr) & (iof_top > iou_top)
        overlaps = torch.where(use_ignore, iof_top, iou_top)
        gt_inds = torch.where(use_ignore, iof_idx, iou_idx)
        labels = self._slot_labels(overlaps, gt_inds, box_labels)
        return AssignResult(len(boxes), gt_inds, overlaps, labels)

    def _slot_labels(self, overlaps: Tensor, gt_inds: Tensor, box_labels: Tensor) -> Tensor:
        """[R, k] overlaps and 0-based indices -> labels: 1 fg, 0 bg, else the box's raw label."""
        if box_labels.numel() == 0:
            labels = torch.full_like(gt_inds, -1)
        else:
            labels = box_labels[gt_inds]
        fg = (overlaps >= self.pos_iou_thr) & (labels != -1)
        bg = (overlaps < self.neg_iou_thr) & (overlaps >= 0)
        labels = torch.where(fg, torch.ones_like(labels), labels)
        return torch.where(bg, torch.zeros_like(labels), labels)
