"""SimOTA (YOLOX, Ge et al. 2021): optimal-transport-like assignment with a dynamic k per GT.

Shape symbols: B images, A priors, A' candidate priors, M GTs, C classes.

Per image (mmdet's ``assign``) the priors are points ``(cx, cy, stride_w, stride_h)`` [A, 4],
``pred.scores`` class **probabilities** [A, C] (what YOLOX's head passes) and ``pred.bboxes`` decoded
predictions [A, 4] xyxy. The batched interface (:meth:`SimOTAAssigner.assign_batch`) takes the head's
**logits** and applies the sigmoid itself, and a :class:`detassign.Priors` with points and strides.

Steps (mmdetection 3.3.0 ``SimOTAAssigner``):

1. Candidates. ``in_box``: prior center strictly inside the GT. ``in_center``: prior center strictly
   inside the square of half-side ``center_radius * stride`` around the GT center. With
   ``candidate_mode="box_or_center"`` (mmdet) a prior is a candidate when it is in the box or center
   region of any GT, and a GT's cost gets ``+1e5`` at priors not in *both* its box and its center
   region. With ``candidate_mode="center"`` (YOLOX's own ``get_geometry_constraint``, use
   ``center_radius=1.5``, see :meth:`SimOTAAssigner.yolox`) only the center regions count, and the
   penalty applies outside the GT's center region. YOLOX adds 1e6 where we add 1e5; the constant only
   changes how finely float32 orders penalised priors among themselves. For YOLOX's objectness head
   pass ``sqrt(cls * obj)`` as the scores, as YOLOX does.
2. Cost over the candidates: ``cls_weight * sum_c BCE(p_c, onehot_c) + iou_weight * -log(IoU + 1e-7)
   + penalty``. The BCE is computed in float32 and cast back to the score dtype, as mmdet does.
3. Dynamic-k matching (see :mod:`._dynamic_k`): ``k = max(1, floor(sum of the candidate_topk largest
   IoUs))``; each GT takes its k lowest-cost candidates; a prior taken twice goes to the cheapest GT.

Results follow mmdet, sentinels included: positives carry their IoU in ``max_overlaps``, every other
prior ``-1e5`` when the image had at least one candidate, and ``0`` when it had no GT or no candidate.

Two computations:

* ``exact=True`` (default) for :meth:`~SimOTAAssigner.assign`: op for op as mmdet (one-hot
  ``[A', M, C]`` BCE, ``torch.topk`` per GT), so results are identical to mmdet 3.3.0, ties included.
* :meth:`~SimOTAAssigner.assign_batch` (and ``assign`` with ``exact=False``): one vectorised pass over
  a padded batch (``sigmoid(logits)`` of the candidates' rows only, with the bits of the whole [B, A, C]
  tensor's sigmoid that a caller of the reference applies), costs only over each image's candidates
  (compacted to [B, M, A']). The class cost
  avoids the C axis with ``sum_c BCE(p_c, 0) - BCE(p_g, 0) + BCE(p_g, 1)`` for GT class g; that sum
  rounds differently from mmdet's (about 1e-7 relative), and ties at a GT's k-th cost go to the lowest
  prior index (mmdet's ``torch.topk`` order is unspecified). Decisions equal mmdet's except at such
  near-ties, which mostly occur among +1e5-penalised priors (float32 spacing 0.008 there). Results of
  a batched call and of a one-image call are bit-identical. Images run in blocks of at most
  ``block_pairs`` (GT, prior) pairs to bound memory, and an image with more pairs than that in blocks
  of GTs; each image block reads its candidate count on the host once (a device sync).

Dense scenes: neither path holds an [M, A'] matrix. The exact path builds mmdet's costs a block of
GTs at a time (and its one-hot ``[A', g, C]`` temporaries a block of priors at a time, see
:mod:`._blocks`); between blocks only per-GT results and per-prior reductions over GTs are kept
(:func:`._dynamic_k.fold_matching`), so the result is the same, bit for bit on one thread.

Differences from mmdet: ``gt_instances_ignore`` is accepted and ignored (as in mmdet); float16 /
bfloat16 boxes are compared in float32 (mmdet's IoU would run in half precision).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from ..boxes import points_in_boxes
from ..structures import AssignResult, BatchAssignResult, as_priors
from . import _dynamic_k as DK
from ._blocks import cat_row_blocks, row_blocks, simd_sigmoid
from .base import BaseAssigner, empty_assign_result, parse_iou_calculator

__all__ = ["SimOTAAssigner", "CANDIDATE_MODES", "candidate_regions", "candidate_rules"]

INF = 100000.0       # mmdet's penalty and (negated) sentinel for non-positives
EPS = 1.0e-7         # inside -log(IoU + EPS)
CANDIDATE_MODES = ("box_or_center", "center")


def candidate_regions(priors: Tensor, gt_bboxes: Tensor, center_radius: float) -> Tuple[Tensor, Tensor]:
    """priors [A, 4] (cx, cy, sw, sh), gt_bboxes [..., M, 4] -> (in_box, in_center), each [..., M, A] bool.

    Strict inequalities (:func:`detassign.boxes.points_in_boxes`, mmdet's ``x - x1 > 0``); the center
    square is built as mmdet builds it (``cx - r * stride`` first) so that borderline priors fall on
    the same side.
    """
    x, y = priors[:, 0], priors[:, 1]
    x1, y1, x2, y2 = (gt_bboxes[..., i].unsqueeze(-1) for i in range(4))     # [..., M, 1]
    in_box = points_in_boxes(priors[:, :2], gt_bboxes)                        # [..., M, A]
    reach_x, reach_y = center_radius * priors[:, 2], center_radius * priors[:, 3]  # [A]
    gt_cx, gt_cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0                           # [..., M, 1]
    in_center = x > gt_cx - reach_x
    in_center &= y > gt_cy - reach_y
    in_center &= x < gt_cx + reach_x
    in_center &= y < gt_cy + reach_y
    return in_box, in_center


def candidate_rules(in_box: Tensor, in_center: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    """-> (candidate, unpenalised), each [..., M, A]: which (GT, prior) pairs make a prior a candidate,
    and which pairs escape the +1e5 cost penalty."""
    if mode == "center":
        return in_center, in_center
    return in_box | in_center, in_box & in_center


def exact_cls_cost(scores: Tensor, gt_labels: Tensor) -> Tensor:
    """mmdet's class cost on one image: scores [A', C] probabilities, gt_labels [M] -> [A', M] (score dtype).

    Builds the one-hot ``[A', M, C]`` target and sums the float32 BCE over classes, as mmdet does.
    """
    num_cand, num_classes = scores.shape
    onehot = F.one_hot(gt_labels, num_classes).float().unsqueeze(0).repeat(num_cand, 1, 1)  # [A', M, C]
    repeated = scores.unsqueeze(1).repeat(1, gt_labels.shape[0], 1)                      # [A', M, C]
    with torch.autocast(device_type=scores.device.type, enabled=False):
        bce = F.binary_cross_entropy(repeated.float(), onehot, reduction="none")
    return bce.sum(-1).to(scores.dtype)


def negative_sums(scores: Tensor) -> Tensor:
    """scores [B, A', C] probabilities -> [B, 1, A'] float32 ``sum_c BCE(p_c, 0)`` (log clamped at -100)."""
    return DK.bce_negative_(scores.to(torch.float32, copy=True)).sum(dim=-1).unsqueeze(1)


def decomposed_cls_cost(scores: Tensor, gt_labels: Tensor, all_negative: Optional[Tensor] = None) -> Tensor:
    """Same class cost without a C axis per pair: scores [B, A', C], gt_labels [B, M] -> [B, M, A']
    float32, or the score dtype when narrower.

    ``sum_c BCE(p_c, [c == g]) = BCE(p_g, 1) - BCE(p_g, 0) + sum_c BCE(p_c, 0)`` in float32 (logs
    clamped at -100 as in BCE), then rounded to the score dtype as mmdet rounds its cost.
    ``all_negative`` [B, 1, A']: :func:`negative_sums` of the scores when already computed.
    """
    p_gt = DK.gt_class_rows(scores, gt_labels).float()                          # [B, M, A']
    cost = DK.bce_negative_(p_gt.clone()).neg_()                                 # -BCE(p_g, 0)
    cost += p_gt.log_().clamp_(min=-100.0).neg_()                                # +BCE(p_g, 1)
    del p_gt
    cost += negative_sums(scores) if all_negative is None else all_negative     # [B, 1, A'] over classes
    if scores.dtype != cost.dtype:
        cost = cost.to(scores.dtype)
    return cost


def batched_cost(cls_cost: Tensor, ious: Tensor, unpenalised: Tensor, cls_weight: float,
                 iou_weight: float) -> Tensor:
    """:func:`total_cost` for [B, M, A'] tensors with in-place steps (same values, less memory)."""
    cost = ious.add(EPS).log_().neg_().mul_(iou_weight)                          # -log(IoU + eps) * w
    cost += cls_cost * cls_weight if cls_weight != 1.0 or cls_cost.dtype != cost.dtype else cls_cost
    cost += (~unpenalised).to(cost.dtype).mul_(INF)
    return cost


def total_cost(cls_cost: Tensor, ious: Tensor, unpenalised: Tensor, cls_weight: float,
               iou_weight: float) -> Tensor:
    """cls_cost, ious, unpenalised: same shape -> cost (float32 unless the inputs are wider)."""
    iou_cost = -torch.log(ious + EPS)
    return cls_cost * cls_weight + iou_cost * iou_weight + (~unpenalised) * INF


class SimOTAAssigner(BaseAssigner):
    """SimOTA assigner; see the module docstring for the algorithm, the modes and mmdet parity.

    Args:
        center_radius: half-side of the center region in strides (2.5 mmdet, 1.5 YOLOX).
        candidate_topk: number of top IoUs summed into each GT's dynamic k.
        iou_weight, cls_weight: cost weights.
        iou_calculator: read by :func:`~detassign.assigners.base.parse_iou_calculator` (default
            ``BboxOverlaps2D``; a callable ``(boxes1, boxes2) -> IoU``; no rotated form).
        candidate_mode: ``"box_or_center"`` (mmdet) or ``"center"`` (YOLOX).
        exact: per-image :meth:`assign` mirrors mmdet op for op (True) or runs the batched path (False).
        block_pairs: :meth:`assign_batch` processes images in blocks of at most this many (GT, prior)
            pairs (``M * A`` per image; at least one image per block, an image beyond it in blocks of at
            least 64 GTs) to bound memory; ``None``: one block.
    """

    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                 cls_weight: float = 1.0, iou_calculator=None, candidate_mode: str = "box_or_center",
                 exact: bool = True, block_pairs: Optional[int] = 2 ** 21) -> None:
        V.check_choice("candidate_mode", candidate_mode, CANDIDATE_MODES)
        self.center_radius = DK.check_non_negative("center_radius", center_radius)
        self.candidate_topk = DK.check_positive_int("candidate_topk", candidate_topk)
        self.iou_weight = DK.check_non_negative("iou_weight", iou_weight)
        self.cls_weight = DK.check_non_negative("cls_weight", cls_weight)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)
        self.candidate_mode = candidate_mode
        self.exact = V.check_flag("exact", exact)
        self.block_pairs = DK.check_block_pairs(block_pairs)

    @classmethod
    def yolox(cls, candidate_topk: int = 10, iou_weight: float = 3.0, cls_weight: float = 1.0,
              exact: bool = True) -> "SimOTAAssigner":
        """YOLOX's original rule: center-region candidates only, radius 1.5 strides."""
        return cls(center_radius=1.5, candidate_topk=candidate_topk, iou_weight=iou_weight,
                   cls_weight=cls_weight, candidate_mode="center", exact=exact)

    # ------------------------------------------------------------------ per image
    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """One image: pred ``priors`` [A, 4] points, ``bboxes`` [A, 4], ``scores`` [A, C] probabilities;
        gt ``bboxes`` [M, 4], ``labels`` [M]. If M == 0 or no prior is a candidate: all negative."""
        priors, bboxes, scores, gt_bboxes, gt_labels = DK.read_image_inputs(pred_instances, gt_instances, True)
        if not self.exact:
            return self._assign_padded(scores[None], bboxes[None], priors, gt_labels[None], gt_bboxes[None], None,
                                       probabilities=True)[0]
        num_gt, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gt == 0 or num_priors == 0:
            return empty_assign_result(num_gt, num_priors, priors.device, 0.0, DK.result_dtype(bboxes))
        valid = torch.zeros(num_priors, dtype=torch.bool, device=priors.device)        # [A]
        for blk in row_blocks(num_gt, num_priors):
            valid |= self._rules(priors, gt_bboxes[blk])[0].any(dim=0)
        if not bool(valid.any()):
            return empty_assign_result(num_gt, num_priors, priors.device, 0.0, DK.result_dtype(bboxes))
        cand_priors, cand_boxes, cand_scores = priors[valid], bboxes[valid], scores[valid]

        num_cand, num_classes = cand_scores.shape

        def blocks():   # mmdet's [A', M] costs, a block of GTs at a time
            for blk in row_blocks(num_gt, num_cand):
                unpenalised = self._rules(cand_priors, gt_bboxes[blk])[1].t()          # [A', g]
                ious = self.iou_calculator.pairwise(cand_boxes, gt_bboxes[blk])          # [A', g]
                cls_cost = cat_row_blocks(  # mmdet's [A', g, C] one-hot temporaries, in blocks of priors
                    lambda rows: exact_cls_cost(cand_scores[rows], gt_labels[blk]), num_cand,
                    ious.shape[1] * num_classes)                                         # [A', g]
                cost = total_cost(cls_cost, ious, unpenalised, self.cls_weight, self.iou_weight)
                del cls_cost, unpenalised
                yield blk.start, cost, ious
                del cost, ious

        fg, gt_index, matched = DK.mmdet_dynamic_k_blocks(blocks(), self.candidate_topk)
        return DK.mmdet_result(num_gt, num_priors, valid, fg, gt_index, matched, gt_labels, -INF)

    def _rules(self, priors: Tensor, gt_bboxes: Tensor) -> Tuple[Tensor, Tensor]:
        """priors [A, 4], gt_bboxes [..., g, 4] -> (candidate, unpenalised), each [..., g, A] bool."""
        return candidate_rules(*candidate_regions(priors, gt_bboxes, self.center_radius), self.candidate_mode)

    # ------------------------------------------------------------------ batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, priors, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """The batched interface: a padded batch, vectorised over images, GTs and candidates (no loop over
        images or GTs; only over blocks of images when the batch exceeds ``block_pairs``).

        pred_scores [B, A, C] logits (their sigmoid is the class probability), pred_bboxes [B, A, 4] xyxy,
        priors a :class:`detassign.Priors` with points and strides, gt_labels [B, M], gt_bboxes [B, M, 4]
        xyxy, gt_mask [B, M] (None: all valid) -> BatchAssignResult(gt_inds [B, A] 1-based into the padded
        M, labels [B, A], max_overlaps [B, A]).
        """
        point_priors = as_priors(priors).point_priors(type(self).__name__)
        return self._assign_padded(pred_scores, pred_bboxes, point_priors, gt_labels, gt_bboxes, gt_mask,
                                   probabilities=False)

    @torch.no_grad()
    def assign_batch_probs(self, pred_scores: Tensor, pred_bboxes: Tensor, priors, gt_labels: Tensor,
                           gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """:meth:`assign_batch` for callers that hold probabilities: pred_scores [B, A, C] in [0, 1] (what
        ultralytics' loss hands its assigner), used as they are."""
        point_priors = as_priors(priors).point_priors(type(self).__name__)
        return self._assign_padded(pred_scores, pred_bboxes, point_priors, gt_labels, gt_bboxes, gt_mask,
                                   probabilities=True)

    def _assign_padded(self, pred_scores, pred_bboxes, priors: Tensor, gt_labels, gt_bboxes, gt_mask,
                       probabilities: bool) -> BatchAssignResult:
        """The batched path on point priors [A, 4]: scores [B, A, C] probabilities or logits."""
        scores, bboxes, priors, labels, gt_bboxes, gt_mask = DK.read_batch_inputs(
            pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask, probabilities=probabilities)
        assign_block = self._assign_block if probabilities else self._assign_block_logits
        return DK.run_blocks(assign_block, scores, bboxes, priors, labels, gt_bboxes, gt_mask, self.block_pairs)

    def _assign_block_logits(self, logits: Tensor, *args) -> Tuple[Tensor, Tensor, Tensor]:
        return self._assign_block(logits, *args, logits=True)

    def _assign_block(self, scores: Tensor, bboxes: Tensor, priors: Tensor, labels: Tensor, gt_bboxes: Tensor,
                      gt_mask: Tensor, logits: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        """The vectorised algorithm on a block of b images -> (gt_inds, labels, max_overlaps), each [b, A];
        ``logits``: the scores are logits, whose sigmoid only the candidate rows need."""
        num_priors = priors.shape[0]
        valid = DK.candidates_any(lambda blk: self._rules(priors, gt_bboxes[:, blk])[0], gt_mask, num_priors,
                                  self.block_pairs)                                     # [b, A]
        index, cand_mask = DK.compact_candidates(valid)                                 # [b, A']
        if index.shape[1] == 0:
            return DK.empty_block(gt_mask, num_priors)
        cand_boxes = DK.gather_priors(bboxes, index)                                    # [b, A', 4]
        cand_scores = DK.gather_priors(scores, index)                                   # [b, A', C]
        if logits:   # the bits of the whole tensor's sigmoid, as a reference's caller takes it
            cand_scores = simd_sigmoid(cand_scores)
        all_negative = negative_sums(cand_scores)                                       # [b, 1, A']

        def pair_costs(blk: slice) -> Tuple[Tensor, Tensor]:                            # [b, g, A'] each
            block_bboxes = gt_bboxes[:, blk]
            unpenalised = self._rules(priors, block_bboxes)[1].gather(2, index.unsqueeze(1).expand(-1, block_bboxes.shape[1], -1))
            ious = DK.batched_ious(self.iou_calculator, block_bboxes, cand_boxes)
            cls_cost = decomposed_cls_cost(cand_scores, labels[:, blk], all_negative)
            return batched_cost(cls_cost, ious, unpenalised, self.cls_weight, self.iou_weight), ious

        fg, gt_index, matched = DK.blocked_dynamic_k_matching(pair_costs, gt_mask, cand_mask,
                                                              self.candidate_topk, self.block_pairs)
        return DK.scatter_to_priors(fg, gt_index, matched, index, labels, num_priors, cand_mask.any(dim=1), -INF)
