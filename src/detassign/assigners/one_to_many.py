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
with ``repeat=1, groups=1`` mmdet's ``HungarianAssigner``. :func:`match_blocks` is also the matching
of :class:`detassign.integrations.detr.HungarianMatcher` (DETR's call), so groups, repeats and the
solver have one implementation.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import cxcywh_to_xyxy, to_compute_dtype
from ..structures import AssignResult, BatchAssignResult, Instances, labels_from_gt_inds
from ._batch import check_padded_gts
from .base import BaseAssigner
from .hungarian import (WithLabels, build_match_costs, matched_costs, pred_inputs, raise_non_finite,
                        sum_costs)
from .lsa_solvers import SOLVERS, resolve_solver, solve_batched
from .match_costs import BaseMatchCost, BatchOfOne, check_cost_inputs, img_shape_of, img_shapes_tensor

__all__ = ["OneToManyHungarianAssigner", "match_blocks", "repeat_gt_columns", "LAYOUTS"]

LAYOUTS = ("tile", "interleave")
CostConfig = Union[BaseMatchCost, Mapping]


def _check_options(repeat: int, groups: int, layout: str, solver: str) -> None:
    V.check_number("repeat", repeat, low=1, integer=True)
    V.check_number("groups", groups, low=1, integer=True)
    V.check_choice("layout", layout, LAYOUTS)
    V.check_choice("solver", solver, SOLVERS)


def repeat_gt_columns(cost: Tensor, gt_mask: Tensor, repeat: int,
                      layout: str = "tile") -> Tuple[Tensor, Tensor, Tensor]:
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
    In every block ``min(rows, valid columns)`` pairs are made. With the scipy solver
    (:func:`~detassign.assigners.lsa_solvers.resolve_solver`) the blocks are built on the host: one
    transfer of ``cost`` there and one of ``gt_inds`` back, however many blocks.
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
    device = cost.device
    solver = resolve_solver(solver, device)
    if solver == "scipy" and device.type != "cpu":
        cost, mask = cost.detach().cpu(), mask.cpu()        # the solver reads the host copy anyway
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
    return gt_inds.reshape(N, Q).reshape(*lead, Q).to(device)


class OneToManyHungarianAssigner(BaseAssigner):
    """Hungarian matching with repeated GTs, query groups and several decoder layers per call.

    Args:
        match_costs: as :class:`HungarianAssigner` (config dicts or cost objects), e.g. DINO's
            ``[FocalLossCost(2), BBoxL1Cost(5, box_format="xywh"), IoUCost("giou", 2)]``.
        repeat: copies of each GT (H-DETR's one-to-many branch uses 6); 1 = one-to-one.
        groups: query groups matched independently (Group-DETR 11, RF-DETR 13); 1 = none.
        layout: ``"tile"`` or ``"interleave"`` placement of the GT copies (see the module docstring).
        solver: ``"auto"``, ``"scipy"`` or ``"torch_linear_assignment"`` (:mod:`.lsa_solvers`).

    Inputs are checked as :class:`HungarianAssigner`'s (:func:`.match_costs.check_cost_inputs`: shapes,
    devices, labels, GT boxes, Inf scores; per image an empty tensor of any dtype means no GT), and a
    NaN / Inf cost on a valid pair raises ``ValueError`` naming the image (and layer), the cost term and
    the input. ``max_overlaps`` is None; the extra ``match_cost`` holds each matched query's cost (+inf
    otherwise).
    """

    def __init__(self, match_costs: Union[CostConfig, Sequence[CostConfig]], repeat: int = 1, groups: int = 1,
                 layout: str = "tile", solver: str = "auto") -> None:
        _check_options(repeat, groups, layout, solver)
        self.match_costs = build_match_costs(match_costs)
        self.repeat, self.groups, self.layout, self.solver = repeat, groups, layout, solver

    @property
    def cost_names(self) -> List[str]:
        return [type(cost).__name__ for cost in self.match_costs]

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, img_meta: Optional[Mapping] = None, **kwargs) -> AssignResult:
        """One image (mmdet signature): ``pred_instances.scores`` [Q, C] logits, ``.bboxes`` [Q, 4] xyxy px;
        ``gt_instances.labels`` [M], ``.bboxes`` [M, 4] xyxy px; ``img_meta["img_shape"]`` (h, w)."""
        V.get_field(gt_instances, "labels", "gt_instances")
        checked = check_cost_inputs(self.match_costs, pred_instances, gt_instances)
        shape = img_shape_of(img_meta)
        inputs = pred_inputs(checked.pred, batched=False)
        gt_mask = torch.ones(1, checked.gt.labels.shape[0], dtype=torch.bool, device=checked.gt.labels.device)
        return self._match(BatchOfOne(checked.pred), BatchOfOne(checked.gt), gt_mask,
                           None if shape is None else [shape], inputs, 1)[0][0]

    @torch.no_grad()
    def assign_instances_batch(self, pred_instances, gt_instances, gt_mask: Optional[Tensor] = None,
                               img_shapes=None):
        """Predictions with leading dims ``[..., B, Q, ...]`` (e.g. ``scores`` [L, B, Q, C], ``bboxes``
        [L, B, Q, 4] xyxy px), GTs ``labels`` [B, M], ``bboxes`` [B, M, 4] xyxy px padded, gt_mask [B, M].
        Returns one BatchAssignResult for [B, Q] predictions, a list of them (one per layer) for
        [L, B, Q] predictions. Layers are folded into the batch (errors about B then count L * B images)."""
        scores = V.as_tensor("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"))
        bboxes = getattr(pred_instances, "bboxes", None)
        if bboxes is not None:
            _check_layered("pred_instances.scores", scores, "pred_instances.bboxes",
                           V.as_tensor("pred_instances.bboxes", bboxes))
        L = scores.shape[0] if scores.dim() == 4 else 1
        pred, gt, mask = pred_instances, gt_instances, gt_mask
        if scores.dim() == 4:
            # one vectorised cost call for L x B images: the layers folded into the batch, the GTs repeated
            pred = Instances(**{k: V.as_tensor(f"pred_instances.{k}", getattr(pred_instances, k)).flatten(0, 1)
                                for k in ("scores", "bboxes", "masks") if getattr(pred_instances, k, None) is not None})
            gt = Instances(**{k: _repeat(V.as_tensor(f"gt_instances.{k}", getattr(gt_instances, k)), L)
                              for k in ("labels", "bboxes", "masks") if getattr(gt_instances, k, None) is not None})
            mask = None if gt_mask is None else _repeat(V.as_tensor("gt_mask", gt_mask), L)
        labels = V.tensor_input("gt_instances.labels", V.get_field(gt, "labels", "gt_instances"), ("B", "M"))
        if mask is None:
            mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
        mask = V.tensor_input("gt_mask", mask, ("B", "M"))
        checked = check_cost_inputs(self.match_costs, pred, gt, batched=True, gt_mask=mask)
        B = labels.shape[0] // L
        shapes = None if img_shapes is None else img_shapes_tensor(img_shapes, B, labels.device).repeat(L, 1)
        results = self._match(checked.pred, checked.gt, checked.gt_mask, shapes,
                              pred_inputs(checked.pred, batched=True), L)
        return results if scores.dim() == 4 else results[0]

    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor,
                     gt_mask: Optional[Tensor] = None, img_shapes=None):
        """DETR-style batched call: pred_scores [B, Q, C] or [L, B, Q, C] logits, pred_bboxes [..., 4]
        normalised (cx, cy, w, h) in [0, 1]; gt_labels [B, M], gt_bboxes [B, M, 4] xyxy px, gt_mask [B, M];
        img_shapes [B, 2] (h, w) or one (h, w). Predictions are scaled to xyxy px as mmdet's DETR head
        does. Returns a BatchAssignResult, or a list of L for [L, B, Q, C] input (one solver call)."""
        pred_scores, pred_bboxes = V.as_tensor("pred_scores", pred_scores), V.as_tensor("pred_bboxes", pred_bboxes)
        _check_layered("pred_scores", pred_scores, "pred_bboxes", pred_bboxes)
        lead = ("L", "B") if pred_scores.dim() == 4 else ("B",)
        pred_scores = V.tensor_input("pred_scores", pred_scores, lead + ("Q", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, lead + ("Q", 4), floating=True)
        n = len(lead)
        V.check_agree("Q", [("pred_scores", pred_scores, n), ("pred_bboxes", pred_bboxes, n)])
        if n == 2:
            V.check_agree("L", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0)])
        reads = any(getattr(cost, "reads_class_labels", False) for cost in self.match_costs)
        gt_labels, gt_bboxes, gt_mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask,
                                                         V.num_classes_of(pred_scores, n) if reads else None)
        V.check_agree("B", [("pred_scores", pred_scores, n - 1), ("pred_bboxes", pred_bboxes, n - 1),
                            ("gt_bboxes", gt_bboxes, 0)])
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, gt_bboxes=gt_bboxes)
        V.check_not_inf("pred_scores", pred_scores)
        B = gt_bboxes.shape[0]
        L = pred_scores.shape[0] if n == 2 else 1
        shapes = img_shapes_tensor(img_shapes, B, pred_bboxes.device)
        h, w = shapes.unbind(-1)
        factor = torch.stack((w, h, w, h), dim=-1)[:, None, :]                                # [B, 1, 4]
        wide = to_compute_dtype(pred_bboxes)
        boxes = cxcywh_to_xyxy(wide) * factor.to(wide.dtype)                                 # [..., B, Q, 4]
        pred = Instances(scores=pred_scores.reshape(L * B, *pred_scores.shape[n:]), bboxes=boxes.reshape(L * B, -1, 4))
        gt = Instances(labels=_repeat(gt_labels, L), bboxes=_repeat(gt_bboxes, L))
        results = self._match(pred, gt, _repeat(gt_mask, L), shapes.repeat(L, 1),
                              {"pred_scores": pred_scores.reshape(L * B, *pred_scores.shape[n:]),
                               "pred_bboxes": pred_bboxes.reshape(L * B, *pred_bboxes.shape[n:])}, L)
        return results if n == 2 else results[0]

    def _match(self, pred, gt, gt_mask: Tensor, img_shapes, inputs: Mapping[str, Tensor], L: int
               ) -> List[BatchAssignResult]:
        """Checked instances over L x B images (layer-major), gt_mask [L * B, M] -> one result per layer."""
        safe = torch.where(gt_mask, gt.labels.long(), 0)                       # padded rows: any in-range class
        cost, terms = sum_costs(self.match_costs, pred, WithLabels(gt, safe), img_shapes)   # [L * B, Q, M]
        LB, Q, M = cost.shape
        gt_mask = gt_mask.to(cost.device)
        if not bool((torch.isfinite(cost) | ~gt_mask[:, None, :]).all()):        # one reduction
            names = [f"image {b % (LB // L)}" + (f" of layer {b // (LB // L)}" if L > 1 else "") for b in range(LB)]
            raise_non_finite(cost.cpu().numpy(), gt_mask.cpu().numpy(), terms, self.cost_names, names, inputs)
        gt_inds = match_blocks(cost.view(L, LB // L, Q, M), gt_mask.view(L, LB // L, M), repeat=self.repeat,
                               groups=self.groups, layout=self.layout, solver=self.solver)      # [L, B, Q]
        safe = safe.to(cost.device).view(L, LB // L, M)
        return [BatchAssignResult(gt_mask[:LB // L].sum(1), gt_inds[l], None, labels_from_gt_inds(gt_inds[l], safe[l]),
                                  match_cost=matched_costs(cost.view(L, LB // L, Q, M)[l], gt_inds[l]))
                for l in range(L)]


def _check_layered(scores_name: str, scores: Tensor, boxes_name: str, boxes: Tensor) -> None:
    """Scores [B, Q, C] with boxes [B, Q, 4], or both with a leading L (decoder layers)."""
    if scores.dim() not in (3, 4) or boxes.dim() != scores.dim():
        raise ValueError(f"{scores_name} and {boxes_name} must be [B, Q, C] and [B, Q, 4], or both with a leading "
                         f"L (decoder layers), got {tuple(scores.shape)} and {tuple(boxes.shape)}")


def _repeat(x: Tensor, times: int) -> Tensor:
    """[B, ...] -> [times * B, ...] (a copy per decoder layer; no copy for one)."""
    return x if times == 1 else x.repeat(times, *([1] * (x.dim() - 1)))
