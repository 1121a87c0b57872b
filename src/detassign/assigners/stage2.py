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
query's highest-quality GT among its pairs, 0 if none), ``num_sampled`` [B] and the ``quality`` [B, M, Q].
Steps 1, 2, 4 and 5 run vectorised over the batch; step 3 loops over images (one ``randperm`` pair each,
to follow the references' random stream).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import pairwise_iou
from .base import BaseAssigner

__all__ = ["Stage2Assigner", "Stage2Matches"]


class Stage2Matches(NamedTuple):
    indices: List[Tuple[Tensor, Tensor]]   # per image (query_idx [P], gt_idx [P]), quality ascending
    gt_inds: Tensor                        # [B, Q] 1-based highest-quality GT of each query, 0 none
    num_sampled: Tensor                    # [B] positives kept by the subsample (step 3)
    quality: Tensor                        # [B, M, Q] (padded GT rows are -inf)


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
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an int >= 1, got {topk!r}")
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction!r}")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 0):
            raise ValueError(f"num_samples must be None or an int >= 0, got {num_samples!r}")
        self.threshold, self.topk = float(threshold), topk
        self.iou_weight, self.score_weight = float(iou_weight), float(score_weight)
        self.positive_fraction, self.num_samples = float(positive_fraction), num_samples
        self.low_quality = bool(low_quality)

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
        V.check_tensor("pred_scores", pred_scores, ("B", "Q", "C"), floating=True)
        B, Q, C = pred_scores.shape
        V.check_tensor("pred_bboxes", pred_bboxes, (B, Q, 4), floating=True)
        V.check_tensor("gt_bboxes", gt_bboxes, (B, "M", 4), floating=True)
        M = gt_bboxes.shape[1]
        V.check_tensor("gt_labels", gt_labels, (B, M), floating=False)
        gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device) if gt_mask is None else gt_mask.bool()
        V.check_tensor("gt_mask", gt_mask, (B, M))
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, gt_labels=gt_labels,
                            gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        V.check_finite("pred_scores", pred_scores)
        V.check_boxes("pred_bboxes", pred_bboxes)
        V.check_boxes("gt_bboxes", gt_bboxes, gt_mask)
        V.check_labels("gt_labels", gt_labels, C, gt_mask)
        labels = torch.where(gt_mask, gt_labels.long(), 0)                  # padded rows: any in-range class
        if M == 0 or Q == 0:
            empty = torch.zeros(0, dtype=torch.long, device=pred_scores.device)
            quality = pred_scores.new_zeros(B, M, Q, dtype=torch.float32)
            return Stage2Matches([(empty, empty) for _ in range(B)],
                                 torch.zeros(B, Q, dtype=torch.long, device=pred_scores.device),
                                 torch.zeros(B, dtype=torch.long, device=pred_scores.device), quality)
        quality = self.quality(pred_scores, pred_bboxes, labels, gt_bboxes)
        quality = quality.masked_fill(~gt_mask[..., None], float("-inf"))
        best_gt, positive = self.positives(quality, gt_mask)
        kept = self.subsample(positive, generator)
        return self._pairs(quality, best_gt, kept, gt_mask)

    def _pairs(self, quality: Tensor, best_gt: Tensor, kept: Tensor, gt_mask: Tensor) -> Stage2Matches:
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
        return Stage2Matches(indices, gt_inds, kept.sum(1), quality)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None,
               generator: Optional[torch.Generator] = None) -> Stage2Matches:
        """One image: ``pred_instances.scores`` [Q, C] logits, ``.bboxes`` [Q, 4] xyxy; ``gt_instances.labels``
        [M], ``.bboxes`` [M, 4] xyxy. Returns the batch-of-one :class:`Stage2Matches`."""
        scores = V.get_field(pred_instances, "scores", "pred_instances")
        bboxes = V.get_field(pred_instances, "bboxes", "pred_instances")
        labels = V.get_field(gt_instances, "labels", "gt_instances")
        boxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        V.check_tensor("pred_instances.scores", scores, ("Q", "C"), floating=True)
        V.check_tensor("gt_instances.bboxes", boxes, ("M", 4), floating=True)
        return self.assign_batch(scores[None], bboxes[None], labels[None], boxes[None], None, generator)

