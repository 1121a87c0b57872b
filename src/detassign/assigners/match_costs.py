"""Match costs for set-prediction (Hungarian) assigners, mmdetection 3.3.0 conventions.

Every cost is a small object holding its options and ``weight``; calling it follows mmdet:

    cost(pred_instances, gt_instances, img_meta=None) -> Tensor[Q, M]     (weighted)
    cost.batched(pred_instances, gt_instances, img_shapes=None) -> Tensor[B, Q, M]
    cost.add_to(total, pred_instances, gt_instances, img_shapes=None) -> total + batched(...)

``batched`` reads the same fields with a leading batch dimension (``scores [B, Q, C]``,
``labels [B, M]``, ``bboxes [B, Q, 4]`` / ``[B, M, 4]``, ``masks [B, Q, ...]`` / ``[B, M, ...]``,
``img_shapes [B, 2]`` as (h, w)) and is what the per-image call runs with B = 1, so both paths
share one implementation (the pure ``*_cost`` functions below). ``add_to`` is how the Hungarian
assigners sum the terms on the CPU: in place, the box costs a few images at a time into scratch
reused by every operation (same bits as ``total + batched(...)``).

Fields each cost reads (pred / gt):

=======================  ==============================  ===================================
cost                     pred_instances                  gt_instances
=======================  ==============================  ===================================
ClassificationCost       ``scores`` logits [Q, C]        ``labels`` [M]
FocalLossCost            ``scores`` logits [Q, C]        ``labels`` [M]
FocalLossCost (binary)   ``masks`` logits [Q, ...]       ``masks`` {0, 1} [M, ...]
BBoxL1Cost               ``bboxes`` xyxy px [Q, 4]       ``bboxes`` xyxy px [M, 4] + img_shape
IoUCost                  ``bboxes`` xyxy px [Q, 4]       ``bboxes`` xyxy px [M, 4]
DiceCost                 ``masks`` [Q, ...]              ``masks`` {0, 1} [M, ...]
CrossEntropyLossCost     ``masks`` logits [Q, ...]       ``masks`` {0, 1} [M, ...]
BinaryFocalLossCost      ``scores`` logits [Q, T]        ``positive_maps`` [M, T],
                                                         ``text_token_mask`` [M, T]
=======================  ==============================  ===================================

Deviation from mmdet (deliberate): float16 / bfloat16 inputs are computed in float32 and every
cost is returned in float32 (mmdet computes ClassificationCost / FocalLossCost in the input
dtype and casts IoUCost back to float16). Half-precision costs lose the digits that decide a
matching and overflow to Inf, which scipy rejects; the result equals mmdet's on the same
inputs upcast to float32. ``CrossEntropyLossCost(use_sigmoid=False)`` is rejected when built
(mmdet raises only when called).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from ..boxes import MMDET_EPS, overlaps_of_coordinates, pairwise_giou, pairwise_iou, to_compute_dtype, xyxy_to_cxcywh

__all__ = [
    "BaseMatchCost",
    "ClassificationCost",
    "FocalLossCost",
    "BBoxL1Cost",
    "IoUCost",
    "DiceCost",
    "CrossEntropyLossCost",
    "BinaryFocalLossCost",
    "classification_cost",
    "focal_cost",
    "mask_focal_cost",
    "bbox_l1_cost",
    "iou_cost",
    "dice_cost",
    "mask_cross_entropy_cost",
    "img_shapes_tensor",
    "img_shape_of",
    "check_cost_inputs",
    "check_not_inf",
    "per_image_cost",
    "BatchOfOne",
]


def _flat_masks(pred_masks: Tensor, gt_masks: Tensor):
    """[B, Q, ...], [B, M, ...] -> [B, Q, P], [B, M, P] (P = pixels or sampled points)."""
    pred = pred_masks.flatten(2)
    gt = gt_masks.flatten(2)
    if pred.shape[-1] != gt.shape[-1]:
        raise ValueError(f"pred masks and gt masks must hold the same number of pixels / points, got "
                         f"pred {tuple(pred_masks.shape)} and gt {tuple(gt_masks.shape)}")
    return pred, gt


def _gather_classes(per_class: Tensor, gt_labels: Tensor) -> Tensor:
    """per_class [B, Q, C], gt_labels [B, M] -> [B, Q, M] with out[b, q, m] = per_class[b, q, labels[b, m]]."""
    B, Q, _ = per_class.shape
    index = gt_labels.long()[:, None, :].expand(B, Q, gt_labels.shape[-1])
    return torch.gather(per_class, 2, index)


def _focal_terms(logits: Tensor, alpha: float, gamma: float, eps: float):
    """Sigmoid focal loss of a positive and of a negative target, element-wise (logits any shape)."""
    prob = logits.sigmoid()
    # in place, same operation order as -(1 - p + eps).log() * (1 - alpha) * p ** gamma
    neg = (1 - prob).add_(eps).log_().neg_().mul_(1 - alpha).mul_(prob.pow(gamma))
    pos = (prob + eps).log_().neg_().mul_(alpha).mul_((1 - prob).pow_(gamma))
    return pos, neg


def _focal_difference(prob: Tensor, alpha: float, gamma: float, eps: float) -> Tensor:
    """Focal loss of a positive minus that of a negative target, element-wise, from probabilities the caller
    owns (``prob`` is overwritten and returned). The operations of :func:`_focal_terms` in the same order, so
    the same bits, with three temporaries of ``prob``'s size where those terms and their difference make six:
    on the CPU a fresh temporary of a [B, Q, M] cost costs more in page faults than its arithmetic."""
    inv = torch.rsub(prob, 1)                                                       # 1 - p
    neg = torch.add(inv, eps).log_().neg_().mul_(1 - alpha).mul_(prob.pow(gamma))
    pos = prob.add_(eps).log_().neg_().mul_(alpha).mul_(inv.pow_(gamma))
    return pos.sub_(neg)


def _pair_sum(pos: Tensor, neg: Tensor, gt: Tensor) -> Tensor:
    """pos, neg [B, Q, P], binary gt [B, M, P] -> [B, Q, M] = sum_p pos*gt + neg*(1 - gt)."""
    return torch.einsum("bqp,bmp->bqm", pos, gt) + torch.einsum("bqp,bmp->bqm", neg, 1 - gt)


# ------------------------------------------------------------------------------- pure cost functions
def classification_cost(pred_scores: Tensor, gt_labels: Tensor) -> Tensor:
    """-softmax(logits)[gt label]. pred_scores [B, Q, C] logits, gt_labels [B, M] -> [B, Q, M] in [-1, 0]."""
    return -_gather_classes(to_compute_dtype(pred_scores).softmax(-1), gt_labels)


def focal_cost(pred_scores: Tensor, gt_labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-12) -> Tensor:
    """Focal loss of the GT class as positive minus as negative (Deformable DETR).

    pred_scores [B, Q, C] logits, gt_labels [B, M] -> [B, Q, M]. ``eps`` sits inside the logs.
    """
    # element-wise, so gathering the GT-class logits first gives the same values for less work
    logits = _gather_classes(to_compute_dtype(pred_scores), gt_labels)
    if logits.requires_grad:   # the in-place path overwrites what the backward pass reads
        pos, neg = _focal_terms(logits, alpha, gamma, eps)
        return pos - neg
    # the gather's output is new, so the sigmoid and the rest may run in place on it
    return _focal_difference(logits.sigmoid_(), alpha, gamma, eps)


def mask_focal_cost(pred_masks: Tensor, gt_masks: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                    eps: float = 1e-12, average: bool = True) -> Tensor:
    """Pixel-wise sigmoid focal loss of each query mask against each GT mask.

    pred_masks [B, Q, ...] logits, gt_masks [B, M, ...] binary -> [B, Q, M], summed over the P pixels
    and divided by P when ``average`` (FocalLossCost(binary_input=True); BinaryFocalLossCost sums).
    """
    pred, gt = _flat_masks(to_compute_dtype(pred_masks), to_compute_dtype(gt_masks))
    pos, neg = _focal_terms(pred, alpha, gamma, eps)
    cost = _pair_sum(pos, neg, gt)
    return cost / pred.shape[-1] if average else cost


def bbox_l1_cost(pred_bboxes: Tensor, gt_bboxes: Tensor, img_shapes: Tensor, box_format: str = "xyxy") -> Tensor:
    """L1 distance of image-normalised boxes.

    pred_bboxes [B, Q, 4], gt_bboxes [B, M, 4] xyxy pixels, img_shapes [B, 2] (h, w) -> [B, Q, M].
    ``box_format="xywh"`` compares (cx, cy, w, h) (mmdet's name for center format), ``"xyxy"`` corners.
    """
    return torch.cdist(*_normalised_boxes(pred_bboxes, gt_bboxes, img_shapes, box_format), p=1)


def _normalised_boxes(pred_bboxes: Tensor, gt_bboxes: Tensor, img_shapes: Tensor, box_format: str):
    """The boxes :func:`bbox_l1_cost` compares: [B, Q, 4], [B, M, 4] divided by (w, h, w, h) per image."""
    pred, gt = to_compute_dtype(pred_bboxes), to_compute_dtype(gt_bboxes)
    if box_format == "xywh":
        pred, gt = xyxy_to_cxcywh(pred), xyxy_to_cxcywh(gt)
    h, w = img_shapes.to(device=pred.device, dtype=pred.dtype).unbind(-1)
    factor = torch.stack((w, h, w, h), dim=-1)[:, None, :]  # [B, 1, 4]
    return pred / factor, gt / factor


def _pairwise_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str, eps: float = 1e-6) -> Tensor:
    """IoU / GIoU [B, N, 4], [B, M, 4] xyxy -> [B, N, M], bit-identical to mmdet's ``bbox_overlaps``."""
    return (pairwise_giou if mode == "giou" else pairwise_iou)(boxes1, boxes2, eps=eps)


def iou_cost(pred_bboxes: Tensor, gt_bboxes: Tensor, iou_mode: str = "giou") -> Tensor:
    """-IoU or -GIoU (mmdet bbox_overlaps, union and enclosing area clamped at 1e-6).

    [B, Q, 4], [B, M, 4] xyxy -> [B, Q, M] in [-1, 1].
    """
    return _pairwise_overlaps(*_common_dtype(pred_bboxes, gt_bboxes), iou_mode).neg_()


def _common_dtype(pred_bboxes: Tensor, gt_bboxes: Tensor):
    pred, gt = to_compute_dtype(pred_bboxes), to_compute_dtype(gt_bboxes)
    if pred.dtype != gt.dtype:
        dtype = torch.promote_types(pred.dtype, gt.dtype)
        pred, gt = pred.to(dtype), gt.to(dtype)
    return pred, gt


# Bytes of scratch of one block when a box cost adds itself to the sum a few images at a time
# (BaseMatchCost.add_to): the scratch is a few buffers allocated once and reused by every operation and block
# (bounded in dense scenes), where each operation would otherwise allocate a fresh [B, Q, M] result: on the
# CPU a fresh temporary of that size costs more in page faults than the arithmetic done on it.
ADD_BLOCK_BYTES = 2 ** 22


def image_blocks(batch: int, per_image: int, block: int) -> List[slice]:
    """Consecutive slices of ``batch`` images with at most ``block`` elements each (at least one image)."""
    step = max(1, block // max(per_image, 1))
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def _add_blocks(total: Tensor, block_cost: Callable[[slice, Optional[Tensor]], Tensor], weight: float,
                dtype: torch.dtype, scratch: int = 0) -> Tensor:
    """total [B, Q, M] + weight * cost, in place when total's dtype holds the sum.

    ``block_cost(images, work)`` is the unweighted cost [b, Q, M] of a slice of images, of dtype ``dtype``;
    ``work`` is [scratch, b, Q, M] scratch reused from block to block (None when ``scratch`` is 0). Only for
    costs made of basic arithmetic (+ - * / min max abs, cdist): each element then has the same bits
    whatever the block, whereas a vectorised transcendental (exp, log) rounds a buffer's tail differently.
    """
    if total.dtype != torch.promote_types(total.dtype, dtype):
        total = total.to(torch.promote_types(total.dtype, dtype))
    B, Q, M = total.shape
    blocks = image_blocks(B, Q * M, ADD_BLOCK_BYTES // (max(scratch, 1) * dtype.itemsize))
    work = total.new_empty((scratch, blocks[0].stop - blocks[0].start, Q, M), dtype=dtype) if scratch and blocks \
        else None
    for images in blocks:
        part = block_cost(images, None if work is None else work[:, :images.stop - images.start])
        total[images].add_(part.mul_(weight))
    return total


def l1_into(a: Sequence[Tensor], b: Sequence[Tensor], work: Tensor) -> Tensor:
    """L1 distance of 4-vectors given as coordinates [b, Q, 1] x4 and [b, 1, M] x4, computed in ``work``
    ([2, b, Q, M] scratch) -> a view of it [b, Q, M]. ``torch.cdist(p=1)``'s sum in its order
    (``|a0 - b0| + |a1 - b1| + |a2 - b2| + |a3 - b3|``, left to right), so the same bits, without its
    per-pair loop."""
    total, part = work[0], work[1]
    torch.sub(a[0], b[0], out=total).abs_()
    for x, y in zip(a[1:], b[1:]):
        total.add_(torch.sub(x, y, out=part).abs_())
    return total


def dice_cost(pred_masks: Tensor, gt_masks: Tensor, pred_act: bool = False, eps: float = 1e-3,
              naive_dice: bool = True) -> Tensor:
    """1 - (2 |p.g| + eps) / (|p| + |g| + eps) per pair. [B, Q, ...], [B, M, ...] -> [B, Q, M].

    ``pred_act`` applies a sigmoid to the predictions first; ``naive_dice=False`` squares the
    denominator terms (K-Net / SOLO). ``eps`` is added to numerator and denominator.
    """
    pred, gt = _flat_masks(to_compute_dtype(pred_masks), to_compute_dtype(gt_masks))
    if pred_act:
        pred = pred.sigmoid()
    numerator = 2 * torch.einsum("bqp,bmp->bqm", pred, gt)
    if naive_dice:
        denominator = pred.sum(-1)[:, :, None] + gt.sum(-1)[:, None, :]
    else:
        denominator = pred.pow(2).sum(-1)[:, :, None] + gt.pow(2).sum(-1)[:, None, :]
    return 1 - (numerator + eps) / (denominator + eps)


def mask_cross_entropy_cost(pred_masks: Tensor, gt_masks: Tensor) -> Tensor:
    """Mean pixel-wise binary cross-entropy (with logits). [B, Q, ...], [B, M, ...] -> [B, Q, M]."""
    pred, gt = _flat_masks(to_compute_dtype(pred_masks), to_compute_dtype(gt_masks))
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    return _pair_sum(pos, neg, gt) / pred.shape[-1]


def img_shapes_tensor(img_shapes, batch: int, device) -> Tensor:
    """(h, w) pairs as given (tensor [B, 2], sequence of pairs, one pair for all) -> float32 [B, 2]."""
    if img_shapes is None:
        raise ValueError("img_shapes (h, w) per image is required by BBoxL1Cost (it normalises boxes by the "
                         "image size); pass img_meta=dict(img_shape=(h, w)) or img_shapes=[B, 2]")
    try:
        shapes = torch.as_tensor(img_shapes, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"img_shapes must be (h, w) numbers per image, got {img_shapes!r}") from None
    if shapes.dim() == 1:
        shapes = shapes[None, :2].expand(batch, 2)
    if shapes.dim() != 2 or shapes.shape[0] != batch or shapes.shape[1] < 2:
        raise ValueError(f"img_shapes must have shape [B, 2] (h, w) with B={batch}, got {tuple(shapes.shape)}")
    shapes = shapes[:, :2]
    # a zero or NaN size turns every L1 cost into Inf / NaN
    if V.value_checks_enabled() and shapes.numel() and not bool((torch.isfinite(shapes) & (shapes > 0)).all()):
        raise ValueError(f"img_shapes must be positive, finite (h, w), got {shapes.tolist()}")
    return shapes


def _field(instances, name: str, owner: str, cost: str) -> Tensor:
    value = getattr(instances, name, None) if instances is not None else None
    if value is None:
        raise ValueError(f"{cost} needs {owner}.{name}, which is missing")
    return value


def img_shape_of(img_meta) -> Optional[Sequence[float]]:
    """``img_meta["img_shape"][:2]`` (h, w), or None when there is no meta or no shape."""
    if img_meta is None:
        return None
    shape = img_meta.get("img_shape") if hasattr(img_meta, "get") else None
    return None if shape is None else tuple(shape)[:2]


# ------------------------------------------------------------------------------- input checks
# field -> (shape after the leading [B] and Q / M axes (None: masks, any trailing shape), floating)
_PRED_FIELDS = {"scores": (("C",), True), "bboxes": ((4,), True), "masks": (None, True)}
_GT_FIELDS = {"bboxes": ((4,), True), "masks": (None, None), "positive_maps": (("T",), None)}


class CostInputs(NamedTuple):
    """Checked views of the instances (fields normalised) and the number of predictions / GTs."""
    pred: Any
    gt: Any
    num_preds: Optional[int]
    num_gts: Optional[int]
    gt_mask: Optional[Tensor] = None   # bool


class _Fields:
    """A view of an instances object in which some fields are replaced by checked tensors."""

    def __init__(self, instances, fields: Dict[str, Tensor]) -> None:
        self._instances = instances
        self._fields = fields

    def __getattr__(self, name: str):
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        return getattr(object.__getattribute__(self, "_instances"), name, None)


def _read_fields(owner: str, instances, table, lead: tuple, axis: str, batched: bool) -> Dict[str, Tensor]:
    out = {}
    for field, (trail, floating) in table.items():
        value = getattr(instances, field, None) if instances is not None else None
        if value is None:
            continue
        name = f"{owner}.{field}"
        if trail is None:                       # masks: [lead, Q / M, ...], any trailing shape
            x = V.as_tensor(name, value)
            if x.dim() < len(lead) + 2 and not (not batched and x.numel() == 0):
                raise ValueError(f"{name} must have shape [{', '.join(lead + (axis,))}, ...] (pixels or sampled "
                                 f"points per instance), got {tuple(x.shape)}")
            if x.dim() < len(lead) + 2:         # an empty tensor of any rank: no masks
                x = x.new_zeros((0, 0))
        else:
            x = V.tensor_input(name, value, lead + (axis,) + trail, floating=floating, empty_rows=not batched)
        out[field] = x
    return out


def check_cost_inputs(match_costs: Sequence[Any], pred_instances, gt_instances, *, batched: bool = False,
                      gt_mask: Optional[Tensor] = None, finite: bool = False) -> CostInputs:
    """Validate the fields the costs read before anything is indexed; the one check of every Hungarian path.

    Per image: pred ``scores`` [Q, C], ``bboxes`` [Q, 4], ``masks`` [Q, ...]; gt ``labels`` [M],
    ``bboxes`` [M, 4] (x1 <= x2, y1 <= y2), ``masks`` [M, ...], ``positive_maps`` [M, T]. Batched: the
    same with a leading B; gt_mask [B, M] excludes padding from the value checks. Absent fields are
    left to the cost that needs them. Q, M, B (and T between scores and positive maps) must agree
    across fields, all on one device; masks hold the same number of pixels / points. Labels must be
    integral and >= 0, and < C when a cost indexes the scores by class (``reads_class_labels``:
    ClassificationCost, FocalLossCost). Inf scores are refused (a focal cost of an Inf logit is finite,
    so nothing downstream would notice). ``finite=True`` (a cost called on its own) refuses NaN / Inf
    predictions too; the Hungarian assigners instead report NaN per cost term, naming the input.
    """
    lead = ("B",) if batched else ()
    pred = _read_fields("pred_instances", pred_instances, _PRED_FIELDS, lead, "Q", batched)
    gt = _read_fields("gt_instances", gt_instances, _GT_FIELDS, lead, "M", batched)
    labels = getattr(gt_instances, "labels", None) if gt_instances is not None else None
    if labels is not None:
        gt["labels"] = V.tensor_input("gt_instances.labels", labels, lead + ("M",), empty_rows=not batched)
    n = len(lead)
    preds = [(f"pred_instances.{k}", v, n) for k, v in pred.items() if v.dim() > n]
    gt_fields = [(f"gt_instances.{k}", v, n) for k, v in gt.items() if v.dim() > n]
    if gt_mask is not None:
        gt_fields.append(("gt_mask", gt_mask, n))
    num_preds = V.check_agree("Q", preds) if preds else None
    num_gts = V.check_agree("M", gt_fields) if gt_fields else None
    if batched:
        V.check_agree("B", [(name, v, 0) for name, v, _ in preds + gt_fields])
    if "masks" in pred and "masks" in gt and pred["masks"].numel() and gt["masks"].numel():
        pixels = [int(np.prod(x.shape[n + 1:])) for x in (pred["masks"], gt["masks"])]
        if pixels[0] != pixels[1]:
            raise ValueError(f"pred_instances.masks and gt_instances.masks must hold the same number of pixels / "
                             f"points per instance, got {tuple(pred['masks'].shape)} and {tuple(gt['masks'].shape)}")
    if "scores" in pred and "positive_maps" in gt:
        V.check_agree("T (tokens)", [("pred_instances.scores", pred["scores"], -1),
                                     ("gt_instances.positive_maps", gt["positive_maps"], -1)])
    token_mask = getattr(gt_instances, "text_token_mask", None) if gt_instances is not None else None
    if token_mask is not None:
        gt["text_token_mask"] = V.as_tensor("gt_instances.text_token_mask", token_mask)
    V.check_same_device(gt_mask=gt_mask, **{f"pred_{k}": v for k, v in pred.items()},
                        **{f"gt_{k}": v for k, v in gt.items()})
    if gt_mask is not None:
        V.check_binary("gt_mask", gt_mask)
        gt_mask = gt_mask.bool()
    if "labels" in gt:
        reads = any(getattr(cost, "reads_class_labels", False) for cost in match_costs)
        classes = V.num_classes_of(pred["scores"], n) if reads and "scores" in pred else None
        gt["labels"] = V.labels_input("gt_instances.labels", gt["labels"], tuple(gt["labels"].shape),
                                      num_classes=classes, mask=gt_mask)
    V.check_boxes("gt_instances.bboxes", gt.get("bboxes"), gt_mask)
    check_not_inf("pred_instances.scores", pred.get("scores"))
    if finite:
        for field, x in pred.items():
            V.check_finite(f"pred_instances.{field}", x)
    return CostInputs(_Fields(pred_instances, pred), _Fields(gt_instances, gt), num_preds, num_gts, gt_mask)


def check_not_inf(name: str, x: Optional[Tensor]) -> None:
    """``_validate.check_not_inf`` (no +-Inf; NaN is left to the cost terms' report) behind one sum: a sum
    is finite only when no element is Inf or NaN, so the element-wise test, with its temporaries of the
    scores' size, runs only when the sum is not finite (an overflow of finite values falls through too)."""
    if x is None or not V.value_checks_enabled() or x.numel() == 0 or not x.is_floating_point():
        return
    if bool(torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32)))):
        return
    V.check_not_inf(name, x)


def _check_term_shape(cost, shape, total: Tensor) -> None:
    """A term added to a sum must have its shape [B, Q, M] (an in-place add would broadcast a smaller one)."""
    if tuple(shape) != tuple(total.shape):
        raise ValueError(f"{type(cost).__name__} gives a cost of shape {tuple(shape)} where the other terms are "
                         f"{tuple(total.shape)} ([B, Q, M])")


# ------------------------------------------------------------------------------- cost objects
class BaseMatchCost(ABC):
    """A weighted pairwise cost between Q predictions and M GTs (mmdet call convention).

    ``reads_class_labels``: the cost indexes the scores' class axis by ``gt.labels``, so labels must be
    in ``[0, C)`` (checked before any indexing, so an out-of-range label never reaches a CUDA assert).
    """

    reads_class_labels = False
    # ``compute`` returns a new tensor nothing else holds, so ``batched`` may weight it in place (one
    # temporary of [B, Q, M] fewer). A subclass that defines its own ``compute`` starts at False (its
    # compute may return a stored tensor) unless its class body sets it.
    _compute_returns_new = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "compute" in cls.__dict__ and "_compute_returns_new" not in cls.__dict__:
            cls._compute_returns_new = False

    def __init__(self, weight: Union[float, int] = 1.0) -> None:
        self.weight = V.check_number("weight", weight, low=0)

    def batched(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        """Weighted cost [B, Q, M] from fields with a leading batch dimension; always a new tensor."""
        cost = self.compute(pred_instances, gt_instances, img_shapes)
        if self._compute_returns_new and not cost.requires_grad:
            return cost.mul_(self.weight)   # the bits of cost * weight
        return cost * self.weight

    def add_to(self, total: Tensor, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        """``total + batched(...)`` ([B, Q, M]), computed in ``total`` (which the caller owns) when its dtype
        holds the sum; returns the sum. Costs of basic arithmetic add themselves a few images at a time."""
        term = self.batched(pred_instances, gt_instances, img_shapes)
        _check_term_shape(self, term.shape, total)
        dtype = torch.promote_types(total.dtype, term.dtype)
        return total.add_(term) if dtype == total.dtype and not term.requires_grad else total.to(dtype) + term

    @abstractmethod
    def compute(self, pred_instances, gt_instances, img_shapes) -> Tensor:
        """Unweighted cost [B, Q, M] from fields with a leading batch dimension."""

    def __call__(self, pred_instances, gt_instances, img_meta=None, **kwargs) -> Tensor:
        """Weighted cost [Q, M] for one image; ``img_meta['img_shape']`` is (h, w). Extra kwargs are ignored."""
        checked = check_cost_inputs([self], pred_instances, gt_instances, finite=True)
        return per_image_cost(self, checked.pred, checked.gt, img_meta)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def per_image_cost(cost: BaseMatchCost, pred_instances, gt_instances, img_meta=None) -> Tensor:
    """Weighted cost [Q, M] of one image from inputs the caller has already checked."""
    if not callable(getattr(cost, "batched", None)):   # a plain mmdet-style callable
        return cost(pred_instances, gt_instances, img_meta)
    shape = img_shape_of(img_meta)
    return cost.batched(BatchOfOne(pred_instances), BatchOfOne(gt_instances), None if shape is None else [shape])[0]


class BatchOfOne:
    """View of a per-image Instances whose tensor fields get a leading batch dimension of 1."""

    def __init__(self, instances) -> None:
        self._instances = instances

    def __getattr__(self, name: str):
        value = getattr(object.__getattribute__(self, "_instances"), name, None)
        return value[None] if isinstance(value, Tensor) else value


class ClassificationCost(BaseMatchCost):
    """-softmax probability of the GT class (DETR). Reads ``pred.scores`` logits, ``gt.labels``."""

    reads_class_labels = True
    _compute_returns_new = True

    def __init__(self, weight: Union[float, int] = 1.0) -> None:
        super().__init__(weight)

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return classification_cost(_field(pred_instances, "scores", "pred_instances", "ClassificationCost"),
                                   _field(gt_instances, "labels", "gt_instances", "ClassificationCost"))


class FocalLossCost(BaseMatchCost):
    """Focal class cost (Deformable DETR, DINO) or, with ``binary_input=True``, mean pixel focal mask cost.

    Args:
        alpha, gamma: focal loss parameters. eps: added inside the logs.
        binary_input: False reads ``pred.scores`` [Q, C] logits and ``gt.labels`` [M];
            True reads ``pred.masks`` [Q, ...] logits and ``gt.masks`` [M, ...] binary.
        weight: multiplies the cost.
    """

    _compute_returns_new = True

    def __init__(self, alpha: Union[float, int] = 0.25, gamma: Union[float, int] = 2, eps: float = 1e-12,
                 binary_input: bool = False, weight: Union[float, int] = 1.0) -> None:
        super().__init__(weight)
        self.alpha = V.check_number("alpha", alpha, low=0, high=1)
        self.gamma = V.check_number("gamma", gamma, low=0)
        self.eps = V.check_number("eps", eps, low=0)
        self.binary_input = V.check_flag("binary_input", binary_input)

    @property
    def reads_class_labels(self) -> bool:
        return not self.binary_input

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        name = type(self).__name__
        if self.binary_input:
            return mask_focal_cost(_field(pred_instances, "masks", "pred_instances", name),
                                   _field(gt_instances, "masks", "gt_instances", name),
                                   self.alpha, self.gamma, self.eps)
        return focal_cost(_field(pred_instances, "scores", "pred_instances", name),
                          _field(gt_instances, "labels", "gt_instances", name), self.alpha, self.gamma, self.eps)


class BinaryFocalLossCost(FocalLossCost):
    """Focal cost of token logits against positive maps (GLIP / Grounding DINO), summed over tokens.

    Reads ``pred.scores`` [Q, T] logits, ``gt.positive_maps`` [M, T] and ``gt.text_token_mask``
    ([M, T], rows identical, as mmdet stores it; batched also [B, T]); only tokens whose mask is
    set are summed (mmdet selects those columns, which is the same sum).
    """

    reads_class_labels = False
    _compute_returns_new = True

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        name = type(self).__name__
        scores = to_compute_dtype(_field(pred_instances, "scores", "pred_instances", name))
        positive_maps = to_compute_dtype(_field(gt_instances, "positive_maps", "gt_instances", name))
        token_mask = _field(gt_instances, "text_token_mask", "gt_instances", name)
        B, Q, M = scores.shape[0], scores.shape[1], positive_maps.shape[1]
        if M == 0:
            return scores.new_zeros(B, Q, 0)
        if token_mask.dim() == 3:
            token_mask = token_mask[:, 0]  # rows repeat one mask per image; mmdet reads row 0
        keep = (token_mask != 0).to(scores.dtype)[:, None, :]  # [B, 1, T]
        pos, neg = _focal_terms(scores, self.alpha, self.gamma, self.eps)
        return _pair_sum(pos * keep, neg * keep, positive_maps)


class BBoxL1Cost(BaseMatchCost):
    """L1 distance of boxes normalised by the image size (h, w from ``img_meta['img_shape']``).

    Both ``pred.bboxes`` and ``gt.bboxes`` are xyxy pixels. ``box_format="xyxy"`` compares the
    corners, ``"xywh"`` the (cx, cy, w, h) form (DETR; mmdet's naming).
    """

    _compute_returns_new = True

    def __init__(self, box_format: str = "xyxy", weight: Union[float, int] = 1.0) -> None:
        if not isinstance(box_format, str) or box_format not in ("xyxy", "xywh"):
            raise ValueError(f"box_format must be 'xyxy' or 'xywh' (center cx, cy, w, h), got {box_format!r}")
        super().__init__(weight)
        self.box_format = box_format

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return bbox_l1_cost(*self._inputs(pred_instances, gt_instances, img_shapes), self.box_format)

    def add_to(self, total: Tensor, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        pred, gt, shapes = self._inputs(pred_instances, gt_instances, img_shapes)
        if total.requires_grad or pred.requires_grad or gt.requires_grad:
            return super().add_to(total, pred_instances, gt_instances, img_shapes)
        _check_term_shape(self, (pred.shape[0], pred.shape[1], gt.shape[1]), total)
        pred, gt = _normalised_boxes(pred, gt, shapes, self.box_format)
        a = [pred[..., :, i, None].contiguous() for i in range(4)]     # [B, Q, 1] each
        b = [gt[..., None, :, i].contiguous() for i in range(4)]       # [B, 1, M] each
        return _add_blocks(total, lambda images, work: l1_into([x[images] for x in a], [x[images] for x in b], work),
                           self.weight, pred.dtype, scratch=2)

    def _inputs(self, pred_instances, gt_instances, img_shapes):
        pred = _field(pred_instances, "bboxes", "pred_instances", "BBoxL1Cost")
        gt = _field(gt_instances, "bboxes", "gt_instances", "BBoxL1Cost")
        return pred, gt, img_shapes_tensor(img_shapes, pred.shape[0], pred.device)


class IoUCost(BaseMatchCost):
    """-IoU or -GIoU of xyxy ``pred.bboxes`` and ``gt.bboxes`` (``iou_mode`` 'iou' | 'giou')."""

    _compute_returns_new = True

    def __init__(self, iou_mode: str = "giou", weight: Union[float, int] = 1.0) -> None:
        V.check_choice("iou_mode", iou_mode, ("iou", "giou"))
        super().__init__(weight)
        self.iou_mode = iou_mode

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return iou_cost(*self._inputs(pred_instances, gt_instances), self.iou_mode)

    def add_to(self, total: Tensor, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        pred, gt = _common_dtype(*self._inputs(pred_instances, gt_instances))
        if total.requires_grad or pred.requires_grad or gt.requires_grad:
            return super().add_to(total, pred_instances, gt_instances, img_shapes)
        _check_term_shape(self, (pred.shape[0], pred.shape[1], gt.shape[1]), total)
        # coordinates and areas once, [B, Q, 1] and [B, 1, M]; each block's work is then [b, Q, M] only
        a = [pred[..., :, i, None].contiguous() for i in range(4)]
        b = [gt[..., None, :, i].contiguous() for i in range(4)]
        area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])

        def block(images: slice, work: Tensor) -> Tensor:
            return overlaps_of_coordinates([x[images] for x in a], [x[images] for x in b], self.iou_mode,
                                           MMDET_EPS, area_a[images], area_b[images], work=work).neg_()
        return _add_blocks(total, block, self.weight, pred.dtype, scratch=4 if self.iou_mode == "giou" else 3)

    def _inputs(self, pred_instances, gt_instances):
        return (_field(pred_instances, "bboxes", "pred_instances", "IoUCost"),
                _field(gt_instances, "bboxes", "gt_instances", "IoUCost"))


class DiceCost(BaseMatchCost):
    """Dice cost of ``pred.masks`` [Q, ...] against binary ``gt.masks`` [M, ...].

    Args:
        pred_act: apply a sigmoid to the predicted masks (True when they are logits).
        eps: added to numerator and denominator. naive_dice: False squares the denominator terms.
    """

    _compute_returns_new = True

    def __init__(self, pred_act: bool = False, eps: float = 1e-3, naive_dice: bool = True,
                 weight: Union[float, int] = 1.0) -> None:
        super().__init__(weight)
        self.pred_act = V.check_flag("pred_act", pred_act)
        self.eps = V.check_number("eps", eps, low=0)
        self.naive_dice = V.check_flag("naive_dice", naive_dice)

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return dice_cost(_field(pred_instances, "masks", "pred_instances", "DiceCost"),
                         _field(gt_instances, "masks", "gt_instances", "DiceCost"),
                         self.pred_act, self.eps, self.naive_dice)


class CrossEntropyLossCost(BaseMatchCost):
    """Mean pixel-wise sigmoid cross-entropy of ``pred.masks`` logits against binary ``gt.masks``."""

    _compute_returns_new = True

    def __init__(self, use_sigmoid: bool = True, weight: Union[float, int] = 1.0) -> None:
        if not V.check_flag("use_sigmoid", use_sigmoid):
            raise ValueError("CrossEntropyLossCost supports use_sigmoid=True only (binary masks); "
                             "mmdet 3.3.0 has no softmax variant either")
        super().__init__(weight)
        self.use_sigmoid = use_sigmoid

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return mask_cross_entropy_cost(_field(pred_instances, "masks", "pred_instances", "CrossEntropyLossCost"),
                                       _field(gt_instances, "masks", "gt_instances", "CrossEntropyLossCost"))
