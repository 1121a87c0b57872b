"""mmrotate's rotated overlap calculator in MaxIoU, ATSS and DynamicSoftLabel assignment.

mmrotate (1.x) configs reuse mmdet's assigners with a rotated IoU calculator::

    assigner=dict(type='mmdet.MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                  ignore_iof_thr=-1, iou_calculator=dict(type='RBboxOverlaps2D'))        # rotated RetinaNet
    assigner=dict(type='RotatedATSSAssigner', topk=9, iou_calculator=dict(type='RBboxOverlaps2D'))
    assigner=dict(type='mmdet.DynamicSoftLabelAssigner', topk=13,
                  iou_calculator=dict(type='RBboxOverlaps2D'))                              # rotated RTMDet

The same configs build here: ``MaxIoUAssigner``, ``ATSSAssigner`` and ``DynamicSoftLabelAssigner`` accept
``iou_calculator=dict(type="RBboxOverlaps2D")`` and then read boxes as ``[..., 5]`` xywhr (a sixth score
column is dropped, mmrotate ``RotatedBoxes`` are unwrapped) and run the functions of this module, which
keep each algorithm and swap its geometry for mmrotate's:

* overlaps: :func:`detassign.rotated_boxes.rbbox_overlaps` (exact rotated IoU / IoF, sides clamped at
  1e-3 px, as mmrotate's ``rbbox_overlaps`` over mmcv's ``box_iou_rotated``);
* centres: ``(cx, cy)`` (``RotatedBoxes.centers``), used by ATSS's distances and DSL's centre prior;
* point in box: mmrotate's ``RotatedBoxes.find_inside_points`` (the offset rotated into the box frame,
  ``eps`` inside each side: 0.01 for ATSS, which passes it, and DSL, whose default it is).

``RotatedATSSAssigner`` (mmrotate's name) is ``ATSSAssigner`` with this calculator as its default. The
batched DSL path runs the per-image path image by image (mmrotate has no batched form to match). mmrotate
and mmcv's compiled ops do not install on these machines, so parity is checked through the pieces: the
overlaps against shapely polygons, and each assigner against its horizontal twin on axis-aligned boxes
(angle 0), whose parity with mmdet is tested.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _validate as V
from ..rotated_boxes import aligned_rotated_iou, inside_mmrotate, rbbox_overlaps, rotated_box_tensor, rotated_centers
from ..structures import AssignResult, BatchAssignResult
from . import atss as atss_steps
from .atss import ATSSAssigner
from .base import empty_assign_result

__all__ = ["rotated_max_iou_assign", "rotated_atss_assign", "rotated_atss_assign_batch", "rotated_dsl_assign",
           "rotated_dsl_assign_batch",
           "RotatedATSSAssigner", "ROTATED_INSIDE_EPS"]

ROTATED_INSIDE_EPS = 0.01


def _optional_ignore(gt_instances_ignore) -> Optional[Tensor]:
    boxes = None if gt_instances_ignore is None else getattr(gt_instances_ignore, "bboxes", None)
    return None if boxes is None else rotated_box_tensor("gt_instances_ignore.bboxes", boxes, ("K",))


# ----------------------------------------------------------------------------- MaxIoU
def rotated_max_iou_assign(assigner, pred_instances, gt_instances, gt_instances_ignore=None) -> AssignResult:
    """``MaxIoUAssigner.assign`` with rotated boxes: priors [A, 5], GTs [M, 5], ignore boxes [K, 5] xywhr.

    The thresholds, the low-quality step and the sentinels are the assigner's own
    (``assigner.assign_wrt_overlaps``); ``perm_repeat_gt_cfg`` (jittering of xyxy corners) has no rotated
    form and is refused.
    """
    if assigner.perm_repeat_gt_cfg is not None:
        raise ValueError("perm_repeat_gt_cfg is not supported with iou_calculator=dict(type='RBboxOverlaps2D')")
    priors = rotated_box_tensor("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A",))
    gt_boxes = rotated_box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",))
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances", required=False)
    if gt_labels is not None:
        V.check_tensor("gt_instances.labels", gt_labels, (gt_boxes.shape[0],))
    ignore = _optional_ignore(gt_instances_ignore)
    V.check_same_device(priors=priors, gt_bboxes=gt_boxes, gt_labels=gt_labels, gt_bboxes_ignore=ignore)
    device = priors.device
    if assigner.gpu_assign_thr > 0 and gt_boxes.shape[0] > assigner.gpu_assign_thr:
        priors, gt_boxes = priors.cpu(), gt_boxes.cpu()
        ignore = None if ignore is None else ignore.cpu()
        gt_labels = None if gt_labels is None else gt_labels.cpu()
    overlaps = rbbox_overlaps(gt_boxes, priors)                                            # [M, A]
    if assigner.ignore_iof_thr > 0 and ignore is not None and ignore.numel() > 0 and priors.numel() > 0:
        if assigner.ignore_wrt_candidates:
            iof = rbbox_overlaps(priors, ignore, mode="iof").amax(dim=1)                   # over the prior's area
        else:
            iof = rbbox_overlaps(ignore, priors, mode="iof").amax(dim=0)
        overlaps = overlaps.masked_fill((iof > assigner.ignore_iof_thr)[None, :], -1.0)
    result = assigner.assign_wrt_overlaps(overlaps, gt_labels)
    for name in ("gt_inds", "max_overlaps", "labels"):
        value = getattr(result, name)
        if value is not None:
            setattr(result, name, value.to(device))
    return result


# ----------------------------------------------------------------------------- ATSS
def rotated_atss_assign(assigner, pred_instances, num_level_priors: Sequence[int], gt_instances,
                        gt_instances_ignore=None) -> AssignResult:
    """``ATSSAssigner.assign`` with rotated boxes (mmrotate ``RotatedATSSAssigner``): priors [A, 5],
    GTs [M, 5] xywhr; DDOD mode (``alpha``) reads ``pred_instances.scores`` [A, C] logits and
    ``.bboxes`` [A, 5]. Steps as ATSS with centre distances, rotated IoU and mmrotate's inside test."""

    priors = rotated_box_tensor("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A",))
    gt_boxes = rotated_box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",))
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    V.check_tensor("gt_instances.labels", gt_labels, (gt_boxes.shape[0],), floating=False)
    scores = bboxes = None
    if assigner.alpha is not None:
        scores = V.get_field(pred_instances, "scores", "pred_instances")
        V.check_tensor("pred_instances.scores", scores, (priors.shape[0], "C"), floating=True)
        bboxes = rotated_box_tensor("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                    ("A",))
    levels = atss_steps._check_levels(num_level_priors, priors.shape[0])
    V.check_same_device(priors=priors, gt_bboxes=gt_boxes, gt_labels=gt_labels, scores=scores)
    dtype = atss_steps.compute_dtype(priors, gt_boxes, scores, bboxes)
    M, A = gt_boxes.shape[0], priors.shape[0]
    if M == 0 or A == 0:
        return empty_assign_result(M, A, priors.device, overlap_fill=0.0, overlap_dtype=dtype)
    priors, gt = priors.to(dtype), gt_boxes.to(dtype)[None]                               # gt [1, M, 5]
    ignored = None
    ignore = _optional_ignore(gt_instances_ignore)
    if assigner.ignore_iof_thr > 0 and ignore is not None and ignore.shape[0] > 0:
        ignored = (rbbox_overlaps(priors, ignore.to(dtype), mode="iof").amax(dim=1) > assigner.ignore_iof_thr)[None]
    centers = rotated_centers(priors)
    mask = torch.ones(1, M, dtype=torch.bool, device=priors.device)
    cand = atss_steps.nearest_per_level(centers, rotated_centers(gt), levels, assigner.topk, ignored, None, mask)  # [1, M, K]
    gt_k = gt[:, :, None, :].expand(-1, -1, cand.shape[-1], -1)
    if assigner.alpha is None:
        quality = aligned_rotated_iou(_clamped(priors)[cand], _clamped(gt_k))
    else:
        ious = aligned_rotated_iou(_clamped(bboxes.to(dtype))[cand], _clamped(gt_k))
        logits = scores.to(dtype)[cand, gt_labels.long()[None, :, None].expand_as(cand)]
        quality = logits.sigmoid() ** (1 - assigner.alpha) * ious ** assigner.alpha
    threshold = atss_steps.adaptive_threshold(quality)[..., None]
    passes = quality >= threshold if assigner.threshold_compare == "ge" else quality > threshold
    pts = centers[cand]                                                                    # [1, M, K, 2]
    inside = inside_mmrotate(pts[..., 0], pts[..., 1], gt_k, ROTATED_INSIDE_EPS)
    background = None if ignored is None else torch.where(ignored, -1, 0)
    gt_inds, labels, max_overlaps = atss_steps.resolve_by_quality(cand, quality, passes & inside, gt_labels.long()[None], A,
                                                         background, mask.any(dim=1))
    return AssignResult(M, gt_inds[0], max_overlaps[0], labels[0])


def _clamped(boxes: Tensor) -> Tensor:
    """Sides clamped below at 1e-3 px on a detached copy, as mmrotate's ``rbbox_overlaps`` does."""
    boxes = boxes.detach().clone()
    boxes[..., 2:4] = boxes[..., 2:4].clamp(min=1e-3)
    return boxes


def rotated_atss_assign_batch(assigner, priors: Tensor, num_level_priors: Sequence[int], gt_labels: Tensor,
                              gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None, pred_scores: Optional[Tensor] = None,
                              pred_bboxes: Optional[Tensor] = None) -> BatchAssignResult:
    """Batched rotated ATSS: priors [A, 5], gt_labels [B, M], gt_bboxes [B, M, 5], gt_mask [B, M] (DDOD:
    pred_scores [B, A, C], pred_bboxes [B, A, 5]); image by image through :func:`rotated_atss_assign`."""
    from ..structures import Instances

    V.check_tensor("gt_bboxes", gt_bboxes, ("B", "M", 5), floating=True)
    B, M = gt_bboxes.shape[:2]
    gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device) if gt_mask is None else gt_mask.bool()
    V.check_tensor("gt_mask", gt_mask, (B, M))
    results = []
    for b in range(B):
        keep = torch.nonzero(gt_mask[b]).squeeze(1)
        pred = Instances(priors=priors)
        if assigner.alpha is not None:
            pred = Instances(priors=priors, scores=pred_scores[b], bboxes=pred_bboxes[b])
        results.append((keep, rotated_atss_assign(assigner, pred, num_level_priors,
                                                  Instances(bboxes=gt_bboxes[b, keep], labels=gt_labels[b, keep]))))
    return _stack(results, gt_mask)


def _stack(results, gt_mask: Tensor) -> BatchAssignResult:
    """Per-image results over the valid GTs -> a BatchAssignResult whose indices refer to the padded M."""
    gt_inds = torch.stack([torch.where(r.gt_inds > 0, keep[(r.gt_inds - 1).clamp(min=0)] + 1, r.gt_inds)
                           for keep, r in results])
    return BatchAssignResult(gt_mask.sum(1), gt_inds, torch.stack([r.max_overlaps for _, r in results]),
                             torch.stack([r.labels for _, r in results]))


class RotatedATSSAssigner(ATSSAssigner):
    """mmrotate's ``RotatedATSSAssigner``: :class:`ATSSAssigner` whose ``iou_calculator`` defaults to
    ``dict(type="RBboxOverlaps2D")`` (priors and GTs [..., 5] xywhr)."""

    def __init__(self, topk: int = 9, alpha: Optional[float] = None, iou_calculator: Optional[dict] = None,
                 ignore_iof_thr: float = -1, **kwargs) -> None:
        super().__init__(topk=topk, alpha=alpha, ignore_iof_thr=ignore_iof_thr,
                         iou_calculator=dict(type="RBboxOverlaps2D") if iou_calculator is None else iou_calculator,
                         **kwargs)


# ----------------------------------------------------------------------------- DynamicSoftLabel
def rotated_dsl_assign(assigner, pred_instances, gt_instances) -> AssignResult:
    """``DynamicSoftLabelAssigner.assign`` with rotated boxes (mmrotate's rotated RTMDet): priors [A, >= 3]
    points ``(cx, cy, stride, ...)``, ``bboxes`` [A, 5] xywhr, ``scores`` [A, C] logits; GTs [M, 5]. The
    candidates are the priors inside a GT by mmrotate's test (eps 0.01), the centre prior uses ``(cx, cy)``
    and the IoU is the rotated one; costs and dynamic-k matching are mmdet's, op for op."""
    from . import _dynamic_k as DK
    from . import dynamic_soft_label as D

    priors = V.get_field(pred_instances, "priors", "pred_instances")
    V.check_tensor("pred_instances.priors", priors, ("A", None), floating=True)
    if priors.shape[1] < 3:
        raise ValueError(f"pred_instances.priors must be [A, 4] points (cx, cy, stride_w, stride_h), got "
                         f"{tuple(priors.shape)}")
    bboxes = rotated_box_tensor("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                (priors.shape[0],))
    scores = V.get_field(pred_instances, "scores", "pred_instances")
    V.check_tensor("pred_instances.scores", scores, (priors.shape[0], "C"), floating=True)
    gt_boxes = rotated_box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",))
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    V.check_tensor("gt_instances.labels", gt_labels, (gt_boxes.shape[0],), floating=False)
    V.check_labels("gt_instances.labels", gt_labels, scores.shape[1])
    V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_boxes, gt_labels=gt_labels)
    M, A = gt_boxes.shape[0], priors.shape[0]
    dtype = torch.float64 if bboxes.dtype == torch.float64 else torch.float32
    if M == 0 or A == 0:
        return empty_assign_result(M, A, priors.device, 0.0, dtype)
    inside = inside_mmrotate(priors[None, :, 0], priors[None, :, 1], gt_boxes[:, None, :], ROTATED_INSIDE_EPS)
    valid = inside.any(dim=0)                                                               # [A]
    if not bool(valid.any()):
        return empty_assign_result(M, A, priors.device, 0.0, dtype)
    cand = priors[valid]
    center_cost = D.exact_soft_center_prior(cand[:, :2], cand[:, 2], rotated_centers(gt_boxes),
                                            assigner.soft_center_radius)                   # [A', M]
    ious = rbbox_overlaps(bboxes[valid], gt_boxes)                                         # [A', M]
    iou_cost = -torch.log(ious + D.EPS) * assigner.iou_weight
    cost = D.exact_cls_cost(scores[valid], gt_labels.long(), ious) + iou_cost + center_cost
    fg, gt_index, matched = DK.mmdet_dynamic_k_matching(cost, ious, assigner.topk)
    return DK.mmdet_result(M, A, valid, fg, gt_index, matched, gt_labels.long(), -D.INF)


def rotated_dsl_assign_batch(assigner, pred_scores: Tensor, pred_bboxes: Tensor, priors: Tensor, gt_labels: Tensor,
                             gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
    """Batched rotated DSL: pred_scores [B, A, C] logits, pred_bboxes [B, A, 5], priors [A, 4] points,
    gt_labels [B, M], gt_bboxes [B, M, 5], gt_mask [B, M]; image by image through
    :func:`rotated_dsl_assign` (GT indices refer to the padded M)."""
    from ..structures import Instances

    V.check_tensor("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
    B, A, _ = pred_scores.shape
    V.check_tensor("pred_bboxes", pred_bboxes, (B, A, 5), floating=True)
    V.check_tensor("gt_bboxes", gt_bboxes, (B, "M", 5), floating=True)
    M = gt_bboxes.shape[1]
    gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device) if gt_mask is None else gt_mask.bool()
    V.check_tensor("gt_mask", gt_mask, (B, M))
    results = []
    for b in range(B):
        keep = torch.nonzero(gt_mask[b]).squeeze(1)
        results.append((keep, rotated_dsl_assign(
            assigner, Instances(priors=priors, bboxes=pred_bboxes[b], scores=pred_scores[b]),
            Instances(bboxes=gt_bboxes[b, keep], labels=gt_labels[b, keep]))))
    return _stack(results, gt_mask)
