"""Box formats and the IoU family.

Shape symbols: N, M box counts; ``...`` any leading batch dimensions.

Two conventions exist in the field and both are reproduced bit for bit, because
assigners break ties on these values:

* ``pairwise_iou`` / ``pairwise_giou`` / ``pairwise_iof`` and their ``aligned_*``
  twins follow mmdetection's ``bbox_overlaps``: areas from the raw corners,
  ``union = max(union, eps)`` and ``enclose = max(enclose, eps)`` with
  ``eps = 1e-6``.
* ``aligned_ciou`` / ``aligned_diou`` (and ``pairwise_ciou`` / ``pairwise_diou``)
  follow ultralytics' ``bbox_iou``: ``eps = 1e-7`` is added to box heights, to the
  union, to the squared enclosing diagonal and (GIoU) to the enclosing area.
  ``aligned_giou(..., convention="ultralytics")`` and
  ``aligned_iou(..., convention="ultralytics")`` give ultralytics' IoU / GIoU.

Half-precision inputs (float16 / bfloat16) are computed in float32 and returned as
float32: fp16 areas overflow above 65504 px^2 (a 256 x 256 box). Integer inputs are
upcast to float32 as well. Every function is differentiable.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "BOX_FORMATS",
    "convert_boxes",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "box_area",
    "pairwise_iou",
    "pairwise_giou",
    "pairwise_iof",
    "pairwise_diou",
    "pairwise_ciou",
    "aligned_iou",
    "aligned_giou",
    "aligned_iof",
    "aligned_diou",
    "aligned_ciou",
    "bbox_overlaps",
    "overlaps_of_coordinates",
    "points_in_boxes",
    "aligned_points_in_boxes",
    "box_centers",
    "compute_dtype",
    "to_compute_dtype",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
MMDET_EPS = 1e-6
ULTRALYTICS_EPS = 1e-7


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype box arithmetic runs in: float64 when an input is float64, else float32 (float16,
    bfloat16, integer and bool inputs are computed in float32, see the module docstring). None entries
    are skipped. Every assigner computes in this dtype."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def to_compute_dtype(x: Tensor) -> Tensor:
    """``x`` in :func:`compute_dtype`: half, bfloat16, integer and bool -> float32; float32 / float64 unchanged."""
    if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point():
        return x.float()
    return x


def _as_float(boxes: Tensor, name: str = "boxes") -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    return to_compute_dtype(boxes)


def _common(a: Tensor, b: Tensor):
    a = _as_float(a, "boxes1")
    b = _as_float(b, "boxes2")
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    if a.device != b.device:
        raise ValueError(f"boxes1 and boxes2 must be on one device, got {a.device} and {b.device}")
    return a, b


# ----------------------------------------------------------------------------- formats
def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (x1, y1, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    x1, y1, w, h = boxes.unbind(-1)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


_TO_XYXY = {"xyxy": lambda b: b, "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy}
_FROM_XYXY = {"xyxy": lambda b: b, "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh}


def convert_boxes(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert [..., 4] boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``."""
    for arg, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{arg} must be one of {BOX_FORMATS}, got {fmt!r}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    return _FROM_XYXY[out_fmt](_TO_XYXY[in_fmt](boxes))


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area from the raw corners (negative for inverted boxes).

    Integer and half inputs are upcast to float32 first, as the module promises (an int8 100 x 100 box
    would wrap to 16, an fp16 300 x 300 box overflow to inf); float32 / float64 keep their dtype.
    """
    boxes = _as_float(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_centers(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 2] center points."""
    return torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2), dim=-1)


def aligned_points_in_boxes(points: Tensor, boxes: Tensor, eps: float = 0.0, inclusive: bool = False) -> Tensor:
    """Whether each point lies inside its box. points [..., 2], boxes [..., 4] xyxy (broadcast) -> [...] bool.

    ``inclusive=False``: each of the four distances ``x - x1, y - y1, x2 - x, y2 - y`` is ``> eps``, the
    references' test (``min(deltas) > eps``: ultralytics eps 1e-9, mmdet's ATSS / TAL 0.01, mmdet's
    SimOTA / DSL / CenterRegion 0, which for IEEE floats is ``x1 < x < x2`` and ``y1 < y < y2``, so
    that case skips the subtractions). ``inclusive=True``: ``x1 <= x <= x2`` and ``y1 <= y <= y2``.
    NaN anywhere gives False.
    """
    x, y = points[..., 0], points[..., 1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    if inclusive:
        return (x >= x1) & (y >= y1) & (x <= x2) & (y <= y2)
    if eps == 0:
        return (x > x1) & (y > y1) & (x < x2) & (y < y2)
    return (x - x1 > eps) & (y - y1 > eps) & (x2 - x > eps) & (y2 - y > eps)


def points_in_boxes(points: Tensor, boxes: Tensor, eps: float = 0.0, inclusive: bool = False) -> Tensor:
    """Which points lie inside which boxes. points [A, 2], boxes [..., M, 4] xyxy -> [..., M, A] bool.

    The test of :func:`aligned_points_in_boxes` for every (box, point) pair.
    """
    return aligned_points_in_boxes(points, boxes[..., None, :], eps, inclusive)


# ------------------------------------------------------- mmdetection convention (bbox_overlaps)
Coordinates = Sequence[Tensor]


def overlaps_of_coordinates(a: Coordinates, b: Coordinates, mode: str = "iou", eps: float = MMDET_EPS,
                            area_a: Optional[Tensor] = None, area_b: Optional[Tensor] = None,
                            inplace: bool = False, work: Optional[Tensor] = None) -> Tensor:
    """mmdet's ``bbox_overlaps`` arithmetic, the one kernel of every mmdet-convention overlap here.

    a, b: the four coordinates (x1, y1, x2, y2) of each side as separate tensors, all broadcastable
    (``[N, 1]`` with ``[1, M]`` for pairwise overlaps, ``[P]`` with ``[P]`` for matching rows); area_a /
    area_b: ``(x2 - x1) * (y2 - y1)`` when the caller holds them. Same element-wise operations in the
    same order as mmdet, so the same bits; no temporary is larger than the broadcast result.
    ``inplace``: the arithmetic may run in place on its own temporaries (only without autograd).
    ``work``: scratch ``[4, *broadcast shape]`` (``[3, ...]`` for IoU / IoF) that every operation writes into,
    with both areas given; the result is a view of it. For callers that run the kernel block after block:
    on the CPU a fresh temporary costs more in page faults than the arithmetic done on it.
    """
    x1a, y1a, x2a, y2a = a
    x1b, y1b, x2b, y2b = b
    if work is not None:
        return _overlaps_into(a, b, mode, eps, area_a, area_b, work)
    w, h = torch.minimum(x2a, x2b), torch.minimum(y2a, y2b)
    if inplace:
        w = w.sub_(torch.maximum(x1a, x1b)).clamp_(min=0)
        overlap = w.mul_(h.sub_(torch.maximum(y1a, y1b)).clamp_(min=0))
    else:
        overlap = (w - torch.maximum(x1a, x1b)).clamp(min=0) * (h - torch.maximum(y1a, y1b)).clamp(min=0)
    if area_a is None:
        area_a = (x2a - x1a) * (y2a - y1a)
    if mode == "iof":
        union = area_a.clamp(min=eps)
    else:
        if area_b is None:
            area_b = (x2b - x1b) * (y2b - y1b)
        union = area_a + area_b
        # clamp(min=eps) equals mmdet's max(union, tensor([eps])) without a host-to-device copy (a sync on CUDA)
        union = union.sub_(overlap).clamp_(min=eps) if inplace else (union - overlap).clamp(min=eps)
    if mode != "giou":
        return overlap.div_(union) if inplace else overlap / union
    ious = overlap / union
    ew = (torch.maximum(x2a, x2b) - torch.minimum(x1a, x1b)).clamp(min=0)
    eh = (torch.maximum(y2a, y2b) - torch.minimum(y1a, y1b)).clamp(min=0)
    if inplace:
        enclose = ew.mul_(eh).clamp_(min=eps)
        return ious.sub_((enclose - union).div_(enclose))
    enclose = (ew * eh).clamp(min=eps)
    return ious - (enclose - union) / enclose


def _overlaps_into(a: Coordinates, b: Coordinates, mode: str, eps: float, area_a: Optional[Tensor],
                   area_b: Optional[Tensor], work: Tensor) -> Tensor:
    """:func:`overlaps_of_coordinates` written into the buffers of ``work`` (same operations, same bits)."""
    if area_a is None or area_b is None:
        raise ValueError("overlaps_of_coordinates(work=...) needs area_a and area_b")
    x1a, y1a, x2a, y2a = a
    x1b, y1b, x2b, y2b = b
    s1, s2, s3 = work[0], work[1], work[2]
    if mode == "giou":      # the enclosing area first, so four buffers suffice
        torch.maximum(x2a, x2b, out=s1).sub_(torch.minimum(x1a, x1b, out=s2)).clamp_(min=0)
        torch.maximum(y2a, y2b, out=s2).sub_(torch.minimum(y1a, y1b, out=s3)).clamp_(min=0)
        enclose = s1.mul_(s2).clamp_(min=eps)
        s1, s2, s3 = s2, s3, work[3]
    overlap = torch.minimum(x2a, x2b, out=s1).sub_(torch.maximum(x1a, x1b, out=s2)).clamp_(min=0)
    overlap.mul_(torch.minimum(y2a, y2b, out=s2).sub_(torch.maximum(y1a, y1b, out=s3)).clamp_(min=0))
    if mode == "iof":
        union = torch.clamp(area_a.expand_as(overlap), min=eps, out=s2)
    else:
        union = torch.add(area_a, area_b, out=s2).sub_(overlap).clamp_(min=eps)
    ious = overlap.div_(union)
    if mode != "giou":
        return ious
    return ious.sub_(torch.sub(enclose, union, out=union).div_(enclose))


def _mm_overlaps(a: Tensor, b: Tensor, mode: str, pairwise: bool, eps: float) -> Tensor:
    a, b = _common(a, b)
    inplace = not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    # Empty inputs go through the same arithmetic: the result is empty but stays in the autograd graph.
    if pairwise:   # [..., N, 1] against [..., 1, M]: contiguous coordinate vectors, no [..., N, M, 2] corners
        coords_a = [a[..., :, i, None].contiguous() for i in range(4)]
        coords_b = [b[..., None, :, i].contiguous() for i in range(4)]
        return overlaps_of_coordinates(coords_a, coords_b, mode, eps, inplace=inplace)
    return overlaps_of_coordinates(a.unbind(-1), b.unbind(-1), mode, eps, inplace=inplace)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = MMDET_EPS) -> Tensor:
    """IoU of every pair. boxes1 [..., N, 4] xyxy, boxes2 [..., M, 4] xyxy -> [..., N, M] in [0, 1].

    ``union`` is clamped below at ``eps`` (mmdet ``bbox_overlaps(mode="iou")``).
    """
    return _mm_overlaps(boxes1, boxes2, "iou", True, eps)


def pairwise_giou(boxes1: Tensor, boxes2: Tensor, eps: float = MMDET_EPS) -> Tensor:
    """GIoU of every pair. [..., N, 4], [..., M, 4] xyxy -> [..., N, M] in [-1, 1].

    ``union`` and the enclosing area are clamped below at ``eps`` (mmdet convention).
    """
    return _mm_overlaps(boxes1, boxes2, "giou", True, eps)


def pairwise_iof(boxes1: Tensor, boxes2: Tensor, eps: float = MMDET_EPS) -> Tensor:
    """Intersection over the area of ``boxes1`` ("foreground"). [..., N, 4], [..., M, 4] -> [..., N, M]."""
    return _mm_overlaps(boxes1, boxes2, "iof", True, eps)


def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", is_aligned: bool = False,
                  eps: float = MMDET_EPS) -> Tensor:
    """mmdet-compatible entry point: ``mode`` in {"iou", "giou", "iof"}; pairwise or aligned."""
    if mode not in ("iou", "giou", "iof"):
        raise ValueError(f"mode must be one of ('iou', 'giou', 'iof'), got {mode!r}")
    return _mm_overlaps(boxes1, boxes2, mode, not is_aligned, eps)


# ------------------------------------------------------------ ultralytics convention (bbox_iou)
def _ultra(box1: Tensor, box2: Tensor, kind: str, eps: float) -> Tensor:
    """Element-wise (broadcasting) IoU / GIoU / DIoU / CIoU; box1, box2 [..., 4] xyxy -> [...].

    Same operations in the same order as ultralytics ``bbox_iou(xywh=False)``, so values
    agree bit for bit on float32 inputs; box1 / box2 roles matter for rounding.
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0) * (
        torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)  # enclosing box width
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw.pow(2) + ch.pow(2) + eps  # squared enclosing diagonal
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
    if kind == "diou":
        return iou - rho2 / c2
    # CIoU (Zheng et al. 2020, eq. 9-11): aspect-ratio term v, trade-off alpha without gradient.
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - (rho2 / c2 + v * alpha)


def _aligned_ultra(box1: Tensor, box2: Tensor, kind: str, eps: float) -> Tensor:
    box1, box2 = _common(box1, box2)
    return _ultra(box1, box2, kind, eps)


def _pairwise_ultra(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    boxes1, boxes2 = _common(boxes1, boxes2)
    return _ultra(boxes1[..., :, None, :], boxes2[..., None, :, :], kind, eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float | None = None, convention: str = "mmdet") -> Tensor:
    """IoU of matching rows. [..., 4], [..., 4] xyxy (broadcast) -> [...].

    ``convention="mmdet"``: ``overlap / max(union, eps)`` (eps 1e-6);
    ``"ultralytics"``: ``inter / (w1*(h1+eps) + w2*(h2+eps) - inter + eps)`` (eps 1e-7).
    """
    if convention == "ultralytics":
        return _aligned_ultra(boxes1, boxes2, "iou", ULTRALYTICS_EPS if eps is None else eps)
    _check_convention(convention)
    a, b = torch.broadcast_tensors(*_common(boxes1, boxes2))
    return _mm_overlaps(a, b, "iou", False, MMDET_EPS if eps is None else eps)


def aligned_giou(boxes1: Tensor, boxes2: Tensor, eps: float | None = None, convention: str = "mmdet") -> Tensor:
    """GIoU of matching rows. [..., 4], [..., 4] xyxy -> [...] in [-1, 1]; conventions as ``aligned_iou``."""
    if convention == "ultralytics":
        return _aligned_ultra(boxes1, boxes2, "giou", ULTRALYTICS_EPS if eps is None else eps)
    _check_convention(convention)
    a, b = torch.broadcast_tensors(*_common(boxes1, boxes2))
    return _mm_overlaps(a, b, "giou", False, MMDET_EPS if eps is None else eps)


def aligned_iof(boxes1: Tensor, boxes2: Tensor, eps: float = MMDET_EPS) -> Tensor:
    """Intersection over the area of ``boxes1``, matching rows. [..., 4], [..., 4] -> [...]."""
    a, b = torch.broadcast_tensors(*_common(boxes1, boxes2))
    return _mm_overlaps(a, b, "iof", False, eps)


def aligned_diou(boxes1: Tensor, boxes2: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """Distance-IoU of matching rows (ultralytics convention). [..., 4], [..., 4] xyxy -> [...] in [-1, 1]."""
    return _aligned_ultra(boxes1, boxes2, "diou", eps)


def aligned_ciou(boxes1: Tensor, boxes2: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """Complete-IoU of matching rows (ultralytics convention). [..., 4], [..., 4] xyxy -> [...].

    ``alpha`` carries no gradient, as in the paper's reference code.
    """
    return _aligned_ultra(boxes1, boxes2, "ciou", eps)


def pairwise_diou(boxes1: Tensor, boxes2: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """DIoU of every pair. [..., N, 4], [..., M, 4] xyxy -> [..., N, M]."""
    return _pairwise_ultra(boxes1, boxes2, "diou", eps)


def pairwise_ciou(boxes1: Tensor, boxes2: Tensor, eps: float = ULTRALYTICS_EPS) -> Tensor:
    """CIoU of every pair. [..., N, 4], [..., M, 4] xyxy -> [..., N, M]."""
    return _pairwise_ultra(boxes1, boxes2, "ciou", eps)


def _check_convention(convention: str) -> None:
    if convention not in ("mmdet", "ultralytics"):
        raise ValueError(f"convention must be 'mmdet' or 'ultralytics', got {convention!r}")


# Oriented boxes live in detassign.rotated_boxes; re-exported here so one module holds every overlap.
from .rotated_boxes import (aligned_probiou, aligned_rotated_iou, convert_rboxes, pairwise_probiou,  # noqa: E402,F401
                            pairwise_rotated_iou, points_in_rboxes, rbbox_overlaps, regularize_rboxes)
