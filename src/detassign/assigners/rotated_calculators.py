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

Inputs are checked as the horizontal assigners' (:mod:`detassign._validate`): lists / numpy arrays, wrong
shapes (naming the argument that disagrees), NaN / Inf, labels outside [0, C) or fractional, and GT / ignore
boxes with a negative side are refused; per image, an empty tensor of any dtype or rank means no GT (or no
priors); the batched calls check their padded inputs under their own names before looping.

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
from ..boxes import compute_dtype
from ..rotated_boxes import aligned_rotated_iou, inside_mmrotate, rbbox_overlaps, rotated_box_tensor, rotated_centers
from ..structures import AssignResult, BatchAssignResult, check_level_sizes
from . import atss as atss_steps
from ._batch import check_padded_gts
from .atss import ATSSAssigner
from .base import empty_assign_result, stack_image_results

__all__ = ["rotated_max_iou_assign", "rotated_atss_assign", "rotated_atss_assign_batch", "rotated_dsl_assign",
           "rotated_dsl_assign_batch",
           "RotatedATSSAssigner", "ROTATED_INSIDE_EPS"]

ROTATED_INSIDE_EPS = 0.01


def _optional_ignore(gt_instances_ignore) -> Optional[Tensor]:
    """Ignore boxes [K, 5] xywhr (an empty tensor of any dtype: none), or None; values checked by the caller."""
    boxes = None if gt_instances_ignore is None else getattr(gt_instances_ignore, "bboxes", None)
    return None if boxes is None else rotated_box_tensor("gt_instances_ignore.bboxes", boxes, ("K",), empty_rows=True)


def _gt_boxes(gt_instances) -> Tensor:
    """One image's GT boxes [M, 5] xywhr; an empty tensor of any dtype or rank means no GT."""
    return rotated_box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",),
                              empty_rows=True)


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
                                ("A",), empty_rows=True)
    gt_bboxes = _gt_boxes(gt_instances)
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances", required=False)
    ignore = _optional_ignore(gt_instances_ignore)
    V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_bboxes_ignore=ignore)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), allow_none=True,
                               rows_like=("gt_instances.bboxes", gt_bboxes))
    V.check_finite("pred_instances.priors", priors)
    V.check_rboxes("gt_instances.bboxes", gt_bboxes)
    V.check_rboxes("gt_instances_ignore.bboxes", ignore)
    device = priors.device
    if assigner.gpu_assign_thr > 0 and gt_bboxes.shape[0] > assigner.gpu_assign_thr:
        priors, gt_bboxes = priors.cpu(), gt_bboxes.cpu()
        ignore = None if ignore is None else ignore.cpu()
        gt_labels = None if gt_labels is None else gt_labels.cpu()
    overlaps = rbbox_overlaps(gt_bboxes, priors)                                            # [M, A]
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
                                ("A",), empty_rows=True)
    gt_bboxes = _gt_boxes(gt_instances)
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    scores = bboxes = None
    if assigner.alpha is not None:
        scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                                ("A", "C"), floating=True, empty_rows=True)
        bboxes = rotated_box_tensor("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                    ("A",), empty_rows=True)
        V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.scores", scores, 0),
                            ("pred_instances.bboxes", bboxes, 0)])
    levels = check_level_sizes(num_level_priors, priors.shape[0], "num_level_priors")
    V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, scores=scores, bboxes=bboxes)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), rows_like=("gt_instances.bboxes", gt_bboxes),
                               num_classes=None if scores is None else V.num_classes_of(scores))
    V.check_finite("pred_instances.priors", priors)
    V.check_rboxes("gt_instances.bboxes", gt_bboxes)
    V.check_finite("pred_instances.scores", scores)
    V.check_finite("pred_instances.bboxes", bboxes)
    dtype = compute_dtype(priors, gt_bboxes, scores, bboxes)
    M, A = gt_bboxes.shape[0], priors.shape[0]
    if M == 0 or A == 0:
        return empty_assign_result(M, A, priors.device, overlap_fill=0.0, overlap_dtype=dtype)
    priors, gt = priors.to(dtype), gt_bboxes.to(dtype)[None]                               # gt [1, M, 5]
    ignored = None
    ignore = _optional_ignore(gt_instances_ignore)
    V.check_rboxes("gt_instances_ignore.bboxes", ignore)
    if assigner.ignore_iof_thr > 0 and ignore is not None and ignore.shape[0] > 0:
        ignored = (rbbox_overlaps(priors, ignore.to(dtype), mode="iof").amax(dim=1) > assigner.ignore_iof_thr)[None]
    centers = rotated_centers(priors)
    mask = torch.ones(1, M, dtype=torch.bool, device=priors.device)
    cand = atss_steps.nearest_per_level(centers, rotated_centers(gt), levels, assigner.topk, ignored, None,
                                        mask)                                             # [1, M, K]
    gt_k = gt[:, :, None, :].expand(-1, -1, cand.shape[-1], -1)
    if assigner.alpha is None:
        quality = aligned_rotated_iou(_clamped(priors)[cand], _clamped(gt_k))
    else:
        ious = aligned_rotated_iou(_clamped(bboxes.to(dtype))[cand], _clamped(gt_k))
        logits = scores.to(dtype)[cand, gt_labels[None, :, None].expand_as(cand)]
        quality = logits.sigmoid() ** (1 - assigner.alpha) * ious ** assigner.alpha
    threshold = atss_steps.adaptive_threshold(quality)[..., None]
    passes = quality >= threshold if assigner.threshold_compare == "ge" else quality > threshold
    pts = centers[cand]                                                                    # [1, M, K, 2]
    inside = inside_mmrotate(pts[..., 0], pts[..., 1], gt_k, ROTATED_INSIDE_EPS)
    background = None if ignored is None else torch.where(ignored, -1, 0)
    gt_inds, labels, max_overlaps = atss_steps.resolve_by_quality(cand, quality, passes & inside, gt_labels[None], A,
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

    priors = rotated_box_tensor("priors", priors, ("A",))
    pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = _check_batch(
        priors, gt_labels, gt_bboxes, gt_mask, pred_scores, pred_bboxes, predictions=assigner.alpha is not None)
    results = []
    for b in range(gt_bboxes.shape[0]):
        keep = torch.nonzero(gt_mask[b]).squeeze(1)
        pred = Instances(priors=priors)
        if assigner.alpha is not None:
            pred = Instances(priors=priors, scores=pred_scores[b], bboxes=pred_bboxes[b])
        results.append((keep, rotated_atss_assign(assigner, pred, num_level_priors,
                                                  Instances(bboxes=gt_bboxes[b, keep], labels=gt_labels[b, keep]))))
    return stack_image_results(results, gt_mask, gt_labels, priors.shape[0])


def _check_batch(priors: Tensor, gt_labels, gt_bboxes, gt_mask, pred_scores, pred_bboxes, predictions: bool):
    """The padded inputs of a batched call, checked under their own names before the per-image loop.

    priors [A, ...] (shaped by the caller), GTs [B, M, 5] xywhr and, when the assigner reads them
    (``predictions``), pred_scores [B, A, C] logits and pred_bboxes [B, A, 5] -> (pred_scores, pred_bboxes,
    labels [B, M] long, boxes, mask [B, M] bool); predictions it does not read come back as None."""
    if not predictions:
        pred_scores = pred_bboxes = None
    else:
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
        pred_bboxes = rotated_box_tensor("pred_bboxes", pred_bboxes, ("B", "A"))
        V.check_agree("A", [("priors", priors, 0), ("pred_scores", pred_scores, 1), ("pred_bboxes", pred_bboxes, 1)])
    V.check_same_device(priors=priors, pred_scores=pred_scores, pred_bboxes=pred_bboxes, gt_labels=gt_labels,
                        gt_bboxes=gt_bboxes, gt_mask=gt_mask)
    classes = None if pred_scores is None else V.num_classes_of(pred_scores, 1)
    gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, classes, box_format="xywhr")
    if pred_scores is not None:
        V.check_agree("B", [("gt_bboxes", gt_bboxes, 0), ("pred_scores", pred_scores, 0),
                            ("pred_bboxes", pred_bboxes, 0)])
        V.check_finite("pred_scores", pred_scores)
        V.check_finite("pred_bboxes", pred_bboxes)
    V.check_finite("priors", priors)
    return pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask


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

    priors = _dsl_priors("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                         empty_rows=True)
    bboxes = rotated_box_tensor("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                ("A",), empty_rows=True)
    scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                            ("A", "C"), floating=True, empty_rows=True)
    V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.bboxes", bboxes, 0),
                        ("pred_instances.scores", scores, 0)])
    gt_bboxes = _gt_boxes(gt_instances)
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), num_classes=V.num_classes_of(scores),
                               rows_like=("gt_instances.bboxes", gt_bboxes))
    for name, x in (("pred_instances.priors", priors), ("pred_instances.bboxes", bboxes),
                    ("pred_instances.scores", scores)):
        V.check_finite(name, x)
    V.check_rboxes("gt_instances.bboxes", gt_bboxes)
    M, A = gt_bboxes.shape[0], priors.shape[0]
    dtype = compute_dtype(bboxes)
    if M == 0 or A == 0:
        return empty_assign_result(M, A, priors.device, 0.0, dtype)
    inside = inside_mmrotate(priors[None, :, 0], priors[None, :, 1], gt_bboxes[:, None, :], ROTATED_INSIDE_EPS)
    valid = inside.any(dim=0)                                                               # [A]
    if not bool(valid.any()):
        return empty_assign_result(M, A, priors.device, 0.0, dtype)
    cand = priors[valid]
    center_cost = D.exact_soft_center_prior(cand[:, :2], cand[:, 2], rotated_centers(gt_bboxes),
                                            assigner.soft_center_radius)                   # [A', M]
    ious = rbbox_overlaps(bboxes[valid], gt_bboxes)                                         # [A', M]
    iou_cost = -torch.log(ious + D.EPS) * assigner.iou_weight
    cost = D.exact_cls_cost(scores[valid], gt_labels.long(), ious) + iou_cost + center_cost
    fg, gt_index, matched = DK.mmdet_dynamic_k_matching(cost, ious, assigner.topk)
    return DK.mmdet_result(M, A, valid, fg, gt_index, matched, gt_labels, -D.INF)


def _dsl_priors(name: str, priors, empty_rows: bool = False) -> Tensor:
    """DSL's point priors [A, >= 3] ``(cx, cy, stride, ...)``; an empty tensor of any rank: no priors."""
    priors = V.tensor_input(name, priors, ("A", None), floating=True, empty_rows=empty_rows)
    if priors.shape[0] and priors.shape[1] < 3:
        raise ValueError(f"{name} must be [A, 4] points (cx, cy, stride_w, stride_h), got {tuple(priors.shape)}")
    return priors


def rotated_dsl_assign_batch(assigner, pred_scores: Tensor, pred_bboxes: Tensor, priors: Tensor, gt_labels: Tensor,
                             gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
    """Batched rotated DSL: pred_scores [B, A, C] logits, pred_bboxes [B, A, 5], priors [A, 4] points,
    gt_labels [B, M], gt_bboxes [B, M, 5], gt_mask [B, M]; image by image through
    :func:`rotated_dsl_assign` (GT indices refer to the padded M)."""
    from ..structures import Instances

    priors = _dsl_priors("priors", priors)
    pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = _check_batch(
        priors, gt_labels, gt_bboxes, gt_mask, pred_scores, pred_bboxes, predictions=True)
    results = []
    for b in range(gt_bboxes.shape[0]):
        keep = torch.nonzero(gt_mask[b]).squeeze(1)
        results.append((keep, rotated_dsl_assign(
            assigner, Instances(priors=priors, bboxes=pred_bboxes[b], scores=pred_scores[b]),
            Instances(bboxes=gt_bboxes[b, keep], labels=gt_labels[b, keep]))))
    return stack_image_results(results, gt_mask, gt_labels, priors.shape[0])
