"""detassign: label assignment for object-detection training.

Every assigner returns an :class:`AssignResult` (per image) or :class:`BatchAssignResult`
(padded batch) whose ``gt_inds`` is 1-based (0 negative, -1 ignore). Every batched assigner is called
``assign_batch(pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask)`` with a :class:`Priors`.
"""
from ._validate import set_value_checks, value_checks
from .registry import available_assigners, build_assigner, build_match_cost
from .structures import AssignResult, BatchAssignResult, Instances, Priors

__version__ = "0.1.0"

__all__ = [
    "AssignResult",
    "BatchAssignResult",
    "Instances",
    "Priors",
    "build_assigner",
    "build_match_cost",
    "available_assigners",
    "set_value_checks",
    "value_checks",
    "__version__",
]
