"""What an assigner did, in numbers: positives per GT, GTs left without a positive, by object size
and pyramid level.

The questions users ask of an assigner are "which GTs get no positive?" (tiny objects under TAL,
ultralytics #19514), "how many positives per GT, by size and level?" and "how soft are the targets?".
:func:`assignment_stats` answers them for any :class:`~detassign.structures.AssignResult` (one image)
or :class:`~detassign.structures.BatchAssignResult` (a padded batch), with no loop over GTs.

Worked example: two priors claim GT 1, none claims GT 2 (a 10 x 10 px box, COCO "small")::

    >>> import torch
    >>> from detassign import AssignResult

    >>> res = AssignResult(2, torch.tensor([1, 1, 0, -1]), torch.tensor([0.8, 0.6, 0.0, 0.0]))
    >>> s = assignment_stats(res, torch.tensor([[0, 0, 50, 50.], [0, 0, 10, 10.]]))
    >>> s.positives_per_gt.tolist(), s.zero_positive_gts, s.zero_positive_share, s.ignored_priors
    ([2, 0], 1, 0.5, 1)
    >>> s.by_size["small"]        # GT 2: 100 px^2 < 32^2
    {'gts': 1, 'zero_positive_gts': 1, 'mean_positives': 0.0}
    >>> round(s.overlap["mean"], 6)   # positives' max_overlaps: (0.8 + 0.6) / 2
    0.7

Statistics of several results (the batches of an epoch) combine with :func:`combine_stats`; the trainer keeps
a running tally of counts (:func:`add_to_tally`, :func:`tally_columns`) for its per-epoch results.csv columns.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ._validate import check_tensor
from .structures import AssignResult, BatchAssignResult

__all__ = ["AssignmentStats", "assignment_stats", "combine_stats", "SIZE_BUCKETS", "EPOCH_COLUMNS", "new_tally",
           "add_to_tally", "tally_columns"]

# COCO's object-size buckets, by box area in px^2: small < 32^2 <= medium < 96^2 <= large
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class AssignmentStats:
    """Summary of one or more assignment results (see :func:`assignment_stats`).

    ``positives_per_gt`` [G] and ``gt_areas`` [G] hold one entry per valid GT (image-major order);
    ``positive_overlaps`` [P] the assigner's ``max_overlaps`` at each positive (None if it has none);
    ``level_positives`` [L] positives per pyramid level (None without ``level_sizes``).
    """

    num_images: int
    num_priors: int
    positives_per_gt: Tensor
    gt_areas: Tensor
    num_positives: int
    ignored_priors: int
    positive_overlaps: Optional[Tensor] = None
    level_positives: Optional[Tensor] = None
    level_priors: Optional[Tensor] = None
    strides: Optional[List[int]] = None
    target_score_mass: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_gts(self) -> int:
        return int(self.positives_per_gt.numel())

    @property
    def zero_positive_gts(self) -> int:
        return int((self.positives_per_gt == 0).sum())

    @property
    def zero_positive_share(self) -> float:
        return self.zero_positive_gts / self.num_gts if self.num_gts else 0.0

    @property
    def mean_positives_per_gt(self) -> float:
        return float(self.positives_per_gt.double().mean()) if self.num_gts else 0.0

    @property
    def by_size(self) -> Dict[str, Dict[str, float]]:
        """COCO size bucket -> GTs, zero-positive GTs and mean positives per GT in that bucket."""
        out = {}
        for name, low, high in SIZE_BUCKETS:
            inside = (self.gt_areas >= low) & (self.gt_areas < high)
            counts = self.positives_per_gt[inside]
            out[name] = dict(gts=int(counts.numel()), zero_positive_gts=int((counts == 0).sum()),
                             mean_positives=float(counts.double().mean()) if counts.numel() else 0.0)
        return out

    @property
    def per_level(self) -> Optional[List[Dict[str, Any]]]:
        """Per pyramid level: its stride (if given), priors and positives; None without level sizes."""
        if self.level_positives is None:
            return None
        strides = self.strides or [None] * len(self.level_positives)
        return [dict(level=i, stride=strides[i], priors=int(self.level_priors[i]),
                     positives=int(self.level_positives[i])) for i in range(len(self.level_positives))]

    @property
    def overlap(self) -> Optional[Dict[str, float]]:
        """Mean and quantiles of the positives' ``max_overlaps`` (None if the result has none)."""
        if self.positive_overlaps is None:
            return None
        values = self.positive_overlaps.double()
        if values.numel() == 0:
            return dict(mean=float("nan"), **{f"q{int(q * 100)}": float("nan") for q in _QUANTILES})
        quantiles = torch.quantile(values, torch.tensor(_QUANTILES, dtype=values.dtype))
        return dict(mean=float(values.mean()),
                    **{f"q{int(q * 100)}": float(v) for q, v in zip(_QUANTILES, quantiles)})

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        counts = self.positives_per_gt
        return dict(
            num_images=self.num_images, num_priors=self.num_priors, num_gts=self.num_gts,
            num_positives=self.num_positives, ignored_priors=self.ignored_priors,
            zero_positive_gts=self.zero_positive_gts, zero_positive_share=self.zero_positive_share,
            mean_positives_per_gt=self.mean_positives_per_gt,
            max_positives_per_gt=int(counts.max()) if counts.numel() else 0,
            by_size=self.by_size, per_level=self.per_level, overlap=self.overlap,
            target_score_mass=self.target_score_mass, **self.extra,
        )

    def __str__(self) -> str:
        lines = [f"{self.num_images} image(s), {self.num_priors} priors, {self.num_gts} GTs, "
                 f"{self.num_positives} positives, {self.ignored_priors} ignored",
                 f"GTs with no positive: {self.zero_positive_gts} ({100 * self.zero_positive_share:.1f} %), "
                 f"mean positives per GT {self.mean_positives_per_gt:.2f}",
                 f"{'size':<8}{'GTs':>7}{'zero-pos':>10}{'mean pos':>10}"]
        for name, row in self.by_size.items():
            lines.append(f"{name:<8}{row['gts']:>7}{row['zero_positive_gts']:>10}{row['mean_positives']:>10.2f}")
        if self.per_level is not None:
            lines.append(f"{'level':<8}{'stride':>7}{'priors':>10}{'positives':>10}")
            for row in self.per_level:
                stride = "-" if row["stride"] is None else row["stride"]
                lines.append(f"{row['level']:<8}{stride:>7}{row['priors']:>10}{row['positives']:>10}")
        if self.overlap is not None:
            o = self.overlap
            lines.append(f"positives' overlap: mean {o['mean']:.3f}, median {o['q50']:.3f}, "
                         f"10-90 % [{o['q10']:.3f}, {o['q90']:.3f}]")
        if self.target_score_mass is not None:
            lines.append(f"soft-target mass: {self.target_score_mass:.3f}")
        return "\n".join(lines)


def _as_batch(result, gt_bboxes, gt_mask):
    """Views of a per-image or batched result as batched tensors: gt_inds [B, A], boxes [B, M, 4], mask [B, M]."""
    if isinstance(result, BatchAssignResult):
        gt_inds = result.gt_inds
        check_tensor("gt_bboxes", gt_bboxes, (gt_inds.shape[0], None, 4), floating=True)
        mask = (torch.ones(gt_bboxes.shape[:2], dtype=torch.bool, device=gt_bboxes.device) if gt_mask is None
                else check_tensor("gt_mask", gt_mask, tuple(gt_bboxes.shape[:2])).bool())
        return gt_inds, gt_bboxes, mask, result.max_overlaps, result.get_extra_property("target_scores")
    if isinstance(result, AssignResult):
        check_tensor("gt_bboxes", gt_bboxes, (None, 4), floating=True)
        mask = (torch.ones(len(gt_bboxes), dtype=torch.bool, device=gt_bboxes.device) if gt_mask is None
                else check_tensor("gt_mask", gt_mask, (len(gt_bboxes),)).bool())
        overlaps = None if result.max_overlaps is None else result.max_overlaps[None]
        scores = result.get_extra_property("target_scores")
        return result.gt_inds[None], gt_bboxes[None], mask[None], overlaps, None if scores is None else scores[None]
    raise TypeError(f"result must be an AssignResult or BatchAssignResult, got {type(result).__name__}")


def assignment_stats(result: Union[AssignResult, BatchAssignResult], gt_bboxes: Tensor,
                     gt_mask: Optional[Tensor] = None, level_sizes: Optional[Sequence[int]] = None,
                     strides: Optional[Sequence[int]] = None) -> AssignmentStats:
    """Statistics of one assignment.

    Args:
        result: an ``AssignResult`` (``gt_bboxes`` [M, 4], ``gt_mask`` [M]) or a ``BatchAssignResult``
            (``gt_bboxes`` [B, M, 4] padded, ``gt_mask`` [B, M]); ``gt_inds`` is 1-based into those GTs.
        gt_bboxes: GT boxes, xyxy px (their areas give the COCO size buckets).
        gt_mask: which padded GTs are real (default: all).
        level_sizes: priors per pyramid level, in prior order (e.g. ``[6400, 1600, 400]``), to count
            positives per level; ``strides`` labels those levels.

    Returns:
        :class:`AssignmentStats`; padded GTs and padded (masked) GTs are not counted.
    """
    gt_inds, boxes, mask, overlaps, target_scores = _as_batch(result, gt_bboxes, gt_mask)
    batch, num_priors = gt_inds.shape
    num_gts = boxes.shape[1]
    if gt_inds.numel() and int(gt_inds.max()) > num_gts:
        raise ValueError(f"result.gt_inds refers to GT {int(gt_inds.max())} but gt_bboxes has {num_gts} per image")
    positive = gt_inds > 0                                                          # [B, A]
    # count positives per (image, GT): scatter 1-based indices into [B, M + 1], column 0 collects the rest
    counts = torch.zeros(batch, num_gts + 1, dtype=torch.long, device=gt_inds.device)
    counts.scatter_add_(1, gt_inds.clamp(min=0), positive.long())
    per_gt = counts[:, 1:][mask]                                                    # [G]
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).double()
    areas = (wh[..., 0] * wh[..., 1])[mask]                                         # [G]

    level_positives = level_priors = None
    if level_sizes is not None:
        sizes = torch.as_tensor(list(level_sizes), dtype=torch.long)
        if int(sizes.sum()) != num_priors or (sizes < 0).any():
            raise ValueError(f"level_sizes must be non-negative and sum to the {num_priors} priors, "
                             f"got {list(level_sizes)}")
        if strides is not None and len(strides) != len(sizes):
            raise ValueError(f"strides must have one entry per level ({len(sizes)}), got {list(strides)}")
        level_of_prior = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(gt_inds.device)  # [A]
        level_positives = torch.zeros(len(sizes), dtype=torch.long, device=gt_inds.device)
        level_positives.scatter_add_(0, level_of_prior, positive.sum(0))
        level_positives, level_priors = level_positives.cpu(), sizes * batch

    positive_overlaps = None if overlaps is None else overlaps[positive].detach().float().cpu()
    mass = None if target_scores is None else float(target_scores.detach().double().sum())
    return AssignmentStats(
        num_images=batch, num_priors=batch * num_priors, positives_per_gt=per_gt.cpu(), gt_areas=areas.cpu(),
        num_positives=int(positive.sum()), ignored_priors=int((gt_inds == -1).sum()),
        positive_overlaps=positive_overlaps, level_positives=level_positives, level_priors=level_priors,
        strides=None if strides is None else [int(s) for s in strides], target_score_mass=mass)


def combine_stats(parts: Sequence[AssignmentStats]) -> AssignmentStats:
    """Statistics of several results (e.g. every batch of an epoch) as if computed at once."""
    if not parts:
        raise ValueError("combine_stats needs at least one AssignmentStats, got none")

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    def total(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else sum(values[1:], values[0])

    levels = [p.level_positives for p in parts]
    same_levels = all(v is not None and v.shape == levels[0].shape for v in levels)
    return dataclasses.replace(
        parts[0], num_images=sum(p.num_images for p in parts), num_priors=sum(p.num_priors for p in parts),
        positives_per_gt=torch.cat([p.positives_per_gt for p in parts]),
        gt_areas=torch.cat([p.gt_areas for p in parts]),
        num_positives=sum(p.num_positives for p in parts), ignored_priors=sum(p.ignored_priors for p in parts),
        positive_overlaps=cat("positive_overlaps"),
        level_positives=total("level_positives") if same_levels else None,
        level_priors=total("level_priors") if same_levels else None,
        target_score_mass=total("target_score_mass"), extra={})


# --------------------------------------------------------------------------- per-epoch tally (training)

# results.csv columns of the assignment statistics (written by the trainer every epoch)
EPOCH_COLUMNS = ("assign/zero_pos_share", "assign/zero_pos_share_small", "assign/pos_per_gt", "assign_time")


def new_tally() -> Dict[str, float]:
    """Running sums of an epoch's assignment statistics: plain numbers, so a checkpoint can hold them."""
    return {"gts": 0, "zero_positive_gts": 0, "small_gts": 0, "small_zero_positive_gts": 0, "positives": 0,
            "batches": 0, "seconds": 0.0}


def add_to_tally(tally: Optional[Dict[str, float]], stats: AssignmentStats, seconds: float = 0.0) -> Dict[str, float]:
    """``tally`` (None: a new one) plus one batch's :class:`AssignmentStats` and its assignment seconds.
    Summing counts gives the same shares as :func:`combine_stats` over the epoch's batches, at O(1) memory."""
    out = dict(new_tally() if tally is None else tally)
    small = stats.by_size["small"]
    out["gts"] += stats.num_gts
    out["zero_positive_gts"] += stats.zero_positive_gts
    out["small_gts"] += small["gts"]
    out["small_zero_positive_gts"] += small["zero_positive_gts"]
    out["positives"] += int(stats.positives_per_gt.sum())  # positives of valid GTs (what "per GT" divides)
    out["batches"] += 1
    out["seconds"] += float(seconds)
    return out


def tally_columns(tally: Optional[Dict[str, float]]) -> Dict[str, float]:
    """The :data:`EPOCH_COLUMNS` of a tally: zero-positive share of all and of COCO-small GTs, mean positives per
    GT, and the seconds spent in the assigner (NaN where there was nothing to count)."""
    t = new_tally() if tally is None else tally
    nan = float("nan")
    return {
        "assign/zero_pos_share": t["zero_positive_gts"] / t["gts"] if t["gts"] else nan,
        "assign/zero_pos_share_small": t["small_zero_positive_gts"] / t["small_gts"] if t["small_gts"] else nan,
        "assign/pos_per_gt": t["positives"] / t["gts"] if t["gts"] else nan,
        "assign_time": float(t["seconds"]) if t["batches"] else nan,
    }
