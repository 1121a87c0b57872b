"""YOLOv8 / YOLO11 detection loss with a pluggable label assigner.

Shape symbols: B batch, A anchor points (sum over levels of H_l * W_l), M GTs per image (padded),
K classes, R DFL bins (``reg_max``).

The loss does not hold the model. ``DetectionLoss(...)(feats, targets)`` takes the head's raw per-level
maps [B, 4R + K, H_l, W_l] and padded targets, and computes, as ultralytics' ``v8DetectionLoss``:

1. ``make_anchor_points``: anchor points at cell centers (offset 0.5), in grid units, and their strides;
2. ``decode_pred_boxes``: DFL expectation (softmax over R bins dotted with 0..R-1) -> (l, t, r, b)
   distances -> xyxy boxes in grid units;
3. ``assign``: the assigner's batched interface gets detached class logits, boxes in pixels,
   :func:`loss_priors` (anchor points and strides in pixels, the levels, square anchor boxes) and the GTs
   in pixels; it yields ``target_boxes`` [B, A, 4] px, ``target_scores`` [B, A, K] and ``fg_mask``;
4. ``classification_loss``: BCE-with-logits against the soft ``target_scores``, summed over anchors and
   classes, divided by ``target_scores_sum = max(sum(target_scores), 1)``;
5. ``box_losses``: on foreground anchors, ``(1 - CIoU) * w`` (boxes in grid units) and DFL of the
   target distances clamped to ``[0, R - 1 - 0.01]`` (mean over the 4 sides) times ``w``, where
   ``w = target_scores.sum(-1)``; both divided by ``target_scores_sum``;
6. gains ``box 7.5, cls 0.5, dfl 1.5``; returns ``(sum(items) * B, items.detach())`` with
   ``items = (box, cls, dfl)``, ultralytics' scaling (the trainer's loss is items * batch size).
   ``forward(..., return_assignment=True)`` adds a third element, a :class:`BatchAssignment` (the
   assigner's result on this batch, the GTs it saw, the level layout and the seconds it took), whose
   ``stats()`` are :func:`detassign.stats.assignment_stats`; the module keeps no state between calls.

Values equal ``v8DetectionLoss`` (ultralytics 8.4.190) to float rounding (``tests/yolo/test_yolo_loss.py``:
items, total and gradients w.r.t. the raw maps) when the assigner is
``TaskAlignedAssigner(preset="ultralytics_loss", tie_break="torch")``. The default assigner
(:data:`DEFAULT_ASSIGNER`, the same preset) uses ``tie_break="index"`` (deterministic across devices,
faster sparse path); it
differs from ultralytics only where a GT has zero-metric anchors inside its top-k, whose choice
ultralytics leaves to ``torch.topk``'s unspecified tie order.
The box and DFL terms are computed densely over all anchors and masked (no host synchronisation);
non-foreground anchors contribute exact zeros.

Assigners (``assigner=`` an object, a config dict for :func:`detassign.build_assigner`, or None): every
assigner is called through the batched interface, ``assign_batch(pred_scores [B, A, K] logits,
pred_bboxes [B, A, 4] px, priors, gt_labels, gt_bboxes, gt_mask)``; each reads from the
:class:`detassign.Priors` what its algorithm needs (TaskAligned the points; SimOTA / DynamicSoftLabel
points and strides; ATSS and MaxIoU the square anchor boxes of side ``anchor_scale * stride``, 5 as
PP-YOLOE / mmyolo use ATSS during their warm-up epochs). The default is :data:`DEFAULT_ASSIGNER`,
ultralytics' training TaskAligned (``preset="ultralytics_loss"``: topk 10, alpha 0.5, beta 6). A
result's ``target_boxes`` / ``target_scores`` are used as they are when present.

For assigners that return only ``gt_inds`` / ``labels``, the loss builds the targets itself:
``target_boxes`` = the assigned GT boxes, ``target_scores = one_hot(label) * IoU(pred_box, gt_box)``
(detached, clamped at 0): the IoU-quality soft label of GFL / VarifocalNet / RTMDet. Priors the
assigner ignores (``gt_inds == -1``) are left out of the classification loss.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as V
from ..assigners._batch import check_padded_gts
from ..boxes import aligned_iou, cxcywh_to_xyxy
from ..losses import bbox_ciou_loss, dfl_decode, dfl_unchecked
from ..structures import Priors
from .predict import distances_to_boxes, make_anchor_points, split_predictions

__all__ = ["DetectionLoss", "DetectionTargets", "AssignedTargets", "BatchAssignment", "targets_from_yolo_batch",
           "as_targets", "decode_pred_boxes", "classification_loss", "box_losses", "boxes_to_distances",
           "targets_from_gt_inds", "targets_of", "loss_priors", "assign_like_loss", "as_assigner", "DEFAULT_ASSIGNER"]

# TaskAligned as ultralytics' v8DetectionLoss builds it (topk 10, alpha 0.5, beta 6): the one definition
DEFAULT_ASSIGNER = dict(type="TaskAlignedAssigner", preset="ultralytics_loss")
DFL_MARGIN = 0.01  # target distances stay below R - 1 so the right DFL bin exists


@dataclass
class DetectionTargets:
    """Padded GTs of a batch: labels [B, M] long, bboxes [B, M, 4] xyxy pixels, mask [B, M] bool (None: all valid)."""

    labels: Tensor
    bboxes: Tensor
    mask: Optional[Tensor] = None

    def to(self, device) -> "DetectionTargets":
        mask = None if self.mask is None else self.mask.to(device)
        return DetectionTargets(self.labels.to(device), self.bboxes.to(device), mask)


@dataclass
class AssignedTargets:
    """What the loss needs from an assignment: target_boxes [B, A, 4] px, target_scores [B, A, K],
    fg_mask [B, A] bool, cls_weight [B, A] (0 for ignored priors) or None; ``result`` is the assigner's
    own result (``gt_inds`` [B, A] ...) when the targets came from one."""

    target_boxes: Tensor
    target_scores: Tensor
    fg_mask: Tensor
    cls_weight: Optional[Tensor] = None
    result: Optional[Any] = None


@dataclass
class BatchAssignment:
    """One batch's assignment, as ``DetectionLoss(..., return_assignment=True)`` returns it.

    ``result``: the assigner's result (``gt_inds`` [B, A] 1-based, 0 negative, -1 ignored);
    ``targets``: what the loss trained with (:class:`AssignedTargets`); ``gt_bboxes`` [B, M, 4] px and
    ``gt_mask`` [B, M]: the GTs it saw; ``level_sizes`` / ``strides``: priors per level; ``seconds``: wall
    time of the assigner call (the device synchronised before and after when it is a GPU).
    """

    result: Any
    targets: AssignedTargets
    gt_bboxes: Tensor
    gt_mask: Tensor
    level_sizes: List[int]
    strides: List[int]
    seconds: float

    def stats(self):
        """:func:`detassign.stats.assignment_stats` of this batch (by COCO size of the GTs and by level)."""
        from ..stats import assignment_stats

        return assignment_stats(self.result, self.gt_bboxes, self.gt_mask, self.level_sizes, self.strides)


def targets_from_yolo_batch(batch_idx: Tensor, cls: Tensor, bboxes: Tensor, batch_size: int,
                            img_size: Sequence[int]) -> DetectionTargets:
    """ultralytics-style flat targets -> padded :class:`DetectionTargets`.

    batch_idx [n] image index, cls [n] or [n, 1] class, bboxes [n, 4] normalised (cx, cy, w, h);
    img_size (h, w) in pixels. GTs keep their order within each image; M = max GTs per image.
    """
    V.check_tensor("bboxes", bboxes, ("n", 4), floating=True)
    n = bboxes.shape[0]
    batch_idx = batch_idx.reshape(-1).long()
    cls = cls.reshape(-1)
    V.check_tensor("batch_idx", batch_idx, (n,))
    V.check_tensor("cls", cls, (n,))
    device = bboxes.device
    if V.value_checks_enabled() and n and bool(((batch_idx < 0) | (batch_idx >= batch_size)).any()):
        raise ValueError(f"batch_idx must lie in [0, {batch_size}) (batch_size), got range "
                         f"[{int(batch_idx.min())}, {int(batch_idx.max())}]")
    counts = torch.bincount(batch_idx, minlength=batch_size) if n else torch.zeros(batch_size, dtype=torch.long,
                                                                                       device=device)
    max_gts = int(counts.max()) if batch_size else 0
    # position of each GT inside its image, in input order
    order = torch.argsort(batch_idx, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.empty_like(batch_idx)
    within[order] = torch.arange(n, device=device) - starts[batch_idx[order]]
    h, w = float(img_size[0]), float(img_size[1])
    scale = bboxes.new_tensor([w, h, w, h])
    labels = torch.zeros(batch_size, max_gts, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, max_gts, 4, dtype=bboxes.dtype, device=device)
    mask = torch.zeros(batch_size, max_gts, dtype=torch.bool, device=device)
    labels[batch_idx, within] = cls.long()
    boxes[batch_idx, within] = cxcywh_to_xyxy(bboxes * scale)
    mask[batch_idx, within] = True
    return DetectionTargets(labels, boxes, mask)


def as_targets(targets: Union[DetectionTargets, Mapping[str, Tensor]], batch_size: int,
               img_size: Sequence[int]) -> DetectionTargets:
    """Accept :class:`DetectionTargets`, ``dict(labels=, bboxes=, mask=)`` (mask optional) or an
    ultralytics batch ``dict(batch_idx=, cls=, bboxes=)`` (normalised cxcywh)."""
    if isinstance(targets, DetectionTargets):
        return targets
    if isinstance(targets, Mapping):
        if "batch_idx" in targets:
            return targets_from_yolo_batch(targets["batch_idx"], targets["cls"], targets["bboxes"], batch_size,
                                           img_size)
        if "labels" in targets and "bboxes" in targets:
            return DetectionTargets(targets["labels"], targets["bboxes"], targets.get("mask"))
        raise ValueError(f"targets dict needs keys (labels, bboxes[, mask]) or (batch_idx, cls, bboxes), "
                         f"got {sorted(targets)}")
    raise TypeError(f"targets must be DetectionTargets or a dict, got {type(targets).__name__}")


def decode_pred_boxes(box_logits: Tensor, anchor_points: Tensor, reg_max: int) -> Tensor:
    """box_logits [B, A, 4R], anchor_points [A, 2] grid units -> xyxy boxes [B, A, 4] in grid units."""
    return distances_to_boxes(dfl_decode(box_logits, reg_max), anchor_points)


def boxes_to_distances(anchor_points: Tensor, boxes: Tensor, max_dist: float) -> Tensor:
    """xyxy boxes [..., A, 4] -> (l, t, r, b) from anchor points [A, 2], clamped to [0, max_dist]."""
    left_top = anchor_points - boxes[..., :2]
    right_bottom = boxes[..., 2:] - anchor_points
    return torch.cat((left_top, right_bottom), dim=-1).clamp(0, max_dist)


def classification_loss(cls_logits: Tensor, target_scores: Tensor, target_scores_sum: Tensor,
                        cls_weight: Optional[Tensor] = None) -> Tensor:
    """sum BCE-with-logits(cls_logits [B, A, K], target_scores [B, A, K]) / target_scores_sum -> scalar."""
    bce = F.binary_cross_entropy_with_logits(cls_logits, target_scores.to(cls_logits.dtype), reduction="none")
    if cls_weight is not None:
        bce = bce * cls_weight[..., None].to(bce.dtype)
    return bce.sum() / target_scores_sum


def box_losses(box_logits: Tensor, pred_boxes: Tensor, anchor_points: Tensor, target_boxes: Tensor,
               target_scores: Tensor, target_scores_sum: Tensor, fg_mask: Tensor,
               reg_max: int) -> Tuple[Tensor, Tensor]:
    """CIoU and DFL losses in grid units.

    box_logits [B, A, 4R], pred_boxes [B, A, 4] xyxy, anchor_points [A, 2], target_boxes [B, A, 4] xyxy
    (all grid units), target_scores [B, A, K], fg_mask [B, A] -> (box loss, dfl loss) scalars.
    Weight of a foreground anchor = its summed target score. Computed for every anchor and masked, so
    no host synchronisation; the CIoU formula stays finite on the zero boxes of background anchors.
    """
    weight = target_scores.sum(-1) * fg_mask.to(target_scores.dtype)  # [B, A]
    ciou_term = bbox_ciou_loss(pred_boxes, target_boxes.to(pred_boxes.dtype))  # [B, A]
    loss_box = (ciou_term * weight).sum() / target_scores_sum
    target_dist = boxes_to_distances(anchor_points, target_boxes, reg_max - 1 - DFL_MARGIN)
    dfl = dfl_unchecked(box_logits.unflatten(-1, (4, reg_max)), target_dist.to(box_logits.dtype)).mean(-1)  # [B, A]
    loss_dfl = (dfl * weight).sum() / target_scores_sum
    return loss_box, loss_dfl


def _pad_one(labels: Tensor, bboxes: Tensor) -> Tuple[Tensor, Tensor]:
    """Give M == 0 batches one dummy GT row so gathers stay valid (no prior points at it; shape-only, no sync)."""
    if bboxes.shape[1] > 0:
        return labels, bboxes
    B = bboxes.shape[0]
    return labels.new_zeros(B, 1), bboxes.new_zeros(B, 1, 4)


def targets_from_gt_inds(gt_inds: Tensor, gt_labels: Tensor, gt_bboxes: Tensor, pred_boxes: Tensor,
                         num_classes: int) -> AssignedTargets:
    """Quality targets for assigners that return indices only.

    gt_inds [B, A] (1-based into M, 0 negative, -1 ignored), gt_labels [B, M], gt_bboxes [B, M, 4] px,
    pred_boxes [B, A, 4] px (detached) -> target_boxes = assigned GT box, target_scores =
    one_hot(label) * IoU(pred, gt) clamped at 0 (mmdet-convention IoU), fg_mask, cls_weight (0 if ignored).
    """
    gt_labels, gt_bboxes = _pad_one(gt_labels, gt_bboxes)
    fg_mask = gt_inds > 0
    index = (gt_inds - 1).clamp(min=0)  # [B, A]
    target_boxes = gt_bboxes.gather(1, index[..., None].expand(-1, -1, 4))  # [B, A, 4]
    target_labels = gt_labels.gather(1, index)  # [B, A]
    quality = aligned_iou(pred_boxes.detach(), target_boxes).clamp(min=0) * fg_mask  # [B, A]
    one_hot = F.one_hot(target_labels.clamp(0, num_classes - 1), num_classes).to(quality.dtype)
    target_scores = one_hot * quality[..., None]
    return AssignedTargets(target_boxes, target_scores, fg_mask, (gt_inds >= 0).to(quality.dtype))


# ----------------------------------------------------------------------------- assignment
def loss_priors(anchor_points: Tensor, strides: Tensor, level_sizes: Sequence[int], anchor_scale: float,
                image_size: Optional[Sequence[int]] = None,
                level_shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Priors:
    """The priors the loss gives every assigner: anchor points [A, 2] px, strides [A] (or [A, 1]) px, priors
    per level, square anchor boxes of side ``anchor_scale * stride``, and when known the input size (h, w)
    and the levels' grids (h_l, w_l)."""
    priors = Priors(anchor_points, strides.reshape(-1), level_sizes,
                    image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
                    level_shapes=level_shapes)
    return priors.with_square_boxes(anchor_scale)


def targets_of(result, gt_labels: Tensor, gt_bboxes: Tensor, pred_boxes: Tensor, num_classes: int) -> AssignedTargets:
    """A batched result -> the loss' targets: its own ``target_boxes`` / ``target_scores`` when it has both,
    else :func:`targets_from_gt_inds`."""
    target_scores = result.get_extra_property("target_scores")
    target_boxes = result.get_extra_property("target_boxes")
    if target_scores is None or target_boxes is None:
        targets = targets_from_gt_inds(result.gt_inds, gt_labels, gt_bboxes, pred_boxes, num_classes)
        targets.result = result
        return targets
    return AssignedTargets(target_boxes, target_scores, result.gt_inds > 0, result=result)


def assign_like_loss(assigner, cls_logits: Tensor, pred_boxes: Tensor, priors: Priors, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Tensor, num_classes: int) -> AssignedTargets:
    """Run ``assigner`` (an object or config dict) on a batch exactly as :class:`DetectionLoss` does.

    cls_logits [B, A, K], pred_boxes [B, A, 4] xyxy px, priors (:func:`loss_priors`), gt_labels [B, M],
    gt_bboxes [B, M, 4] px, gt_mask [B, M] -> :class:`AssignedTargets` with the assigner's ``result``.
    Pictures and ``detassign compare --static`` use it so that they show what training sees.
    """
    assigner = as_assigner(assigner)
    pred_boxes = pred_boxes.detach().to(gt_bboxes.dtype)
    result = assigner.assign_batch(cls_logits.detach(), pred_boxes, priors, gt_labels, gt_bboxes, gt_mask.bool())
    return targets_of(result, gt_labels, gt_bboxes, pred_boxes, num_classes)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock interval measures the work inside it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_assigner(assigner):
    """An assigner object (returned as it is), a config dict for :func:`detassign.build_assigner`, or None
    (:data:`DEFAULT_ASSIGNER`) -> an object with the batched interface."""
    if assigner is None:
        assigner = dict(DEFAULT_ASSIGNER)
    if isinstance(assigner, Mapping):
        from ..registry import build_assigner

        assigner = build_assigner(assigner)
    if not callable(getattr(assigner, "assign_batch", None)):
        raise TypeError(f"assigner must have the batched interface assign_batch(pred_scores, pred_bboxes, priors, "
                        f"gt_labels, gt_bboxes, gt_mask), got {type(assigner).__name__}")
    return assigner


class DetectionLoss(nn.Module):
    """YOLOv8 / YOLO11 detection loss (BCE + CIoU + DFL) with a pluggable assigner.

    Args:
        num_classes: K.
        reg_max: DFL bins R (16).
        strides: stride of each level, in the order of ``feats``.
        assigner: None (:data:`DEFAULT_ASSIGNER`), a config dict for :func:`detassign.build_assigner`, or an
            assigner object (see the module docstring).
        box_gain, cls_gain, dfl_gain: loss gains (ultralytics' 7.5, 0.5, 1.5).
        anchor_scale: side of the square anchor boxes in strides (5.0); read by the assigners that use
            anchor boxes (ATSS, MaxIoU).

    ``forward(feats, targets, img_size=None)``:
        feats: list of raw maps [B, 4R + K, H_l, W_l] (``YOLO11`` in train mode).
        targets: :class:`DetectionTargets`, ``dict(labels [B, M], bboxes [B, M, 4] xyxy px, mask [B, M])``
            or an ultralytics batch ``dict(batch_idx, cls, bboxes normalised cxcywh)``.
        img_size: (h, w) of the input; default ``feats[0]`` size times ``strides[0]``. Only used to
            scale normalised ultralytics targets.
        return_assignment: also return the batch's :class:`BatchAssignment` (for statistics; timing it
            synchronises a GPU around the assigner call).
        Returns ``(loss, items)``: ``loss = items.sum() * B`` (scalar, for backward),
        ``items`` [3] = (box, cls, dfl) after gains, detached; with ``return_assignment``
        ``(loss, items, assignment)``.
    """

    def __init__(self, num_classes: int, reg_max: int = 16, strides: Sequence[float] = (8, 16, 32),
                 assigner=None, box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5,
                 *, anchor_scale: float = 5.0) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(reg_max) < 2:
            raise ValueError(f"reg_max must be >= 2 (DFL needs two bins), got {reg_max}")
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.strides = tuple(float(s) for s in (strides.tolist() if isinstance(strides, Tensor) else strides))
        self.assigner = as_assigner(assigner)
        self.box_gain, self.cls_gain, self.dfl_gain = float(box_gain), float(cls_gain), float(dfl_gain)
        self.anchor_scale = float(anchor_scale)

    def forward(self, feats: Sequence[Tensor], targets, img_size: Optional[Sequence[int]] = None, *,
                return_assignment: bool = False):
        if not isinstance(feats, (list, tuple)) or len(feats) != len(self.strides):
            raise ValueError(f"feats must be a list of {len(self.strides)} maps [B, {4 * self.reg_max + self.num_classes}"
                             f", H, W] (one per stride {self.strides}), got {type(feats).__name__} of "
                             f"{len(feats) if isinstance(feats, (list, tuple)) else '?'}")
        box_logits, cls_logits = split_predictions(feats, self.reg_max, self.num_classes)  # [B, A, 4R], [B, A, K]
        B = cls_logits.shape[0]
        if img_size is None:
            img_size = (feats[0].shape[-2] * self.strides[0], feats[0].shape[-1] * self.strides[0])
        anchor_points, stride_tensor = make_anchor_points(feats, self.strides)  # [A, 2] grid, [A, 1]
        pred_boxes = decode_pred_boxes(box_logits, anchor_points, self.reg_max)  # [B, A, 4] grid units

        tg = as_targets(targets, B, img_size).to(cls_logits.device)
        gt_labels, gt_bboxes, gt_mask = check_padded_gts(tg.labels, tg.bboxes, tg.mask, self.num_classes)
        if gt_bboxes.shape[0] != B:
            raise ValueError(f"targets must have batch size {B} (from feats), got {gt_bboxes.shape[0]}")
        shapes = [(f.shape[-2], f.shape[-1]) for f in feats]
        priors = loss_priors(anchor_points * stride_tensor, stride_tensor, [h * w for h, w in shapes],
                             self.anchor_scale, img_size, shapes)
        if return_assignment:
            _synchronize(cls_logits.device)
            started = time.perf_counter()
        assigned = assign_like_loss(self.assigner, cls_logits, pred_boxes * stride_tensor, priors, gt_labels,
                                    gt_bboxes, gt_mask, self.num_classes)
        if return_assignment:
            _synchronize(cls_logits.device)
            assignment = BatchAssignment(assigned.result, assigned, gt_bboxes, gt_mask, list(priors.level_sizes),
                                         [int(s) for s in self.strides], time.perf_counter() - started)

        target_scores_sum = assigned.target_scores.sum().clamp(min=1)
        loss_cls = classification_loss(cls_logits, assigned.target_scores, target_scores_sum, assigned.cls_weight)
        loss_box, loss_dfl = box_losses(box_logits, pred_boxes, anchor_points, assigned.target_boxes / stride_tensor,
                                        assigned.target_scores, target_scores_sum, assigned.fg_mask, self.reg_max)
        items = torch.stack((loss_box * self.box_gain, loss_cls * self.cls_gain, loss_dfl * self.dfl_gain))
        if return_assignment:
            return items.sum() * B, items.detach(), assignment
        return items.sum() * B, items.detach()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, reg_max={self.reg_max}, strides={self.strides}, "
                f"assigner={type(self.assigner).__name__}, gains=(box {self.box_gain}, cls {self.cls_gain}, "
                f"dfl {self.dfl_gain})")
