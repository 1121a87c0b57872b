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
``max_overlaps`` None, ``match_cost`` extra) is as in :class:`HungarianAssigner`, the batched call
included: ``assign_batch(pred_scores, None, None, gt_labels, None, gt_mask, pred_masks=..., gt_masks=...)``
(the batched interface; masks [B, Q, ...] logits and [B, M, ...] in {0, 1}).
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from .hungarian import HungarianAssigner
from .match_costs import BaseMatchCost

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
