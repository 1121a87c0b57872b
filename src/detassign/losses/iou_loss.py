"""IoU-family box losses of matching boxes, ``1 - overlap``, element-wise (no reduction).

They use the ultralytics convention of :mod:`detassign.boxes` (``eps = 1e-7`` added to heights and
denominators) so that the YOLO loss reproduces ultralytics' values; ``pred`` is the first argument,
as in ultralytics' ``bbox_iou(pred, target)``.
"""
from __future__ import annotations

from torch import Tensor

from ..boxes import ULTRALYTICS_EPS, aligned_ciou, aligned_giou, aligned_iou

__all__ = ["bbox_ciou_loss", "bbox_giou_loss", "bbox_iou_loss"]


def bbox_ciou_loss(pred_boxes: Tensor, target_boxes: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """``1 - CIoU``. pred_boxes [..., 4], target_boxes [..., 4] xyxy -> [...] in [0, 2 + ...).

    CIoU = IoU - d^2 / c^2 - alpha * v (Zheng et al. 2020, eq. 9-11); alpha carries no gradient.
    Identical boxes give 0 (up to eps), disjoint far boxes approach 2.
    """
    return 1.0 - aligned_ciou(pred_boxes, target_boxes, eps=eps)


def bbox_giou_loss(pred_boxes: Tensor, target_boxes: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """``1 - GIoU`` (Rezatofighi et al. 2019). [..., 4], [..., 4] xyxy -> [...] in [0, 2]."""
    return 1.0 - aligned_giou(pred_boxes, target_boxes, eps=eps, convention="ultralytics")


def bbox_iou_loss(pred_boxes: Tensor, target_boxes: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """``1 - IoU``. [..., 4], [..., 4] xyxy -> [...] in [0, 1]."""
    return 1.0 - aligned_iou(pred_boxes, target_boxes, eps=eps, convention="ultralytics")
