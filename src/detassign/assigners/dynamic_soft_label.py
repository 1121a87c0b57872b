"""Dynamic soft-label assignment (RTMDet, Lyu et al. 2022).

Shape symbols: B images, A priors, A' candidate priors, M GTs, C classes.

Per image (mmdet's ``assign``) the priors are points ``(cx, cy, stride_w, stride_h)`` [A, 4] (only
``stride_w`` is used, as in mmdet); ``pred.scores`` are class **logits** [A, C]; ``pred.bboxes`` decoded
predictions [A, 4] xyxy. The batched interface (:meth:`DynamicSoftLabelAssigner.assign_batch`) takes the
same logits and a :class:`detassign.Priors` with points and strides.

Steps (mmdetection 3.3.0 ``DynamicSoftLabelAssigner``):

1. Candidates: priors whose center lies strictly inside at least one GT box. Every candidate is
   costed against every GT (also GTs it is not inside).
2. Cost = soft-label class cost + ``iou_weight * -log(IoU + 1e-7)`` + soft center prior, with
   ``soft = onehot(gt class) * IoU``, class cost ``sum_c BCEWithLogits(x_c, soft_c) * |soft_c - sigmoid(x_c)|^2``
   and center prior ``10 ** (|prior - gt center| / stride - soft_center_radius)``.
3. Dynamic-k matching (see :mod:`._dynamic_k`) with ``k = max(1, floor(sum of the topk largest IoUs))``.

Results follow mmdet, sentinels included: positives carry their IoU in ``max_overlaps``, every other
prior ``-1e8`` when the image had at least one candidate, and ``0`` when it had no GT or no candidate.

Two computations:

* ``exact=True`` (default) for :meth:`~DynamicSoftLabelAssigner.assign`: op for op as mmdet (one-hot
  ``[A', M, C]`` soft labels, ``torch.topk`` per GT), identical to mmdet 3.3.0, ties included. With
  ``gt_instances.masks`` (a tensor [M, H, W]) the GT centers are the masks' centers of mass, as mmdet.
* :meth:`~DynamicSoftLabelAssigner.assign_batch` (and ``assign`` with ``exact=False``): one vectorised
  pass over a padded batch. For c != g the soft label is 0, so the class cost is
  ``sum_c T0(x_c) - T0(x_g) + BCE(x_g, IoU) * (IoU - sigmoid(x_g))^2`` with
  ``T0(x) = BCE(x, 0) * sigmoid(x)^2`` and no C axis per pair; rounding differs from mmdet by about
  1e-7 relative, and ties at a GT's k-th cost go to the lowest prior index (mmdet's ``torch.topk``
  order is unspecified); decisions equal mmdet's except at such near-ties. A batched call and a
  one-image call give bit-identical results. Images run in blocks of at most ``block_pairs`` (GT,
  prior) pairs to bound memory, and an image with more pairs than that in blocks of GTs; each image
  block reads its candidate count on the host once (a device sync). GT masks are not used by the
  batched path (``assign`` with masks always takes the exact path).

Dense scenes: neither path holds an [M, A'] matrix. The exact path builds mmdet's costs a block of
GTs at a time (and its one-hot ``[A', g, C]`` temporaries a block of priors at a time, see
:mod:`._blocks`); between blocks only per-GT results and per-prior reductions over GTs are kept
(:func:`._dynamic_k.fold_matching`), so the result is the same, bit for bit on one thread.

Half-precision logits: like mmdet, the sigmoid is taken in the logits' dtype and the BCE in float32
(mmdet's float32 soft label promotes it). Differences from mmdet: ``gt_instances_ignore`` is accepted
and ignored (as in mmdet); float16 boxes are compared in float32. mmdet's ``HorizontalBoxes`` GTs
(any box object with a ``.tensor``) are read through their tensor.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from ..boxes import box_centers, points_in_boxes
from ..structures import AssignResult, BatchAssignResult, as_priors
from . import _dynamic_k as DK
from ._blocks import cat_row_blocks, row_blocks
from .base import BaseAssigner, empty_assign_result, parse_iou_calculator

__all__ = ["DynamicSoftLabelAssigner", "center_of_mass"]

INF = 100000000.0    # mmdet's (negated) sentinel for non-positives
EPS = 1.0e-7         # inside -log(IoU + EPS) and the center-of-mass normaliser


def center_of_mass(masks: Tensor, eps: float = EPS) -> Tensor:
    """masks [M, H, W] -> [M, 2] (x, y) centers of mass in pixel indices (normaliser clamped at eps)."""
    _, h, w = masks.shape
    rows = torch.arange(h, device=masks.device)[:, None]
    cols = torch.arange(w, device=masks.device)
    parts = []
    for blk in row_blocks(masks.shape[0], h * w):    # (masks * rows) is [g, H, W] (int64 for bool masks)
        m = masks[blk]
        total = m.sum(dim=(1, 2)).float().clamp(min=eps)
        cy = (m * rows).sum(dim=(1, 2)) / total
        cx = (m * cols).sum(dim=(1, 2)) / total
        parts.append(torch.stack((cx, cy), dim=1))
    return torch.cat(parts)


def soft_center_prior(points: Tensor, strides: Tensor, centers: Tensor, radius: float) -> Tensor:
    """points [B, A', 2], strides [B, A'], centers [B, M, 2] -> [B, M, A'] = 10 ** (dist / stride - radius)."""
    dx = points[..., 0].unsqueeze(1) - centers[..., 0].unsqueeze(2)         # [B, M, A']
    dy = points[..., 1].unsqueeze(1) - centers[..., 1].unsqueeze(2)
    distance = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_().div_(strides.unsqueeze(1))
    return torch.pow(10, distance.sub_(radius), out=distance)


def exact_soft_center_prior(points: Tensor, strides: Tensor, centers: Tensor, radius: float) -> Tensor:
    """points [A', 2], strides [A'], centers [M, 2] -> [A', M], with mmdet's exact sequence of operations
    (``(p - c).pow(2).sum(-1).sqrt() / stride``), for the bit-exact per-image path."""
    distance = (points[:, None, :] - centers[None, :, :]).pow(2).sum(-1).sqrt() / strides[:, None]
    return torch.pow(10, distance - radius)


def exact_cls_cost(logits: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
    """mmdet's soft-label class cost on one image: logits [A', C], gt_labels [M], ious [A', M] -> [A', M]."""
    num_cand, num_classes = logits.shape
    onehot = F.one_hot(gt_labels, num_classes).float().unsqueeze(0).repeat(num_cand, 1, 1)  # [A', M, C]
    repeated = logits.unsqueeze(1).repeat(1, gt_labels.shape[0], 1)                      # [A', M, C]
    soft = onehot * ious[..., None]
    scale = soft - repeated.sigmoid()
    cost = F.binary_cross_entropy_with_logits(repeated, soft, reduction="none") * scale.abs().pow(2.0)
    return cost.sum(dim=-1)


def negative_terms(logits: Tensor) -> Tensor:
    """logits [...] -> float32 ``T0(x) = BCEWithLogits(x, 0) * sigmoid(x)^2`` (soft label 0), with the
    sigmoid taken in the logits' dtype as mmdet takes it."""
    sig = logits.sigmoid().float()
    wide = logits.float()
    terms = F.binary_cross_entropy_with_logits(wide, wide.new_zeros(()).expand_as(wide), reduction="none")
    return terms.mul_(sig.mul_(sig))


def decomposed_cls_cost(logits: Tensor, gt_labels: Tensor, ious: Tensor,
                        class_sums: Optional[Tensor] = None) -> Tensor:
    """Same cost without a C axis per pair: logits [B, A', C], gt_labels [B, M], ious [B, M, A']
    -> [B, M, A'] float32: ``BCE(x_g, IoU) * (IoU - sigmoid(x_g))^2 - T0(x_g) + sum_c T0(x_c)``.

    class_sums [B, 1, A']: ``sum_c T0(x_c)`` when already computed (it does not depend on the GTs).
    """
    x_gt = DK.gt_class_rows(logits, gt_labels)                                 # [B, M, A'] logits dtype
    soft = ious.float()
    gap = soft - x_gt.sigmoid().float()
    cost = F.binary_cross_entropy_with_logits(x_gt.float(), soft, reduction="none")
    cost.mul_(gap.abs_().mul_(gap))                                          # |soft - sigmoid|^2
    del gap
    cost -= negative_terms(x_gt)
    del x_gt
    if class_sums is None:
        class_sums = negative_terms(logits).sum(dim=-1).unsqueeze(1)         # [B, 1, A'] over classes
    cost += class_sums
    return cost


class DynamicSoftLabelAssigner(BaseAssigner):
    """RTMDet's dynamic soft-label assigner; see the module docstring for the algorithm and mmdet parity.

    Args:
        soft_center_radius: the center prior is 1 at this many strides from the GT center.
        topk: number of top IoUs summed into each GT's dynamic k.
        iou_weight: weight of ``-log(IoU)``.
        iou_calculator: read by :func:`~detassign.assigners.base.parse_iou_calculator` (default
            ``BboxOverlaps2D``; mmrotate's ``RBboxOverlaps2D``; a callable ``(boxes1, boxes2) -> IoU``).
        exact: per-image :meth:`assign` mirrors mmdet op for op (True) or runs the batched path (False).
        block_pairs: :meth:`assign_batch` processes images in blocks of at most this many (GT, prior)
            pairs (``M * A`` per image; at least one image per block, an image beyond it in blocks of at
            least 64 GTs) to bound memory; ``None``: one block.
    """

    def __init__(self, soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0,
                 iou_calculator=None, exact: bool = True, block_pairs: Optional[int] = 2 ** 21) -> None:
        self.soft_center_radius = DK.check_non_negative("soft_center_radius", soft_center_radius)
        self.topk = DK.check_positive_int("topk", topk)
        self.iou_weight = DK.check_non_negative("iou_weight", iou_weight)
        # mmrotate's RBboxOverlaps2D: rotated boxes [..., 5] xywhr (see .rotated_calculators)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__)
        self.exact = V.check_flag("exact", exact)
        self.block_pairs = DK.check_block_pairs(block_pairs)

    # ------------------------------------------------------------------ per image
    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """One image: pred ``priors`` [A, 4] points, ``bboxes`` [A, 4], ``scores`` [A, C] logits;
        gt ``bboxes`` [M, 4], ``labels`` [M] (optional ``masks`` [M, H, W]). If M == 0 or no prior center
        is inside a GT: all negative."""
        if self.iou_calculator.rotated:
            from .rotated_calculators import rotated_dsl_assign
            return rotated_dsl_assign(self, pred_instances, gt_instances)
        priors, bboxes, scores, gt_bboxes, gt_labels = DK.read_image_inputs(pred_instances, gt_instances, False)
        masks = V.tensor_input("gt_instances.masks", getattr(gt_instances, "masks", None),
                               (gt_bboxes.shape[0], None, None), allow_none=True)
        if not self.exact and masks is None:
            return self._assign_padded(scores[None], bboxes[None], priors, gt_labels[None], gt_bboxes[None], None)[0]
        num_gt, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gt == 0 or num_priors == 0:
            return empty_assign_result(num_gt, num_priors, priors.device, 0.0, DK.result_dtype(bboxes))
        valid = torch.zeros(num_priors, dtype=torch.bool, device=priors.device)        # [A]
        for blk in row_blocks(num_gt, num_priors):
            valid |= points_in_boxes(priors[:, :2], gt_bboxes[blk]).any(dim=0)
        if not bool(valid.any()):
            return empty_assign_result(num_gt, num_priors, priors.device, 0.0, DK.result_dtype(bboxes))
        centers = center_of_mass(masks) if masks is not None else box_centers(gt_bboxes)
        cand_priors, cand_boxes, cand_logits = priors[valid], bboxes[valid], scores[valid]

        num_cand, num_classes = cand_logits.shape

        def blocks():   # mmdet's [A', M] costs, a block of GTs at a time
            for blk in row_blocks(num_gt, num_cand):
                center_cost = exact_soft_center_prior(cand_priors[:, :2], cand_priors[:, 2], centers[blk],
                                                      self.soft_center_radius)          # [A', g]
                ious = self.iou_calculator.pairwise(cand_boxes, gt_bboxes[blk])          # [A', g]
                iou_cost = -torch.log(ious + EPS) * self.iou_weight
                cls_cost = cat_row_blocks(  # mmdet's [A', g, C] one-hot temporaries, in blocks of priors
                    lambda rows: exact_cls_cost(cand_logits[rows], gt_labels[blk], ious[rows]), num_cand,
                    ious.shape[1] * num_classes)
                cost = cls_cost + iou_cost + center_cost
                del cls_cost, center_cost, iou_cost
                yield blk.start, cost, ious
                del cost, ious

        fg, gt_index, matched = DK.mmdet_dynamic_k_blocks(blocks(), self.topk)
        return DK.mmdet_result(num_gt, num_priors, valid, fg, gt_index, matched, gt_labels, -INF)

    # ------------------------------------------------------------------ batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, priors, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """The batched interface: a padded batch, vectorised over images, GTs and candidates (no loop over
        images or GTs; only over blocks of images when the batch exceeds ``block_pairs``).

        pred_scores [B, A, C] logits, pred_bboxes [B, A, 4] xyxy, priors a :class:`detassign.Priors` with
        points and strides, gt_labels [B, M], gt_bboxes [B, M, 4] xyxy, gt_mask [B, M] (None: all valid) ->
        BatchAssignResult(gt_inds [B, A] 1-based into the padded M, labels [B, A], max_overlaps [B, A]).
        With the rotated calculator: Priors of points and strides, boxes [..., 5] xywhr.
        """
        point_priors = as_priors(priors).point_priors(type(self).__name__)
        if self.iou_calculator.rotated:
            from .rotated_calculators import rotated_dsl_assign_batch
            return rotated_dsl_assign_batch(self, pred_scores, pred_bboxes, point_priors, gt_labels, gt_bboxes,
                                            gt_mask)
        return self._assign_padded(pred_scores, pred_bboxes, point_priors, gt_labels, gt_bboxes, gt_mask)

    def _assign_padded(self, pred_scores, pred_bboxes, priors: Tensor, gt_labels, gt_bboxes,
                       gt_mask) -> BatchAssignResult:
        """The batched path on point priors [A, 4]."""
        scores, bboxes, priors, labels, gt_bboxes, gt_mask = DK.read_batch_inputs(
            pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask, probabilities=False)
        return DK.run_blocks(self._assign_block, scores, bboxes, priors, labels, gt_bboxes, gt_mask,
                             self.block_pairs)

    def _assign_block(self, scores: Tensor, bboxes: Tensor, priors: Tensor, labels: Tensor, gt_bboxes: Tensor,
                      gt_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The vectorised algorithm on a block of b images -> (gt_inds, labels, max_overlaps), each [b, A]."""
        num_priors = priors.shape[0]
        valid = DK.candidates_any(lambda blk: points_in_boxes(priors[:, :2], gt_bboxes[:, blk]), gt_mask,
                                  num_priors, self.block_pairs)                         # [b, A]
        index, cand_mask = DK.compact_candidates(valid)                                 # [b, A']
        if index.shape[1] == 0:
            return DK.empty_block(gt_mask, num_priors)
        cand_priors = DK.gather_priors(priors, index)                                   # [b, A', 4]
        cand_boxes = DK.gather_priors(bboxes, index)                                    # [b, A', 4]
        cand_logits = DK.gather_priors(scores, index)                                   # [b, A', C]
        class_sums = negative_terms(cand_logits).sum(dim=-1).unsqueeze(1)               # [b, 1, A']
        centers = box_centers(gt_bboxes)                                                # [b, M, 2]

        def pair_costs(blk: slice) -> Tuple[Tensor, Tensor]:                            # [b, g, A'] each
            ious = DK.batched_ious(self.iou_calculator, gt_bboxes[:, blk], cand_boxes)
            cost = decomposed_cls_cost(cand_logits, labels[:, blk], ious, class_sums)
            cost += ious.add(EPS).log_().neg_().mul_(self.iou_weight)                   # -log(IoU + eps) * w
            cost += soft_center_prior(cand_priors[..., :2], cand_priors[..., 2], centers[:, blk],
                                      self.soft_center_radius)
            return cost, ious

        fg, gt_index, matched = DK.blocked_dynamic_k_matching(pair_costs, gt_mask, cand_mask, self.topk,
                                                              self.block_pairs)
        return DK.scatter_to_priors(fg, gt_index, matched, index, labels, num_priors, cand_mask.any(dim=1), -INF)
