"""Sparse building blocks of the task-aligned assigner (TAL).

Shape symbols: B batch, A anchors, M padded GTs per image, C classes, G valid GT rows
(``gt_mask`` True, flattened over ``B * M``), P candidate (GT, anchor) pairs, L pyramid levels.

The reference implementations build dense ``[B, M, A]`` (and ``[B, M, A, 4]``) tensors. Here every
quantity is computed on the list of candidate pairs only, i.e. the anchors whose centre lies in a
GT's candidate box, and the assignment is finished with scatter reductions over anchors. A pair
table is five aligned vectors::

    row [P]      flat GT row ``b * M + m`` of the pair
    anchor [P]   anchor index in ``[0, A)``
    overlap [P]  IoU / CIoU(>= 0) of the GT box and the anchor's predicted box
    metric [P]   task-aligned metric s^alpha * u^beta (TOOD eq. 2)
    selected [P] the pair survived the per-GT top-k

Producing pairs needs ``nonzero`` / ``repeat_interleave`` (data-dependent sizes, one host sync each on
CUDA); everything after that is sync-free.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..boxes import aligned_ciou, aligned_iou


class GridLevel(NamedTuple):
    """One pyramid level laid out row-major: anchor ``start + iy * width + ix`` sits at
    ``((ix + offset) * stride, (iy + offset) * stride)``."""

    start: int
    width: int
    height: int
    stride: float
    offset: float


class PairTable(NamedTuple):
    row: Tensor
    anchor: Tensor
    overlap: Tensor
    metric: Tensor
    selected: Tensor


# ----------------------------------------------------------------------------- candidate boxes
def widened_candidate_boxes(gt_boxes: Tensor, min_size: Optional[float]) -> Tensor:
    """Boxes used for the centre-in-GT test. [..., 4] xyxy -> [..., 4] xyxy.

    ``min_size`` set: sides shorter than ``min_size`` grow to it about the centre, through a
    centre/size round trip (ultralytics 8.4 widens GTs thinner than ``stride[1]`` so tiny objects get
    candidates). The round trip is applied to every box, because ultralytics applies it and it can
    move an unwidened corner by one ulp, which decides anchors lying exactly on a side.
    ``min_size`` None: the boxes unchanged.
    """
    if min_size is None:
        return gt_boxes
    x1, y1, x2, y2 = gt_boxes.unbind(-1)
    centre = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2), dim=-1)
    size = torch.stack((x2 - x1, y2 - y1), dim=-1)
    size = torch.where(size < min_size, torch.full_like(size, min_size), size)
    half = size / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def centres_inside(px: Tensor, py: Tensor, boxes: Tensor, eps: float, inclusive: bool) -> Tensor:
    """Point-in-box test with the references' exact float operations.

    px, py [...] and boxes [..., 4] broadcast -> [...] bool. Strict: all four distances ``> eps``
    (ultralytics eps 1e-9, mmdet 0.01); inclusive: ``x1 <= x <= x2`` and ``y1 <= y <= y2``.
    """
    left, top = px - boxes[..., 0], py - boxes[..., 1]
    right, bottom = boxes[..., 2] - px, boxes[..., 3] - py
    if inclusive:
        return (left >= 0) & (top >= 0) & (right >= 0) & (bottom >= 0)
    return (left > eps) & (top > eps) & (right > eps) & (bottom > eps)


# ----------------------------------------------------------------------------- grid detection
def _level_shape(pts: Tensor, start: int, stride: float, last: bool) -> Optional[Tuple[int, int]]:
    """Width and height of the row-major grid level beginning at ``start`` (host tensor [A, 2])."""
    y = pts[start:, 1]
    new_row = torch.nonzero(y != y[0])
    width = int(new_row[0, 0]) if len(new_row) else len(y)
    if width == 0:
        return None
    if last:
        if len(y) % width:
            return None
        return width, len(y) // width
    starts = pts[start::width]
    expected_y = pts[start, 1] + stride * torch.arange(len(starts), dtype=pts.dtype)
    ok = (starts[:, 0] == pts[start, 0]) & ((starts[:, 1] - expected_y).abs() <= 1e-3 * stride)
    bad = torch.nonzero(~ok)
    height = int(bad[0, 0]) if len(bad) else len(starts)
    return (width, height) if height else None


def detect_grid(anchor_points: Tensor, strides: Optional[Sequence[float]]) -> Optional[List[GridLevel]]:
    """Recognise concatenated row-major anchor grids (the layout of ultralytics ``make_anchors``).

    anchor_points [A, 2] in pixels, strides per level in layout order -> levels, or None when the
    points are not exactly such grids (then the caller uses the generic chunked test). Reads the
    points on the host (one device sync). Detection is verified by rebuilding the grid and comparing
    it for exact equality, so a wrong guess can never change a result.
    """
    if not strides or anchor_points.shape[0] == 0:
        return None
    pts = anchor_points.detach().to("cpu", torch.float64)
    levels, start = [], 0
    for i, stride in enumerate(strides):
        if start >= len(pts):
            return None
        shape = _level_shape(pts, start, float(stride), last=i == len(strides) - 1)
        if shape is None:
            return None
        offset = float(pts[start, 0]) / float(stride)
        levels.append(GridLevel(start, shape[0], shape[1], float(stride), offset))
        start += shape[0] * shape[1]
    if start != len(pts):
        return None
    rebuilt = torch.cat([_level_points(lv, anchor_points) for lv in levels])
    return levels if torch.equal(rebuilt, anchor_points) else None


def _level_points(level: GridLevel, like: Tensor) -> Tensor:
    """The anchor points of one level, [h * w, 2], computed as ``(index + offset) * stride``."""
    xs = (torch.arange(level.width, device=like.device, dtype=like.dtype) + level.offset) * level.stride
    ys = (torch.arange(level.height, device=like.device, dtype=like.dtype) + level.offset) * level.stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).reshape(-1, 2)


# ----------------------------------------------------------------------------- candidate pairs
def grid_cells(levels: List[GridLevel], windows: Tensor) -> Tuple[Tensor, Tensor]:
    """Grid cells covered by per-level windows.

    windows [G, L, 4] xyxy (one window per GT row and level) -> (lo [G, L, 2] first cell (ix, iy),
    n_xy [G, L, 2] number of cells along x and y, 0 when the window misses the level). The cell
    rectangle is ``ceil(x1 / s - o) .. floor(x2 / s - o)`` widened by a relative 1e-6 (computed in
    float64), so it is a superset of the anchors whose points lie in the window.
    """
    device = windows.device
    stride = torch.tensor([lv.stride for lv in levels], dtype=torch.float64, device=device)       # [L]
    offset = torch.tensor([lv.offset for lv in levels], dtype=torch.float64, device=device)
    size = torch.tensor([[lv.width, lv.height] for lv in levels], device=device)                   # [L, 2]
    cells = windows.double() / stride[None, :, None] - offset[None, :, None]                        # [G, L, 4]
    tol = 1e-6 * cells.abs().clamp(min=1.0)
    lo = torch.ceil(cells[..., :2] - tol[..., :2]).clamp(min=-1, max=2**40).long().clamp(min=0)
    hi = torch.floor(cells[..., 2:] + tol[..., 2:]).clamp(min=-1, max=2**40).long()
    hi = torch.minimum(hi, size - 1)
    return lo, (hi - lo + 1).clamp(min=0)


def enumerate_cells(levels: List[GridLevel], lo: Tensor, n_xy: Tensor,
                    row_offset: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Every (row, anchor) of the cell rectangles from :func:`grid_cells`.

    lo, n_xy [G, L, 2] -> (row [P] in [0, G), anchor [P]) ordered by row then ascending anchor index
    (levels are concatenated in layout order and each is row-major); ``row_offset`` [G] is added to
    the anchors of each row (e.g. ``image * A`` for flat indices). Expanded in two steps (grid rows,
    then cells along each row) so no per-pair division is needed. Two host syncs (the sizes).
    """
    device = lo.device
    G, L = lo.shape[:2]
    width = torch.tensor([lv.width for lv in levels], device=device)
    start = torch.tensor([lv.start for lv in levels], device=device)
    nx, ny = n_xy[..., 0], n_xy[..., 1]
    # one entry per (GT row, level, grid row iy)
    base = (start + lo[..., 1] * width + lo[..., 0]).reshape(-1)                       # [G * L] first anchor
    step = width.expand(G, L).reshape(-1)
    ny_flat = ny.reshape(-1)
    seg = torch.repeat_interleave(torch.arange(G * L, device=device), ny_flat)         # [R], host sync
    first = torch.cumsum(ny_flat, 0) - ny_flat
    dy = torch.arange(seg.shape[0], device=device) - first.index_select(0, seg)
    row_base = base.index_select(0, seg) + dy * step.index_select(0, seg)              # [R]
    row_gt = torch.div(seg, L, rounding_mode="floor")
    if row_offset is not None:
        row_base = row_base + row_offset.index_select(0, row_gt)
    row_nx = nx.reshape(-1).index_select(0, seg)
    # one entry per cell along each grid row: anchor = row_base + (position - first position of the row)
    cell_row = torch.repeat_interleave(torch.arange(seg.shape[0], device=device), row_nx)   # [P], host sync
    shift = row_base - (torch.cumsum(row_nx, 0) - row_nx)
    return row_gt.index_select(0, cell_row), torch.arange(cell_row.shape[0], device=device) + shift.index_select(
        0, cell_row)


def grid_candidate_pairs(anchor_points: Tensor, levels: List[GridLevel], test_boxes: Tensor, eps: float,
                         inclusive: bool) -> Tuple[Tensor, Tensor]:
    """Anchors inside each box, enumerated from the grid cells the box covers.

    anchor_points [A, 2] (laid out as ``levels``), test_boxes [G, 4] -> (row [P] in [0, G),
    anchor [P]), ordered by row then ascending anchor index. The covered cells (:func:`grid_cells`)
    are a superset of the inside anchors; the exact test then runs on those pairs only, so the cost
    is proportional to the GT areas, not B*M*A.
    """
    windows = test_boxes[:, None, :].expand(-1, len(levels), -1)
    row, anchor = enumerate_cells(levels, *grid_cells(levels, windows))
    pts = anchor_points.index_select(0, anchor)
    keep = centres_inside(pts[:, 0], pts[:, 1], test_boxes.index_select(0, row), eps, inclusive)
    keep_idx = torch.nonzero(keep).squeeze(1)
    return row.index_select(0, keep_idx), anchor.index_select(0, keep_idx)


def prediction_reach(anchor_points: Tensor, pred_boxes: Tensor, levels: List[GridLevel]) -> Tensor:
    """How far the predicted boxes of each image and level reach from their anchor points.

    anchor_points [A, 2], pred_boxes [B, A, 4] xyxy -> [B, L, 4] (left, top, right, bottom) >= 0:
    every predicted box of image b at level l lies in ``[x - left, y - top, x + right, y + bottom]``
    around its anchor point (x, y).
    """
    parts = []
    for lv in levels:
        pts = anchor_points[lv.start:lv.start + lv.width * lv.height]
        box = pred_boxes[:, lv.start:lv.start + lv.width * lv.height]
        if pts.shape[0] == 0:
            parts.append(pred_boxes.new_zeros(pred_boxes.shape[0], 4))
            continue
        parts.append(torch.cat(((pts - box[..., :2]).amax(1), (box[..., 2:] - pts).amax(1)), -1))
    return torch.stack(parts, 1).clamp(min=0)


def overlap_windows(gt_boxes: Tensor, reach: Tensor) -> Tensor:
    """Where an anchor point must lie for its predicted box to intersect a GT box.

    gt_boxes [G, 4] xyxy, reach [G, L, 4] (the GT's image, from :func:`prediction_reach`) ->
    windows [G, L, 4] in float64: a predicted box ``[x - l, ., x + r, .]`` with ``l <= left``,
    ``r <= right`` meets ``[x1, ., x2, .]`` only if ``x1 - right < x < x2 + left`` (same in y). The
    windows are widened by a relative 1e-5 so float32 rounding of the reach cannot drop an anchor.
    """
    gt = gt_boxes.double()[:, None, :]
    reach = reach.double()
    pad = 1e-5 * (gt.abs() + reach + 1.0)
    return torch.cat((gt[..., :2] - reach[..., 2:] - pad[..., :2], gt[..., 2:] + reach[..., :2] + pad[..., 2:]), -1)


def chunked_candidate_pairs(anchor_points: Tensor, test_boxes: Tensor, eps: float, inclusive: bool,
                            max_elems: int) -> Tuple[Tensor, Tensor]:
    """Generic inside test for arbitrary anchor points, a block of GT rows at a time.

    anchor_points [A, 2], test_boxes [G, 4] -> (row [P], anchor [P]) ordered by row then anchor;
    at most ``max_elems`` (row, anchor) tests are held in memory at once.
    """
    A, G = anchor_points.shape[0], test_boxes.shape[0]
    step = max(1, max_elems // max(A, 1))
    rows, anchors = [], []
    px, py = anchor_points[None, :, 0], anchor_points[None, :, 1]
    for lo in range(0, G, step):
        inside = centres_inside(px, py, test_boxes[lo:lo + step, None, :], eps, inclusive)  # [g, A]
        r, a = torch.nonzero(inside, as_tuple=True)
        rows.append(r + lo)
        anchors.append(a)
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=test_boxes.device)
        return empty, empty
    return torch.cat(rows), torch.cat(anchors)


# ----------------------------------------------------------------------------- metrics
def pair_overlaps(gt_boxes: Tensor, pred_boxes: Tensor, kind: str) -> Tensor:
    """Overlap of matching rows. gt_boxes [..., 4], pred_boxes [..., 4] xyxy -> [...].

    ``"ciou"``: ultralytics' CIoU(gt, pred) clamped at 0 (argument order as ultralytics, for identical
    rounding); ``"iou"``: mmdet ``bbox_overlaps(pred, gt)``.
    """
    if kind == "ciou":
        return aligned_ciou(gt_boxes, pred_boxes).clamp(min=0)
    return _mmdet_iou(pred_boxes, gt_boxes)


def _mmdet_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """mmdet ``bbox_overlaps(a, b, is_aligned=True)`` with broadcasting: the same operations in the same
    order (bit-identical), but the eps floor is a Python scalar (``clamp``), not ``new_tensor([eps])``,
    whose host-to-device copy would synchronise on CUDA. [..., 4], [..., 4] -> [...]."""
    if a.dtype != b.dtype or not a.is_floating_point() or a.dtype in (torch.float16, torch.bfloat16):
        return aligned_iou(a, b)
    area1 = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area2 = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    overlap = w * h
    union = (area1 + area2 - overlap).clamp(min=eps)
    return overlap / union


def alignment_metric(scores: Tensor, overlaps: Tensor, alpha: float, beta: float) -> Tensor:
    """t = s^alpha * u^beta (TOOD eq. 2). scores [...], overlaps [...] -> [...]."""
    return scores.pow(alpha) * overlaps.pow(beta)


# ----------------------------------------------------------------------------- selection
def rank_in_segments(segment: Tensor, key: Tensor, num_segments: int, nonnegative: bool = False) -> Tensor:
    """Rank of each element inside its segment by ``key`` descending, ties to the earlier element.

    segment [P] long in [0, num_segments), key [P] -> rank [P] long (0 = best). No padding, no sync.
    With ``nonnegative`` (the caller guarantees key >= 0, as TAL metrics are) a float32 key is
    packed with its segment into one int64 (the bit pattern of a non-negative float orders like the
    float), so one stable sort suffices; otherwise two stable sorts.
    """
    if segment.numel() == 0:
        return torch.zeros_like(segment)
    if nonnegative and key.dtype == torch.float32:
        bits = (key + 0.0).view(torch.int32).long()          # + 0.0 turns -0.0 into +0.0
        perm = torch.sort(segment * 2**31 + (2**31 - 1 - bits), stable=True).indices
    else:
        by_key = torch.sort(key, descending=True, stable=True).indices
        perm = by_key.index_select(0, torch.sort(segment.index_select(0, by_key), stable=True).indices)
    # index_add instead of bincount, which reads the maximum on the host (a sync on CUDA)
    counts = torch.zeros(num_segments, dtype=torch.long, device=segment.device).index_add_(
        0, segment, torch.ones_like(segment))
    first = torch.cumsum(counts, 0) - counts                                           # [num_segments]
    position = torch.arange(segment.numel(), device=segment.device)
    rank_sorted = position - first.index_select(0, segment.index_select(0, perm))
    return torch.empty_like(segment).index_copy_(0, perm, rank_sorted)


def topk_dense(values: Tensor, k: int, stable: bool) -> Tensor:
    """Per-row top-k as a mask. values [g, A] -> [g, A] bool.

    ``stable``: ties go to the lowest index; otherwise ``torch.topk``, whose tie order is unspecified
    and device-dependent (what the references use). The stable form packs a float32 value whose
    non-negative entries are to be ranked (negative ones rank below them, e.g. -1 / -inf padding)
    with its reversed column into one int64 key, so a single ``torch.topk`` decides ties too; other
    dtypes take the threshold-and-cumsum route.
    """
    k = min(k, values.shape[-1])
    if k == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if stable and values.dtype == torch.float32:
        col = torch.arange(values.shape[-1], device=values.device)
        bits = (values + 0.0).view(torch.int32)                  # + 0.0 turns -0.0 into +0.0
        # non-negative floats order like their bit patterns; every negative value maps to -1
        key = torch.where(values >= 0, bits, -1).long() * 2**32 + (2**32 - 1 - col)
        top = torch.topk(key, k, dim=-1).indices
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device).scatter_(-1, top, True)
    top = torch.topk(values, k, dim=-1, largest=True)
    if not stable:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device).scatter_(-1, top.indices, True)
    # everything above the k-th value, then the first (lowest-index) elements equal to it
    kth = top.values[:, -1:]
    greater = values > kth
    equal = values == kth
    need = k - greater.sum(-1, keepdim=True)
    return greater | (equal & (torch.cumsum(equal, -1) <= need))


def reference_topk(segment: Tensor, column: Tensor, values: Tensor, num_segments: int, num_columns: int, k: int,
                   max_elems: int) -> Tensor:
    """The entries ``torch.topk`` would keep, with the references' tie order, from sparse rows.

    The rows are dense ``[num_segments, num_columns]`` with ``values`` at (segment, column) and 0
    elsewhere (ultralytics' TAL metric rows). segment [P] long, column [P] long (distinct within a
    segment), values [P] >= 0 and not NaN -> [P] bool: entry kept by ``torch.topk(row, k)``.

    Where the top-k set is unique it is read off a stable rank, with no dense row. It is not unique
    when the k-th largest value of the row is tied with more values than the slots left for it and
    an entry is among them: usually a GT whose top-k reaches zero metrics while some of its
    candidates have metric 0 (they tie with every non-candidate anchor). Only those rows are rebuilt
    densely, in blocks of at most ``max_elems`` elements, and ranked by ``torch.topk`` itself: on the
    same device, with the same values, the same choice as the reference (the CPU kernel ranks each
    row on its own, so a block of rows gives the per-row result of the batched call; tested on CPU,
    not yet on CUDA). One host sync (which rows) when any row is rebuilt.
    """
    device = segment.device
    k = min(k, num_columns)
    if segment.numel() == 0 or k == 0:
        return torch.zeros_like(segment, dtype=torch.bool)
    rank = rank_in_segments(segment, values, num_segments, nonnegative=True)
    selected = rank < k
    ones = torch.ones_like(segment)
    count = torch.zeros(num_segments, dtype=torch.long, device=device).index_add_(0, segment, ones)
    # k-th largest of the dense row: the k-th entry when the row has at least k, else one of its zeros
    zero = values.new_zeros(())
    kth = values.new_zeros(num_segments).scatter_reduce(0, segment, torch.where(rank == k - 1, values, zero), "amax")
    kth_at = kth.index_select(0, segment)
    greater = torch.zeros_like(count).index_add_(0, segment, (values > kth_at).long())
    equal = torch.zeros_like(count).index_add_(0, segment, (values == kth_at).long())
    # values tied at the k-th: the equal entries, plus every implicit zero of the row when the k-th is 0
    tied = equal + torch.where(kth == 0, num_columns - count, torch.zeros_like(count))
    rows = torch.nonzero((equal > 0) & (tied > k - greater)).squeeze(1)              # host sync
    if rows.numel() == 0:
        return selected
    local = torch.full((num_segments,), -1, dtype=torch.long, device=device)
    local[rows] = torch.arange(rows.numel(), device=device)
    entry_row = local.index_select(0, segment)                                          # [P], -1 if unique
    step = max(1, max_elems // max(num_columns, 1))
    for lo in range(0, rows.numel(), step):
        hi = min(rows.numel(), lo + step)
        entries = torch.nonzero((entry_row >= lo) & (entry_row < hi)).squeeze(1)
        r, c = entry_row.index_select(0, entries) - lo, column.index_select(0, entries)
        dense = values.new_zeros(hi - lo, num_columns)
        dense[r, c] = values.index_select(0, entries)
        top = torch.topk(dense, k, dim=1).indices
        kept = torch.zeros(dense.shape, dtype=torch.bool, device=device).scatter_(1, top, True)
        selected[entries] = kept[r, c]
    return selected


# ----------------------------------------------------------------------------- conflicts & targets
class AnchorAssignment(NamedTuple):
    fg: Tensor        # [B * A] bool
    gt: Tensor        # [B * A] long, 0-based padded GT index (0 where not fg)
    metric: Tensor    # [B * A] metric of the assigned pair (0 where not fg or no candidate pair)
    overlap: Tensor   # [B * A] overlap of the assigned pair


def resolve_conflicts(pairs: PairTable, B: int, A: int, M: int, conflict: str) -> AnchorAssignment:
    """One GT per anchor.

    ``"all_gts"`` (ultralytics): an anchor selected by several GTs goes to the argmax of its overlap
    over *all* GTs (non-candidate pairs count as 0, ties to the lowest GT index, so with all
    overlaps 0 GT 0 wins even if it never selected the anchor). ``"selected_gts"`` (mmdet): the max
    overlap among the GTs that selected it, ties to the lowest GT index.
    """
    device = pairs.row.device
    b = torch.div(pairs.row, M, rounding_mode="floor")
    m = pairs.row - b * M
    flat = b * A + pairs.anchor                                                        # [P]
    sel = pairs.selected
    count = torch.zeros(B * A, dtype=torch.long, device=device).index_add_(0, flat, sel.long())
    no_gt = torch.full((B * A,), M, dtype=torch.long, device=device)
    if conflict == "all_gts":
        best = torch.zeros(B * A, dtype=pairs.overlap.dtype, device=device)
        best = best.scatter_reduce(0, flat, pairs.overlap, "amax", include_self=True)
        is_best = pairs.overlap == best.index_select(0, flat)
        winner = no_gt.scatter_reduce(0, flat, torch.where(is_best, m, M), "amin", include_self=True)
        winner = torch.where(best > 0, winner, torch.zeros_like(winner))
    else:
        neg = torch.full_like(pairs.overlap, float("-inf"))
        best = torch.full((B * A,), float("-inf"), dtype=pairs.overlap.dtype, device=device)
        best = best.scatter_reduce(0, flat, torch.where(sel, pairs.overlap, neg), "amax", include_self=True)
        is_best = sel & (pairs.overlap == best.index_select(0, flat))
        winner = no_gt.scatter_reduce(0, flat, torch.where(is_best, m, M), "amin", include_self=True)
    single = no_gt.scatter_reduce(0, flat, torch.where(sel, m, M), "amin", include_self=True)
    fg = count > 0
    gt = torch.where(count > 1, winner, single)
    gt = torch.where(fg, gt, torch.zeros_like(gt))
    final = fg.index_select(0, flat) & (m == gt.index_select(0, flat))
    zero = torch.zeros(B * A, dtype=pairs.metric.dtype, device=device)
    metric = zero.index_add(0, flat, torch.where(final, pairs.metric, torch.zeros_like(pairs.metric)))
    overlap = zero.index_add(0, flat, torch.where(final, pairs.overlap, torch.zeros_like(pairs.overlap)))
    return AnchorAssignment(fg, gt, metric, overlap)


def keep_topk2(assign: AnchorAssignment, B: int, A: int, M: int, topk2: int, stable: bool = True,
               max_elems: int = 1 << 26) -> AnchorAssignment:
    """After de-duplication keep each GT's best ``topk2`` anchors by metric (ultralytics ``topk2``);
    dropped anchors become negative. ``stable``: ties to the lowest anchor index (sparse); otherwise
    the choice of ``torch.topk`` over ultralytics' dense ``[B, M, A]`` rows (the metric on each GT's
    positives, 0 elsewhere), rebuilding densely only the rows whose choice is tied
    (:func:`reference_topk`, blocks of ``max_elems``)."""
    anchor_b = torch.div(torch.arange(B * A, device=assign.fg.device), A, rounding_mode="floor")
    segment = torch.where(assign.fg, anchor_b * M + assign.gt, torch.full_like(assign.gt, B * M))
    if stable:
        keep = rank_in_segments(segment, assign.metric, B * M + 1, nonnegative=True) < topk2
    else:
        pos = torch.nonzero(assign.fg).squeeze(1)
        anchor = pos - anchor_b.index_select(0, pos) * A
        keep = torch.zeros_like(assign.fg)
        keep[pos] = reference_topk(segment.index_select(0, pos), anchor, assign.metric.index_select(0, pos), B * M,
                                   A, topk2, max_elems)
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


# ----------------------------------------------------------------------------- blocked (sync-free) resolution
class BlockState(NamedTuple):
    """Running per-anchor summary while GT blocks are processed in order; every field [B, A]."""

    count: Tensor          # long, GTs that selected the anchor so far
    first_gt: Tensor       # long, lowest GT index that selected it (the answer when count == 1)
    first_metric: Tensor
    first_overlap: Tensor
    best: Tensor           # running max of the conflict overlap (-inf before the first block)
    win_gt: Tensor         # long, first GT reaching ``best`` (the answer when count > 1)
    win_metric: Tensor
    win_overlap: Tensor


def init_block_state(B: int, A: int, dtype: torch.dtype, device: torch.device) -> BlockState:
    zero_l = torch.zeros(B, A, dtype=torch.long, device=device)
    zero_f = torch.zeros(B, A, dtype=dtype, device=device)
    return BlockState(zero_l, zero_l, zero_f, zero_f, torch.full((B, A), float("-inf"), dtype=dtype, device=device),
                      zero_l, zero_f, zero_f)


def update_block_state(state: BlockState, first: int, chosen: Tensor, conflict_overlap: Tensor, overlap: Tensor,
                       metric: Tensor) -> BlockState:
    """Fold one block of GTs ``first .. first + g - 1`` into the running summary.

    chosen [B, g, A] bool (the pair survived top-k and the candidate test), conflict_overlap
    [B, g, A] (the value the conflict rule maximises: the overlap of every candidate pair for
    ``"all_gts"``, of chosen pairs with -inf elsewhere for ``"selected_gts"``), overlap / metric
    [B, g, A] of the pairs (0 off the candidates). Ties go to the lowest GT index: ``argmax`` / ``max``
    return the first maximal index, and a later block replaces the running best only when strictly
    greater. No data-dependent shapes, no host sync.
    """
    n = chosen.sum(1)                                                                  # [B, A]
    f = chosen.to(torch.uint8).argmax(1, keepdim=True)                                # first True
    take_first = (state.count == 0) & (n > 0)
    best, idx = conflict_overlap.max(1, keepdim=True)
    better = best.squeeze(1) > state.best
    return BlockState(
        state.count + n,
        torch.where(take_first, f.squeeze(1) + first, state.first_gt),
        torch.where(take_first, metric.gather(1, f).squeeze(1), state.first_metric),
        torch.where(take_first, overlap.gather(1, f).squeeze(1), state.first_overlap),
        torch.where(better, best.squeeze(1), state.best),
        torch.where(better, idx.squeeze(1) + first, state.win_gt),
        torch.where(better, metric.gather(1, idx).squeeze(1), state.win_metric),
        torch.where(better, overlap.gather(1, idx).squeeze(1), state.win_overlap),
    )


def finish_block_state(state: BlockState) -> AnchorAssignment:
    """Running summary -> per-anchor assignment (flattened to [B * A]), as :func:`resolve_conflicts`."""
    fg = state.count > 0
    multi = state.count > 1
    zero = torch.zeros_like(state.first_metric)
    gt = torch.where(multi, state.win_gt, state.first_gt)
    metric = torch.where(multi, state.win_metric, state.first_metric)
    overlap = torch.where(multi, state.win_overlap, state.first_overlap)
    return AnchorAssignment(fg.reshape(-1), torch.where(fg, gt, torch.zeros_like(gt)).reshape(-1),
                            torch.where(fg, metric, zero).reshape(-1), torch.where(fg, overlap, zero).reshape(-1))


def boxes_intersect(boxes1_t: Tensor, boxes2_t: Tensor) -> Tensor:
    """Whether matching boxes overlap with positive area.

    boxes1_t, boxes2_t [4, P] xyxy stored coordinate-major -> [P] bool: ``min(x2) > max(x1)`` and the
    same in y, i.e. exactly the pairs whose intersection width and height (``min - max``, clamped at
    0) are positive.
    """
    a, b = boxes1_t, boxes2_t
    overlap_x = torch.minimum(a[2], b[2]) > torch.maximum(a[0], b[0])
    return overlap_x & (torch.minimum(a[3], b[3]) > torch.maximum(a[1], b[1]))


def segment_topk(segment: Tensor, values: Tensor, num_segments: int, k: int) -> Tensor:
    """Top-k of each segment as a mask, ties to the earlier element.

    segment [P] long, non-decreasing (each segment contiguous), values [P] (no NaN) -> [P] bool. The
    k-th largest value of each segment comes from ``torch.topk`` on padded rows (rows of similar
    length share a matrix, so the padding stays below 2x); then everything above it is kept, plus the
    earliest elements equal to it, as many as are still needed: no sort over the P pairs. Host syncs:
    the segment lengths.
    """
    P = segment.numel()
    if P == 0:
        return torch.zeros_like(segment, dtype=torch.bool)
    device = segment.device
    ones = torch.ones_like(segment)
    counts = torch.zeros(num_segments, dtype=torch.long, device=device).index_add_(0, segment, ones)
    first = torch.cumsum(counts, 0) - counts
    kth = torch.full((num_segments,), float("-inf"), dtype=values.dtype, device=device)
    # segments with at most k elements keep everything (k-th value -inf); the others by length bucket
    bucket = torch.where(counts > k, torch.ceil(torch.log2(counts.clamp(min=1).double())).long(), -1)
    for b in torch.unique(bucket).tolist():                                           # host sync
        if b < 0:
            continue
        segs = torch.nonzero(bucket == b).squeeze(1)
        length = counts.index_select(0, segs)
        # the bucket's elements: segment j's contiguous run first[j] .. first[j] + length[j] - 1
        row = torch.repeat_interleave(torch.arange(segs.numel(), device=device), length)
        col = torch.arange(row.numel(), device=device) - (torch.cumsum(length, 0) - length).index_select(0, row)
        entry = first.index_select(0, segs).index_select(0, row) + col
        padded = torch.full((segs.numel(), 1 << b), float("-inf"), dtype=values.dtype, device=device)
        padded.index_put_((row, col), values.index_select(0, entry))
        kth.index_copy_(0, segs, torch.topk(padded, k, dim=1).values[:, -1])
    threshold = kth.index_select(0, segment)
    greater = values > threshold
    equal = values == threshold
    need = k - torch.zeros(num_segments, dtype=torch.long, device=device).index_add_(0, segment, greater.long())
    equal_before = torch.cumsum(equal, 0) - equal.long()                               # exclusive, global
    rank_equal = equal_before - equal_before.index_select(0, first.index_select(0, segment))
    return greater | (equal & (rank_equal < need.index_select(0, segment)))

_CALLOC_MIN_BYTES = 1 << 22
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def zeros_buffer(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled tensor, without writing the zeros when that can be avoided.

    Large CPU buffers (the ``[B, A, C]`` target scores) come from ``numpy.zeros``, i.e. ``calloc``: the
    OS hands out pages that are already zero, so the buffer is written once (by the caller's
    scatter) instead of twice (``torch.zeros`` fills it explicitly, then the scatter writes it).
    Measured at [134400, 80] float32, one thread: 31 ms for zeros + scatter, 11 ms this way.
    Elsewhere (accelerators, small sizes, other dtypes) it is ``torch.zeros``.
    """
    numel = 1
    for n in shape:
        numel *= n
    if torch.device(device).type == "cpu" and dtype in _NUMPY_DTYPES and numel * 8 >= _CALLOC_MIN_BYTES:
        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.zeros(shape, dtype=dtype, device=device)
