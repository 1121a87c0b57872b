"""Candidate (GT, prior) pairs: the verbs the dense assigners are composed of.

Shape symbols: A priors, G GT rows (any list of GTs, e.g. the valid rows ``b * M + m`` of a padded
batch), L pyramid levels, P pairs, N per-prior slots (``B * A`` for a batch: ``b * A + a``).

A dense assigner relates each GT to a few priors. Rather than ``[G, A]`` tensors it can keep a **pair
list**: ``row [P]`` (which GT) and ``prior [P]`` (which prior), ordered by row, then ascending prior,
plus any per-pair values computed by gathering (overlap, cost, metric). The verbs, in the order an
assigner uses them:

1. **candidates** -- :func:`plan_candidates` then :meth:`Candidates.pairs`: a superset of the priors
   that can be candidates of each GT, as pairs; the caller's exact test (point in box, boxes
   intersect, ...) then filters them. Where the priors are row-major grids (:func:`detect_grid`,
   exact) the superset is the grid cells under a per-GT, per-level window, so the cost is
   proportional to the window areas (the plan lays the windows out once as runs of consecutive priors,
   :class:`GridRuns`, so a block's pairs are two fills and two running sums); otherwise every prior, so
   the cost is ``G * A``. Either way :meth:`Candidates.blocks` splits the GT rows so that a block holds at
   most ``max_pairs`` pairs.
2. **rank per GT** -- :func:`rank_in_segments` (ties to the lowest prior index: the earlier pair) and
   :func:`topk_in_segments` with ``tie_break="index"`` or ``"torch"`` (the choice ``torch.topk``
   makes over the dense row, values at the pairs and 0 elsewhere: what the references compute);
   :func:`topk_indices_in_segments` gives the chosen pairs' positions instead of a mask;
   :func:`topk_dense` is the same on dense ``[..., A]`` rows.
3. **best per prior** -- :func:`best_per_prior`: the eligible pair of largest key for each prior,
   ties to the lowest owner (GT) index; :func:`count_per_prior`.
4. **scatter** -- :func:`scatter_to_priors`: the value of each prior's chosen pair.

Pair lists have data-dependent sizes: building them (and finding the tied rows of ``"torch"`` ranking)
reads sizes on the host, a sync on CUDA; :func:`rank_in_segments` and steps 3 and 4 never do (``index_add`` /
``scatter_reduce``, no ``bincount`` or ``nonzero``). For accelerator paths that must not synchronise
(CUDA graphs) the same steps run on dense ``[B, g, A]`` blocks of GTs with static shapes:
:func:`topk_dense` ranks them and :class:`PriorSummary` is step 3 folded over the blocks.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["GridLevel", "detect_grid", "grid_cells", "GridRuns", "grid_runs", "enumerate_cells", "Candidates",
           "plan_candidates", "rank_in_segments", "topk_in_segments", "topk_indices_in_segments", "reference_topk",
           "topk_dense", "count_per_prior", "best_per_prior", "scatter_to_priors", "PriorSummary"]

TIE_BREAKS = ("index", "torch")


# ----------------------------------------------------------------------------- priors laid out as grids
class GridLevel(NamedTuple):
    """One pyramid level laid out row-major: prior ``start + iy * width + ix`` sits at
    ``((ix + offset) * stride, (iy + offset) * stride)``."""

    start: int
    width: int
    height: int
    stride: float
    offset: float


def _level_shape(pts: Tensor, start: int, stride: float, last: bool) -> Optional[Tuple[int, int]]:
    """Width and height of the row-major grid level beginning at ``start`` (host tensor [A, 2])."""
    y = pts[start:, 1]
    new_row = torch.nonzero(y != y[0])
    width = int(new_row[0, 0]) if len(new_row) else len(y)
    if width == 0:
        return None
    if last:
        return (width, len(y) // width) if len(y) % width == 0 else None
    starts = pts[start::width]
    expected_y = pts[start, 1] + stride * torch.arange(len(starts), dtype=pts.dtype)
    ok = (starts[:, 0] == pts[start, 0]) & ((starts[:, 1] - expected_y).abs() <= 1e-3 * stride)
    bad = torch.nonzero(~ok)
    height = int(bad[0, 0]) if len(bad) else len(starts)
    return (width, height) if height else None


def _level_points(level: GridLevel, like: Tensor) -> Tensor:
    """The points of one level, [h * w, 2], computed as ``(index + offset) * stride``."""
    xs = (torch.arange(level.width, device=like.device, dtype=like.dtype) + level.offset) * level.stride
    ys = (torch.arange(level.height, device=like.device, dtype=like.dtype) + level.offset) * level.stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).reshape(-1, 2)


_RECENT_GRIDS: "OrderedDict[tuple, Tuple[Tensor, Optional[List[GridLevel]]]]" = OrderedDict()
_RECENT_GRIDS_KEPT = 4
_RECENT_GRIDS_LOCK = threading.Lock()


def detect_grid(points: Tensor, strides: Optional[Sequence[float]]) -> Optional[List[GridLevel]]:
    """Recognise concatenated row-major grids of prior points (ultralytics ``make_anchors`` layout,
    mmdet's point generators with offset 0.5).

    points [A, 2] in pixels, strides per level in layout order -> levels, or None when the points are
    not exactly such grids. The guess is verified by rebuilding every point and comparing for exact
    equality, so a wrong guess can never change a result. Reads the points on the host (a sync).

    A head's anchor points are the same every step (ultralytics rebuilds them each forward): the last few
    layouts are remembered with a copy of their points, and points equal to a remembered copy (one
    ``torch.equal``) get its answer without the detection.
    """
    if not strides or points.shape[0] == 0:
        return None
    if points.device.type == "meta":          # no values to read
        return None
    key = (tuple(float(s) for s in strides), tuple(points.shape), points.dtype, points.device)
    with _RECENT_GRIDS_LOCK:
        recent = _RECENT_GRIDS.get(key)
    if recent is not None and torch.equal(recent[0], points):
        return None if recent[1] is None else list(recent[1])
    levels = _detect_grid(points, strides)
    with _RECENT_GRIDS_LOCK:
        _RECENT_GRIDS[key] = (points.detach().clone(), None if levels is None else list(levels))
        while len(_RECENT_GRIDS) > _RECENT_GRIDS_KEPT:
            _RECENT_GRIDS.popitem(last=False)
    return levels


def _detect_grid(points: Tensor, strides: Sequence[float]) -> Optional[List[GridLevel]]:
    """:func:`detect_grid` without its memory of recent layouts."""
    pts = points.detach().to("cpu", torch.float64)
    levels, start = [], 0
    for i, stride in enumerate(strides):
        if start >= len(pts):
            return None
        shape = _level_shape(pts, start, float(stride), last=i == len(strides) - 1)
        if shape is None:
            return None
        levels.append(GridLevel(start, shape[0], shape[1], float(stride), float(pts[start, 0]) / float(stride)))
        start += shape[0] * shape[1]
    if start != len(pts):
        return None
    rebuilt = torch.cat([_level_points(lv, points) for lv in levels])
    return levels if torch.equal(rebuilt, points) else None


def grid_cells(levels: List[GridLevel], windows: Tensor) -> Tuple[Tensor, Tensor]:
    """Grid cells whose point may lie in per-level windows.

    windows [G, L, 4] xyxy -> (lo [G, L, 2] first cell (ix, iy), n [G, L, 2] cells along x and y, 0 where
    the window misses the level). The rectangle ``ceil(x1 / s - o) .. floor(x2 / s - o)`` is widened by a
    relative 1e-6 (computed in float64), so it is a superset of the points in the window, whatever
    the rounding of the caller's exact test.
    """
    device = windows.device
    stride = torch.tensor([lv.stride for lv in levels], dtype=torch.float64, device=device)       # [L]
    offset = torch.tensor([lv.offset for lv in levels], dtype=torch.float64, device=device)
    size = torch.tensor([[lv.width, lv.height] for lv in levels], device=device)                   # [L, 2]
    cells = windows.double() / stride[None, :, None] - offset[None, :, None]                        # [G, L, 4]
    tol = 1e-6 * cells.abs().clamp(min=1.0)
    lo = torch.ceil(cells[..., :2] - tol[..., :2]).clamp(min=-1, max=2**40).long().clamp(min=0)
    hi = torch.minimum(torch.floor(cells[..., 2:] + tol[..., 2:]).clamp(min=-1, max=2**40).long(), size - 1)
    return lo, (hi - lo + 1).clamp(min=0)


class GridRuns(NamedTuple):
    """The pairs of per-row cell rectangles (:func:`grid_cells`) as runs of consecutive priors: one run per
    (row, level, grid row) that holds cells, ordered by row, then level (layout order), then grid row, so
    that their concatenation is ordered by row then ascending prior. Built once by :func:`grid_runs` for
    every row; :meth:`pairs` expands the runs of any slice of rows.

    Each pair output is a running sum of per-pair steps: +1 along a run, a jump at each run's first pair
    (``prior_jump``: from the previous run's last prior; ``row_jump``: from the previous run's row).
    """

    prior_jump: Tensor        # [R]
    row_jump: Tensor          # [R]
    pair_start: Tensor        # [R] the run's first pair among all pairs
    first_prior: Tensor       # [R] the run's first prior (the jump to use where a slice begins)
    row: Tensor               # [R] the run's row
    runs_before: List[int]    # [G + 1] runs of the rows before each row (host)
    pairs_before: List[int]   # [G + 1] pairs of the rows before each row (host)

    def pairs(self, first: int, stop: int) -> Tuple[Tensor, Tensor]:
        """(row [P] in [first, stop), prior [P]) of rows ``first .. stop - 1``. No sync."""
        r0, r1 = self.runs_before[first], self.runs_before[stop]
        num = self.pairs_before[stop] - self.pairs_before[first]
        device = self.row.device
        prior = torch.ones(num, dtype=torch.long, device=device)
        row = torch.zeros(num, dtype=torch.long, device=device)
        if num == 0:
            return row, prior
        at = self.pair_start[r0:r1] - self.pairs_before[first]
        prior.index_put_((at,), self.prior_jump[r0:r1])
        row.index_put_((at,), self.row_jump[r0:r1])
        prior[:1] = self.first_prior[r0:r0 + 1]     # the slice starts from 0, not from the previous run
        row[:1] = self.row[r0:r0 + 1]
        return row.cumsum_(0), prior.cumsum_(0)


def grid_runs(levels: List[GridLevel], lo: Tensor, n: Tensor, row_offset: Optional[Tensor] = None) -> GridRuns:
    """The cell rectangles from :func:`grid_cells` as :class:`GridRuns`.

    lo, n [G, L, 2]; row_offset [G] (optional) added to each row's priors (``b * A``: flat batch priors).
    All per-run work is done here once, so expanding a block of rows costs two fills, two scatters of its
    runs' jumps and two in-place cumulative sums. One host sync (the per-row run and pair counts).
    """
    device = lo.device
    G, L = lo.shape[:2]
    width = torch.tensor([lv.width for lv in levels], device=device)
    start = torch.tensor([lv.start for lv in levels], device=device)
    nx, ny = n[..., 0].reshape(-1), n[..., 1].reshape(-1)
    ny = torch.where(nx > 0, ny, torch.zeros_like(ny))                                 # no empty grid rows
    base = start + lo[..., 1] * width + lo[..., 0]                                     # [G, L] first prior
    if row_offset is not None:
        base = base + row_offset[:, None]
    base, pitch = base.reshape(-1), width.expand(G, L).reshape(-1)
    # one run per (row, level, grid row) holding cells: R of them, each of length > 0
    seg = torch.repeat_interleave(torch.arange(G * L, device=device), ny)             # [R]
    dy = torch.arange(seg.shape[0], device=device) - (torch.cumsum(ny, 0) - ny).index_select(0, seg)
    first_prior = base.index_select(0, seg) + dy * pitch.index_select(0, seg)         # [R]
    length = nx.index_select(0, seg)
    row = torch.div(seg, L, rounding_mode="floor")
    pair_start = torch.cumsum(length, 0) - length
    last = first_prior + length - 1
    prior_jump = first_prior - torch.cat((last.new_zeros(1), last[:-1]))
    row_jump = row - torch.cat((row.new_zeros(1), row[:-1]))
    per_row = torch.stack((ny.view(G, L).sum(1), (nx * ny).view(G, L).sum(1)))            # [2, G] runs, pairs
    runs_before, pairs_before = torch.cat((per_row.new_zeros(2, 1), per_row.cumsum(1)), 1).tolist()  # host sync
    return GridRuns(prior_jump, row_jump, pair_start, first_prior, row, runs_before, pairs_before)


def enumerate_cells(levels: List[GridLevel], lo: Tensor, n: Tensor,
                    row_offset: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Every (row, prior) of the cell rectangles from :func:`grid_cells`: lo, n [G, L, 2]; row_offset [G]
    (optional) added to each row's priors -> (row [P] in [0, G), prior [P]) ordered by row then ascending
    prior. One host sync."""
    return grid_runs(levels, lo, n, row_offset).pairs(0, lo.shape[0])


class Candidates(NamedTuple):
    """Where the candidate priors of each GT row are looked for: grid cells under per-level windows
    (``levels`` and their :class:`GridRuns`), or every prior (``levels`` None)."""

    levels: Optional[List[GridLevel]]
    runs: Optional[GridRuns]
    num_rows: int
    num_priors: int
    device: torch.device
    row_offset: Optional[Tensor]

    def blocks(self, max_pairs: int) -> List[slice]:
        """Consecutive slices of whole rows, each of at most ``max_pairs`` enumerated pairs where a single
        row allows it. No sync (the grid form read its pair counts when it was planned)."""
        if self.levels is None:
            step = max(1, max_pairs // max(self.num_priors, 1))
            return [slice(lo, min(lo + step, self.num_rows)) for lo in range(0, self.num_rows, step)]
        before = self.runs.pairs_before
        blocks, first = [], 0
        for i in range(1, self.num_rows):
            if before[i + 1] - before[first] > max_pairs:
                blocks.append(slice(first, i))
                first = i
        if first < self.num_rows:
            blocks.append(slice(first, self.num_rows))
        return blocks

    def pairs(self, rows: slice = slice(None)) -> Tuple[Tensor, Tensor]:
        """The enumerated pairs of ``rows``: (row [P] in [rows.start, rows.stop), prior [P]), ordered by
        row then ascending prior; a superset of the candidates that the caller's exact test filters.
        The priors include the ``row_offset`` of the plan (``b * A`` gives flat batch priors)."""
        first, stop, _ = rows.indices(self.num_rows)
        stop = max(stop, first)
        if self.levels is None:
            num, A = stop - first, self.num_priors
            row = torch.arange(first, stop, device=self.device).repeat_interleave(A)
            prior = torch.arange(A, device=self.device).repeat(num)
            if self.row_offset is not None:
                prior += self.row_offset[first:stop].repeat_interleave(A)
            return row, prior
        return self.runs.pairs(first, stop)


def plan_candidates(levels: Optional[List[GridLevel]], windows: Tensor, num_priors: int,
                    row_offset: Optional[Tensor] = None) -> Candidates:
    """Step 1 of a dense assigner: the search plan of each GT's candidates.

    levels: from :func:`detect_grid` (None: priors in no known layout, every prior is enumerated);
    windows [G, 4] or [G, L, 4] xyxy: per GT row (and level) the region that holds the points of all its
    candidates (the GT box for a centre-in-box test; the GT widened by how far predicted boxes reach
    for a box-intersection test); row_offset [G] (optional): added to each row's priors. The caller
    filters :meth:`Candidates.pairs` with its exact test. One host sync on the grid form.
    """
    if levels is None:
        return Candidates(None, None, windows.shape[0], num_priors, windows.device, row_offset)
    if windows.dim() == 2:
        windows = windows[:, None, :].expand(-1, len(levels), -1)
    lo, n = grid_cells(levels, windows)
    return Candidates(levels, grid_runs(levels, lo, n, row_offset), windows.shape[0], num_priors, windows.device,
                      row_offset)


# ----------------------------------------------------------------------------- rank per GT
def _segment_order(segment: Tensor, key: Tensor, nonnegative: bool, sorted_segments: bool) -> Tuple[Tensor, Tensor]:
    """The elements ordered by segment, then key descending, then position: (perm [P], the segment at
    each sorted position [P]). See :func:`rank_in_segments` for ``nonnegative`` and ``sorted_segments``."""
    if nonnegative and key.dtype == torch.float32:
        bits = (key + 0.0).view(torch.int32)                  # + 0.0 turns -0.0 into +0.0
        packed = (segment * 2**31).sub_(bits).add_(2**31 - 1)  # segment major, key descending
        perm = torch.sort(packed, stable=True).indices
        return perm, (segment if sorted_segments else segment.index_select(0, perm))
    by_key = torch.sort(key, descending=True, stable=True).indices
    perm = by_key.index_select(0, torch.sort(segment.index_select(0, by_key), stable=True).indices)
    return perm, segment.index_select(0, perm)


def _leading(sorted_segment: Tensor, k: int) -> Tensor:
    """[P] bool: the position is among the first k of its segment. sorted_segment [P] non-decreasing:
    position i is within the first k of its run exactly when position i - k lies in an earlier run."""
    lead = torch.ones_like(sorted_segment, dtype=torch.bool)
    if k < sorted_segment.numel():
        torch.ne(sorted_segment[k:], sorted_segment[:-k], out=lead[k:])
    return lead


def rank_in_segments(segment: Tensor, key: Tensor, num_segments: int, nonnegative: bool = False,
                     sorted_segments: bool = False) -> Tensor:
    """Rank of each element inside its segment by ``key`` descending, ties to the earlier element.

    segment [P] long in [0, num_segments), key [P] (no NaN) -> rank [P] long (0 = best). On a pair list
    ordered by row then prior, "earlier" is "lower prior index". With ``nonnegative`` (the caller
    guarantees key >= 0) a float32 key is packed with its segment into one int64 (the bits of a
    non-negative float order like the float), so one stable sort suffices; otherwise two.
    ``sorted_segments``: the caller guarantees ``segment`` is non-decreasing (a pair list), so the sorted
    order has the same segment at every position and it need not be gathered. No sync.
    """
    if segment.numel() == 0:
        return torch.zeros_like(segment)
    perm, sorted_segments_at = _segment_order(segment, key, nonnegative, sorted_segments)
    # index_add instead of bincount, which reads the maximum on the host (a sync on CUDA)
    counts = torch.zeros(num_segments, dtype=torch.long, device=segment.device).index_add_(
        0, segment, segment.new_ones(1).expand(segment.numel()))
    first = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(segment.numel(), device=segment.device).sub_(first.index_select(0, sorted_segments_at))
    return torch.empty_like(segment).index_copy_(0, perm, rank_sorted)


def topk_in_segments(segment: Tensor, key: Tensor, num_segments: int, k: int, tie_break: str = "index",
                     column: Optional[Tensor] = None, num_columns: int = 0, max_elems: int = 1 << 26,
                     sorted_segments: bool = False) -> Tensor:
    """The k largest keys of each segment as a mask [P] bool; segment [P] long, key [P] >= 0, no NaN.

    ``tie_break="index"``: equal keys go to the earlier element (the lowest prior on a pair list).
    ``"torch"``: the elements ``torch.topk(row, k)`` keeps on the dense rows ``[num_segments,
    num_columns]`` holding ``key`` at (segment, column) and 0 elsewhere, i.e. what a reference that
    builds those rows computes, ties included (:func:`reference_topk`; needs ``column``).
    """
    if tie_break == "index":
        perm, sorted_segment = _segment_order(segment, key, True, sorted_segments)
        lead = _leading(sorted_segment, k)
        return torch.empty_like(lead).index_copy_(0, perm, lead)
    if column is None:
        raise ValueError("tie_break='torch' needs the pairs' column (prior) indices")
    return reference_topk(segment, column, key, num_segments, num_columns, k, max_elems)


def topk_indices_in_segments(segment: Tensor, key: Tensor, k: int, sorted_segments: bool = False) -> Tensor:
    """The positions [K] of the k largest keys of each segment (ties to the earlier element, as
    ``topk_in_segments(..., tie_break="index")``), segment by segment, best first. segment [P] long,
    key [P] >= 0, no NaN. For callers that keep only the chosen elements: no [P] mask is built. One host
    sync (the count)."""
    perm, sorted_segment = _segment_order(segment, key, True, sorted_segments)
    return perm.index_select(0, torch.nonzero(_leading(sorted_segment, k)).squeeze(1))


def reference_topk(segment: Tensor, column: Tensor, values: Tensor, num_segments: int, num_columns: int, k: int,
                   max_elems: int) -> Tensor:
    """The entries ``torch.topk`` would keep, with the references' tie order, from sparse rows.

    The rows are dense ``[num_segments, num_columns]`` with ``values`` at (segment, column) and 0
    elsewhere (ultralytics' TAL metric rows). segment [P] long, column [P] long (distinct within a
    segment), values [P] >= 0 and not NaN -> [P] bool: entry kept by ``torch.topk(row, k)``.

    Where the top-k set is unique it is read off a stable rank, with no dense row. It is not unique
    when the k-th largest value of the row is tied with more values than the slots left for it and
    an entry is among them: usually a GT whose top-k reaches zero metrics while some of its
    candidates have metric 0 (they tie with every non-candidate prior). Only those rows are rebuilt
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
    count = torch.zeros(num_segments, dtype=torch.long, device=device).index_add_(0, segment, torch.ones_like(segment))
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


def topk_dense(values: Tensor, k: int, tie_break: str = "index") -> Tensor:
    """Per-row top-k of dense rows as a mask. values [..., A] -> [..., A] bool.

    ``"index"``: ties go to the lowest index; entries < 0 (padding such as -1 or -inf) rank below every
    entry >= 0. A float32 row is packed with its reversed column into int64 keys, so one
    ``torch.topk`` decides the ties too; other dtypes take the threshold-and-cumsum route.
    ``"torch"``: ``torch.topk``'s own choice (unspecified among ties and device-dependent: what the
    references use). Static shapes, no sync.
    """
    k = min(k, values.shape[-1])
    empty = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if k == 0:
        return empty
    if tie_break == "torch":
        return empty.scatter_(-1, torch.topk(values, k, dim=-1).indices, True)
    if values.dtype == torch.float32:
        col = torch.arange(values.shape[-1], device=values.device)
        bits = (values + 0.0).view(torch.int32)                  # + 0.0 turns -0.0 into +0.0
        key = torch.where(values >= 0, bits, -1).long() * 2**32 + (2**32 - 1 - col)
        return empty.scatter_(-1, torch.topk(key, k, dim=-1).indices, True)
    kth = torch.topk(values, k, dim=-1).values[..., -1:]
    greater, equal = values > kth, values == kth
    # everything above the k-th value, then the first (lowest-index) elements equal to it
    return greater | (equal & (torch.cumsum(equal, -1) <= k - greater.sum(-1, keepdim=True)))


# ----------------------------------------------------------------------------- best per prior, scatter
def count_per_prior(prior: Tensor, flag: Tensor, num_priors: int) -> Tensor:
    """How many flagged pairs each prior has. prior [P] in [0, N), flag [P] bool -> [N] long."""
    return torch.zeros(num_priors, dtype=torch.long, device=prior.device).index_add_(0, prior, flag.long())


def best_per_prior(prior: Tensor, key: Optional[Tensor], owner: Tensor, num_priors: int, num_owners: int,
                   eligible: Optional[Tensor] = None) -> Tuple[Optional[Tensor], Tensor]:
    """For each prior, the eligible pair with the largest key, ties to the lowest owner.

    prior [P] in [0, N), key [P] float (no NaN; None: all equal, i.e. the lowest eligible owner), owner
    [P] long in [0, num_owners) (e.g. the GT index), eligible [P] bool (None: all) -> (best [N] key, -inf
    where the prior has no eligible pair, None without key; winner [N] owner, ``num_owners`` where
    none). One or two scatter reductions, no sync.
    """
    if eligible is None:
        eligible = torch.ones_like(prior, dtype=torch.bool)
    winner = torch.full((num_priors,), num_owners, dtype=torch.long, device=prior.device)
    if key is None:
        return None, winner.scatter_reduce_(0, prior, torch.where(eligible, owner, num_owners), "amin")
    best = torch.full((num_priors,), float("-inf"), dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, prior, key.masked_fill(~eligible, float("-inf")), "amax")
    at_best = eligible & (key == best.index_select(0, prior))
    return best, winner.scatter_reduce_(0, prior, torch.where(at_best, owner, num_owners), "amin")


def scatter_to_priors(prior: Tensor, values: Tensor, chosen: Tensor, num_priors: int) -> Tensor:
    """The value of each prior's chosen pair (at most one per prior), 0 where none.
    prior [P], values [P], chosen [P] bool -> [N]."""
    out = torch.zeros(num_priors, dtype=values.dtype, device=values.device)
    return out.index_add_(0, prior, values.masked_fill(~chosen, 0))


# ----------------------------------------------------------------------------- static-shape form of step 3
class PriorSummary(NamedTuple):
    """Running per-prior summary over dense blocks of owners (GTs) taken in order; every field [B, A].

    The static-shape form of :func:`count_per_prior` + :func:`best_per_prior` for paths that must not
    synchronise: ``count`` selected pairs so far; ``first`` the lowest selecting owner and its
    ``first_values``; ``best`` the largest key so far (-inf before any) and ``winner`` the first owner
    reaching it with its ``winner_values``. ``values`` are per-pair payloads carried along (e.g. metric
    and overlap), so the chosen pair's values need no second pass.
    """

    count: Tensor
    first: Tensor
    first_values: Tuple[Tensor, ...]
    best: Tensor
    winner: Tensor
    winner_values: Tuple[Tensor, ...]

    @classmethod
    def empty(cls, B: int, A: int, num_values: int, dtype: torch.dtype, device: torch.device) -> "PriorSummary":
        zero_l = torch.zeros(B, A, dtype=torch.long, device=device)
        zeros = tuple(torch.zeros(B, A, dtype=dtype, device=device) for _ in range(num_values))
        return cls(zero_l, zero_l, zeros, torch.full((B, A), float("-inf"), dtype=dtype, device=device), zero_l, zeros)

    def fold(self, first_owner: int, selected: Tensor, key: Tensor, values: Sequence[Tensor]) -> "PriorSummary":
        """Fold owners ``first_owner .. first_owner + g - 1``: selected [B, g, A] bool, key [B, g, A] (-inf
        where a pair may not win), values [B, g, A] each. Ties go to the lowest owner: ``argmax`` / ``max``
        return the first maximal index, and a later block replaces the running best only when greater."""
        n = selected.sum(1)                                                            # [B, A]
        f = selected.to(torch.uint8).argmax(1, keepdim=True)                          # first True
        take_first = (self.count == 0) & (n > 0)
        best, idx = key.max(1, keepdim=True)
        better = best.squeeze(1) > self.best
        return PriorSummary(
            self.count + n,
            torch.where(take_first, f.squeeze(1) + first_owner, self.first),
            tuple(torch.where(take_first, v.gather(1, f).squeeze(1), old) for v, old in zip(values, self.first_values)),
            torch.where(better, best.squeeze(1), self.best),
            torch.where(better, idx.squeeze(1) + first_owner, self.winner),
            tuple(torch.where(better, v.gather(1, idx).squeeze(1), old) for v, old in zip(values, self.winner_values)),
        )
