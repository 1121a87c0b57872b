"""Helpers for batched assigners over padded GTs ``[B, M, ...]`` with a mask ``[B, M]``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V


def check_padded_gts(gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Optional[Tensor],
                     num_classes: Optional[int] = None, *, box_format: str = "xyxy") -> Tuple[Tensor, Tensor, Tensor]:
    """Validate padded GTs and normalise them.

    gt_labels [B, M] or [B, M, 1] (integer, or float holding integral values), gt_bboxes [B, M, 4] xyxy
    (or a box object with ``.tensor``), gt_mask [B, M] or [B, M, 1] (bool or 0/1; None = all valid) ->
    (labels [B, M] long, boxes [B, M, 4], mask [B, M] bool). Padding rows may hold anything; only
    masked-in rows are checked for inverted boxes and labels (``>= 0``, ``< num_classes`` when known,
    integral). ``box_format="xywhr"``: oriented boxes [B, M, 5], checked for negative sides instead.
    """
    V.check_choice("box_format", box_format, ("xyxy", "xywhr"))
    gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 4 if box_format == "xyxy" else 5), floating=True)
    B, M = gt_bboxes.shape[:2]
    gt_labels = V.as_tensor("gt_labels", gt_labels)
    if gt_labels.dim() == 3 and gt_labels.shape[-1] == 1:
        gt_labels = gt_labels[..., 0]
    V.check_tensor("gt_labels", gt_labels, ("B", "M"))
    if gt_mask is None:
        gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device)
    else:
        gt_mask = V.as_tensor("gt_mask", gt_mask)
        if gt_mask.dim() == 3 and gt_mask.shape[-1] == 1:
            gt_mask = gt_mask[..., 0]
        V.check_tensor("gt_mask", gt_mask, ("B", "M"))
    for symbol, dim in (("B", 0), ("M", 1)):
        V.check_agree(symbol, [("gt_bboxes", gt_bboxes, dim), ("gt_labels", gt_labels, dim),
                               ("gt_mask", gt_mask, dim)])
    V.check_binary("gt_mask", gt_mask)
    gt_mask = gt_mask.bool()
    V.check_same_device(gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask)
    (V.check_boxes if box_format == "xyxy" else V.check_rboxes)("gt_bboxes", gt_bboxes, gt_mask)
    labels = V.labels_input("gt_labels", gt_labels, (B, M), num_classes=num_classes, mask=gt_mask)
    return labels, gt_bboxes, gt_mask


def pad_gts(boxes_list, labels_list, device=None, dtype=torch.float32):
    """Lists of per-image [M_i, 4] boxes and [M_i] labels -> padded (labels [B, M], boxes [B, M, 4], mask [B, M]).

    Padding goes at the end of each image, so index j of image i is the j-th GT of that image.
    """
    B = len(boxes_list)
    M = max((len(b) for b in boxes_list), default=0)
    if device is None:
        device = boxes_list[0].device if B else torch.device("cpu")
    boxes = torch.zeros(B, M, 4, dtype=dtype, device=device)
    labels = torch.zeros(B, M, dtype=torch.long, device=device)
    mask = torch.zeros(B, M, dtype=torch.bool, device=device)
    for i, (b, l) in enumerate(zip(boxes_list, labels_list)):
        n = len(b)
        boxes[i, :n] = b.to(device=device, dtype=dtype)
        labels[i, :n] = l.to(device).long()
        mask[i, :n] = True
    return labels, boxes, mask
