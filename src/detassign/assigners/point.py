"""PointAssigner: RepPoints' point assignment (Yang et al., ICCV 2019), mmdet 3.3.0 semantics.

Priors are points ``(x, y, stride)`` [A, 3]; a point's level is ``int(log2(stride))``. For one image
(the steps below are the functions of this module):

1. ``gt_levels``: a GT of size (w, h) (clamped at 1e-6) maps to level
   ``int((log2(w / scale) + log2(h / scale)) / 2)`` (truncated toward zero, as mmdet's ``.int()``),
   clamped to the range of levels present among the points;
2. ``nearest_points``: on its level, the ``pos_num`` points nearest to the GT center in the
   GT-normalised distance ``|| (p - c) / (w, h) ||``;
3. ``resolve_by_distance``: a point chosen by several GTs goes to the GT it is nearest to; on equal
   distances the lowest GT index wins (mmdet processes GTs in order and overwrites only on ``<``).

Only one loop over the levels present among the GTs; no loop over GTs.

``max_overlaps`` is None, as in mmdet (the assigner has no overlap notion); the normalised distance
of each positive to its GT is available as the extra property ``assigned_dist`` [A] (``inf`` for
non-positives). Labels are the assigned GT's class, -1 elsewhere.

Deviations from mmdet: when a level holds fewer than ``pos_num`` points (or none, when the point
levels have a gap), the GT takes all of them (mmdet's ``topk`` raises); half-precision points are
computed in float32; ``gt_instances_ignore`` is accepted and unused, as in mmdet.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import compute_dtype
from ..structures import AssignResult, Instances, Priors, labels_from_gt_inds
from .base import BaseAssigner

__all__ = ["PointAssigner", "point_levels", "gt_levels", "nearest_points", "resolve_by_distance"]


# ----------------------------------------------------------------------------- algorithm steps
def point_levels(strides: Tensor) -> Tensor:
    """strides [A] -> int32 levels [A] = int(log2(stride))."""
    return torch.log2(strides).int()


def gt_levels(gt_bboxes: Tensor, scale: float, min_level: int, max_level: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Step 1. gt_bboxes [M, 4] xyxy -> (levels [M] int32, centers [M, 2], sizes [M, 2] clamped at 1e-6)."""
    centers = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2
    sizes = (gt_bboxes[:, 2:] - gt_bboxes[:, :2]).clamp(min=1e-6)
    levels = ((torch.log2(sizes[:, 0] / scale) + torch.log2(sizes[:, 1] / scale)) / 2).int()
    return levels.clamp(min=min_level, max=max_level), centers, sizes


def nearest_points(points_xy: Tensor, centers: Tensor, sizes: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Step 2. points_xy [P, 2] of one level, centers / sizes [G, 2] of its GTs -> (dist, index) [G, min(k, P)]."""
    dist = ((points_xy[None] - centers[:, None]) / sizes[:, None]).norm(dim=-1)   # [G, P]
    return dist.topk(min(k, points_xy.shape[0]), dim=1, largest=False)


def resolve_by_distance(point_index: Tensor, gt_index: Tensor, dist: Tensor, num_points: int,
                        num_gts: int) -> Tuple[Tensor, Tensor]:
    """Step 3. candidate pairs (point_index, gt_index, dist) [P] -> (gt_inds [A] 1-based, assigned_dist [A]).

    The nearest GT wins, the lowest GT index on ties; an infinite distance never assigns (mmdet
    compares with ``<`` against an ``inf`` start).
    """
    best = dist.new_full((num_points,), float("inf")).scatter_reduce(0, point_index, dist, "amin")
    is_best = (dist == best[point_index]) & torch.isfinite(dist)
    winner = torch.full((num_points,), num_gts, dtype=torch.long, device=dist.device)
    winner = winner.scatter_reduce(0, point_index, torch.where(is_best, gt_index, num_gts), "amin")
    positive = winner < num_gts
    return torch.where(positive, winner + 1, 0), torch.where(positive, best, float("inf"))


# ----------------------------------------------------------------------------- assigner
class PointAssigner(BaseAssigner):
    """RepPoints point assigner; see the module docstring for the steps and quirks.

    Args:
        scale: GT side (px) that maps to level 0 (``log2(side / scale)``); 4 in RepPoints.
        pos_num: positives per GT, the nearest points on its level.
    """

    def __init__(self, scale: float = 4, pos_num: int = 3) -> None:
        self.pos_num = V.check_number("pos_num", pos_num, low=1, integer=True)
        self.scale = V.check_number("scale", scale, low=0, low_open=True)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign the A points of one image.

        pred_instances.priors [A, 3] (x, y, stride > 0); gt_instances.bboxes [M, 4] xyxy, .labels [M].
        """
        points = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A", 3), floating=True, empty_rows=True)
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                   ("M", 4), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(priors=points, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",),
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        V.check_finite("pred_instances.priors", points)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        if V.value_checks_enabled() and points.numel() and bool((points[:, 2] <= 0).any()):
            raise ValueError("pred_instances.priors must be (x, y, stride) with stride > 0, got a stride <= 0")

        num_points, num_gts = points.shape[0], gt_bboxes.shape[0]
        device = points.device
        if num_gts == 0 or num_points == 0:
            gt_inds = torch.zeros(num_points, dtype=torch.long, device=device)
            result = AssignResult(num_gts, gt_inds, None, torch.full_like(gt_inds, -1))
            result.set_extra_property("assigned_dist", torch.full((num_points,), float("inf"), device=device))
            return result
        dtype = compute_dtype(points, gt_bboxes)
        points, gt_bboxes = points.to(dtype), gt_bboxes.to(dtype)

        levels = point_levels(points[:, 2])                                          # [A]
        gt_lvl, centers, sizes = gt_levels(gt_bboxes, self.scale, int(levels.min()), int(levels.max()))
        point_idx, gt_idx, dists = [], [], []
        for level in torch.unique(gt_lvl).tolist():
            on_level = torch.nonzero(levels == level).squeeze(1)                     # [P]
            gt_ids = torch.nonzero(gt_lvl == level).squeeze(1)                          # [G]
            dist, nearest = nearest_points(points[on_level, :2], centers[gt_ids], sizes[gt_ids], self.pos_num)
            point_idx.append(on_level[nearest].reshape(-1))
            gt_idx.append(gt_ids[:, None].expand_as(nearest).reshape(-1))
            dists.append(dist.reshape(-1))
        gt_inds, assigned_dist = resolve_by_distance(torch.cat(point_idx), torch.cat(gt_idx), torch.cat(dists),
                                                     num_points, num_gts)
        result = AssignResult(num_gts, gt_inds, None, labels_from_gt_inds(gt_inds, gt_labels))
        result.set_extra_property("assigned_dist", assigned_dist)
        return result

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: points with their stride ``(x, y, stride)`` (RepPoints)."""
        strides = priors.require("strides", type(self).__name__)
        stride = strides[:, :1] if strides.dim() == 2 else strides[:, None]
        return (Instances(priors=torch.cat((priors.points, stride), dim=1)),
                Instances(bboxes=gt_bboxes, labels=gt_labels)), {}
