"""Distribution Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, eq. 6).

Shape symbols: N predictions, R bins (``reg_max``), bins sit at the integers ``0 .. R-1``.

A continuous target ``y`` lying between bins ``l = floor(y)`` and ``r = l + 1`` is represented by the
two-point distribution ``(r - y) at l, (y - l) at r``; the loss is the cross-entropy of the predicted
softmax against it: ``-((r - y) * log S_l + (y - l) * log S_r)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import value_checks_enabled

__all__ = ["distribution_focal_loss", "dfl_unchecked", "dfl_decode"]


def dfl_decode(pred_dist: Tensor, reg_max: int) -> Tensor:
    """Expected bin value of each side. pred_dist [..., 4 * R] logits -> [..., 4] in [0, R - 1]."""
    if pred_dist.shape[-1] != 4 * reg_max:
        raise ValueError(f"pred_dist must have shape [..., {4 * reg_max}] (4 * reg_max), got {tuple(pred_dist.shape)}")
    prob = pred_dist.unflatten(-1, (4, reg_max)).softmax(-1)  # [..., 4, R]
    bins = torch.arange(reg_max, dtype=prob.dtype, device=prob.device)
    return prob.matmul(bins)  # [..., 4]


def distribution_focal_loss(pred_logits: Tensor, target: Tensor) -> Tensor:
    """DFL of each distribution.

    pred_logits [..., R] (unnormalised), target [...] continuous in ``[0, R - 1)`` -> [...] loss.
    Callers keep ``target < R - 1`` (ultralytics clamps at ``R - 1 - 0.01``) so the right bin exists;
    a target outside ``[0, R - 1)`` (or NaN) raises ``ValueError`` when value checks are enabled.
    """
    if pred_logits.dim() < 1 or target.shape != pred_logits.shape[:-1]:
        raise ValueError(f"pred_logits must be [..., R] and target [...] with the same leading shape, got "
                         f"{tuple(pred_logits.shape)} and {tuple(target.shape)}")
    num_bins = pred_logits.shape[-1]
    if value_checks_enabled() and target.numel() and not bool(((target >= 0) & (target < num_bins - 1)).all()):
        raise ValueError(f"target must lie in [0, {num_bins - 1}) for {num_bins} bins, got range "
                         f"[{float(target.min())}, {float(target.max())}]")
    return dfl_unchecked(pred_logits, target)


def dfl_unchecked(pred_logits: Tensor, target: Tensor) -> Tensor:
    """:func:`distribution_focal_loss` without checks (no host sync), for targets in range by construction."""
    left = target.long()  # floor, targets are >= 0
    weight_left = (left + 1).to(target.dtype) - target  # linear interpolation weights of the two bins
    weight_right = 1 - weight_left
    log_prob = F.log_softmax(pred_logits, dim=-1)  # [..., R]
    return -(log_prob.gather(-1, left[..., None])[..., 0] * weight_left
             + log_prob.gather(-1, (left + 1)[..., None])[..., 0] * weight_right)
