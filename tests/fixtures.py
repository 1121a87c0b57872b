"""Shared test inputs: prior grids and random GT generators, so every test file draws scenes the same way.

Shape symbols: A priors, M GTs. Generators take an explicit ``torch.Generator`` so each case is seeded.
"""
import math

import torch

from detassign.structures import Priors


# ----------------------------------------------------------------------------- prior grids
def make_anchors(size=128, strides=(8, 16, 32)):
    """Anchor points of a square ``size`` px image in pixels, as ultralytics' ``make_anchors(...) *
    stride_tensor`` lays them out: per stride, row-major cells, points at ``(i + 0.5) * s``. -> [A, 2]

    ``size`` must be a multiple of every stride (a YOLO input is padded to one), so the ``size // s`` cells of
    ultralytics' feature maps and ``Priors.grid``'s ``ceil(size / s)`` agree."""
    if any(size % s for s in strides):
        raise ValueError(f"size must be a multiple of every stride {tuple(strides)}, got {size}")
    return Priors.grid((size, size), strides).points


def anchor_boxes(img=128, strides=(8, 16, 32), ratios=(1.0,), base=8, dtype=torch.float32):
    """mmdet ``AnchorGenerator`` layout: per level ``ceil(img / s)`` x ``ceil(img / s)`` cells, row-major,
    ``len(ratios)`` anchors of area ``(base * s) ** 2`` centred on each cell (offset 0.5), computed in float64.
    -> (boxes [A, 4] xyxy, anchors per level)"""
    boxes, levels = [], []
    for s in strides:
        n = math.ceil(img / s)
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cx, cy = (xs.reshape(-1).double() + 0.5) * s, (ys.reshape(-1).double() + 0.5) * s
        per_ratio = []
        for r in ratios:
            w, h = base * s / math.sqrt(r), base * s * math.sqrt(r)
            per_ratio.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1))
        level = torch.stack(per_ratio, 1).reshape(-1, 4)
        boxes.append(level)
        levels.append(len(level))
    return torch.cat(boxes).to(dtype), levels


# ----------------------------------------------------------------------------- GT generators
def make_gts(g, m, img=128, lo=4.0, hi=128.0, off=0.0):
    """m boxes [m, 4] xyxy with log-uniform sides in [lo, hi] px and centres in the image; ``off > 0`` spreads
    the centres ``off * img`` beyond each border, so some boxes are partly or fully outside."""
    wh = torch.exp(torch.empty(m, 2).uniform_(math.log(lo), math.log(hi), generator=g))
    c = torch.rand(m, 2, generator=g) * img * (1 + 2 * off) - off * img
    return torch.cat([c - wh / 2, c + wh / 2], 1)


def jitter_boxes(g, boxes, sigma):
    """boxes [..., 4] xyxy plus Gaussian noise of ``sigma`` px on each coordinate, corners re-sorted so the
    result stays a valid xyxy box (predictions near priors / GTs)."""
    b = boxes + torch.randn(boxes.shape, generator=g) * sigma
    return torch.cat([torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])], -1)


# Arguments the assigners require when built from a config, as their mmdet counterparts do
REQUIRED_ARGS = {
    "MaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "BatchMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "AscendMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "ApproxMaxIoUAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "GridAssigner": dict(pos_iou_thr=0.5, neg_iou_thr=0.4),
    "CenterRegionAssigner": dict(pos_scale=0.2, neg_scale=0.5),
    "TopkHungarianAssigner": dict(topk=4),
    "HungarianAssigner": dict(match_costs=[dict(type="ClassificationCost")]),
    "OneToManyHungarianAssigner": dict(match_costs=[dict(type="ClassificationCost")]),
}
