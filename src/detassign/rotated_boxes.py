"""Oriented (rotated) boxes: formats, ProbIoU, exact polygon IoU, point-in-box tests.

Shape symbols: N, M box counts, P pairs, A points, K polygon vertices; ``...`` leading batch dims.

Format ``xywhr``: ``(cx, cy, w, h, r)`` with ``r`` in **radians**, in image coordinates (y points down),
so a positive ``r`` turns the box clockwise on screen. The corners are

    c + (w/2)(cos r, sin r) + (h/2)(-sin r, cos r),  c + (w/2)(cos r, sin r) - (h/2)(-sin r, cos r),
    c - ..., c - (w/2)(cos r, sin r) + (h/2)(-sin r, cos r)

in that order (ultralytics ``xywhr2xyxyxyxy``, mmrotate ``RotatedBoxes.rbox2corner``, mmcv's
``box_iou_rotated(clockwise=True)``: the three libraries share this convention). ``xywha`` is the same with
the angle in degrees; ``poly`` is 8 numbers ``(x1, y1, ..., x4, y4)`` (DOTA labels). A box has many
parameterisations (``(w, h, r)``, ``(h, w, r + pi/2)``, ``r + pi``): :func:`regularize_rboxes` picks one.

Overlaps:

* :func:`pairwise_probiou` / :func:`aligned_probiou`: ProbIoU (Llerena et al. 2021, arXiv:2106.06072),
  ``1 - Hellinger distance`` between the boxes' Gaussians (covariance ``diag(w^2, h^2) / 12`` rotated by
  ``r``), with the same operations in the same order as ultralytics 8.4.190 ``batch_probiou`` / ``probiou``
  (``eps = 1e-7`` in the denominators and inside the log, Bhattacharyya distance clamped to
  ``[eps, 100]``), so values agree to float rounding. Smooth and differentiable; not a set IoU (two
  identical boxes give ``1 - sqrt(2 eps) ~ 0.99955``, disjoint boxes a small value that reaches
  ``1 - sqrt(1 + eps) ~ -5e-8`` far apart; the assigners clamp it at 0 as ultralytics does).
* :func:`pairwise_rotated_iou` / :func:`aligned_rotated_iou`: the exact IoU of the two rectangles
  (intersection of convex polygons by Sutherland-Hodgman clipping, vectorised over pairs, shoelace area),
  in pure torch, differentiable almost everywhere. ``mode="iof"`` divides by the first box's area.
  Pairs whose enclosing axis-aligned boxes are disjoint are skipped (IoU 0), so the cost is proportional
  to the overlapping pairs.
* :func:`rbbox_overlaps`: mmrotate's ``rbbox_overlaps`` / ``RBboxOverlaps2D`` convention (sides clamped
  below at 1e-3 px, ``iou`` or ``iof``, pairwise or aligned), the overlap calculator of mmrotate configs
  (``iou_calculator=dict(type="RBboxOverlaps2D")``).

Half-precision and integer inputs are computed in float32 (as in :mod:`detassign.boxes`).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from . import _validate as V

__all__ = [
    "RBOX_FORMATS",
    "RBOX_PATTERNS",
    "ROTATED_CALCULATORS",
    "convert_rboxes",
    "xywhr_to_corners",
    "corners_to_xywhr",
    "xywhr_to_poly",
    "poly_to_xywhr",
    "xywha_to_xywhr",
    "xywhr_to_xywha",
    "cxcywh_angle_to_xywhr",
    "regularize_rboxes",
    "rbox_to_hbox",
    "rbox_areas",
    "points_in_rboxes",
    "pairwise_probiou",
    "aligned_probiou",
    "pairwise_rotated_iou",
    "aligned_rotated_iou",
    "convex_intersection_area",
    "rbbox_overlaps",
    "is_rotated_calculator",
]

RBOX_FORMATS = ("xywhr", "xywha", "poly")
RBOX_PATTERNS = ("oc", "le90", "le135", "ultralytics")
ROTATED_CALCULATORS = ("RBboxOverlaps2D", "mmrotate.RBboxOverlaps2D")
PROBIOU_EPS = 1e-7
MMROTATE_MIN_SIDE = 1e-3


def _as_float(boxes: Tensor, name: str, width: int = 5) -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.shape[-1:] != (width,):
        raise ValueError(f"{name} must have shape [..., {width}], got {tuple(boxes.shape)}")
    if boxes.dtype in (torch.float16, torch.bfloat16) or not boxes.is_floating_point():
        return boxes.float()
    return boxes


def _common(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    a, b = _as_float(a, "boxes1"), _as_float(b, "boxes2")
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    if a.device != b.device:
        raise ValueError(f"boxes1 and boxes2 must be on one device, got {a.device} and {b.device}")
    return a, b


# ----------------------------------------------------------------------------- formats
def xywhr_to_corners(boxes: Tensor) -> Tensor:
    """[..., 5] xywhr -> [..., 4, 2] corners, in the order of the module docstring.

    Same operations as ultralytics ``xywhr2xyxyxyxy`` (so the corners, hence its inside test, are
    bit-identical on the same tensor).
    """
    centre = boxes[..., :2]
    w, h, angle = (boxes[..., i:i + 1] for i in range(2, 5))
    cos, sin = torch.cos(angle), torch.sin(angle)
    half_w = torch.cat([w / 2 * cos, w / 2 * sin], -1)           # along the box's width
    half_h = torch.cat([-h / 2 * sin, h / 2 * cos], -1)          # along its height
    return torch.stack([centre + half_w + half_h, centre + half_w - half_h,
                        centre - half_w - half_h, centre - half_w + half_h], -2)


def xywhr_to_poly(boxes: Tensor) -> Tensor:
    """[..., 5] xywhr -> [..., 8] ``(x1, y1, ..., x4, y4)``."""
    return xywhr_to_corners(boxes).flatten(-2)


def corners_to_xywhr(corners: Tensor) -> Tensor:
    """[..., 4, 2] points -> [..., 5] xywhr of their minimum-area enclosing rectangle.

    The rectangle has a side along an edge of the points' convex hull, and every hull edge joins two of
    the four points, so the smallest of the bounding rectangles along the 6 point-pair directions is the
    minimum. The result is canonical as ultralytics' ``xyxyxyxy2xywhr`` (``cv2.minAreaRect``): ``w >= h``
    and ``r`` in ``[-pi/4, 3pi/4)`` (pattern ``"le135"`` of :func:`regularize_rboxes`). Pure torch, no
    OpenCV; four points that are a rectangle give that rectangle back.
    """
    if corners.shape[-2:] != (4, 2):
        raise ValueError(f"corners must have shape [..., 4, 2], got {tuple(corners.shape)}")
    pts = corners if corners.is_floating_point() and corners.dtype not in (torch.float16, torch.bfloat16) \
        else corners.float()
    i, j = zip(*[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
    d = pts[..., list(j), :] - pts[..., list(i), :]                      # [..., 6, 2] candidate directions
    u = d / d.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(pts.dtype).tiny)
    v = torch.stack((-u[..., 1], u[..., 0]), -1)
    pu = torch.einsum("...pc,...dc->...dp", pts, u)                      # [..., 6, 4] projections
    pv = torch.einsum("...pc,...dc->...dp", pts, v)
    extent_u = pu.amax(-1) - pu.amin(-1)
    extent_v = pv.amax(-1) - pv.amin(-1)
    best = (extent_u * extent_v).argmin(-1, keepdim=True)                 # [..., 1]

    def pick(x: Tensor) -> Tensor:
        return x.gather(-1, best).squeeze(-1)

    mid_u = pick((pu.amax(-1) + pu.amin(-1)) / 2)
    mid_v = pick((pv.amax(-1) + pv.amin(-1)) / 2)
    ux, uy = pick(u[..., 0]), pick(u[..., 1])
    cx, cy = mid_u * ux - mid_v * uy, mid_u * uy + mid_v * ux
    rbox = torch.stack((cx, cy, pick(extent_u), pick(extent_v), torch.atan2(uy, ux)), -1)
    return regularize_rboxes(rbox, "le135")


def poly_to_xywhr(poly: Tensor) -> Tensor:
    """[..., 8] ``(x1, y1, ..., x4, y4)`` -> [..., 5] xywhr (minimum-area rectangle, see :func:`corners_to_xywhr`)."""
    if poly.shape[-1:] != (8,):
        raise ValueError(f"poly must have shape [..., 8], got {tuple(poly.shape)}")
    return corners_to_xywhr(poly.unflatten(-1, (4, 2)))


def xywha_to_xywhr(boxes: Tensor) -> Tensor:
    """[..., 5] with the angle in degrees -> [..., 5] radians."""
    return torch.cat((boxes[..., :4], torch.deg2rad(boxes[..., 4:])), -1)


def xywhr_to_xywha(boxes: Tensor) -> Tensor:
    """[..., 5] radians -> [..., 5] with the angle in degrees."""
    return torch.cat((boxes[..., :4], torch.rad2deg(boxes[..., 4:])), -1)


def cxcywh_angle_to_xywhr(cxcywh: Tensor, angle: Tensor, degrees: bool = False) -> Tensor:
    """cxcywh [..., 4] and angle [...] or [..., 1] (ultralytics heads predict them apart) -> [..., 5] xywhr."""
    if cxcywh.shape[-1:] != (4,):
        raise ValueError(f"cxcywh must have shape [..., 4], got {tuple(cxcywh.shape)}")
    if angle.shape == cxcywh.shape[:-1]:
        angle = angle[..., None]
    if angle.shape != cxcywh.shape[:-1] + (1,):
        raise ValueError(f"angle must have shape {tuple(cxcywh.shape[:-1])} or {tuple(cxcywh.shape[:-1]) + (1,)}, "
                         f"got {tuple(angle.shape)}")
    return torch.cat((cxcywh, torch.deg2rad(angle) if degrees else angle), -1)


_CONVERT = {
    ("xywhr", "xywha"): xywhr_to_xywha,
    ("xywha", "xywhr"): xywha_to_xywhr,
    ("xywhr", "poly"): xywhr_to_poly,
    ("poly", "xywhr"): poly_to_xywhr,
}


def convert_rboxes(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert between ``"xywhr"`` [..., 5], ``"xywha"`` [..., 5] (degrees) and ``"poly"`` [..., 8].

    ``poly -> xywh*`` fits the minimum-area rectangle (canonical ``w >= h``, angle in [-pi/4, 3pi/4)).
    """
    for arg, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in RBOX_FORMATS:
            raise ValueError(f"{arg} must be one of {RBOX_FORMATS}, got {fmt!r}")
    width = 8 if in_fmt == "poly" else 5
    if boxes.shape[-1:] != (width,):
        raise ValueError(f"boxes in format {in_fmt!r} must have shape [..., {width}], got {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    if (in_fmt, out_fmt) in _CONVERT:
        return _CONVERT[(in_fmt, out_fmt)](boxes)
    mid = _CONVERT[(in_fmt, "xywhr")](boxes)
    return _CONVERT[("xywhr", out_fmt)](mid)


def regularize_rboxes(boxes: Tensor, pattern: str = "le90") -> Tensor:
    """One parameterisation per rectangle. [..., 5] xywhr -> [..., 5].

    ``"le90"`` / ``"le135"`` (mmrotate's long-edge definitions): ``w >= h`` (swapped with ``r + pi/2``
    unless ``w > h``) and ``r`` in ``[-pi/2, pi/2)`` / ``[-pi/4, 3pi/4)``; ``"oc"`` (OpenCV): sides kept
    in order, ``r`` in ``[-pi/2, 0)``; ``"ultralytics"`` (``ultralytics.utils.ops.regularize_rboxes``):
    ``w, h`` swapped where ``r mod pi >= pi/2``, then ``r`` in ``[0, pi/2)``.
    """
    if pattern not in RBOX_PATTERNS:
        raise ValueError(f"pattern must be one of {RBOX_PATTERNS}, got {pattern!r}")
    x, y, w, h, r = boxes.unbind(-1)
    if pattern == "ultralytics":
        swap = torch.remainder(r, math.pi) >= math.pi / 2
        return torch.stack((x, y, torch.where(swap, h, w), torch.where(swap, w, h),
                            torch.remainder(r, math.pi / 2)), -1)
    if pattern == "oc":
        start = -math.pi / 2
        t = torch.remainder(r - start, math.pi)
        keep = t < math.pi / 2
        return torch.stack((x, y, torch.where(keep, w, h), torch.where(keep, h, w),
                            torch.where(keep, t, t - math.pi / 2) + start), -1)
    start = -math.pi / 2 if pattern == "le90" else -math.pi / 4
    keep = w > h
    t = torch.where(keep, r, r + math.pi / 2)
    return torch.stack((x, y, torch.where(keep, w, h), torch.where(keep, h, w),
                        torch.remainder(t - start, math.pi) + start), -1)


def rbox_to_hbox(boxes: Tensor) -> Tensor:
    """[..., 5] xywhr -> [..., 4] xyxy: the smallest axis-aligned box containing the rectangle."""
    corners = xywhr_to_corners(boxes)
    return torch.cat((corners.amin(-2), corners.amax(-2)), -1)


def rbox_areas(boxes: Tensor) -> Tensor:
    """[..., 5] xywhr -> [...] ``w * h``."""
    return boxes[..., 2] * boxes[..., 3]


# ----------------------------------------------------------------------------- points in boxes
def points_in_rboxes(points: Tensor, boxes: Tensor, convention: str = "ultralytics", eps: float = 0.01) -> Tensor:
    """Which points lie inside which rotated boxes. points [A, 2], boxes [..., M, 5] -> [..., M, A] bool.

    ``"ultralytics"`` (``RotatedTaskAlignedAssigner.select_candidates_in_gts``): with corners a, b, _, d
    the point p is inside when ``0 <= (p - a).(b - a) <= |b - a|^2`` and ``0 <= (p - a).(d - a) <= |d - a|^2``
    (inclusive, borders count). ``"mmrotate"`` (``RotatedBoxes.find_inside_points``): the offset from the
    centre rotated into the box frame must lie at least ``eps`` inside each side.
    """
    if convention not in ("ultralytics", "mmrotate"):
        raise ValueError(f"convention must be 'ultralytics' or 'mmrotate', got {convention!r}")
    if points.dim() != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape [A, 2], got {tuple(points.shape)}")
    boxes = _as_float(boxes, "boxes")
    px, py = points[:, 0].to(boxes.dtype), points[:, 1].to(boxes.dtype)
    if convention == "ultralytics":
        frame = ultralytics_box_frames(boxes)                                  # each [..., M, 1]
        return inside_ultralytics_frames(px, py, *frame)
    return inside_mmrotate(px, py, boxes[..., None, :], eps)


def ultralytics_box_frames(boxes: Tensor) -> Tuple[Tensor, ...]:
    """[..., 5] -> (ax, ay, abx, aby, adx, ady, norm_ab, norm_ad), each [..., 1]: corner a, edges ab / ad
    and their squared lengths, with ultralytics' float operations (corners, then ``b - a``, ``d - a``,
    ``(ab * ab).sum(-1)``)."""
    corners = xywhr_to_corners(boxes)
    a, b, _, d = corners.split(1, dim=-2)                                     # [..., 1, 2]
    ab, ad = b - a, d - a
    return (a[..., 0], a[..., 1], ab[..., 0], ab[..., 1], ad[..., 0], ad[..., 1],
            (ab * ab).sum(dim=-1), (ad * ad).sum(dim=-1))


def inside_ultralytics_frames(px: Tensor, py: Tensor, ax, ay, abx, aby, adx, ady, norm_ab, norm_ad) -> Tensor:
    """The inclusive projection test on precomputed frames (broadcasting) -> bool."""
    apx, apy = px - ax, py - ay
    dot_ab = apx * abx + apy * aby
    dot_ad = apx * adx + apy * ady
    return (dot_ab >= 0) & (dot_ab <= norm_ab) & (dot_ad >= 0) & (dot_ad <= norm_ad)


def inside_mmrotate(px: Tensor, py: Tensor, boxes: Tensor, eps: float) -> Tensor:
    """mmrotate's test: points px, py broadcast against boxes [..., 5] -> bool, ``eps`` inside every side."""
    cx, cy, w, h, r = boxes.unbind(-1)
    cos, sin = torch.cos(r), torch.sin(r)
    ox, oy = px - cx, py - cy
    # rotation into the box frame (mmrotate's matrix [[cos, sin], [-sin, cos]])
    u, v = cos * ox + sin * oy, -sin * ox + cos * oy
    return (u <= w / 2 - eps) & (u >= -w / 2 + eps) & (v <= h / 2 - eps) & (v >= -h / 2 + eps)


# ----------------------------------------------------------------------------- ProbIoU
def _covariance(boxes: Tensor, floor: float) -> Tuple[Tensor, Tensor, Tensor]:
    """[..., 5] -> (a, b, c), each [..., 1]: the covariance [[a, c], [c, b]] of the box's uniform
    distribution, ``diag(w^2, h^2) / 12 (+ floor)`` rotated by r (ultralytics' operation order)."""
    gauss = torch.cat((boxes[..., 2:4].pow(2) / 12 + floor, boxes[..., 4:]), dim=-1)
    a, b, r = gauss.split(1, dim=-1)
    cos, sin = r.cos(), r.sin()
    cos2, sin2 = cos.pow(2), sin.pow(2)
    return a * cos2 + b * sin2, a * sin2 + b * cos2, (a - b) * cos * sin


def _probiou(x1, y1, a1, b1, c1, x2, y2, a2, b2, c2, eps: float) -> Tensor:
    """ProbIoU from centres and covariances (broadcasting): 1 - sqrt(1 - exp(-B) + eps) with the
    Bhattacharyya distance B = t1 + t2 + t3 clamped to [eps, 100]."""
    denom = (a1 + a2) * (b1 + b2) - (c1 + c2).pow(2) + eps
    t1 = (((a1 + a2) * (y1 - y2).pow(2) + (b1 + b2) * (x1 - x2).pow(2)) / denom) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / denom) * 0.5
    det1 = (a1 * b1 - c1.pow(2)).clamp(min=0)
    det2 = (a2 * b2 - c2.pow(2)).clamp(min=0)
    t3 = (((a1 + a2) * (b1 + b2) - (c1 + c2).pow(2)) / (4 * (det1 * det2).sqrt() + eps) + eps).log() * 0.5
    distance = (t1 + t2 + t3).clamp(eps, 100.0)
    return 1 - (1.0 - (-distance).exp() + eps).sqrt()


def pairwise_probiou(boxes1: Tensor, boxes2: Tensor, eps: float = PROBIOU_EPS) -> Tensor:
    """ProbIoU of every pair. boxes1 [N, 5], boxes2 [M, 5] xywhr -> [N, M] in [-5e-8, 1).

    Equals ultralytics' ``batch_probiou(boxes1, boxes2)`` (same operations, same broadcasting layout).
    Symmetric up to rounding; differentiable.
    """
    b1, b2 = _common(boxes1, boxes2)
    if b1.dim() != 2 or b2.dim() != 2:
        raise ValueError(f"boxes1 and boxes2 must be [N, 5] and [M, 5], got {tuple(b1.shape)} and {tuple(b2.shape)}")
    x1, y1 = b1[..., :2].split(1, dim=-1)                                     # [N, 1]
    x2, y2 = (t.squeeze(-1)[None] for t in b2[..., :2].split(1, dim=-1))      # [1, M]
    a1, bb1, c1 = _covariance(b1, 0.0)
    a2, bb2, c2 = (t.squeeze(-1)[None] for t in _covariance(b2, 0.0))
    return _probiou(x1, y1, a1, bb1, c1, x2, y2, a2, bb2, c2, eps)


def aligned_probiou(boxes1: Tensor, boxes2: Tensor, eps: float = PROBIOU_EPS, floor: float = 0.0) -> Tensor:
    """ProbIoU of matching rows. [..., 5], [..., 5] xywhr (broadcast) -> [...].

    Equals ultralytics' ``probiou(boxes1, boxes2).squeeze(-1)`` (``floor`` is added to ``w^2 / 12`` and
    ``h^2 / 12``; its rotated box loss uses 0.01 to bound the gradients of sub-stride boxes).
    """
    b1, b2 = torch.broadcast_tensors(*_common(boxes1, boxes2))
    x1, y1 = b1[..., :2].split(1, dim=-1)
    x2, y2 = b2[..., :2].split(1, dim=-1)
    a1, bb1, c1 = _covariance(b1, floor)
    a2, bb2, c2 = _covariance(b2, floor)
    return _probiou(x1, y1, a1, bb1, c1, x2, y2, a2, bb2, c2, eps).squeeze(-1)


# ----------------------------------------------------------------------------- exact polygon IoU
def _clip(subject: Tensor, count: Tensor, start: Tensor, end: Tensor, orient: Tensor) -> Tuple[Tensor, Tensor]:
    """One Sutherland-Hodgman step: keep the part of each polygon on the inner side of a line.

    subject [P, K, 2] with ``count`` [P] valid vertices, the line from ``start`` to ``end`` [P, 2] and
    ``orient`` [P] (+1 / -1: which side is inner) -> (polygon [P, K + 1, 2], count [P]). Each edge (p, q)
    emits p when p is inside and the crossing point when exactly one of p, q is inside; the emitted
    points are scattered to their running positions (an exclusive cumulative sum).
    """
    P, K, _ = subject.shape
    idx = torch.arange(K, device=subject.device)
    valid = idx < count[:, None]                                              # [P, K]
    nxt = torch.where(idx + 1 < count[:, None], idx + 1, 0)
    q = subject.gather(1, nxt[..., None].expand(P, K, 2))
    ex, ey = (end - start).unbind(-1)
    rel = subject - start[:, None, :]
    side = orient[:, None] * (ex[:, None] * rel[..., 1] - ey[:, None] * rel[..., 0])   # [P, K], >= 0 inside
    side_q = side.gather(1, nxt)
    inside = valid & (side >= 0)
    crosses = valid & ((side >= 0) != (side_q >= 0))
    # the crossing parameter; elsewhere a harmless 0 / 1 so that no NaN reaches the gradient
    denom = torch.where(crosses, side - side_q, torch.ones_like(side))
    t = torch.where(crosses, side, torch.zeros_like(side)) / denom
    point = subject + t[..., None] * (q - subject)
    emitted = inside.long() + crosses.long()
    first = torch.cumsum(emitted, 1) - emitted
    dump = K + 1                                                              # slot for points not emitted
    pos_p = torch.where(inside, first, dump)
    pos_x = torch.where(crosses, first + inside.long(), dump)
    # a convex polygon gains at most one vertex; near-collinear rounding could emit more: those are dropped
    pos = torch.cat((pos_p, pos_x), 1).clamp(max=dump)
    out = subject.new_zeros(P, K + 2, 2)
    out = out.scatter(1, pos[..., None].expand(P, 2 * K, 2), torch.cat((subject, point), 1))
    return out[:, :K + 1], emitted.sum(1).clamp(max=K + 1)


def _shoelace(poly: Tensor, count: Tensor) -> Tensor:
    """Area of polygons poly [P, K, 2] with ``count`` [P] valid vertices -> [P] (>= 0)."""
    P, K, _ = poly.shape
    idx = torch.arange(K, device=poly.device)
    nxt = torch.where(idx + 1 < count[:, None], idx + 1, 0)
    q = poly.gather(1, nxt[..., None].expand(P, K, 2))
    cross = poly[..., 0] * q[..., 1] - q[..., 0] * poly[..., 1]
    cross = torch.where(idx < count[:, None], cross, torch.zeros_like(cross))
    return cross.sum(1).abs() / 2


def convex_intersection_area(poly1: Tensor, poly2: Tensor) -> Tensor:
    """Area of the intersection of convex polygons. poly1 [P, K, 2], poly2 [P, L, 2] (vertices in order,
    either orientation) -> [P]. poly1 is clipped by each edge of poly2 in turn; a degenerate poly2 (zero
    area) gives 0."""
    if poly1.dim() != 3 or poly2.dim() != 3 or poly1.shape[0] != poly2.shape[0] or poly1.shape[-1] != 2:
        raise ValueError(f"poly1 and poly2 must be [P, K, 2] and [P, L, 2], got {tuple(poly1.shape)} and "
                         f"{tuple(poly2.shape)}")
    P, K, _ = poly1.shape
    L = poly2.shape[1]
    signed = _signed_area(poly2)
    orient = torch.where(signed >= 0, 1.0, -1.0).to(poly1.dtype)
    poly, count = poly1, torch.full((P,), K, dtype=torch.long, device=poly1.device)
    for e in range(L):
        poly, count = _clip(poly, count, poly2[:, e], poly2[:, (e + 1) % L], orient)
    area = _shoelace(poly, count)
    return torch.where(signed != 0, area, torch.zeros_like(area))


def _signed_area(poly: Tensor) -> Tensor:
    """[P, L, 2] -> [P] signed area (positive for counter-clockwise vertices in x-right, y-up axes)."""
    q = torch.roll(poly, -1, dims=1)
    return (poly[..., 0] * q[..., 1] - q[..., 0] * poly[..., 1]).sum(1) / 2


def _aligned_rotated_iou_flat(b1: Tensor, b2: Tensor, mode: str, eps: float) -> Tensor:
    """b1, b2 [P, 5] -> [P]. Both boxes are shifted by the mean of their centres first, so the clipping
    works on coordinates of the boxes' size, not the image's (as mmcv does, for precision)."""
    shift = (b1[:, :2] + b2[:, :2]) / 2
    c1 = xywhr_to_corners(torch.cat((b1[:, :2] - shift, b1[:, 2:]), 1))
    c2 = xywhr_to_corners(torch.cat((b2[:, :2] - shift, b2[:, 2:]), 1))
    inter = convex_intersection_area(c1, c2)
    area1, area2 = rbox_areas(b1).abs(), rbox_areas(b2).abs()
    inter = torch.where((area1 > 0) & (area2 > 0), inter, torch.zeros_like(inter))
    base = area1 if mode == "iof" else area1 + area2 - inter
    return inter / base.clamp(min=eps)


def _check_mode(mode: str) -> None:
    if mode not in ("iou", "iof"):
        raise ValueError(f"mode must be 'iou' or 'iof', got {mode!r}")


def aligned_rotated_iou(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """Exact IoU (or IoF over ``boxes1``) of matching rotated boxes. [..., 5], [..., 5] xywhr -> [...] in [0, 1].

    ``union`` (or the first area) is clamped below at ``eps``. Differentiable almost everywhere.
    """
    _check_mode(mode)
    b1, b2 = torch.broadcast_tensors(*_common(boxes1, boxes2))
    lead = b1.shape[:-1]
    return _aligned_rotated_iou_flat(b1.reshape(-1, 5), b2.reshape(-1, 5), mode, eps).reshape(lead)


def pairwise_rotated_iou(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", eps: float = 1e-6,
                         max_pairs: int = 2 ** 20) -> Tensor:
    """Exact IoU (or IoF over ``boxes1``) of every pair. [..., N, 5], [..., M, 5] xywhr -> [..., N, M].

    Only pairs whose enclosing axis-aligned boxes overlap are clipped (the others are exactly 0), in
    blocks of at most ``max_pairs`` pairs, so memory is proportional to the overlapping pairs plus the
    [..., N, M] result. Differentiable (the result is assembled with ``index_put``).
    """
    _check_mode(mode)
    b1, b2 = _common(boxes1, boxes2)
    if b1.dim() < 2 or b2.dim() < 2:
        raise ValueError(f"boxes1 and boxes2 must be [..., N, 5] and [..., M, 5], got {tuple(b1.shape)} and "
                         f"{tuple(b2.shape)}")
    lead = torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    G, N, M = math.prod(lead), b1.shape[-2], b2.shape[-2]
    b1 = b1.expand(*lead, N, 5).reshape(G, N, 5)
    b2 = b2.expand(*lead, M, 5).reshape(G, M, 5)
    h1, h2 = rbox_to_hbox(b1.detach()), rbox_to_hbox(b2.detach())
    touch = ((torch.minimum(h1[:, :, None, 2], h2[:, None, :, 2]) >= torch.maximum(h1[:, :, None, 0], h2[:, None, :, 0]))
             & (torch.minimum(h1[:, :, None, 3], h2[:, None, :, 3]) >= torch.maximum(h1[:, :, None, 1], h2[:, None, :, 1])))
    g, i, j = torch.nonzero(touch, as_tuple=True)
    values = [_aligned_rotated_iou_flat(b1[g[s:s + max_pairs], i[s:s + max_pairs]],
                                        b2[g[s:s + max_pairs], j[s:s + max_pairs]], mode, eps)
              for s in range(0, max(g.numel(), 1), max_pairs)]        # an empty block keeps the graph
    flat = torch.cat(values)
    out = b1.new_zeros(G * N * M).index_put(((g * N + i) * M + j,), flat)
    return out.reshape(*lead, N, M)


# ----------------------------------------------------------------------------- mmrotate calculator
def rbbox_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", is_aligned: bool = False) -> Tensor:
    """mmrotate's ``rbbox_overlaps`` (what ``RBboxOverlaps2D`` computes). boxes1 [N, 5], boxes2 [M, 5] xywhr
    (a sixth score column is dropped) -> [N, M], or [N] when ``is_aligned``.

    Sides are clamped below at 1e-3 px on a detached copy (mmrotate's guard against degenerate boxes, so
    the result carries no gradient, as there) and the exact rotated IoU / IoF is taken (mmcv's
    ``box_iou_rotated`` computes the same polygon intersection in C++; agreement is to float rounding).
    """
    _check_mode(mode)
    b1, b2 = (b[..., :5] if b.shape[-1] == 6 else b for b in (boxes1, boxes2))
    b1, b2 = _common(b1, b2)
    if is_aligned and b1.shape[-2] != b2.shape[-2]:
        raise ValueError(f"is_aligned needs as many boxes1 as boxes2, got {tuple(b1.shape)} and {tuple(b2.shape)}")
    b1, b2 = _clamp_sides(b1), _clamp_sides(b2)
    if is_aligned:
        return aligned_rotated_iou(b1, b2, mode)
    return pairwise_rotated_iou(b1, b2, mode)


def _clamp_sides(boxes: Tensor) -> Tensor:
    boxes = boxes.detach().clone()
    boxes[..., 2:4] = boxes[..., 2:4].clamp(min=MMROTATE_MIN_SIDE)
    return boxes


def is_rotated_calculator(cfg) -> bool:
    """Whether an mmdet-style ``iou_calculator`` config names mmrotate's ``RBboxOverlaps2D`` (boxes
    [..., 5] xywhr). Other keys are rejected: mmrotate's calculator takes none."""
    if not isinstance(cfg, dict) or cfg.get("type") not in ROTATED_CALCULATORS:
        return False
    unknown = set(cfg) - {"type"}
    if unknown:
        raise ValueError(f"iou_calculator=dict(type='RBboxOverlaps2D') takes no other keys, got {sorted(unknown)}")
    return True


def rotated_box_tensor(name: str, boxes, lead: Tuple = ("N",), *, empty_rows: bool = False) -> Tensor:
    """mmrotate boxes ``[..., N, 5]`` xywhr, or ``[..., N, 6]`` with a score column (dropped); box objects
    with a ``.tensor`` (mmrotate ``RotatedBoxes``) are unwrapped, lists / numpy arrays refused naming
    ``name``; ``empty_rows=True`` (per-image inputs) reads an empty tensor of any dtype or rank as zero
    boxes, as mmdet does. Checks the shape only: values are checked after the device check
    (:func:`detassign._validate.check_finite`, and ``check_rboxes`` for GT boxes)."""
    boxes = V.as_tensor(name, boxes)
    if boxes.numel() and boxes.dim() == len(lead) + 1 and boxes.shape[-1] not in (5, 6):
        raise ValueError(f"{name} must have shape [{', '.join(map(str, lead))}, 5] xywhr (or 6 columns with a "
                         f"score), got {tuple(boxes.shape)}")
    width = 6 if boxes.dim() == len(lead) + 1 and boxes.shape[-1] == 6 else 5
    return V.tensor_input(name, boxes, tuple(lead) + (width,), floating=True, empty_rows=empty_rows)[..., :5]


def rotated_centers(boxes: Tensor) -> Tensor:
    """[..., 5] xywhr -> [..., 2] centres (mmrotate ``RotatedBoxes.centers``)."""
    return boxes[..., :2]

