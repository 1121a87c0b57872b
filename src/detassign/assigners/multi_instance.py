"""Several GTs per proposal (CrowdDet), mmdetection 3.3.0 ``MultiInstanceAssigner``.

Each proposal predicts ``num_instance`` (k) boxes, so it is assigned its k highest-IoU GTs.
Algorithm (N proposals, M GTs, I ignore boxes):
    1. boxes = GTs (+ ignore boxes); proposals = priors + boxes       # the GTs join the proposals
    2. iou [N+M+I, M+I] against normal GTs, iof against ignore boxes (each zero on the other kind)
    3. sort each row descending; keep the first k of each              # [N+M+I, k]
    4. a slot takes the ignore box instead when its IoU < pos_iou_thr and the iof is larger
    5. labels: 1 if overlap >= pos_iou_thr and the box is not an ignore box, 0 if
       0 <= overlap < neg_iou_thr, else the box's label (GT label + 1, or -1 for ignore)

Rows are processed in blocks (each row is sorted on its own, so the result is the same), and
without ignore boxes step 4 cannot fire (iof 0, IoU >= 0), so no iof is computed: memory stays
bounded on dense scenes.

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
from ..boxes import pairwise_iof
from ..structures import AssignResult
from ._blocks import row_blocks
from .base import BaseAssigner, parse_iou_calculator

__all__ = ["MultiInstanceAssigner", "top_overlaps"]


def _all_boxes(gt_bboxes: Tensor, gt_labels: Tensor, gt_instances_ignore):
    """GT (labels + 1) and ignore boxes (labels given, else -1) -> boxes [M+I, 4], labels [M+I] long."""
    labels = gt_labels.long() + 1
    if gt_instances_ignore is None:
        return gt_bboxes, labels
    ignore_boxes = V.tensor_input("gt_instances_ignore.bboxes",
                                  V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore"), ("I", 4),
                                  floating=True, empty_rows=True)
    V.check_same_device(gt_bboxes=gt_bboxes, gt_bboxes_ignore=ignore_boxes)
    V.check_boxes("gt_instances_ignore.bboxes", ignore_boxes)
    ignore_labels = getattr(gt_instances_ignore, "labels", None)
    if ignore_labels is None:
        ignore_labels = torch.full((len(ignore_boxes),), -1, dtype=torch.long, device=ignore_boxes.device)
    else:
        # mmdet's quirk, kept: -1 marks an ignore box, other labels make it act as a GT (module docstring)
        ignore_labels = V.tensor_input("gt_instances_ignore.labels", ignore_labels, (ignore_boxes.shape[0],),
                                       empty_rows=True)
        V.check_same_device(gt_bboxes_ignore=ignore_boxes, gt_labels_ignore=ignore_labels)
        bad = ignore_labels < -1
        if ignore_labels.is_floating_point():
            bad = bad | ~torch.isfinite(ignore_labels) | (ignore_labels != ignore_labels.round())
        if V.value_checks_enabled() and bool(bad.any()):
            raise ValueError(f"gt_instances_ignore.labels must be -1 (ignore) or integral class indices >= 0, got "
                             f"{ignore_labels[bad][0].item()}")
    boxes = torch.cat([gt_bboxes, ignore_boxes.to(gt_bboxes.dtype)], dim=0)
    return boxes, torch.cat([labels, ignore_labels.long()], dim=0)


def top_overlaps(overlaps: Tensor, k: int):
    """overlaps [R, G] -> (values [R, k], indices [R, k]) of each row's k largest, missing slots 0 / 0.

    Uses the same descending ``sort`` as mmdet so ties resolve identically.
    """
    values, indices = overlaps.sort(descending=True, dim=1)
    # copies, so that the [R, G] sorted tensors are not kept alive by views of their first k columns
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
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
        iou_calculator: read as every assigner reads it (:func:`~detassign.assigners.base.parse_iou_calculator`;
            no rotated form).
    """

    def __init__(self, num_instance: int = 2, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.5,
                 min_pos_iou: float = 0.0, gt_max_assign_all: bool = True, ignore_iof_thr: float = -1,
                 ignore_wrt_candidates: bool = True, match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: Mapping = dict(type="BboxOverlaps2D")) -> None:
        self.num_instance = V.check_number("num_instance", num_instance, low=1, integer=True)
        if isinstance(neg_iou_thr, (tuple, list)):
            raise ValueError(f"neg_iou_thr must be a number for MultiInstanceAssigner, got {neg_iou_thr!r}")
        self.pos_iou_thr = V.check_number("pos_iou_thr", pos_iou_thr, finite=False)
        self.neg_iou_thr = V.check_number("neg_iou_thr", neg_iou_thr, finite=False)
        # accepted for config compatibility (no effect, as in mmdet), still type-checked
        self.min_pos_iou = V.check_number("min_pos_iou", min_pos_iou, finite=False)
        self.gt_max_assign_all = V.check_flag("gt_max_assign_all", gt_max_assign_all)
        self.ignore_iof_thr = V.check_number("ignore_iof_thr", ignore_iof_thr, finite=False)
        self.ignore_wrt_candidates = V.check_flag("ignore_wrt_candidates", ignore_wrt_candidates)
        self.match_low_quality = V.check_flag("match_low_quality", match_low_quality)
        self.gpu_assign_thr = V.check_number("gpu_assign_thr", gpu_assign_thr, finite=False)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)

    def image_inputs(self, priors, pred_scores, pred_bboxes, gt_labels, gt_bboxes):
        """No batched form: each proposal gets up to ``num_instance`` GTs, not one GT per prior."""
        raise ValueError(f"MultiInstanceAssigner gives each proposal up to num_instance={self.num_instance} GTs "
                         f"(CrowdDet), not one GT per prior, so it has no batched form; call assign per image")

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """pred_instances.priors [N, 4] xyxy; gt_instances.bboxes [M, 4], .labels [M];
        gt_instances_ignore.bboxes [I, 4] (optional .labels). Extra kwargs are ignored.

        Returns AssignResult(num_gts=M+I, gt_inds [N+M+I, k] 0-based, max_overlaps [N+M+I, k],
        labels [N+M+I, k] in {1, 0, -1}).
        """
        priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("N", 4), floating=True, empty_rows=True)
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                   ("M", 4), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",),
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        # NaN / Inf proposals would sort to arbitrary slots: refused
        V.check_finite("pred_instances.priors", priors)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        boxes, box_labels = _all_boxes(gt_bboxes, gt_labels, gt_instances_ignore)
        proposals = torch.cat([priors, boxes.to(priors.dtype)], dim=0)  # [N+M+I, 4]
        is_ignore = box_labels.eq(-1)[None, :]                          # [1, M+I]
        overlaps = gt_inds = None
        for blk in row_blocks(proposals.shape[0], boxes.shape[0], multiple=1):   # a block of rows at a time
            values, indices = self._top_slots(proposals[blk], boxes, is_ignore)
            if overlaps is None:   # written in place: no small result is left between the blocks' temporaries
                overlaps = values.new_empty((proposals.shape[0], values.shape[1]))
                gt_inds = indices.new_empty((proposals.shape[0], indices.shape[1]))
            overlaps[blk], gt_inds[blk] = values, indices
        labels = self._slot_labels(overlaps, gt_inds, box_labels)
        return AssignResult(len(boxes), gt_inds, overlaps, labels)

    def _top_slots(self, proposals: Tensor, boxes: Tensor, is_ignore: Tensor):
        """Steps 2-4 for a block of rows: proposals [R, 4], boxes [G, 4], is_ignore [1, G] -> (overlaps,
        0-based box index), each [R, k]. Each row is sorted on its own, so blocks change nothing."""
        k = self.num_instance
        iou = self.iou_calculator.pairwise(proposals, boxes) * ~is_ignore
        iou_top, iou_idx = top_overlaps(iou, k)
        if not bool(is_ignore.any()):   # step 4 cannot fire: iof is 0 everywhere and IoU >= 0
            return iou_top, iou_idx
        del iou
        iof = pairwise_iof(proposals, boxes) * is_ignore
        iof_top, iof_idx = top_overlaps(iof, k)
        use_ignore = (iou_top < self.pos_iou_thr) & (iof_top > iou_top)
        return torch.where(use_ignore, iof_top, iou_top), torch.where(use_ignore, iof_idx, iou_idx)

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
