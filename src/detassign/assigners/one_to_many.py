"""One-to-many and repeated Hungarian matching on one batched solver (DETR family).

Shape symbols: L decoder layers (or any extra leading dims), B images, Q queries, M GTs (padded),
k copies of each GT, G query groups.

Modern DETR training matches many times per step; every variant here is a set of independent
rectangular assignment problems, which are built as cost blocks and handed to
:func:`detassign.assigners.lsa_solvers.solve_batched` in **one** call:

* **repeated GTs** (H-DETR, Align-DETR, Co-DETR's one-to-many branch; ``repeat=k``): each GT's column
  appears k times, so each GT gets up to k distinct queries and each query at most one GT.
  ``layout="tile"`` puts copy c of GT j at column ``c * M + j`` (H-DETR repeats the target list:
  ``boxes.repeat(k, 1)``); ``"interleave"`` at ``j * k + c`` (mmdet's ``TopkHungarianAssigner``).
  Ties between copies are broken by column order, so the layout can change which of equal-cost
  queries a GT gets, never the total cost.
* **query groups** (Group-DETR, RF-DETR; ``groups=G``): the Q queries form G contiguous groups of Q / G,
  each matched one-to-one to all GTs independently, so every GT gets one query per group.
* **several decoder layers in one call** (DEIM matches every layer, the pre-outputs and the encoder,
  about 8 times per step): costs ``[L, B, Q, M]`` with a GT mask ``[B, M]`` (broadcast over L); the
  L x B x G blocks are solved together.

:func:`match_blocks` does this on precomputed costs; :class:`OneToManyHungarianAssigner` builds the
costs from predictions with the match costs of :mod:`.match_costs` (as :class:`HungarianAssigner`)
and returns ``BatchAssignResult``\\ s. Results equal a scipy loop over the same blocks (tested), and
with ``repeat=1, groups=1`` mmdet's ``HungarianAssigner``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import cxcywh_to_xyxy
from ..structures import AssignResult, BatchAssignResult, Instances
from .base import BaseAssigner
from .hungarian import _labels, build_match_costs, matched_costs, sum_costs
from .lsa_solvers import SOLVERS, solve_batched
from .match_costs import BaseMatchCost, img_shapes_tensor

__all__ = ["OneToManyHungarianAssigner", "match_blocks", "repeat_gt_columns", "LAYOUTS"]

LAYOUTS = ("tile", "interleave")
CostConfig = Union[BaseMatchCost, Mapping]


def _check_options(repeat: int, groups: int, layout: str, solver: str) -> None:
    for name, value in (("repeat", repeat), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def repeat_gt_columns(cost: Tensor, gt_mask: Tensor, repeat: int, layout: str = "tile") -> Tuple[Tensor, Tensor, Tensor]:
    """k copies of every GT column. cost [..., Q, M], gt_mask [..., M] ->
    (cost [..., Q, k * M], mask [..., k * M], source [k * M] the original GT index of each column)."""
    M = cost.shape[-1]
    source = torch.arange(M, device=cost.device)
    if layout == "tile":
        return cost.tile(repeat), gt_mask.tile(repeat), source.tile(repeat)
    return cost.repeat_interleave(repeat, -1), gt_mask.repeat_interleave(repeat, -1), source.repeat_interleave(repeat)


@torch.no_grad()
def match_blocks(cost: Tensor, gt_mask: Optional[Tensor] = None, *, repeat: int = 1, groups: int = 1,
                 layout: str = "tile", solver: str = "auto") -> Tensor:
    """Minimum-cost matching of every block, in one solver call.

    cost [..., Q, M] (e.g. [L, B, Q, M]; lower is better), gt_mask [..., M] bool broadcastable to the
    cost's leading dims + (M,) (None: every GT valid; padded GTs may sit anywhere) -> gt_inds [..., Q]
    long: 1-based index of the query's GT in M, 0 unmatched.

    ``repeat=k``: each GT matched to up to k queries (its columns repeated, ``layout`` above);
    ``groups=G``: Q / G contiguous queries per group, each group matched one-to-one on its own.
    In every block ``min(rows, valid columns)`` pairs are made.
    """
    _check_options(repeat, groups, layout, solver)
    if not isinstance(cost, Tensor) or cost.dim() < 2:
        raise ValueError(f"cost must be a tensor [..., Q, M], got "
                         f"{tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__}")
    *lead, Q, M = cost.shape
    if Q % groups:
        raise ValueError(f"groups={groups} must divide the number of queries Q={Q}")
    if gt_mask is None:
        gt_mask = torch.ones(M, dtype=torch.bool, device=cost.device)
    if gt_mask.shape[-1:] != (M,):
        raise ValueError(f"gt_mask must end in M={M} (the cost's last dim), got shape {tuple(gt_mask.shape)}")
    try:
        mask = gt_mask.to(cost.device).bool().expand(*lead, M)
    except RuntimeError:
        raise ValueError(f"gt_mask of shape {tuple(gt_mask.shape)} does not broadcast to the cost's leading dims "
                         f"{tuple(lead)} + (M,)") from None
    N, Qg = math.prod(lead), Q // groups
    flat = cost.detach().reshape(N, groups, Qg, M).reshape(N * groups, Qg, M)
    flat_mask = mask.reshape(N, M).repeat_interleave(groups, 0)                             # [N * G, M]
    cols, col_mask, source = repeat_gt_columns(flat, flat_mask, repeat, layout)              # [N * G, Qg, kM]
    # valid columns first (a stable sort keeps their order), so each block is its top-left corner
    order = torch.sort((~col_mask).to(torch.uint8), dim=1, stable=True).indices              # [N * G, kM]
    packed = cols.gather(2, order[:, None, :].expand_as(cols))
    sizes = col_mask.sum(1)
    matches = solve_batched(packed, sizes, solver=solver)
    gt_inds = torch.zeros(N * groups, Qg, dtype=torch.long, device=cost.device)
    if matches:
        block = torch.cat([torch.full_like(r, i) for i, (r, _) in enumerate(matches)])
        rows = torch.cat([r for r, _ in matches])
        picked = torch.cat([c for _, c in matches])
        gt = source.index_select(0, order[block, picked]) if picked.numel() else picked
        gt_inds[block, rows] = gt + 1
    return gt_inds.reshape(N, Q).reshape(*lead, Q)


class OneToManyHungarianAssigner(BaseAssigner):
    """Hungarian matching with repeated GTs, query groups and several decoder layers per call.

    Args:
        match_costs: as :class:`HungarianAssigner` (config dicts or cost objects), e.g. DINO's
            ``[FocalLossCost(2), BBoxL1Cost(5, box_format="xywh"), IoUCost("giou", 2)]``.
        repeat: copies of each GT (H-DETR's one-to-many branch uses 6); 1 = one-to-one.
        groups: query groups matched independently (Group-DETR 11, RF-DETR 13); 1 = none.
        layout: ``"tile"`` or ``"interleave"`` placement of the GT copies (see the module docstring).
        solver: ``"auto"``, ``"scipy"`` or ``"torch_linear_assignment"`` (:mod:`.lsa_solvers`).

    ``max_overlaps`` is None; the extra ``match_cost`` holds each matched query's cost (+inf otherwise).
    """

    def __init__(self, match_costs: Union[CostConfig, Sequence[CostConfig]], repeat: int = 1, groups: int = 1,
                 layout: str = "tile", solver: str = "auto") -> None:
        _check_options(repeat, groups, layout, solver)
        self.match_costs = build_match_costs(match_costs)
        self.repeat, self.groups, self.layout, self.solver = repeat, groups, layout, solver

    def _match(self, cost: Tensor, gt_mask: Tensor) -> Tensor:
        return match_blocks(cost, gt_mask, repeat=self.repeat, groups=self.groups, layout=self.layout,
                            solver=self.solver)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, img_meta: Optional[Mapping] = None, **kwargs) -> AssignResult:
        """One image (mmdet signature): ``pred_instances.scores`` [Q, C] logits, ``.bboxes`` [Q, 4] xyxy px;
        ``gt_instances.labels`` [M], ``.bboxes`` [M, 4] xyxy px; ``img_meta["img_shape"]`` (h, w)."""
        scores = V.get_field(pred_instances, "scores", "pred_instances")
        bboxes = V.get_field(pred_instances, "bboxes", "pred_instances")
        labels = V.get_field(gt_instances, "labels", "gt_instances")
        gt_bboxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        V.check_tensor("pred_instances.scores", scores, ("Q", "C"), floating=True)
        V.check_tensor("pred_instances.bboxes", bboxes, (scores.shape[0], 4), floating=True)
        V.check_tensor("gt_instances.labels", labels, ("M",), floating=False)
        V.check_tensor("gt_instances.bboxes", gt_bboxes, (labels.shape[0], 4), floating=True)
        shape = None if img_meta is None else img_meta.get("img_shape")
        result = self.assign_instances_batch(Instances(scores=scores[None], bboxes=bboxes[None]),
                                             Instances(labels=labels[None], bboxes=gt_bboxes[None]), None,
                                             None if shape is None else [tuple(shape)[:2]])
        return result[0]

    @torch.no_grad()
    def assign_instances_batch(self, pred_instances, gt_instances, gt_mask: Optional[Tensor] = None,
                               img_shapes=None):
        """Predictions with leading dims ``[..., B, Q, ...]`` (e.g. ``scores`` [L, B, Q, C], ``bboxes``
        [L, B, Q, 4] xyxy px), GTs ``labels`` [B, M], ``bboxes`` [B, M, 4] xyxy px padded, gt_mask [B, M].
        Returns one BatchAssignResult for [B, Q] predictions, a list of them (one per layer) for
        [L, B, Q] predictions."""
        scores = V.get_field(pred_instances, "scores", "pred_instances")
        bboxes = V.get_field(pred_instances, "bboxes", "pred_instances")
        labels = V.get_field(gt_instances, "labels", "gt_instances")
        gt_bboxes = V.get_field(gt_instances, "bboxes", "gt_instances")
        V.check_tensor("gt_instances.labels", labels, ("B", "M"), floating=False)
        B, M = labels.shape
        V.check_tensor("gt_instances.bboxes", gt_bboxes, (B, M, 4), floating=True)
        if scores.dim() not in (3, 4) or scores.shape[-3] != B:
            raise ValueError(f"pred_instances.scores must be [B, Q, C] or [L, B, Q, C] with B={B}, got "
                             f"{tuple(scores.shape)}")
        layered = scores.dim() == 4
        L = scores.shape[0] if layered else 1
        Q = scores.shape[-2]
        if bboxes.shape != scores.shape[:-1] + (4,):
            raise ValueError(f"pred_instances.bboxes must be {tuple(scores.shape[:-1]) + (4,)}, got {tuple(bboxes.shape)}")
        if gt_mask is None:
            gt_mask = torch.ones(B, M, dtype=torch.bool, device=labels.device)
        V.check_tensor("gt_mask", gt_mask, (B, M))
        gt_mask = gt_mask.bool()
        safe = torch.where(gt_mask, labels.long(), torch.zeros_like(labels, dtype=torch.long))
        shapes = None if img_shapes is None else img_shapes_tensor(img_shapes, B, bboxes.device).repeat(L, 1)
        # layers are folded into the batch: one vectorised cost call for L x B images
        pred = Instances(scores=scores.reshape(L * B, Q, -1), bboxes=bboxes.reshape(L * B, Q, 4))
        gt = Instances(labels=safe.repeat(L, 1), bboxes=gt_bboxes.repeat(L, 1, 1))
        cost, _ = sum_costs(self.match_costs, pred, gt, shapes)
        cost = cost.view(L, B, Q, M)
        gt_inds = self._match(cost, gt_mask.to(cost.device))                                # [L, B, Q]
        num_gts = gt_mask.sum(1)
        results = [BatchAssignResult(num_gts, gt_inds[l], None, _labels(gt_inds[l], safe.to(cost.device)),
                                     match_cost=matched_costs(cost[l], gt_inds[l])) for l in range(L)]
        return results if layered else results[0]

    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
                     gt_mask: Optional[Tensor] = None, img_shapes=None):
        """DETR-style batched call: pred_scores [B, Q, C] or [L, B, Q, C] logits, pred_bboxes [..., 4]
        normalised (cx, cy, w, h) in [0, 1]; gt_labels [B, M], gt_bboxes [B, M, 4] xyxy px, gt_mask [B, M];
        img_shapes [B, 2] (h, w) or one (h, w). Predictions are scaled to xyxy px as mmdet's DETR head
        does. Returns a BatchAssignResult, or a list of L for [L, B, Q, C] input (one solver call)."""
        V.check_tensor("gt_bboxes", gt_bboxes, ("B", "M", 4), floating=True)
        B = gt_bboxes.shape[0]
        if pred_scores.dim() not in (3, 4) or pred_bboxes.shape != pred_scores.shape[:-1] + (4,):
            raise ValueError(f"pred_scores must be [B, Q, C] or [L, B, Q, C] and pred_bboxes the same with 4 "
                             f"columns, got {tuple(pred_scores.shape)} and {tuple(pred_bboxes.shape)}")
        shapes = img_shapes_tensor(img_shapes, B, pred_bboxes.device)
        h, w = shapes.unbind(-1)
        factor = torch.stack((w, h, w, h), dim=-1)[:, None, :]                                # [B, 1, 4]
        boxes = cxcywh_to_xyxy(pred_bboxes.float() if pred_bboxes.dtype != torch.float64 else pred_bboxes)
        boxes = boxes * factor.to(boxes.dtype)
        return self.assign_instances_batch(Instances(scores=pred_scores, bboxes=boxes),
                                           Instances(labels=gt_labels, bboxes=gt_bboxes), gt_mask, shapes)
