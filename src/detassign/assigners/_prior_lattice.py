"""Detect that priors form regular per-level grids, and enumerate the grid cells a box can touch.

Anchor generators lay priors out level by level, and within a level row-major over the feature map
with ``R`` anchors per location: prior ``base + (i * W + j) * R + r``. Such a block is a *lattice*
when, for every anchor slot ``r``, the x-extent of a prior depends only on its column ``j`` and the
y-extent only on its row ``i``, with both extents non-decreasing along their axis. Then the priors
whose x-interval can overlap a box form one contiguous column range (found by binary search) and the
same holds for rows, so the candidates of a box are a rectangle of cells per slot.

The detection is exact: every prior of every block is compared with the product structure it is
assumed to have, so any decomposition returned describes the priors exactly, whatever they are.
Candidate rectangles are supersets of the priors whose box overlaps with positive width and height
(the comparisons are the necessary conditions ``prior.x1 < box.x2`` and ``prior.x2 > box.x1`` in
the compute dtype), which is what the sparse assignment paths rely on for bit-exactness.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["LatticeSlot", "cpu_boxes_valid", "detect_lattice", "lattice_rectangles", "enumerate_rectangles",
           "segment_ids", "searchsorted"]

# Beyond this many blocks or slots the priors are not a pyramid of grids (random boxes decompose into
# single-prior slots): give up quickly, the dense path is the right one then.
MAX_BLOCKS = 16
MAX_SLOTS = 64


class LatticeSlot(NamedTuple):
    """One anchor slot ``r`` of one block: prior index ``base + (i * W + j) * R + r``.

    x1, x2: [W] column extents; y1, y2: [H] row extents (non-decreasing, on the priors' device).
    """
    base: int
    R: int
    r: int
    H: int
    W: int
    x1: Tensor
    x2: Tensor
    y1: Tensor
    y2: Tensor


def _block_at(p: np.ndarray, s: int):
    """Largest lattice block starting at prior ``s`` of p [A, 4] -> (R, H, W) or None."""
    A = p.shape[0]
    # R: distance to the next column's prior of the same slot -- the first prior on the same row extent
    # (y1, y2 equal) lying strictly to the right (x1 and x2 larger). Widths may differ in the last bit
    # between cells (base anchor + shift rounding), so they are not compared.
    ahead = p[s + 1:s + 1 + MAX_SLOTS]
    same_slot = np.nonzero((ahead[:, 1] == p[s, 1]) & (ahead[:, 3] == p[s, 3]) &
                           (ahead[:, 0] > p[s, 0]) & (ahead[:, 2] > p[s, 2]))[0]
    R = int(same_slot[0]) + 1 if len(same_slot) else A - s
    first = p[s::R]
    new_row = np.nonzero(first[1:, 1] != first[0, 1])[0]
    W = min(int(new_row[0]) + 1 if len(new_row) else len(first), (A - s) // R)
    if W == 0:
        return None
    rows = (A - s) // (R * W)
    if rows == 0:
        return None
    grid = p[s:s + rows * W * R].reshape(rows, W, R, 4)
    same_x = (grid[:, :, :, [0, 2]] == grid[:1, :, :, [0, 2]]).all(axis=(1, 2, 3))
    same_y = (grid[:, :, :, [1, 3]] == grid[:, :1, :, [1, 3]]).all(axis=(1, 2, 3))
    ok = same_x & same_y
    H = int(np.argmin(ok)) if not ok.all() else rows
    if H == 0:
        return None
    ys = grid[:H, 0]                                              # [H, R, 4]
    falling = np.nonzero((np.diff(ys[:, :, [1, 3]], axis=0) < 0).any(axis=(1, 2)))[0]
    if len(falling):
        H = int(falling[0]) + 1                                   # rows must not go back up
    xs = grid[0]                                                  # [W, R, 4]
    if (np.diff(xs[:, :, [0, 2]], axis=0) < 0).any():
        return None
    return R, H, W


def cpu_boxes_valid(boxes: Tensor) -> bool:
    """True when CPU float boxes [..., 4] are finite with x1 <= x2 and y1 <= y2, tested in numpy.

    The test of ``_validate.check_boxes`` (callers still run that one, which raises the detailed error,
    whenever this is not True) on the calling thread: anchor sets are just above the size at which torch's
    elementwise ops wake the thread pool, and on a busy machine that wake-up costs more than a whole
    sparse assignment step.
    """
    if boxes.device.type != "cpu" or boxes.dtype not in (torch.float32, torch.float64) or boxes.shape[-1] != 4:
        return False
    b = boxes.detach().numpy()
    return bool(np.isfinite(b).all() and (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all())


def detect_lattice(priors: Tensor) -> Optional[List[LatticeSlot]]:
    """priors [A, 4] xyxy (A >= 1) -> the lattice slots covering every prior in order, or None.

    Runs on the host (one copy for accelerator tensors); None when the priors are not a short list
    of grids, e.g. proposals or shuffled anchors.
    """
    p = priors.detach().cpu().numpy()
    if not np.isfinite(p).all():
        return None
    slots, s = [], 0
    while s < p.shape[0]:
        block = _block_at(p, s)
        if block is None or len(slots) >= MAX_BLOCKS:
            return None
        R, H, W = block
        if len(slots) + R > MAX_SLOTS:
            return None
        for r in range(R):
            cells = priors[s + r:s + H * W * R:R]
            slots.append(LatticeSlot(s, R, r, H, W, cells[:W, 0].contiguous(), cells[:W, 2].contiguous(),
                                     cells[::W, 1].contiguous(), cells[::W, 3].contiguous()))
        s += R * H * W
    return slots


# torch.searchsorted hands more than 200 values to the thread pool (its grain size), which for these
# small searches costs far more than the search itself (milliseconds on a busy machine).
SEARCH_PIECE = 199


def searchsorted(sorted_values: Tensor, values: Tensor, right: bool = False) -> Tensor:
    """``torch.searchsorted`` for a 1-D sorted sequence and 1-D values, in pieces small enough to run on the
    calling thread (CPU); one call elsewhere. [W], [N] -> [N] long."""
    if values.device.type != "cpu" or values.numel() <= SEARCH_PIECE:
        return torch.searchsorted(sorted_values, values, right=right)
    return torch.cat([torch.searchsorted(sorted_values, piece, right=right) for piece in values.split(SEARCH_PIECE)])


def lattice_rectangles(slots: List[LatticeSlot], boxes: Tensor):
    """Cell rectangles of each slot a box can overlap. boxes [G, 4] -> (i0, ni, j0, nj) each [S, G] long.

    Columns ``j0 <= j < j0 + nj`` are those with ``x1[j] < box.x2`` and ``x2[j] > box.x1``; rows alike.
    """
    i0, ni, j0, nj = [], [], [], []
    bx1, by1, bx2, by2 = (boxes[:, k].contiguous() for k in range(4))
    for slot in slots:
        lo = searchsorted(slot.x2, bx1, right=True)
        hi = searchsorted(slot.x1, bx2)
        j0.append(lo)
        nj.append((hi - lo).clamp_(min=0))
        lo = searchsorted(slot.y2, by1, right=True)
        hi = searchsorted(slot.y1, by2)
        i0.append(lo)
        ni.append((hi - lo).clamp_(min=0))
    return torch.stack(i0), torch.stack(ni), torch.stack(j0), torch.stack(nj)


def segment_ids(counts: Tensor, starts: Tensor, total: int) -> Tensor:
    """``repeat_interleave(arange(N), counts)`` by a cumulative sum. counts, starts [N] long -> [total] long.

    Written out because ``repeat_interleave`` hands even small inputs to the thread pool, whose wake-up
    costs more than the work when the machine is busy; this is a fill, a small scatter and a scan.
    """
    nonempty = counts.nonzero().squeeze(1)                                     # ascending segment ids
    step = torch.diff(nonempty, prepend=nonempty.new_zeros(1))                 # id increase at each start
    marks = torch.zeros(total, dtype=torch.long, device=counts.device)
    return marks.index_copy_(0, starts.index_select(0, nonempty), step).cumsum_(0)


def enumerate_rectangles(slots: List[LatticeSlot], i0: Tensor, ni: Tensor, j0: Tensor, nj: Tensor,
                         max_pairs: Optional[int] = None, image_offset: Optional[Tensor] = None):
    """Every (box, prior) pair of the rectangles, one row of cells at a time.

    i0, ni, j0, nj [S, G] (``lattice_rectangles``); image_offset [G] long is added to every prior index
    of the box's pairs (e.g. ``b * A`` to index a flattened batch). Returns (seg_box [N], seg [P],
    prior [P]): pair p belongs to row segment ``seg[p]`` of box ``seg_box[seg[p]]`` and prior
    ``prior[p]`` (+ offset). None when there would be more than ``max_pairs`` pairs (one host
    synchronisation reads the count, another the longest column).
    """
    S, G = ni.shape
    device = ni.device
    rows = int(ni.max()) if ni.numel() else 0
    k = torch.arange(rows, device=device)                                      # [rows]
    counts = torch.where(k < ni[..., None], nj[..., None], 0).reshape(-1)       # [S * G * rows]
    total = int(counts.sum())
    if max_pairs is not None and total > max_pairs:
        return None
    pair_start = torch.cumsum(counts, 0) - counts
    table = torch.tensor([[s.base + s.r, s.R, s.W] for s in slots], dtype=torch.long, device=device)
    first, R, W = (table[:, c, None, None] for c in range(3))                  # [S, 1, 1]
    cell = (i0[..., None] + k).mul_(W).add_(j0[..., None])                      # [S, G, rows] first cell of the row
    if image_offset is not None:
        first = first + image_offset[:, None]
    seg = segment_ids(counts, pair_start, total)                               # [P] row segment of each pair
    seg_box = torch.arange(G, device=device)[:, None].expand(S, G, rows).reshape(-1)
    if all(s.R == 1 for s in slots):
        # prior = first + cell + t with t = p - pair_start: one gathered offset per pair
        offset = cell.add_(first).reshape(-1).sub_(pair_start)
        prior = torch.arange(total, device=device).add_(offset.index_select(0, seg))
    else:
        ints = torch.stack([cell.reshape(-1) - pair_start, R.expand_as(cell).reshape(-1),
                            first.expand_as(cell).reshape(-1)]).index_select(1, seg)   # [3, P]
        prior = torch.arange(total, device=device).add_(ints[0]).mul_(ints[1]).add_(ints[2])
    return seg_box, seg, prior
