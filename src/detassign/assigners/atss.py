"""ATSSAssigner: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), per image and batched.

For every GT (the steps below are the functions of this module):

1. ``nearest_per_level``: on each pyramid level ``l`` take the ``k_l = min(topk, A_l)`` priors whose
   centers are nearest (Euclidean) to the GT center; ``K = sum_l k_l`` candidates per GT;
2. ``candidate_quality``: quality ``q`` of each candidate, ``IoU(prior, GT)``; in DDOD mode
   (``alpha`` set) ``q = sigmoid(logit[label]) ** (1 - alpha) * IoU(pred_box, GT) ** alpha``;
3. ``adaptive_threshold``: ``t = mean(q) + std(q)`` over the K candidates (unbiased std);
4. a candidate is positive when ``q >= t`` (``threshold_compare="ge"``, mmdet) or ``q > t``
   (``"gt"``, PaddleDetection) and its center is more than 0.01 px inside the GT on all four sides
   (:func:`detassign.boxes.aligned_points_in_boxes`);
5. ``resolve_by_quality``: a prior positive for several GTs goes to the one with the highest
   ``q`` (lowest GT index on ties).

Only the K candidates' qualities are computed (mmdet builds the full ``[A, M]`` matrix); the
values are the same bits, so assignments match mmdet 3.3.0 exactly.

mmdet behaviours reproduced (parity is the default):

* ``max_overlaps`` holds ``q`` of the assigned GT for positives and ``-1e8`` (mmdet's ``-INF``)
  for every other prior, but is all 0 when the image has no GT or no prior.
* Ignore regions (``ignore_iof_thr > 0`` and ``gt_instances_ignore.bboxes`` given): priors whose
  largest IoF with an ignore box is ``> ignore_iof_thr`` get ``gt_inds = -1`` and a center
  distance of 1e8. They are therefore picked as candidates only when a level has fewer than k
  other priors, and such a candidate still becomes positive if it passes steps 3-4 (as in mmdet).
  Ignore regions are not applied when the image has no GT.
* With a single candidate per GT (K == 1) the unbiased std is NaN and the GT gets no positive.

Deviations: ``num_level_priors`` must sum to the number of priors (mmdet silently never selects
the trailing priors otherwise); ``alpha`` must lie in [0, 1]; half-precision inputs are computed in
float32; ``iou_calculator`` is read as every assigner reads it
(:func:`~detassign.assigners.base.parse_iou_calculator`): with ``dtype="fp16"`` the candidates' boxes are
divided by ``scale`` and rounded to float16 before the IoU, which is computed in float32 (mmdet computes
it in float16). In DDOD mode ``x ** (1 - alpha)`` uses a vectorised ``pow`` whose last bit can depend on the element's
position in the tensor, so DDOD qualities agree with mmdet to about 1e-7, not bit for bit.

Batched form: :meth:`ATSSAssigner.assign_batch` (the batched interface) takes a
:class:`detassign.Priors` (its anchor ``boxes``, or squares of side ``octave_base_scale * stride``
centered on its points when it has none, mmdet's ATSS anchors; and its ``level_sizes``) and GTs padded to
``[B, M]`` with a mask, and runs without a Python loop over GTs (over the pyramid levels, and on CPU over
chunks of images when ``B * A`` exceeds 2**20, to bound memory); padded GTs
never influence the result and the output equals the per-image one. It takes no ignore regions.

Step 1 on grids (``grid_window``, default on CPU): when a level's priors form a row-major grid with
one prior per cell (detected exactly at call time, any spacing), the k nearest priors of a GT are
taken from a small square window of cells around its center instead of measuring the distance to
every prior of the level. The window result is used only where it provably equals mmdet's
``topk`` over the whole level: the window's k + 1 smallest distances (same arithmetic, so the same
bits) are strictly increasing, so neither the selection nor its order depends on how ``topk``
breaks ties, and the k-th lies below a lower bound of every distance outside the window. GTs with
distance ties (a center exactly between two or four cells, common with integer boxes) and levels
with several anchors per cell use the full computation, so results are always mmdet's.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import aligned_points_in_boxes, box_centers, compute_dtype, pairwise_iof
from ..structures import AssignResult, BatchAssignResult, as_priors, check_level_sizes
from ._batch import check_padded_gts
from ._prior_lattice import cpu_boxes_valid, detect_lattice, searchsorted
from .base import BaseAssigner, IoUCalculator, empty_assign_result, parse_iou_calculator

__all__ = ["ATSSAssigner", "THRESHOLD_COMPARES", "nearest_per_level", "candidate_quality", "adaptive_threshold",
           "resolve_by_quality"]

THRESHOLD_COMPARES = ("ge", "gt")
INF = 1e8             # mmdet's INF: distance of ignored priors, -INF sentinel in max_overlaps
INSIDE_MARGIN = 0.01  # a positive's center must be this far inside every side of its GT
# Batched on CPU: images per chunk so that [b, A] tensors stay within 2**20 elements, which bounds the
# [b, M, A_l] distance buffers of the full (non-grid) step 1. Smaller chunks were measured slower: the
# grid path's tensors are small anyway and the per-chunk call overhead adds up.
CPU_CHUNK = 2 ** 20


# ----------------------------------------------------------------------------- algorithm steps
class LevelGrid(NamedTuple):
    """One pyramid level whose priors form a row-major grid with one prior per cell.

    Prior ``start + i * W + j`` has center ``(cx[j], cy[i])``; cx [W] and cy [H] are non-decreasing.
    """
    start: int
    H: int
    W: int
    cx: Tensor
    cy: Tensor


def level_grids(priors: Tensor, num_level_priors: Sequence[int]) -> List[Optional[LevelGrid]]:
    """priors [A, 4] -> per level a LevelGrid, or None where the level is not one (exact detection)."""
    grids, start = [], 0
    for size in num_level_priors:
        slots = detect_lattice(priors[start:start + size]) if size > 0 else None
        grid = None
        if slots is not None and len(slots) == 1 and slots[0].R == 1:
            slot = slots[0]
            # the same expression as box_centers, on the per-column / per-row extents
            grid = LevelGrid(start, slot.H, slot.W, (slot.x1 + slot.x2) / 2, (slot.y1 + slot.y2) / 2)
        grids.append(grid)
        start += size
    return grids


def window_radius(k: int) -> int:
    """Half-width r such that a (2r + 2)-cell square window around a point's cell holds its k + 1 nearest
    cell centers on a regular grid: the cells closer than (r + 0.5) cells number at least
    pi * (r + 0.5 - 1 / sqrt(2)) ** 2 >= k + 1. Only a speed choice: the result is verified."""
    return max(1, math.ceil(math.sqrt((k + 1) / math.pi) + 0.21))


def _level_distances(px: Tensor, py: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """sqrt(dx^2 + dy^2), mmdet's arithmetic. px, py [..., A_l] or broadcastable, gx, gy [..., 1]."""
    dist = px - gx
    dy = py - gy
    return dist.mul_(dist).add_(dy.mul_(dy)).sqrt_()


def nearest_in_window(grid: LevelGrid, gx: Tensor, gy: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The k nearest priors of a LevelGrid from a window around each point. gx, gy [N] -> (index [N, k], ok [N]).

    ``ok`` is True where the result provably equals ``topk(k, largest=False)`` over the whole level: the
    window's k + 1 smallest distances are strictly increasing (no tie, so the selection and its order do
    not depend on the selection algorithm) and the k-th is below a lower bound of every distance outside
    the window. Requires a window of at least k + 1 cells.
    """
    r = window_radius(k)
    nw, nh = min(grid.W, 2 * r + 2), min(grid.H, 2 * r + 2)
    device = gx.device
    j0 = (searchsorted(grid.cx, gx) - (r + 1)).clamp_(min=0).clamp_(max=grid.W - nw)     # [N]
    i0 = (searchsorted(grid.cy, gy) - (r + 1)).clamp_(min=0).clamp_(max=grid.H - nh)
    cols = j0[:, None] + torch.arange(nw, device=device)                                       # [N, nw]
    rows = i0[:, None] + torch.arange(nh, device=device)                                       # [N, nh]
    dx = grid.cx[cols] - gx[:, None]
    dy = grid.cy[rows] - gy[:, None]
    squared = (dx * dx)[:, None, :] + (dy * dy)[:, :, None]                                   # [N, nh, nw]
    # Select on the squared distances and take the square root of the k + 1 selected only: sqrt is
    # monotone, so when their roots strictly increase, the k smallest roots of the window are these k.
    squared, flat = squared.view(len(gx), nh * nw).topk(k + 1, dim=1, largest=False)
    values = squared.sqrt_()
    ok = (values[:, 1:] > values[:, :-1]).all(dim=1)
    # Outside the window a prior lies beyond the first column / row past an edge of it, so its distance is
    # at least |dx| (or |dy|) to that column (row) -- computed with the same roundings, which are monotone.
    inf = torch.full_like(gx, float("inf"))
    bound = inf
    for centers, first, n, size, point in ((grid.cx, j0, nw, grid.W, gx), (grid.cy, i0, nh, grid.H, gy)):
        before = centers[(first - 1).clamp(min=0)] - point
        after = centers[(first + n).clamp(max=size - 1)] - point
        bound = torch.minimum(bound, torch.where(first > 0, (before * before).sqrt_(), inf))
        bound = torch.minimum(bound, torch.where(first + n < size, (after * after).sqrt_(), inf))
    ok &= values[:, k - 1] < bound
    flat = flat[:, :k]
    row = i0[:, None] + torch.div(flat, nw, rounding_mode="floor")
    col = j0[:, None] + flat % nw
    return grid.start + row * grid.W + col, ok


def nearest_per_level(prior_centers: Tensor, gt_centers: Tensor, num_level_priors: Sequence[int], topk: int,
                      ignored: Optional[Tensor] = None, grids: Optional[List[Optional[LevelGrid]]] = None,
                      gt_mask: Optional[Tensor] = None) -> Tensor:
    """Step 1. prior_centers [A, 2], gt_centers [B, M, 2] -> candidate prior indices [B, M, K].

    On each level the ``min(topk, A_l)`` nearest priors in increasing distance, levels in order.
    ``ignored`` [B, A] bool: those priors are placed at distance ``INF`` (mmdet).
    ``grids`` (from ``level_grids``, only without ``ignored``): on grid levels the candidates come from a
    small window around each GT center (``nearest_in_window``); GTs whose window result is not provably
    the full-level ``topk`` (distance ties, e.g. a center equidistant from two cells) and non-grid levels
    use the full computation, so the result is always that of the full computation. gt_mask [B, M] bool:
    rows that are False (padding) may get any in-range candidates (they are never used), which spares the
    full computation for padding boxes sitting on ties (all-zero boxes, for one).
    """
    B, M = gt_centers.shape[:2]
    # Contiguous coordinate vectors: strided operands make the broadcast subtraction several times slower.
    px, py = prior_centers[:, 0].contiguous(), prior_centers[:, 1].contiguous()                  # [A]
    gx, gy = gt_centers[..., 0, None].contiguous(), gt_centers[..., 1, None].contiguous()      # [B, M, 1]
    candidates, buffers = [], None
    start = 0
    for level, size in enumerate(num_level_priors):
        end = start + size
        k = min(topk, size)
        grid = None if grids is None or ignored is not None else grids[level]
        if grid is not None and k >= 1 and min(grid.W, 2 * window_radius(k) + 2) * \
                min(grid.H, 2 * window_radius(k) + 2) > k:
            index, ok = nearest_in_window(grid, gx.view(-1), gy.view(-1), k)                    # [B * M, k]
            if gt_mask is not None:
                ok |= ~gt_mask.reshape(-1)
            redo = (~ok).nonzero().squeeze(1)
            if len(redo):
                dist = _level_distances(px[start:end], py[start:end], gx.view(-1, 1)[redo], gy.view(-1, 1)[redo])
                index[redo] = dist.topk(k, dim=-1, largest=False).indices + start
            candidates.append(index.view(B, M, k))
        else:
            if buffers is None:
                # Two [B, M, widest] buffers reused by every level: fresh large allocations (page faults)
                # cost more than the arithmetic itself on CPU.
                widest = max(num_level_priors, default=0)
                buffers = prior_centers.new_empty(B, M, widest), prior_centers.new_empty(B, M, widest)
            # Same arithmetic as mmdet (sqrt of dx^2 + dy^2), so distance ties break identically.
            dist = torch.sub(px[start:end], gx, out=buffers[0][..., :size])
            dy = torch.sub(py[start:end], gy, out=buffers[1][..., :size])
            dist.mul_(dist).add_(dy.mul_(dy)).sqrt_()                                              # [B, M, A_l]
            if ignored is not None:
                dist.masked_fill_(ignored[:, None, start:end], INF)
            candidates.append(dist.topk(k, dim=-1, largest=False).indices + start)
        start = end
    return torch.cat(candidates, dim=-1)


def candidate_quality(cand_idx: Tensor, priors: Tensor, gt_bboxes: Tensor, gt_labels: Optional[Tensor] = None,
                      pred_scores: Optional[Tensor] = None, pred_bboxes: Optional[Tensor] = None,
                      alpha: Optional[float] = None, iou_calculator: Optional[IoUCalculator] = None) -> Tensor:
    """Step 2. cand_idx [B, M, K], priors [A, 4], gt_bboxes [B, M, 4] -> quality [B, M, K].

    ``alpha is None``: IoU(prior, GT). DDOD (``alpha`` set; gt_labels [B, M] valid class indices,
    pred_scores [B, A, C] logits, pred_bboxes [B, A, 4]):
    ``sigmoid(logit[label]) ** (1 - alpha) * IoU(pred_box, GT) ** alpha``. ``iou_calculator``: the
    assigner's (default: mmdet's BboxOverlaps2D).
    """
    B, M, K = cand_idx.shape
    iou = (iou_calculator or IoUCalculator()).aligned
    gt = gt_bboxes[:, :, None, :]                                       # [B, M, 1, 4]
    if alpha is None:
        return iou(priors[cand_idx], gt)
    flat = cand_idx.reshape(B, M * K)
    boxes = pred_bboxes.gather(1, flat[..., None].expand(-1, -1, 4)).view(B, M, K, 4)
    num_classes = pred_scores.shape[-1]
    score_idx = flat.view(B, M, K) * num_classes + gt_labels[:, :, None]   # index into [A * C]
    logits = pred_scores.reshape(B, -1).gather(1, score_idx.reshape(B, -1)).view(B, M, K)
    ious = iou(boxes, gt)
    return logits.sigmoid() ** (1 - alpha) * ious ** alpha


def adaptive_threshold(quality: Tensor) -> Tensor:
    """Step 3. quality [B, M, K] -> mean + unbiased std over the K candidates [B, M].

    Reduced over a [B, K, M] layout, the one mmdet reduces ([K, M]), so the summation order and
    hence the threshold's last bit are the same.
    """
    by_candidate = quality.transpose(1, 2).contiguous()   # [B, K, M]
    return by_candidate.mean(1) + by_candidate.std(1)


def resolve_by_quality(cand_idx: Tensor, quality: Tensor, is_pos: Tensor, gt_labels: Tensor, num_priors: int,
                       background: Optional[Tensor] = None, has_gt: Optional[Tensor] = None
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Step 5. cand_idx, quality, is_pos [B, M, K], gt_labels [B, M] -> gt_inds, labels, max_overlaps [B, A].

    A prior positive for several GTs goes to the highest quality, then the lowest GT index. gt_inds is
    1-based where positive, else ``background`` [B, A] (0 when None; -1 marks ignored priors); labels
    -1 for non-positives; ``max_overlaps`` the winning quality, ``-INF`` elsewhere, 0 on the rows of
    images without GT (``has_gt`` [B] False). Everything is scattered from the B * M * K candidates, so
    only the initial fills touch [B, A] (``_pairs.best_per_prior`` is the same rule, but makes several
    [B * A] passes: 2.4x slower here). A prior appears at most once in a GT's candidate list, so
    scattering by prior index never merges a GT with itself.
    """
    B, M, K = cand_idx.shape
    device = cand_idx.device
    A = num_priors
    image = (torch.arange(B, device=device) * A)[:, None]
    flat = (cand_idx.reshape(B, M * K) + image).reshape(-1)                                 # b * A + a
    pos = is_pos.reshape(-1)
    value = torch.where(pos, quality.reshape(-1), -INF)
    if has_gt is None:
        best = quality.new_full((B * A,), -INF)
    else:
        best = torch.where(has_gt, -INF, 0.0).to(quality.dtype)[:, None].expand(B, A).contiguous().view(-1)
    best.scatter_reduce_(0, flat, value, "amax")
    gt_id = torch.arange(M, device=device).view(1, M, 1).expand(B, M, K).reshape(-1)
    is_best = pos & (value == best.index_select(0, flat))
    winner = torch.full((B * A,), M, dtype=torch.long, device=device).scatter_reduce_(
        0, flat, torch.where(is_best, gt_id, M), "amin")
    win = is_best & (gt_id == winner.index_select(0, flat))                                # one per positive prior
    gt_inds = (torch.zeros(B * A, dtype=torch.long, device=device) if background is None
               else background.reshape(-1).clone())
    gt_inds.scatter_reduce_(0, flat, torch.where(win, gt_id + 1, -1), "amax")
    cand_labels = gt_labels[:, :, None].expand(B, M, K).reshape(-1)
    labels = torch.full((B * A,), -1, dtype=torch.long, device=device).scatter_reduce_(
        0, flat, torch.where(win, cand_labels, -1), "amax")
    return gt_inds.view(B, A), labels.view(B, A), best.view(B, A)


# ----------------------------------------------------------------------------- assigner
class ATSSAssigner(BaseAssigner):
    """Adaptive Training Sample Selection; see the module docstring for the steps and quirks.

    Args:
        topk: candidates per pyramid level and GT (9 in the paper).
        alpha: None for ATSS; a value in [0, 1] enables DDOD's dynamic cost, which reads
            ``pred_instances.scores`` (logits [A, C]) and ``pred_instances.bboxes`` ([A, 4]).
        iou_calculator: read by :func:`~detassign.assigners.base.parse_iou_calculator` (mmdet's
            ``dict(type="BboxOverlaps2D")``, mmrotate's ``RBboxOverlaps2D``, a callable).
        ignore_iof_thr: IoF above which a prior inside an ignore box is ignored; <= 0 disables.
        threshold_compare: ``"ge"`` (mmdet, ``q >= mean + std``) or ``"gt"`` (PaddleDetection).
        grid_window: on pyramid levels whose priors form a grid (one prior per cell, detected exactly),
            take the nearest candidates from a window around each GT center instead of measuring every
            prior; the result is identical (see ``nearest_in_window``). None (default): on CPU only (the
            detection reads the priors on the host and GTs with ties are found with ``nonzero``, host
            synchronisations an accelerator should not pay); False: always measure every prior.
        octave_base_scale: :meth:`assign_batch` on priors without anchor boxes uses squares of side
            ``octave_base_scale * stride`` (mmdet's ATSS anchor generator: 8, one scale, ratio 1).
    """

    def __init__(self, topk: int = 9, alpha: Optional[float] = None, iou_calculator: Optional[dict] = None,
                 ignore_iof_thr: float = -1, threshold_compare: str = "ge",
                 grid_window: Optional[bool] = None, octave_base_scale: float = 8.0) -> None:
        self.topk = V.check_number("topk", topk, low=1, integer=True)
        alpha = V.check_number("alpha", alpha, low=0.0, high=1.0, allow_none=True)
        self.alpha = None if alpha is None else float(alpha)
        # mmrotate's RBboxOverlaps2D: rotated boxes [..., 5] xywhr (see .rotated_calculators)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__)
        self.octave_base_scale = float(V.check_number("octave_base_scale", octave_base_scale, low=0, low_open=True))
        self.ignore_iof_thr = float(V.check_number("ignore_iof_thr", ignore_iof_thr, finite=False))
        self.threshold_compare = V.check_choice("threshold_compare", threshold_compare, THRESHOLD_COMPARES)
        self.grid_window = V.check_flag("grid_window", grid_window, allow_none=True)  # None: auto (on CPU)

    # ---------------------------------------------------------------- per image
    @torch.no_grad()
    def assign(self, pred_instances, num_level_priors: Sequence[int], gt_instances,
               gt_instances_ignore=None) -> AssignResult:
        """Assign the A priors of one image (mmdet's signature: ``num_level_priors`` second).

        pred_instances.priors [A, 4] xyxy (extra columns ignored); DDOD also ``.scores`` [A, C]
        logits and ``.bboxes`` [A, 4]. gt_instances.bboxes [M, 4], .labels [M].
        gt_instances_ignore.bboxes [G, 4] (optional). Returns gt_inds, labels, max_overlaps [A].
        """
        if self.iou_calculator.rotated:
            from .rotated_calculators import rotated_atss_assign
            return rotated_atss_assign(self, pred_instances, num_level_priors, gt_instances, gt_instances_ignore)
        priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A", None), floating=True, empty_rows=True)
        if priors.shape[0] == 0 and priors.shape[1] < 4:
            priors = priors.new_zeros((0, 4))
        if priors.shape[1] < 4:
            raise ValueError(f"pred_instances.priors must have shape [A, 4] xyxy, got {tuple(priors.shape)}")
        priors = priors[:, :4]
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                   ("M", 4), floating=True, empty_rows=True)
        scores = bboxes = None
        if self.alpha is not None:
            scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                                    ("A", "C"), floating=True, empty_rows=True)
            bboxes = V.tensor_input("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                    ("A", 4), floating=True, empty_rows=True)
            V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.scores", scores, 0),
                                ("pred_instances.bboxes", bboxes, 0)])
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        levels = check_level_sizes(num_level_priors, priors.shape[0], "num_level_priors")
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, scores=scores, bboxes=bboxes)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",),
                                   rows_like=("gt_instances.bboxes", gt_bboxes),
                                   num_classes=None if scores is None else V.num_classes_of(scores))
        V.check_boxes("pred_instances.priors", priors)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        V.check_finite("pred_instances.scores", scores)
        V.check_finite("pred_instances.bboxes", bboxes)

        dtype = compute_dtype(priors, gt_bboxes, scores, bboxes)
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            return empty_assign_result(num_gts, num_priors, priors.device, overlap_fill=0.0, overlap_dtype=dtype)
        priors, gt_bboxes = priors.to(dtype), gt_bboxes.to(dtype)
        ignored = self._ignored_priors(priors, gt_instances_ignore)
        grids = level_grids(priors, levels) if ignored is None and self._use_grid(priors) else None
        gt_inds, labels, max_overlaps = self._assign_padded(
            priors, levels, gt_labels.long()[None], gt_bboxes[None],
            torch.ones(1, num_gts, dtype=torch.bool, device=priors.device), ignored,
            None if scores is None else scores.to(dtype)[None], None if bboxes is None else bboxes.to(dtype)[None],
            grids)
        return AssignResult(num_gts, gt_inds[0], max_overlaps[0], labels[0])

    def _use_grid(self, priors: Tensor) -> bool:
        return self.grid_window if self.grid_window is not None else priors.device.type == "cpu"

    def _ignored_priors(self, priors: Tensor, gt_instances_ignore) -> Optional[Tensor]:
        """[1, A] bool: priors whose largest IoF with an ignore box exceeds ``ignore_iof_thr``."""
        if self.ignore_iof_thr <= 0 or gt_instances_ignore is None:
            return None
        ignore = V.tensor_input("gt_instances_ignore.bboxes",
                                V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore"), ("G", 4),
                                floating=True, empty_rows=True)
        V.check_boxes("gt_instances_ignore.bboxes", ignore)
        if ignore.shape[0] == 0:
            return None
        iof = pairwise_iof(priors, ignore.to(priors.dtype))   # [A, G]
        return (iof.amax(dim=1) > self.ignore_iof_thr)[None]

    # ---------------------------------------------------------------- batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor], priors,
                     gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """Assign a padded batch in one vectorised pass (the batched interface).

        pred_scores [B, A, C] logits and pred_bboxes [B, A, 4]: read in DDOD mode only (None otherwise);
        priors: :class:`detassign.Priors` with ``level_sizes`` and anchor ``boxes`` [A, 4] xyxy (without
        boxes: squares of side ``octave_base_scale * stride`` on its points), or Priors with boxes [A, 5]
        xywhr with the rotated calculator; gt_labels [B, M], gt_bboxes [B, M, 4] xyxy, gt_mask [B, M]
        (None = all valid). Returns BatchAssignResult(num_gts [B], gt_inds [B, A] (1-based into M), labels,
        max_overlaps). Images without valid GT are all negative with max_overlaps 0, as the per-image call.
        """
        name = type(self).__name__
        priors = as_priors(priors)
        levels = priors.require("level_sizes", name)
        boxes = priors.anchor_boxes(self.octave_base_scale, name)
        if self.iou_calculator.rotated:
            from .rotated_calculators import rotated_atss_assign_batch
            return rotated_atss_assign_batch(self, boxes, levels, gt_labels, gt_bboxes, gt_mask,
                                             pred_scores, pred_bboxes)
        priors = V.tensor_input("priors.boxes", boxes, ("A", 4), floating=True)
        num_priors = priors.shape[0]
        num_classes = None
        if self.alpha is not None:
            pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
            pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "A", 4), floating=True)
            V.check_agree("A", [("priors.boxes", priors, 0), ("pred_scores", pred_scores, 1),
                                ("pred_bboxes", pred_bboxes, 1)])
            num_classes = V.num_classes_of(pred_scores, 1)
        else:
            pred_scores = pred_bboxes = None     # plain ATSS reads no prediction
        gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, num_classes)
        B, M = gt_mask.shape
        if self.alpha is not None:
            V.check_agree("B", [("gt_bboxes", gt_bboxes, 0), ("pred_scores", pred_scores, 0),
                                ("pred_bboxes", pred_bboxes, 0)])
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, pred_scores=pred_scores, pred_bboxes=pred_bboxes)
        if not cpu_boxes_valid(priors):
            V.check_boxes("priors.boxes", priors)
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
        priors, gt_bboxes = priors.to(dtype), gt_bboxes.to(dtype)
        grids = level_grids(priors, levels) if self._use_grid(priors) else None
        step = B if priors.device.type != "cpu" else max(1, CPU_CHUNK // num_priors)
        parts = [self._assign_padded(priors, levels, gt_labels[b0:b0 + step], gt_bboxes[b0:b0 + step],
                                     gt_mask[b0:b0 + step], None,
                                     None if pred_scores is None else pred_scores[b0:b0 + step],
                                     None if pred_bboxes is None else pred_bboxes[b0:b0 + step], grids)
                 for b0 in range(0, B, step)]
        gt_inds, labels, max_overlaps = parts[0] if len(parts) == 1 else (torch.cat(t) for t in zip(*parts))
        return BatchAssignResult(num_gts, gt_inds, max_overlaps, labels)

    def _assign_padded(self, priors: Tensor, levels: List[int], gt_labels: Tensor, gt_bboxes: Tensor,
                       gt_mask: Tensor, ignored: Optional[Tensor], pred_scores: Optional[Tensor],
                       pred_bboxes: Optional[Tensor], grids: Optional[List[Optional[LevelGrid]]] = None
                       ) -> Tuple[Tensor, Tensor, Tensor]:
        """Steps 1-5 on padded GTs (M >= 1, A >= 1) -> gt_inds, labels, max_overlaps, each [B, A].

        ``grids`` (``level_grids`` of the priors) enables the window search of step 1.
        """
        B, M = gt_mask.shape
        prior_centers = box_centers(priors)                                       # [A, 2]
        cand_idx = nearest_per_level(prior_centers, box_centers(gt_bboxes), levels, self.topk,
                                     None if ignored is None else ignored.expand(B, -1), grids,
                                     gt_mask)                                     # [B, M, K]
        quality = candidate_quality(cand_idx, priors, gt_bboxes, gt_labels, pred_scores, pred_bboxes,
                                    self.alpha, self.iou_calculator)              # [B, M, K]
        threshold = adaptive_threshold(quality)[..., None]                        # [B, M, 1]
        passes = quality >= threshold if self.threshold_compare == "ge" else quality > threshold
        inside = aligned_points_in_boxes(prior_centers[cand_idx], gt_bboxes[:, :, None, :], INSIDE_MARGIN)
        is_pos = passes & inside & gt_mask[..., None]                             # [B, M, K]
        background = None if ignored is None else torch.where(ignored, -1, 0).expand(B, -1)
        # mmdet reports max_overlaps 0 (not -INF) for an image without GT.
        gt_inds, labels, max_overlaps = resolve_by_quality(cand_idx, quality, is_pos, gt_labels, priors.shape[0],
                                                           background, gt_mask.any(dim=1))
        return gt_inds, labels, max_overlaps
