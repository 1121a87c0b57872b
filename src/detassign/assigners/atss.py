"""ATSSAssigner: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), per image and batched.

For every GT (the steps below are the functions of this module):

1. ``nearest_per_level``: on each pyramid level ``l`` take the ``k_l = min(topk, A_l)`` priors whose
   centres are nearest (Euclidean) to the GT centre; ``K = sum_l k_l`` candidates per GT;
2. ``candidate_quality``: quality ``q`` of each candidate, ``IoU(prior, GT)``; in DDOD mode
   (``alpha`` set) ``q = sigmoid(logit[label]) ** (1 - alpha) * IoU(pred_box, GT) ** alpha``;
3. ``adaptive_threshold``: ``t = mean(q) + std(q)`` over the K candidates (unbiased std);
4. a candidate is positive when ``q >= t`` (``threshold_compare="ge"``, mmdet) or ``q > t``
   (``"gt"``, PaddleDetection) and ``centers_inside``: its centre is more than 0.01 px inside the
   GT on all four sides;
5. ``resolve_by_quality``: a prior positive for several GTs goes to the one with the highest
   ``q`` (lowest GT index on ties).

Only the K candidates' qualities are computed (mmdet builds the full ``[A, M]`` matrix); the
values are the same bits, so assignments match mmdet 3.3.0 exactly.

mmdet behaviours reproduced (parity is the default):

* ``max_overlaps`` holds ``q`` of the assigned GT for positives and ``-1e8`` (mmdet's ``-INF``)
  for every other prior, but is all 0 when the image has no GT or no prior.
* Ignore regions (``ignore_iof_thr > 0`` and ``gt_instances_ignore.bboxes`` given): priors whose
  largest IoF with an ignore box is ``> ignore_iof_thr`` get ``gt_inds = -1`` and a centre
  distance of 1e8. They are therefore picked as candidates only when a level has fewer than k
  other priors, and such a candidate still becomes positive if it passes steps 3-4 (as in mmdet).
  Ignore regions are not applied when the image has no GT.
* With a single candidate per GT (K == 1) the unbiased std is NaN and the GT gets no positive.

Deviations: ``num_level_priors`` must sum to the number of priors (mmdet silently never selects
the trailing priors otherwise); ``alpha`` must lie in [0, 1]; half-precision inputs are computed in
float32; ``iou_calculator`` accepts mmdet's ``dict(type="BboxOverlaps2D", scale=..., dtype=...)``
for config compatibility but the overlaps are always computed at the inputs' precision. In DDOD
mode ``x ** (1 - alpha)`` uses a vectorised ``pow`` whose last bit can depend on the element's
position in the tensor, so DDOD qualities agree with mmdet to about 1e-7, not bit for bit.

Batched form: :meth:`ATSSAssigner.assign_batch` takes GTs padded to ``[B, M]`` with a mask and
runs without a Python loop over images or GTs (only over the pyramid levels); padded GTs never
influence the result and the output equals the per-image one. It takes no ignore regions.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import aligned_iou, box_centers, pairwise_iof
from ..structures import AssignResult, BatchAssignResult
from ._batch import check_padded_gts
from .base import BaseAssigner, empty_assign_result

__all__ = ["ATSSAssigner", "THRESHOLD_COMPARES", "nearest_per_level", "candidate_quality", "adaptive_threshold",
           "centers_inside", "resolve_by_quality"]

THRESHOLD_COMPARES = ("ge", "gt")
INF = 1e8             # mmdet's INF: distance of ignored priors, -INF sentinel in max_overlaps
INSIDE_MARGIN = 0.01  # a positive's centre must be this far inside every side of its GT


# ----------------------------------------------------------------------------- configuration
def check_iou_calculator(cfg) -> dict:
    """Accept mmdet's ``dict(type="BboxOverlaps2D", scale=1., dtype=None)`` (None means that)."""
    if cfg is None:
        return dict(type="BboxOverlaps2D")
    if not isinstance(cfg, dict) or str(cfg.get("type", "")).replace("mmdet.", "") != "BboxOverlaps2D":
        raise ValueError(f"iou_calculator must be dict(type='BboxOverlaps2D', ...), got {cfg!r}")
    unknown = set(cfg) - {"type", "scale", "dtype"}
    if unknown:
        raise ValueError(f"iou_calculator accepts the keys type, scale, dtype; got unknown {sorted(unknown)}")
    return dict(cfg)


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are upcast)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _check_levels(num_level_priors: Sequence[int], num_priors: int) -> List[int]:
    if isinstance(num_level_priors, Tensor):
        num_level_priors = num_level_priors.tolist()
    try:
        levels = [int(n) for n in num_level_priors]
    except TypeError:
        raise TypeError(f"num_level_priors must be a sequence of ints, got {num_level_priors!r}") from None
    if any(n < 0 for n in levels) or sum(levels) != num_priors:
        raise ValueError(f"num_level_priors must be non-negative and sum to the number of priors ({num_priors}), "
                         f"got {levels} (sum {sum(levels)})")
    return levels


# ----------------------------------------------------------------------------- algorithm steps
def nearest_per_level(prior_centers: Tensor, gt_centers: Tensor, num_level_priors: Sequence[int], topk: int,
                      ignored: Optional[Tensor] = None) -> Tensor:
    """Step 1. prior_centers [A, 2], gt_centers [B, M, 2] -> candidate prior indices [B, M, K].

    On each level the ``min(topk, A_l)`` nearest priors in increasing distance, levels in order.
    ``ignored`` [B, A] bool: those priors are placed at distance ``INF`` (mmdet).
    """
    B, M = gt_centers.shape[:2]
    widest = max(num_level_priors, default=0)
    # Two [B, M, widest] buffers reused by every level: fresh large allocations (page faults) cost
    # more than the arithmetic itself on CPU.
    dist_buf = prior_centers.new_empty(B, M, widest)
    dy_buf = prior_centers.new_empty(B, M, widest)
    # Contiguous coordinate vectors: strided operands make the broadcast subtraction several times slower.
    px, py = prior_centers[:, 0].contiguous(), prior_centers[:, 1].contiguous()                  # [A]
    gx, gy = gt_centers[..., 0, None].contiguous(), gt_centers[..., 1, None].contiguous()      # [B, M, 1]
    candidates = []
    start = 0
    for size in num_level_priors:
        end = start + size
        # Same arithmetic as mmdet (sqrt of dx^2 + dy^2), so distance ties break identically.
        dist = torch.sub(px[start:end], gx, out=dist_buf[..., :size])
        dy = torch.sub(py[start:end], gy, out=dy_buf[..., :size])
        dist.mul_(dist).add_(dy.mul_(dy)).sqrt_()                          # [B, M, A_l]
        if ignored is not None:
            dist.masked_fill_(ignored[:, None, start:end], INF)
        k = min(topk, size)
        candidates.append(dist.topk(k, dim=-1, largest=False).indices + start)
        start = end
    return torch.cat(candidates, dim=-1)


def candidate_quality(cand_idx: Tensor, priors: Tensor, gt_bboxes: Tensor, gt_labels: Optional[Tensor] = None,
                      pred_scores: Optional[Tensor] = None, pred_bboxes: Optional[Tensor] = None,
                      alpha: Optional[float] = None) -> Tensor:
    """Step 2. cand_idx [B, M, K], priors [A, 4], gt_bboxes [B, M, 4] -> quality [B, M, K].

    ``alpha is None``: IoU(prior, GT). DDOD (``alpha`` set; gt_labels [B, M] valid class indices,
    pred_scores [B, A, C] logits, pred_bboxes [B, A, 4]):
    ``sigmoid(logit[label]) ** (1 - alpha) * IoU(pred_box, GT) ** alpha``.
    """
    B, M, K = cand_idx.shape
    gt = gt_bboxes[:, :, None, :]                                       # [B, M, 1, 4]
    if alpha is None:
        return aligned_iou(priors[cand_idx], gt)
    flat = cand_idx.reshape(B, M * K)
    boxes = pred_bboxes.gather(1, flat[..., None].expand(-1, -1, 4)).view(B, M, K, 4)
    num_classes = pred_scores.shape[-1]
    score_idx = flat.view(B, M, K) * num_classes + gt_labels[:, :, None]   # index into [A * C]
    logits = pred_scores.reshape(B, -1).gather(1, score_idx.reshape(B, -1)).view(B, M, K)
    ious = aligned_iou(boxes, gt)
    return logits.sigmoid() ** (1 - alpha) * ious ** alpha


def adaptive_threshold(quality: Tensor) -> Tensor:
    """Step 3. quality [B, M, K] -> mean + unbiased std over the K candidates [B, M].

    Reduced over a [B, K, M] layout, the one mmdet reduces ([K, M]), so the summation order and
    hence the threshold's last bit are the same.
    """
    by_candidate = quality.transpose(1, 2).contiguous()   # [B, K, M]
    return by_candidate.mean(1) + by_candidate.std(1)


def centers_inside(cand_idx: Tensor, prior_centers: Tensor, gt_bboxes: Tensor,
                   margin: float = INSIDE_MARGIN) -> Tensor:
    """Step 4b. cand_idx [B, M, K], prior_centers [A, 2], gt_bboxes [B, M, 4] -> [B, M, K] bool.

    True where the candidate's centre is more than ``margin`` inside all four sides of the GT.
    """
    cx = prior_centers[:, 0][cand_idx]
    cy = prior_centers[:, 1][cand_idx]
    x1, y1, x2, y2 = (gt_bboxes[..., i, None] for i in range(4))
    sides = torch.stack((cx - x1, cy - y1, x2 - cx, y2 - cy), dim=-1)
    return sides.amin(dim=-1) > margin


def resolve_by_quality(cand_idx: Tensor, quality: Tensor, is_pos: Tensor, num_priors: int) -> Tuple[Tensor, Tensor]:
    """Step 5. cand_idx, quality, is_pos [B, M, K] -> (gt_index [B, A] 0-based or -1, best [B, A]).

    ``best`` is the highest positive quality per prior (``-INF`` where none). A prior appears at most
    once in a GT's candidate list, so scattering by prior index never merges a GT with itself.
    """
    B, M, K = cand_idx.shape
    flat = cand_idx.reshape(B, M * K)
    value = torch.where(is_pos, quality, quality.new_tensor(-INF)).reshape(B, M * K)
    best = quality.new_full((B, num_priors), -INF).scatter_reduce(1, flat, value, "amax")
    is_best = is_pos.reshape(B, M * K) & (value == best.gather(1, flat))
    gt_id = torch.arange(M, device=cand_idx.device).view(1, M, 1).expand(B, M, K).reshape(B, M * K)
    winner = torch.full((B, num_priors), M, dtype=torch.long, device=cand_idx.device)
    winner = winner.scatter_reduce(1, flat, torch.where(is_best, gt_id, M), "amin")
    return torch.where(winner < M, winner, -1), best


# ----------------------------------------------------------------------------- assigner
class ATSSAssigner(BaseAssigner):
    """Adaptive Training Sample Selection; see the module docstring for the steps and quirks.

    Args:
        topk: candidates per pyramid level and GT (9 in the paper).
        alpha: None for ATSS; a value in [0, 1] enables DDOD's dynamic cost, which reads
            ``pred_instances.scores`` (logits [A, C]) and ``pred_instances.bboxes`` ([A, 4]).
        iou_calculator: mmdet's ``dict(type="BboxOverlaps2D")``, accepted for config compatibility.
        ignore_iof_thr: IoF above which a prior inside an ignore box is ignored; <= 0 disables.
        threshold_compare: ``"ge"`` (mmdet, ``q >= mean + std``) or ``"gt"`` (PaddleDetection).
    """

    def __init__(self, topk: int = 9, alpha: Optional[float] = None, iou_calculator: Optional[dict] = None,
                 ignore_iof_thr: float = -1, threshold_compare: str = "ge") -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be None or in [0, 1], got {alpha!r}")
        if threshold_compare not in THRESHOLD_COMPARES:
            raise ValueError(f"threshold_compare must be one of {THRESHOLD_COMPARES}, got {threshold_compare!r}")
        self.topk = topk
        self.alpha = None if alpha is None else float(alpha)
        self.iou_calculator = check_iou_calculator(iou_calculator)
        self.ignore_iof_thr = float(ignore_iof_thr)
        self.threshold_compare = threshold_compare

    # ---------------------------------------------------------------- per image
    @torch.no_grad()
    def assign(self, pred_instances, num_level_priors: Sequence[int], gt_instances,
               gt_instances_ignore=None) -> AssignResult:
        """Assign the A priors of one image (mmdet's signature: ``num_level_priors`` second).

        pred_instances.priors [A, 4] xyxy (extra columns ignored); DDOD also ``.scores`` [A, C]
        logits and ``.bboxes`` [A, 4]. gt_instances.bboxes [M, 4], .labels [M].
        gt_instances_ignore.bboxes [G, 4] (optional). Returns gt_inds, labels, max_overlaps [A].
        """
        priors = V.get_field(pred_instances, "priors", "pred_instances")
        V.check_tensor("pred_instances.priors", priors, ("A", None), floating=True)
        if priors.shape[1] < 4:
            raise ValueError(f"pred_instances.priors must have shape [A, 4] xyxy, got {tuple(priors.shape)}")
        priors = priors[:, :4]
        gt_bboxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        V.check_tensor("gt_instances.bboxes", gt_bboxes, ("M", 4), floating=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_tensor("gt_instances.labels", gt_labels, (gt_bboxes.shape[0],), floating=False)
        scores = bboxes = None
        if self.alpha is not None:
            scores = V.get_field(pred_instances, "scores", "pred_instances")
            bboxes = V.get_field(pred_instances, "bboxes", "pred_instances")
            V.check_tensor("pred_instances.scores", scores, (priors.shape[0], "C"), floating=True)
            V.check_tensor("pred_instances.bboxes", bboxes, (priors.shape[0], 4), floating=True)
        levels = _check_levels(num_level_priors, priors.shape[0])
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, scores=scores)
        V.check_boxes("pred_instances.priors", priors)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        V.check_finite("pred_instances.scores", scores)
        V.check_finite("pred_instances.bboxes", bboxes)
        if scores is not None:
            V.check_labels("gt_instances.labels", gt_labels, scores.shape[1])

        dtype = compute_dtype(priors, gt_bboxes, scores, bboxes)
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            return empty_assign_result(num_gts, num_priors, priors.device, overlap_fill=0.0, overlap_dtype=dtype)
        priors, gt_bboxes = priors.to(dtype), gt_bboxes.to(dtype)
        ignored = self._ignored_priors(priors, gt_instances_ignore)
        gt_inds, labels, max_overlaps = self._assign_padded(
            priors, levels, gt_labels.long()[None], gt_bboxes[None],
            torch.ones(1, num_gts, dtype=torch.bool, device=priors.device), ignored,
            None if scores is None else scores.to(dtype)[None], None if bboxes is None else bboxes.to(dtype)[None])
        return AssignResult(num_gts, gt_inds[0], max_overlaps[0], labels[0])

    def _ignored_priors(self, priors: Tensor, gt_instances_ignore) -> Optional[Tensor]:
        """[1, A] bool: priors whose largest IoF with an ignore box exceeds ``ignore_iof_thr``."""
        if self.ignore_iof_thr <= 0 or gt_instances_ignore is None:
            return None
        ignore = V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore")
        V.check_tensor("gt_instances_ignore.bboxes", ignore, ("G", 4), floating=True)
        V.check_boxes("gt_instances_ignore.bboxes", ignore)
        if ignore.shape[0] == 0:
            return None
        iof = pairwise_iof(priors, ignore.to(priors.dtype))   # [A, G]
        return (iof.amax(dim=1) > self.ignore_iof_thr)[None]

    # ---------------------------------------------------------------- batched
    @torch.no_grad()
    def assign_batch(self, priors: Tensor, num_level_priors: Sequence[int], gt_labels: Tensor, gt_bboxes: Tensor,
                     gt_mask: Optional[Tensor] = None, pred_scores: Optional[Tensor] = None,
                     pred_bboxes: Optional[Tensor] = None) -> BatchAssignResult:
        """Assign a padded batch in one vectorised pass.

        priors [A, 4] xyxy shared by the batch; num_level_priors per level (sum A);
        gt_labels [B, M], gt_bboxes [B, M, 4] xyxy, gt_mask [B, M] (None = all valid);
        DDOD: pred_scores [B, A, C] logits and pred_bboxes [B, A, 4].
        Returns BatchAssignResult(num_gts [B], gt_inds [B, A] (1-based into M), labels, max_overlaps).
        Images without valid GT are all negative with max_overlaps 0, as the per-image call.
        """
        V.check_tensor("priors", priors, ("A", 4), floating=True)
        num_priors = priors.shape[0]
        levels = _check_levels(num_level_priors, num_priors)
        num_classes = None
        if self.alpha is not None:
            V.check_tensor("pred_scores", pred_scores, ("B", num_priors, "C"), floating=True)
            V.check_tensor("pred_bboxes", pred_bboxes, ("B", num_priors, 4), floating=True)
            num_classes = pred_scores.shape[-1]
        gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, num_classes)
        B, M = gt_mask.shape
        if self.alpha is not None and (pred_scores.shape[0] != B or pred_bboxes.shape[0] != B):
            raise ValueError(f"pred_scores and pred_bboxes must have batch size {B} (from gt_bboxes), got "
                             f"{pred_scores.shape[0]} and {pred_bboxes.shape[0]}")
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, pred_scores=pred_scores, pred_bboxes=pred_bboxes)
        V.check_boxes("priors", priors)
        V.check_finite("pred_scores", pred_scores)
        V.check_finite("pred_bboxes", pred_bboxes)

        dtype = compute_dtype(priors, gt_bboxes, pred_scores, pred_bboxes)
        num_gts = gt_mask.sum(1)
        if M == 0 or num_priors == 0:
            gt_inds = torch.zeros(B, num_priors, dtype=torch.long, device=priors.device)
            return BatchAssignResult(num_gts, gt_inds, torch.zeros(B, num_priors, dtype=dtype, device=priors.device),
                                     torch.full_like(gt_inds, -1))
        if self.alpha is not None:
            pred_scores, pred_bboxes = pred_scores.to(dtype), pred_bboxes.to(dtype)
            # Padding rows may carry any label; keep their score lookups in range.
            gt_labels = torch.where(gt_mask, gt_labels, 0)
        gt_inds, labels, max_overlaps = self._assign_padded(priors.to(dtype), levels, gt_labels, gt_bboxes.to(dtype),
                                                            gt_mask, None, pred_scores, pred_bboxes)
        # mmdet reports max_overlaps 0 (not -INF) for an image without GT.
        max_overlaps = torch.where(num_gts[:, None] > 0, max_overlaps, 0.0)
        return BatchAssignResult(num_gts, gt_inds, max_overlaps, labels)

    def _assign_padded(self, priors: Tensor, levels: List[int], gt_labels: Tensor, gt_bboxes: Tensor,
                       gt_mask: Tensor, ignored: Optional[Tensor], pred_scores: Optional[Tensor],
                       pred_bboxes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Steps 1-5 on padded GTs (M >= 1, A >= 1) -> gt_inds, labels, max_overlaps, each [B, A]."""
        B, M = gt_mask.shape
        prior_centers = box_centers(priors)                                       # [A, 2]
        cand_idx = nearest_per_level(prior_centers, box_centers(gt_bboxes), levels, self.topk,
                                     None if ignored is None else ignored.expand(B, -1))   # [B, M, K]
        quality = candidate_quality(cand_idx, priors, gt_bboxes, gt_labels, pred_scores, pred_bboxes,
                                    self.alpha)                                   # [B, M, K]
        threshold = adaptive_threshold(quality)[..., None]                        # [B, M, 1]
        passes = quality >= threshold if self.threshold_compare == "ge" else quality > threshold
        is_pos = passes & centers_inside(cand_idx, prior_centers, gt_bboxes) & gt_mask[..., None]
        gt_index, max_overlaps = resolve_by_quality(cand_idx, quality, is_pos, priors.shape[0])   # [B, A]

        positive = gt_index >= 0
        if ignored is None:
            background = torch.zeros_like(gt_index)
        else:
            background = torch.where(ignored, -1, 0).expand(B, -1)
        gt_inds = torch.where(positive, gt_index + 1, background)
        labels = torch.where(positive, gt_labels.gather(1, gt_index.clamp(min=0)), -1)
        return gt_inds, labels, max_overlaps
