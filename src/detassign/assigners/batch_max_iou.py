"""BatchMaxIoUAssigner: MaxIoUAssigner over a padded batch in one vectorised call.

Registered also as ``AscendMaxIoUAssigner`` (mmdet 2.x's batched MaxIoU for Ascend NPUs; mmdet 3.3.0
has no such class, so its oracle is mmdet's ``MaxIoUAssigner`` run image by image).

    result = BatchMaxIoUAssigner(0.5, 0.4).assign_batch(None, None, priors, gt_labels, gt_bboxes, gt_mask)
    result.gt_inds      # [B, A], 1-based index into the padded GT dimension M, 0 negative, -1 ignore

``priors``: a :class:`detassign.Priors` with anchor ``boxes``, or a tensor of boxes [A, 4] shared by the
batch or [B, A, 4] per image (proposals), which may carry a fifth (score) column. The predictions are
not read (pass None).

Every knob of :class:`~detassign.assigners.max_iou.MaxIoUAssigner` behaves as there, image by image,
including mmdet's low-quality overwrite order (the last GT claiming a prior wins), which is done by
one reduction over M instead of a loop (``last_gt_wins``). Padded GTs (``gt_mask`` False) never match;
an image whose mask is all False is all negative with ``max_overlaps`` 0, as mmdet with no GT.
Sentinels in ``max_overlaps`` are mmdet's: -1 for ignored priors, 0 for images without GT.

Memory: the largest tensors are ``[b, M, A]`` for a chunk of b images (the IoU, computed one
coordinate at a time without ``[b, M, A, 2]`` corners, and the comparisons on it) plus ``[b, K, A]``
for ignore boxes. Images are processed
in chunks of ``b`` images with ``b * M * A <= chunk_elements`` (default: 2**22 on CPU, where
cache-sized temporaries are faster, 2**26 on accelerators; one chunk unless the batch is large).
``gpu_assign_thr > 0`` moves the whole batch to the CPU when ``M`` (padded) exceeds it.

Sparse path (``sparse=None``: on CPU; ``True``: on any device; ``False``: never). Most (GT, prior)
pairs do not overlap and have IoU exactly 0. When the shared priors form regular per-level grids
(detected exactly at call time, see :mod:`detassign.assigners._prior_lattice`), the priors a GT can
overlap are a rectangle of cells per level and anchor slot; only those pairs get an IoU (same
operations as mmdet, so the same bits), and the reductions over GTs and over priors are scatters over
the pairs. Every other pair is known to be 0 (-1 on ignored priors), which fixes the rest exactly:
a prior whose best IoU is 0 takes the first valid GT as argmax, a GT whose best IoU is 0 has the
first non-ignored prior as argmax and (mmdet quirk #8289) claims every non-ignored prior. The result
equals the dense path bit for bit. Per-image priors ``[B, A, 4]``, priors that are not grids, and
chunks whose candidate pairs would exceed a quarter of ``b * M * A`` use the dense path. On CPU the
sparse path runs over chunks of a few images (``[b, A]`` near 2**15 elements): below that size torch
runs each operation on the calling thread, above it each of the many small operations wakes the
thread pool, which on a busy machine costs more than the work. The first GT at a prior's maximum
is found with one ``amax`` over int64 keys (IoU bits above the complemented GT index; float32) or
two scatters (float64).
``perm_repeat_gt_cfg`` (random jitter of repeated GTs) is not offered here: it draws random numbers
image by image, which a single vectorised call cannot reproduce; use MaxIoUAssigner for it.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import compute_dtype, overlaps_of_coordinates
from ..structures import BatchAssignResult, Priors, labels_from_gt_inds
from ._batch import check_padded_gts
from ._blocks import row_blocks
from ._prior_lattice import (LatticeSlot, cpu_boxes_valid, detect_lattice, enumerate_rectangles,
                             lattice_rectangles)
from .max_iou import (MaxIoUAssigner, NegThr, assign_overlap_blocks, assign_overlaps_dense, box_tensor,
                      ignored_priors, negative_mask, normalize_neg_iou_thr)

__all__ = ["BatchMaxIoUAssigner", "pair_iou", "assign_pairs_sparse"]

# Default images per chunk: b * M * A <= this many elements. On CPU, [b, M, A] temporaries that stay
# in cache (16 MB) beat one huge pass; on an accelerator one large launch is what pays.
CPU_CHUNK = 2 ** 22
ACCELERATOR_CHUNK = 2 ** 26
# The sparse path is used while the candidate pairs are at most this fraction of B * M * A: beyond it
# the scatters cost more than the dense elementwise passes they replace.
SPARSE_MAX_FRACTION = 0.25
SPARSE_CPU_CHUNK = 2 ** 15


def box_table(boxes: Tensor) -> Tensor:
    """[N, 4] xyxy -> [5, N] rows x1, y1, x2, y2, area (mmdet's area expression), contiguous."""
    table = torch.empty((5, boxes.shape[0]), dtype=boxes.dtype, device=boxes.device)
    table[:4] = boxes.t()
    torch.mul(table[2] - table[0], table[3] - table[1], out=table[4])
    return table


def pair_iou(gt: Tensor, prior: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of aligned pairs given as ``box_table`` columns. gt, prior [5, P] -> [P].

    mmdet's ``bbox_overlaps(gt, priors)`` kernel (GT area first in the union), so every value has the bits
    of the dense matrix entry.
    """
    return overlaps_of_coordinates(gt[:4], prior[:4], "iou", eps, area_a=gt[4], area_b=prior[4], inplace=True)


def _index_bits(n: int) -> int:
    return max(1, int(n).bit_length())


def best_per_prior(iou: Tensor, pair_gt: Tensor, pair_prior: Tensor, gt_mask: Tensor, num_priors: int):
    """Max IoU over GTs and its first GT, for every prior. -> (max [B, A], argmax [B, A] in 0..M-1).

    iou [P] >= 0 of the listed pairs (flat GT ``b * M + m``, flat prior ``b * A + a``); unlisted pairs
    of valid GTs are 0. Ties go to the lowest GT index, and a prior without positive IoU gets the
    image's first valid GT, as ``max(dim)`` on the dense matrix with padded rows at -inf.
    """
    B, M = gt_mask.shape
    A = num_priors
    first_valid = gt_mask.to(torch.uint8).argmax(dim=1)                                     # [B]
    base = torch.arange(B, device=gt_mask.device) * M + first_valid                        # flat GT index
    if iou.dtype == torch.float32:
        # One int64 key per pair: IoU bits (monotone for non-negative floats) above the complemented
        # GT index, so a single amax yields the max and, among ties, the lowest GT.
        shift = _index_bits(B * M)
        low = (1 << shift) - 1
        key = iou.view(torch.int32).to(torch.int64).mul_(1 << shift).add_(low - pair_gt)
        init = (low - base).repeat_interleave(A)
        best = init.scatter_reduce_(0, pair_prior, key, "amax")
        max_overlaps = (best >> shift).to(torch.int32).view(torch.float32).view(B, A)
        argmax = (low - (best & low)).view(B, A) - (torch.arange(B, device=iou.device) * M)[:, None]
        return max_overlaps, argmax
    max_overlaps = iou.new_zeros(B * A).scatter_reduce_(0, pair_prior, iou, "amax")
    first_best = torch.full((B * A,), B * M, dtype=torch.long, device=iou.device).scatter_reduce_(
        0, pair_prior, torch.where(iou == max_overlaps.index_select(0, pair_prior), pair_gt, B * M), "amin")
    max_overlaps = max_overlaps.view(B, A)
    argmax = torch.where(max_overlaps > 0, first_best.view(B, A), base[:, None]) - \
        (torch.arange(B, device=iou.device) * M)[:, None]
    return max_overlaps, argmax


def assign_pairs_sparse(iou: Tensor, pair_gt: Tensor, pair_prior: Tensor, gt_mask: Tensor, num_priors: int,
                        ignored: Optional[Tensor], *, pos_iou_thr: float, neg_iou_thr: NegThr,
                        min_pos_iou: float = 0.0, gt_max_assign_all: bool = True, match_low_quality: bool = True,
                        low_quality_mode: str = "mmdet"):
    """Steps 1-4 from the IoUs of the candidate pairs only; the same result as ``assign_overlaps_dense``.

    iou [P] >= 0 of the listed pairs (flat GT index ``pair_gt`` = b * M + m, flat prior index
    ``pair_prior`` = b * A + a), each pair at most once, padded GTs never listed; every unlisted pair of
    a valid GT has IoU 0. ignored [B, A] bool or None: those priors' IoU is -1 with every GT (mmdet).
    gt_mask [B, M] bool -> (gt_inds [B, A] long, max_overlaps [B, A]).
    """
    neg_iou_thr = normalize_neg_iou_thr(neg_iou_thr)
    B, M = gt_mask.shape
    A = num_priors
    max_overlaps, argmax_overlaps = best_per_prior(iou, pair_gt, pair_prior, gt_mask, A)
    if ignored is not None:
        # every GT ties at -1 on an ignored prior: the max is -1 and the argmax the first valid GT
        max_overlaps.masked_fill_(ignored, -1.0)
        argmax_overlaps = torch.where(ignored, gt_mask.to(torch.uint8).argmax(dim=1, keepdim=True), argmax_overlaps)
        iou = iou.masked_fill(ignored.reshape(-1).index_select(0, pair_prior), -1.0)
    gt_inds = torch.full((B, A), -1, dtype=torch.long, device=iou.device)
    gt_inds.masked_fill_(negative_mask(max_overlaps, neg_iou_thr), 0)
    gt_inds = torch.where(max_overlaps >= pos_iou_thr, argmax_overlaps + 1, gt_inds)
    if match_low_quality:
        gt_inds = _low_quality_sparse(gt_inds, argmax_overlaps, iou, pair_gt, pair_prior, gt_mask, ignored,
                                      min_pos_iou, gt_max_assign_all, low_quality_mode)
    has_gt = gt_mask.any(dim=1, keepdim=True)
    if not bool(has_gt.all()):      # the sparse path synchronises anyway; skip two [B, A] passes when it can
        gt_inds = torch.where(has_gt, gt_inds, 0)
        max_overlaps = torch.where(has_gt, max_overlaps, 0.0)
    return gt_inds, max_overlaps


def _low_quality_sparse(gt_inds: Tensor, argmax_overlaps: Tensor, values: Tensor, pair_gt: Tensor,
                        pair_prior: Tensor, gt_mask: Tensor, ignored: Optional[Tensor], min_pos_iou: float,
                        gt_max_assign_all: bool, mode: str) -> Tensor:
    """Step 4 on the pairs (values: IoU, -1 on ignored priors). gt_inds, argmax_overlaps [B, A] -> gt_inds [B, A].

    Same result as ``low_quality_matches`` on the dense matrix.
    """
    B, A = gt_inds.shape
    M = gt_mask.shape[1]
    device, dtype = values.device, values.dtype
    image_gt = (torch.arange(B, device=device) * M)[:, None]                              # [B, 1]
    # Best IoU of each GT over all priors: the listed maximum when positive; otherwise 0, the value of
    # every non-ignored prior, or -1 when the image's priors are all ignored.
    listed = torch.full((B * M,), float("-inf"), dtype=dtype, device=device).scatter_reduce_(
        0, pair_gt, values, "amax").view(B, M)
    if ignored is None:
        kept = None
        floor = torch.zeros((B, 1), dtype=dtype, device=device)
    else:
        kept = ~ignored                                                                   # [B, A]
        floor = torch.where(kept.any(dim=1, keepdim=True), 0.0, -1.0).to(dtype)
    positive_gt = listed > 0
    gt_max = torch.where(positive_gt, listed, floor)                                      # [B, M]
    eligible = (gt_max >= min_pos_iou) & gt_mask
    if mode != "mmdet":
        eligible &= positive_gt

    if gt_max_assign_all:
        # A positive eligible GT claims the listed priors at its max (NaN elsewhere never compares equal).
        target = torch.where(eligible & positive_gt, gt_max, float("nan")).reshape(-1)
        hit = values == target.index_select(0, pair_gt)                                   # [P]
        if mode == "argmax":
            claimed = torch.zeros(B * A, dtype=torch.uint8, device=device).scatter_reduce_(
                0, pair_prior, hit.to(torch.uint8), "amax").view(B, A)
            return torch.where(claimed > 0, argmax_overlaps + 1, gt_inds)
        # the last GT wins: the largest flat GT index among the claims (all of the prior's image)
        winner = torch.zeros(B * A, dtype=torch.long, device=device).scatter_reduce_(
            0, pair_prior, torch.where(hit, pair_gt + 1, 0), "amax").view(B, A)
        winner = torch.where(winner > 0, winner - image_gt, 0)
        # A GT whose best IoU is <= 0 claims every prior with that value: every non-ignored prior (or
        # all of them when all are ignored). The last such GT is the one that sticks.
        one_based = torch.arange(1, M + 1, device=device)
        zero_last = torch.where(eligible & ~positive_gt, one_based, 0).amax(dim=1, keepdim=True)   # [B, 1]
        if kept is not None:
            zero_last = torch.where(kept | ~kept.any(dim=1, keepdim=True), zero_last, 0)
        winner = torch.maximum(winner, zero_last)
        return torch.where(winner > 0, winner, gt_inds)

    # Only each GT's first best prior: the first listed prior at the positive maximum, else the first
    # prior with the floor value (the first non-ignored prior, or prior 0).
    first_listed = torch.full((B * M,), B * A, dtype=torch.long, device=device).scatter_reduce_(
        0, pair_gt, torch.where(values == gt_max.reshape(-1).index_select(0, pair_gt), pair_prior, B * A),
        "amin").view(B, M) - (torch.arange(B, device=device) * A)[:, None]
    first_floor = torch.zeros((B, 1), dtype=torch.long, device=device) if kept is None else \
        kept.to(torch.uint8).argmax(dim=1, keepdim=True)
    gt_argmax = torch.where(positive_gt, first_listed, first_floor)                       # [B, M]
    if mode == "argmax":
        claimed = torch.zeros((B, A), dtype=torch.uint8, device=device).scatter_reduce_(
            1, gt_argmax, eligible.to(torch.uint8), "amax")
        return torch.where(claimed > 0, argmax_overlaps + 1, gt_inds)
    winner = torch.zeros((B, A), dtype=torch.long, device=device).scatter_reduce_(
        1, gt_argmax, torch.where(eligible, torch.arange(1, M + 1, device=device), 0), "amax")
    return torch.where(winner > 0, winner, gt_inds)


class BatchMaxIoUAssigner(MaxIoUAssigner):
    """MaxIoU assignment for B images at once; ``assign`` (one image) is MaxIoUAssigner's."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True, ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: dict = dict(type="BboxOverlaps2D"), low_quality_mode: str = "mmdet",
                 chunk_elements: Optional[int] = None, sparse: Optional[bool] = None) -> None:
        super().__init__(pos_iou_thr, neg_iou_thr, min_pos_iou=min_pos_iou, gt_max_assign_all=gt_max_assign_all,
                         ignore_iof_thr=ignore_iof_thr, ignore_wrt_candidates=ignore_wrt_candidates,
                         match_low_quality=match_low_quality, gpu_assign_thr=gpu_assign_thr,
                         iou_calculator=iou_calculator, low_quality_mode=low_quality_mode)
        self.chunk_elements = V.check_number("chunk_elements", chunk_elements, low=1, integer=True, allow_none=True)
        self.sparse = V.check_flag("sparse", sparse, allow_none=True)  # None: auto (on CPU)

    def _assign_chunk(self, priors: Tensor, gt_bboxes: Tensor, gt_mask: Tensor, ignore_boxes: Optional[Tensor],
                      ignore_mask: Optional[Tensor]):
        """priors [b, A, 4], gt_bboxes [b, M, 4], gt_mask [b, M] -> (gt_inds, max_overlaps) [b, A].

        The [b, M, A] overlaps are made and reduced a block of GTs at a time (at most about the chunk size
        each), so a single image whose M * A exceeds the chunk size is bounded too; same result.
        """
        ignored = None
        if ignore_boxes is not None:
            ignored = ignored_priors(priors, ignore_boxes, self.ignore_iof_thr, self.ignore_wrt_candidates,
                                     ignore_mask)                                         # [b, A]
        b, M = gt_mask.shape
        A = priors.shape[-2]
        if M == 0 or A == 0:
            return assign_overlaps_dense(self.iou_calculator.pairwise(gt_bboxes, priors), gt_mask,
                                         **self._thresholds())

        def blocks():
            for blk in row_blocks(M, b * A, self._chunk_budget(priors.device), multiple=1):   # IoU: arithmetic
                overlaps = self.iou_calculator.pairwise(gt_bboxes[:, blk], priors)          # [b, g, A]
                if ignored is not None:
                    overlaps.masked_fill_(ignored[:, None, :], -1.0)
                yield blk.start, overlaps
                del overlaps

        return assign_overlap_blocks(blocks(), gt_mask, **self._thresholds())

    def _assign_sparse(self, priors: Tensor, gt_bboxes: Tensor, gt_mask: Tensor, ignore_boxes: Optional[Tensor],
                       ignore_mask: Optional[Tensor], gt_labels: Optional[Tensor]):
        """Shared priors [A, 4] -> (gt_inds, max_overlaps, labels or None) [B, A], or None when they are not
        a lattice. The outputs are filled chunk by chunk (no concatenation pass)."""
        sparse_gts = self.iou_calculator.prepare(gt_bboxes)
        grid_priors = self.iou_calculator.prepare(priors)
        dtype = compute_dtype(sparse_gts, grid_priors)
        sparse_gts, grid_priors = sparse_gts.to(dtype), grid_priors.to(dtype).contiguous()
        slots = detect_lattice(grid_priors)
        if slots is None:
            return None
        B, M = gt_mask.shape
        A = priors.shape[0]
        ignored = None
        if ignore_boxes is not None:
            ignored = ignored_priors(priors.expand(B, -1, -1), ignore_boxes, self.ignore_iof_thr,
                                     self.ignore_wrt_candidates, ignore_mask)              # [B, A]
        step = self._sparse_step(B, M, A, priors.device)
        prior_table = box_table(grid_priors).repeat(1, step)                            # [5, step * A]
        valid = gt_mask.reshape(-1).nonzero().squeeze(1)                                # [G] flat GT index
        gt_table = box_table(sparse_gts.reshape(-1, 4).index_select(0, valid))          # [5, G]
        rects = lattice_rectangles(slots, gt_table[:4].t())                             # 4 x [S, G]
        gts_before = [0] + torch.cumsum(gt_mask.sum(dim=1), 0).tolist()
        gt_inds = torch.empty((B, A), dtype=torch.long, device=priors.device)
        max_overlaps = torch.empty((B, A), dtype=dtype, device=priors.device)
        labels = None if gt_labels is None else torch.empty((B, A), dtype=torch.long, device=priors.device)
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            g0, g1 = gts_before[b0], gts_before[b1]
            part = self._sparse_chunk(slots, prior_table, A, gt_table[:, g0:g1], [r[:, g0:g1] for r in rects],
                                      valid[g0:g1] - b0 * M, gt_mask[b0:b1],
                                      None if ignored is None else ignored[b0:b1])
            if part is None:   # too many candidate pairs: the dense computation is cheaper
                part = self._assign_chunk(priors.expand(b1 - b0, -1, -1), gt_bboxes[b0:b1], gt_mask[b0:b1],
                                          None if ignore_boxes is None else ignore_boxes[b0:b1],
                                          None if ignore_mask is None else ignore_mask[b0:b1])
            gt_inds[b0:b1] = part[0]
            max_overlaps[b0:b1] = part[1]
            if labels is not None:
                labels[b0:b1] = labels_from_gt_inds(part[0], gt_labels[b0:b1])
        return gt_inds, max_overlaps, labels

    def _sparse_chunk(self, slots: List[LatticeSlot], prior_table: Tensor, num_priors: int, gt_table: Tensor,
                      rects: List[Tensor], valid: Tensor, gt_mask: Tensor, ignored: Optional[Tensor]):
        """b images -> (gt_inds, max_overlaps) [b, A], or None when the candidate pairs are too many.

        prior_table: ``box_table`` of the priors repeated for at least b images ([5, >= b * A]); gt_table
        [5, G] and rects (``lattice_rectangles``, 4 x [S, G]) of the chunk's valid GTs, whose flat indices
        b * M + m are ``valid`` [G]; gt_mask [b, M].
        """
        B, M = gt_mask.shape
        A = num_priors
        pairs = enumerate_rectangles(slots, *rects, max_pairs=int(SPARSE_MAX_FRACTION * B * M * A),
                                     image_offset=torch.div(valid, M, rounding_mode="floor") * A)
        if pairs is None:
            return None
        seg_box, seg, pair_prior = pairs                                                # pair_prior: b * A + a
        iou = pair_iou(gt_table.index_select(1, seg_box).index_select(1, seg), prior_table.index_select(1, pair_prior))
        pair_gt = valid.index_select(0, seg_box).index_select(0, seg)                   # b * M + m
        return assign_pairs_sparse(iou, pair_gt, pair_prior, gt_mask, A, ignored, **self._thresholds())

    @staticmethod
    def _sparse_step(B: int, M: int, A: int, device: torch.device) -> int:
        """Images per sparse chunk: on CPU about SPARSE_CPU_CHUNK elements per [b, A] tensor, so that the
        many small operations run on the calling thread instead of waking the thread pool for each."""
        if device.type != "cpu":
            return max(1, B)
        return max(1, min(B, SPARSE_CPU_CHUNK // max(1, A)))

    def _sparse_enabled(self, device: torch.device) -> bool:
        # the pair kernel is BboxOverlaps2D's (fp16 included); a user callable needs the dense matrices
        if self.iou_calculator.fn is not None:
            return False
        return self.sparse if self.sparse is not None else device.type == "cpu"

    def _chunk_budget(self, device: torch.device) -> int:
        """Elements of one [b, g, A] overlap chunk."""
        if self.chunk_elements is not None:
            return self.chunk_elements
        return CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK

    def _chunk_size(self, B: int, M: int, A: int, device: torch.device) -> int:
        return max(1, min(B, self._chunk_budget(device) // max(1, M * A)))

    @torch.no_grad()
    def assign_batch(self, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor], priors,
                     gt_labels: Optional[Tensor], gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None, *,
                     gt_bboxes_ignore: Optional[Tensor] = None, ignore_mask: Optional[Tensor] = None
                     ) -> BatchAssignResult:
        """Assign a padded batch (the batched interface; the predictions are not read).

        priors: :class:`detassign.Priors` with ``boxes``, or boxes [A, 4] (shared) or [B, A, 4] xyxy;
        gt_labels [B, M] int or None (then ``labels`` is None); gt_bboxes [B, M, 4] xyxy; gt_mask [B, M]
        bool (None: all valid); gt_bboxes_ignore [B, K, 4] with ignore_mask [B, K] (None: all valid). Priors
        and boxes may carry a fifth (score) column.
        -> BatchAssignResult(num_gts [B], gt_inds [B, A], max_overlaps [B, A], labels [B, A]).
        """
        if self.iou_calculator.rotated:
            raise ValueError("BatchMaxIoUAssigner has no rotated batched form: with iou_calculator="
                             "dict(type='RBboxOverlaps2D') call assign image by image")
        if isinstance(priors, Priors):
            priors = priors.require("boxes", type(self).__name__)
        gt_bboxes = box_tensor("gt_bboxes", gt_bboxes, ("B", "M"))
        B, M = gt_bboxes.shape[:2]
        priors = V.as_tensor("priors", priors)
        priors = box_tensor("priors", priors, ("A",) if priors.dim() == 2 else (B, "A"))
        shared = priors.dim() == 2
        has_labels = gt_labels is not None
        labels_in = gt_labels if has_labels else torch.zeros(B, M, dtype=torch.long, device=gt_bboxes.device)
        labels_in, gt_bboxes, gt_mask = check_padded_gts(labels_in, gt_bboxes, gt_mask)
        ignore_boxes, ignore_mask = self._check_ignore(gt_bboxes_ignore, ignore_mask, B)
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_bboxes_ignore=ignore_boxes,
                            ignore_mask=ignore_mask)
        if not cpu_boxes_valid(priors):
            V.check_boxes("priors", priors)
        if not self._ignore_enabled(ignore_boxes, priors):
            ignore_boxes = ignore_mask = None

        device = gt_bboxes.device
        if self._on_cpu(M):
            priors, gt_bboxes, gt_mask = priors.cpu(), gt_bboxes.cpu(), gt_mask.cpu()
            if ignore_boxes is not None:
                ignore_boxes, ignore_mask = ignore_boxes.cpu(), ignore_mask.cpu()
        A = priors.shape[-2]
        sparse = None
        if shared and B * M * A > 0 and self._sparse_enabled(priors.device):
            sparse = self._assign_sparse(priors, gt_bboxes, gt_mask, ignore_boxes, ignore_mask,
                                         labels_in.to(priors.device) if has_labels else None)
        if sparse is not None:
            gt_inds, max_overlaps, labels = (None if t is None else t.to(device) for t in sparse)
        else:
            priors = priors.expand(B, A, 4) if shared else priors
            step = self._chunk_size(B, M, A, priors.device)
            parts = [self._assign_chunk(priors[s:s + step], gt_bboxes[s:s + step], gt_mask[s:s + step],
                                        None if ignore_boxes is None else ignore_boxes[s:s + step],
                                        None if ignore_mask is None else ignore_mask[s:s + step])
                     for s in range(0, B, step)]
            if parts:
                gt_inds = torch.cat([p[0] for p in parts]).to(device)
                max_overlaps = torch.cat([p[1] for p in parts]).to(device)
            else:
                gt_inds = torch.zeros(0, A, dtype=torch.long, device=device)
                max_overlaps = torch.zeros(0, A, device=device)
            labels = labels_from_gt_inds(gt_inds, labels_in) if has_labels else None
        num_gts = gt_mask.to(device).sum(dim=1)
        return BatchAssignResult(num_gts, gt_inds, max_overlaps, labels)

    @staticmethod
    def _check_ignore(gt_bboxes_ignore: Optional[Tensor], ignore_mask: Optional[Tensor], B: int):
        """-> (ignore boxes [B, K, 4] or None, ignore mask [B, K] bool or None)."""
        if gt_bboxes_ignore is None:
            if ignore_mask is not None:
                raise ValueError("ignore_mask was given without gt_bboxes_ignore")
            return None, None
        boxes = box_tensor("gt_bboxes_ignore", gt_bboxes_ignore, (B, "K"))
        if ignore_mask is None:
            ignore_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        ignore_mask = V.tensor_input("ignore_mask", ignore_mask, (B, boxes.shape[1]))
        V.check_binary("ignore_mask", ignore_mask)
        ignore_mask = ignore_mask.bool()
        V.check_boxes("gt_bboxes_ignore", boxes, ignore_mask)
        return boxes, ignore_mask
