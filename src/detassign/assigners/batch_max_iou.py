"""BatchMaxIoUAssigner: MaxIoUAssigner over a padded batch in one vectorised call.

Registered also as ``AscendMaxIoUAssigner`` (mmdet 2.x's batched MaxIoU for Ascend NPUs; mmdet 3.3.0
has no such class, so its oracle is mmdet's ``MaxIoUAssigner`` run image by image).

    result = BatchMaxIoUAssigner(0.5, 0.4).assign_batch(priors, gt_bboxes, gt_mask, gt_labels)
    result.gt_inds      # [B, A], 1-based index into the padded GT dimension M, 0 negative, -1 ignore

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
``perm_repeat_gt_cfg`` (random jitter of repeated GTs) is not offered here: it draws random numbers
image by image, which a single vectorised call cannot reproduce; use MaxIoUAssigner for it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _validate as V
from ..structures import BatchAssignResult
from ._batch import check_padded_gts
from .max_iou import (MaxIoUAssigner, NegThr, assign_overlaps_dense, box_tensor, calculator_boxes,
                      ignored_priors, overlap_matrix)

__all__ = ["BatchMaxIoUAssigner"]

# Default images per chunk: b * M * A <= this many elements. On CPU, [b, M, A] temporaries that stay
# in cache (16 MB) beat one huge pass; on an accelerator one large launch is what pays.
CPU_CHUNK = 2 ** 22
ACCELERATOR_CHUNK = 2 ** 26


def batch_labels(gt_inds: Tensor, gt_labels: Tensor) -> Tensor:
    """gt_inds [B, A] (1-based), gt_labels [B, M] -> [B, A] labels, -1 for non-positives."""
    if gt_labels.shape[1] == 0:
        return torch.full_like(gt_inds, -1)
    picked = torch.gather(gt_labels, 1, (gt_inds - 1).clamp(min=0))
    return torch.where(gt_inds > 0, picked, torch.full_like(picked, -1))


class BatchMaxIoUAssigner(MaxIoUAssigner):
    """MaxIoU assignment for B images at once; ``assign`` (one image) is MaxIoUAssigner's."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True, ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: dict = dict(type="BboxOverlaps2D"), low_quality_mode: str = "mmdet",
                 chunk_elements: Optional[int] = None) -> None:
        super().__init__(pos_iou_thr, neg_iou_thr, min_pos_iou=min_pos_iou, gt_max_assign_all=gt_max_assign_all,
                         ignore_iof_thr=ignore_iof_thr, ignore_wrt_candidates=ignore_wrt_candidates,
                         match_low_quality=match_low_quality, gpu_assign_thr=gpu_assign_thr,
                         iou_calculator=iou_calculator, low_quality_mode=low_quality_mode)
        if chunk_elements is not None and (isinstance(chunk_elements, bool) or int(chunk_elements) < 1):
            raise ValueError(f"chunk_elements must be None or a positive integer, got {chunk_elements!r}")
        self.chunk_elements = None if chunk_elements is None else int(chunk_elements)

    def _assign_chunk(self, priors: Tensor, gt_boxes: Tensor, gt_mask: Tensor, ignore_boxes: Optional[Tensor],
                      ignore_mask: Optional[Tensor]):
        """priors [b, A, 4], gt_boxes [b, M, 4], gt_mask [b, M] -> (gt_inds, max_overlaps) [b, A]."""
        overlaps = overlap_matrix(calculator_boxes(gt_boxes, self.iou_calculator),
                                calculator_boxes(priors, self.iou_calculator))            # [b, M, A]
        if ignore_boxes is not None:
            ignored = ignored_priors(priors, ignore_boxes, self.ignore_iof_thr, self.ignore_wrt_candidates,
                                     ignore_mask)                                         # [b, A]
            overlaps.masked_fill_(ignored[:, None, :], -1.0)
        return assign_overlaps_dense(overlaps, gt_mask, **self._thresholds())

    def _chunk_size(self, B: int, M: int, A: int, device: torch.device) -> int:
        budget = self.chunk_elements
        if budget is None:
            budget = CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK
        return max(1, min(B, budget // max(1, M * A)))

    @torch.no_grad()
    def assign_batch(self, priors: Tensor, gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None,
                     gt_labels: Optional[Tensor] = None, gt_bboxes_ignore: Optional[Tensor] = None,
                     ignore_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """Assign a padded batch.

        priors [A, 4] (shared) or [B, A, 4] xyxy; gt_bboxes [B, M, 4] xyxy; gt_mask [B, M] bool (None: all
        valid); gt_labels [B, M] int or None (then ``labels`` is None); gt_bboxes_ignore [B, K, 4] with
        ignore_mask [B, K] (None: all valid). Priors and boxes may carry a fifth (score) column.
        -> BatchAssignResult(num_gts [B], gt_inds [B, A], max_overlaps [B, A], labels [B, A]).
        """
        gt_bboxes = box_tensor("gt_bboxes", gt_bboxes, ("B", "M"))
        B, M = gt_bboxes.shape[:2]
        priors = box_tensor("priors", priors, ("A",) if priors is not None and priors.dim() == 2 else (B, "A"))
        priors = priors.expand(B, *priors.shape[-2:]) if priors.dim() == 2 else priors
        has_labels = gt_labels is not None
        labels_in = gt_labels if has_labels else torch.zeros(B, M, dtype=torch.long, device=gt_bboxes.device)
        labels_in, gt_bboxes, gt_mask = check_padded_gts(labels_in, gt_bboxes, gt_mask)
        ignore_boxes, ignore_mask = self._check_ignore(gt_bboxes_ignore, ignore_mask, B)
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_bboxes_ignore=ignore_boxes,
                            ignore_mask=ignore_mask)
        V.check_boxes("priors", priors)
        if not self._ignore_enabled(ignore_boxes, priors):
            ignore_boxes = ignore_mask = None

        device = gt_bboxes.device
        if self._on_cpu(M):
            priors, gt_bboxes, gt_mask = priors.cpu(), gt_bboxes.cpu(), gt_mask.cpu()
            if ignore_boxes is not None:
                ignore_boxes, ignore_mask = ignore_boxes.cpu(), ignore_mask.cpu()
        step = self._chunk_size(B, M, priors.shape[1], priors.device)
        parts = [self._assign_chunk(priors[s:s + step], gt_bboxes[s:s + step], gt_mask[s:s + step],
                                    None if ignore_boxes is None else ignore_boxes[s:s + step],
                                    None if ignore_mask is None else ignore_mask[s:s + step])
                 for s in range(0, B, step)]
        if parts:
            gt_inds = torch.cat([p[0] for p in parts]).to(device)
            max_overlaps = torch.cat([p[1] for p in parts]).to(device)
        else:
            gt_inds = torch.zeros(0, priors.shape[1], dtype=torch.long, device=device)
            max_overlaps = torch.zeros(0, priors.shape[1], device=device)
        labels = batch_labels(gt_inds, labels_in) if has_labels else None
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
        V.check_tensor("ignore_mask", ignore_mask, (B, boxes.shape[1]))
        ignore_mask = ignore_mask.bool()
        V.check_boxes("gt_bboxes_ignore", boxes, ignore_mask)
        return boxes, ignore_mask
