"""The interface every assigner follows.

    result = assigner.assign(pred_instances, gt_instances, gt_instances_ignore=None, **kwargs)
    result = assigner.assign_batch(pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask=None)

``pred_instances`` / ``gt_instances`` are :class:`detassign.Instances` or mmengine ``InstanceData``
(mmdetection's convention: ``pred_instances.priors / .bboxes / .scores``, ``gt_instances.bboxes /
.labels``). ``assign_batch`` is the batched interface (the README's "Batched interface"): the head's
class **logits** [B, A, C], its decoded boxes [B, A, 4] xyxy px, a :class:`detassign.Priors`, padded GTs
and their mask; it returns a :class:`detassign.BatchAssignResult`. Assigners whose algorithm is
vectorised over the batch override it; for the others :meth:`BaseAssigner.assign_batch` runs ``assign``
image by image on what :meth:`BaseAssigner.image_inputs` builds. Assigners hold configuration only:
no state survives a call.

Every assigner's ``iou_calculator`` argument is read by :func:`parse_iou_calculator`, so they all accept
the same things.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import aligned_iou, pairwise_iof, pairwise_iou
from ..rotated_boxes import is_rotated_calculator, rbbox_overlaps
from ..structures import AssignResult, BatchAssignResult, Instances, Priors, as_priors, labels_from_gt_inds
from ._batch import check_padded_gts

__all__ = ["BaseAssigner", "IoUCalculator", "parse_iou_calculator", "empty_assign_result", "stack_image_results",
           "ROTATED_ASSIGNERS"]

HBOX_CALCULATORS = ("BboxOverlaps2D", "mmdet.BboxOverlaps2D")
# the assigners with a rotated form (detassign.assigners.rotated_calculators)
ROTATED_ASSIGNERS = ("MaxIoUAssigner", "ATSSAssigner", "DynamicSoftLabelAssigner")


# ----------------------------------------------------------------------------- iou_calculator
class IoUCalculator:
    """A parsed ``iou_calculator`` (see :func:`parse_iou_calculator`): how an assigner computes overlaps.

    ``rotated``: mmrotate's ``RBboxOverlaps2D`` (boxes [..., 5] xywhr); ``fp16`` and ``scale``: mmdet's
    ``BboxOverlaps2D(dtype="fp16")`` option (boxes / scale rounded to float16, the IoU then computed in
    float32, see :mod:`detassign.boxes`); ``fn``: a user callable ``(boxes1 [..., N, 4], boxes2 [..., M,
    4], mode="iou") -> [..., N, M]`` (mmdet's calculator objects are such callables). Compares equal to
    the config dict it came from.
    """

    def __init__(self, rotated: bool = False, scale: float = 1.0, fp16: bool = False,
                 fn: Optional[Callable[..., Tensor]] = None) -> None:
        self.rotated, self.scale, self.fp16, self.fn = rotated, scale, fp16, fn

    @property
    def is_default(self) -> bool:
        """mmdet's plain ``BboxOverlaps2D``: the kernels of :mod:`detassign.boxes`, bit for bit."""
        return not (self.rotated or self.fp16 or self.fn is not None)

    @property
    def config(self):
        """The config form: a dict, or the callable itself."""
        if self.fn is not None:
            return self.fn
        if self.rotated:
            return dict(type="RBboxOverlaps2D")
        cfg = dict(type="BboxOverlaps2D")
        if self.scale != 1.0:
            cfg["scale"] = self.scale
        if self.fp16:
            cfg["dtype"] = "fp16"
        return cfg

    def prepare(self, boxes: Tensor) -> Tensor:
        """Boxes as the calculator reads them: ``dtype="fp16"`` divides by ``scale`` and rounds to float16."""
        return (boxes / self.scale).half() if self.fp16 else boxes

    def pairwise(self, boxes1: Tensor, boxes2: Tensor, mode: str = "iou") -> Tensor:
        """[..., N, 4], [..., M, 4] (``[..., 5]`` when rotated) -> [..., N, M] IoU (or IoF over boxes1)."""
        if self.fn is not None:
            return self.fn(boxes1, boxes2) if mode == "iou" else self.fn(boxes1, boxes2, mode=mode)
        if self.rotated:
            return rbbox_overlaps(boxes1, boxes2, mode=mode)
        overlap = pairwise_iof if mode == "iof" else pairwise_iou
        return overlap(self.prepare(boxes1), self.prepare(boxes2))

    def aligned(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        """IoU of matching rows, [..., 4] and [..., 4] broadcast -> [...] (horizontal boxes)."""
        if self.fn is not None:
            return self.fn(boxes1[..., None, :], boxes2[..., None, :])[..., 0, 0]
        return aligned_iou(self.prepare(boxes1), self.prepare(boxes2))

    def __eq__(self, other) -> bool:
        if isinstance(other, (dict, IoUCalculator)) or other is None:
            try:
                other = parse_iou_calculator(other)
            except (TypeError, ValueError):
                return False
            return (other.rotated, other.scale, other.fp16, other.fn) == (self.rotated, self.scale, self.fp16,
                                                                          self.fn)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self.config)


def parse_iou_calculator(cfg: Any, owner: Optional[str] = None, rotated: bool = True) -> IoUCalculator:
    """The ``iou_calculator`` argument of every assigner, read the same way everywhere.

    Accepts None or ``dict(type="BboxOverlaps2D", scale=1.0, dtype=None)`` (mmdet's default; ``dtype`` None or
    ``"fp16"``, ``scale`` > 0; an ``mmdet.`` prefix is accepted), ``dict(type="RBboxOverlaps2D")`` (mmrotate,
    ``mmrotate.`` prefix accepted, no other key), a callable ``(boxes1, boxes2[, mode]) -> overlaps``, or an
    :class:`IoUCalculator`. ``owner`` with ``rotated=False``: that assigner has no rotated form and refuses
    ``RBboxOverlaps2D`` naming the ones that have.
    """
    if isinstance(cfg, IoUCalculator):
        calculator = cfg
    elif cfg is None:
        calculator = IoUCalculator()
    elif isinstance(cfg, dict):
        if is_rotated_calculator(cfg):          # mmrotate's calculator takes no other key (raises otherwise)
            calculator = IoUCalculator(rotated=True)
        else:
            if cfg.get("type", "BboxOverlaps2D") not in HBOX_CALCULATORS:
                raise ValueError(f"iou_calculator must be dict(type='BboxOverlaps2D', scale=1.0, dtype=None | 'fp16'),"
                                 f" dict(type='RBboxOverlaps2D') or a callable, got {cfg!r}")
            unknown = set(cfg) - {"type", "scale", "dtype"}
            if unknown:
                raise ValueError(f"iou_calculator accepts the keys type, scale, dtype; got unknown {sorted(unknown)}")
            if cfg.get("dtype") not in (None, "fp16"):
                raise ValueError(f"iou_calculator dtype must be None or 'fp16', got {cfg.get('dtype')!r}")
            scale = float(V.check_number("iou_calculator scale", cfg.get("scale", 1.0), low=0, low_open=True))
            calculator = IoUCalculator(scale=scale, fp16=cfg.get("dtype") == "fp16")
    elif callable(cfg):
        calculator = IoUCalculator(fn=cfg)
    else:
        raise TypeError(f"iou_calculator must be a dict(type='BboxOverlaps2D'), dict(type='RBboxOverlaps2D') or a "
                        f"callable (boxes1, boxes2) -> IoU, got {type(cfg).__name__}")
    if calculator.rotated and not rotated:
        raise ValueError(f"{owner or 'this assigner'} has no rotated form: iou_calculator=dict(type='RBboxOverlaps2D')"
                         f" is supported by {', '.join(ROTATED_ASSIGNERS)}")
    return calculator


# ----------------------------------------------------------------------------- the interface
class BaseAssigner(ABC):
    """Base class: stores nothing between calls, ``__call__`` is ``assign``."""

    @abstractmethod
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign every prior / prediction of one image to a GT, background or ignore."""

    def __call__(self, *args, **kwargs):
        return self.assign(*args, **kwargs)

    @torch.no_grad()
    def assign_batch(self, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor], priors,
                     gt_labels: Tensor, gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None) -> BatchAssignResult:
        """The batched interface for a per-image algorithm: :meth:`assign` on each image's valid GTs.

        pred_scores [B, A, C] logits and pred_bboxes [B, A, 4] xyxy px (None where the algorithm reads
        none), priors a :class:`detassign.Priors` (or points [A, 2] / boxes [A, 4]), gt_labels [B, M],
        gt_bboxes [B, M, 4], gt_mask [B, M] (None: all valid) -> BatchAssignResult with ``gt_inds`` [B, A]
        indexing the padded M, ``labels`` [B, A] and ``max_overlaps`` [B, A] when the per-image results
        hold one per prior (else None). The per-image results' extras are not kept.
        """
        priors = as_priors(priors)
        labels, boxes, mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask)
        B, A = boxes.shape[0], len(priors)
        pred_scores = V.tensor_input("pred_scores", pred_scores, (B, A, "C"), floating=True, allow_none=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, (B, A, 4), floating=True, allow_none=True)
        results = []
        for b in range(B):
            keep = torch.nonzero(mask[b]).squeeze(1)
            args, kwargs = self.image_inputs(priors, None if pred_scores is None else pred_scores[b],
                                             None if pred_bboxes is None else pred_bboxes[b], labels[b, keep],
                                             boxes[b, keep])
            results.append((keep, self.assign(*args, **kwargs)))
        return stack_image_results(results, mask, labels, A)

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """The arguments of :meth:`assign` for one image of :meth:`assign_batch`: ``(args, kwargs)``.

        pred_scores [A, C] logits, pred_bboxes [A, 4] (or None), gt_labels [M], gt_bboxes [M, 4] (valid
        GTs only). Default: mmdet's anchor-based call, ``pred_instances.priors`` = the anchor boxes.
        """
        boxes = priors.require("boxes", type(self).__name__)
        return (Instances(priors=boxes), Instances(bboxes=gt_bboxes, labels=gt_labels)), {}

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        shown = []
        for name in params:
            if name == "self" or not hasattr(self, name):
                continue
            shown.append(f"{name}={getattr(self, name)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def stack_image_results(results: List[Tuple[Tensor, AssignResult]], gt_mask: Tensor, gt_labels: Tensor,
                        num_priors: int) -> BatchAssignResult:
    """Per-image results over each image's valid GTs -> one BatchAssignResult indexing the padded GTs.

    results: ``(keep, result)`` per image, ``keep`` [M_i] the padded index of each valid GT; gt_mask,
    gt_labels [B, M]. ``max_overlaps`` is kept when every image has one per prior ([A]).
    """
    device = gt_mask.device
    if not results:
        empty = torch.zeros(0, num_priors, dtype=torch.long, device=device)
        return BatchAssignResult(gt_mask.sum(1), empty, None, empty.clone())
    gt_inds = torch.stack([torch.where(r.gt_inds > 0, keep[(r.gt_inds - 1).clamp(min=0)] + 1, r.gt_inds)
                           if len(keep) else r.gt_inds for keep, r in results]).to(device)
    per_prior = all(r.max_overlaps is not None and tuple(r.max_overlaps.shape) == (num_priors,) for _, r in results)
    max_overlaps = torch.stack([r.max_overlaps for _, r in results]).to(device) if per_prior else None
    return BatchAssignResult(gt_mask.sum(1), gt_inds, max_overlaps, labels_from_gt_inds(gt_inds, gt_labels))


def empty_assign_result(num_gts: int, num_priors: int, device: torch.device, overlap_fill: float = 0.0,
                        overlap_dtype: torch.dtype = torch.float32) -> AssignResult:
    """Every prior negative (used when there are no GTs or no priors)."""
    gt_inds = torch.zeros(num_priors, dtype=torch.long, device=device)
    max_overlaps = torch.full((num_priors,), overlap_fill, dtype=overlap_dtype, device=device)
    labels = torch.full((num_priors,), -1, dtype=torch.long, device=device)
    return AssignResult(num_gts, gt_inds, max_overlaps, labels)
