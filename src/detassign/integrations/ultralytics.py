"""detassign inside ultralytics' detection and OBB losses (YOLOv8 / YOLO11 / YOLO26, ultralytics 8.4).

Shape symbols: B batch, A anchor points, M padded GTs per image, C classes.

``v8DetectionLoss.__init__`` builds the module-level name ``TaskAlignedAssigner`` of
``ultralytics.utils.loss``, so replacing that name before the loss is built is a one-line swap::

    import ultralytics.utils.loss
    from detassign.integrations.ultralytics import TaskAlignedAssigner
    ultralytics.utils.loss.TaskAlignedAssigner = TaskAlignedAssigner

:class:`TaskAlignedAssigner` takes ultralytics' constructor and call and returns its 5-tuple in its
conventions; by default it gives ultralytics' result exactly on the same device, crowded scenes with
zero-metric ties included (``tie_break="torch"``: ``torch.topk``'s choice is reproduced on the GT rows
where it is tied, every other row takes the sparse path), at a fraction of its time and memory.

Oriented boxes (OBB): ``v8OBBLoss.__init__`` builds the module-level name ``RotatedTaskAlignedAssigner``,
and :class:`RotatedTaskAlignedAssigner` is the same kind of swap (boxes [..., 5] xywhr, ProbIoU, exact by
default, memory proportional to the candidate pairs)::

    ultralytics.utils.loss.RotatedTaskAlignedAssigner = RotatedTaskAlignedAssigner

Both convert detassign's result with the one :func:`ultralytics_targets` (4 or 5 box columns).

:func:`use` swaps any detassign batched assigner (TaskAligned with any preset, ATSS, SimOTA,
DynamicSoftLabel) into the loss of a live model, trainer or ``YOLO`` object; assigners that return
only indices get the IoU-quality targets of :mod:`detassign.yolo.loss`. An OBB criterion takes the exact
rotated swap (other assigners have no oriented-box adapter here).

Nothing here imports ultralytics at import time; :func:`use` imports ``ultralytics.utils.tal`` to
recognise the stock assigner it replaces.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as V
from ..assigners import _pairs
from ..assigners.rotated_task_aligned import RotatedTaskAlignedAssigner as _CoreRotatedTAL
from ..assigners.task_aligned import TaskAlignedAssigner as _CoreTAL
from ..yolo.loss import loss_priors, targets_from_gt_inds

__all__ = ["TaskAlignedAssigner", "RotatedTaskAlignedAssigner", "AssignerAdapter", "use", "ultralytics_targets"]

UltralyticsTargets = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]

# the largest float32 probability below 1 is 1 - 2**-24: its logit, ~16.64, bounds the recovered logits
_P_MIN, _P_MAX = 2.0 ** -149, 1.0 - 2.0 ** -24


def empty_targets(pd_scores: Tensor, pd_bboxes: Tensor, num_classes: int) -> UltralyticsTargets:
    """ultralytics' answer for M == 0: background everywhere, with its dtypes (labels and GT indices
    come back as float tensors there, like ``pd_scores[..., 0]``)."""
    return (torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_bboxes),
            torch.zeros_like(pd_scores), torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
            torch.zeros_like(pd_scores[..., 0]))


def ultralytics_targets(gt_inds: Tensor, target_scores: Tensor, gt_labels: Tensor,
                        gt_bboxes: Tensor) -> UltralyticsTargets:
    """detassign's result -> ultralytics' 5-tuple (both swaps, horizontal and oriented).

    gt_inds [B, A] (1-based, 0 negative, -1 ignored), target_scores [B, A, C], gt_labels [B, M, 1] or
    [B, M], gt_bboxes [B, M, D] (D = 4 xyxy or 5 xywhr; M >= 1) -> (target_labels [B, A] long,
    target_bboxes [B, A, D], target_scores [B, A, C], fg_mask [B, A] bool, target_gt_idx [B, A] long).
    As in ultralytics, negatives (ignored priors included) point at GT 0 and carry its label and box.
    """
    B, M, D = gt_bboxes.shape
    fg_mask = gt_inds > 0
    target_gt_idx = (gt_inds - 1).clamp(min=0)                                        # [B, A]
    flat = target_gt_idx + torch.arange(B, device=gt_inds.device)[:, None] * M
    labels = gt_labels.reshape(B * M).long()
    target_labels = labels[flat].clamp(min=0)
    target_bboxes = gt_bboxes.reshape(B * M, D)[flat]                                   # [B, A, D]
    return target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx


def _reject_extra(extra: Mapping[str, Any]) -> None:
    if extra:
        raise TypeError(f"unexpected keyword arguments {sorted(extra)}: only the detection assigner call "
                        f"(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) is supported")


class TaskAlignedAssigner(nn.Module):
    """ultralytics' ``TaskAlignedAssigner`` interface over detassign's task-aligned assigner.

    Args (ultralytics' names and defaults): topk, num_classes, alpha, beta, stride (levels' strides
    in layout order; None = [8, 16, 32]; ``stride[1]`` is the side small GTs are widened to for the
    candidate test), eps, topk2 (None = topk). Keyword-only: ``tie_break`` ("torch" = exactly
    ultralytics' choice among tied metrics on the same device; "index" = lowest anchor index, the
    same on every device), ``method`` / ``max_chunk_mib`` (the computation, never the result; see
    :mod:`detassign.assigners.task_aligned`).

    ``forward(pd_scores [B, A, C] probabilities, pd_bboxes [B, A, 4] xyxy px, anc_points [A, 2] px,
    gt_labels [B, M, 1], gt_bboxes [B, M, 4] xyxy px, mask_gt [B, M, 1])`` returns
    ``(target_labels [B, A], target_bboxes [B, A, 4], target_scores [B, A, C], fg_mask [B, A] bool,
    target_gt_idx [B, A])``: negatives carry GT index 0 and GT 0's label and box; M == 0 gives
    background everywhere with ultralytics' dtypes. The attributes ultralytics' losses read or set
    (``topk``, ``topk2``, ``num_classes``, ``alpha``, ``beta``, ``stride``, ``eps``) are read at each
    call. Not reproduced: the per-image retry after a CUDA out-of-memory error (the sparse path holds
    no [B, M, A] tensor), and fp16 scores (AMP on CUDA) are raised to float32 before the power
    ``s ** alpha``, where ultralytics takes it in fp16.
    """

    box_columns = 4   # xyxy

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 stride: Optional[Sequence[float]] = None, eps: float = 1e-9, topk2: Optional[int] = None, *,
                 tie_break: str = "torch", method: str = "auto", max_chunk_mib: Optional[float] = None) -> None:
        super().__init__()
        self.topk = topk
        self.topk2 = topk2 or topk          # ultralytics' reading of None
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.stride = list(stride) if stride is not None else [8, 16, 32]
        self.eps = eps
        self.tie_break = tie_break
        self.method = method
        self.max_chunk_mib = max_chunk_mib
        self.core()  # a bad argument fails here, not at the first training step

    @classmethod
    def like(cls, assigner: Any, **kwargs) -> "TaskAlignedAssigner":
        """The same settings as an ultralytics ``TaskAlignedAssigner`` (or one of ours)."""
        return cls(topk=assigner.topk, num_classes=assigner.num_classes, alpha=assigner.alpha, beta=assigner.beta,
                   stride=assigner.stride, eps=assigner.eps, topk2=assigner.topk2, **kwargs)

    @property
    def stride_val(self) -> float:
        """Side small GTs are widened to for the candidate test (ultralytics' name)."""
        return self.stride[1] if len(self.stride) > 1 else self.stride[0]

    def core(self) -> _CoreTAL:
        """The detassign assigner for the current attributes (ultralytics preset)."""
        topk2 = None if self.topk2 in (None, self.topk) else self.topk2
        return _CoreTAL(preset="ultralytics", topk=self.topk, alpha=self.alpha, beta=self.beta,
                        num_classes=self.num_classes, strides=tuple(self.stride), eps=self.eps, topk2=topk2,
                        tie_break=self.tie_break, method=self.method, max_chunk_mib=self.max_chunk_mib)

    @torch.no_grad()
    def forward(self, pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                gt_bboxes: Tensor, mask_gt: Tensor, **extra) -> UltralyticsTargets:
        _reject_extra(extra)
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", self.box_columns), floating=True)
        if gt_bboxes.shape[1] == 0:
            return empty_targets(pd_scores, pd_bboxes, self.num_classes)
        # ultralytics hands the assigner probabilities: the probability entry keeps the swap exact
        result = self.core().assign_batch_probs(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)
        return ultralytics_targets(result.gt_inds, result.get_extra_property("target_scores"), gt_labels, gt_bboxes)

    def extra_repr(self) -> str:
        return (f"topk={self.topk}, topk2={self.topk2}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"beta={self.beta}, stride={self.stride}, tie_break={self.tie_break!r}")


class RotatedTaskAlignedAssigner(TaskAlignedAssigner):
    """ultralytics' ``RotatedTaskAlignedAssigner`` interface (OBB training) over detassign's rotated TAL
    (:class:`detassign.assigners.rotated_task_aligned.RotatedTaskAlignedAssigner`).

    Constructor, attributes and call are :class:`TaskAlignedAssigner`'s (ultralytics' names and
    defaults, ``tie_break="torch"``: exact by default), with oriented boxes: ``pd_bboxes`` [B, A, 5] and
    ``gt_bboxes`` [B, M, 5] xywhr px (radians), and ``target_bboxes`` [B, A, 5] in the 5-tuple. As the
    reference's, the candidate test is inclusive on the rotated GT (sides below ``stride_val`` widened)
    and the overlap is ProbIoU clamped at 0. Keyword-only: ``tie_break``, ``max_chunk_mib`` (the
    candidate-pair blocks; the result never depends on it). Not reproduced: the per-image retry after a
    CUDA out-of-memory error (no [B, M, A] tensor is built). ``v8OBBLoss``'s filter of GTs below 2 px
    runs in the loss, before the call, as there. ``forward`` is :class:`TaskAlignedAssigner`'s: the rotated
    core answers the same ``assign_batch_probs`` call, so one change to the call serves both swaps.
    """

    box_columns = 5   # xywhr

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 stride: Optional[Sequence[float]] = None, eps: float = 1e-9, topk2: Optional[int] = None, *,
                 tie_break: str = "torch", max_chunk_mib: Optional[float] = None) -> None:
        super().__init__(topk, num_classes, alpha, beta, stride, eps, topk2, tie_break=tie_break,
                         max_chunk_mib=max_chunk_mib)

    def core(self) -> _CoreRotatedTAL:
        """The detassign rotated assigner for the current attributes (ultralytics preset)."""
        topk2 = None if self.topk2 in (None, self.topk) else self.topk2
        return _CoreRotatedTAL(preset="ultralytics", topk=self.topk, alpha=self.alpha, beta=self.beta,
                               num_classes=self.num_classes, strides=tuple(self.stride), eps=self.eps, topk2=topk2,
                               tie_break=self.tie_break, max_chunk_mib=self.max_chunk_mib)


# ----------------------------------------------------------------------------- any batched assigner
def recovered_logits(scores: Tensor) -> Tensor:
    """Logits from ultralytics' probabilities (the assigner sees only ``sigmoid(logits)``).

    scores [...] in [0, 1] -> [...] same dtype. A float32 probability resolves ``1 - p`` only in steps of
    2**-24, so a logit x comes back to float rounding for x <= 0 (down to -87, where sigmoid leaves the
    normal range), to about 6e-8 * e**x for x > 0 (1e-6 at 3, 1e-3 at 10), and as 16.6 from x ~ 16.6
    on (sigmoid rounds to 1).
    """
    p = scores.double().clamp(_P_MIN, _P_MAX)
    return torch.log(p / (1 - p)).to(scores.dtype)


def anchor_strides(anc_points: Tensor, strides: Sequence[float]) -> Tuple[Tensor, List[int]]:
    """Stride of every anchor point and the level sizes, from ultralytics' anchor layout.

    anc_points [A, 2] px (concatenated row-major grids, ``make_anchors * stride``) -> ([A] strides,
    per-level counts). Raises ValueError for points that are not exactly such grids.
    """
    levels = _pairs.detect_grid(anc_points, strides)
    if levels is None:
        raise ValueError(f"anc_points must be the concatenated row-major anchor grids of strides {list(strides)} "
                         f"(ultralytics make_anchors * stride), got {tuple(anc_points.shape)} points that are not")
    sizes = [lv.width * lv.height for lv in levels]
    per_anchor = torch.cat([anc_points.new_full((n,), lv.stride) for lv, n in zip(levels, sizes)])
    return per_anchor, sizes


def assign_any(assigner: Any, scores: Tensor, boxes: Tensor, points: Tensor, strides: Tensor,
               level_sizes: Sequence[int], labels: Tensor, gt_bboxes: Tensor, mask: Tensor,
               anchor_scale: float = 5.0):
    """Call a detassign batched assigner the way :class:`detassign.yolo.DetectionLoss` does: through the
    batched interface, with the loss' priors (:func:`detassign.yolo.loss.loss_priors`: the points, their
    strides and levels, square anchors of side ``anchor_scale * stride``).

    scores [B, A, C] probabilities, boxes [B, A, 4] xyxy px, points [A, 2] px, strides [A],
    labels [B, M] long, gt_bboxes [B, M, 4], mask [B, M] bool -> its BatchAssignResult. An assigner that
    applies the sigmoid itself and offers ``assign_batch_probs`` (TaskAligned, SimOTA) gets ultralytics'
    probabilities as they are (exact); any other ``assign_batch`` with the recovered logits.
    """
    priors = loss_priors(points, strides, level_sizes, anchor_scale)
    probs_entry = getattr(assigner, "assign_batch_probs", None)
    if probs_entry is not None:
        return probs_entry(scores, boxes, priors, labels, gt_bboxes, mask)
    return assigner.assign_batch(recovered_logits(scores), boxes, priors, labels, gt_bboxes, mask)


class AssignerAdapter(nn.Module):
    """Any detassign batched assigner behind ultralytics' ``TaskAlignedAssigner`` call (see
    :class:`TaskAlignedAssigner` for the call and the 5-tuple).

    Target scores: the assigner's own ``target_scores`` when it has them (TaskAligned), else
    ``one_hot(label) * IoU(pred, gt)`` clamped at 0 (:func:`detassign.yolo.loss.targets_from_gt_inds`),
    as detassign's own loss builds them. Priors an assigner ignores (``gt_inds == -1``) count as
    negatives: ultralytics' loss has no weight to leave them out. DynamicSoftLabel and ATSS-DDOD read
    logits, recovered from the probabilities (:func:`recovered_logits`).
    """

    def __init__(self, assigner: Any, num_classes: int, stride: Sequence[float], anchor_scale: float = 5.0) -> None:
        super().__init__()
        if isinstance(assigner, Mapping):
            from ..registry import build_assigner

            assigner = build_assigner(dict(assigner))
        if not callable(getattr(assigner, "assign_batch", None)):
            raise TypeError(f"assigner must be a detassign batched assigner (with assign_batch) or its config dict, "
                            f"got {type(assigner).__name__}")
        self.assigner = assigner
        self.num_classes = int(V.check_number("num_classes", num_classes, low=1, integer=True))
        self.stride = [float(s) for s in stride]
        self.anchor_scale = float(V.check_number("anchor_scale", anchor_scale, low=0, low_open=True))

    @torch.no_grad()
    def forward(self, pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                gt_bboxes: Tensor, mask_gt: Tensor, **extra) -> UltralyticsTargets:
        _reject_extra(extra)
        gt_bboxes = V.tensor_input("gt_bboxes", gt_bboxes, ("B", "M", 4), floating=True)
        if gt_bboxes.shape[1] == 0:
            return empty_targets(pd_scores, pd_bboxes, self.num_classes)
        labels = (gt_labels[..., 0] if gt_labels.dim() == 3 else gt_labels).long()         # [B, M]
        mask = (mask_gt[..., 0] if mask_gt.dim() == 3 else mask_gt).bool()
        strides, sizes = anchor_strides(anc_points, self.stride)
        result = assign_any(self.assigner, pd_scores, pd_bboxes, anc_points, strides, sizes, labels, gt_bboxes,
                            mask, self.anchor_scale)
        scores = result.get_extra_property("target_scores")
        if scores is None:
            scores = targets_from_gt_inds(result.gt_inds, labels, gt_bboxes, pd_bboxes, self.num_classes).target_scores
        return ultralytics_targets(result.gt_inds, scores, gt_labels, gt_bboxes)

    def extra_repr(self) -> str:
        return f"assigner={type(self.assigner).__name__}, num_classes={self.num_classes}, stride={self.stride}"


# ----------------------------------------------------------------------------- swapping into live objects
def _stock_assigner_class(name: str = "TaskAlignedAssigner"):
    import ultralytics.utils.tal as tal  # the caller has ultralytics: it passed us one of its objects

    return getattr(tal, name)


def _is_rotated(assigner: Any) -> bool:
    """An OBB criterion's assigner: ours, or ultralytics' ``RotatedTaskAlignedAssigner`` (checked by exact
    type, since it subclasses the detection one)."""
    return isinstance(assigner, RotatedTaskAlignedAssigner) or (
        not isinstance(assigner, (TaskAlignedAssigner, AssignerAdapter))
        and type(assigner) is _stock_assigner_class("RotatedTaskAlignedAssigner"))


def _swap_rotated(criterion: Any, old: Any, assigner: Any) -> Any:
    """``v8OBBLoss``: the exact rotated swap (None: with the criterion's own settings) or one given."""
    if assigner is None:
        criterion.assigner = RotatedTaskAlignedAssigner.like(old)
    elif isinstance(assigner, RotatedTaskAlignedAssigner):
        criterion.assigner = assigner
    else:
        raise TypeError(f"an OBB criterion ({type(criterion).__name__}) takes only the rotated task-aligned swap "
                        f"(assigner=None or detassign.integrations.ultralytics.RotatedTaskAlignedAssigner), got "
                        f"{type(assigner).__name__}: detassign has no oriented-box adapter for other assigners")
    return criterion


def swap_criterion(criterion: Any, assigner: Any = None, anchor_scale: float = 5.0) -> Any:
    """Replace the assigner of an ultralytics detection criterion in place; returns the criterion.

    ``v8DetectionLoss`` (and its segmentation / pose subclasses that use the plain detection
    assigner): ``assigner`` None gives the exact :class:`TaskAlignedAssigner` with the criterion's
    own settings; otherwise an :class:`AssignerAdapter`. ``v8OBBLoss``: the exact
    :class:`RotatedTaskAlignedAssigner` (None, or one passed in; other assigners are refused).
    End-to-end criteria (``one2many`` / ``one2one``, YOLOv10 / YOLO26, YOLO26-OBB): the one-to-many
    branch takes ``assigner``, the one-to-one branch (topk 7, topk2 1, which keeps the head NMS-free)
    the exact swap.
    """
    if hasattr(criterion, "one2many") and hasattr(criterion, "one2one"):
        swap_criterion(criterion.one2many, assigner, anchor_scale)
        swap_criterion(criterion.one2one, None, anchor_scale)
        return criterion
    old = getattr(criterion, "assigner", None)
    if old is None or not hasattr(criterion, "nc") or not hasattr(criterion, "stride"):
        raise TypeError(f"expected an ultralytics detection criterion (v8DetectionLoss: .assigner, .nc, .stride), "
                        f"got {type(criterion).__name__}")
    if _is_rotated(old):
        return _swap_rotated(criterion, old, assigner)
    if not isinstance(old, (TaskAlignedAssigner, AssignerAdapter)) and type(old) is not _stock_assigner_class():
        # pose / segmentation variants that compute other overlaps: a plain swap would change them
        raise TypeError(f"this criterion uses {type(old).__name__}; use() replaces the detection "
                        f"TaskAlignedAssigner and the OBB RotatedTaskAlignedAssigner of ultralytics.utils.tal")
    if isinstance(assigner, RotatedTaskAlignedAssigner):
        raise TypeError("RotatedTaskAlignedAssigner reads [..., 5] oriented boxes; this is a detection criterion "
                        "(xyxy boxes): use TaskAlignedAssigner or another detassign assigner")
    stride = [float(s) for s in criterion.stride]
    if assigner is None and isinstance(old, AssignerAdapter):
        # the stock settings are gone: v8DetectionLoss' own (topk 10, alpha 0.5, beta 6)
        criterion.assigner = TaskAlignedAssigner(topk=10, num_classes=criterion.nc, alpha=0.5, beta=6.0,
                                                 stride=stride)
    elif assigner is None:
        criterion.assigner = TaskAlignedAssigner.like(old)
    elif isinstance(assigner, (TaskAlignedAssigner, AssignerAdapter)):
        criterion.assigner = assigner
    else:
        criterion.assigner = AssignerAdapter(assigner, criterion.nc, stride, anchor_scale)
    return criterion


def _unwrap(model: nn.Module) -> nn.Module:
    """DataParallel / DistributedDataParallel -> the model they wrap."""
    return getattr(model, "module", model)


def swap_model(model: nn.Module, assigner: Any = None, anchor_scale: float = 5.0) -> nn.Module:
    """Build the model's criterion if it has none yet (as ``model.loss`` would) and swap its assigner."""
    model = _unwrap(model)
    if not callable(getattr(model, "init_criterion", None)):
        raise TypeError(f"expected an ultralytics model with init_criterion (DetectionModel), got "
                        f"{type(model).__name__}")
    if getattr(model, "criterion", None) is None:
        model.criterion = model.init_criterion()
    swap_criterion(model.criterion, assigner, anchor_scale)
    return model


def use(target: Any, assigner: Any = None, *, anchor_scale: float = 5.0) -> Any:
    """Swap a detassign assigner into ultralytics' detection loss; returns ``target``.

    target:
        * a ``YOLO`` object or a trainer (anything with ``add_callback``): on ``on_train_start`` the
          trainer's model and its EMA (whose loss the validator reports) get the swap, so call it
          before ``train()``; with DDP the callbacks stay in the launching process (ultralytics
          re-creates the trainer in its workers): there, use the module-level one-line swap in a
          module the workers import;
        * a ``DetectionModel`` (its criterion is built now if it has none);
        * a criterion (``v8DetectionLoss`` or an end-to-end one).
    assigner: None (the exact :class:`TaskAlignedAssigner` with the loss's own topk / alpha / beta;
        :class:`RotatedTaskAlignedAssigner` for an OBB loss), a detassign batched assigner, or its config
        dict (``dict(type="DynamicSoftLabelAssigner")``); an OBB loss takes only the rotated swap.
    anchor_scale: side of ATSS's square anchors in strides (as :class:`detassign.yolo.DetectionLoss`).
    """
    if isinstance(assigner, Mapping):
        from ..registry import build_assigner

        assigner = build_assigner(dict(assigner))  # built once, shared by the model and its EMA copy
    if callable(getattr(target, "add_callback", None)):
        def swap_trainer(trainer) -> None:
            swap_model(trainer.model, assigner, anchor_scale)
            ema = getattr(trainer, "ema", None)
            if ema is not None and getattr(ema, "ema", None) is not None:
                swap_model(ema.ema, assigner, anchor_scale)

        target.add_callback("on_train_start", swap_trainer)
        return target
    if isinstance(target, nn.Module):
        swap_model(target, assigner, anchor_scale)
        return target
    swap_criterion(target, assigner, anchor_scale)
    return target
