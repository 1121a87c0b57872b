"""One-to-many Hungarian matching (DDQ-DETR's auxiliary head), mmdetection 3.3.0 ``TopkHungarianAssigner``.

Algorithm (one image, N dense queries, M GTs):
    1. cost = cls_cost + reg_cost + iou_cost                        # [N, M] (focal 2, L1 5, -GIoU 2)
    2. k = min(topk, N // M)                                       # so that N >= k * M
    3. repeat each GT column k times                               # [N, M * k], GT j -> columns j*k .. j*k+k-1
    4. scipy linear_sum_assignment -> each GT gets exactly k distinct queries, each query at most one GT
    5. gt_inds[query] = GT + 1, others 0; labels from the GT
    6. alignment metric t = score[gt label] ** alpha * IoU ** beta (TOOD) of each matched pair

``pred_scores`` are used as given both in the metric (``score ** alpha``) and by ``cls_cost``
(FocalLossCost applies a sigmoid to them), exactly as mmdet does.

mmdet layout, reproduced by default (``dense_outputs=False``): ``max_overlaps`` (IoU of each
matched pair) and the extra ``assign_metrics`` hold one value per *positive* query, in increasing
query order (what DDQ's aux loss indexes with ``pos_inds``), not one per query.
``dense_outputs=True`` scatters both into [N] tensors (0 for non-positives).

Edge cases: M == 0 -> all negative, ``max_overlaps`` None (dense: zeros) and no assign_metrics
(dense: zeros). N < M gives k = 0: no positives at all (as mmdet), returned before any cost is
computed. Costs and metrics are built a block of GTs at a time; only scipy's [N, k * M] input is
whole. Deviations: mmdet then returns
``labels=None`` (we return labels of -1), and with N == 0 < M mmdet raises in ``view`` (we return
an empty result).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .. import _validate as V
from ..boxes import to_compute_dtype
from ..registry import build_match_cost
from ..structures import AssignResult, Instances, Priors
from ._blocks import row_blocks
from .base import BaseAssigner, parse_iou_calculator
from .hungarian import image_name, raise_non_finite
from .match_costs import BaseMatchCost, per_image_cost

__all__ = ["TopkHungarianAssigner", "alignment_metrics", "topk_linear_assignment"]

CostConfig = Union[BaseMatchCost, Mapping]


def _build_cost(cost: CostConfig) -> BaseMatchCost:
    return build_match_cost(cost) if isinstance(cost, Mapping) else cost


def alignment_metrics(pred_scores: Tensor, ious: Tensor, gt_labels: Tensor, alpha: float, beta: float) -> Tensor:
    """TOOD metric score[gt label] ** alpha * IoU ** beta. pred_scores [N, C], ious [N, M], gt_labels [M] -> [N, M]."""
    return pred_scores[:, gt_labels] ** alpha * ious ** beta


def topk_linear_assignment(cost: Tensor, k: int):
    """cost [N, M] -> (rows [P], gt [P]) with P = k * M: each GT its k cheapest distinct queries jointly.

    Columns are repeated k times GT by GT (GT j owns columns j*k .. j*k + k - 1, mmdet's layout, so
    ties resolve as there). Rows come back in increasing order. Requires N >= k * M.
    """
    return topk_linear_assignment_blocks([(0, cost)], cost.shape[0], cost.shape[1], k)


def topk_linear_assignment_blocks(blocks: Iterable[Tuple[int, Tensor]], num_queries: int, num_gts: int, k: int):
    """:func:`topk_linear_assignment` from blocks (first GT, cost [N, g]) in GT order: only the solver's
    own [N, k * M] input is ever whole (scipy needs it), filled block by block."""
    repeated, device = None, None
    for start, cost in blocks:
        part = cost.detach().repeat_interleave(k, dim=1).cpu().numpy()                   # [N, g * k]
        if repeated is None:
            repeated, device = np.empty((num_queries, k * num_gts), dtype=part.dtype), cost.device
        repeated[:, start * k:start * k + part.shape[1]] = part
    rows, cols = linear_sum_assignment(repeated)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols // k).to(device)


class TopkHungarianAssigner(BaseAssigner):
    """Each GT matched to its ``topk`` best queries by one joint linear assignment (DDQ-DETR).

    Args:
        topk: queries per GT (capped at N // M per image).
        iou_calculator: the IoU of the metric and ``max_overlaps``, read as every assigner reads it
            (:func:`~detassign.assigners.base.parse_iou_calculator`; no rotated form).
        cls_cost, reg_cost, iou_cost: match cost configs or objects (mmdet defaults: FocalLossCost 2.0,
            BBoxL1Cost 5.0, IoUCost giou 2.0).
        dense_outputs: False (mmdet) gives per-positive ``max_overlaps`` / ``assign_metrics``;
            True gives [N] tensors with 0 for non-positives.
    """

    def __init__(self, topk: int, iou_calculator: Mapping = dict(type="BboxOverlaps2D"),
                 cls_cost: CostConfig = dict(type="FocalLossCost", weight=2.0),
                 reg_cost: CostConfig = dict(type="BBoxL1Cost", weight=5.0),
                 iou_cost: CostConfig = dict(type="IoUCost", iou_mode="giou", weight=2.0),
                 dense_outputs: bool = False) -> None:
        self.topk = V.check_number("topk", topk, low=1, integer=True)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)
        self.cls_cost = _build_cost(cls_cost)
        self.reg_cost = _build_cost(reg_cost)
        self.iou_cost = _build_cost(iou_cost)
        self.dense_outputs = V.check_flag("dense_outputs", dense_outputs)

    def _costs(self, pred_scores: Tensor, pred_bboxes: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, img_meta):
        """Weighted total cost [N, M], summed in mmdet's order (cls + reg) + iou, and the named terms."""
        pred = Instances(scores=pred_scores, bboxes=pred_bboxes)
        gt = Instances(labels=gt_labels, bboxes=gt_bboxes)
        # inputs checked by ``assign``; NaN is reported per cost term, naming the input
        reg = per_image_cost(self.reg_cost, pred, gt, img_meta)
        iou = per_image_cost(self.iou_cost, pred, gt, img_meta)
        cls = per_image_cost(self.cls_cost, pred, gt, img_meta)
        names = [f"{role} {type(c).__name__}" for role, c in
                 (("cls_cost", self.cls_cost), ("reg_cost", self.reg_cost), ("iou_cost", self.iou_cost))]
        return cls + reg + iou, [cls, reg, iou], names

    @torch.no_grad()
    def assign(self, pred_scores: Tensor, decode_bboxes: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
               img_meta: Optional[Mapping] = None, alpha: float = 1, beta: float = 6, **kwargs) -> AssignResult:
        """One image (mmdet signature; extra kwargs are ignored).

        pred_scores [N, C] class scores (see the module docstring), decode_bboxes [N, 4] xyxy pixels,
        gt_bboxes [M, 4] xyxy pixels, gt_labels [M], img_meta with ``img_shape`` (h, w) for BBoxL1Cost.
        Returns AssignResult(num_gts, gt_inds [N], max_overlaps [P] or [N], labels [N]) with the extra
        ``assign_metrics`` ([P] or [N]).
        """
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("N", "C"), floating=True, empty_rows=True)
        decode_bboxes = V.tensor_input("decode_bboxes", decode_bboxes, ("N", 4), floating=True, empty_rows=True)
        N = V.check_agree("N", [("pred_scores", pred_scores, 0), ("decode_bboxes", decode_bboxes, 0)])
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("M", 4), floating=True, empty_rows=True)
        M = gt_bboxes.shape[0]
        gt_labels = V.as_tensor("gt_labels", gt_labels)
        V.check_same_device(pred_scores=pred_scores, decode_bboxes=decode_bboxes, gt_bboxes=gt_bboxes,
                            gt_labels=gt_labels)
        # checked before ``pred_scores[:, gt_labels]``: -1 would silently read the last class
        gt_labels = V.labels_input("gt_labels", gt_labels, ("M",), num_classes=V.num_classes_of(pred_scores),
                                   rows_like=("gt_bboxes", gt_bboxes))
        V.check_boxes("gt_bboxes", gt_bboxes)
        # Inf scores give Inf metrics but finite focal costs; NaN is reported per cost term below
        V.check_not_inf("pred_scores", pred_scores)
        V.check_number("alpha", alpha, low=0)
        V.check_number("beta", beta, low=0)
        device = pred_scores.device
        gt_inds = torch.zeros(N, dtype=torch.long, device=device)
        labels = torch.full((N,), -1, dtype=torch.long, device=device)
        if M == 0:
            return self._result(0, gt_inds, labels, None, None, N)
        scores, boxes, gt_bboxes = to_compute_dtype(pred_scores), to_compute_dtype(decode_bboxes), to_compute_dtype(gt_bboxes)
        k = min(self.topk, N // M)
        if k == 0:   # fewer queries than GTs: no positive at all (as mmdet), so nothing to compute
            empty = scores.new_zeros(0)
            return self._result(M, gt_inds, labels, empty, empty, N)
        gt_labels = gt_labels.long()
        inputs = {"pred_scores": pred_scores, "decode_bboxes": decode_bboxes}
        blocks = row_blocks(M, N * k)     # blocks of GTs: [N, g] cost terms, [N, g * k] solver columns
        costs = (self._block_cost(scores, boxes, gt_bboxes, gt_labels, blk, img_meta, inputs) for blk in blocks)
        rows, matched = topk_linear_assignment_blocks(costs, N, M, k)
        gt_inds[rows] = matched + 1
        labels[rows] = gt_labels[matched]
        pos_ious = self.iou_calculator.aligned(boxes[rows], gt_bboxes[matched])
        pos_metrics = None
        for blk in blocks:                # the TOOD metric of the matched pairs, from [N, g] blocks
            ious = self.iou_calculator.pairwise(boxes, gt_bboxes[blk])                                  # [N, g]
            metrics = alignment_metrics(scores, ious, gt_labels[blk], alpha, beta)
            if pos_metrics is None:
                pos_metrics = metrics.new_empty(rows.shape[0])
            inside = (matched >= blk.start) & (matched < blk.stop)
            pos_metrics[inside] = metrics[rows[inside], matched[inside] - blk.start]
        return self._result(M, gt_inds, labels, pos_ious, pos_metrics, N, rows)

    def _block_cost(self, scores: Tensor, boxes: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, blk: slice, img_meta,
                    inputs) -> Tuple[int, Tensor]:
        """(first GT, total cost [N, g]) of the GTs in ``blk``; a non-finite cost is reported on the whole
        matrices (error path only), naming the image, the cost terms and the inputs."""
        cost, _, _ = self._costs(scores, boxes, gt_bboxes[blk], gt_labels[blk], img_meta)
        if not bool(torch.isfinite(cost).all()):
            self._check_finite(*self._costs(scores, boxes, gt_bboxes, gt_labels, img_meta), img_meta, inputs)
        return blk.start, cost

    @staticmethod
    def _check_finite(cost: Tensor, terms, names, img_meta, inputs=None) -> None:
        """Clear error naming the image and the cost terms instead of scipy's 'cost matrix is infeasible'."""
        if bool(torch.isfinite(cost).all()):
            return
        valid = np.ones((1, cost.shape[1]), dtype=bool)
        raise_non_finite(cost[None].detach().cpu().numpy(), valid, [t[None] for t in terms], names,
                          [image_name(img_meta)], {k: v[None] for k, v in (inputs or {}).items()})

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: every prior's prediction is a query; the scores are the
        probabilities of the logits (DDQ's auxiliary head passes ``sigmoid(cls_scores)``)."""
        scores = V.tensor_input("pred_scores", pred_scores, ("A", "C"), floating=True)
        boxes = V.tensor_input("pred_bboxes", pred_bboxes, ("A", 4), floating=True)
        meta = None if priors.image_size is None else {"img_shape": priors.image_size}
        return (scores.sigmoid(), boxes, gt_bboxes, gt_labels), {"img_meta": meta}

    def _result(self, num_gts: int, gt_inds: Tensor, labels: Tensor, pos_ious: Optional[Tensor],
                pos_metrics: Optional[Tensor], N: int, rows: Optional[Tensor] = None) -> AssignResult:
        if self.dense_outputs:
            ious = torch.zeros(N, dtype=torch.float32, device=gt_inds.device)
            metrics = torch.zeros(N, dtype=torch.float32, device=gt_inds.device)
            if rows is not None:
                ious[rows] = pos_ious.to(ious.dtype)
                metrics[rows] = pos_metrics.to(metrics.dtype)
            pos_ious, pos_metrics = ious, metrics
        result = AssignResult(num_gts, gt_inds, pos_ious, labels)
        if pos_metrics is not None:
            result.set_extra_property("assign_metrics", pos_metrics)
        return result

