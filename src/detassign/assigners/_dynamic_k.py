"""Dynamic-k matching shared by SimOTA (YOLOX) and DynamicSoftLabel (RTMDet).

Shape symbols: B images, A priors, A' candidate priors per image (padded), M GTs (padded), C classes.

Given a cost and an IoU between every GT and every candidate prior of an image:

1. ``k_m = max(1, floor(sum of the topk largest IoUs of GT m over the candidates))``.
2. GT m selects its ``k_m`` lowest-cost candidates.
3. A prior selected by several GTs goes to the GT of minimum cost over *all* GTs (first GT on ties).

Two implementations live here:

* :func:`dynamic_k_matching` works on a padded batch ``[B, M, A']`` without a Python loop. In step 2
  ties at the k-th cost are broken deterministically (lowest prior index wins).
* :func:`mmdet_dynamic_k_matching` mirrors mmdet 3.3.0 op for op on one image (a ``torch.topk`` per
  GT), so that even ties resolve as mmdet resolves them; per-image ``exact=True`` assigners use it.

Both also run over blocks of GTs (:func:`blocked_dynamic_k_matching`, :func:`mmdet_dynamic_k_blocks`):
steps 1-2 read one GT's row only, and step 3 needs per prior only the number of GTs that chose it,
the first of them and the cheapest GT over all, which :func:`fold_matching` carries from block to
block; so dense scenes never hold an [M, A'] matrix and get the one-block result.
"""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..structures import AssignResult, BatchAssignResult
from ._batch import check_padded_gts
from ._blocks import row_blocks
from .base import IoUCalculator


# ----------------------------------------------------------------------------- configuration
def check_positive_int(name: str, value) -> int:
    return V.check_number(name, value, low=1, integer=True)


def check_block_pairs(value) -> Optional[int]:
    if value is None:
        return None
    return check_positive_int("block_pairs", value)


def check_non_negative(name: str, value) -> float:
    return float(V.check_number(name, value, low=0))


# ----------------------------------------------------------------------------- input reading
def read_image_inputs(pred_instances, gt_instances, probabilities: bool):
    """Validate one image's inputs -> (priors [A, 4], pred_bboxes [A, 4], scores [A, C], gt_bboxes [M, 4],
    gt_labels [M] long).

    ``probabilities=True`` requires scores in [0, 1] (SimOTA); otherwise they are logits (DSL).
    """
    def read(owner, instances, field, shape):
        return V.tensor_input(f"{owner}.{field}", V.get_field(instances, field, owner), shape, floating=True,
                              empty_rows=True)

    priors = read("pred_instances", pred_instances, "priors", ("A", 4))
    bboxes = read("pred_instances", pred_instances, "bboxes", ("A", 4))
    scores = read("pred_instances", pred_instances, "scores", ("A", "C"))
    V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.bboxes", bboxes, 0),
                        ("pred_instances.scores", scores, 0)])
    gt_bboxes = read("gt_instances", gt_instances, "bboxes", ("M", 4))   # mmdet HorizontalBoxes unwrapped
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
    _check_values("pred_instances.", priors, bboxes, scores, probabilities)
    V.check_boxes("gt_instances.bboxes", gt_bboxes)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), num_classes=V.num_classes_of(scores),
                               rows_like=("gt_instances.bboxes", gt_bboxes))
    return priors, bboxes, scores, gt_bboxes, gt_labels


def read_batch_inputs(pred_scores, pred_bboxes, priors: Tensor, gt_labels, gt_bboxes, gt_mask, probabilities: bool):
    """Validate a padded batch -> (scores [B, A, C], bboxes [B, A, 4], priors [A, 4], labels [B, M] long
    (0 in padding rows), gt_bboxes [B, M, 4], gt_mask [B, M] bool). ``priors``: the point priors
    ``(cx, cy, stride_w, stride_h)`` (:meth:`detassign.Priors.point_priors`); ``probabilities``: the
    scores must lie in [0, 1], else they are logits (finite)."""
    pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
    pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "A", 4), floating=True)
    priors = V.tensor_input("priors", priors, ("A", 4), floating=True)
    gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 4), floating=True)
    V.check_agree("A", [("priors", priors, 0), ("pred_scores", pred_scores, 1), ("pred_bboxes", pred_bboxes, 1)])
    V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0), ("gt_bboxes", gt_bboxes, 0)])
    V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, priors=priors, gt_bboxes=gt_bboxes)
    _check_values("", priors, pred_bboxes, pred_scores, probabilities)
    labels, boxes, mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, V.num_classes_of(pred_scores, 1))
    labels = torch.where(mask, labels, torch.zeros_like(labels))  # padding labels may be out of range
    return pred_scores, pred_bboxes, priors, labels, boxes, mask


def _check_values(prefix: str, priors: Tensor, bboxes: Tensor, scores: Tensor, probabilities: bool) -> None:
    V.check_finite(prefix + "priors", priors)
    V.check_finite(prefix + ("bboxes" if prefix else "pred_bboxes"), bboxes)
    name = prefix + ("scores" if prefix else "pred_scores")
    if probabilities:
        V.check_range(name, scores, 0.0, 1.0)
    else:
        V.check_finite(name, scores)


# ----------------------------------------------------------------------------- candidates
def compact_candidates(valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Move each image's candidate priors to the front, keeping prior order.

    valid [B, A] bool -> (index [B, A'] long into the A priors, cand_mask [B, A'] bool) with
    ``A' = max_b valid[b].sum()``. Padding slots point at distinct non-candidate priors, so scattering
    results back through ``index`` never overwrites a candidate. Sizing A' reads one number on the host.

    Per-prior sums over classes are later taken along the contiguous last axis, whose result for a
    row does not depend on how many rows there are; so a batched call and a one-image call give
    bit-identical costs.
    """
    counts = valid.sum(dim=1)                                              # [B]
    width = int(counts.max()) if valid.numel() else 0
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)    # candidates first, in prior order
    index = order[:, :width]                                               # [B, A']
    cand_mask = torch.arange(width, device=valid.device) < counts[:, None]  # [B, A']
    return index, cand_mask


def gather_priors(x: Tensor, index: Tensor) -> Tensor:
    """x [B, A, D] (or [A, D], shared) and index [B, A'] -> [B, A', D]."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(index.shape[0], -1, -1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gt_class_rows(per_class: Tensor, gt_labels: Tensor) -> Tensor:
    """per_class [B, A', C], gt_labels [B, M] -> [B, M, A'] contiguous: each GT's class column."""
    B, width, _ = per_class.shape
    picked = per_class.gather(2, gt_labels.unsqueeze(1).expand(B, width, -1))   # [B, A', M]
    return picked.transpose(1, 2).contiguous()


def bce_negative_(probs: Tensor) -> Tensor:
    """In place: probabilities -> BCE against target 0, ``-max(log(1 - p), -100)`` (BCE's clamp)."""
    return probs.neg_().log1p_().clamp_(min=-100.0).neg_()


def batched_ious(iou_calculator: IoUCalculator, gt_bboxes: Tensor, boxes: Tensor) -> Tensor:
    """gt_bboxes [B, M, 4], boxes [B, A', 4] -> [B, M, A'] with the configured IoU calculator.

    BboxOverlaps2D is computed GT-major directly (the same bits as mmdet's ``bbox_overlaps(boxes, gt_bboxes)``
    transposed: the same correctly rounded operations, the union's addition commuted); a user callable
    is called in mmdet's argument order and transposed.
    """
    if iou_calculator.fn is None:
        return iou_calculator.pairwise(gt_bboxes, boxes)
    return iou_calculator.pairwise(boxes, gt_bboxes).transpose(1, 2)


# ----------------------------------------------------------------------------- batched matching
def dynamic_ks(ious: Tensor, topk: int) -> Tensor:
    """ious [B, M, A'] (0 at padding) -> k [B, M] long = max(1, floor(sum of the topk largest IoUs)).

    Fewer than ``topk`` candidates: the padding zeros add nothing, as mmdet's ``min(topk, A')`` does.
    """
    k = min(topk, ious.shape[-1])
    top = ious.topk(k, dim=-1).values                                     # [B, M, k]
    return top.sum(dim=-1).int().clamp(min=1).long()


def lowest_k_mask(cost: Tensor, ks: Tensor, kmax: int) -> Tensor:
    """cost [B, M, A'], ks [B, M] (1 <= ks <= kmax) -> [B, M, A'] bool: the ks lowest costs of each row.

    Ties at the k-th value go to the lowest candidate index, so the result does not depend on how
    ``torch.topk`` orders equal values (which differs between devices and tensor shapes).
    """
    kmax = min(kmax, cost.shape[-1])
    smallest = cost.topk(kmax, dim=-1, largest=False).values              # [B, M, kmax] ascending
    kth = smallest.gather(-1, (ks - 1).clamp(max=kmax - 1).unsqueeze(-1))  # [B, M, 1]
    below = cost < kth
    equal = cost == kth
    room = ks.unsqueeze(-1) - below.sum(dim=-1, keepdim=True)              # tied slots left
    return below.logical_or_(equal.logical_and_(equal.cumsum(dim=-1, dtype=torch.int32) <= room))


class MatchFold(NamedTuple):
    """Per-candidate reductions over the GT axis of the blocks of GTs folded so far.

    Each field has the shape of a cost block without its GT axis ([B, A'] or [A']).
    """
    count: Tensor       # number of GTs that selected the candidate
    first_gt: Tensor    # first selecting GT (0 while none has)
    first_iou: Tensor   # its IoU
    min_cost: Tensor    # minimum cost over every GT (first GT on ties; NaN wins, as in torch.min)
    min_gt: Tensor
    min_iou: Tensor


def fold_matching(fold: Optional[MatchFold], start: int, matching: Tensor, cost: Tensor,
                  ious: Tensor) -> MatchFold:
    """Fold one block of GTs ``start .. start + g`` into ``fold`` (None: the first block).

    matching (bool / uint8), cost, ious: [B, g, A'] or [A', g], GT axis 1. Only reductions over GTs
    leave the block, so no [M, A'] tensor is ever needed; the result equals that of one block.
    """
    count = matching.sum(dim=1)
    first = matching.to(torch.uint8).argmax(dim=1)                          # first selecting GT of the block
    first_iou = ious.gather(1, first.unsqueeze(1)).squeeze(1)
    min_cost, min_gt = cost.min(dim=1)                                     # first minimum of the block
    min_iou = ious.gather(1, min_gt.unsqueeze(1)).squeeze(1)
    first, min_gt = first + start, min_gt + start
    if fold is None:
        return MatchFold(count, first, first_iou, min_cost, min_gt, min_iou)
    fresh = (fold.count == 0) & (count > 0)
    # an earlier block keeps ties, as the first index of a single reduction would
    lower = (min_cost < fold.min_cost) | (min_cost.isnan() & ~fold.min_cost.isnan())
    return MatchFold(fold.count + count,
                     torch.where(fresh, first, fold.first_gt), torch.where(fresh, first_iou, fold.first_iou),
                     torch.where(lower, min_cost, fold.min_cost), torch.where(lower, min_gt, fold.min_gt),
                     torch.where(lower, min_iou, fold.min_iou))


def resolve_multiple(fold: MatchFold) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (fg, gt_index (0-based, meaningful where fg), matched_ious), each [B, A'] or [A'].

    A prior chosen by one GT keeps it; one chosen by several goes to the minimum-cost GT over all GTs
    (the first GT on ties, as ``torch.min`` in mmdet).
    """
    multi = fold.count > 1
    return (fold.count > 0, torch.where(multi, fold.min_gt, fold.first_gt),
            torch.where(multi, fold.min_iou, fold.first_iou))


def match_block(cost: Tensor, ious: Tensor, gt_mask: Tensor, cand_mask: Tensor, topk: int) -> Tensor:
    """Steps 1-2 on a block of GTs: cost, ious [B, g, A'], gt_mask [B, g], cand_mask [B, A'] ->
    matching [B, g, A'] bool. Overwrites ``cost`` and ``ious`` in place (padding: +inf cost, 0 IoU)."""
    padding = ~(gt_mask.unsqueeze(-1) & cand_mask.unsqueeze(1))            # [B, g, A']
    ious.masked_fill_(padding, 0.0)
    # Real +inf costs become the largest finite value so that padding (+inf) never ties with them.
    cost.clamp_(max=torch.finfo(cost.dtype).max).masked_fill_(padding, float("inf"))
    ks = dynamic_ks(ious, topk)                                            # [B, g]
    return lowest_k_mask(cost, ks, topk).logical_and_(~padding)


def dynamic_k_matching(cost: Tensor, ious: Tensor, gt_mask: Tensor, cand_mask: Tensor,
                       topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Vectorised dynamic-k matching over a padded batch, all GTs in one block.

    cost [B, M, A'] (any finite or +inf value), ious [B, M, A'], gt_mask [B, M], cand_mask [B, A'] ->
    (fg [B, A'] bool, gt_index [B, A'] long (0-based, meaningful where fg), matched_ious [B, A']).
    Overwrites ``cost`` and ``ious`` in place (the callers' own temporaries).
    """
    return blocked_dynamic_k_matching(lambda blk: (cost, ious), gt_mask, cand_mask, topk, None)


def gt_blocks(gt_mask: Tensor, width: int, block_pairs: Optional[int]) -> List[slice]:
    """Blocks of the M (padded) GTs with at most about ``block_pairs`` (GT, prior) pairs over the b images
    of gt_mask [b, M] and ``width`` priors each (see :func:`._blocks.row_blocks`; None: one block)."""
    b, M = gt_mask.shape
    if block_pairs is None:
        return [slice(0, M)]
    return row_blocks(M, b * width, block_pairs)


def candidates_any(test_fn, gt_mask: Tensor, num_priors: int, block_pairs: Optional[int]) -> Tensor:
    """[b, A] bool: priors for which ``test_fn(gt_slice) -> [b, g, A] bool`` holds for some valid GT,
    evaluated over blocks of GTs."""
    valid = None
    for blk in gt_blocks(gt_mask, num_priors, block_pairs):
        hit = (test_fn(blk) & gt_mask[:, blk].unsqueeze(-1)).any(dim=1)     # [b, A]
        valid = hit if valid is None else valid.logical_or_(hit)
    return valid


def blocked_dynamic_k_matching(pair_fn, gt_mask: Tensor, cand_mask: Tensor, topk: int,
                               block_pairs: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`dynamic_k_matching` over blocks of GTs: ``pair_fn(gt_slice) -> (cost, ious)``, each
    [b, g, A'] and the caller's to overwrite. Same result as one block (every step is per GT row or a
    reduction over GTs that :func:`fold_matching` carries across blocks); memory [b, g, A'] per block.
    """
    fold = None
    for blk in gt_blocks(gt_mask, cand_mask.shape[1], block_pairs):
        cost, ious = pair_fn(blk)
        matching = match_block(cost, ious, gt_mask[:, blk], cand_mask, topk)
        fold = fold_matching(fold, blk.start, matching, cost, ious)
        del cost, ious, matching
    fg, gt_index, matched_ious = resolve_multiple(fold)
    return fg & cand_mask, gt_index, matched_ious


def scatter_to_priors(fg: Tensor, gt_index: Tensor, matched_ious: Tensor, index: Tensor, gt_labels: Tensor,
                      num_priors: int, has_candidates: Tensor, sentinel: float):
    """Candidate-slot results -> per-prior (gt_inds [B, A], labels [B, A], max_overlaps [B, A] float32).

    Images with candidates give non-positives ``max_overlaps = sentinel`` (mmdet's -INF); images with
    no GT or no candidate give 0, as mmdet's early return does.
    """
    B = fg.shape[0]
    device = fg.device
    gt_inds = torch.zeros(B, num_priors, dtype=torch.long, device=device)
    gt_inds.scatter_(1, index, torch.where(fg, gt_index + 1, torch.zeros_like(gt_index)))
    labels = torch.full((B, num_priors), -1, dtype=torch.long, device=device)
    cand_labels = gt_labels.gather(1, gt_index) if gt_labels.shape[1] else torch.zeros_like(gt_index)
    labels.scatter_(1, index, torch.where(fg, cand_labels, torch.full_like(gt_index, -1)))
    fill = torch.where(has_candidates, torch.tensor(sentinel, device=device), torch.tensor(0.0, device=device))
    max_overlaps = fill.unsqueeze(1).expand(B, num_priors).clone()        # [B, A] float32
    max_overlaps.scatter_(1, index, torch.where(fg, matched_ious.float(), fill.unsqueeze(1).expand_as(fg)))
    return gt_inds, labels, max_overlaps


def image_blocks(batch: int, pairs_per_image: int, block_pairs: Optional[int]) -> List[slice]:
    """Split B images into consecutive blocks of at most ``block_pairs`` (GT, prior) pairs each
    (at least one image per block; ``None``: one block). Bounds the [B, M, A'] temporaries."""
    if block_pairs is None or pairs_per_image == 0 or batch == 0:
        return [slice(0, batch)]
    per_block = max(1, block_pairs // pairs_per_image)
    return [slice(start, min(start + per_block, batch)) for start in range(0, batch, per_block)]


def run_blocks(block_fn, scores: Tensor, bboxes: Tensor, priors: Tensor, labels: Tensor, gt_bboxes: Tensor,
               gt_mask: Tensor, block_pairs: Optional[int]) -> BatchAssignResult:
    """Apply ``block_fn(scores, bboxes, priors, labels, gt_bboxes, gt_mask) -> (gt_inds, labels,
    max_overlaps)`` (each [b, A]) to image blocks and concatenate into a BatchAssignResult."""
    B, M = gt_mask.shape
    parts = [block_fn(scores[blk], bboxes[blk], priors, labels[blk], gt_bboxes[blk], gt_mask[blk])
             for blk in image_blocks(B, M * priors.shape[0], block_pairs)]
    gt_inds, out_labels, max_overlaps = (torch.cat(p, dim=0) if len(parts) > 1 else p[0] for p in zip(*parts))
    return BatchAssignResult(gt_mask.sum(dim=1), gt_inds, max_overlaps, out_labels)


def empty_block(gt_mask: Tensor, num_priors: int) -> Tuple[Tensor, Tensor, Tensor]:
    """No candidate in any image of the block (or no GT): every prior negative, max_overlaps 0."""
    B, device = gt_mask.shape[0], gt_mask.device
    return (torch.zeros(B, num_priors, dtype=torch.long, device=device),
            torch.full((B, num_priors), -1, dtype=torch.long, device=device),
            torch.zeros(B, num_priors, dtype=torch.float32, device=device))


# ----------------------------------------------------------------------------- mmdet mirror
def mmdet_dynamic_k_matching(cost: Tensor, ious: Tensor, topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """One image, op for op as mmdet 3.3.0 (``torch.topk`` per GT, so ties fall as they fall there).

    cost [A', M], ious [A', M] -> (fg [A'] bool, gt_index [P] long for the P foreground candidates in
    order, matched_ious [P]).
    """
    return mmdet_dynamic_k_blocks([(0, cost, ious)], topk)


def mmdet_dynamic_k_blocks(blocks: Iterable[Tuple[int, Tensor, Tensor]], topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`mmdet_dynamic_k_matching` over blocks of GTs: ``blocks`` yields (first GT index, cost
    [A', g], ious [A', g]) in GT order. Each GT's k and its ``torch.topk`` read only its own column,
    and the cheapest GT of a prior chosen twice is a minimum over GTs carried by :func:`fold_matching`,
    so the result is that of the whole [A', M] matrices (mmdet's ``sum(1)`` of the single matched IoU
    is that IoU) while only one block lives at a time.
    """
    fold = None
    for start, cost, ious in blocks:
        num_cand = cost.shape[0]
        top = torch.topk(ious, min(topk, num_cand), dim=0).values         # [k, g]
        ks = torch.clamp(top.sum(0).int(), min=1).tolist()
        matching = torch.zeros_like(cost, dtype=torch.uint8)
        for m, k in enumerate(ks):                                         # per-image reference path only
            chosen = torch.topk(cost[:, m], k=k, largest=False).indices
            matching[:, m][chosen] = 1
        fold = fold_matching(fold, start, matching, cost, ious)
        del cost, ious, matching
    fg, gt_index, matched_ious = resolve_multiple(fold)
    return fg, gt_index[fg], matched_ious[fg]


def mmdet_result(num_gt: int, num_priors: int, valid: Tensor, fg: Tensor, gt_index: Tensor,
                 matched_ious: Tensor, gt_labels: Tensor, sentinel: float):
    """mmdet's conversion of a per-image matching -> AssignResult; non-positives get ``sentinel``.

    valid [A] candidate mask, fg [A'] over the candidates, gt_index / matched_ious [P] over fg.
    """
    positive = valid.clone()
    positive[valid.clone()] = fg
    gt_inds = torch.zeros(num_priors, dtype=torch.long, device=valid.device)
    gt_inds[positive] = gt_index + 1
    labels = torch.full((num_priors,), -1, dtype=torch.long, device=valid.device)
    labels[positive] = gt_labels[gt_index].long()
    max_overlaps = torch.full((num_priors,), sentinel, dtype=torch.float32, device=valid.device)
    max_overlaps[positive] = matched_ious.float()
    return AssignResult(num_gt, gt_inds, max_overlaps, labels)


def result_dtype(x: Optional[Tensor]) -> torch.dtype:
    return x.dtype if x is not None and x.is_floating_point() else torch.float32
