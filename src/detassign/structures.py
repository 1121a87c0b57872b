"""Result types and a light instance container.

Coding of ``gt_inds`` (all assigners, per image and batched):
    gt_inds[i] > 0   prior i is positive, assigned to GT ``gt_inds[i] - 1``
    gt_inds[i] == 0  negative (background)
    gt_inds[i] == -1 ignored (excluded from the loss)
``labels`` is the assigned GT's class for positives and -1 elsewhere (RegionAssigner's
``mmdet_labels=True`` option reproduces mmdet's 0 for non-positives).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor

__all__ = ["AssignResult", "BatchAssignResult", "Instances"]


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
        return self._extra_properties.get(key, None)

    @property
    def extras(self) -> Dict[str, Any]:
        return dict(self._extra_properties)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("_extra_properties", {})
        if name in extras:
            return extras[name]
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
        out.update(self._extra_properties)
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
            return extras[name]
        raise AttributeError(f"BatchAssignResult has no attribute {name!r}; extras: {sorted(extras)}")

    def set_extra_property(self, key: str, value: Any) -> None:
        self._extras[key] = value

    def get_extra_property(self, key: str) -> Any:
        return self._extras.get(key)

    @property
    def extras(self) -> Dict[str, Any]:
        return dict(self._extras)

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
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == self.batch_size:
                res.set_extra_property(key, value[i])
        return res

    def __iter__(self) -> Iterator[AssignResult]:
        return (self[i] for i in range(self.batch_size))

    def __repr__(self) -> str:
        return (f"BatchAssignResult(batch_size={self.batch_size}, num_priors={self.gt_inds.shape[1]}, "
                f"positives={int(self.pos_mask.sum())}, extras={sorted(self._extras)})")
