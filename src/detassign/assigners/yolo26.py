"""YOLO26's end-to-end assignment, as ultralytics 8.4.190 trains it (``utils/loss.py``, ``nn/tasks.py``).

What the source does (read from the installed 8.4.190):

* ``DetectionModel.init_criterion`` returns ``E2ELoss(self)`` when the head has ``one2one_cv2`` (the
  YOLO26 / end-to-end heads), else ``v8DetectionLoss(self)``; ``OBBModel`` returns
  ``E2ELoss(self, v8OBBLoss)``, segmentation and pose ``E2ELoss(self, SegmentLoss26 / PoseLoss26)``.
* ``E2ELoss.__init__`` builds two losses on the same model: ``one2many = loss_fn(model, tal_topk=10)``
  and ``one2one = loss_fn(model, tal_topk=7, tal_topk2=1)``. Each ``v8DetectionLoss`` builds
  ``TaskAlignedAssigner(topk=tal_topk, num_classes=nc, alpha=0.5, beta=6.0, stride=model strides,
  topk2=tal_topk2)`` (``v8OBBLoss``: ``RotatedTaskAlignedAssigner`` with the same arguments). So the
  one-to-many branch is YOLOv8 / YOLO11's assigner (top-10), and the one-to-one branch takes the top 7
  per GT, resolves anchors claimed twice by the highest overlap, then keeps each GT's single best anchor
  by the metric (``topk2=1`` in ``select_highest_overlaps``): one positive per GT.
* Small targets: in ``select_candidates_in_gts`` GT sides below ``stride_val = stride[1]`` (16 px with
  strides 8 / 16 / 32) are enlarged to ``stride_val`` about the center, for the candidate test only (the
  targets keep the real box), for valid GTs; both branches do it. ``v8OBBLoss`` also drops GTs with a
  side below 2 px before assigning.
* The two losses are summed as ``o2m * loss_one2many + o2o * loss_one2one`` with ``o2m`` starting at 0.8
  and ``o2o = 1 - o2m``; ``E2ELoss.update()``, called by the trainer at the end of every epoch, sets
  ``o2m = max(1 - updates / max(epochs - 1, 1), 0) * (0.8 - 0.1) + 0.1``: a linear decay to 0.1 at the
  last epoch (:func:`yolo26_branch_weights`). The logged loss items are the one-to-one branch's.

Here both branches are presets of the batched assigners (``TaskAlignedAssigner(preset="yolo26_one2many" /
"yolo26_one2one")``, ``RotatedTaskAlignedAssigner`` likewise), exact to those oracles; this module pairs
them and gives the weight schedule. The model side of YOLO26 (a second, one-to-one head and NMS-free
decoding) is not part of detassign's YOLO11 stack.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .rotated_task_aligned import RotatedTaskAlignedAssigner
from .task_aligned import TaskAlignedAssigner

__all__ = ["yolo26_assigners", "yolo26_branch_weights", "YOLO26_TASKS"]

YOLO26_TASKS = ("detect", "obb")


def yolo26_assigners(task: str = "detect", num_classes: Optional[int] = None,
                     strides: Sequence[float] = (8, 16, 32), tie_break: str = "index"):
    """The (one-to-many, one-to-one) assigners of a YOLO26 loss.

    ``task="detect"``: two :class:`TaskAlignedAssigner` (boxes [B, A, 4] xyxy); ``"obb"``: two
    :class:`RotatedTaskAlignedAssigner` (boxes [B, A, 5] xywhr). Call each on its own head's predictions
    with the same GTs. ``tie_break="torch"`` follows ``torch.topk``'s tie order like the reference.
    """
    if task not in YOLO26_TASKS:
        raise ValueError(f"task must be one of {YOLO26_TASKS}, got {task!r}")
    if task == "detect":
        return tuple(TaskAlignedAssigner(preset=p, num_classes=num_classes, strides=tuple(strides), tie_break=tie_break)
                     for p in ("yolo26_one2many", "yolo26_one2one"))
    return tuple(RotatedTaskAlignedAssigner(preset=p, num_classes=num_classes, strides=tuple(strides),
                                            tie_break=tie_break)
                 for p in ("yolo26_one2many", "yolo26_one2one"))


def yolo26_branch_weights(epochs_done: int, epochs: int, initial: float = 0.8,
                          final: float = 0.1) -> Tuple[float, float]:
    """(one-to-many, one-to-one) loss weights after ``epochs_done`` completed epochs of ``epochs``.

    ``o2m = max(1 - epochs_done / max(epochs - 1, 1), 0) * (initial - final) + final`` and
    ``o2o = max(1 - o2m, 0)``: (0.8, 0.2) at the start, (0.1, 0.9) from the last epoch on.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(epochs_done, bool) or not isinstance(epochs_done, int) or epochs_done < 0:
        raise ValueError(f"epochs_done must be an int >= 0, got {epochs_done!r}")
    # before the first update ultralytics uses the initial gain itself (not the decay formula at 0)
    o2m = initial if epochs_done == 0 else max(1 - epochs_done / max(epochs - 1, 1), 0) * (initial - final) + final
    return o2m, max(1.0 - o2m, 0.0)
