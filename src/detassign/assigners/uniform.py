"""UniformAssigner: uniform matching of YOLOF (Chen et al., CVPR 2021), mmdet 3.3.0 semantics.

Every GT gets the same number of positives, whatever its size. For one image (the steps below are
the functions of this module):

1. ``l1_costs``: L1 distance in (cx, cy, w, h) between every GT and (a) every predicted box
   (``pred_instances.decoder_priors``) and (b) every prior (``pred_instances.priors``);
2. ``uniform_candidates``: per GT the ``match_times`` nearest predictions and the ``match_times``
   nearest priors, ``2 * match_times * M`` (prior, GT) pairs in mmdet's order
   (round ``t`` of the predictions for all GTs, then round ``t`` of the priors, for t = 0, 1, ...);
3. ``ignore_negatives``: a prediction whose best IoU with any GT is ``> neg_ignore_thr`` starts as
   ignored (-1) instead of negative (0);
4. each candidate pair becomes positive (GT index) if ``IoU(prior, GT) >= pos_ignore_thr``, else
   ignored (-1). A prior in several pairs takes the *last* pair's value (``last_pair_wins``, the
   sequential-write order of mmdet's ``gt_inds[indexes] = ...``); GT order therefore matters when
   two GTs share a candidate.

Extra properties (mmdet's, one row per candidate pair in the order of step 2):
``pos_idx`` [2TM] bool (IoU(prior, GT) >= pos_ignore_thr), ``pos_predicted_boxes`` [2TM, 4]
(the candidate's predicted box), ``target_boxes`` [2TM, 4] (the pair's GT box).

``max_overlaps`` (option ``max_overlaps_mode``):

* ``"per_gt"`` (default, mmdet's quirk): a tensor of length **M**, each GT's best IoU over all
  priors; None when there is no GT or no prior.
* ``"per_prior"``: length A; a positive holds IoU(prior, its GT) (the value tested against
  ``pos_ignore_thr``), any other prior its largest IoU with any GT; zeros when there is no GT.

Deviations from mmdet: when fewer than ``match_times`` priors exist, all of them are candidates
(mmdet's ``topk`` raises); ``pred_instances.bboxes`` is read when ``decoder_priors`` is absent;
``gt_instances.labels`` may be absent (``labels`` is None); the top-k runs on the inputs' device
(mmdet copies the costs to the CPU, because CUDA ``topk`` may break distance ties differently);
half-precision inputs are computed in float32; ``gt_instances_ignore`` is accepted and unused, as in
mmdet; ``iou_calculator`` is read as every assigner reads it
(:func:`~detassign.assigners.base.parse_iou_calculator`, no rotated form) and gives both IoUs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import compute_dtype, xyxy_to_cxcywh
from ..structures import AssignResult, Instances, Priors, labels_from_gt_inds
from .base import BaseAssigner, parse_iou_calculator

__all__ = ["UniformAssigner", "MAX_OVERLAPS_MODES", "l1_costs", "uniform_candidates", "ignore_negatives",
           "last_pair_wins"]

MAX_OVERLAPS_MODES = ("per_gt", "per_prior")


# ----------------------------------------------------------------------------- algorithm steps
def l1_costs(boxes: Tensor, gt_bboxes: Tensor) -> Tensor:
    """Step 1. boxes [A, 4], gt_bboxes [M, 4] xyxy -> [A, M] L1 distance in (cx, cy, w, h)."""
    return torch.cdist(xyxy_to_cxcywh(boxes), xyxy_to_cxcywh(gt_bboxes), p=1)


def uniform_candidates(pred_cost: Tensor, prior_cost: Tensor, match_times: int) -> Tuple[Tensor, Tensor]:
    """Step 2. pred_cost, prior_cost [A, M] -> (prior index [2TM], GT index [2TM]), T = min(match_times, A).

    Flattened from ``[T, 2M]`` (predictions' round t for every GT, then the priors' round t).
    """
    k = min(match_times, pred_cost.shape[0])
    nearest_pred = pred_cost.topk(k, dim=0, largest=False).indices     # [T, M]
    nearest_prior = prior_cost.topk(k, dim=0, largest=False).indices   # [T, M]
    prior_index = torch.cat((nearest_pred, nearest_prior), dim=1).reshape(-1)
    num_gts = pred_cost.shape[1]
    gt_index = torch.arange(num_gts, device=pred_cost.device).repeat(2 * k)
    return prior_index, gt_index


def ignore_negatives(pred_ious: Tensor, neg_ignore_thr: float) -> Tensor:
    """Step 3. pred_ious [A, M] -> initial gt_inds [A]: -1 where the best IoU > neg_ignore_thr, else 0."""
    return torch.where(pred_ious.amax(dim=1) > neg_ignore_thr, -1, 0)


def last_pair_wins(gt_inds: Tensor, prior_index: Tensor, values: Tensor) -> Tensor:
    """Step 4. Write ``values`` [P] at ``prior_index`` [P] into gt_inds [A]; on repeats the last pair wins.

    Deterministic on every device (a plain indexed write with repeats is not on CUDA).
    """
    order = torch.arange(prior_index.shape[0], device=prior_index.device)
    last = torch.full_like(gt_inds, -1).scatter_reduce(0, prior_index, order, "amax")   # [A]
    hit = last >= 0
    return torch.where(hit, values[last.clamp(min=0)], gt_inds)


# ----------------------------------------------------------------------------- assigner
class UniformAssigner(BaseAssigner):
    """Uniform matching (YOLOF); see the module docstring for the steps, extras and quirks.

    Args:
        pos_ignore_thr: a candidate whose prior has IoU < this with its GT is ignored, not positive
            (default 0.15, YOLOF's config; mmdet has no default).
        neg_ignore_thr: a prediction whose best IoU with any GT is > this is ignored, not negative
            (default 0.7, YOLOF's config).
        match_times: positives per GT from the predictions and again from the priors (4 in YOLOF).
        iou_calculator: mmdet's ``dict(type="BboxOverlaps2D")`` (the default) or a callable.
        max_overlaps_mode: ``"per_gt"`` (mmdet, length M) or ``"per_prior"`` (length A).
    """

    def __init__(self, pos_ignore_thr: float = 0.15, neg_ignore_thr: float = 0.7, match_times: int = 4,
                 iou_calculator: Optional[dict] = None, max_overlaps_mode: str = "per_gt") -> None:
        self.match_times = V.check_number("match_times", match_times, low=1, integer=True)
        self.max_overlaps_mode = V.check_choice("max_overlaps_mode", max_overlaps_mode, MAX_OVERLAPS_MODES)
        self.pos_ignore_thr = float(V.check_number("pos_ignore_thr", pos_ignore_thr, finite=False))
        self.neg_ignore_thr = float(V.check_number("neg_ignore_thr", neg_ignore_thr, finite=False))
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__, rotated=False)

    def _read_inputs(self, pred_instances, gt_instances):
        priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A", 4), floating=True, empty_rows=True)
        pred = V.get_field(pred_instances, "decoder_priors", "pred_instances", required=False)
        name = "pred_instances.decoder_priors"
        if pred is None:
            pred = V.get_field(pred_instances, "bboxes", "pred_instances", required=False)
            name = "pred_instances.bboxes"
        if pred is None:
            raise ValueError("pred_instances.decoder_priors (the decoded predicted boxes [A, 4]) is required by "
                             "UniformAssigner but is missing")
        pred = V.tensor_input(name, pred, ("A", 4), floating=True, empty_rows=True)
        V.check_agree("A", [("pred_instances.priors", priors, 0), (name, pred, 0)])
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                   ("M", 4), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances", required=False)
        V.check_same_device(priors=priors, decoder_priors=pred, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), allow_none=True,
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        V.check_boxes("pred_instances.priors", priors)
        V.check_boxes(name, pred)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        return priors, pred, gt_bboxes, gt_labels

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None) -> AssignResult:
        """Assign the A priors of one image.

        pred_instances.priors [A, 4] xyxy anchors, pred_instances.decoder_priors [A, 4] xyxy predicted
        boxes; gt_instances.bboxes [M, 4], .labels [M] (optional). gt_instances_ignore is unused.
        """
        priors, pred, gt_bboxes, gt_labels = self._read_inputs(pred_instances, gt_instances)
        dtype = compute_dtype(priors, pred, gt_bboxes)
        priors, pred, gt_bboxes = priors.to(dtype), pred.to(dtype), gt_bboxes.to(dtype)
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            return self._empty(num_gts, num_priors, pred, gt_labels)

        prior_index, gt_index = uniform_candidates(l1_costs(pred, gt_bboxes), l1_costs(priors, gt_bboxes),
                                                   self.match_times)                 # [2TM], [2TM]
        pred_ious = self.iou_calculator.pairwise(pred, gt_bboxes)                    # [A, M]
        prior_ious = self.iou_calculator.pairwise(priors, gt_bboxes)                 # [A, M]
        pair_ok = prior_ious[prior_index, gt_index] >= self.pos_ignore_thr           # [2TM]
        values = torch.where(pair_ok, gt_index + 1, -1)
        gt_inds = last_pair_wins(ignore_negatives(pred_ious, self.neg_ignore_thr), prior_index, values)
        labels = None if gt_labels is None else labels_from_gt_inds(gt_inds, gt_labels)

        if self.max_overlaps_mode == "per_gt":
            max_overlaps = prior_ious.amax(dim=0)                                    # [M]
        else:
            own = prior_ious.gather(1, (gt_inds - 1).clamp(min=0)[:, None])[:, 0]
            max_overlaps = torch.where(gt_inds > 0, own, prior_ious.amax(dim=1))     # [A]
        result = AssignResult(num_gts, gt_inds, max_overlaps, labels)
        result.set_extra_property("pos_idx", pair_ok)
        result.set_extra_property("pos_predicted_boxes", pred[prior_index])
        result.set_extra_property("target_boxes", gt_bboxes[gt_index])
        return result

    def image_inputs(self, priors: Priors, pred_scores: Optional[Tensor], pred_bboxes: Optional[Tensor],
                     gt_labels: Tensor, gt_bboxes: Tensor) -> Tuple[tuple, dict]:
        """Batched interface, one image: the anchor boxes and the predicted boxes (``decoder_priors``)."""
        boxes = priors.require("boxes", type(self).__name__)
        pred = V.tensor_input("pred_bboxes", pred_bboxes, ("A", 4), floating=True)
        return (Instances(priors=boxes, decoder_priors=pred), Instances(bboxes=gt_bboxes, labels=gt_labels)), {}

    def _empty(self, num_gts: int, num_priors: int, pred: Tensor, gt_labels: Optional[Tensor]) -> AssignResult:
        """No GT or no prior: every prior negative; mmdet's empty extras."""
        gt_inds = torch.zeros(num_priors, dtype=torch.long, device=pred.device)
        labels = None if gt_labels is None else torch.full_like(gt_inds, -1)
        max_overlaps = pred.new_zeros(num_priors) if self.max_overlaps_mode == "per_prior" else None
        result = AssignResult(num_gts, gt_inds, max_overlaps, labels)
        result.set_extra_property("pos_idx", torch.zeros(0, dtype=torch.bool, device=pred.device))
        result.set_extra_property("pos_predicted_boxes", pred.new_zeros((0, 4)))
        result.set_extra_property("target_boxes", pred.new_zeros((0, 4)))
        return result
