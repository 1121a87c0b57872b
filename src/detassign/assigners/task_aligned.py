"""Task-aligned assigner (TAL; TOOD, Feng et al. 2021), as in ultralytics YOLOv8 / YOLO11 / YOLO26 and mmdetection.

A positive should be good at both tasks: confident in the GT's class and well localised. For each GT:

1. candidates: anchors whose centre lies inside the GT (small GTs widened for this test in ultralytics);
2. metric t = s^alpha * u^beta, s the predicted probability of the GT's class, u the overlap of the
   anchor's predicted box with the GT (TOOD eq. 2);
3. the top-k anchors by t;
4. an anchor chosen by several GTs keeps one (the GT it overlaps most);
5. targets: the GT's box and label, and the soft class score t * max_pos(u) / (max_pos(t) + eps), both
   maxima over that GT's final positives.

Worked example (one GT, alpha = 1, beta = 6, top-1)::

    candidate   class score s   IoU u   t = s * u^6
    A           0.90            0.30    0.00066
    B           0.50            0.70    0.05882   <- positive: A has the best score, but a poor box
    C           0.80            0.60    0.03732

With top-2, B and C are positive; B's soft score is 0.0588 * 0.70 / 0.0588 = 0.70 (the best IoU of the
GT's positives) and C's 0.0373 * 0.70 / 0.0588 = 0.444.

``preset`` selects the reference (explicit arguments override a preset's values):

=========================  ==========================  ==========================
option                     ``"ultralytics"``           ``"mmdet"``
=========================  ==========================  ==========================
topk / alpha / beta        13 / 1.0 / 6.0 [#loss]_     13 / 1 / 6 (alpha/beta also per ``assign`` call)
candidate_test, inside_eps ``"strict"``, 1e-9          ``"strict"``, 0.01
candidate_stage            ``"before_topk"``           ``"after_topk"``: top-k over every anchor, then
                                                       the inside test (a GT may end with < k)
widen_small_gt, strides    True, (8, 16, 32): sides    False
                           < strides[1] become 16 px
                           for the inside test only
require_positive_metric    False (t == 0 can be fg)    True
overlap                    ``"ciou"`` clamped at 0     ``"iou"`` (BboxOverlaps2D)
conflict                   ``"all_gts"``: argmax of    ``"selected_gts"``: best IoU among the GTs
                           the overlap over all GTs    that selected the anchor
topk2                      None (= topk)               None
neg_overlap                0.0                         -1e8 (mmdet's ``-INF`` sentinel)
=========================  ==========================  ==========================

.. [#loss] ``v8DetectionLoss`` builds the assigner with topk 10, alpha 0.5, beta 6.0:
   ``preset="ultralytics_loss"``. YOLO26's end-to-end loss builds two: ``preset="yolo26_one2many"``
   (topk 10) and ``"yolo26_one2one"`` (topk 7, then each GT keeps its best ``topk2=1``); see
   :mod:`detassign.assigners.yolo26`.

Parity: ultralytics 8.4.190 ``TaskAlignedAssigner`` (fg mask, GT index, labels, boxes exact; target scores
to 1e-6) and mmdet 3.3.0 ``TaskAlignedAssigner`` (``gt_inds``, ``labels``, ``max_overlaps`` exact;
``assign_metrics`` to 1e-6). Differences, all deliberate: negatives get label -1 and zero target boxes
(ultralytics gives GT 0's, which no loss reads); mmdet's result gains ``target_scores``; fewer anchors
than ``topk`` is not an error; ``gt_instances_ignore`` is accepted and unused, as in mmdet.

Ties. Early in training many metrics are exactly 0 and ``torch.topk``'s choice among equal values is
unspecified (it differs between CPU and CUDA). ``tie_break="index"`` (default) gives equal metrics to
the lowest anchor index, on every device; ``tie_break="torch"`` reproduces the reference's
``torch.topk`` choice on the same device. Results agree whenever no GT must choose among equal metrics.

Computation (``method``, never the result): ``"auto"`` / ``"sparse"`` works on the candidate pairs only,
never on ``[B, M, A]`` tensors (memory proportional to the GT areas; reads sizes on the host, a sync on
CUDA); ``"blocked"`` runs static ``[B, g, A]`` blocks of GTs with no host synchronisation (CUDA graphs;
with ``detassign.set_value_checks(False)``). ``max_chunk_mib`` bounds the temporaries of one block.
Anchor points laid out as row-major grids of ``strides`` (ultralytics ``make_anchors``) are recognised
exactly and each GT's candidates are read off the grid cells it covers; other points are tested
against every anchor.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import aligned_points_in_boxes, box_centers, compute_dtype
from ..structures import AssignResult, BatchAssignResult, Deferred, Priors
from . import _pairs
from . import _tal_ops as ops
from ._batch import check_padded_gts
from ._blocks import simd_sigmoid
from .base import BaseAssigner, parse_iou_calculator

__all__ = ["TaskAlignedAssigner", "TAL_PRESETS"]

_COMMON = dict(topk=13, alpha=1.0, beta=6.0, topk2=None, tie_break="index", eps=1e-9)
TAL_PRESETS = {
    "ultralytics": dict(_COMMON, candidate_test="strict", inside_eps=1e-9, candidate_stage="before_topk",
                        widen_small_gt=True, strides=(8, 16, 32), require_positive_metric=False,
                        overlap="ciou", conflict="all_gts", neg_overlap=0.0),
    "mmdet": dict(_COMMON, alpha=1, beta=6, candidate_test="strict", inside_eps=0.01,
                  candidate_stage="after_topk", widen_small_gt=False, strides=(8, 16, 32),
                  require_positive_metric=True, overlap="iou", conflict="selected_gts", neg_overlap=-1e8),
}
TAL_PRESETS["ultralytics_loss"] = dict(TAL_PRESETS["ultralytics"], topk=10, alpha=0.5)
# YOLO26 end-to-end heads (ultralytics 8.4.190 E2ELoss, see detassign.assigners.yolo26): one-to-many
# v8DetectionLoss(tal_topk=10), one-to-one v8DetectionLoss(tal_topk=7, tal_topk2=1); small GTs widened as above
TAL_PRESETS["yolo26_one2many"] = dict(TAL_PRESETS["ultralytics"], topk=10, alpha=0.5)
TAL_PRESETS["yolo26_one2one"] = dict(TAL_PRESETS["ultralytics"], topk=7, alpha=0.5, topk2=1)

METHODS = ("auto", "sparse", "blocked")
_BYTES_PER_PAIR = 400          # enumerated pair: indices, gathered boxes, overlap temporaries
_BYTES_PER_BLOCKED_PAIR = 100  # live [B, g, A] temporaries of one blocked step (CIoU, keys, masks)
_BYTES_PER_DENSE_ELEMENT = 32  # a dense row rebuilt for tie_break="torch": values, top-k mask, indices


def _compact(keep: Tensor, *columns: Tensor) -> Tuple[Tensor, ...]:
    """The entries of aligned pair columns [P] where ``keep`` [P] is True."""
    index = torch.nonzero(keep).squeeze(1)
    return tuple(c.index_select(0, index) for c in columns)


def _check_exponents(alpha, beta) -> None:
    """TOOD's metric s ** alpha * u ** beta needs finite alpha, beta >= 0 (a negative one gives 0 ** -1)."""
    V.check_number("alpha", alpha, low=0)
    V.check_number("beta", beta, low=0)


class _PairInputs(NamedTuple):
    """One batch laid out for gathering by pair: per-pair boxes are gathered as rows of these tables."""

    scores: Tensor         # [B * A * C] logits or probabilities
    logits: bool
    pred: Tensor           # [B * A, 4] predicted boxes
    points: Tensor         # [A, 2]
    rows: Tensor           # [G] valid GT rows b * M + m
    labels: Tensor         # [G] their labels
    gt: Tensor             # [G, 4] their boxes
    test_boxes: Tensor     # [G, 4] boxes of the inside test (widened GTs)
    anchor_offset: Tensor  # [G] b * A: a GT row's first flat anchor
    num_classes: int       # C
    gt_areas: Optional[Tensor]    # [G] areas of the GT boxes (mmdet's arithmetic), for overlap="iou"
    pred_areas: Optional[Tensor]  # [B * A] areas of the predicted boxes, for overlap="iou"
    gt_index: Tensor       # [G] m, the row's index in its image's padded GTs
    gt_columns: Optional[Tensor]    # [4, G] the GT boxes coordinate-major, for the box-intersection test
    pred_columns: Optional[Tensor]  # [4, B * A] the predicted boxes coordinate-major, for the same

    @classmethod
    def of(cls, scores, logits, pred, points, labels, gts, rows, min_size, areas: bool,
           columns: bool) -> "_PairInputs":
        gt = gts.reshape(-1, 4).index_select(0, rows)                                    # [G, 4]
        A, M = pred.shape[1], gts.shape[1]
        pred = pred.reshape(-1, 4)
        image = torch.div(rows, M, rounding_mode="floor")
        gt_columns = ops.coordinate_major(gt) if columns else None
        pred_columns = ops.coordinate_major(pred) if columns else None
        return cls(scores.reshape(-1), logits, pred, points, rows, labels.reshape(-1).index_select(0, rows), gt,
                   ops.widened_candidate_boxes(gt, min_size), image * A, scores.shape[2],
                   ops.box_areas(gt.unbind(1)) if areas else None,
                   ops.box_areas(pred.unbind(1) if pred_columns is None else pred_columns) if areas else None,
                   rows - image * M, gt_columns, pred_columns)


class TaskAlignedAssigner(BaseAssigner):
    """Task-aligned assigner with ultralytics / mmdet presets; see the module docstring.

    Explicit arguments (default None = "take it from ``preset``") override the preset. Build from a
    config: ``build_assigner(dict(type="TaskAlignedAssigner", preset="ultralytics", topk=10))``.
    ``preset`` None means ``"ultralytics"``, or ``"mmdet"`` when ``iou_calculator`` is given:
    ``iou_calculator=dict(type="BboxOverlaps2D")`` (mmdet configs) is accepted and means ``overlap="iou"``,
    so an mmdet config ``dict(type="TaskAlignedAssigner", topk=13)`` plus its iou_calculator builds the
    mmdet behaviour. ``method`` ("auto" = "sparse", or "blocked") and ``max_chunk_mib`` (None: 32 on CPU,
    2048 on accelerators) choose the computation, never the result.
    """

    def __init__(self, topk: Optional[int] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                 preset: Optional[str] = None, num_classes: Optional[int] = None, *,
                 candidate_test: Optional[str] = None, inside_eps: Optional[float] = None,
                 candidate_stage: Optional[str] = None, widen_small_gt: Optional[bool] = None,
                 strides: Optional[Sequence[float]] = None, require_positive_metric: Optional[bool] = None,
                 overlap: Optional[str] = None, conflict: Optional[str] = None, topk2: Optional[int] = None,
                 tie_break: Optional[str] = None, eps: Optional[float] = None,
                 neg_overlap: Optional[float] = None, method: str = "auto", max_chunk_mib: Optional[float] = None,
                 iou_calculator: Optional[dict] = None) -> None:
        if preset is None:
            # an mmdet config names its iou_calculator and no preset
            preset = "ultralytics" if iou_calculator is None else "mmdet"
        if preset not in TAL_PRESETS:
            raise ValueError(f"preset must be one of {sorted(TAL_PRESETS)}, got {preset!r}")
        if iou_calculator is not None:
            if not parse_iou_calculator(iou_calculator, "TaskAlignedAssigner", rotated=False).is_default:
                raise ValueError(f"iou_calculator must be mmdet's plain dict(type='BboxOverlaps2D') for "
                                 f"TaskAlignedAssigner (its overlap is overlap='iou' or 'ciou'), got {iou_calculator!r}")
            if overlap not in (None, "iou"):
                raise ValueError(f"iou_calculator=BboxOverlaps2D contradicts overlap={overlap!r}")
            overlap = "iou"
        cfg = TAL_PRESETS[preset]

        def pick(name, value):
            return cfg[name] if value is None else value

        self.preset = preset
        self.topk = V.check_number("topk", pick("topk", topk), low=1, integer=True)
        self.topk2 = V.check_number("topk2", pick("topk2", topk2), low=1, integer=True, allow_none=True)
        # a NaN or negative exponent gives NaN / Inf metrics (0 ** -1), never an error downstream
        self.alpha = pick("alpha", alpha)
        self.beta = pick("beta", beta)
        _check_exponents(self.alpha, self.beta)
        self.candidate_test = V.check_choice("candidate_test", pick("candidate_test", candidate_test),
                                             ("strict", "inclusive"))
        self.inside_eps = V.check_number("inside_eps", pick("inside_eps", inside_eps), low=0)
        self.candidate_stage = V.check_choice("candidate_stage", pick("candidate_stage", candidate_stage),
                                              ("before_topk", "after_topk"))
        self.widen_small_gt = V.check_flag("widen_small_gt", pick("widen_small_gt", widen_small_gt))
        self.strides = self._check_strides(pick("strides", strides))
        self.require_positive_metric = V.check_flag("require_positive_metric",
                                                    pick("require_positive_metric", require_positive_metric))
        self.overlap = V.check_choice("overlap", pick("overlap", overlap), ("ciou", "iou"))
        self.conflict = V.check_choice("conflict", pick("conflict", conflict), ("all_gts", "selected_gts"))
        self.tie_break = V.check_choice("tie_break", pick("tie_break", tie_break), _pairs.TIE_BREAKS)
        self.eps = V.check_number("eps", pick("eps", eps), low=0)
        self.neg_overlap = V.check_number("neg_overlap", pick("neg_overlap", neg_overlap))
        self.method = V.check_choice("method", method, METHODS)
        self.num_classes = V.check_number("num_classes", num_classes, low=1, integer=True, allow_none=True)
        max_chunk_mib = V.check_number("max_chunk_mib", max_chunk_mib, low=0, low_open=True, allow_none=True)
        self.max_chunk_mib = None if max_chunk_mib is None else float(max_chunk_mib)
        if self.widen_small_gt and not self.strides:
            raise ValueError("widen_small_gt=True needs strides (the side is widened to strides[1])")

    @staticmethod
    def _check_strides(strides) -> Tuple[float, ...]:
        if strides is not None and not isinstance(strides, (list, tuple)):
            raise V.ParameterTypeError(f"strides must be a list of positive numbers, got {strides!r}")
        return tuple(float(V.check_number(f"strides[{i}]", s, low=0, low_open=True))
                     for i, s in enumerate(strides or ()))

    @property
    def min_candidate_size(self) -> Optional[float]:
        """Side length small GTs are widened to for the inside test (ultralytics ``stride_val``)."""
        if not self.widen_small_gt:
            return None
        return self.strides[1] if len(self.strides) > 1 else self.strides[0]

    def _budget(self, device: torch.device, bytes_per_pair: int) -> int:
        """Pairs of one block: ``max_chunk_mib`` over the temporaries one pair needs. Default 32 MiB on CPU:
        a block's temporaries are then reused from the allocator's free memory instead of being fresh
        pages from the OS each time, and a block's top-k sort (about half its pairs on dense heads) stays
        above the 32 k elements where torch's CPU sort turns to its faster radix sort (measured: 24 MiB is
        40 % slower, 128 MiB 30 %); 2 GiB on accelerators (fewer, larger kernels)."""
        mib = self.max_chunk_mib if self.max_chunk_mib is not None else (32.0 if device.type == "cpu" else 2048.0)
        return max(1, int(mib * 2**20 / bytes_per_pair))

    # ------------------------------------------------------------------ per image (mmdet interface)
    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, alpha: Optional[float] = None,
               beta: Optional[float] = None) -> AssignResult:
        """Assign one image (mmdetection's call and conventions).

        pred_instances: ``priors`` [A, 4] xyxy boxes (their centres are the anchor points; [A, 2]
        points are accepted too), ``bboxes`` [A, 4] decoded xyxy, ``scores`` [A, C] probabilities (what
        TOOD's head passes). gt_instances: ``bboxes`` [M, 4] xyxy, ``labels`` [M]. Returns an
        AssignResult with extras ``assign_metrics`` [A], ``target_scores`` [A, C], ``target_boxes`` [A, 4].
        """
        priors = V.tensor_input("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"),
                                ("A", None), floating=True, empty_rows=True)
        if priors.shape == (0, 0):
            priors = priors.new_zeros((0, 2))
        if priors.shape[1] < 4 and priors.shape[1] != 2:
            raise ValueError(f"pred_instances.priors must be [A, 4] boxes or [A, 2] points, got {tuple(priors.shape)}")
        bboxes = V.tensor_input("pred_instances.bboxes", V.get_field(pred_instances, "bboxes", "pred_instances"),
                                ("A", 4), floating=True, empty_rows=True)
        scores = V.tensor_input("pred_instances.scores", V.get_field(pred_instances, "scores", "pred_instances"),
                                ("A", "C"), floating=True, empty_rows=True)
        V.check_agree("A", [("pred_instances.priors", priors, 0), ("pred_instances.bboxes", bboxes, 0),
                            ("pred_instances.scores", scores, 0)])
        gt_bboxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                  ("M", 4), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_bboxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), num_classes=V.num_classes_of(scores),
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        if V.value_checks_enabled():   # named as the caller passed them (assign_batch checks again, quickly)
            V.check_predictions(("pred_instances.scores", "pred_instances.bboxes", "pred_instances.priors"),
                                scores, bboxes, priors, probabilities=True)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        points = priors if priors.shape[1] == 2 else box_centers(priors[:, :4])
        num_gts = gt_bboxes.shape[0]
        if priors.shape[0] == 0:   # no priors, nothing to assign (empty scores need not even say C)
            gt_bboxes, gt_labels = gt_bboxes[:0], gt_labels[:0]
        result = self.assign_batch_probs(scores[None], bboxes[None], points, gt_labels[None], gt_bboxes[None], None,
                                         alpha=alpha, beta=beta)[0]
        result.num_gts = num_gts
        return result

    # ------------------------------------------------------------------ batched
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None, alpha: Optional[float] = None,
                     beta: Optional[float] = None) -> BatchAssignResult:
        """Assign a padded batch (the batched interface: scores are the head's logits).

        pred_scores [B, A, C] logits (the sigmoid is applied here, as a reference's caller does),
        pred_bboxes [B, A, 4] xyxy, anchor_points [A, 2] (or a :class:`detassign.Priors`, whose points are
        read), gt_labels [B, M] or [B, M, 1], gt_bboxes
        [B, M, 4] xyxy, gt_mask [B, M] or [B, M, 1] (None = all valid), all in one coordinate frame
        (pixels for the ultralytics presets, whose strides / widening are in pixels). Returns a
        BatchAssignResult: gt_inds [B, A] (1-based padded GT index, 0 negative), labels [B, A] (-1
        non-positive), max_overlaps [B, A], extras ``target_boxes`` [B, A, 4], ``target_scores`` [B, A, C],
        ``assign_metrics`` [B, A]; ``fg_mask``. Half-precision inputs are computed in float32.
        M == 0 / all GTs masked: every anchor negative.
        """
        inputs = self._check_batch(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, False)
        return self._assign(*inputs, V.as_tensor("gt_bboxes", gt_bboxes), alpha, beta, logits=True)

    @torch.no_grad()
    def assign_batch_probs(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                           gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None, alpha: Optional[float] = None,
                           beta: Optional[float] = None) -> BatchAssignResult:
        """:meth:`assign_batch` for callers that hold probabilities: pred_scores [B, A, C] in [0, 1]
        (ultralytics' ``TaskAlignedAssigner`` call, which receives ``sigmoid(logits)``)."""
        inputs = self._check_batch(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, True)
        return self._assign(*inputs, V.as_tensor("gt_bboxes", gt_bboxes), alpha, beta, logits=False)

    def _assign(self, scores: Tensor, pred: Tensor, points: Tensor, labels: Tensor, gts: Tensor, mask: Tensor,
                out_boxes: Tensor, alpha: Optional[float], beta: Optional[float], logits: bool) -> BatchAssignResult:
        """The five steps. scores [B, A, C] logits or probabilities (``logits``), pred [B, A, 4], points
        [A, 2], labels [B, M], gts [B, M, 4] (compute dtype), mask [B, M]; out_boxes [B, M, 4] the caller's
        boxes (target dtype)."""
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        _check_exponents(alpha, beta)
        B, A, C = scores.shape
        M = gts.shape[1]
        if self.method == "blocked":
            probs = scores.sigmoid() if logits else scores
            assign = self._assign_blocked(probs, pred, points, labels, gts, mask, alpha, beta)    # steps 1-4
        else:
            rows = torch.nonzero(mask.reshape(-1)).squeeze(1)                     # [G] valid rows b * M + m
            batch = _PairInputs.of(scores, logits, pred, points, labels, gts, rows, self.min_candidate_size,
                                   areas=self.overlap == "iou",
                                   columns=self.candidate_stage == "after_topk" and self.require_positive_metric)
            plan = self._candidates(batch, beta)                                  # 1. where candidates lie
            tables = [self._select(plan, block, batch, alpha, beta)               # 1-3 per block of GT rows
                      for block in plan.blocks(self._budget(points.device, _BYTES_PER_PAIR))]
            pairs = (self._kept(batch, [torch.cat(column) for column in zip(*tables)]) if tables
                     else ops.PairTable.cat([], scores.dtype, scores.device))
            assign = ops.resolve_conflicts(pairs, B, A, M, self.conflict)        # 4. one GT per anchor
        if self.topk2 is not None and self.topk2 != self.topk:                  # 4b. each GT keeps its best topk2
            assign = ops.keep_topk2(assign, B, A, M, self.topk2, stable=self.tie_break == "index",
                                    max_elems=self._budget(scores.device, _BYTES_PER_DENSE_ELEMENT))
        return self._targets(assign, scores, labels, out_boxes, mask)           # 5. targets

    # ------------------------------------------------------------------ steps 1-3 on candidate pairs
    def _candidates(self, batch: "_PairInputs", beta: float) -> _pairs.Candidates:
        """Step 1's search plan for the valid GT rows.

        ``"before_topk"`` (ultralytics): candidates are the anchors inside the (widened) GT, so the
        window is the test box. ``"after_topk"`` (mmdet): the top-k runs over every anchor; when only
        positive metrics can be kept (and beta > 0) only anchors whose predicted box intersects the GT
        qualify (any other has overlap 0, hence t = 0), and their points lie in the GT widened by how
        far the image's predicted boxes reach on that level. Otherwise every anchor is a candidate.
        """
        A = batch.points.shape[0]
        points = batch.points
        levels = _pairs.detect_grid(points, self.strides) if batch.rows.numel() else None
        if self.candidate_stage == "before_topk":
            return _pairs.plan_candidates(levels, batch.test_boxes, A)
        if not (self.require_positive_metric and beta > 0) or levels is None:
            return _pairs.plan_candidates(None, batch.gt, A)
        reach = ops.prediction_reach(points, batch.pred_columns.view(4, -1, A), levels)   # [B, L, 4]
        image = torch.div(batch.anchor_offset, A, rounding_mode="floor")
        return _pairs.plan_candidates(levels, ops.overlap_windows(batch.gt, reach.index_select(0, image)), A,
                                      row_offset=batch.anchor_offset)              # pairs of flat batch anchors

    def _select(self, plan: _pairs.Candidates, block: slice, batch: "_PairInputs", alpha: float,
                beta: float) -> Tuple[Tensor, ...]:
        """Steps 1-3 for the GT rows ``rows[block]``: the candidate pairs, their metric, each GT's top-k.
        Returns the columns (row, flat anchor, overlap, metric, top-k flag) of the pairs step 4 reads:
        every candidate (inside) pair for the ``"all_gts"`` rule, which takes the argmax over all GTs, the
        chosen ones for ``"selected_gts"``. mmdet's inside test, after the top-k, waits for :meth:`_kept`."""
        before = self.candidate_stage == "before_topk"
        if plan.levels is not None and not before:        # 1. t can be > 0: the predicted box meets the GT
            local, flat_anchor = plan.pairs(block)                                # flat batch anchors
            local, flat_anchor = _compact(ops.may_intersect(batch.gt_columns, local, batch.pred_columns, flat_anchor),
                                          local, flat_anchor)
        else:
            local, anchor = plan.pairs(block)                         # superset of pairs (local GT row, anchor)
            flat_anchor = batch.anchor_offset.index_select(0, local) + anchor
            if before:                                                                # 1. inside the GT
                local, flat_anchor = _compact(self._inside(batch, local, anchor), local, flat_anchor)
        score_index = flat_anchor * batch.num_classes
        score = batch.scores.index_select(0, score_index.add_(batch.labels.index_select(0, local)))
        if batch.logits:  # only the pairs need a probability
            score = simd_sigmoid(score)
        gt_box = batch.gt.index_select(0, local)                                          # [P, 4]
        pred_box = batch.pred.index_select(0, flat_anchor)
        areas = ((batch.gt_areas.index_select(0, local), batch.pred_areas.index_select(0, flat_anchor))
                 if self.overlap == "iou" else (None, None))
        overlap = ops.pair_overlaps(gt_box, pred_box, self.overlap, *areas)              # 2. metric
        metric = ops.alignment_metric(score, overlap, alpha, beta)
        if self.conflict == "selected_gts" and self.tie_break == "index":              # 3. top-k per GT:
            chosen = _pairs.topk_indices_in_segments(local, metric, self.topk, sorted_segments=True)  # kept only
            return tuple(c.index_select(0, chosen) for c in (local, flat_anchor, overlap, metric)) + (
                torch.ones_like(chosen, dtype=torch.bool),)
        anchor = (flat_anchor - batch.anchor_offset.index_select(0, local)) if self.tie_break == "torch" else None
        selected = _pairs.topk_in_segments(local, metric, block.stop, self.topk, self.tie_break,   # 3. top-k
                                           anchor, plan.num_priors,                                # per GT
                                           self._budget(metric.device, _BYTES_PER_DENSE_ELEMENT),
                                           sorted_segments=True)
        pairs = (local, flat_anchor, overlap, metric, selected)
        return _compact(selected, *pairs) if self.conflict == "selected_gts" else pairs

    def _kept(self, batch: "_PairInputs", pairs: Sequence[Tensor]) -> ops.PairTable:
        """The pairs of every block -> step 4's table: top-k flags of non-positive metrics cleared where only
        positive ones may be kept, mmdet's inside test (after the top-k), GT rows as padded GT indices."""
        local, flat_anchor, overlap, metric, selected = pairs
        if self.require_positive_metric:
            selected = selected & (metric > 0)
        pairs = (local, flat_anchor, overlap, metric, selected)
        if self.conflict == "selected_gts":
            pairs = _compact(selected, *pairs)
        if self.candidate_stage == "after_topk":              # mmdet's order: the inside test after the top-k
            anchor = pairs[1] - batch.anchor_offset.index_select(0, pairs[0])
            pairs = _compact(self._inside(batch, pairs[0], anchor), *pairs)
        local, flat_anchor, overlap, metric, selected = pairs
        return ops.PairTable(flat_anchor, batch.gt_index.index_select(0, local), overlap, metric, selected)

    def _inside(self, batch: "_PairInputs", local: Tensor, anchor: Tensor) -> Tensor:
        """The inside test of pairs (GT row ``rows[local]``, anchor) -> [P] bool."""
        return aligned_points_in_boxes(batch.points.index_select(0, anchor), batch.test_boxes.index_select(0, local),
                                       self.inside_eps,
                                       self.candidate_test == "inclusive")

    # ------------------------------------------------------------------ steps 1-4 on static blocks
    def _assign_blocked(self, scores, pred, points, labels, gts, mask, alpha, beta) -> ops.AnchorAssignment:
        """Steps 1-4 on dense ``[B, g, A]`` blocks of GTs with a static block size, folded into a running
        per-anchor summary: no ``nonzero``, no data-dependent shape, no host sync (accelerators)."""
        B, A, C = scores.shape
        M = gts.shape[1]
        step = max(1, self._budget(scores.device, _BYTES_PER_BLOCKED_PAIR) // max(B * A, 1))
        by_class = scores.transpose(1, 2)                                                  # [B, C, A]
        # padding rows may hold any label: clamp so the gather stays in range (they are masked out)
        labels = labels.clamp(0, max(C - 1, 0))
        summary = _pairs.PriorSummary.empty(B, A, 2, scores.dtype, scores.device)
        before = self.candidate_stage == "before_topk"
        for lo in range(0, M if C else 0, step):
            hi = min(M, lo + step)
            test_box = ops.widened_candidate_boxes(gts[:, lo:hi], self.min_candidate_size)[..., None, :]
            inside = aligned_points_in_boxes(points, test_box, self.inside_eps,
                                             self.candidate_test == "inclusive") & mask[:, lo:hi, None]   # 1.
            score = by_class.gather(1, labels[:, lo:hi, None].expand(-1, -1, A))            # [B, g, A]
            overlap = ops.pair_overlaps(gts[:, lo:hi, None, :], pred[:, None], self.overlap)          # 2.
            metric = ops.alignment_metric(score, overlap, alpha, beta)
            if before:
                # as ultralytics: metrics exist on candidates only, the rest of the row is 0
                metric = metric.masked_fill(~inside, 0)
                ranked = metric.masked_fill(~inside, -1.0) if self.tie_break == "index" else metric
            else:
                ranked = metric                                                           # mmdet: every anchor
                metric = metric.masked_fill(~inside, 0)
            overlap = overlap.masked_fill(~inside, 0)
            chosen = _pairs.topk_dense(ranked, self.topk, self.tie_break) & inside                    # 3.
            if self.require_positive_metric:
                chosen &= metric > 0
            key = overlap if self.conflict == "all_gts" else overlap.masked_fill(~chosen, float("-inf"))
            summary = summary.fold(lo, chosen, key, (metric, overlap))                                # 4.
        return ops.assignment_from_summary(summary)

    # ------------------------------------------------------------------ step 5
    def _targets(self, assign: ops.AnchorAssignment, scores: Tensor, labels: Tensor, gt_bboxes: Tensor,
                 mask: Tensor) -> BatchAssignResult:
        """Per-anchor assignment -> BatchAssignResult (targets written once, no [B, M, A] tensor). The
        target boxes and the [B, A, C] soft scores are computed when first read: mmdet's callers (TOOD's
        head) read ``assign_metrics`` and build their own targets."""
        B, A, C = scores.shape
        M = gt_bboxes.shape[1]
        fg, negative = assign.fg.view(B, A), ~assign.fg.view(B, A)
        gt = assign.gt.view(B, A)
        gt_label = labels.gather(1, gt).masked_fill_(negative, -1) if M else torch.full_like(gt, -1)
        num_gts = mask.sum(1)                                                          # [B]
        # mmdet returns 0 (not its -INF sentinel) for every prior of an image without GT
        fill = torch.where(num_gts > 0, self.neg_overlap, 0.0).to(assign.overlap.dtype)
        eps, dtype = self.eps, scores.dtype

        @functools.lru_cache(maxsize=None)
        def flat_gt_row() -> Tensor:
            """[B * A] the flat GT row b * M + m of each positive anchor, B * M (a row past the GTs) for the
            others: read only by the deferred targets (computed once for both)."""
            return (gt + (torch.arange(B, device=gt.device) * M)[:, None]).masked_fill_(negative, B * M).view(-1)

        return BatchAssignResult(
            num_gts,
            (gt + 1).masked_fill_(negative, 0),
            torch.where(fg, assign.overlap.view(B, A), fill[:, None]),
            gt_label,
            target_boxes=Deferred(lambda: _target_boxes(gt_bboxes, flat_gt_row()).view(B, A, 4)),
            target_scores=Deferred(lambda: _target_scores(assign, flat_gt_row(), gt_label.view(-1), B, A, M, C, eps,
                                                          dtype).view(B, A, C)),
            assign_metrics=assign.metric.view(B, A).masked_fill(negative, 0),
        )

    # ------------------------------------------------------------------ input checks
    def _check_batch(self, pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, probs: bool):
        """Validated inputs in the compute dtype: (scores [B, A, C] as given, pred, points, labels [B, M]
        long, gts, mask [B, M] bool); ``probs``: the scores must lie in [0, 1], else be finite logits."""
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "A", 4), floating=True)
        if isinstance(anchor_points, Priors):   # the batched interface's priors: TaskAligned reads the points
            anchor_points = anchor_points.points
        anchor_points = V.tensor_input("anchor_points", anchor_points, ("A", 2), floating=True)
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 4), floating=True)
        # the anchors are fixed by the model: name the tensor that disagrees with the others
        V.check_agree("A", [("anchor_points", anchor_points, 0), ("pred_scores", pred_scores, 1),
                            ("pred_bboxes", pred_bboxes, 1)])
        V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0),
                            ("gt_bboxes", gt_bboxes, 0)])
        if self.num_classes is not None and pred_scores.shape[2] != self.num_classes:
            raise ValueError(f"pred_scores must have num_classes={self.num_classes} columns, got shape "
                             f"{tuple(pred_scores.shape)}")
        # float labels (ultralytics' [B, M, 1]) are read by the shared check: integral values only
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                            gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        labels, gts, mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, V.num_classes_of(pred_scores, 1))
        if V.value_checks_enabled():
            V.check_predictions(("pred_scores", "pred_bboxes", "anchor_points"), pred_scores, pred_bboxes, anchor_points,
                                probs)
        dtype = compute_dtype(pred_scores, pred_bboxes, gts, anchor_points)
        return pred_scores.to(dtype), pred_bboxes.to(dtype), anchor_points.to(dtype), labels, gts.to(dtype), mask


def _target_boxes(gt_bboxes: Tensor, gid: Tensor) -> Tensor:
    """Each anchor's GT box, zeros for negatives. gt_bboxes [B, M, 4], gid [B * A] flat GT row (B * M:
    none) -> [B * A, 4]."""
    return torch.cat((gt_bboxes.reshape(-1, 4), gt_bboxes.new_zeros(1, 4))).index_select(0, gid)


def _target_scores(assign: ops.AnchorAssignment, gid: Tensor, gt_label: Tensor, B: int, A: int, M: int, C: int,
                   eps: float, dtype: torch.dtype) -> Tensor:
    """The soft class targets [B * A, C]: the normalised metric at the GT's class, 0 elsewhere."""
    fg = assign.fg
    norm = ops.normalized_scores(assign, B, A, M, eps, gid.clamp(max=max(B * M - 1, 0))) if M else \
        torch.zeros_like(assign.metric)
    target_scores = ops.zeros_buffer((B * A, C), dtype, fg.device)
    if C and fg.device.type == "cpu":
        # only the positive rows: the OS-zeroed pages of the other rows are never written
        pos = torch.nonzero(fg).squeeze(1)
        target_scores.view(-1).index_copy_(0, pos * C + gt_label.index_select(0, pos).clamp(0, C - 1),
                                           norm.index_select(0, pos))
    elif C:
        target_scores.scatter_(1, gt_label.clamp(0, C - 1)[:, None], norm[:, None])      # no sync
    return target_scores
