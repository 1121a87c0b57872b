"""CenterRegionAssigner: priors in the core of a GT are positive, its shadow ring is recorded (FSAF).

Shape symbols: A priors, M GTs, K ignore boxes, S shadowed (prior, GT) pairs.

Algorithm (Zhu et al., "Feature Selective Anchor-Free Module", 2019; mmdetection's
``CenterRegionAssigner``), per image:

1. Scale every GT about its center: the core box by ``pos_scale``, the shadow box by ``neg_scale``.
2. A prior is in a GT's core when its center lies strictly inside the GT and its IoF with the core box
   (intersection over the prior's area) exceeds ``min_pos_iof``; it is in the GT's shadow when its IoF
   with the shadow box exceeds ``min_pos_iof`` and it is not in that GT's core.
3. A prior in the core of several GTs goes to the smallest of them (by area). Equal areas: the GT with
   the higher index wins (mmdet's order when M <= 16; for larger M mmdet sorts unstably and its order
   among equal areas is unspecified). The cores it loses become shadowed pairs.
4. Priors whose center lies strictly inside an ignore box scaled by ``ignore_gt_scale`` are ignored (-1),
   also when there are no GTs.
5. ``shadowed_labels`` [S, 2] (long) lists (prior index, class of the shadowing GT) for every shadow pair
   of step 2 in (prior, GT) order, then every lost core pair of step 3 in (prior, GT) order. A positive
   prior shadowed by a GT of its own class becomes negative (gt_inds 0, label -1); with
   ``foreground_dominate=True`` it stays positive and its rows leave ``shadowed_labels`` instead.

The result is bit-for-bit mmdet 3.3.0's (gt_inds, labels, and ``shadowed_labels`` including its row
order; see tests/assigners/test_center_region.py), with these conventions:

* ``max_overlaps`` is ``None``, as in mmdet.
* ``shadowed_labels`` is an extra property (``result.shadowed_labels`` or
  ``result.get_extra_property("shadowed_labels")``), as mmdet's ``set_extra_property``.
* float16 / bfloat16 / integer inputs are computed in float32 (mmdet computes in half).
* ``iou_calculator`` is read as every assigner reads it (:func:`~detassign.assigners.base.parse_iou_calculator`,
  no rotated form): ``dict(type="BboxOverlaps2D")`` selects the library's mmdet-identical IoF; a callable
  ``f(boxes1, boxes2, mode="iof")`` (e.g. an mmdet ``BboxOverlaps2D`` instance) is used as given.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import aligned_points_in_boxes, box_centers, to_compute_dtype
from ..structures import AssignResult, labels_from_gt_inds
from .base import BaseAssigner, parse_iou_calculator

__all__ = ["CenterRegionAssigner", "scale_boxes", "gt_priorities", "resolve_cores", "shadow_pairs"]


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Boxes scaled about their centers. [M, 4] xyxy -> [M, 4] xyxy with ``scale`` times the width and height."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def gt_priorities(gt_bboxes: Tensor) -> Tensor:
    """Rank of every GT, higher = preferred. [M, 4] -> [M] long, a permutation of 0..M-1.

    Smaller area ranks higher; among equal areas the higher index ranks higher (stable sort).
    """
    areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    order = torch.sort(areas, descending=True, stable=True).indices
    return order.argsort()


def resolve_cores(in_core: Tensor, priority: Tensor) -> Tuple[Tensor, Tensor]:
    """One GT per prior among the cores it lies in (step 3).

    in_core [A, M] bool, priority [M] long (distinct) -> (gt_inds [A] long, 1-based, 0 for no core;
    lost [A, M] bool, the core pairs that did not win).
    """
    pair_priority = torch.where(in_core, priority[None, :], torch.full_like(in_core, -1, dtype=torch.long))
    winner = pair_priority.argmax(dim=1)                                               # [A]
    matched = in_core.any(dim=1)                                                       # [A]
    gt_inds = torch.where(matched, winner + 1, torch.zeros_like(winner))
    won = torch.zeros_like(in_core).scatter_(1, winner[:, None], matched[:, None])
    return gt_inds, in_core & ~won


def shadow_pairs(in_shadow: Tensor, lost: Tensor) -> Tensor:
    """(prior index, 1-based GT index) rows of the shadow pairs, then of the lost core pairs.

    in_shadow, lost [A, M] bool -> [S, 2] long, each block in row-major (prior, GT) order.
    """
    pairs = torch.cat((torch.nonzero(in_shadow), torch.nonzero(lost)), dim=0)
    return pairs + pairs.new_tensor([0, 1])


def _read_inputs(pred_instances, gt_instances, gt_instances_ignore):
    """Checked (priors [A, 4], gt boxes [M, 4], gt labels [M], ignore boxes [K, 4] or None)."""
    priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                            ("A", 4), empty_rows=True)
    gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M", 4),
                              empty_rows=True)
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    ignore_boxes = V.tensor_input("gt_instances_ignore.bboxes",
                                  V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore", required=False),
                                  ("K", 4), allow_none=True, empty_rows=True)
    V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, ignore_bboxes=ignore_boxes, gt_labels=gt_labels)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), rows_like=("gt_instances.bboxes", gt_bboxes))
    V.check_finite("pred_instances.priors", priors)
    V.check_boxes("gt_instances.bboxes", gt_bboxes)
    V.check_boxes("gt_instances_ignore.bboxes", ignore_boxes)
    return priors, gt_bboxes, gt_labels, ignore_boxes


class CenterRegionAssigner(BaseAssigner):
    """FSAF's center-region assigner (see the module docstring for the steps and conventions).

    Args:
        pos_scale: core box = GT scaled by this about its center (priors there are positive), >= 0.
        neg_scale: shadow box = GT scaled by this (priors there, outside the core, are shadowed), >= 0.
        min_pos_iof: a prior must overlap the core / shadow box by more than this fraction of its own area.
        ignore_gt_scale: ignore boxes are scaled by this before the center test, >= 0.
        foreground_dominate: keep priors positive when a GT of the same class shadows them.
        iou_calculator: ``dict(type="BboxOverlaps2D")`` (mmdet configs) or a callable ``f(boxes1, boxes2, mode)``.
    """

    def __init__(self, pos_scale: float, neg_scale: float, min_pos_iof: float = 1e-2,
                 ignore_gt_scale: float = 0.5, foreground_dominate: bool = False,
                 iou_calculator: Optional[dict] = None) -> None:
        self.pos_scale = V.check_number("pos_scale", pos_scale, low=0)
        self.neg_scale = V.check_number("neg_scale", neg_scale, low=0)
        self.min_pos_iof = V.check_number("min_pos_iof", min_pos_iof, finite=False)
        self.ignore_gt_scale = V.check_number("ignore_gt_scale", ignore_gt_scale, low=0)
        self.foreground_dominate = V.check_flag("foreground_dominate", foreground_dominate)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign the priors of one image.

        pred_instances.priors [A, 4] xyxy; gt_instances.bboxes [M, 4] xyxy, gt_instances.labels [M] int;
        gt_instances_ignore.bboxes [K, 4] (optional). Other keyword arguments are accepted and unused
        (mmdet's signature).

        Returns an :class:`AssignResult` with gt_inds [A] (1-based, 0 negative, -1 ignore), labels [A]
        (-1 for non-positives), ``max_overlaps=None`` and the extra ``shadowed_labels`` [S, 2] long.
        If M == 0 or A == 0: no positives and no shadow rows; ignore boxes still apply.
        """
        priors, gt_bboxes, gt_labels, ignore_boxes = _read_inputs(pred_instances, gt_instances, gt_instances_ignore)
        priors, gt_bboxes = to_compute_dtype(priors), to_compute_dtype(gt_bboxes)
        centers = box_centers(priors)                                                   # [A, 2]
        in_core, in_shadow = self._regions(priors, centers, gt_bboxes)                 # [A, M] each
        if gt_bboxes.shape[0] == 0 or priors.shape[0] == 0:
            gt_inds = torch.zeros(priors.shape[0], dtype=torch.long, device=priors.device)
            pairs = gt_inds.new_zeros((0, 2))
        else:
            gt_inds, lost = resolve_cores(in_core, gt_priorities(gt_bboxes))
            pairs = shadow_pairs(in_shadow, lost)                                      # [S, 2]
        if ignore_boxes is not None and ignore_boxes.numel() > 0:
            ignore_boxes = scale_boxes(to_compute_dtype(ignore_boxes), self.ignore_gt_scale)
            ignored = aligned_points_in_boxes(centers[:, None], ignore_boxes).any(dim=1)   # [A], strict
            gt_inds = torch.where(ignored, torch.full_like(gt_inds, -1), gt_inds)
        labels = labels_from_gt_inds(gt_inds, gt_labels)
        gt_inds, labels, shadowed = self._apply_shadows(gt_inds, labels, pairs, gt_labels)
        result = AssignResult(gt_bboxes.shape[0], gt_inds, None, labels)
        result.set_extra_property("shadowed_labels", shadowed)
        return result

    def _regions(self, priors: Tensor, centers: Tensor, gt_bboxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Steps 1-2. priors [A, 4], centers [A, 2], gt_bboxes [M, 4] -> (in_core, in_shadow) [A, M] bool."""
        iof = self.iou_calculator.pairwise
        in_gt = aligned_points_in_boxes(centers[:, None], gt_bboxes)                   # [A, M], strict
        in_core = in_gt & (iof(priors, scale_boxes(gt_bboxes, self.pos_scale), "iof") > self.min_pos_iof)
        in_shadow = (iof(priors, scale_boxes(gt_bboxes, self.neg_scale), "iof") > self.min_pos_iof) & ~in_core
        return in_core, in_shadow

    def _apply_shadows(self, gt_inds: Tensor, labels: Tensor, pairs: Tensor,
                       gt_labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Step 5. pairs [S, 2] (prior, 1-based GT) -> (gt_inds [A], labels [A], shadowed_labels [S', 2])."""
        if pairs.shape[0] == 0:
            return gt_inds, labels, pairs
        prior_idx = pairs[:, 0]
        shadowed = torch.stack((prior_idx, gt_labels[pairs[:, 1] - 1]), dim=1)          # [S, 2]
        same_class = labels[prior_idx] == shadowed[:, 1]                                # [S]
        if self.foreground_dominate:
            return gt_inds, labels, shadowed[~same_class]
        demoted = torch.zeros_like(gt_inds, dtype=torch.bool).index_fill_(0, prior_idx[same_class], True)
        gt_inds = torch.where(demoted, torch.zeros_like(gt_inds), gt_inds)
        labels = torch.where(demoted, torch.full_like(labels, -1), labels)
        return gt_inds, labels, shadowed
