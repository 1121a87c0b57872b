"""MaxIoUAssigner: IoU thresholds between every prior and every GT (mmdet 3.3.0 semantics).

Steps (the order matters, later steps overwrite earlier ones):

1. every prior starts as ignored (``gt_inds = -1``);
2. priors whose best IoU over all GTs lies in the negative range become negatives (0):
   ``0 <= iou < neg_iou_thr`` for a float, ``lo <= iou < hi`` for a ``(lo, hi)`` tuple;
3. priors whose best IoU is ``>= pos_iou_thr`` become positives of that GT (first GT on ties);
4. low-quality matches (``match_low_quality=True``): every GT whose best IoU is ``>= min_pos_iou``
   claims its best prior(s) (all priors tying its best IoU when ``gt_max_assign_all``, else the
   first one), overwriting steps 2-3; GTs are applied in index order, so the last GT wins.

Ignore regions (``ignore_iof_thr > 0`` and ``gt_instances_ignore.bboxes`` given): priors whose
largest IoF with an ignore box is ``> ignore_iof_thr`` get IoU -1 with every GT before step 2, so
they stay ignored. IoF is over the prior's area (``ignore_wrt_candidates=True``) or over the
ignore box's area (``False``). ``ignore_iof_thr == 0`` disables ignoring, as in mmdet.

``max_overlaps`` (sentinels, as mmdet): the best IoU over GTs; -1 for priors inside an ignore
region; 0 everywhere when there is no GT.

mmdet quirk #8289, reproduced by the default ``low_quality_mode="mmdet"``: with ``min_pos_iou=0``
a GT that overlaps no prior (best IoU 0) claims *every* prior with IoU 0 to it in step 4, turning
background into positives. ``low_quality_mode="nonzero"`` keeps mmdet's overwrite order but skips
GTs whose best IoU is 0; ``low_quality_mode="argmax"`` is the detectron2 / torchvision matcher
rule: a prior that is some GT's best match becomes positive but keeps its own argmax-IoU GT
(no overwrite), and GTs with best IoU 0 are skipped.

Memory: :meth:`MaxIoUAssigner.assign` computes the [M, A] overlaps a block of GTs at a time
(:func:`assign_overlap_blocks`): per prior only the running best IoU and its first GT, and per block
the GTs' own best priors (step 4) cross blocks, so the result is the whole matrix's, bit for bit.

Compatibility knobs: ``gpu_assign_thr > 0`` moves the computation to the CPU when an image has more
GTs than that (mmdet's memory guard; results are identical). ``iou_calculator`` is read by
:func:`~detassign.assigners.base.parse_iou_calculator` (mmdet's ``dict(type="BboxOverlaps2D", scale=1.,
dtype=None)``, mmrotate's ``RBboxOverlaps2D`` or a callable); with ``dtype="fp16"`` boxes are divided by
``scale`` and rounded to float16, then the IoU is computed in float32 (mmdet computes it in float16
arithmetic, so ties can differ). Priors and boxes may carry a fifth (score) column, which is
ignored, and mmdet ``HorizontalBoxes`` are unwrapped. Deviations from mmdet: an integer
``neg_iou_thr`` is treated as a float and a list as a tuple (mmdet silently assigns no negatives for
those); ``gt_instances.labels`` may be absent, in which case ``labels`` is None.

``perm_repeat_gt_cfg=dict(iou_thr=0.97, perm_range=0.01)`` (mmdet's V3Det configs): GTs that repeat
exactly are scaled by random factors in ``[1 - perm_range, 1 + perm_range]`` before the IoU, so
that each copy gets its own priors; a draw is retried (up to 5 times, with a shrinking range) when a
box inverts or its IoU with the original falls below ``iou_thr``, as in mmdet, including mmdet's
retries testing against 0.97 whatever ``iou_thr`` says. It draws from torch's global generator in
mmdet's order, so with the same seed the result is mmdet's.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as V
from ..boxes import pairwise_iof, pairwise_iou
from ..structures import AssignResult, labels_from_gt_inds
from ._blocks import row_blocks
from .base import BaseAssigner, parse_iou_calculator

__all__ = ["MaxIoUAssigner", "assign_wrt_overlaps", "assign_overlaps_dense", "LOW_QUALITY_MODES",
           "overlap_matrix", "last_gt_wins", "best_prior_hits", "ignored_priors"]

LOW_QUALITY_MODES = ("mmdet", "nonzero", "argmax")
NegThr = Union[float, Tuple[float, float]]


# ----------------------------------------------------------------------------- configuration
def normalize_neg_iou_thr(neg_iou_thr) -> NegThr:
    """A number -> float, a 2-sequence -> (lo, hi) tuple of floats with lo <= hi; anything else raises.

    NaN is refused: ``iou < nan`` is never true, so every negative would silently become "ignore".
    """
    if isinstance(neg_iou_thr, (tuple, list)) and len(neg_iou_thr) == 2:
        lo = float(V.check_number("neg_iou_thr[0]", neg_iou_thr[0], finite=False))
        hi = float(V.check_number("neg_iou_thr[1]", neg_iou_thr[1], finite=False))
        if lo > hi:
            raise ValueError(f"neg_iou_thr must be a number or a (lo, hi) pair with lo <= hi, got {neg_iou_thr!r}")
        return lo, hi
    if isinstance(neg_iou_thr, bool) or not isinstance(neg_iou_thr, numbers.Real):
        raise V.ParameterTypeError(f"neg_iou_thr must be a number or a (lo, hi) pair, got {neg_iou_thr!r}")
    return float(V.check_number("neg_iou_thr", neg_iou_thr, finite=False))


def check_low_quality_mode(mode: str) -> str:
    return V.check_choice("low_quality_mode", mode, LOW_QUALITY_MODES)


# ----------------------------------------------------------------------------- inputs
def box_tensor(name: str, boxes, lead: Tuple = ("N",)) -> Tensor:
    """mmdet boxes ``[..., N, 4]`` or ``[..., N, 5]`` (score column dropped); BaseBoxes unwrapped.

    Per image (one leading dimension) an empty tensor of any dtype or rank is zero boxes [0, 4].
    """
    boxes = V.tensor_input(name, boxes, tuple(lead) + (None,), empty_rows=len(lead) == 1)
    if len(lead) == 1 and boxes.shape[0] == 0 and boxes.shape[1] not in (4, 5):   # no boxes, any rank
        boxes = boxes.new_zeros((0, 4), dtype=boxes.dtype if boxes.is_floating_point() else torch.float32)
    if boxes.shape[-1] not in (4, 5):
        raise ValueError(f"{name} must have shape [{', '.join(map(str, lead))}, 4] xyxy (or 5 columns with a "
                         f"score), got {tuple(boxes.shape)}")
    return boxes[..., :4]


def overlap_matrix(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """Pairwise IoU or IoF (over ``boxes1``'s area). [..., N, 4], [..., M, 4] xyxy -> [..., N, M].

    Bit-identical to mmdet's ``bbox_overlaps``; see :func:`detassign.boxes.pairwise_iou`, which
    computes one coordinate at a time so no temporary exceeds [..., N, M].
    """
    return (pairwise_iof if mode == "iof" else pairwise_iou)(boxes1, boxes2, eps=eps)


def jitter_boxes(boxes: Tensor, iou_thr: float, perm_range: float, max_retries: int = 5) -> Tensor:
    """Scale N copies of one box by factors drawn in ``[1 - perm_range, 1 + perm_range]``. [N, 4] -> [N, 4].

    A draw is rejected when a box gets a non-positive side or an IoU with the original below the
    threshold; a retry shrinks the range by 0.001 per retry already made and tests against 0.97 (both
    as mmdet's recursive ``_perm_box`` does); after ``max_retries`` retries the last draw is kept.
    """
    attempt = 0
    while True:
        factor = torch.empty(boxes.shape[0], 4, dtype=boxes.dtype, device=boxes.device)
        moved = boxes * factor.uniform_(1 - perm_range, 1 + perm_range)
        wh = moved[:, 2:] - moved[:, :2]
        valid = not bool((wh <= 0).any()) and not bool((overlap_matrix(boxes.unique(dim=0), moved) < iou_thr).any())
        if valid or attempt == max_retries:
            return moved
        perm_range, iou_thr = max(perm_range - attempt * 0.001, 1e-3), 0.97
        attempt += 1


def perm_repeated_gts(gt_bboxes: Tensor, iou_thr: float = 0.97, perm_range: float = 0.01) -> Tensor:
    """mmdet's ``perm_repeat_bboxes``: jitter every group of identical GT boxes. [M, 4] -> [M, 4] (a copy)."""
    boxes = gt_bboxes.clone()
    for box in gt_bboxes.unique(dim=0):                      # sorted unique rows, mmdet's order
        same = (boxes == box).all(dim=-1)
        if int(same.sum()) == 1:
            continue
        boxes[same] = jitter_boxes(boxes[same], iou_thr, perm_range)
    return boxes


def check_perm_cfg(cfg) -> Optional[dict]:
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or set(cfg) - {"iou_thr", "perm_range"}:
        raise ValueError(f"perm_repeat_gt_cfg must be None or dict(iou_thr=..., perm_range=...), got {cfg!r}")
    if "iou_thr" in cfg:
        V.check_number("perm_repeat_gt_cfg['iou_thr']", cfg["iou_thr"])
    if "perm_range" in cfg:
        V.check_number("perm_repeat_gt_cfg['perm_range']", cfg["perm_range"], low=0, high=1, high_open=True)
    return dict(cfg)


def ignored_priors(priors: Tensor, ignore_boxes: Tensor, iof_thr: float, wrt_candidates: bool,
                   ignore_mask: Optional[Tensor] = None) -> Tensor:
    """Priors inside an ignore region. priors [..., A, 4], ignore_boxes [..., K, 4] -> [..., A] bool.

    IoF over the prior's area (``wrt_candidates``) or over the ignore box's area; a prior is ignored
    when its largest IoF is ``> iof_thr``. Padded ignore boxes (``ignore_mask`` [..., K] False) count
    as IoF 0; K == 0 ignores nothing.
    """
    if ignore_boxes.shape[-2] == 0:
        return torch.zeros(priors.shape[:-1], dtype=torch.bool, device=priors.device)
    if wrt_candidates:
        iof = overlap_matrix(priors, ignore_boxes, "iof").transpose(-1, -2)   # [..., K, A]
    else:
        iof = overlap_matrix(ignore_boxes, priors, "iof")                     # [..., K, A]
    if ignore_mask is not None:
        iof = iof.masked_fill(~ignore_mask.bool()[..., None], 0.0)
    return iof.amax(dim=-2) > iof_thr


# ----------------------------------------------------------------------------- algorithm steps
def negative_mask(max_overlaps: Tensor, neg_iou_thr: NegThr) -> Tensor:
    """Step 2: [..., A] -> [..., A] bool, ``0 <= iou < thr`` or ``lo <= iou < hi``."""
    if isinstance(neg_iou_thr, tuple):
        return (max_overlaps >= neg_iou_thr[0]) & (max_overlaps < neg_iou_thr[1])
    return (max_overlaps >= 0) & (max_overlaps < neg_iou_thr)


def best_prior_hits(overlaps: Tensor, gt_max: Tensor, gt_argmax: Tensor, eligible: Tensor,
                    gt_max_assign_all: bool, allowed: Optional[Tensor] = None) -> Tensor:
    """Which priors each eligible GT claims as its best. overlaps [..., M, A] -> [..., M, A] bool.

    ``gt_max_assign_all``: every prior whose IoU equals the GT's best IoU; otherwise only the GT's
    argmax prior. ``allowed`` [..., A] (GridAssigner's responsible flags) restricts the claim.
    """
    if gt_max_assign_all:
        hits = (overlaps == gt_max[..., None]) & eligible[..., None]
        return hits if allowed is None else hits & allowed[..., None, :]
    if allowed is not None:
        eligible = eligible & torch.gather(allowed, -1, gt_argmax)
    hits = torch.zeros(overlaps.shape, dtype=torch.bool, device=overlaps.device)
    return hits.scatter_(-1, gt_argmax[..., None], eligible[..., None])


def last_gt_wins(hits: Tensor) -> Tensor:
    """[..., M, A] bool -> [..., A] long: 1-based index of the *last* GT claiming each prior, 0 if none.

    This is the result of mmdet's ``for i in range(num_gts): gt_inds[hits[i]] = i + 1`` in one reduction.
    """
    index = torch.arange(1, hits.shape[-2] + 1, dtype=torch.int32, device=hits.device)[:, None]   # [M, 1]
    return torch.where(hits, index, torch.zeros((), dtype=torch.int32, device=hits.device)).amax(dim=-2).long()


def low_quality_claims(overlaps: Tensor, gt_mask: Optional[Tensor], min_pos_iou: float, gt_max_assign_all: bool,
                       mode: str) -> Tensor:
    """Step 4 for a block of GTs. overlaps [..., g, A], gt_mask [..., g] -> [..., A] long: with ``mode="argmax"``
    1 where some GT of the block claims the prior, else the 1-based (within the block) index of the last
    claiming GT, 0 if none."""
    gt_max, gt_argmax = overlaps.max(dim=-1)                          # [..., g] best prior of each GT
    eligible = gt_max >= min_pos_iou
    if gt_mask is not None:
        eligible = eligible & gt_mask
    if mode != "mmdet":
        eligible = eligible & (gt_max > 0)
    hits = best_prior_hits(overlaps, gt_max, gt_argmax, eligible, gt_max_assign_all)
    return hits.any(dim=-2).long() if mode == "argmax" else last_gt_wins(hits)


def low_quality_matches(gt_inds: Tensor, argmax_overlaps: Tensor, overlaps: Tensor, gt_mask: Optional[Tensor],
                        min_pos_iou: float, gt_max_assign_all: bool, mode: str) -> Tensor:
    """Step 4. gt_inds [..., A], argmax_overlaps [..., A], overlaps [..., M, A] -> new gt_inds [..., A]."""
    claims = low_quality_claims(overlaps, gt_mask, min_pos_iou, gt_max_assign_all, mode)
    return apply_claims(gt_inds, argmax_overlaps, claims, mode)


def apply_claims(gt_inds: Tensor, argmax_overlaps: Tensor, claims: Tensor, mode: str) -> Tensor:
    """Overwrite gt_inds [..., A] with the low-quality claims [..., A] of :func:`low_quality_claims`."""
    if mode == "argmax":   # a claimed prior becomes positive but keeps its own argmax GT
        return torch.where(claims > 0, argmax_overlaps + 1, gt_inds)
    return torch.where(claims > 0, claims, gt_inds)


def fold_max(best: Optional[Tuple[Tensor, Tensor]], value: Tensor, index: Tensor) -> Tuple[Tensor, Tensor]:
    """Fold a block's ``max(dim)`` (value, global index) into the running one: an earlier block keeps
    ties and NaN wins, as in a single ``max(dim)`` over all blocks."""
    if best is None:
        return value, index
    take = (value > best[0]) | (value.isnan() & ~best[0].isnan())
    return torch.where(take, value, best[0]), torch.where(take, index, best[1])


def assign_overlaps_dense(overlaps: Tensor, gt_mask: Optional[Tensor] = None, *, pos_iou_thr: float,
                          neg_iou_thr: NegThr, min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                          match_low_quality: bool = True, low_quality_mode: str = "mmdet") -> Tuple[Tensor, Tensor]:
    """Steps 1-4 on padded overlaps. overlaps [..., M, A], gt_mask [..., M] bool -> (gt_inds, max_overlaps) [..., A].

    ``overlaps`` is modified in place where ``gt_mask`` is False (padded rows are set to -inf so they
    never win a maximum). Images without a valid GT are all negative with ``max_overlaps`` 0.
    """
    *lead, M, A = overlaps.shape
    if M == 0 or A == 0:
        normalize_neg_iou_thr(neg_iou_thr)
        zeros = torch.zeros((*lead, A), dtype=torch.long, device=overlaps.device)
        return zeros, overlaps.new_zeros((*lead, A))
    return assign_overlap_blocks([(0, overlaps)], gt_mask, pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr,
                                 min_pos_iou=min_pos_iou, gt_max_assign_all=gt_max_assign_all,
                                 match_low_quality=match_low_quality, low_quality_mode=low_quality_mode)


def assign_overlap_blocks(blocks: Iterable[Tuple[int, Tensor]], gt_mask: Optional[Tensor] = None, *,
                          pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                          gt_max_assign_all: bool = True, match_low_quality: bool = True,
                          low_quality_mode: str = "mmdet") -> Tuple[Tensor, Tensor]:
    """:func:`assign_overlaps_dense` over blocks of GTs, so that [..., M, A] never lives whole.

    ``blocks`` yields (first GT index, overlaps [..., g, A]) in GT order, at least one block with g, A > 0;
    each block is modified in place. gt_mask [..., M] covers all GTs. Per prior only the running best
    IoU and its first GT cross blocks; step 4 only reads each GT's own row and "the last claiming GT
    wins" is a running maximum; so the result is that of one block.
    """
    neg_iou_thr = normalize_neg_iou_thr(neg_iou_thr)
    best, claims = None, None
    for start, overlaps in blocks:
        mask = None if gt_mask is None else gt_mask[..., start:start + overlaps.shape[-2]]
        if mask is not None:
            overlaps.masked_fill_(~mask[..., None], float("-inf"))
        value, index = overlaps.max(dim=-2)                          # [..., A] first GT on ties
        best = fold_max(best, value, index + start)
        if match_low_quality:
            claim = low_quality_claims(overlaps, mask, min_pos_iou, gt_max_assign_all, low_quality_mode)
            if low_quality_mode != "argmax":
                claim = torch.where(claim > 0, claim + start, claim)  # global 1-based GT index
            claims = claim if claims is None else torch.where(claim > 0, claim, claims)   # later GTs win
        del overlaps
    max_overlaps, argmax_overlaps = best
    gt_inds = torch.full_like(argmax_overlaps, -1)
    gt_inds = torch.where(negative_mask(max_overlaps, neg_iou_thr), torch.zeros_like(gt_inds), gt_inds)
    gt_inds = torch.where(max_overlaps >= pos_iou_thr, argmax_overlaps + 1, gt_inds)
    if match_low_quality:
        gt_inds = apply_claims(gt_inds, argmax_overlaps, claims, low_quality_mode)
    if gt_mask is not None:
        has_gt = gt_mask.any(dim=-1, keepdim=True)                    # [..., 1]
        gt_inds = torch.where(has_gt, gt_inds, torch.zeros_like(gt_inds))
        max_overlaps = torch.where(has_gt, max_overlaps, torch.zeros_like(max_overlaps))
    return gt_inds, max_overlaps


def assign_wrt_overlaps(overlaps: Tensor, gt_labels: Optional[Tensor] = None, *, pos_iou_thr: float,
                        neg_iou_thr: NegThr, min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                        match_low_quality: bool = True, low_quality_mode: str = "mmdet") -> AssignResult:
    """MaxIoU assignment from a precomputed overlap matrix (mmdet ``assign_wrt_overlaps``).

    overlaps [M, A] (IoU of GT m with prior a; -1 marks ignored priors), gt_labels [M] or None ->
    AssignResult with gt_inds [A] (1-based, 0 negative, -1 ignore), max_overlaps [A], labels [A]
    (None when ``gt_labels`` is None). Example: overlaps [[0.6, 0.3, 0.0]], pos 0.5, neg 0.4 ->
    gt_inds [1, 0, 0]; with match_low_quality nothing changes (prior 0 is already GT 0's best).
    """
    overlaps = V.tensor_input("overlaps", overlaps, ("M", "A"), floating=True)
    V.check_finite("overlaps", overlaps)
    check_low_quality_mode(low_quality_mode)
    gt_labels = V.labels_input("gt_labels", gt_labels, ("M",), allow_none=True, rows_like=("overlaps", overlaps))
    gt_inds, max_overlaps = assign_overlaps_dense(
        overlaps.clone(), pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr, min_pos_iou=min_pos_iou,
        gt_max_assign_all=gt_max_assign_all, match_low_quality=match_low_quality,
        low_quality_mode=low_quality_mode)
    labels = None if gt_labels is None else labels_from_gt_inds(gt_inds, gt_labels.to(gt_inds.device))
    return AssignResult(overlaps.shape[0], gt_inds, max_overlaps, labels)


# ----------------------------------------------------------------------------- the assigner
class MaxIoUAssigner(BaseAssigner):
    """Assign each prior to the GT of highest IoU, by thresholds (see the module docstring).

    Reads ``pred_instances.priors`` [A, 4] xyxy, ``gt_instances.bboxes`` [M, 4], ``gt_instances.labels``
    [M] and optionally ``gt_instances_ignore.bboxes`` [K, 4].
    """

    def __init__(self, pos_iou_thr: float, neg_iou_thr: NegThr, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True, ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: dict = dict(type="BboxOverlaps2D"), perm_repeat_gt_cfg: Optional[dict] = None,
                 low_quality_mode: str = "mmdet") -> None:
        # NaN thresholds make every comparison false (silently no negatives / positives): refused
        self.pos_iou_thr = float(V.check_number("pos_iou_thr", pos_iou_thr, finite=False))
        self.neg_iou_thr = normalize_neg_iou_thr(neg_iou_thr)
        self.min_pos_iou = float(V.check_number("min_pos_iou", min_pos_iou, finite=False))
        self.gt_max_assign_all = V.check_flag("gt_max_assign_all", gt_max_assign_all)
        self.ignore_iof_thr = float(V.check_number("ignore_iof_thr", ignore_iof_thr, finite=False))
        self.ignore_wrt_candidates = V.check_flag("ignore_wrt_candidates", ignore_wrt_candidates)
        self.match_low_quality = V.check_flag("match_low_quality", match_low_quality)
        self.gpu_assign_thr = V.check_number("gpu_assign_thr", gpu_assign_thr, finite=False)
        # mmrotate's RBboxOverlaps2D: rotated boxes [..., 5] xywhr (see .rotated_calculators)
        self.iou_calculator = parse_iou_calculator(iou_calculator, type(self).__name__)
        self.perm_repeat_gt_cfg = check_perm_cfg(perm_repeat_gt_cfg)
        self.low_quality_mode = check_low_quality_mode(low_quality_mode)

    def _thresholds(self) -> dict:
        return dict(pos_iou_thr=self.pos_iou_thr, neg_iou_thr=self.neg_iou_thr, min_pos_iou=self.min_pos_iou,
                    gt_max_assign_all=self.gt_max_assign_all, match_low_quality=self.match_low_quality,
                    low_quality_mode=self.low_quality_mode)

    def assign_wrt_overlaps(self, overlaps: Tensor, gt_labels: Optional[Tensor] = None) -> AssignResult:
        """mmdet's method form: overlaps [M, A] (-1 marks ignored priors), gt_labels [M] -> AssignResult."""
        return assign_wrt_overlaps(overlaps, gt_labels, **self._thresholds())

    def _on_cpu(self, num_gts: int) -> bool:
        return self.gpu_assign_thr > 0 and num_gts > self.gpu_assign_thr

    def _read_priors(self, pred_instances) -> Tuple[Tensor, dict]:
        """-> (priors [A, 4], extra tensors the overlap computation needs)."""
        priors = box_tensor("pred_instances.priors", V.get_field(pred_instances, "priors", "pred_instances"))
        return priors, {}

    def _overlaps(self, gt_bboxes: Tensor, priors: Tensor, extra: dict) -> Tensor:
        """[M, 4], [A, 4] -> IoU [M, A]."""
        return self.iou_calculator.pairwise(gt_bboxes, priors)

    def _ignore_enabled(self, ignore_boxes: Optional[Tensor], priors: Tensor) -> bool:
        return (self.ignore_iof_thr > 0 and ignore_boxes is not None and ignore_boxes.numel() > 0
                and priors.numel() > 0)

    @torch.no_grad()
    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs) -> AssignResult:
        """Assign every prior of one image: gt_inds [A] (1-based, 0 negative, -1 ignore)."""
        if self.iou_calculator.rotated:
            from .rotated_calculators import rotated_max_iou_assign
            return rotated_max_iou_assign(self, pred_instances, gt_instances, gt_instances_ignore)
        priors, extra = self._read_priors(pred_instances)
        gt_bboxes = box_tensor("gt_instances.bboxes", V.get_field(gt_instances, "bboxes", "gt_instances"), ("M",))
        gt_labels = V.get_field(gt_instances, "labels", "gt_instances", required=False)
        ignore_boxes = None
        if gt_instances_ignore is not None:
            ignore_boxes = getattr(gt_instances_ignore, "bboxes", None)
            if ignore_boxes is not None:
                ignore_boxes = box_tensor("gt_instances_ignore.bboxes", ignore_boxes, ("K",))
        V.check_same_device(priors=priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_bboxes_ignore=ignore_boxes)
        gt_labels = V.labels_input("gt_instances.labels", gt_labels, ("M",), allow_none=True,
                                   rows_like=("gt_instances.bboxes", gt_bboxes))
        V.check_boxes("pred_instances.priors", priors)
        V.check_boxes("gt_instances.bboxes", gt_bboxes)
        V.check_boxes("gt_instances_ignore.bboxes", ignore_boxes)

        device = priors.device
        if self._on_cpu(gt_bboxes.shape[0]):
            priors, gt_bboxes = priors.cpu(), gt_bboxes.cpu()
            extra = {k: v.cpu() for k, v in extra.items()}
            ignore_boxes = None if ignore_boxes is None else ignore_boxes.cpu()
            gt_labels = None if gt_labels is None else gt_labels.cpu()
        if self.perm_repeat_gt_cfg is not None and priors.numel() > 0:
            gt_bboxes = perm_repeated_gts(gt_bboxes, **self.perm_repeat_gt_cfg)
        ignored = None
        if self._ignore_enabled(ignore_boxes, priors):
            ignored = ignored_priors(priors, ignore_boxes, self.ignore_iof_thr, self.ignore_wrt_candidates)  # [A]
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            result = self.assign_wrt_overlaps(self._overlaps(gt_bboxes, priors, extra), gt_labels)
            return _to_device(result, device)

        def blocks():   # the [M, A] overlaps a block of GTs at a time
            for blk in row_blocks(num_gts, self._row_elements(num_priors, extra), multiple=1):  # IoU: arithmetic
                overlaps = self._overlaps(gt_bboxes[blk], priors, extra)                  # [g, A]
                V.check_finite("overlaps", overlaps)
                if ignored is not None:
                    overlaps.masked_fill_(ignored[None, :], -1.0)
                yield blk.start, overlaps
                del overlaps

        gt_inds, max_overlaps = assign_overlap_blocks(blocks(), **self._thresholds())
        labels = None if gt_labels is None else labels_from_gt_inds(gt_inds, gt_labels.to(gt_inds.device))
        return _to_device(AssignResult(num_gts, gt_inds, max_overlaps, labels), device)

    def _row_elements(self, num_priors: int, extra: dict) -> int:
        """Elements of one GT's row of the overlap computation (bounds the blocks of GTs)."""
        return num_priors


def _to_device(result: AssignResult, device: torch.device) -> AssignResult:
    if result.gt_inds.device == device:
        return result
    result.gt_inds = result.gt_inds.to(device)
    result.max_overlaps = result.max_overlaps.to(device)
    if result.labels is not None:
        result.labels = result.labels.to(device)
    return result
