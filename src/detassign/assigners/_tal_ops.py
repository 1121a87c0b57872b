"""The task-aligned assigner's own arithmetic, on pair lists (see :mod:`._pairs`) or dense blocks.

Shape symbols: B batch, A anchors, M padded GTs per image, C classes, G valid GT rows (flat
``b * M + m``), P candidate (GT, anchor) pairs, L pyramid levels.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..boxes import MMDET_EPS, aligned_ciou, aligned_iou, overlaps_of_coordinates
from . import _pairs
from ._pairs import GridLevel


class PairTable(NamedTuple):
    """Candidate pairs of a batch: ``prior`` [P] flat anchor ``b * A + a``, ``gt`` [P] the GT's index m in
    its image's padded list, ``overlap`` / ``metric`` [P] of the pair, ``selected`` [P] survived the per-GT
    top-k."""

    prior: Tensor
    gt: Tensor
    overlap: Tensor
    metric: Tensor
    selected: Tensor

    @classmethod
    def cat(cls, tables: List["PairTable"], dtype: torch.dtype, device: torch.device) -> "PairTable":
        if not tables:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            flt = torch.zeros(0, dtype=dtype, device=device)
            return cls(empty, empty, flt, flt, empty.bool())
        return cls(*(torch.cat(cols) for cols in zip(*tables)))


class AnchorAssignment(NamedTuple):
    fg: Tensor        # [B * A] bool
    gt: Tensor        # [B * A] long, 0-based padded GT index (0 where not fg)
    metric: Tensor    # [B * A] metric of the assigned pair (0 where not fg or no candidate pair)
    overlap: Tensor   # [B * A] overlap of the assigned pair


# ----------------------------------------------------------------------------- candidate tests
def widened_candidate_boxes(gt_bboxes: Tensor, min_size: Optional[float]) -> Tensor:
    """Boxes used for the centre-in-GT test. [..., 4] xyxy -> [..., 4] xyxy.

    ``min_size`` set: sides shorter than ``min_size`` grow to it about the centre, through a
    centre/size round trip (ultralytics 8.4 widens GTs thinner than ``stride[1]`` so tiny objects get
    candidates). The round trip is applied to every box, because ultralytics applies it and it can
    move an unwidened corner by one ulp, which decides anchors lying exactly on a side.
    ``min_size`` None: the boxes unchanged.
    """
    if min_size is None:
        return gt_bboxes
    x1, y1, x2, y2 = gt_bboxes.unbind(-1)
    centre = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2), dim=-1)
    size = torch.stack((x2 - x1, y2 - y1), dim=-1)
    size = torch.where(size < min_size, torch.full_like(size, min_size), size)
    half = size / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def may_intersect(gt_columns: Tensor, rows: Tensor, pred_columns: Tensor, priors: Tensor) -> Tensor:
    """A superset of the pairs whose boxes overlap with positive area: ``px2 > gx1``, ``px1 < gx2``,
    ``py2 > gy1``, ``py1 < gy2``. Every intersecting pair passes; a pair with an inverted box may pass
    too, and its overlap is 0. gt_columns [4, G], pred_columns [4, N] xyxy coordinate-major (contiguous
    rows: the gathers read one coordinate table each), rows [P] into G, priors [P] into N -> [P] bool.
    One coordinate at a time into two reused buffers: this runs on the widest pair list, where fresh
    temporaries cost more (new pages) than the comparisons."""
    num = rows.numel()
    pred_c, gt_c = pred_columns.new_empty(num), gt_columns.new_empty(num)
    keep = torch.empty(num, dtype=torch.bool, device=rows.device)
    test = torch.empty_like(keep)
    for i, (p, g, compare) in enumerate(((2, 0, torch.gt), (0, 2, torch.lt), (3, 1, torch.gt), (1, 3, torch.lt))):
        torch.index_select(pred_columns[p], 0, priors, out=pred_c)
        torch.index_select(gt_columns[g], 0, rows, out=gt_c)
        if i == 0:
            compare(pred_c, gt_c, out=keep)
        else:
            keep &= compare(pred_c, gt_c, out=test)
    return keep


def box_areas(coordinates: Sequence[Tensor]) -> Tensor:
    """``(x2 - x1) * (y2 - y1)`` (mmdet's area arithmetic) of boxes given as their coordinates x1, y1, x2, y2,
    each [N] (``boxes.unbind(1)`` of [N, 4] boxes, or a coordinate-major [4, N] table) -> [N]."""
    x1, y1, x2, y2 = coordinates
    return (x2 - x1) * (y2 - y1)


def coordinate_major(boxes: Tensor) -> Tensor:
    """[N, 4] -> [4, N] contiguous: one row per coordinate, so per-coordinate gathers and reductions read
    contiguous memory. Built as a stack of the four columns (a transposed copy ``boxes.t().contiguous()``
    reads with a stride and was measured 6x slower on CPU)."""
    return torch.stack(boxes.unbind(1))


def prediction_reach(anchor_points: Tensor, pred_columns: Tensor, levels: List[GridLevel]) -> Tensor:
    """How far the predicted boxes of each image and level reach from their anchor points.

    anchor_points [A, 2], pred_columns [4, B, A] the predicted boxes xyxy coordinate-major
    (:func:`coordinate_major`) -> [B, L, 4] (left, top, right, bottom) >= 0: every predicted box of image b
    at level l lies in ``[x - left, y - top, x + right, y + bottom]`` around its anchor point (x, y).
    """
    B = pred_columns.shape[1]
    reach = pred_columns.new_zeros(B, len(levels), 4)
    largest = max((lv.width * lv.height for lv in levels), default=0)
    offsets = pred_columns.new_empty(B * largest * 2)                # one buffer for every level's differences
    points = coordinate_major(anchor_points)[:, None, :]                                   # [2, 1, A]
    for i, lv in enumerate(levels):
        n = lv.width * lv.height
        if n == 0:
            continue
        # [2, B, n] differences: each maximum reduces a contiguous row
        pts, box = points[..., lv.start:lv.start + n], pred_columns[..., lv.start:lv.start + n]
        diff = offsets[:B * n * 2].view(2, B, n)
        reach[:, i, :2] = torch.amax(torch.sub(pts, box[:2], out=diff), 2).t()
        reach[:, i, 2:] = torch.amax(torch.sub(box[2:], pts, out=diff), 2).t()
    return reach.clamp_(min=0)


def overlap_windows(gt_bboxes: Tensor, reach: Tensor) -> Tensor:
    """Where an anchor point must lie for its predicted box to intersect a GT box.

    gt_bboxes [G, 4] xyxy, reach [G, L, 4] (the GT's image, from :func:`prediction_reach`) -> windows
    [G, L, 4] in float64: a predicted box ``[x - l, ., x + r, .]`` with ``l <= left``, ``r <= right``
    meets ``[x1, ., x2, .]`` only if ``x1 - right < x < x2 + left`` (same in y); widened by a relative
    1e-5 so that float32 rounding of the reach cannot drop an anchor.
    """
    gt = gt_bboxes.double()[:, None, :]
    reach = reach.double()
    pad = 1e-5 * (gt.abs() + reach + 1.0)
    return torch.cat((gt[..., :2] - reach[..., 2:] - pad[..., :2], gt[..., 2:] + reach[..., :2] + pad[..., 2:]), -1)


# ----------------------------------------------------------------------------- metric
def pair_overlaps(gt_bboxes: Tensor, pred_boxes: Tensor, kind: str, gt_areas: Optional[Tensor] = None,
                  pred_areas: Optional[Tensor] = None) -> Tensor:
    """Overlap of matching rows. gt_bboxes [..., 4], pred_boxes [..., 4] xyxy -> [...].

    ``"ciou"``: ultralytics' CIoU(gt, pred) clamped at 0 (argument order as ultralytics, for identical
    rounding); ``"iou"``: mmdet ``bbox_overlaps(pred, gt)``, reading the boxes' areas [...] from
    ``gt_areas`` / ``pred_areas`` when given (the same arithmetic, done once per box instead of per pair).
    """
    if kind == "ciou":
        return aligned_ciou(gt_bboxes, pred_boxes).clamp(min=0)
    if gt_areas is None and pred_areas is None:
        return aligned_iou(pred_boxes, gt_bboxes)
    return overlaps_of_coordinates(pred_boxes.unbind(-1), gt_bboxes.unbind(-1), "iou", MMDET_EPS,
                                   area_a=pred_areas, area_b=gt_areas, inplace=True)



def alignment_metric(scores: Tensor, overlaps: Tensor, alpha: float, beta: float) -> Tensor:
    """t = s^alpha * u^beta (TOOD eq. 2). scores [...], overlaps [...] -> [...]."""
    powered = overlaps.pow(beta)
    factor = scores if alpha == 1 else scores.pow(alpha)      # s ** 1 is s, exactly
    if powered.shape == factor.shape and not powered.requires_grad:
        return powered.mul_(factor)                          # the same product: IEEE products commute
    return factor * powered


# ----------------------------------------------------------------------------- conflicts and targets
def resolve_conflicts(pairs: PairTable, B: int, A: int, M: int, conflict: str) -> AnchorAssignment:
    """One GT per anchor.

    ``"all_gts"`` (ultralytics): an anchor selected by several GTs goes to the argmax of its overlap
    over *all* GTs (non-candidate pairs count as 0, ties to the lowest GT index, so with all
    overlaps 0 GT 0 wins even if it never selected the anchor). ``"selected_gts"`` (mmdet): the max
    overlap among the GTs that selected it, ties to the lowest GT index. Only the selected pairs, and for
    ``"all_gts"`` the pairs of anchors selected several times, are read: the rest of the (long) candidate
    list cannot change an anchor's GT.
    """
    prior, m = pairs.prior, pairs.gt
    metric = torch.zeros(B * A, dtype=pairs.metric.dtype, device=prior.device)
    overlap = torch.zeros_like(metric)
    if conflict == "selected_gts":
        # only selected pairs are eligible: an anchor no GT selected is left without a winner (index M), so
        # no count is needed
        _, gt = _pairs.best_per_prior(prior, pairs.overlap, m, B * A, M, eligible=pairs.selected)
        fg = gt < M
        keep = (m == gt.index_select(0, prior)).logical_and_(pairs.selected).nonzero().squeeze(1)
        index = prior.index_select(0, keep)
        metric.index_add_(0, index, pairs.metric.index_select(0, keep))
        overlap.index_add_(0, index, pairs.overlap.index_select(0, keep))
        return AnchorAssignment(fg, gt.masked_fill_(~fg, 0), metric, overlap)
    # "all_gts": a single selecting GT keeps its anchor; several: the argmax over every pair of the anchor
    chosen = torch.nonzero(pairs.selected).squeeze(1)
    prior_s, m_s = prior.index_select(0, chosen), m.index_select(0, chosen)          # the selected pairs
    count = _pairs.count_per_prior(prior_s, torch.ones_like(prior_s, dtype=torch.bool), B * A)
    multi = count > 1
    rows = torch.nonzero(multi.index_select(0, prior)).squeeze(1)                # every pair of those anchors
    prior_m, m_m, overlap_m = (x.index_select(0, rows) for x in (prior, m, pairs.overlap))
    best, winner = _pairs.best_per_prior(prior_m, overlap_m, m_m, B * A, M)
    _, single = _pairs.best_per_prior(prior_s, None, m_s, B * A, M)             # the one GT that chose it
    gt = torch.where(multi, torch.where(best > 0, winner, torch.zeros_like(winner)), single)
    gt.masked_fill_(count == 0, 0)
    # the kept pair: the selecting one of a single-selected anchor, the winner's among a multi one's
    once = (count.index_select(0, prior_s) == 1).nonzero().squeeze(1)
    won = (m_m == gt.index_select(0, prior_m)).nonzero().squeeze(1)
    for at, keep, source in ((prior_s, once, chosen), (prior_m, won, rows)):
        index = at.index_select(0, keep)
        metric.index_add_(0, index, pairs.metric.index_select(0, source.index_select(0, keep)))
        overlap.index_add_(0, index, pairs.overlap.index_select(0, source.index_select(0, keep)))
    return AnchorAssignment(count > 0, gt, metric, overlap)


def assignment_from_summary(summary: _pairs.PriorSummary) -> AnchorAssignment:
    """The dense-block summary (values: metric, overlap) -> per-anchor assignment, as :func:`resolve_conflicts`
    (a single selecting GT keeps the anchor; several: the summary's winner)."""
    fg = summary.count > 0
    multi = summary.count > 1
    zero = torch.zeros_like(summary.best)
    gt = torch.where(multi, summary.winner, summary.first)
    metric, overlap = (torch.where(multi, w, f) for w, f in zip(summary.winner_values, summary.first_values))
    return AnchorAssignment(fg.reshape(-1), torch.where(fg, gt, torch.zeros_like(gt)).reshape(-1),
                            torch.where(fg, metric, zero).reshape(-1), torch.where(fg, overlap, zero).reshape(-1))


def keep_topk2(assign: AnchorAssignment, B: int, A: int, M: int, topk2: int, stable: bool = True,
               max_elems: int = 1 << 26) -> AnchorAssignment:
    """After de-duplication keep each GT's best ``topk2`` anchors by metric (ultralytics ``topk2``);
    dropped anchors become negative. ``stable``: ties to the lowest anchor index; otherwise the choice
    of ``torch.topk`` over ultralytics' dense ``[B, M, A]`` rows (the metric on each GT's positives, 0
    elsewhere), rebuilt densely only where tied (:func:`._pairs.reference_topk`). No sync when stable."""
    anchor_b = torch.div(torch.arange(B * A, device=assign.fg.device), A, rounding_mode="floor")
    segment = torch.where(assign.fg, anchor_b * M + assign.gt, torch.full_like(assign.gt, B * M))
    if stable:
        keep = _pairs.rank_in_segments(segment, assign.metric, B * M + 1, nonnegative=True) < topk2
    else:
        pos = torch.nonzero(assign.fg).squeeze(1)
        anchor = pos - anchor_b.index_select(0, pos) * A
        keep = torch.zeros_like(assign.fg)
        keep[pos] = _pairs.reference_topk(segment.index_select(0, pos), anchor, assign.metric.index_select(0, pos),
                                          B * M, A, topk2, max_elems)
    fg = assign.fg & keep
    zero = torch.zeros_like(assign.metric)
    return AnchorAssignment(fg, torch.where(fg, assign.gt, torch.zeros_like(assign.gt)),
                            torch.where(fg, assign.metric, zero), torch.where(fg, assign.overlap, zero))


def normalized_scores(assign: AnchorAssignment, B: int, A: int, M: int, eps: float,
                      gid: Optional[Tensor] = None) -> Tensor:
    """Soft target per positive anchor: t * max_pos(u) / (max_pos(t) + eps), maxima per GT over its
    final positives. ``gid`` [B * A]: the assigned flat GT row ``b * M + gt`` when the caller has it.
    -> [B * A] (0 for negatives)."""
    if gid is None:
        gid = torch.arange(B, device=assign.fg.device)[:, None].expand(B, A).reshape(-1) * M + assign.gt
    zero = torch.zeros_like(assign.metric)
    pos_metric = torch.zeros(B * M, dtype=assign.metric.dtype, device=assign.fg.device)
    pos_metric = pos_metric.scatter_reduce(0, gid, torch.where(assign.fg, assign.metric, zero), "amax")
    pos_overlap = torch.zeros_like(pos_metric).scatter_reduce(
        0, gid, torch.where(assign.fg, assign.overlap, zero), "amax")
    norm = assign.metric * pos_overlap.index_select(0, gid) / (pos_metric.index_select(0, gid) + eps)
    return torch.where(assign.fg, norm, zero)


_CALLOC_MIN_BYTES = 1 << 22
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def zeros_buffer(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled tensor, without writing the zeros when that can be avoided.

    Large CPU buffers (the ``[B, A, C]`` target scores) come from ``numpy.zeros``, i.e. ``calloc``: the
    OS hands out pages that are already zero, so the buffer is written once (by the caller's scatter)
    instead of twice. Elsewhere (accelerators, small sizes, other dtypes) it is ``torch.zeros``.
    """
    numel = 1
    for n in shape:
        numel *= n
    if torch.device(device).type == "cpu" and dtype in _NUMPY_DTYPES and numel * 8 >= _CALLOC_MIN_BYTES:
        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.zeros(shape, dtype=dtype, device=device)
