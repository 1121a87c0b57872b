"""DETA's Stage2 one-to-many assigner, with MS-DETR's quality (Ouyang-Zhang et al. 2022; Zhao et al. 2024).

Shape symbols: B images, Q queries, M GTs (padded), C classes, P pairs of one image.

Per image (the steps of MS-DETR's ``Stage2Assigner``, itself DETA's with a different quality):

1. quality ``q[m, i] = iou_weight * IoU(pred box i, GT m) + score_weight * sigmoid(logit[i, label m])``
   (MS-DETR 0.7 / 0.3; DETA uses the IoU alone: ``iou_weight=1, score_weight=0``);
2. each query takes its best GT (``argmax`` over GTs, first on ties) and is positive when that quality
   is ``>= threshold`` (0.4; DETA 0.6); low-quality matches: the best query of every GT (first on ties)
   becomes positive too, keeping its own best GT (detectron2 ``Matcher(allow_low_quality_matches=True)``);
3. seeded random subsample: at most ``int(num_samples * positive_fraction)`` positives (Q * 0.25) are
   kept at random: ``torch.randperm`` over the positives in query order, then over the negatives (drawn
   too, so a global-generator run consumes the random stream exactly as MS-DETR / DETA);
4. top-k per GT: a GT with ``c`` sampled positives is matched to its ``min(c, topk)`` best queries by
   quality over *all* queries (``topk`` 6; DETA 4), ties to the lower query index;
5. the pairs of an image are ordered by quality ascending (stable), as MS-DETR orders them, so that a
   last-write-wins scatter of class targets keeps a query's best GT.

A query may be matched to several GTs (one-to-many both ways). The result is a :class:`Stage2Matches`:
DETR-style ``indices`` (per image ``(query_idx [P], gt_idx [P])``), ``gt_inds`` [B, Q] (1-based, the
query's highest-quality GT among its pairs, 0 if none), ``num_sampled`` [B], the ``quality`` [B, M, Q]
and ``labels`` [B, Q] (the class of the ``gt_inds`` GT, -1 if none).
Steps 1, 2, 4 and 5 run vectorised over the batch; step 3 loops over images (one ``randperm`` pair each,
to follow the references' random stream).

The per-image :meth:`Stage2Assigner.assign` (mmdet's interface, and what ``detassign.integrations.mmdet``
serves) returns an ``AssignResult`` whose ``gt_inds`` / ``labels`` are each query's highest-quality GT,
with the one-to-many pairs as extra properties; a loss over pairs reads those.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import pairwise_iou
from ..structures import AssignResult
from ._batch import check_padded_gts
from .base import BaseAssigner

__all__ = ["Stage2Assigner", "Stage2Matches"]


class Stage2Matches(NamedTuple):
    indices: List[Tuple[Tensor, Tensor]]   # per image (query_idx [P], gt_idx [P]), quality ascending
    gt_inds: Tensor                        # [B, Q] 1-based highest-quality GT of each query, 0 none
    num_sampled: Tensor                    # [B] positives kept by the subsample (step 3)
    quality: Tensor                        # [B, M, Q] (padded GT rows are -inf)
    labels: Tensor                         # [B, Q] class of the gt_inds GT (the query's class target), -1 none


class Stage2Assigner(BaseAssigner):
    """One-to-many quality matching of DETA / MS-DETR; see the module docstring.

    Args:
        threshold: quality at or above which a query's best GT makes it positive (MS-DETR 0.4, DETA 0.6).
        topk: most queries per GT (MS-DETR 6, DETA 4).
        iou_weight, score_weight: the quality's weights (MS-DETR 0.7 / 0.3).
        positive_fraction: share of ``num_samples`` that may be positive (0.25).
        num_samples: sample size per image; None = the number of queries (both references).
        low_quality: add each GT's best query as a positive (both references).
    """

    def __init__(self, threshold: float = 0.4, topk: int = 6, iou_weight: float = 0.7, score_weight: float = 0.3,
                 positive_fraction: float = 0.25, num_samples: Optional[int] = None, low_quality: bool = True) -> None:
        self.threshold = float(V.check_number("threshold", threshold))
        self.topk = V.check_number("topk", topk, low=1, integer=True)
        self.iou_weight = float(V.check_number("iou_weight", iou_weight, low=0))
        self.score_weight = float(V.check_number("score_weight", score_weight, low=0))
        self.positive_fraction = float(V.check_number("positive_fraction", positive_fraction, low=0, high=1))
        self.num_samples = V.check_number("num_samples", num_samples, low=0, integer=True, allow_none=True)
        self.low_quality = V.check_flag("low_quality", low_quality)

    def quality(self, pred_scores: Tensor, pred_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Step 1. pred_scores [B, Q, C] logits, pred_bboxes [B, Q, 4] xyxy, gt_labels [B, M] (valid class
        indices), gt_bboxes [B, M, 4] xyxy -> [B, M, Q]."""
        ious = pairwise_iou(gt_bboxes, pred_bboxes)                                         # [B, M, Q]
        probs = pred_scores.sigmoid().gather(2, gt_labels[:, None, :].expand(-1, pred_scores.shape[1], -1))
        return self.iou_weight * ious + self.score_weight * probs.transpose(1, 2).to(ious.dtype)

    def positives(self, quality: Tensor, gt_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Step 2. quality [B, M, Q] (padded rows -inf), gt_mask [B, M] -> (best GT [B, Q], positive [B, Q])."""
        best_value, best_gt = quality.max(dim=1)                                            # first on ties
        positive = best_value >= self.threshold
        if self.low_quality:
            best_query = quality.argmax(dim=2)                                              # [B, M]
            # valid GTs only; a reduction, since several GTs may share their best query
            hit = torch.zeros_like(best_gt).scatter_reduce(1, best_query, gt_mask.long(), "amax")
            positive = positive | (hit > 0)
        return best_gt, positive & gt_mask.any(1, keepdim=True)

    def subsample(self, positive: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Step 3. positive [B, Q] -> kept [B, Q] bool, at most ``int(num_samples * positive_fraction)``
        per image, chosen by ``torch.randperm`` as the references do."""
        B, Q = positive.shape
        cap = int((Q if self.num_samples is None else self.num_samples) * self.positive_fraction)
        kept = torch.zeros_like(positive)
        for b in range(B):
            pos = torch.nonzero(positive[b]).squeeze(1)
            n_neg = Q - pos.numel()
            perm = torch.randperm(pos.numel(), generator=generator, device=positive.device)[:min(cap, pos.numel())]
            # the references draw the negatives' permutation next; drawing it keeps the random stream aligned
            torch.randperm(n_neg, generator=generator, device=positive.device)
            kept[b, pos.index_select(0, perm)] = True
        return kept

    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
                     gt_mask: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Stage2Matches:
        """pred_scores [B, Q, C] logits, pred_bboxes [B, Q, 4] xyxy, gt_labels [B, M], gt_bboxes [B, M, 4]
        xyxy (boxes in one frame: IoU is invariant to scaling, so normalised or pixel boxes give the same
        result), gt_mask [B, M] (None: all valid); ``generator`` seeds step 3 (None: torch's global one)."""
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "Q", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "Q", 4), floating=True)
        V.check_agree("Q", [("pred_scores", pred_scores, 1), ("pred_bboxes", pred_bboxes, 1)])
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, gt_labels=gt_labels,
                            gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask,
                                                         V.num_classes_of(pred_scores, 1))
        V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0),
                            ("gt_bboxes", gt_bboxes, 0)])
        B, Q, C = pred_scores.shape
        M = gt_bboxes.shape[1]
        V.check_finite("pred_scores", pred_scores)
        V.check_boxes("pred_bboxes", pred_bboxes)
        labels = torch.where(gt_mask, gt_labels, 0)                          # padded rows: any in-range class
        if M == 0 or Q == 0:
            empty = torch.zeros(0, dtype=torch.long, device=pred_scores.device)
            quality = pred_scores.new_zeros(B, M, Q, dtype=torch.float32)
            return Stage2Matches([(empty, empty) for _ in range(B)],
                                 torch.zeros(B, Q, dtype=torch.long, device=pred_scores.device),
                                 torch.zeros(B, dtype=torch.long, device=pred_scores.device), quality,
                                 torch.full((B, Q), -1, dtype=torch.long, device=pred_scores.device))
        quality = self.quality(pred_scores, pred_bboxes, labels, gt_bboxes)
        quality = quality.masked_fill(~gt_mask[..., None], float("-inf"))
        best_gt, positive = self.positives(quality, gt_mask)
        kept = self.subsample(positive, generator)
        return self._pairs(quality, best_gt, kept, labels)

    def _pairs(self, quality: Tensor, best_gt: Tensor, kept: Tensor, labels: Tensor) -> Stage2Matches:
        """Steps 4-5, vectorised: counts per GT, each GT's best queries, pairs sorted by quality."""
        B, M, Q = quality.shape
        counts = torch.zeros(B, M, dtype=torch.long, device=quality.device).scatter_add_(1, best_gt, kept.long())
        take = counts.clamp(max=min(self.topk, Q))                                          # [B, M]
        k = min(self.topk, Q)
        order = torch.sort(quality, dim=2, descending=True, stable=True).indices[..., :k]     # [B, M, k]
        b, m, j = torch.nonzero(torch.arange(k, device=quality.device) < take[..., None], as_tuple=True)
        query = order[b, m, j]
        score = quality[b, m, query]
        # ascending quality within each image (stable), images kept apart by sorting on the image first
        by_score = torch.sort(score, stable=True).indices
        by_image = by_score.index_select(0, torch.sort(b.index_select(0, by_score), stable=True).indices)
        b, m, query, score = b[by_image], m[by_image], query[by_image], score[by_image]
        per_image = torch.bincount(b, minlength=B).tolist()
        indices = list(zip(torch.split(query, per_image), torch.split(m, per_image)))
        gt_inds = torch.zeros(B, Q, dtype=torch.long, device=quality.device)
        # a query's GT is its highest-quality pair, the last one among equals (what a last-write-wins scatter
        # in pair order keeps), found with reductions rather than a scatter with duplicate indices
        best = torch.full((B * Q,), float("-inf"), dtype=score.dtype, device=quality.device)
        flat = b * Q + query
        best = best.scatter_reduce(0, flat, score, "amax")
        top = score == best.index_select(0, flat)
        winner = torch.full((B * Q,), -1, dtype=torch.long, device=quality.device).scatter_reduce(
            0, flat, torch.where(top, torch.arange(flat.numel(), device=flat.device), -1), "amax")
        chosen = winner[winner >= 0]
        gt_inds.view(-1)[flat.index_select(0, chosen)] = m.index_select(0, chosen) + 1
        query_labels = torch.where(gt_inds > 0, labels.gather(1, (gt_inds - 1).clamp(min=0)), -1)
        return Stage2Matches(indices, gt_inds, kept.sum(1), quality, query_labels)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None,
               generator: Optional[torch.Generator] = None) -> AssignResult:
        """One image, mmdet's interface: ``pred_instances.scores`` [Q, C] logits, ``.bboxes`` [Q, 4] xyxy;
        ``gt_instances.labels`` [M], ``.bboxes`` [M, 4] xyxy (an empty tensor of any dtype: no GT).

        Returns an :class:`AssignResult` as mmdet's DETR heads read it: ``gt_inds`` [Q] each query's
        highest-quality GT (1-based, 0 none; what MS-DETR's last-write-wins class target keeps),
        ``labels`` [Q] its class (-1 none), ``max_overlaps`` [Q] the quality of that pair (0 none), and
        the whole one-to-many matching as extras: ``pairs_query`` / ``pairs_gt`` [P] (0-based, quality
        ascending; a query may appear with several GTs), ``num_sampled`` and ``quality`` [M, Q].
        """
        scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                                ("Q", "C"), floating=True, empty_rows=True)
        bboxes = V.tensor_input("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                ("Q", 4), floating=True, empty_rows=True)
        V.check_agree("Q", [("pred_instances.scores", scores, 0), ("pred_instances.bboxes", bboxes, 0)])
        boxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M", 4),
                               floating=True, empty_rows=True)
        labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(scores=scores, bboxes=bboxes, gt_bboxes=boxes, gt_labels=labels)
        labels = V.labels_input("gt_instances.labels", labels, ("M",), num_classes=V.num_classes_of(scores),
                                rows_like=("gt_instances.bboxes", boxes))
        # named as the caller passed them (assign_batch checks again, quickly)
        V.check_finite("pred_instances.scores", scores)
        V.check_boxes("pred_instances.bboxes", bboxes)
        V.check_boxes("gt_instances.bboxes", boxes)
        matches = self.assign_batch(scores[None], bboxes[None], labels[None], boxes[None], None, generator)
        gt_inds = matches.gt_inds[0]
        quality = matches.quality[0]                                                    # [M, Q]
        picked = quality.gather(0, (gt_inds - 1).clamp(min=0)[None])[0] if quality.shape[0] else quality.new_zeros(
            gt_inds.shape)
        result = AssignResult(boxes.shape[0], gt_inds, torch.where(gt_inds > 0, picked, 0.0), matches.labels[0])
        (pairs_query, pairs_gt), = matches.indices
        for key, value in (("pairs_query", pairs_query), ("pairs_gt", pairs_gt),
                           ("num_sampled", matches.num_sampled[0]), ("quality", quality)):
            result.set_extra_property(key, value)
        return result
