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
def grid_candidate_pairs(anchor_points: Tensor, levels: List[GridLevel], test_boxes: Tensor, eps: float,
                         inclusive: bool) -> Tuple[Tensor, Tensor]:
    """Anchors inside each box, enumerated from the grid cells the box covers.

    anchor_points [A, 2] (laid out as ``levels``), test_boxes [G, 4] -> (row [P] in [0, G),
    anchor [P]), ordered by row then ascending anchor index. Per level, the covered cells are the
    rectangle ``ceil(x1 / s - o) .. floor(x2 / s - o)`` widened by a relative 1e-6 (a superset of the
    inside anchors, computed in float64); the
    exact test then runs on those pairs only, so the cost is proportional to the GT areas, not B*M*A.
    """
    device, G = test_boxes.device, test_boxes.shape[0]
    L = len(levels)
    # cell coordinates in float64, so the tolerance below dwarfs the rounding error
    stride = torch.tensor([lv.stride for lv in levels], dtype=torch.float64, device=device)       # [L]
    offset = torch.tensor([lv.offset for lv in levels], dtype=torch.float64, device=device)
    width = torch.tensor([lv.width for lv in levels], device=device)
    height = torch.tensor([lv.height for lv in levels], device=device)
    start = torch.tensor([lv.start for lv in levels], device=device)
    cells = test_boxes.double()[:, None, :] / stride[None, :, None] - offset[None, :, None]  # [G, L, 4]
    tol = 1e-6 * cells.abs().clamp(min=1.0)
    lo = torch.ceil(cells[..., :2] - tol[..., :2]).clamp(min=-1, max=2**40).long().clamp(min=0)
    hi = torch.floor(cells[..., 2:] + tol[..., 2:]).clamp(min=-1, max=2**40).long()
    hi = torch.minimum(hi, torch.stack((width, height), dim=-1) - 1)
    n_xy = (hi - lo + 1).clamp(min=0)                                                 # [G, L, 2]
    nx = n_xy[..., 0].reshape(-1)
    counts = nx * n_xy[..., 1].reshape(-1)                                             # [G * L]
    seg = torch.repeat_interleave(torch.arange(G * L, device=device), counts)          # [P0], host sync
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(seg.shape[0], device=device) - first.index_select(0, seg)
    level = seg % L
    nx_seg = nx.index_select(0, seg).clamp(min=1)
    dy = torch.div(local, nx_seg, rounding_mode="floor")
    iy = lo[..., 1].reshape(-1).index_select(0, seg) + dy
    ix = lo[..., 0].reshape(-1).index_select(0, seg) + (local - dy * nx_seg)
    anchor = start.index_select(0, level) + iy * width.index_select(0, level) + ix
    row = torch.div(seg, L, rounding_mode="floor")
    pts = anchor_points.index_select(0, anchor)
    keep = centres_inside(pts[:, 0], pts[:, 1], test_boxes.index_select(0, row), eps, inclusive)
    keep_idx = torch.nonzero(keep).squeeze(1)
    return row.index_select(0, keep_idx), anchor.index_select(0, keep_idx)


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
    return aligned_iou(pred_boxes, gt_boxes)


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
    counts = torch.bincount(segment, minlength=num_segments)
    first = torch.cumsum(counts, 0) - counts                                           # [num_segments]
    position = torch.arange(segment.numel(), device=segment.device)
    rank_sorted = position - first.index_select(0, segment.index_select(0, perm))
    return torch.empty_like(segment).index_copy_(0, perm, rank_sorted)


def topk_dense(values: Tensor, k: int, stable: bool) -> Tensor:
    """Per-row top-k as a mask. values [g, A] -> [g, A] bool.

    ``stable``: ties go to the lowest index (a stable sort); otherwise ``torch.topk``, whose tie
    order is unspecified and device-dependent (what the references use).
    """
    k = min(k, values.shape[-1])
    if k == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    top = torch.topk(values, k, dim=-1, largest=True)
    if not stable:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device).scatter_(-1, top.indices, True)
    # everything above the k-th value, then the first (lowest-index) elements equal to it
    kth = top.values[:, -1:]
    greater = values > kth
    equal = values == kth
    need = k - greater.sum(-1, keepdim=True)
    return greater | (equal & (torch.cumsum(equal, -1) <= need))


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


def keep_topk2(assign: AnchorAssignment, B: int, A: int, M: int, topk2: int, stable: bool = True) -> AnchorAssignment:
    """After de-duplication keep each GT's best ``topk2`` anchors by metric (ultralytics ``topk2``);
    dropped anchors become negative. ``stable``: ties to the lowest anchor index (sparse); otherwise
    ``torch.topk`` over dense ``[B, M, A]`` rows as ultralytics does (its memory, its tie order)."""
    anchor_b = torch.div(torch.arange(B * A, device=assign.fg.device), A, rounding_mode="floor")
    segment = torch.where(assign.fg, anchor_b * M + assign.gt, torch.full_like(assign.gt, B * M))
    if stable:
        keep = rank_in_segments(segment, assign.metric, B * M + 1, nonnegative=True) < topk2
    else:
        anchor = torch.arange(B * A, device=assign.fg.device) - anchor_b * A
        dense = torch.zeros(B * M + 1, A, dtype=assign.metric.dtype, device=assign.fg.device)
        dense[segment, anchor] = torch.where(assign.fg, assign.metric, torch.zeros_like(assign.metric))
        chosen = topk_dense(dense[:-1], topk2, stable=False)
        keep = torch.cat((chosen, chosen.new_zeros(1, A)))[segment, anchor]
    fg = assign.fg & keep
    zero = torch.zeros_like(assign.metric)
    return AnchorAssignment(fg, torch.where(fg, assign.gt, torch.zeros_like(assign.gt)),
                            torch.where(fg, assign.metric, zero), torch.where(fg, assign.overlap, zero))


def normalized_scores(assign: AnchorAssignment, B: int, A: int, M: int, eps: float) -> Tensor:
    """Soft target per positive anchor: t * max_pos(u) / (max_pos(t) + eps), maxima per GT over its
    final positives. -> [B * A] (0 for negatives)."""
    anchor_b = torch.div(torch.arange(B * A, device=assign.fg.device), A, rounding_mode="floor")
    gid = anchor_b * M + assign.gt
    zero = torch.zeros_like(assign.metric)
    pos_metric = torch.zeros(B * M, dtype=assign.metric.dtype, device=assign.fg.device)
    pos_metric = pos_metric.scatter_reduce(0, gid, torch.where(assign.fg, assign.metric, zero), "amax")
    pos_overlap = torch.zeros_like(pos_metric).scatter_reduce(
        0, gid, torch.where(assign.fg, assign.overlap, zero), "amax")
    norm = assign.metric * pos_overlap.index_select(0, gid) / (pos_metric.index_select(0, gid) + eps)
    return torch.where(assign.fg, norm, zero)
