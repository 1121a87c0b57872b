"""Match costs for set-prediction (Hungarian) assigners, mmdetection 3.3.0 conventions.

Every cost is a small object holding its options and ``weight``; calling it follows mmdet:

    cost(pred_instances, gt_instances, img_meta=None) -> Tensor[Q, M]     (weighted)
    cost.batched(pred_instances, gt_instances, img_shapes=None) -> Tensor[B, Q, M]

``batched`` reads the same fields with a leading batch dimension (``scores [B, Q, C]``,
``labels [B, M]``, ``bboxes [B, Q, 4]`` / ``[B, M, 4]``, ``masks [B, Q, ...]`` / ``[B, M, ...]``,
``img_shapes [B, 2]`` as (h, w)) and is what the per-image call runs with B = 1, so both paths
share one implementation (the pure ``*_cost`` functions below).

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
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from ..boxes import pairwise_giou, pairwise_iou, to_compute_dtype, xyxy_to_cxcywh

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
    pos, neg = _focal_terms(_gather_classes(to_compute_dtype(pred_scores), gt_labels), alpha, gamma, eps)
    return pos - neg


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
    pred, gt = to_compute_dtype(pred_bboxes), to_compute_dtype(gt_bboxes)
    if box_format == "xywh":
        pred, gt = xyxy_to_cxcywh(pred), xyxy_to_cxcywh(gt)
    h, w = img_shapes.to(device=pred.device, dtype=pred.dtype).unbind(-1)
    factor = torch.stack((w, h, w, h), dim=-1)[:, None, :]  # [B, 1, 4]
    return torch.cdist(pred / factor, gt / factor, p=1)


def _pairwise_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str, eps: float = 1e-6) -> Tensor:
    """IoU / GIoU [B, N, 4], [B, M, 4] xyxy -> [B, N, M], bit-identical to mmdet's ``bbox_overlaps``."""
    return (pairwise_giou if mode == "giou" else pairwise_iou)(boxes1, boxes2, eps=eps)


def iou_cost(pred_bboxes: Tensor, gt_bboxes: Tensor, iou_mode: str = "giou") -> Tensor:
    """-IoU or -GIoU (mmdet bbox_overlaps, union and enclosing area clamped at 1e-6).

    [B, Q, 4], [B, M, 4] xyxy -> [B, Q, M] in [-1, 1].
    """
    pred, gt = to_compute_dtype(pred_bboxes), to_compute_dtype(gt_bboxes)
    if pred.dtype != gt.dtype:
        dtype = torch.promote_types(pred.dtype, gt.dtype)
        pred, gt = pred.to(dtype), gt.to(dtype)
    return _pairwise_overlaps(pred, gt, iou_mode).neg_()


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
    V.check_not_inf("pred_instances.scores", pred.get("scores"))
    if finite:
        for field, x in pred.items():
            V.check_finite(f"pred_instances.{field}", x)
    return CostInputs(_Fields(pred_instances, pred), _Fields(gt_instances, gt), num_preds, num_gts, gt_mask)


# ------------------------------------------------------------------------------- cost objects
class BaseMatchCost(ABC):
    """A weighted pairwise cost between Q predictions and M GTs (mmdet call convention).

    ``reads_class_labels``: the cost indexes the scores' class axis by ``gt.labels``, so labels must be
    in ``[0, C)`` (checked before any indexing, so an out-of-range label never reaches a CUDA assert).
    """

    reads_class_labels = False

    def __init__(self, weight: Union[float, int] = 1.0) -> None:
        self.weight = V.check_number("weight", weight, low=0)

    def batched(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        """Weighted cost [B, Q, M] from fields with a leading batch dimension."""
        return self.compute(pred_instances, gt_instances, img_shapes) * self.weight

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

    def __init__(self, box_format: str = "xyxy", weight: Union[float, int] = 1.0) -> None:
        if not isinstance(box_format, str) or box_format not in ("xyxy", "xywh"):
            raise ValueError(f"box_format must be 'xyxy' or 'xywh' (center cx, cy, w, h), got {box_format!r}")
        super().__init__(weight)
        self.box_format = box_format

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        pred = _field(pred_instances, "bboxes", "pred_instances", "BBoxL1Cost")
        gt = _field(gt_instances, "bboxes", "gt_instances", "BBoxL1Cost")
        return bbox_l1_cost(pred, gt, img_shapes_tensor(img_shapes, pred.shape[0], pred.device), self.box_format)


class IoUCost(BaseMatchCost):
    """-IoU or -GIoU of xyxy ``pred.bboxes`` and ``gt.bboxes`` (``iou_mode`` 'iou' | 'giou')."""

    def __init__(self, iou_mode: str = "giou", weight: Union[float, int] = 1.0) -> None:
        V.check_choice("iou_mode", iou_mode, ("iou", "giou"))
        super().__init__(weight)
        self.iou_mode = iou_mode

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return iou_cost(_field(pred_instances, "bboxes", "pred_instances", "IoUCost"),
                        _field(gt_instances, "bboxes", "gt_instances", "IoUCost"), self.iou_mode)


class DiceCost(BaseMatchCost):
    """Dice cost of ``pred.masks`` [Q, ...] against binary ``gt.masks`` [M, ...].

    Args:
        pred_act: apply a sigmoid to the predicted masks (True when they are logits).
        eps: added to numerator and denominator. naive_dice: False squares the denominator terms.
    """

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

    def __init__(self, use_sigmoid: bool = True, weight: Union[float, int] = 1.0) -> None:
        if not V.check_flag("use_sigmoid", use_sigmoid):
            raise ValueError("CrossEntropyLossCost supports use_sigmoid=True only (binary masks); "
                             "mmdet 3.3.0 has no softmax variant either")
        super().__init__(weight)
        self.use_sigmoid = use_sigmoid

    def compute(self, pred_instances, gt_instances, img_shapes=None) -> Tensor:
        return mask_cross_entropy_cost(_field(pred_instances, "masks", "pred_instances", "CrossEntropyLossCost"),
                                       _field(gt_instances, "masks", "gt_instances", "CrossEntropyLossCost"))
