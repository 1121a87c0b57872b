"""Task-aligned assigner (TAL; TOOD, Feng et al. 2021), as in ultralytics YOLOv8/11 and mmdetection.

Algorithm, per GT then per anchor:

1. candidates: anchors whose centre lies inside the GT (optionally a widened GT, see below);
2. metric t = s^alpha * u^beta, s the predicted probability of the GT's class, u the overlap of the
   anchor's predicted box with the GT (TOOD eq. 2);
3. top-k anchors per GT by t (the candidate test applied before or after this step);
4. an anchor chosen by several GTs keeps one (conflict rule);
5. targets: the GT's box and label; soft class target t * max_pos(u) / (max_pos(t) + eps) with both
   maxima over that GT's final positives (ultralytics' normalisation).

Where the references differ, a named option decides (``preset`` picks a consistent set; explicit
arguments override it):

=========================  ==========================  ==========================
option                     ``preset="ultralytics"``    ``preset="mmdet"``
=========================  ==========================  ==========================
topk / alpha / beta        13 / 1.0 / 6.0 [#loss]_     13 / 1 / 6 (alpha/beta also per ``assign`` call)
candidate_test, inside_eps ``"strict"``, 1e-9          ``"strict"``, 0.01
candidate_stage            ``"before_topk"``           ``"after_topk"`` (a GT may end with < k)
widen_small_gt, strides    True, (8, 16, 32): sides    False
                           < strides[1] become 16 px
                           for the inside test only
require_positive_metric    False (t == 0 can be fg)    True
overlap                    ``"ciou"`` clamped at 0     ``"iou"`` (BboxOverlaps2D)
conflict                   ``"all_gts"``               ``"selected_gts"``
topk2                      None (= topk)               None
neg_overlap                0.0                         -1e8 (mmdet's ``-INF`` sentinel)
=========================  ==========================  ==========================

.. [#loss] ``v8DetectionLoss`` builds the assigner with topk 10, alpha 0.5, beta 6.0:
   ``preset="ultralytics_loss"``. YOLO26's end-to-end loss builds two: ``preset="yolo26_one2many"``
   (topk 10) and ``"yolo26_one2one"`` (topk 7, ``topk2=1``); see :mod:`detassign.assigners.yolo26`.

``max_overlaps`` holds the assigned pair's overlap for positives and ``neg_overlap`` for the others
(mmdet returns -1e8 for non-positives; it returns 0 everywhere when an image has no GT or no prior,
which is reproduced in every preset). ``assign_metrics`` is the raw metric t of the assigned pair.
Target boxes of negatives are zeros (ultralytics returns GT 0's box there, which no loss reads).
``target_scores`` use the normalisation above in every preset (mmdet's assigner returns none; its
TOOD head normalises on its own). ``gt_instances_ignore`` is accepted and ignored, as in mmdet.
An anchor that ultralytics' ``all_gts`` rule hands to a GT that never selected it (all its overlaps
0: GT 0 wins) is reproduced, including its target score 0.

Ties. ``torch.topk`` does not order equal values consistently (it differs between CPU and CUDA, and
early in training many metrics are 0). With ``tie_break="index"`` (default) equal metrics go to the
lowest anchor index among the candidates; this is what every path computes (sparse, window,
dense, blocked). In ultralytics
the top-k runs over the whole dense row, where non-candidates are 0, so which zero-metric
candidates it keeps is unspecified (often none on CPU): results agree exactly whenever every GT has
at least k candidates with t > 0 or no zero-metric candidate. ``tie_break="torch"`` reproduces the
reference's choice on the same device: the sparse path ranks every GT's candidate pairs, and only the
GT rows whose top-k is tied (the k-th value of the dense row, often 0, is shared by more anchors than
slots left, one of them a candidate) are rebuilt as dense ``[A]`` rows and ranked by ``torch.topk``
itself (:func:`_tal_ops.reference_topk`; the CPU kernel ranks each row on its own, so a subset of rows
gives the batched call's per-row result, tested; on CUDA this is not verified yet). The same holds for
``topk2``. In the benchmark's crowded batch (B=16, M=200) 214 of 2,349 GT rows are rebuilt. On the dense
and blocked paths ``"torch"`` runs ``torch.topk`` on every dense row, as the reference. Under
``candidate_stage="after_topk"`` (mmdet) ``"torch"`` takes the dense path. Unlike the references,
fewer than ``topk`` anchors (A < k) is not an error.

Paths (``method``; all give the same result for a given ``tie_break``, tested against each other).
``"auto"`` picks ``"sparse"`` wherever it applies (``candidate_stage="before_topk"``, on every device:
it is the fastest and leanest path, but building its candidate list reads sizes on the host, a sync on
CUDA), else ``"blocked"`` on accelerators and, on CPU, ``"window"`` (``"after_topk"`` with
``require_positive_metric``) or ``"dense"`` (otherwise, and for ``tie_break="torch"`` there). Pass
``method="blocked"`` for an assign path with no host synchronisation (CUDA graphs, async pipelines).

* ``"sparse"`` never builds ``[B, M, A]`` tensors: when ``anchor_points`` are the concatenated
  row-major grids of ``strides`` (ultralytics ``make_anchors`` layout, verified exactly), the
  candidate anchors of each GT are enumerated from the grid cells it covers; otherwise the inside
  test runs over blocks of GTs within ``max_chunk_mib``. Metrics, top-k (one stable sort over the
  pairs), conflicts and targets are computed on the candidate pairs only.
* ``"window"`` (mmdet order: top-k over all anchors, then the inside test). Only an anchor whose
  predicted box intersects the GT has a positive overlap, hence a positive metric, and only positive
  metrics can be selected; so the top-k over all anchors equals the top-k over those anchors, with
  ties to the lowest anchor index in both (a tie at the k-th value is only possible between positive
  metrics, all of which are ranked). They are found without ``[B, M, A]`` work: per image and level
  the predicted boxes reach at most (left, top, right, bottom) from their anchor points, so the
  anchor points of intersecting boxes lie in the GT widened by that reach; its grid cells are
  enumerated, the exact intersection test filters them, and metrics are ranked per GT (k-th value
  by ``torch.topk`` on length-bucketed padded rows). Cost is proportional to the window areas: one
  huge predicted box widens its whole level, which degrades towards the dense cost, never the
  result. Needs grid anchors and beta > 0 (else 0^0 = 1 off the overlap); otherwise it runs
  ``"dense"``. mmdet itself uses ``torch.topk``, whose choice among exactly equal metrics is
  unspecified: on tie-free data (any real scores) the results are identical.
* ``"dense"`` computes ``[g, A]`` blocks of one image's GT rows within ``max_chunk_mib``.
* ``"blocked"`` (accelerators): static blocks of GTs ``[B, g, A]`` (``g`` from ``max_chunk_mib``),
  candidate test, metric and a dense top-k per block, folded into a running per-anchor summary
  (selection count, first selecting GT, conflict winner) with ``max`` / ``argmax`` / ``where``; the
  outputs are written once at the end. No ``nonzero``, no data-dependent shape, no host sync when
  value checks are off (``detassign.set_value_checks(False)``); a larger ``max_chunk_mib`` means
  fewer, larger kernels.

Pass ``strides`` in the layout order of the anchor grids (they also set the widening size); with
other anchors the generic test is used, which is exact but costs O(B * M * A) comparisons. Memory is
proportional to the number of candidate pairs (GT areas, or window areas), plus the ``[B, A, C]``
target scores (on CPU allocated already zero by the OS, then only the positive entries are written).
Host syncs (CPU paths): building pair lists uses ``nonzero`` / ``repeat_interleave``, grid detection
reads the anchor points, the dense path reads per-image GT counts, the window path its block sizes;
value checks (``detassign.set_value_checks``) also sync. The blocked path has none.
"""
from __future__ import annotations

import bisect
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import box_centers
from ..structures import AssignResult, BatchAssignResult
from . import _tal_ops as ops
from ._batch import check_padded_gts
from .base import BaseAssigner

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

_CHOICES = dict(candidate_test=("strict", "inclusive"), candidate_stage=("before_topk", "after_topk"),
                overlap=("ciou", "iou"), conflict=("all_gts", "selected_gts"), tie_break=("index", "torch"),
                method=("auto", "sparse", "window", "dense", "blocked"))
_BYTES_PER_DENSE_PAIR = 160   # rough peak of the dense block's temporaries per (GT, anchor)
_BYTES_PER_INSIDE_TEST = 24
_BYTES_PER_BLOCKED_PAIR = 100  # live [B, g, A] temporaries of one blocked step (CIoU, keys, masks)
_BYTES_PER_WINDOW_PAIR = 400  # enumeration indices, gathered boxes and the overlap temporaries


def _fast_ok(x: Tensor, lo: float, hi: float) -> bool:
    """All finite and within [lo, hi], in one reduction (min / max propagate NaN)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high) & (low >= lo) & (high <= hi))


def _check_values(pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor,
                  names: Tuple[str, str, str] = ("pred_scores", "pred_bboxes", "anchor_points")) -> None:
    """Probabilities in [0, 1], finite boxes and points; the detailed checks run only on failure."""
    if not _fast_ok(pred_scores, 0.0, 1.0):
        V.check_range(names[0], pred_scores, 0.0, 1.0)
    for name, x in zip(names[1:], (pred_bboxes, anchor_points)):
        if not _fast_ok(x, float("-inf"), float("inf")):
            V.check_finite(name, x)


def _check_exponents(alpha, beta) -> None:
    """TOOD's metric s ** alpha * u ** beta needs finite alpha, beta >= 0."""
    V.check_number("alpha", alpha, low=0)
    V.check_number("beta", beta, low=0)


class TaskAlignedAssigner(BaseAssigner):
    """Task-aligned assigner with ultralytics / mmdet presets; see the module docstring.

    Explicit arguments (default None = "take it from ``preset``") override the preset. Build from a
    config: ``build_assigner(dict(type="TaskAlignedAssigner", preset="ultralytics", topk=10))``.
    ``preset`` None means ``"ultralytics"``, or ``"mmdet"`` when ``iou_calculator`` is given:
    ``iou_calculator=dict(type="BboxOverlaps2D")`` (mmdet configs) is accepted and means ``overlap="iou"``,
    so an mmdet config ``dict(type="TaskAlignedAssigner", topk=13)`` plus its iou_calculator builds the
    mmdet behaviour. ``method`` ("auto", "sparse", "window", "dense", "blocked") and ``max_chunk_mib``
    (None: 256 on CPU, 2048 on accelerators) choose the computation, never the result (module docstring).
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
            kind = dict(iou_calculator).get("type", None)
            if kind not in ("BboxOverlaps2D", "mmdet.BboxOverlaps2D"):
                raise ValueError(f"iou_calculator must be dict(type='BboxOverlaps2D'), got {iou_calculator!r}")
            if overlap not in (None, "iou"):
                raise ValueError(f"iou_calculator=BboxOverlaps2D contradicts overlap={overlap!r}")
            overlap = "iou"
        given = dict(topk=topk, alpha=alpha, beta=beta, candidate_test=candidate_test, inside_eps=inside_eps,
                     candidate_stage=candidate_stage, widen_small_gt=widen_small_gt, strides=strides,
                     require_positive_metric=require_positive_metric, overlap=overlap, conflict=conflict,
                     topk2=topk2, tie_break=tie_break, eps=eps, neg_overlap=neg_overlap)
        cfg = dict(TAL_PRESETS[preset])
        cfg.update({k: v for k, v in given.items() if v is not None})
        cfg["method"] = method
        self.preset = preset
        self.num_classes = V.check_number("num_classes", num_classes, low=1, integer=True, allow_none=True)
        max_chunk_mib = V.check_number("max_chunk_mib", max_chunk_mib, low=0, low_open=True, allow_none=True)
        self.max_chunk_mib = None if max_chunk_mib is None else float(max_chunk_mib)
        for key, value in cfg.items():
            setattr(self, key, value)
        if self.strides is not None and not isinstance(self.strides, (list, tuple)):
            raise V.ParameterTypeError(f"strides must be a list of positive numbers, got {self.strides!r}")
        self.strides = tuple(float(V.check_number(f"strides[{i}]", s, low=0, low_open=True))
                             for i, s in enumerate(self.strides or ()))
        self._check_config()

    def _check_config(self) -> None:
        for name, allowed in _CHOICES.items():
            V.check_choice(name, getattr(self, name), allowed)
        self.topk = V.check_number("topk", self.topk, low=1, integer=True)
        self.topk2 = V.check_number("topk2", self.topk2, low=1, integer=True, allow_none=True)
        # a NaN or negative exponent gives NaN / Inf metrics (0 ** -1), never an error downstream
        _check_exponents(self.alpha, self.beta)
        V.check_number("inside_eps", self.inside_eps, low=0)
        V.check_number("eps", self.eps, low=0)
        V.check_number("neg_overlap", self.neg_overlap)
        self.widen_small_gt = V.check_flag("widen_small_gt", self.widen_small_gt)
        self.require_positive_metric = V.check_flag("require_positive_metric", self.require_positive_metric)
        if self.widen_small_gt and not self.strides:
            raise ValueError("widen_small_gt=True needs strides (the side is widened to strides[1])")
        if self.method == "sparse" and not self._sparse_ok():
            raise ValueError("method='sparse' needs candidate_stage='before_topk'")
        if self.method == "window" and not self._window_ok():
            raise ValueError("method='window' needs candidate_stage='after_topk', require_positive_metric=True "
                             "and tie_break='index'")

    def _sparse_ok(self) -> bool:
        return self.candidate_stage == "before_topk"

    def _window_ok(self) -> bool:
        return self.candidate_stage == "after_topk" and self.require_positive_metric and self.tie_break == "index"

    def _chunk_mib(self, device: torch.device) -> float:
        """Temporary-memory budget of one block: ``max_chunk_mib``, or by default 256 MiB on CPU and
        2 GiB on accelerators (fewer, larger kernels; ultralytics' dense path holds several
        ``[B, M, A]`` tensors at once)."""
        if self.max_chunk_mib is not None:
            return self.max_chunk_mib
        return 256.0 if device.type == "cpu" else 2048.0

    def _pick_method(self, device: torch.device) -> str:
        """``"auto"``: the sparse path wherever it applies (on an H100 at B=64, M=200 it took 0.68x
        ultralytics' time and 0.14x its memory, against 2.7x for the blocked path); otherwise the
        sync-free blocked path on accelerators and the window / dense paths on CPU."""
        if self.method != "auto":
            return self.method
        if self._sparse_ok():
            return "sparse"
        if device.type != "cpu":
            return "blocked"
        return "window" if self._window_ok() else "dense"

    @property
    def min_candidate_size(self) -> Optional[float]:
        """Side length small GTs are widened to for the inside test (ultralytics ``stride_val``)."""
        if not self.widen_small_gt:
            return None
        return self.strides[1] if len(self.strides) > 1 else self.strides[0]

    # ------------------------------------------------------------------ per image (mmdet interface)
    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, alpha: Optional[float] = None,
               beta: Optional[float] = None) -> AssignResult:
        """Assign one image.

        pred_instances: ``priors`` [A, 4] xyxy boxes (their centres are the anchor points; [A, 2]
        points are accepted too), ``bboxes`` [A, 4] decoded xyxy, ``scores`` [A, C] probabilities.
        gt_instances: ``bboxes`` [M, 4] xyxy, ``labels`` [M]. Returns an AssignResult with extras
        ``assign_metrics`` [A], ``target_scores`` [A, C] and ``target_boxes`` [A, 4].
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
        gt_boxes = V.tensor_input("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"),
                                  ("M", 4), floating=True, empty_rows=True)
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances")
        V.check_same_device(priors=priors, bboxes=bboxes, scores=scores, gt_bboxes=gt_boxes, gt_labels=gt_labels)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), num_classes=V.num_classes_of(scores),
                                   rows_like=("gt_instances.bboxes", gt_boxes))
        if V.value_checks_enabled():   # named as the caller passed them (assign_batch checks again, quickly)
            _check_values(scores, bboxes, priors,
                          ("pred_instances.scores", "pred_instances.bboxes", "pred_instances.priors"))
        V.check_boxes("gt_instances.bboxes", gt_boxes)
        points = priors if priors.shape[1] == 2 else box_centers(priors[:, :4])
        num_gts = gt_boxes.shape[0]
        if priors.shape[0] == 0:   # no priors, nothing to assign (empty scores need not even say C)
            gt_boxes, gt_labels = gt_boxes[:0], gt_labels[:0]
        batch = self.assign_batch(scores[None], bboxes[None], points, gt_labels[None], gt_boxes[None], None,
                                  alpha=alpha, beta=beta)
        result = batch[0]
        result.num_gts = num_gts
        return result

    # ------------------------------------------------------------------ batched (ultralytics interface)
    @torch.no_grad()
    def assign_batch(self, pred_scores: Tensor, pred_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                     gt_bboxes: Tensor, gt_mask: Optional[Tensor] = None, alpha: Optional[float] = None,
                     beta: Optional[float] = None) -> BatchAssignResult:
        """Assign a padded batch.

        pred_scores [B, A, C] probabilities, pred_bboxes [B, A, 4] xyxy, anchor_points [A, 2],
        gt_labels [B, M] or [B, M, 1], gt_bboxes [B, M, 4] xyxy, gt_mask [B, M] or [B, M, 1]
        (None = all valid), all in one coordinate frame (pixels for the ultralytics preset, whose
        strides / widening are in pixels). Returns a BatchAssignResult: gt_inds [B, A] (1-based
        padded GT index, 0 negative), labels [B, A] (-1 non-positive), max_overlaps [B, A], extras
        ``target_boxes`` [B, A, 4], ``target_scores`` [B, A, C], ``assign_metrics`` [B, A]; ``fg_mask``.
        Half-precision inputs are computed in float32. M == 0 / all GTs masked: every anchor negative.
        """
        scores, pred, points, labels, gts, mask = self._check_batch(pred_scores, pred_bboxes, anchor_points,
                                                                    gt_labels, gt_bboxes, gt_mask)
        gt_bboxes = V.as_tensor("gt_bboxes", gt_bboxes)   # mmdet HorizontalBoxes: its tensor
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        _check_exponents(alpha, beta)
        B, A, C = scores.shape
        M = gts.shape[1]
        method = self._pick_method(scores.device)
        if method == "blocked":
            assign = self._blocked_assignment(scores, pred, points, labels, gts, mask, alpha, beta)
        else:
            rows = torch.nonzero(mask.reshape(-1)).squeeze(1)                           # [G] flat b * M + m
            levels = None
            if method == "window" and beta > 0 and rows.numel():
                levels = ops.detect_grid(points, self.strides)
            if levels is not None:
                pairs = self._window_pairs(scores, pred, points, labels, gts, rows, alpha, beta, levels)
            elif method in ("dense", "window"):
                pairs = self._dense_pairs(scores, pred, points, labels, gts, mask, rows, alpha, beta)
            else:
                pairs = self._sparse_pairs(scores, pred, points, labels, gts, rows, alpha, beta)
            assign = ops.resolve_conflicts(pairs, B, A, M, self.conflict)
        if self.topk2 is not None and self.topk2 != self.topk:
            assign = ops.keep_topk2(assign, B, A, M, self.topk2, stable=self.tie_break == "index",
                                    max_elems=int(self._chunk_mib(scores.device) * 2**20 / _BYTES_PER_DENSE_PAIR))
        return self._build_result(assign, scores, labels, gt_bboxes, mask, B, A, M, C)

    def _check_batch(self, pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask):
        pred_scores = V.tensor_input("pred_scores", pred_scores, ("B", "A", "C"), floating=True)
        pred_bboxes = V.tensor_input("pred_bboxes", pred_bboxes, ("B", "A", 4), floating=True)
        anchor_points = V.tensor_input("anchor_points", anchor_points, ("A", 2), floating=True)
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 4), floating=True)
        # the anchors are fixed by the model: name the tensor that disagrees with the others
        V.check_agree("A", [("anchor_points", anchor_points, 0), ("pred_scores", pred_scores, 1),
                            ("pred_bboxes", pred_bboxes, 1)])
        V.check_agree("B", [("pred_scores", pred_scores, 0), ("pred_bboxes", pred_bboxes, 0),
                            ("gt_bboxes", gt_bboxes, 0)])
        B, A, C = pred_scores.shape
        if self.num_classes is not None and C != self.num_classes:
            raise ValueError(f"pred_scores must have num_classes={self.num_classes} columns, got shape "
                             f"{tuple(pred_scores.shape)}")
        # float labels (ultralytics' [B, M, 1]) are read by the shared check: integral values only
        V.check_same_device(pred_scores=pred_scores, pred_bboxes=pred_bboxes, anchor_points=anchor_points,
                            gt_labels=gt_labels, gt_bboxes=gt_bboxes, gt_mask=gt_mask)
        labels, gts, mask = check_padded_gts(gt_labels, gt_bboxes, gt_mask, V.num_classes_of(pred_scores, 1))
        if V.value_checks_enabled():
            _check_values(pred_scores, pred_bboxes, anchor_points)
        dtype = torch.float64 if torch.float64 in (pred_scores.dtype, pred_bboxes.dtype, gt_bboxes.dtype,
                                                   anchor_points.dtype) else torch.float32
        return (pred_scores.to(dtype), pred_bboxes.to(dtype), anchor_points.to(dtype), labels, gts.to(dtype),
                mask)

    # ------------------------------------------------------------------ candidate pairs
    def _pair_values(self, scores, pred, labels, gts, row, anchor, alpha, beta, M):
        """Overlap and metric of pairs. row [P] flat GT rows, anchor [P] -> (overlap [P], metric [P])."""
        A, C = scores.shape[1], scores.shape[2]
        b = torch.div(row, M, rounding_mode="floor")
        flat_anchor = b * A + anchor
        # gathered as [4, P] so that each coordinate is a contiguous row (fast element-wise maths)
        gt_box = gts.reshape(-1, 4).t().index_select(1, row).t()                       # [P, 4]
        pred_box = pred.reshape(-1, 4).t().index_select(1, flat_anchor).t()
        score = scores.reshape(-1).index_select(0, flat_anchor * C + labels.reshape(-1).index_select(0, row))
        overlap = ops.pair_overlaps(gt_box, pred_box, self.overlap)
        return overlap, ops.alignment_metric(score, overlap, alpha, beta)

    def _test_boxes(self, gts: Tensor, rows: Tensor) -> Tensor:
        """Candidate-test boxes of the valid GT rows. -> [G, 4]"""
        return ops.widened_candidate_boxes(gts.reshape(-1, 4).index_select(0, rows), self.min_candidate_size)

    def _sparse_pairs(self, scores, pred, points, labels, gts, rows, alpha, beta) -> ops.PairTable:
        """Candidate pairs from the grid cells (or the chunked inside test), ranked per GT."""
        M = gts.shape[1]
        test_boxes = self._test_boxes(gts, rows)
        inclusive = self.candidate_test == "inclusive"
        levels = ops.detect_grid(points, self.strides) if rows.numel() else None
        if levels is not None:
            local, anchor = ops.grid_candidate_pairs(points, levels, test_boxes, self.inside_eps, inclusive)
        else:
            budget = int(self._chunk_mib(points.device) * 2**20 / _BYTES_PER_INSIDE_TEST)
            local, anchor = ops.chunked_candidate_pairs(points, test_boxes, self.inside_eps, inclusive, budget)
        row = rows.index_select(0, local)
        # pair maths in blocks, so the element-wise temporaries stay within max_chunk_mib
        step = max(1, int(self._chunk_mib(points.device) * 2**20 / _BYTES_PER_DENSE_PAIR))
        values = [self._pair_values(scores, pred, labels, gts, row[lo:lo + step], anchor[lo:lo + step], alpha, beta, M)
                  for lo in range(0, max(row.numel(), 1), step)]
        overlap, metric = (torch.cat(v) for v in zip(*values))
        if self.tie_break == "torch":
            # ultralytics' torch.topk over the dense row (0 off the candidates), rebuilt only where tied
            budget = int(self._chunk_mib(points.device) * 2**20 / _BYTES_PER_DENSE_PAIR)
            selected = ops.reference_topk(local, anchor, metric, rows.numel(), points.shape[0], self.topk, budget)
        else:
            selected = ops.rank_in_segments(local, metric, rows.numel(), nonnegative=True) < self.topk
        if self.require_positive_metric:
            selected &= metric > 0
        return ops.PairTable(row, anchor, overlap, metric, selected)

    def _dense_pairs(self, scores, pred, points, labels, gts, mask, rows, alpha, beta) -> ops.PairTable:
        """Blocks of one image's GT rows against every anchor ([g, A] within ``max_chunk_mib``);
        returns the candidate (inside) pairs with their top-k flags."""
        B, A = scores.shape[:2]
        step = max(1, int(self._chunk_mib(points.device) * 2**20 / _BYTES_PER_DENSE_PAIR) // max(A, 1))
        parts, first = [], 0
        for b, count in enumerate(mask.sum(1).tolist()):                               # host sync
            image_rows, first = rows[first:first + count], first + count
            for lo in range(0, count, step):
                row = image_rows[lo:lo + step]
                parts.append(self._dense_block(scores[b], pred[b], points, labels.reshape(-1).index_select(0, row),
                                               gts.reshape(-1, 4).index_select(0, row), row, alpha, beta))
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=points.device)
            flt = torch.zeros(0, dtype=scores.dtype, device=points.device)
            return ops.PairTable(empty, empty, flt, flt, empty.bool())
        return ops.PairTable(*(torch.cat(cols) for cols in zip(*parts)))

    def _dense_block(self, scores, pred, points, labels, gt_boxes, row, alpha, beta) -> ops.PairTable:
        """scores [A, C], pred [A, 4], points [A, 2] of one image; labels [g], gt_boxes [g, 4] of its
        GT rows ``row`` [g] -> the block's inside pairs."""
        chosen, inside, overlap, metric = self._select_dense(scores.index_select(1, labels).t(), pred[None], points,
                                                             gt_boxes, None, alpha, beta)      # [g, A]
        r, a = torch.nonzero(inside, as_tuple=True)
        return ops.PairTable(row.index_select(0, r), a, overlap[r, a], metric[r, a], chosen[r, a])

    def _select_dense(self, score, pred, points, gt_boxes, valid, alpha, beta):
        """Candidate test, metric and top-k of every (GT, anchor) pair of a block.

        score [..., g, A] the GT class's probability per anchor, pred [..., 1, A, 4], points [A, 2],
        gt_boxes [..., g, 4], valid [..., g] bool or None -> (chosen, inside, overlap, metric), each
        [..., g, A]; overlap and metric are 0 off the candidates (``inside``).
        """
        inside = ops.centres_inside(points[:, 0], points[:, 1],
                                    ops.widened_candidate_boxes(gt_boxes, self.min_candidate_size)[..., None, :],
                                    self.inside_eps, self.candidate_test == "inclusive")
        if valid is not None:
            inside &= valid[..., None]
        overlap = ops.pair_overlaps(gt_boxes[..., None, :], pred, self.overlap)
        metric = ops.alignment_metric(score, overlap, alpha, beta)
        stable = self.tie_break == "index"
        if self.candidate_stage == "before_topk":
            # as ultralytics: metrics exist on candidates only, the rest of the row is 0
            metric = metric.masked_fill(~inside, 0)
            ranked = metric.masked_fill(~inside, -1.0) if stable else metric
        else:
            ranked = metric
            metric = metric.masked_fill(~inside, 0)
        overlap = overlap.masked_fill(~inside, 0)
        chosen = ops.topk_dense(ranked.flatten(0, -2), self.topk, stable).view(inside.shape) & inside
        if self.require_positive_metric:
            chosen &= metric > 0
        return chosen, inside, overlap, metric

    def _blocked_assignment(self, scores, pred, points, labels, gts, mask, alpha, beta) -> ops.AnchorAssignment:
        """Dense ``[B, g, A]`` blocks of GTs with a static block size, folded into a running per-anchor
        summary: no ``nonzero``, no data-dependent shape, no host sync (the accelerator path)."""
        B, A, C = scores.shape
        M = gts.shape[1]
        step = max(1, int(self._chunk_mib(scores.device) * 2**20 / _BYTES_PER_BLOCKED_PAIR) // max(B * A, 1))
        by_class = scores.transpose(1, 2)                                                  # [B, C, A]
        # padding rows may hold any label: clamp so the gather stays in range (they are masked out)
        labels = labels.clamp(0, max(C - 1, 0))
        state = ops.init_block_state(B, A, scores.dtype, scores.device)
        for lo in range(0, M if C else 0, step):
            hi = min(M, lo + step)
            score = by_class.gather(1, labels[:, lo:hi, None].expand(-1, -1, A))            # [B, g, A]
            chosen, inside, overlap, metric = self._select_dense(score, pred[:, None], points, gts[:, lo:hi],
                                                                 mask[:, lo:hi], alpha, beta)
            if self.conflict == "all_gts":
                conflict = overlap
            else:
                conflict = overlap.masked_fill(~chosen, float("-inf"))
            state = ops.update_block_state(state, lo, chosen, conflict, overlap, metric)
        return ops.finish_block_state(state)

    def _window_pairs(self, scores, pred, points, labels, gts, rows, alpha, beta, levels) -> ops.PairTable:
        """Top-k over all anchors without ``[B, M, A]`` work (``candidate_stage="after_topk"`` with a
        positive metric required, grid anchors, beta > 0).

        Only anchors whose predicted box intersects the GT have a positive overlap, hence a positive
        metric; every other anchor has metric 0 and can never be a positive. Those anchors lie in a
        window around the GT, widened per image and level by how far the predicted boxes reach from
        their anchor points (:func:`_tal_ops.prediction_reach`), and the window's grid cells are
        enumerated. Ranking the metric over these pairs (ties to the lowest anchor index) gives the
        same top-k positives as ranking all anchors. Returns the candidate (inside) pairs.
        """
        A, M = pred.shape[1], gts.shape[1]
        reach = ops.prediction_reach(points, pred, levels)                                # [B, L, 4]
        gt_rows = gts.reshape(-1, 4).index_select(0, rows)                                 # [G, 4]
        test_boxes = ops.widened_candidate_boxes(gt_rows, self.min_candidate_size)
        image = torch.div(rows, M, rounding_mode="floor")
        image_offset = image * A
        lo, n_xy = ops.grid_cells(levels, ops.overlap_windows(gt_rows, reach.index_select(0, image)))
        cum = torch.cumsum((n_xy[..., 0] * n_xy[..., 1]).sum(1), 0).tolist()              # host sync
        budget = max(1, int(self._chunk_mib(points.device) * 2**20 / _BYTES_PER_WINDOW_PAIR))
        inclusive = self.candidate_test == "inclusive"
        # coordinate-major copies, so the intersection prefilter gathers contiguous rows
        pred_t, gt_t = pred.reshape(-1, 4).t().contiguous(), gt_rows.t().contiguous()
        C = scores.shape[2]
        flat_scores, row_labels = scores.reshape(-1), labels.reshape(-1).index_select(0, rows)
        parts, start = [], 0
        while start < len(cum):
            # whole GT rows per block (each is ranked inside its block), at most ``budget`` pairs if possible
            done = cum[start - 1] if start else 0
            end = max(start + 1, bisect.bisect_right(cum, done + budget, lo=start))
            local, flat = ops.enumerate_cells(levels, lo[start:end], n_xy[start:end], image_offset[start:end])
            local = local + start
            pred4, gt4 = pred_t.index_select(1, flat), gt_t.index_select(1, local)        # [4, P]
            # exact prefilter: without a positive-area intersection the overlap, hence the metric, is 0
            hit = torch.nonzero(ops.boxes_intersect(pred4, gt4)).squeeze(1)
            local, flat = local.index_select(0, hit), flat.index_select(0, hit)
            overlap = ops.pair_overlaps(gt4.index_select(1, hit).t(), pred4.index_select(1, hit).t(), self.overlap)
            score = flat_scores.index_select(0, flat * C + row_labels.index_select(0, local))
            metric = ops.alignment_metric(score, overlap, alpha, beta)
            row = rows.index_select(0, local)
            anchor = flat - image_offset.index_select(0, local)
            # only positive metrics can be selected (ties to the lowest anchor index among the ranked)
            selected = ops.segment_topk(local - start, metric, end - start, self.topk) & (metric > 0)
            pts = points.index_select(0, anchor)
            inside = ops.centres_inside(pts[:, 0], pts[:, 1], test_boxes.index_select(0, local),
                                        self.inside_eps, inclusive)
            keep = torch.nonzero(inside).squeeze(1)
            parts.append(ops.PairTable(row.index_select(0, keep), anchor.index_select(0, keep),
                                       overlap.index_select(0, keep), metric.index_select(0, keep),
                                       selected.index_select(0, keep)))
            start = end
        return ops.PairTable(*(torch.cat(cols) for cols in zip(*parts)))

    # ------------------------------------------------------------------ outputs
    def _build_result(self, assign: ops.AnchorAssignment, scores, labels, gt_bboxes, mask, B, A, M, C):
        """Per-anchor assignment -> BatchAssignResult (targets written once, no [B, M, A] tensor)."""
        fg = assign.fg
        anchor_b = torch.arange(B, device=fg.device)[:, None].expand(B, A).reshape(-1)       # [B * A]
        if M:
            gid = anchor_b * M + assign.gt                                             # [B * A]
            gt_label = labels.reshape(-1).index_select(0, gid)
            gt_box = gt_bboxes.reshape(-1, 4).index_select(0, gid)
            norm = ops.normalized_scores(assign, B, A, M, self.eps, gid)
        else:
            gt_label = torch.zeros(B * A, dtype=torch.long, device=fg.device)
            gt_box = gt_bboxes.new_zeros(B * A, 4)
            norm = torch.zeros_like(assign.metric)
        target_scores = ops.zeros_buffer((B * A, C), scores.dtype, fg.device)
        if C and fg.device.type == "cpu":
            # only the positive rows: the OS-zeroed pages of the other rows are never written
            pos = torch.nonzero(fg).squeeze(1)
            target_scores.view(-1).index_copy_(0, pos * C + gt_label.index_select(0, pos).clamp(0, C - 1),
                                               norm.index_select(0, pos))
        elif C:
            target_scores.scatter_(1, gt_label.clamp(0, C - 1)[:, None], norm[:, None])      # no sync
        target_boxes = gt_box.masked_fill(~fg[:, None], 0)
        num_gts = mask.sum(1)                                                          # [B]
        # mmdet returns 0 (not its -INF sentinel) for every prior of an image without GT
        fill = torch.where(num_gts > 0, self.neg_overlap, 0.0).to(assign.overlap.dtype)
        max_overlaps = torch.where(fg, assign.overlap, fill.index_select(0, anchor_b))
        return BatchAssignResult(
            num_gts,
            torch.where(fg, assign.gt + 1, 0).view(B, A),
            max_overlaps.view(B, A),
            torch.where(fg, gt_label, -1).view(B, A),
            target_boxes=target_boxes.view(B, A, 4),
            target_scores=target_scores.view(B, A, C),
            assign_metrics=assign.metric.masked_fill(~fg, 0).view(B, A),
        )
