"""ApproxMaxIoUAssigner: MaxIoU where each prior is a group of approximating boxes (mmdet 3.3.0).

Used by guided-anchoring heads: each "square" prior comes with ``P`` approximating anchors, and the
IoU of a square with a GT is the *largest* IoU of its approxs with that GT. Reads
``pred_instances.priors`` [N, 4] (the squares) and ``pred_instances.approxs`` [N, P, 4]; mmdet takes
``approxs_per_octave`` as ``approxs.size(1)``, and so do we. Ignore regions are tested against the
squares. The thresholds, low-quality matching (and ``low_quality_mode``), sentinels (``max_overlaps``:
-1 for ignored squares, 0 with no GT) and deviations are those of
:class:`~detassign.assigners.max_iou.MaxIoUAssigner`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..structures import Instances, Priors
from .base import IoUCalculator
from .max_iou import MaxIoUAssigner, NegThr, box_tensor

__all__ = ["ApproxMaxIoUAssigner", "approx_overlaps", "square_approxs"]


def square_approxs(squares: Tensor, ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> Tensor:
    """Approximations of square anchors: each box with its aspect ratio changed, same area and center (mmdet's
    guided-anchoring approx generator with one scale). squares [N, 4] xyxy -> [N, len(ratios), 4]."""
    centers, sides = (squares[:, :2] + squares[:, 2:]) / 2, squares[:, 2:] - squares[:, :2]
    out = []
    for r in ratios:
        half = sides * torch.tensor([math.sqrt(r), 1 / math.sqrt(r)], dtype=sides.dtype, device=sides.device) / 2
        out.append(torch.cat((centers - half, centers + half), 1))
    return torch.stack(out, 1)


def approx_overlaps(gt_bboxes: Tensor, approxs: Tensor, iou_calculator: Optional[IoUCalculator] = None) -> Tensor:
    """Group IoU. gt_bboxes [M, 4], approxs [N, P, 4] -> [M, N]: max over the P approxs of each square."""
    N, P = approxs.shape[:2]
    ious = (iou_calculator or IoUCalculator()).pairwise(gt_bboxes, approxs.reshape(N * P, 4))   # [M, N * P]
    return ious.view(gt_bboxes.shape[0], N, P).amax(dim=-1)


class ApproxMaxIoUAssigner(MaxIoUAssigner):
    """Assign each square prior by the best IoU among its approxs (see the module docstring)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True, ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: int = -1,
                 iou_calculator: dict = dict(type="BboxOverlaps2D"), low_quality_mode: str = "mmdet") -> None:
        super().__init__(pos_iou_thr, neg_iou_thr, min_pos_iou=min_pos_iou, gt_max_assign_all=gt_max_assign_all,
                         ignore_iof_thr=ignore_iof_thr, ignore_wrt_candidates=ignore_wrt_candidates,
                         match_low_quality=match_low_quality, gpu_assign_thr=gpu_assign_thr,
                         iou_calculator=iou_calculator, low_quality_mode=low_quality_mode)

    def _read_priors(self, pred_instances) -> Tuple[Tensor, dict]:
        squares = box_tensor("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"))
        approxs = V.tensor_input("pred_instances.approxs", V.get_field(pred_instances, "approxs", "pred_instances"),
                                 ("N", "P", 4), empty_rows=True)
        V.check_agree("N", [("pred_instances.priors", squares, 0), ("pred_instances.approxs", approxs, 0)])
        if squares.shape[0] == 0:   # no squares: P is irrelevant (an empty tensor of any rank)
            approxs = approxs.new_zeros((0, 1, 4))
        if approxs.shape[1] == 0:
            raise ValueError(f"pred_instances.approxs must have shape [N, P, 4] with P >= 1, got "
                             f"{tuple(approxs.shape)}")
        V.check_same_device(priors=squares, approxs=approxs)
        V.check_boxes("pred_instances.approxs", approxs)
        return squares, {"approxs": approxs}

    def _row_elements(self, num_priors: int, extra: dict) -> int:
        return num_priors * extra["approxs"].shape[1]        # a GT's row of the [g, N * P] approx IoUs

    def _overlaps(self, gt_bboxes: Tensor, priors: Tensor, extra: dict) -> Tensor:
        return approx_overlaps(gt_bboxes, extra["approxs"], self.iou_calculator)

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: the anchor boxes as squares and their :func:`square_approxs`."""
        squares = priors.require("boxes", type(self).__name__)
        return (Instances(priors=squares, approxs=square_approxs(squares)),
                Instances(bboxes=gt_bboxes, labels=gt_labels)), {}
