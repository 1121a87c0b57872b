"""One-to-one set-prediction matching (DETR family), mmdetection 3.3.0 ``HungarianAssigner``.

Algorithm (per image):
    1. cost = sum of the weighted match costs          # [Q, M]  e.g. 2*focal + 5*L1 + 2*(-GIoU)
    2. (rows, cols) = scipy linear_sum_assignment(cost)  # min(Q, M) pairs, on CPU
    3. gt_inds[rows] = cols + 1, every other query 0 (background); labels from the matched GT.

Each GT is matched to at most one query and each query to at most one GT; min(Q, M) pairs are
made, so with more GTs than queries (Q < M) every query is positive and M - Q GTs stay unmatched
(as in mmdet). M == 0: every query negative. Q == 0: empty result.

Choices:
    * ``max_overlaps`` is None, as in mmdet (a cost is not an overlap). The summed cost of each
      query's pair is available as the extra ``match_cost`` ([Q]; +inf for unmatched queries).
    * Costs are computed in float32 even for float16 / bfloat16 inputs (see ``match_costs``).
    * A NaN / Inf cost on a valid (query, GT) pair raises ``ValueError`` naming the image, the
      cost term and the prediction input that holds the NaN ("BBoxL1Cost produced 3 NaN values for
      image 2; ... non-finite inputs: pred_bboxes (1 NaN value)"), where scipy would only say "cost
      matrix is infeasible". This check always runs (scipy would fail anyway).
    * Inputs are checked before any cost is built (:func:`.match_costs.check_cost_inputs`): shapes,
      devices, inverted GT boxes, labels in [0, C) when a cost indexes the scores by class, and Inf
      scores (a focal cost of an Inf logit is finite, so nothing else would notice).

Batched path (:meth:`HungarianAssigner.assign_batch`, the batched interface): the costs of the whole
padded batch are built by one vectorised call per cost term ([B, Q, M]), copied to the host in one
transfer (none on the CPU: scipy reads the tensor's memory), and scipy solves each image's valid
[Q, M_i] block. On the CPU the terms are summed in place as they are built (:func:`total_cost`; same
bits as mmdet's stack-then-sum), and the box costs add themselves a few images at a time into that sum
(:meth:`.BaseMatchCost.add_to`), so few [B, Q, M] temporaries exist: each fresh one costs more in page
faults than the arithmetic done on it. ``pred_bboxes`` there are decoded xyxy
pixels, as every assigner's; a DETR head's normalised (cx, cy, w, h) become those as mmdet's DETR head
converts them: ``cxcywh_to_xyxy(boxes) * (w, h, w, h)``. Queries have no priors: ``priors`` is unused
(a :class:`detassign.Priors` with an ``image_size`` gives the default ``img_shapes``).

Dense scenes (B * Q * M above ``COST_BLOCK`` elements, per image or batched): the costs are built a
block of GTs at a time straight into scipy's float64 host matrix, so no [B, Q, M] cost term lives
whole; the box and class costs are the same bits either way (mask costs go through matrix products,
which may round differently per block).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .. import _validate as V
from ..registry import build_match_cost
from ..structures import AssignResult, BatchAssignResult, Instances, Priors, labels_from_gt_inds
from ._batch import check_padded_gts
from ._blocks import row_blocks
from .base import BaseAssigner
from .match_costs import (BaseMatchCost, BatchOfOne, check_cost_inputs, check_not_inf, img_shape_of,
                          img_shapes_tensor)

__all__ = ["HungarianAssigner", "build_match_costs", "sum_costs", "total_cost", "solve_batch", "matched_costs",
           "raise_non_finite", "image_name", "pred_inputs", "WithLabels"]

CostConfig = Union[BaseMatchCost, Mapping]


def build_match_costs(match_costs: Union[CostConfig, Sequence[CostConfig]]) -> List[BaseMatchCost]:
    """One cost, a config dict, or a list of either -> list of cost objects (dicts built by the registry)."""
    if isinstance(match_costs, (Mapping, BaseMatchCost)):
        match_costs = [match_costs]
    if not isinstance(match_costs, (list, tuple)) or len(match_costs) == 0:
        raise ValueError(f"match_costs must be a non-empty list of cost configs / objects, got {match_costs!r}")
    built = []
    for cost in match_costs:
        if isinstance(cost, Mapping):
            cost = build_match_cost(cost)
        if not callable(getattr(cost, "batched", None)):
            raise TypeError(f"each match cost must be a config dict or a match cost object with .batched(), "
                            f"got {type(cost).__name__}")
        built.append(cost)
    return built


def sum_costs(match_costs: Sequence[BaseMatchCost], pred, gt, img_shapes=None) -> Tuple[Tensor, List[Tensor]]:
    """Weighted cost terms [B, Q, M] each and their sum [B, Q, M] (summed as mmdet does: stack, sum)."""
    terms = [cost.batched(pred, gt, img_shapes) for cost in match_costs]
    return _stack_sum(terms), terms


def _stack_sum(terms: Sequence[Tensor]) -> Tensor:
    dtype = terms[0].dtype
    for term in terms[1:]:
        dtype = torch.promote_types(dtype, term.dtype)
    return torch.stack([t.to(dtype) for t in terms]).sum(dim=0)


# On the CPU, adding the terms one after another gives the bits of torch.stack(terms).sum(0) up to 16 terms
# (beyond, its cascade sum regroups them; checked with the AVX-512, AVX2 and default kernels). On other devices
# the reduction's order is not ours to rely on.
_SEQUENTIAL_SUM_TERMS = 16


def total_cost(match_costs: Sequence[BaseMatchCost], pred, gt, img_shapes=None) -> Tensor:
    """The sum [B, Q, M] of :func:`sum_costs`, same bits, without keeping the terms.

    On the CPU each term is added into the first as soon as it exists (the box costs a few images at a
    time, :meth:`.BaseMatchCost.add_to`) and no [T, B, Q, M] stack is built: there a fresh temporary of
    [B, Q, M] costs more in page faults than the arithmetic done on it.
    """
    first = match_costs[0].batched(pred, gt, img_shapes)
    if first.device.type != "cpu" or len(match_costs) > _SEQUENTIAL_SUM_TERMS:
        return _stack_sum([first] + [cost.batched(pred, gt, img_shapes) for cost in match_costs[1:]])
    # BaseMatchCost.batched returns a new tensor; another implementation may return one it keeps
    total = first if getattr(type(match_costs[0]), "batched", None) is BaseMatchCost.batched else first.clone()
    for k, cost in enumerate(match_costs[1:]):
        dtype = total.dtype
        # a lower-precision term is promoted before it is added, as stack(t.to(dtype)) does
        total = cost.add_to(total, pred, gt, img_shapes) if callable(getattr(cost, "add_to", None)) else \
            BaseMatchCost.add_to(cost, total, pred, gt, img_shapes)
        if total.dtype != dtype and k > 0:   # terms already summed in the lower precision (mixed dtypes: rare)
            return sum_costs(match_costs, pred, gt, img_shapes)[0]
    return total


def _describe_bad(values: Tensor) -> str:
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    parts = [f"{n} {kind} value{'s' if n != 1 else ''}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n]
    return " and ".join(parts)


def raise_non_finite(cost_np: np.ndarray, valid: np.ndarray, terms: Sequence[Tensor], names: Sequence[str],
                      image_names: Sequence[str], inputs: Optional[Mapping[str, Tensor]] = None) -> None:
    """Name the first image and cost term with NaN / Inf on a valid (query, GT) pair, and the prediction
    inputs ([B, Q, ...] each, by argument name) that hold NaN / Inf in that image. Error path only."""
    for b in range(cost_np.shape[0]):
        cols = np.flatnonzero(valid[b])
        if np.isfinite(cost_np[b][:, cols]).all():
            continue
        cols_t = torch.as_tensor(cols, dtype=torch.long)
        culprits = []
        for name, term in zip(names, terms):
            block = term[b].detach().cpu()[:, cols_t]
            if not torch.isfinite(block).all():
                culprits.append(f"{name} produced {_describe_bad(block)}")
        if not culprits:
            culprits.append(f"the sum of the cost terms ({', '.join(names)}) produced "
                            f"{_describe_bad(torch.from_numpy(cost_np[b][:, cols]))}")
        bad_inputs = [f"{name} ({_describe_bad(x[b].detach().float().cpu())})" for name, x in (inputs or {}).items()
                      if isinstance(x, Tensor) and x.is_floating_point() and x.shape[0] > b
                      and not bool(torch.isfinite(x[b]).all())]
        hint = (f"non-finite inputs: {', '.join(bad_inputs)}" if bad_inputs else
                "check the predictions for NaN / Inf, e.g. NaN logits under AMP")
        raise ValueError(f"{'; '.join(culprits)} for {image_names[b]}; the Hungarian matching needs finite "
                         f"costs ({hint})")


def solve_batch(cost: Tensor, gt_mask: Tensor, terms: Sequence[Tensor] = (), names: Sequence[str] = (),
                image_names: Optional[Sequence[str]] = None, inputs: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """Minimum-cost one-to-one matching per image.

    cost [B, Q, M], gt_mask [B, M] bool -> gt_inds [B, Q] long on cost's device (1-based index into
    the padded M, 0 unmatched). Only the valid columns of each image go to scipy. ``terms`` /
    ``names`` / ``image_names`` only serve the error message for non-finite costs.
    """
    cost_np, valid = host_costs(cost, gt_mask)
    if not finite_on_valid(cost_np, valid):
        if image_names is None:
            image_names = [f"image {b}" for b in range(cost.shape[0])]
        raise_non_finite(cost_np, valid, terms, names, image_names, inputs)
    return torch.from_numpy(solve_host(cost_np, valid)).to(cost.device)


def host_costs(cost: Tensor, gt_mask: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """cost [B, Q, M], gt_mask [B, M] -> (cost [B, Q, M], valid [B, M] bool) as host arrays: views of CPU
    tensors, else one transfer (the GT mask travels as an extra row of the costs)."""
    if cost.device.type == "cpu" and gt_mask.device.type == "cpu":
        return cost.detach().numpy(), gt_mask.numpy().astype(bool, copy=False)
    Q = cost.shape[1]
    packed = torch.cat([cost.detach(), gt_mask[:, None, :].to(cost.device, cost.dtype)], dim=1).cpu().numpy()
    return packed[:, :Q], packed[:, Q] > 0.5


def finite_on_valid(cost_np: np.ndarray, valid: np.ndarray) -> bool:
    """Whether every cost [B, Q, M] on a valid GT column (valid [B, M]) is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(cost_np.sum()):   # finite only without NaN / Inf anywhere (an overflow falls through)
            return True
    return bool(np.isfinite(cost_np[np.broadcast_to(valid[:, None, :], cost_np.shape)]).all())


def solve_host(cost_np: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """scipy's matching of each image's valid columns: cost [B, Q, M], valid [B, M] -> gt_inds [B, Q] int64
    (1-based into the padded M, 0 unmatched). Costs must be finite on valid columns."""
    B, Q, M = cost_np.shape
    gt_inds = np.zeros((B, Q), dtype=np.int64)
    if Q == 0:
        return gt_inds
    for b in range(B):
        cols = np.flatnonzero(valid[b])
        if len(cols) == 0:
            continue
        block = cost_np[b] if len(cols) == M else cost_np[b][:, cols]
        if Q > len(cols):
            # scipy solves a tall matrix as its transpose, copied after the float64 conversion; handed the
            # transposed view it converts and solves that same matrix, one copy fewer, same matching
            gts, queries = linear_sum_assignment(block.T)
        else:
            queries, gts = linear_sum_assignment(block)
        gt_inds[b, queries] = cols[gts] + 1
    return gt_inds


# Elements of one [B, Q, g] block of a cost term. Larger than the other assigners' blocks: class costs
# are recomputed over [B, Q, C] for every block.
COST_BLOCK = 2 ** 22


class _GTColumns:
    """View of padded GT instances restricted to the GTs ``cols`` (axis 1 of every [B, M, ...] field)."""

    def __init__(self, instances, cols: slice) -> None:
        self._instances, self._cols = instances, cols

    def __getattr__(self, name: str):
        value = getattr(object.__getattribute__(self, "_instances"), name, None)
        return value[:, object.__getattribute__(self, "_cols")] if isinstance(value, Tensor) and value.dim() > 1 \
            else value


def solve_costs(match_costs: Sequence[BaseMatchCost], pred, gt, gt_mask: Tensor, img_shapes, names: Sequence[str],
                image_names: Optional[Sequence[str]] = None,
                inputs: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """Costs, matching and matched costs of a padded batch: pred / gt instances with a leading B, gt_mask
    [B, M] -> (gt_inds [B, Q] as :func:`solve_batch`, match_cost [B, Q] as :func:`matched_costs`).

    Up to ``COST_BLOCK`` elements this is ``solve_batch(total_cost(...))`` (the terms are only built
    again to name a non-finite one). Beyond, the summed costs of each block of GTs go to one float64
    host matrix [B, Q, M] (what scipy solves in; the float32 values convert exactly), and a non-finite
    cost is reported from the whole matrices (error path).
    """
    B, M = gt_mask.shape
    Q = next(iter(inputs.values())).shape[1] if inputs else 1
    blocks = row_blocks(M, B * Q, COST_BLOCK)
    if len(blocks) == 1:
        cost = total_cost(match_costs, pred, gt, img_shapes)
        cost_np, valid = host_costs(cost, gt_mask)
        if not finite_on_valid(cost_np, valid):   # the terms, for the message (error path)
            _, terms = sum_costs(match_costs, pred, gt, img_shapes)
            raise_non_finite(cost_np, valid, terms, names,
                             image_names or [f"image {b}" for b in range(B)], inputs)
        gt_inds = torch.from_numpy(solve_host(cost_np, valid)).to(cost.device)
        return gt_inds, matched_costs(cost, gt_inds)
    valid = gt_mask.cpu().numpy()
    host, dtype, device = None, None, None
    for blk in blocks:
        cost = total_cost(match_costs, pred, _GTColumns(gt, blk), img_shapes)                 # [B, Q, g]
        part = cost.detach().cpu().numpy()
        if not finite_on_valid(part, valid[:, blk]):
            cost, terms = sum_costs(match_costs, pred, gt, img_shapes)
            solve_batch(cost, gt_mask.to(cost.device), terms, names, image_names, inputs)   # raises
        if host is None:
            host, dtype, device = np.empty((B, Q, M), dtype=np.float64), cost.dtype, cost.device
        host[:, :, blk] = part
        del cost, part
    gt_inds = solve_host(host, valid)
    picked = np.take_along_axis(host, np.clip(gt_inds - 1, 0, None)[..., None], axis=2)[..., 0]
    match_cost = torch.from_numpy(np.where(gt_inds > 0, picked, np.inf)).to(device=device, dtype=dtype)
    return torch.from_numpy(gt_inds).to(device), match_cost


def matched_costs(cost: Tensor, gt_inds: Tensor) -> Tensor:
    """cost [B, Q, M], gt_inds [B, Q] 1-based -> [B, Q] cost of each query's pair, +inf if unmatched."""
    if cost.shape[-1] == 0:
        return cost.new_full(gt_inds.shape, float("inf"))
    picked = torch.gather(cost, 2, (gt_inds - 1).clamp(min=0)[..., None])[..., 0]
    return torch.where(gt_inds > 0, picked, torch.full_like(picked, float("inf")))


def pred_inputs(pred_instances, batched: bool) -> dict:
    """The prediction fields the costs read, by argument name, with a leading batch dimension."""
    fields = {}
    for field in ("scores", "bboxes", "masks"):
        value = getattr(pred_instances, field, None)
        if isinstance(value, Tensor):
            fields[f"pred_instances.{field}"] = value if batched else value[None]
    return fields


def image_name(img_meta) -> str:
    if hasattr(img_meta, "get"):
        for key in ("img_path", "img_id", "filename"):
            if img_meta.get(key) is not None:
                return f"image {img_meta.get(key)!r}"
    return "this image"


class HungarianAssigner(BaseAssigner):
    """One-to-one matching of Q predictions (queries) to M GTs by minimum total cost.

    Args:
        match_costs: a cost config dict (``dict(type="FocalLossCost", weight=2.0)``), a cost object,
            or a non-empty list of them; dicts are built with :func:`detassign.build_match_cost`.

    Example (Deformable DETR / DINO costs)::

        HungarianAssigner([dict(type="FocalLossCost", weight=2.0),
                           dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                           dict(type="IoUCost", iou_mode="giou", weight=2.0)])
    """

    def __init__(self, match_costs: Union[CostConfig, Sequence[CostConfig]]) -> None:
        self.match_costs = build_match_costs(match_costs)

    @property
    def cost_names(self) -> List[str]:
        return [type(cost).__name__ for cost in self.match_costs]

    def _reads_class_labels(self) -> bool:
        """Whether a cost indexes the scores by GT label (labels must then lie in [0, C))."""
        return any(getattr(cost, "reads_class_labels", False) for cost in self.match_costs)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, img_meta: Optional[Mapping] = None, **kwargs) -> AssignResult:
        """Match one image's predictions to its GTs (mmdet signature; extra kwargs are ignored).

        pred_instances: the fields the costs read, e.g. ``scores`` [Q, C] logits, ``bboxes`` [Q, 4]
            xyxy pixels, ``masks`` [Q, ...]. gt_instances: ``labels`` [M] and e.g. ``bboxes`` [M, 4]
            xyxy pixels, ``masks`` [M, ...]. img_meta: ``img_shape`` (h, w), needed by BBoxL1Cost.
        Returns AssignResult: gt_inds [Q] (1-based, 0 background), labels [Q] (-1 background),
        max_overlaps None, extra ``match_cost`` [Q] (+inf for background).
        """
        V.get_field(gt_instances, "labels", "gt_instances")
        # shapes, devices, label range and boxes of every field the costs read, before any indexing
        checked = check_cost_inputs(self.match_costs, pred_instances, gt_instances)
        num_preds = checked.num_preds if checked.num_preds is not None else len(pred_instances)
        pred_instances, gt_instances = checked.pred, checked.gt
        gt_labels = gt_instances.labels
        num_gts = gt_labels.shape[0]
        device = gt_labels.device
        if num_gts == 0 or num_preds == 0:
            fill = 0 if num_gts == 0 else -1  # mmdet: background without GTs
            result = AssignResult(num_gts, torch.full((num_preds,), fill, dtype=torch.long, device=device), None,
                                  torch.full((num_preds,), -1, dtype=torch.long, device=device))
            result.set_extra_property("match_cost", torch.full((num_preds,), float("inf"), device=device))
            return result
        shape = img_shape_of(img_meta)
        gt_mask = torch.ones(1, num_gts, dtype=torch.bool, device=device)
        gt_inds, match_cost = solve_costs(self.match_costs, BatchOfOne(pred_instances), BatchOfOne(gt_instances),
                                          gt_mask, None if shape is None else [shape], self.cost_names,
                                          [image_name(img_meta)], pred_inputs(pred_instances, batched=False))
        gt_inds = gt_inds.to(device)
        result = AssignResult(num_gts, gt_inds[0], None, labels_from_gt_inds(gt_inds, gt_labels[None])[0])
        result.set_extra_property("match_cost", match_cost[0])
        return result

    @torch.no_grad()
    def assign_instances_batch(self, pred_instances, gt_instances, gt_mask: Optional[Tensor] = None,
                               img_shapes=None) -> BatchAssignResult:
        """Batched matching from instances whose fields carry a leading batch dimension.

        pred_instances: e.g. ``scores`` [B, Q, C], ``bboxes`` [B, Q, 4] xyxy px, ``masks`` [B, Q, ...];
        gt_instances: ``labels`` [B, M] and e.g. ``bboxes`` [B, M, 4], ``masks`` [B, M, ...], padded;
        gt_mask [B, M] bool (None: all valid); img_shapes [B, 2] (h, w) for BBoxL1Cost.
        Returns BatchAssignResult(num_gts [B], gt_inds [B, Q], None, labels [B, Q], match_cost [B, Q]).
        """
        gt_labels = V.tensor_input("gt_instances.labels", V.get_field(gt_instances, "labels", "gt_instances"),
                                   ("B", "M"))
        B, M = gt_labels.shape
        if gt_mask is None:
            gt_mask = torch.ones(B, M, dtype=torch.bool, device=gt_labels.device)
        gt_mask = V.tensor_input("gt_mask", gt_mask, ("B", "M"))   # B, M agreement: check_cost_inputs
        checked = check_cost_inputs(self.match_costs, pred_instances, gt_instances, batched=True, gt_mask=gt_mask)
        return self._match_batch(checked.pred, checked.gt, checked.gt_mask, img_shapes,
                                 pred_inputs(checked.pred, batched=True))

    def _match_batch(self, pred_instances, gt_instances, gt_mask: Tensor, img_shapes,
                     inputs: Mapping[str, Tensor]) -> BatchAssignResult:
        """Checked batched instances -> result; ``inputs`` name the predictions in a NaN / Inf error."""
        gt_labels = gt_instances.labels
        # padded rows may hold any label; point them at class 0 so gathers stay in range
        safe_labels = torch.where(gt_mask, gt_labels.long(), torch.zeros_like(gt_labels, dtype=torch.long))
        gt = WithLabels(gt_instances, safe_labels)
        gt_inds, match_cost = solve_costs(self.match_costs, pred_instances, gt, gt_mask, img_shapes, self.cost_names,
                                          inputs=inputs)
        labels = labels_from_gt_inds(gt_inds, safe_labels.to(gt_inds.device))
        return BatchAssignResult(gt_mask.sum(dim=1), gt_inds, None, labels, match_cost=match_cost)

    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Optional[Tensor], priors, gt_labels: Tensor,
                     gt_bboxes: Optional[Tensor], gt_mask: Optional[Tensor] = None, *, img_shapes=None,
                     pred_masks: Optional[Tensor] = None, gt_masks: Optional[Tensor] = None) -> BatchAssignResult:
        """The batched interface: one-to-one matching of the Q queries of each image to its GTs.

        pred_scores [B, Q, C] logits; pred_bboxes [B, Q, 4] decoded xyxy px (None when no cost reads
        boxes); priors unused (a :class:`detassign.Priors`' ``image_size`` is the default ``img_shapes``);
        gt_labels [B, M]; gt_bboxes [B, M, 4] xyxy px, padded (None when no cost reads boxes); gt_mask
        [B, M] (None: all valid); img_shapes [B, 2] (h, w) px, or one (h, w), for BBoxL1Cost's
        normalisation; pred_masks [B, Q, ...] logits and gt_masks [B, M, ...] in {0, 1} (same trailing
        size) for the mask costs. Returns BatchAssignResult(num_gts [B], gt_inds [B, Q], None, labels [B, Q],
        match_cost [B, Q]), equal to ``assign`` on each image's valid GTs.
        """
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "Q", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "Q", 4), floating=True, allow_none=True)
        pred_masks, gt_masks = (_masks(name, x, axis) for name, x, axis in (("pred_masks", pred_masks, "Q"),
                                                                             ("gt_masks", gt_masks, "M")))
        V.check_agree("Q", [(name, x, 1) for name, x in (("pred_scores", pred_scores), ("pred_bboxes", pred_bboxes),
                                                         ("pred_masks", pred_masks)) if x is not None])
        classes = V.num_classes_of(pred_scores, 1) if self._reads_class_labels() else None
        if gt_bboxes is not None:
            gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, classes)
        else:
            gt_labels, gt_mask = _padded_labels(gt_labels, gt_mask, classes, gt_masks)
        gt_fields = [("gt_labels", gt_labels), ("gt_bboxes", gt_bboxes), ("gt_masks", gt_masks)]
        V.check_agree("M", [(name, x, 1) for name, x in gt_fields if x is not None])
        V.check_agree("B", [(name, x, 0) for name, x in (("pred_scores", pred_scores), ("pred_bboxes", pred_bboxes),
                                                         ("pred_masks", pred_masks)) + tuple(gt_fields) if x is not None])
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, pred_masks=pred_masks,
                            gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_masks=gt_masks)
        check_not_inf("pred_scores", pred_scores)
        B = pred_scores.shape[0]
        if img_shapes is None and isinstance(priors, Priors) and priors.image_size is not None:
            img_shapes = priors.image_size
        shapes = None if img_shapes is None else img_shapes_tensor(img_shapes, B, pred_scores.device)
        fields = dict(scores=pred_scores, bboxes=pred_bboxes, masks=pred_masks)
        pred = Instances(**{k: v for k, v in fields.items() if v is not None})
        gt = Instances(**{k: v for k, v in dict(labels=gt_labels, bboxes=gt_bboxes, masks=gt_masks).items()
                          if v is not None})
        checked = check_cost_inputs(self.match_costs, pred, gt, batched=True, gt_mask=gt_mask)
        return self._match_batch(checked.pred, checked.gt, gt_mask, shapes,
                                 {f"pred_{k}": v for k, v in fields.items() if v is not None})


def _masks(name: str, masks: Optional[Tensor], axis: str) -> Optional[Tensor]:
    """Masks [B, Q or M, ...] (pixels or sampled points), or None."""
    masks = V.as_tensor(name, masks, allow_none=True)
    if masks is not None and masks.dim() < 3:
        raise ValueError(f"{name} must have shape [B, {axis}, ...] (pixels or sampled points), got "
                         f"{tuple(masks.shape)}")
    return masks


def _padded_labels(gt_labels, gt_mask, num_classes: Optional[int], gt_masks: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Padded labels [B, M] and mask [B, M] (None: all valid) without boxes (mask matching) -> (long, bool).
    ``gt_masks`` [B, M, ...] (or None) takes part in the agreement on B and M, so the odd one out is named."""
    gt_labels = V.tensor_input("gt_labels", gt_labels, ("B", "M"))
    if gt_mask is None:
        gt_mask = torch.ones(gt_labels.shape, dtype=torch.bool, device=gt_labels.device)
    gt_mask = V.tensor_input("gt_mask", gt_mask, ("B", "M"))
    for symbol, dim in (("B", 0), ("M", 1)):
        V.check_agree(symbol, [(name, x, dim) for name, x in (("gt_labels", gt_labels), ("gt_mask", gt_mask),
                                                              ("gt_masks", gt_masks)) if x is not None])
    B, M = gt_labels.shape
    V.check_same_device(gt_labels=gt_labels, gt_mask=gt_mask)
    V.check_binary("gt_mask", gt_mask)
    gt_mask = gt_mask.bool()
    return V.labels_input("gt_labels", gt_labels, (B, M), mask=gt_mask, num_classes=num_classes), gt_mask


class WithLabels:
    """An instances view whose ``labels`` field is replaced (padding-safe labels)."""

    def __init__(self, instances, labels: Tensor) -> None:
        self._instances = instances
        self._labels = labels

    def __getattr__(self, name: str):
        if name == "labels":
            return object.__getattribute__(self, "_labels")
        return getattr(object.__getattribute__(self, "_instances"), name, None)
