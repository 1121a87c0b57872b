"""RegionAssigner: center-region anchors of a GT's own pyramid level are positive (Cascade RPN).

Shape symbols: A anchors of all levels (level-major, as ``num_level_anchors`` splits them),
A_l anchors of level l, M GTs, L pyramid levels.

Algorithm (Vu et al., "Cascade RPN", 2019; mmdetection's ``RegionAssigner``), per image:

1. Target level of every GT from its size:
   ``l = floor(log2(sqrt(w * h)) - log2(anchor_scale * anchor_strides[0]) + 0.5)``, clamped to
   ``[0, L - 1]`` (a zero-area GT goes to level 0).
2. On every level, project each GT onto the feature grid (divide by the stride) and shrink it by
   ``r`` of its extent from every side, rounding to grid cells (half to even) and clipping to the
   feature map: the center region uses ``r1 = (1 - center_ratio) / 2``, the ignore region
   ``r2 = (1 - ignore_ratio) / 2``.
3. On the GT's own level, anchors whose center (in grid units, bounds inclusive) lies in the ignore
   region are ignored (-1) and those in the center region are positive. Where several GTs of one
   level claim an anchor, the GT with the highest index decides: mmdet writes the GTs in index order
   and later writes win, so this assigner is order-dependent for overlapping same-level GTs.
4. Anchors in a GT's ignore region on the levels directly below and above its own are ignored
   (this overrides positives).
5. Anchors that are invalid (``valid_flags``) or cross the image border by more than
   ``allowed_border`` px are ignored (a negative ``allowed_border`` checks ``valid_flags`` only).

Differences from mmdet 3.3.0 (everything else is bit-for-bit; see tests/assigners/test_region.py):

* ``labels`` are -1 for non-positives (the library-wide contract); mmdet writes 0 there, which
  ``mmdet_labels=True`` reproduces (including mmdet's -1 labels when there are no GTs or anchors).
* ``max_overlaps`` is always ``None``: the assigner computes no overlaps. mmdet returns ``None`` too,
  except for zeros when there are no GTs or no anchors.
* With no GTs every anchor is negative (0), out-of-image ones included, exactly as mmdet (which
  returns before its border step).
* ``gt_instances_ignore`` with boxes raises ``ValueError``; mmdet raises a not-implemented error for
  any non-``None`` value, we also accept an empty one.
* ``pred_instances.valid_flags`` is optional (all valid when absent).
* float16 / bfloat16 / integer inputs are computed in float32 (mmdet computes in half, where
  ``w * h`` overflows above 65504 px^2 and sends every large GT to the top level).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import points_in_boxes, to_compute_dtype
from ..structures import AssignResult, Instances, Priors, labels_from_gt_inds
from .base import BaseAssigner

__all__ = ["RegionAssigner", "target_levels", "grid_regions", "centers_in_regions", "claim_own_level",
           "inside_image"]


def target_levels(gt_bboxes: Tensor, anchor_scale: float, base_stride: float, num_levels: int) -> Tensor:
    """Pyramid level of every GT. gt_bboxes [M, 4] xyxy -> [M] long in ``[0, num_levels - 1]``.

    ``floor(log2(sqrt(w h)) - log2(anchor_scale * base_stride) + 0.5)``: the level whose anchor
    size ``anchor_scale * stride`` is nearest to the GT's size in log scale (strides doubling).
    """
    scale = torch.sqrt((gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1]))
    # log2 of the smallest anchor size taken in the GTs' dtype, so the rounding matches mmdet's
    min_anchor_size = scale.new_full((1,), float(anchor_scale * base_stride))
    levels = torch.floor(torch.log2(scale) - torch.log2(min_anchor_size) + 0.5)
    return levels.clamp(min=0, max=num_levels - 1).long()


def grid_regions(gt_bboxes: Tensor, ratio: float, stride: float, featmap_size: Tuple[int, int]) -> Tensor:
    """GT boxes shrunk by ``ratio`` of their extent from every side, in grid units of one level.

    gt_bboxes [M, 4] xyxy px -> [M, 4] (x1, y1, x2, y2) grid cells, rounded half to even and clipped
    to ``[0, w]`` / ``[0, h]`` for ``featmap_size = (h, w)``. ``ratio = 0`` keeps the whole box,
    ``ratio = 0.5`` collapses it to its center.
    """
    f = gt_bboxes / stride
    x1 = torch.round((1 - ratio) * f[:, 0] + ratio * f[:, 2])
    y1 = torch.round((1 - ratio) * f[:, 1] + ratio * f[:, 3])
    x2 = torch.round(ratio * f[:, 0] + (1 - ratio) * f[:, 2])
    y2 = torch.round(ratio * f[:, 1] + (1 - ratio) * f[:, 3])
    h, w = featmap_size
    return torch.stack((x1.clamp(min=0, max=w), y1.clamp(min=0, max=h),
                        x2.clamp(min=0, max=w), y2.clamp(min=0, max=h)), dim=-1)


def centers_in_regions(anchors: Tensor, stride: float, regions: Tensor) -> Tensor:
    """Anchor centers (grid units) inside regions, bounds included. anchors [A_l, 4] px, regions [M, 4] -> [M, A_l]."""
    f = anchors / stride
    centers = torch.stack(((f[:, 0] + f[:, 2]) * 0.5, (f[:, 1] + f[:, 3]) * 0.5), dim=-1)      # [A_l, 2]
    return points_in_boxes(centers, regions, inclusive=True)


def claim_own_level(in_ignore: Tensor, in_center: Tensor, own: Tensor) -> Tensor:
    """gt_inds on one level from the GTs whose target level it is (steps 2-3).

    in_ignore, in_center [M, A_l] bool, own [M] bool -> [A_l] long: 0 where no own GT claims the
    anchor, else decided by the highest-index claimant g: ``g + 1`` if the anchor is in its center
    region, -1 otherwise (mmdet's sequential writes, last one wins).
    """
    num_gts = in_ignore.shape[0]
    claims = (in_ignore | in_center) & own[:, None]                                   # [M, A_l]
    index = torch.arange(1, num_gts + 1, device=claims.device)[:, None]
    last = (claims * index).amax(dim=0)                                                # [A_l] 1-based, 0 none
    in_last_center = in_center.gather(0, (last - 1).clamp(min=0)[None]).squeeze(0)     # [A_l]
    gt_inds = torch.where(in_last_center, last, torch.full_like(last, -1))
    return torch.where(last > 0, gt_inds, torch.zeros_like(last))


def inside_image(anchors: Tensor, valid_flags: Tensor, img_shape: Sequence[int], allowed_border: float) -> Tensor:
    """Valid anchors within the image plus ``allowed_border`` px. anchors [A, 4], valid_flags [A] -> [A] bool.

    ``x1 >= -b``, ``y1 >= -b``, ``x2 < w + b``, ``y2 < h + b``; a negative border checks only the flags.
    """
    if allowed_border < 0:
        return valid_flags
    img_h, img_w = img_shape[0], img_shape[1]
    return (valid_flags & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
            & (anchors[:, 2] < img_w + allowed_border) & (anchors[:, 3] < img_h + allowed_border))


def _read_inputs(pred_instances, gt_instances, gt_instances_ignore) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checked (priors [A, 4], valid_flags [A] bool, gt boxes [M, 4], gt labels [M])."""
    anchors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                             ("A", 4), empty_rows=True)
    gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M", 4),
                              empty_rows=True)
    gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
    valid_flags = V.get_field(pred_instances, "valid_flags", "pred_instances", required=False)
    if valid_flags is None:
        valid_flags = torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    valid_flags = V.tensor_input("pred_instances.valid_flags", valid_flags, ("A",), empty_rows=True)
    V.check_agree("A", [("pred_instances.priors", anchors, 0), ("pred_instances.valid_flags", valid_flags, 0)])
    ignore_boxes = V.get_field(gt_instances_ignore, "bboxes", "gt_instances_ignore", required=False)
    if ignore_boxes is not None:
        ignore_boxes = V.as_tensor("gt_instances_ignore.bboxes", ignore_boxes)
    if ignore_boxes is not None and ignore_boxes.numel() > 0:
        raise ValueError("gt_instances_ignore: RegionAssigner has no ignore-box rule (mmdet raises too); "
                         f"pass None, got {ignore_boxes.shape[0]} box(es)")
    V.check_same_device(priors=anchors, gt_bboxes=gt_bboxes, valid_flags=valid_flags, gt_labels=gt_labels)
    gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), rows_like=("gt_instances.bboxes", gt_bboxes))
    V.check_binary("pred_instances.valid_flags", valid_flags)
    V.check_finite("pred_instances.priors", anchors)
    V.check_boxes("gt_instances.bboxes", gt_bboxes)
    return anchors, valid_flags.bool(), gt_bboxes, gt_labels


def _check_levels(num_anchors: int, featmap_sizes, num_level_anchors, anchor_scale,
                  anchor_strides) -> Tuple[List[Tuple[int, int]], List[int], List[float]]:
    for name, value in (("featmap_sizes", featmap_sizes), ("num_level_anchors", num_level_anchors),
                        ("anchor_strides", anchor_strides)):
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise TypeError(f"{name} must be a non-empty list with one entry per pyramid level, got {value!r}")
    lengths = (len(featmap_sizes), len(num_level_anchors), len(anchor_strides))
    if len(set(lengths)) != 1:
        raise ValueError(f"featmap_sizes, num_level_anchors and anchor_strides must have one entry per level, "
                         f"got lengths {lengths}")
    sizes = []
    for size in featmap_sizes:
        if len(size) != 2:
            raise ValueError(f"featmap_sizes entries must be (h, w), got {tuple(size)!r}")
        sizes.append((int(size[0]), int(size[1])))
    counts = [int(n) for n in num_level_anchors]
    if any(n < 0 for n in counts) or sum(counts) != num_anchors:
        raise ValueError(f"num_level_anchors must be non-negative and sum to the number of priors "
                         f"({num_anchors}), got {counts}")
    strides = [V.check_number(f"anchor_strides[{i}]", s, low=0, low_open=True) for i, s in enumerate(anchor_strides)]
    V.check_number("anchor_scale", anchor_scale, low=0, low_open=True)
    return sizes, counts, strides


def _check_img_shape(img_meta) -> Tuple[int, int]:
    if not isinstance(img_meta, Mapping) or "img_shape" not in img_meta:
        raise ValueError(f"img_meta must be a dict with 'img_shape' = (h, w[, c]), got {img_meta!r}")
    shape = img_meta["img_shape"]
    if len(shape) < 2:
        raise ValueError(f"img_meta['img_shape'] must be (h, w[, c]), got {shape!r}")
    return shape[0], shape[1]


class RegionAssigner(BaseAssigner):
    """Cascade RPN's region assigner (see the module docstring for the steps and mmdet differences).

    Args:
        center_ratio: fraction of the GT (per side, centered) whose anchors are positive, in [0, 1].
        ignore_ratio: fraction of the GT whose anchors are ignored on its own and adjacent levels, in [0, 1].
        mmdet_labels: write 0 instead of -1 into ``labels`` for non-positives, as mmdet does.
    """

    def __init__(self, center_ratio: float = 0.2, ignore_ratio: float = 0.5, mmdet_labels: bool = False) -> None:
        self.center_ratio = V.check_number("center_ratio", center_ratio, low=0, high=1)
        self.ignore_ratio = V.check_number("ignore_ratio", ignore_ratio, low=0, high=1)
        self.mmdet_labels = V.check_flag("mmdet_labels", mmdet_labels)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, img_meta: dict, featmap_sizes: List[Tuple[int, int]],
               num_level_anchors: List[int], anchor_scale: float, anchor_strides: List[float],
               gt_instances_ignore=None, allowed_border: float = 0) -> AssignResult:
        """Assign the anchors of one image.

        pred_instances.priors [A, 4] xyxy anchors of all levels concatenated level by level,
        pred_instances.valid_flags [A] bool (optional, default all valid);
        gt_instances.bboxes [M, 4] xyxy, gt_instances.labels [M] int;
        img_meta['img_shape'] = (h, w[, c]); featmap_sizes [(h_l, w_l)] * L; num_level_anchors [A_l] * L
        (summing to A); anchor_scale the base anchor size in strides; anchor_strides [stride_l] * L.

        Returns an :class:`AssignResult` with gt_inds [A] (1-based, 0 negative, -1 ignore),
        labels [A] (-1 for non-positives, 0 with ``mmdet_labels``) and ``max_overlaps=None``.
        If M == 0 or A == 0: every anchor is negative; no error.
        """
        anchors, valid_flags, gt_bboxes, gt_labels = _read_inputs(pred_instances, gt_instances, gt_instances_ignore)
        num_anchors, num_gts = anchors.shape[0], gt_bboxes.shape[0]
        sizes, counts, strides = _check_levels(num_anchors, featmap_sizes, num_level_anchors, anchor_scale,
                                               anchor_strides)
        img_shape = _check_img_shape(img_meta)
        V.check_number("allowed_border", allowed_border, finite=False)

        if num_gts == 0 or num_anchors == 0:
            gt_inds = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
            return AssignResult(num_gts, gt_inds, None, torch.full_like(gt_inds, -1))

        anchors, gt_bboxes = to_compute_dtype(anchors), to_compute_dtype(gt_bboxes)
        gt_inds = self._assign_levels(anchors, gt_bboxes, sizes, counts, anchor_scale, strides)
        inside = inside_image(anchors, valid_flags, img_shape, allowed_border)
        gt_inds = torch.where(inside, gt_inds, torch.full_like(gt_inds, -1))
        return AssignResult(num_gts, gt_inds, None,
                            labels_from_gt_inds(gt_inds, gt_labels, fill=0 if self.mmdet_labels else -1))

    def _assign_levels(self, anchors: Tensor, gt_bboxes: Tensor, sizes, counts, anchor_scale,
                       strides) -> Tensor:
        """Steps 1-4 over the levels. anchors [A, 4], gt_bboxes [M, 4] -> gt_inds [A]."""
        num_levels = len(counts)
        levels = target_levels(gt_bboxes, anchor_scale, strides[0], num_levels)        # [M]
        core_ratio = (1 - self.center_ratio) / 2
        ignore_ratio = (1 - self.ignore_ratio) / 2
        per_level = []
        for lvl, level_anchors in enumerate(torch.split(anchors, counts)):
            stride, size = strides[lvl], sizes[lvl]
            in_ignore = centers_in_regions(level_anchors, stride, grid_regions(gt_bboxes, ignore_ratio, stride, size))
            in_center = centers_in_regions(level_anchors, stride, grid_regions(gt_bboxes, core_ratio, stride, size))
            gt_inds = claim_own_level(in_ignore, in_center, levels == lvl)                # [A_l]
            adjacent = (levels == lvl - 1) | (levels == lvl + 1)                           # [M]
            ignored = (in_ignore & adjacent[:, None]).any(dim=0)                           # [A_l]
            per_level.append(torch.where(ignored, torch.full_like(gt_inds, -1), gt_inds))
        return torch.cat(per_level)

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: square anchors on grid priors, with the level layout they map GTs
        onto; the anchor scale is read off the first anchor (side / stride)."""
        name = type(self).__name__
        boxes, strides = priors.require("boxes", name), priors.require("strides", name)
        shapes, sizes = priors.require("level_shapes", name), priors.require("level_sizes", name)
        stride = strides if strides.dim() == 1 else strides[:, 0]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        level_strides = [float(stride[i]) for i in starts]
        anchor_scale = float((boxes[0, 2] - boxes[0, 0]) / stride[0]) if len(boxes) else 1.0
        return (Instances(priors=boxes), Instances(bboxes=gt_bboxes, labels=gt_labels)), dict(
            img_meta={"img_shape": priors.require("image_size", name)}, featmap_sizes=list(shapes),
            num_level_anchors=list(sizes), anchor_scale=anchor_scale, anchor_strides=level_strides)
