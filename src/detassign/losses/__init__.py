"""Small, pure loss functions on tensors (no reduction unless stated, no module state).

* :func:`bbox_ciou_loss` — ``1 - CIoU`` of matching boxes (Zheng et al. 2020), ultralytics' convention.
* :func:`distribution_focal_loss` — DFL of Generalized Focal Loss (Li et al. 2020) on ``R``-bin distributions.
* :func:`dfl_decode` — expected value of a softmax distribution over bins ``0..R-1``.
* :func:`varifocal_loss` (VarifocalNet, Zhang et al. 2021) and :func:`quality_focal_loss` (GFL) —
  binary cross-entropy with IoU-aware soft targets, element-wise.
"""
from .dfl import dfl_decode, dfl_unchecked, distribution_focal_loss
from .iou_loss import bbox_ciou_loss, bbox_giou_loss, bbox_iou_loss
from .varifocal import quality_focal_loss, varifocal_loss

__all__ = [
    "bbox_ciou_loss",
    "bbox_giou_loss",
    "bbox_iou_loss",
    "distribution_focal_loss",
    "dfl_decode",
    "dfl_unchecked",
    "varifocal_loss",
    "quality_focal_loss",
]
