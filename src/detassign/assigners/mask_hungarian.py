"""One-to-one matching of query masks to GT masks (MaskFormer / Mask2Former).

mmdet 3.3.0 has no ``MaskHungarianAssigner`` class: Mask2Former's config builds a
``HungarianAssigner`` with three costs, which is what this class is:

    cost = 2.0 * ClassificationCost                       (-softmax prob of the GT class)
         + 5.0 * CrossEntropyLossCost(use_sigmoid=True)   (mean pixel BCE; or FocalLossCost(binary_input=True))
         + 5.0 * DiceCost(pred_act=True, eps=1.0)         (1 - dice of sigmoid(mask))

(defaults from ``configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py``).

Point sampling is the caller's job: Mask2Former samples 12544 random points per image,
reads query and GT masks there (``point_sample``) and passes ``[Q, P]`` / ``[M, P]`` masks. Any
trailing mask shape works (``[Q, H, W]``, ``[Q, H*W]``, ``[Q, P]``) as long as predictions and GTs
hold the same number of pixels / points. Everything else (results, empty cases, NaN errors,
``max_overlaps`` None, ``match_cost`` extra) is as in :class:`HungarianAssigner`.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
from torch import Tensor

from .. import _validate as V
from ..structures import BatchAssignResult, Instances
from .hungarian import HungarianAssigner
from .match_costs import BaseMatchCost, check_cost_inputs

__all__ = ["MaskHungarianAssigner"]

CostConfig = Optional[Union[BaseMatchCost, Mapping]]


class MaskHungarianAssigner(HungarianAssigner):
    """Hungarian matching with class + mask + dice costs (Mask2Former).

    Args:
        cls_cost: reads ``pred.scores`` [Q, C] logits and ``gt.labels`` [M].
        mask_cost: ``CrossEntropyLossCost(use_sigmoid=True)`` or ``FocalLossCost(binary_input=True)``;
            reads ``pred.masks`` [Q, ...] logits and ``gt.masks`` [M, ...] in {0, 1}.
        dice_cost: ``DiceCost``; reads the same masks.
        Any of the three may be None to drop that term (at least one must remain).
    """

    def __init__(self, cls_cost: CostConfig = dict(type="ClassificationCost", weight=2.0),
                 mask_cost: CostConfig = dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                 dice_cost: CostConfig = dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0)) -> None:
        super().__init__([c for c in (cls_cost, mask_cost, dice_cost) if c is not None])
        self.cls_cost = cls_cost
        self.mask_cost = mask_cost
        self.dice_cost = dice_cost

    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_masks: Tensor, gt_labels: Tensor, gt_masks: Tensor,
                     gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """Batched mask matching over padded GTs.

        pred_scores [B, Q, C] logits; pred_masks [B, Q, ...] logits (e.g. [B, Q, P] sampled points);
        gt_labels [B, M]; gt_masks [B, M, ...] in {0, 1}, same trailing size as pred_masks; gt_mask
        [B, M] (None: all valid). Returns BatchAssignResult(num_gts, gt_inds [B, Q], None, labels
        [B, Q], match_cost [B, Q]), equal to ``assign`` on each image's valid GTs.
        """
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "Q", "C"), floating=True)
        pred_masks, gt_masks = V.as_tensor("pred_masks", pred_masks), V.as_tensor("gt_masks", gt_masks)
        for name, masks, axis in (("pred_masks", pred_masks, "Q"), ("gt_masks", gt_masks, "M")):
            if masks.dim() < 3:
                raise ValueError(f"{name} must have shape [B, {axis}, ...] (pixels or sampled points), got "
                                 f"{tuple(masks.shape)}")
        gt_labels = V.as_tensor("gt_labels", gt_labels)
        V.check_tensor("gt_labels", gt_labels, ("B", "M"))
        V.check_agree("Q", [("pred_scores", pred_scores, 1), ("pred_masks", pred_masks, 1)])
        V.check_agree("M", [("gt_labels", gt_labels, 1), ("gt_masks", gt_masks, 1)])
        V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_masks", pred_masks, 0),
                            ("gt_labels", gt_labels, 0), ("gt_masks", gt_masks, 0)])
        B, M = gt_labels.shape
        if gt_mask is None:
            gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_labels.device)
        gt_mask = V.tensor_input("gt_mask", gt_mask, (B, M))
        V.check_same_device(pred_scores=pred_scores, pred_masks=pred_masks, gt_labels=gt_labels, gt_masks=gt_masks,
                            gt_mask=gt_mask)
        V.check_binary("gt_mask", gt_mask)
        gt_mask = gt_mask.bool()
        gt_labels = V.labels_input("gt_labels", gt_labels, (B, M), mask=gt_mask,
                                   num_classes=V.num_classes_of(pred_scores, 1) if self._reads_class_labels() else None)
        pred = Instances(scores=pred_scores, masks=pred_masks)
        checked = check_cost_inputs(self.match_costs, pred, Instances(labels=gt_labels, masks=gt_masks),
                                    batched=True, gt_mask=gt_mask)
        return self._match_batch(checked.pred, checked.gt, gt_mask, None,
                                 {"pred_scores": pred_scores, "pred_masks": pred_masks})
