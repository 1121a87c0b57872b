"""DETR-family Hungarian matching with DETR's call: ``indices = matcher(outputs, targets)``.

Shape symbols: B batch, Q queries, C classes, M GTs per image (padded to the batch's largest).

Algorithm (one call):
    1. pad the targets to [B, M] labels / [B, M, 4] boxes with a mask (per-image blocks: never the
       cross-image [B * Q, sum M] matrix every DETR codebase builds);
    2. costs on the predictions' device in float32, one vectorised call per term, each [B, Q, M]:
       class (``-softmax(logits)[label]`` for DETR, the focal cost of Deformable-DETR / DINO / RT-DETR),
       L1 of the normalised (cx, cy, w, h) boxes, -GIoU of their corners;
       C = cost_bbox * L1 + cost_class * class + cost_giou * (-GIoU)   (DETR's order of the sum);
    3. a minimum-cost one-to-one matching per image and query group, all blocks in one call of
       :func:`detassign.assigners.one_to_many.match_blocks` (the project's one implementation of groups,
       GT repeats and the pluggable solver, :mod:`detassign.assigners.lsa_solvers`): with scipy, C goes
       to the host once and everything after runs there; with the GPU solver (``torch-linear-assignment``)
       the blocks stay on the device and only the matched GT per query comes back.

Returns, per image, ``(query_idx, gt_idx)`` int64 CPU tensors sorted by query (scipy's order), as
DETR's ``HungarianMatcher``. Options on the same call:

* ``num_groups=G`` (Group-DETR / RF-DETR): the Q queries form G consecutive groups of Q / G, each
  matched one-to-one to the GTs on its own; indices are global query indices.
* ``repeat_gts=k`` (H-DETR / Align-DETR one-to-many): each GT column is repeated k times, so every GT
  is matched up to k times (to distinct queries); ``gt_idx`` names the original GT.

A NaN / Inf cost on a valid (query, GT) pair raises ``ValueError`` naming the image and the cost term
(scipy would only say "cost matrix is infeasible"; AMP NaN logits are the usual cause). Targets'
``labels`` / ``boxes`` (also HF transformers' ``class_labels``) and outputs' ``pred_logits`` (also
``logits``) / ``pred_boxes`` are read.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as V
from ..assigners.lsa_solvers import SOLVERS, resolve_solver, torch_linear_assignment_available
from ..assigners.one_to_many import match_blocks
from ..boxes import cxcywh_to_xyxy, pairwise_giou

__all__ = ["HungarianMatcher", "MATCHER_PRESETS", "softmax_class_cost", "focal_class_cost", "l1_box_cost",
           "giou_box_cost", "pad_targets"]

_FOCAL = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal=True, alpha=0.25, gamma=2.0)
MATCHER_PRESETS: Dict[str, Dict[str, Any]] = {
    "detr": dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, focal=False),
    "deformable_detr": dict(_FOCAL),
    "dino": dict(_FOCAL),
    "rt_detr": dict(_FOCAL),
}
_FOCAL_EPS = 1e-8  # inside the logs, as Deformable-DETR's matcher
Indices = List[Tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------- cost terms (pure)
def softmax_class_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """DETR: -softmax(logits)[GT label]. logits [B, Q, C], labels [B, M] long -> [B, Q, M] in [-1, 0]."""
    prob = logits.softmax(-1)
    return -prob.gather(2, labels[:, None, :].expand(-1, logits.shape[1], -1))


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Deformable-DETR: focal loss of the GT class as positive minus as negative, eps 1e-8 in the logs.

    logits [B, Q, C], labels [B, M] long -> [B, Q, M]. Element-wise, so the GT classes' logits are
    gathered first (M columns instead of C).
    """
    p = logits.gather(2, labels[:, None, :].expand(-1, logits.shape[1], -1)).sigmoid()   # [B, Q, M]
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + _FOCAL_EPS).log()
    pos = alpha * (1 - p).pow(gamma) * -(p + _FOCAL_EPS).log()
    return pos - neg


def l1_box_cost(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """L1 distance of normalised (cx, cy, w, h) boxes. [B, Q, 4], [B, M, 4] -> [B, Q, M]."""
    return torch.cdist(pred_boxes, gt_boxes, p=1)


def giou_box_cost(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """-GIoU of the boxes' corners. [B, Q, 4], [B, M, 4] (cx, cy, w, h) -> [B, Q, M] in [-1, 1].

    DETR divides without a floor; the floor here is float32's smallest normal number, so every
    non-degenerate pair gets DETR's value and a zero-area pair a finite one instead of NaN.
    """
    tiny = torch.finfo(torch.float32).tiny
    return -pairwise_giou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(gt_boxes), eps=tiny)


# ----------------------------------------------------------------------------- inputs
def _field(mapping: Mapping, names: Sequence[str], owner: str):
    for name in names:
        if name in mapping:
            return mapping[name]
    raise KeyError(f"{owner} needs the key {names[0]!r}" + (f" (or {names[1]!r})" if len(names) > 1 else "")
                   + f", got keys {sorted(mapping)}")


def pad_targets(targets: Sequence[Mapping], batch: int, num_classes: int,
                device: torch.device) -> Tuple[Tensor, Tensor, List[int]]:
    """DETR targets -> (labels [B, M] long, boxes [B, M, 4] float32, sizes per image) on ``device``.

    Each target: ``labels`` [M_i] int in [0, num_classes), ``boxes`` [M_i, 4] normalised (cx, cy, w, h)
    with w, h >= 0. Padding rows are label 0 and box (0.5, 0.5, 1, 1) so padded costs stay finite.
    """
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        raise ValueError(f"targets must be a list of {batch} dicts (one per image of pred_logits), got "
                         f"{type(targets).__name__} of length {len(targets) if hasattr(targets, '__len__') else '?'}")
    labels_list, boxes_list = [], []
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise TypeError(f"targets[{i}] must be a dict with labels and boxes, got {type(target).__name__}")
        boxes = V.tensor_input(f"targets[{i}]['boxes']", _field(target, ("boxes",), f"targets[{i}]"), ("M", 4),
                               floating=True, empty_rows=True)
        labels = V.labels_input(f"targets[{i}]['labels']", _field(target, ("labels", "class_labels"), f"targets[{i}]"),
                                (boxes.shape[0],), num_classes=num_classes)
        if V.value_checks_enabled() and boxes.numel():
            V.check_finite(f"targets[{i}]['boxes']", boxes)
            if bool((boxes[:, 2:] < 0).any()):
                raise ValueError(f"targets[{i}]['boxes'] must be normalised (cx, cy, w, h) with w, h >= 0, got a "
                                 f"negative side")
        labels_list.append(labels.to(device))
        boxes_list.append(boxes.to(device=device, dtype=torch.float32))
    sizes = [len(b) for b in boxes_list]
    M = max(sizes, default=0)
    labels = torch.zeros(batch, M, dtype=torch.long, device=device)
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device).repeat(batch, M, 1)
    for i, (lab, box) in enumerate(zip(labels_list, boxes_list)):
        labels[i, :len(lab)] = lab
        boxes[i, :len(box)] = box
    return labels, boxes, sizes


class HungarianMatcher(nn.Module):
    """DETR's ``HungarianMatcher`` interface, batched (see the module docstring).

    Args:
        cost_class, cost_bbox, cost_giou: weights of the class, L1 and -GIoU costs (DETR 1 / 5 / 2).
        focal: class cost of Deformable-DETR / DINO / RT-DETR (sigmoid focal, ``alpha``, ``gamma``)
            instead of DETR's -softmax probability.
        solver: "scipy" (the reference), "torch_linear_assignment" (batched; its Triton kernel on
            NVIDIA GPUs of compute capability >= 8.0, scipy elsewhere) or "auto" (the GPU solver for
            CUDA predictions when it is installed and supported, else scipy).
        num_groups, repeat_gts: defaults for the call's options (1: plain one-to-one matching).

    Presets: ``HungarianMatcher.preset("detr")`` (softmax, 1 / 5 / 2) and ``"deformable_detr"``,
    ``"dino"``, ``"rt_detr"`` (focal alpha 0.25 gamma 2, weights 2 / 5 / 2); keyword overrides apply.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, focal: bool = False,
                 alpha: float = 0.25, gamma: float = 2.0, solver: str = "auto", *, num_groups: int = 1,
                 repeat_gts: int = 1) -> None:
        super().__init__()
        self.cost_class = float(V.check_number("cost_class", cost_class, low=0))
        self.cost_bbox = float(V.check_number("cost_bbox", cost_bbox, low=0))
        self.cost_giou = float(V.check_number("cost_giou", cost_giou, low=0))
        if self.cost_class == 0 and self.cost_bbox == 0 and self.cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou must not all be 0")
        self.focal = V.check_flag("focal", focal)
        self.alpha = float(V.check_number("alpha", alpha, low=0, high=1))
        self.gamma = float(V.check_number("gamma", gamma, low=0))
        self.solver = V.check_choice("solver", solver, SOLVERS)
        if solver == "torch_linear_assignment" and not torch_linear_assignment_available():
            raise ImportError("solver='torch_linear_assignment' needs `pip install torch-linear-assignment`")
        self.num_groups = int(V.check_number("num_groups", num_groups, low=1, integer=True))
        self.repeat_gts = int(V.check_number("repeat_gts", repeat_gts, low=1, integer=True))

    @classmethod
    def preset(cls, name: str, **overrides) -> "HungarianMatcher":
        """A matcher with a codebase's cost settings (``MATCHER_PRESETS``), overridden by keywords."""
        V.check_choice("name", name, tuple(MATCHER_PRESETS))
        return cls(**dict(MATCHER_PRESETS[name], **overrides))

    def cost_terms(self, logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> Dict[str, Tensor]:
        """Weighted cost terms, each [B, Q, M] float32, keyed by the name errors report."""
        logits, boxes = logits.float(), boxes.float()
        if self.focal:
            cls_name, cls_cost = "class cost (focal)", focal_class_cost(logits, gt_labels, self.alpha, self.gamma)
        else:
            cls_name, cls_cost = "class cost (softmax)", softmax_class_cost(logits, gt_labels)
        # DETR's order of the sum: bbox, class, giou
        return {"L1 box cost": self.cost_bbox * l1_box_cost(boxes, gt_boxes), cls_name: self.cost_class * cls_cost,
                "GIoU box cost": self.cost_giou * giou_box_cost(boxes, gt_boxes)}

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], *,
                num_groups: Optional[int] = None, repeat_gts: Optional[int] = None) -> Indices:
        """outputs: ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] normalised (cx, cy, w, h);
        targets: B dicts of ``labels`` [M_i], ``boxes`` [M_i, 4] normalised (cx, cy, w, h).
        Returns B tuples ``(query_idx, gt_idx)`` int64 (CPU), sorted by query; per group
        min(Q / G, k * M_i) pairs."""
        if not isinstance(outputs, Mapping):
            raise TypeError(f"outputs must be a dict with pred_logits and pred_boxes, got {type(outputs).__name__}")
        logits = V.tensor_input("outputs['pred_logits']", _field(outputs, ("pred_logits", "logits"), "outputs"),
                                ("B", "Q", "C"), floating=True)
        boxes = V.tensor_input("outputs['pred_boxes']", _field(outputs, ("pred_boxes",), "outputs"),
                               (logits.shape[0], logits.shape[1], 4), floating=True)
        groups = self.num_groups if num_groups is None else int(V.check_number("num_groups", num_groups, low=1,
                                                                               integer=True))
        repeats = self.repeat_gts if repeat_gts is None else int(V.check_number("repeat_gts", repeat_gts, low=1,
                                                                               integer=True))
        B, Q, C = logits.shape
        if Q % groups:
            raise ValueError(f"num_groups={groups} must divide the number of queries Q={Q} (pred_logits "
                             f"{tuple(logits.shape)})")
        gt_labels, gt_boxes, sizes = pad_targets(targets, B, C, logits.device)
        terms = self.cost_terms(logits, boxes, gt_labels, gt_boxes)
        l1, cls_cost, giou = terms.values()
        total = l1 + cls_cost + giou                                                   # [B, Q, M] float32
        valid = torch.arange(total.shape[2])[None, :] < torch.tensor(sizes, dtype=torch.long)[:, None]   # [B, M]
        solver = resolve_solver(self.solver, total.device)
        if solver == "scipy":
            total = total.cpu()                                                          # the one transfer
        valid = valid.to(total.device)
        if not bool((torch.isfinite(total) | ~valid[:, None, :]).all()):                 # one sync on a device
            _raise_non_finite(total, valid, terms)
        gt_inds = match_blocks(total, valid, repeat=repeats, groups=groups, layout="tile", solver=solver).cpu()
        out = []
        for row in gt_inds:                                                              # [Q] 1-based, 0 none
            query = torch.nonzero(row).squeeze(1)
            out.append((query, row.index_select(0, query) - 1))
        return out

    def extra_repr(self) -> str:
        kind = f"focal(alpha={self.alpha}, gamma={self.gamma})" if self.focal else "softmax"
        return (f"cost_class={self.cost_class} [{kind}], cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
                f"solver={self.solver!r}, num_groups={self.num_groups}, repeat_gts={self.repeat_gts}")


def _raise_non_finite(total: Tensor, valid: Tensor, terms: Mapping[str, Tensor]) -> None:
    """Name the first image and cost term with NaN / Inf on a valid (query, GT) pair (error path only).
    total [B, Q, M], valid [B, M], terms each [B, Q, M]."""
    for b in range(total.shape[0]):
        cols = torch.nonzero(valid[b]).squeeze(1)
        if bool(torch.isfinite(total[b].index_select(1, cols)).all()):
            continue
        culprits = []
        for name, term in terms.items():
            block = term[b].index_select(1, cols.to(term.device))
            nan, inf = int(torch.isnan(block).sum()), int(torch.isinf(block).sum())
            if nan or inf:
                culprits.append(f"{name} has {nan} NaN and {inf} Inf values")
        if not culprits:
            culprits.append("the weighted sum of the finite cost terms overflows float32")
        raise ValueError(f"image {b}: {'; '.join(culprits)}; the Hungarian matching needs finite costs (check the "
                         f"predictions for NaN / Inf, e.g. NaN logits under AMP)")
