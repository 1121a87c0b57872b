"""Result types and a light instance container.

Coding of ``gt_inds`` (all assigners, per image and batched):
    gt_inds[i] > 0   prior i is positive, assigned to GT ``gt_inds[i] - 1``
    gt_inds[i] == 0  negative (background)
    gt_inds[i] == -1 ignored (excluded from the loss)
``labels`` is the assigned GT's class for positives and -1 elsewhere (RegionAssigner's
``mmdet_labels=True`` option reproduces mmdet's 0 for non-positives); :func:`labels_from_gt_inds`
computes it.

:class:`Priors` describes where a dense head predicts (points, strides, levels, anchor boxes); every
batched assigner takes one as ``assign_batch``'s third argument.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _validate as V

__all__ = ["AssignResult", "BatchAssignResult", "Deferred", "Instances", "Priors", "as_priors", "labels_from_gt_inds",
           "check_level_sizes"]


def labels_from_gt_inds(gt_inds: Tensor, gt_labels: Optional[Tensor], fill: int = -1) -> Tensor:
    """The class of each prior's GT. gt_inds [..., A] (1-based, 0 negative, -1 ignored), gt_labels [..., M]
    (same leading dims) -> [..., A] long: the label where ``gt_inds > 0``, ``fill`` elsewhere.

    A gather and a ``where``, so no host synchronisation on CUDA. No GT (``M == 0`` or None): all ``fill``.
    """
    if gt_labels is None or gt_labels.numel() == 0:
        return torch.full_like(gt_inds, fill)
    gathered = gt_labels.long().gather(-1, (gt_inds - 1).clamp(min=0))
    return torch.where(gt_inds > 0, gathered, torch.full_like(gathered, fill))


class Priors:
    """The priors of a dense head, shared by every image of a batch (``assign_batch``'s ``priors``).

    Attributes:
        points (Tensor[A, 2]): anchor points (x, y) in pixels, e.g. the centers of the grid cells.
        strides (Tensor[A] | Tensor[A, 2] | None): each prior's stride in pixels, one value or (w, h).
        level_sizes (tuple of int | None): priors per pyramid level, in layout order (summing to A).
        boxes (Tensor[A, 4] | None): anchor boxes xyxy px (``[A, 5]`` xywhr with a rotated calculator).
        image_size ((h, w) | None): the input the priors were laid out on.
        level_shapes (tuple of (h_l, w_l) | None): the grid of each level, when the priors are grids.

    Each assigner reads what its algorithm needs and says so when it is missing: TaskAligned the
    points; ATSS the boxes (or squares of side ``octave_base_scale * stride`` when there are none) and
    the level sizes; SimOTA / DynamicSoftLabel the points and strides; MaxIoU the boxes; Hungarian
    nothing. Build one with :meth:`grid`, :meth:`from_points` or :meth:`from_boxes`::

        priors = Priors.grid((640, 640), strides=(8, 16, 32))      # A = 8400 cell centers, offset 0.5
        priors.points.shape, priors.level_sizes                     # (torch.Size([8400, 2]), (6400, 1600, 400))
    """

    def __init__(self, points: Tensor, strides: Optional[Tensor] = None,
                 level_sizes: Optional[Sequence[int]] = None, boxes: Optional[Tensor] = None,
                 image_size: Optional[Tuple[int, int]] = None,
                 level_shapes: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        self.points = V.tensor_input("priors.points", points, ("A", 2), floating=True)
        self.strides = None
        if strides is not None:
            strides = V.as_tensor("priors.strides", strides)
            self.strides = V.tensor_input("priors.strides", strides, ("A",) if strides.dim() == 1 else ("A", 2),
                                          floating=True)
        self.boxes = None
        if boxes is not None:
            boxes = V.as_tensor("priors.boxes", boxes)
            width = boxes.shape[-1] if boxes.dim() == 2 and boxes.shape[-1] in (4, 5) else 4
            self.boxes = V.tensor_input("priors.boxes", boxes, ("A", width), floating=True)
        # boxes first: points derived from boxes (from_boxes) would otherwise take the blame
        fields = [("priors.boxes", self.boxes), ("priors.strides", self.strides), ("priors.points", self.points)]
        A = V.check_agree("A", [(name, x, 0) for name, x in fields if x is not None])
        V.check_same_device(**{name: x for name, x in fields})
        if self.points.device.type != "meta":        # a meta tensor holds no values (shapes only)
            for name, x in fields:
                V.check_finite(name, x)
            if self.strides is not None and V.value_checks_enabled() and bool((self.strides <= 0).any()):
                raise ValueError(f"priors.strides must be positive, got a minimum of {float(self.strides.min())}")
        self.level_sizes = None if level_sizes is None else check_level_sizes(level_sizes, A)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.level_shapes = None if level_shapes is None else tuple((int(h), int(w)) for h, w in level_shapes)
        if self.level_shapes is not None and (self.level_sizes is None or
                                              [h * w for h, w in self.level_shapes] != list(self.level_sizes)):
            raise ValueError(f"level_shapes {list(self.level_shapes)} must multiply out to level_sizes "
                             f"{None if self.level_sizes is None else list(self.level_sizes)}")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_points(cls, points: Tensor, strides: Optional[Tensor] = None,
                    level_sizes: Optional[Sequence[int]] = None, **kwargs) -> "Priors":
        """points [A, 2] px, strides [A] or [A, 2] px. Without ``level_sizes``, a level is a run of equal
        strides (one host read of the strides)."""
        if level_sizes is None and strides is not None:
            per_prior = V.as_tensor("priors.strides", strides)
            per_prior = per_prior[:, 0] if per_prior.dim() == 2 else per_prior
            level_sizes = torch.unique_consecutive(per_prior, return_counts=True)[1].tolist() if len(per_prior) else []
        return cls(points, strides, level_sizes, **kwargs)

    @classmethod
    def from_boxes(cls, boxes: Tensor, level_sizes: Optional[Sequence[int]] = None,
                   strides: Optional[Tensor] = None, **kwargs) -> "Priors":
        """Anchor boxes [A, 4] xyxy px (mmdet's ``priors``), or [A, 5] xywhr (mmrotate's, for the rotated
        calculator); the points are their centers."""
        from .boxes import box_centers

        boxes = V.as_tensor("priors.boxes", boxes)
        width = 5 if boxes.dim() == 2 and boxes.shape[1] == 5 else 4
        boxes = V.tensor_input("priors.boxes", boxes, ("A", width), floating=True)
        return cls(box_centers(boxes) if width == 4 else boxes[:, :2], strides, level_sizes, boxes, **kwargs)

    @classmethod
    def grid(cls, image_size: Tuple[int, int], strides: Sequence[float] = (8, 16, 32), offset: float = 0.5,
             anchor_scale: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32) -> "Priors":
        """Row-major grids of an (h, w) input, one prior per cell of each stride's level: ``ceil(h / s)`` rows
        of ``ceil(w / s)`` points at ``((ix + offset) * s, (iy + offset) * s)`` (ultralytics ``make_anchors``,
        mmdet's point generator with ``offset=0.5``). ``anchor_scale``: also square anchor boxes of side
        ``anchor_scale * s`` centered on the points."""
        h, w = int(image_size[0]), int(image_size[1])
        points, per_prior, shapes = [], [], []
        for s in strides:
            rows, cols = int(-(-h // s)), int(-(-w // s))
            xs = (torch.arange(cols, device=device, dtype=dtype) + offset) * s
            ys = (torch.arange(rows, device=device, dtype=dtype) + offset) * s
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((gx, gy), dim=-1).reshape(-1, 2))
            per_prior.append(torch.full((rows * cols,), float(s), device=device, dtype=dtype))
            shapes.append((rows, cols))
        priors = cls(torch.cat(points), torch.cat(per_prior), [r * c for r, c in shapes], image_size=(h, w),
                     level_shapes=shapes)
        return priors if anchor_scale is None else priors.with_square_boxes(anchor_scale)

    # ---------------------------------------------------------------- what assigners read
    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def stride_xy(self) -> Optional[Tensor]:
        """[A, 2] strides (w, h), or None."""
        if self.strides is None or self.strides.dim() == 2:
            return self.strides
        return self.strides[:, None].expand(-1, 2)

    def square_boxes(self, scale: float) -> Tensor:
        """[A, 4] xyxy squares of side ``scale * stride`` centered on the points (RetinaNet / ATSS anchors with
        one scale and ratio 1; a (w, h) stride gives a rectangle)."""
        self.require("strides", "square anchor boxes")
        half = scale * self.stride_xy / 2                                      # [A, 2]
        return torch.cat((self.points - half, self.points + half), dim=-1)

    def with_square_boxes(self, scale: float) -> "Priors":
        """These priors with :meth:`square_boxes` of ``scale`` as their anchor boxes."""
        return Priors(self.points, self.strides, self.level_sizes, self.square_boxes(scale), self.image_size,
                      self.level_shapes)

    def anchor_boxes(self, scale: float, by: str = "this assigner") -> Tensor:
        """The anchor boxes [A, 4]: :attr:`boxes` when given, else :meth:`square_boxes` of ``scale``."""
        if self.boxes is not None:
            return self.boxes
        if self.strides is None:
            raise ValueError(f"{by} needs priors.boxes (anchor boxes) or priors.strides to derive square anchors "
                             f"from; build the priors with Priors.from_boxes, Priors.from_points(points, strides) "
                             f"or Priors.grid")
        return self.square_boxes(scale)

    def point_priors(self, by: str = "this assigner") -> Tensor:
        """[A, 4] ``(cx, cy, stride_w, stride_h)``: mmdet's point priors (``with_stride=True``)."""
        self.require("strides", by)
        return torch.cat((self.points, self.stride_xy), dim=-1)

    def require(self, field: str, by: str = "this assigner"):
        """The field, or ValueError naming the assigner that needs it and how to provide it."""
        value = getattr(self, field)
        if value is None:
            how = {"strides": "Priors.from_points(points, strides) or Priors.grid",
                   "level_sizes": "level_sizes= (priors per pyramid level), or Priors.grid",
                   "level_shapes": "Priors.grid (the priors laid out as grids)",
                   "image_size": "image_size=(h, w), or Priors.grid",
                   "boxes": "Priors.from_boxes(boxes, level_sizes) or Priors.grid(..., anchor_scale=)"}.get(field, "")
            raise ValueError(f"{by} needs priors.{field}; pass {how}")
        return value

    def to(self, device) -> "Priors":
        move = (lambda t: None if t is None else t.to(device))
        return Priors(move(self.points), move(self.strides), self.level_sizes, move(self.boxes), self.image_size,
                      self.level_shapes)

    def __repr__(self) -> str:
        parts = [f"A={len(self)}"]
        if self.level_sizes is not None:
            parts.append(f"level_sizes={list(self.level_sizes)}")
        parts += [f"{k}" for k in ("strides", "boxes") if getattr(self, k) is not None]
        if self.image_size is not None:
            parts.append(f"image_size={self.image_size}")
        return f"Priors({', '.join(parts)})"


PriorsLike = Union[Priors, Tensor]


def as_priors(priors: PriorsLike, name: str = "priors") -> Priors:
    """``assign_batch``'s priors: a :class:`Priors`; a tensor [A, 2] (anchor points, ultralytics' call) or
    [A, 4] (anchor boxes xyxy, mmdet's priors) is read as :meth:`Priors.from_points` /
    :meth:`Priors.from_boxes` without strides or levels (an assigner that needs them says so)."""
    if isinstance(priors, Priors):
        return priors
    priors = V.as_tensor(name, priors)
    if priors.dim() == 2 and priors.shape[1] in (2, 4):
        priors = V.tensor_input(name, priors, ("A", priors.shape[1]), floating=True)
        if priors.device.type != "meta":
            V.check_finite(name, priors)      # named as the caller passed it
        return Priors(priors) if priors.shape[1] == 2 else Priors.from_boxes(priors)
    raise ValueError(f"{name} must be a detassign.Priors, anchor points [A, 2] or anchor boxes [A, 4], got a "
                     f"tensor of shape {tuple(priors.shape)}")


def check_level_sizes(level_sizes: Sequence[int], num_priors: int, name: str = "level_sizes") -> Tuple[int, ...]:
    """Priors per pyramid level: non-negative ints summing to ``num_priors`` -> a tuple."""
    if isinstance(level_sizes, Tensor):
        level_sizes = level_sizes.tolist()
    try:
        sizes = tuple(int(n) for n in level_sizes)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {level_sizes!r}") from None
    if any(n < 0 for n in sizes) or sum(sizes) != num_priors:
        raise ValueError(f"{name} must be non-negative and sum to the number of priors ({num_priors}), "
                         f"got {list(sizes)} (sum {sum(sizes)})")
    return sizes


class Instances:
    """Minimal stand-in for mmengine's ``InstanceData``: named tensors of one length.

    >>> gt = Instances(bboxes=torch.zeros(3, 4), labels=torch.zeros(3, dtype=torch.long))
    >>> len(gt), gt.bboxes.shape
    (3, torch.Size([3, 4]))

    Assigners only read attributes (``priors``, ``bboxes``, ``scores``, ``labels``, ...), so
    mmengine's ``InstanceData`` works wherever ``Instances`` does.
    """

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fields[name] = value

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        raise AttributeError(f"Instances has no field {name!r}; fields: {sorted(fields)}")

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def keys(self):
        return self._fields.keys()

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name, default)

    def __len__(self) -> int:
        for value in self._fields.values():
            if hasattr(value, "__len__"):
                return len(value)
        return 0

    def __repr__(self) -> str:
        parts = [f"{k}={tuple(v.shape) if isinstance(v, Tensor) else v!r}" for k, v in self._fields.items()]
        return f"Instances({', '.join(parts)})"


class Deferred:
    """An extra property computed on first access, then kept: e.g. TaskAligned's ``target_scores``
    [B, A, C], which mmdet-style callers (they read ``assign_metrics``) never use. Reading it through the
    result (attribute, ``get_extra_property``, ``extras``) always gives the computed value."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute = compute


def _resolved(store: Dict[str, Any], key: str) -> Any:
    """``store[key]``, computing (once) a :class:`Deferred` value; None when absent."""
    value = store.get(key)
    if isinstance(value, Deferred):
        value = store[key] = value.compute()
    return value


class AssignResult:
    """Assignment of A priors to ``num_gts`` GTs in one image.

    Attributes:
        num_gts (int): number of GTs the priors were assigned against.
        gt_inds (LongTensor[A]): 1-based GT index, 0 negative, -1 ignore.
        max_overlaps (Tensor[A] | None): the overlap / quality of each prior with its GT; what
            non-positives hold is assigner-specific (see the README's assigner table).
        labels (LongTensor[A] | None): class of the assigned GT, -1 for non-positives.
        extras: named extra properties, e.g. ``assign_metrics`` (TAL), ``target_scores``.
    """

    def __init__(self, num_gts: int, gt_inds: Tensor, max_overlaps: Optional[Tensor],
                 labels: Optional[Tensor] = None) -> None:
        self.num_gts = int(num_gts)
        self.gt_inds = gt_inds
        self.max_overlaps = max_overlaps
        self.labels = labels
        self._extra_properties: Dict[str, Any] = {}

    # mmdet-compatible extra-property interface
    def set_extra_property(self, key: str, value: Any) -> None:
        if key in ("num_gts", "gt_inds", "max_overlaps", "labels"):
            raise KeyError(f"{key!r} is a basic property of AssignResult, not an extra one")
        self._extra_properties[key] = value

    def get_extra_property(self, key: str) -> Any:
        return _resolved(self._extra_properties, key)

    def __getstate__(self) -> Dict[str, Any]:
        # pickling / torch.save computes deferred extras: what is stored is tensors only
        return dict(self.__dict__, _extra_properties=self.extras)

    @property
    def extras(self) -> Dict[str, Any]:
        return {key: _resolved(self._extra_properties, key) for key in list(self._extra_properties)}

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("_extra_properties", {})
        if name in extras:
            return _resolved(extras, name)
        raise AttributeError(f"AssignResult has no attribute {name!r}")

    @property
    def num_preds(self) -> int:
        return len(self.gt_inds)

    @property
    def pos_mask(self) -> Tensor:
        return self.gt_inds > 0

    @property
    def neg_mask(self) -> Tensor:
        return self.gt_inds == 0

    @property
    def ignore_mask(self) -> Tensor:
        return self.gt_inds == -1

    @property
    def pos_inds(self) -> Tensor:
        return torch.nonzero(self.gt_inds > 0, as_tuple=False).squeeze(-1)

    @property
    def neg_inds(self) -> Tensor:
        return torch.nonzero(self.gt_inds == 0, as_tuple=False).squeeze(-1)

    @property
    def pos_gt_index(self) -> Tensor:
        """0-based GT index of each positive prior, in prior order. [P]"""
        return self.gt_inds[self.gt_inds > 0] - 1

    @property
    def info(self) -> Dict[str, Any]:
        out = {"num_gts": self.num_gts, "num_preds": self.num_preds, "gt_inds": self.gt_inds,
               "max_overlaps": self.max_overlaps, "labels": self.labels}
        out.update(self.extras)
        return out

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the GTs themselves as positives (two-stage samplers do this)."""
        self_inds = torch.arange(1, len(gt_labels) + 1, dtype=torch.long, device=gt_labels.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        if self.max_overlaps is not None:
            self.max_overlaps = torch.cat([self.max_overlaps.new_ones(len(gt_labels)), self.max_overlaps])
        if self.labels is not None:
            self.labels = torch.cat([gt_labels, self.labels])

    def __repr__(self) -> str:
        n_pos = int(self.pos_mask.sum())
        n_ign = int(self.ignore_mask.sum())
        return (f"AssignResult(num_gts={self.num_gts}, num_preds={self.num_preds}, positives={n_pos}, "
                f"ignored={n_ign}, extras={sorted(self._extra_properties)})")


class BatchAssignResult:
    """Assignment for a padded batch of B images with A priors each.

    Attributes:
        num_gts (LongTensor[B]): valid GTs per image (padding excluded).
        gt_inds (LongTensor[B, A]): 1-based index into that image's padded GT list; 0 negative, -1 ignore.
        max_overlaps (Tensor[B, A] | None), labels (LongTensor[B, A] | None): as in AssignResult.
        extras: named batched tensors, e.g. ``target_boxes`` [B, A, 4], ``target_scores`` [B, A, C],
            ``assign_metrics`` [B, A]; reachable as attributes.

    ``result[i]`` gives image i's :class:`AssignResult` (GT indices refer to the valid GTs of that
    image in their padded order, which is what a per-image call on ``gt_bboxes[i][gt_mask[i]]``
    returns when padding is at the end).
    """

    def __init__(self, num_gts: Tensor, gt_inds: Tensor, max_overlaps: Optional[Tensor] = None,
                 labels: Optional[Tensor] = None, **extras: Any) -> None:
        self.num_gts = num_gts
        self.gt_inds = gt_inds
        self.max_overlaps = max_overlaps
        self.labels = labels
        self._extras: Dict[str, Any] = dict(extras)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("_extras", {})
        if name in extras:
            return _resolved(extras, name)
        raise AttributeError(f"BatchAssignResult has no attribute {name!r}; extras: {sorted(extras)}")

    def set_extra_property(self, key: str, value: Any) -> None:
        self._extras[key] = value

    def get_extra_property(self, key: str) -> Any:
        return _resolved(self._extras, key)

    def __getstate__(self) -> Dict[str, Any]:
        # pickling / torch.save computes deferred extras: what is stored is tensors only
        return dict(self.__dict__, _extras=self.extras)

    @property
    def extras(self) -> Dict[str, Any]:
        return {key: _resolved(self._extras, key) for key in list(self._extras)}

    @property
    def batch_size(self) -> int:
        return self.gt_inds.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def pos_mask(self) -> Tensor:
        return self.gt_inds > 0

    @property
    def fg_mask(self) -> Tensor:
        """Alias of ``pos_mask`` [B, A], the name ultralytics uses."""
        return self.gt_inds > 0

    @property
    def neg_mask(self) -> Tensor:
        return self.gt_inds == 0

    @property
    def ignore_mask(self) -> Tensor:
        return self.gt_inds == -1

    def __getitem__(self, i: int) -> AssignResult:
        res = AssignResult(
            int(self.num_gts[i]),
            self.gt_inds[i],
            None if self.max_overlaps is None else self.max_overlaps[i],
            None if self.labels is None else self.labels[i],
        )
        for key, value in self._extras.items():
            if isinstance(value, Deferred):   # image i's slice, still computed only when read
                res.set_extra_property(key, Deferred(lambda key=key: _resolved(self._extras, key)[i]))
            elif isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == self.batch_size:
                res.set_extra_property(key, value[i])
        return res

    def __iter__(self) -> Iterator[AssignResult]:
        return (self[i] for i in range(self.batch_size))

    def __repr__(self) -> str:
        return (f"BatchAssignResult(batch_size={self.batch_size}, num_priors={self.gt_inds.shape[1]}, "
                f"positives={int(self.pos_mask.sum())}, extras={sorted(self._extras)})")
