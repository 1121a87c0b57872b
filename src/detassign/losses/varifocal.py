"""BCE with IoU-aware soft targets: Varifocal loss and Quality Focal loss, element-wise.

Shape symbols: ``...`` any shape (typically [B, A, C]); ``target`` in [0, 1] is the quality
(IoU-weighted) class target, 0 for negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["varifocal_loss", "quality_focal_loss"]


def _compute_dtype(logits: Tensor, target: Tensor):
    """Both in float32 or wider: BCE with logits is unstable in half precision; float64 stays float64."""
    dtype = torch.promote_types(torch.promote_types(logits.dtype, target.dtype), torch.float32)
    return logits.to(dtype), target.to(dtype)


def varifocal_loss(logits: Tensor, target: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Varifocal loss (Zhang et al., VarifocalNet, CVPR 2021, eq. 2). logits, target [...] -> [...].

    Positives (target q > 0) are weighted by q; negatives by ``alpha * p^gamma`` with p = sigmoid(logits),
    so easy negatives are down-weighted while positives keep their full, quality-scaled weight.
    Computed in float32 for half inputs (BCE with logits is unstable in fp16), float64 stays float64.
    """
    logits32, target32 = _compute_dtype(logits, target)
    prob = logits32.sigmoid()  # not detached, as in the VarifocalNet reference code
    positive = (target32 > 0).to(logits32.dtype)
    weight = target32 * positive + alpha * prob.pow(gamma) * (1 - positive)
    return F.binary_cross_entropy_with_logits(logits32, target32, reduction="none") * weight


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Quality Focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020, eq. 5). [...] -> [...].

    ``QFL = |y - sigma|^beta * BCE(sigma, y)``: the focal modulation uses the distance to the soft
    target y, so it reduces to focal loss (gamma = beta) for y in {0, 1}.
    """
    logits32, target32 = _compute_dtype(logits, target)
    modulation = (logits32.sigmoid() - target32).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits32, target32, reduction="none") * modulation
