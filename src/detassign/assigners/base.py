"""The interface every assigner follows.

    result = assigner.assign(pred_instances, gt_instances, gt_instances_ignore=None, **kwargs)

``pred_instances`` / ``gt_instances`` are :class:`detassign.Instances` or mmengine ``InstanceData``
(mmdetection's convention: ``pred_instances.priors / .bboxes / .scores``, ``gt_instances.bboxes /
.labels``). Assigners hold configuration only: no state survives a call.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..structures import AssignResult


class BaseAssigner(ABC):
    """Base class: stores nothing between calls, ``__call__`` is ``assign``."""

    @abstractmethod
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign every prior / prediction of one image to a GT, background or ignore."""

    def __call__(self, *args, **kwargs):
        return self.assign(*args, **kwargs)

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        shown = []
        for name in params:
            if name == "self" or not hasattr(self, name):
                continue
            shown.append(f"{name}={getattr(self, name)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def empty_assign_result(num_gts: int, num_priors: int, device: torch.device, overlap_fill: float = 0.0,
                        overlap_dtype: torch.dtype = torch.float32) -> AssignResult:
    """Every prior negative (used when there are no GTs or no priors)."""
    gt_inds = torch.zeros(num_priors, dtype=torch.long, device=device)
    max_overlaps = torch.full((num_priors,), overlap_fill, dtype=overlap_dtype, device=device)
    labels = torch.full((num_priors,), -1, dtype=torch.long, device=device)
    return AssignResult(num_gts, gt_inds, max_overlaps, labels)


def labels_from_gt_inds(gt_inds: Tensor, gt_labels: Tensor) -> Tensor:
    """[A] 1-based gt_inds, [M] labels -> [A] labels (-1 where gt_inds <= 0).

    A gather plus ``where`` rather than boolean indexing, so no host synchronisation on CUDA.
    """
    if gt_labels is None or gt_labels.numel() == 0:
        return torch.full_like(gt_inds, -1)
    gathered = gt_labels.long()[(gt_inds - 1).clamp(min=0)]
    return torch.where(gt_inds > 0, gathered, torch.full_like(gathered, -1))
