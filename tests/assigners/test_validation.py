"""Bad inputs at every public entry point: each is refused with a ValueError / TypeError naming the argument.

One table describes every entry point (the per-image ``assign`` of each assigner, each batched path,
each match cost called on one image) by its tensor *slots*: what the argument is called in messages,
a valid value, what kind of tensor it is and which axis it shares with other arguments. The same
mutations are then applied to every slot of every entry point:

    list / numpy array            -> TypeError naming the argument (never AttributeError)
    an extra leading dimension    -> ValueError naming the argument ("too many values to unpack" before)
    one row fewer than the others -> ValueError naming the argument (not its neighbour)
    a tensor on another device    -> ValueError naming the devices (a ``meta`` tensor stands in for CUDA)
    NaN / Inf / inverted boxes    -> ValueError naming the argument
    labels -1, >= C, 1.9, bool    -> ValueError / TypeError naming the argument (1.9 was truncated to 1)
    masks / flags of 0.5          -> ValueError naming the argument

Hyper-parameters (NaN, strings, bools for numbers, floats for ints) are checked when an assigner or a
match cost is built. Then the cases the issue names one by one, empty inputs of any rank, box objects
(anything with ``.tensor``), integral float labels, and ``box_area``'s upcast.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detassign import Instances, Priors, build_assigner, build_match_cost
from detassign import _validate as V
from detassign.assigners.approx_max_iou import ApproxMaxIoUAssigner
from detassign.assigners.atss import ATSSAssigner
from detassign.assigners.batch_max_iou import BatchMaxIoUAssigner
from detassign.assigners.center_region import CenterRegionAssigner
from detassign.assigners.dynamic_soft_label import DynamicSoftLabelAssigner
from detassign.assigners.grid import GridAssigner
from detassign.assigners.hungarian import HungarianAssigner
from detassign.assigners.mask_hungarian import MaskHungarianAssigner
from detassign.assigners.match_costs import (BBoxL1Cost, BinaryFocalLossCost, ClassificationCost,
                                             CrossEntropyLossCost, DiceCost, FocalLossCost, IoUCost)
from detassign.assigners.max_iou import MaxIoUAssigner
from detassign.assigners.multi_instance import MultiInstanceAssigner
from detassign.assigners.one_to_many import OneToManyHungarianAssigner
from detassign.assigners.point import PointAssigner
from detassign.assigners.region import RegionAssigner
from detassign.assigners.rotated_calculators import RotatedATSSAssigner
from detassign.assigners.rotated_task_aligned import RotatedTaskAlignedAssigner
from detassign.assigners.sim_ota import SimOTAAssigner
from detassign.assigners.stage2 import Stage2Assigner
from detassign.assigners.task_aligned import TaskAlignedAssigner
from detassign.assigners.topk_hungarian import TopkHungarianAssigner
from detassign.assigners.uniform import UniformAssigner
from detassign.boxes import box_area

C = 3  # classes
B = 2  # images in a batch
GEN = torch.Generator().manual_seed(0)

# six 10 px priors on a 3 x 2 grid, two GTs (classes 0 and 2)
PRIORS = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10],
                       [0, 10, 10, 20], [10, 10, 20, 20], [20, 10, 30, 20.]])
POINTS = torch.cat([(PRIORS[:, :2] + PRIORS[:, 2:]) / 2, torch.full((6, 2), 10.0)], 1)   # (cx, cy, sw, sh)
PRED = PRIORS + torch.tensor([1.0, 1.0, 1.0, 2.0])
GT = torch.tensor([[0, 0, 12, 12], [15, 5, 30, 20.]])
LABELS = torch.tensor([0, 2])
PROBS = torch.rand(6, C, generator=GEN)
LOGITS = torch.randn(6, C, generator=GEN)
IGNORE = torch.tensor([[25, 15, 30, 20.]])
MASKS_PRED = torch.randn(4, 9, generator=GEN)
MASKS_GT = (torch.rand(2, 9, generator=GEN) > 0.5).float()
BOXES_NORM = torch.tensor([[0.2, 0.2, 0.3, 0.3], [0.6, 0.5, 0.4, 0.5], [0.5, 0.5, 0.2, 0.2],
                           [0.1, 0.8, 0.1, 0.2], [0.9, 0.9, 0.1, 0.1], [0.4, 0.6, 0.3, 0.3]])
REGION_META = dict(img_shape=(20, 30))
HUNGARIAN_META = dict(img_shape=(40, 40))
DETR = [dict(type="ClassificationCost", weight=1.0), dict(type="BBoxL1Cost", weight=5.0),
        dict(type="IoUCost", iou_mode="giou", weight=2.0)]
# oriented (xywhr) twins: the priors' centres with 10 px sides, predictions moved and turned, two turned GTs
RPRIORS = torch.cat([POINTS[:, :2], torch.full((6, 2), 10.0), torch.zeros(6, 1)], 1)
RPRED = RPRIORS + torch.tensor([1.0, 1.0, 1.0, 2.0, 0.1])
RGT = torch.tensor([[6.0, 6.0, 12.0, 12.0, 0.1], [22.5, 12.5, 15.0, 15.0, -0.2]])
RIGNORE = torch.tensor([[27.5, 17.5, 5.0, 5.0, 0.3]])
RBOX = dict(type="RBboxOverlaps2D")


def batched(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, x])


GT_MASK = torch.ones(B, 2, dtype=torch.bool)


# ----------------------------------------------------------------------------- entry points
class Slot:
    """One tensor argument: its name in messages, a valid value, its kind and the axis it shares."""

    def __init__(self, name, value, kind, axis=None):
        self.name, self.value, self.kind, self.axis = name, value, kind, axis


class Entry:
    """An entry point: ``run(values)`` calls it with the slot values (keys are the slot names)."""

    def __init__(self, name, run, slots, num_classes=None):
        self.name, self.run, self.slots, self.num_classes = name, run, slots, num_classes

    def values(self):
        return {s.name: s.value for s in self.slots}


def inst(values, prefix):
    """Instances from the slots named ``prefix.field``."""
    return Instances(**{k[len(prefix) + 1:]: v for k, v in values.items() if k.startswith(prefix + ".")})


def per_image(assigner, *extra_args, **extra_kwargs):
    def run(v):
        ignore = inst(v, "gt_instances_ignore")
        return assigner.assign(inst(v, "pred_instances"), inst(v, "gt_instances"),
                               ignore if len(ignore.keys()) else None, *extra_args, **extra_kwargs)
    return run


def gt_slots(boxes=GT, labels=LABELS, kind="gt_boxes"):
    return [Slot("gt_instances.bboxes", boxes, kind, 0), Slot("gt_instances.labels", labels, "labels", 0)]


def entries():
    e = []
    e.append(Entry("MaxIoU", per_image(MaxIoUAssigner(0.5, 0.4, ignore_iof_thr=0.5)),
                   [Slot("pred_instances.priors", PRIORS, "boxes"), *gt_slots(),
                    Slot("gt_instances_ignore.bboxes", IGNORE, "gt_boxes")]))
    e.append(Entry("ApproxMaxIoU", per_image(ApproxMaxIoUAssigner(0.5, 0.4)),
                   [Slot("pred_instances.priors", PRIORS, "boxes", 0),
                    Slot("pred_instances.approxs", PRIORS[:, None].repeat(1, 2, 1), "boxes", 0), *gt_slots()]))
    e.append(Entry("Grid", per_image(GridAssigner(0.5, 0.3)),
                   [Slot("pred_instances.priors", PRIORS, "boxes", 0),
                    Slot("pred_instances.responsible_flags", torch.ones(6, dtype=torch.bool), "flags", 0),
                    *gt_slots()]))
    atss = ATSSAssigner(topk=3)
    e.append(Entry("ATSS", lambda v: atss.assign(inst(v, "pred_instances"), levels(v), inst(v, "gt_instances")),
                   [Slot("pred_instances.priors", PRIORS, "boxes"), *gt_slots()]))
    ddod = ATSSAssigner(topk=3, alpha=0.8)
    e.append(Entry("ATSS-DDOD", lambda v: ddod.assign(inst(v, "pred_instances"), levels(v), inst(v, "gt_instances")),
                   [Slot("pred_instances.priors", PRIORS, "boxes", 0),
                    Slot("pred_instances.scores", LOGITS, "logits", 0),
                    Slot("pred_instances.bboxes", PRED, "boxes", 0), *gt_slots()], num_classes=C))
    for preset in ("mmdet", "ultralytics"):
        e.append(Entry(f"TAL-{preset}", per_image(TaskAlignedAssigner(preset=preset, topk=3)),
                       [Slot("pred_instances.priors", PRIORS, "boxes", 0),
                        Slot("pred_instances.bboxes", PRED, "boxes", 0),
                        Slot("pred_instances.scores", PROBS, "probs", 0), *gt_slots()], num_classes=C))
    e.append(Entry("SimOTA", per_image(SimOTAAssigner(candidate_topk=3)),
                   [Slot("pred_instances.priors", POINTS, "points", 0), Slot("pred_instances.bboxes", PRED, "boxes", 0),
                    Slot("pred_instances.scores", PROBS, "probs", 0), *gt_slots()], num_classes=C))
    e.append(Entry("DynamicSoftLabel", per_image(DynamicSoftLabelAssigner(topk=3)),
                   [Slot("pred_instances.priors", POINTS, "points", 0), Slot("pred_instances.bboxes", PRED, "boxes", 0),
                    Slot("pred_instances.scores", LOGITS, "logits", 0), *gt_slots()], num_classes=C))
    hungarian = HungarianAssigner(DETR)
    e.append(Entry("Hungarian", lambda v: hungarian.assign(inst(v, "pred_instances"), inst(v, "gt_instances"),
                                                          HUNGARIAN_META),
                   [Slot("pred_instances.scores", LOGITS, "nan_logits", 0),
                    Slot("pred_instances.bboxes", PRED, "nan_boxes", 0), *gt_slots()], num_classes=C))
    masked = MaskHungarianAssigner()
    e.append(Entry("MaskHungarian", lambda v: masked.assign(inst(v, "pred_instances"), inst(v, "gt_instances")),
                   [Slot("pred_instances.scores", LOGITS[:4], "nan_logits", 0),
                    Slot("pred_instances.masks", MASKS_PRED, "nan_logits", 0),
                    Slot("gt_instances.labels", LABELS, "labels", 0), Slot("gt_instances.masks", MASKS_GT, "masks", 0)],
                   num_classes=C))
    topk = TopkHungarianAssigner(topk=2)
    e.append(Entry("TopkHungarian", lambda v: topk.assign(v["pred_scores"], v["decode_bboxes"], v["gt_bboxes"],
                                                         v["gt_labels"], HUNGARIAN_META),
                   [Slot("pred_scores", PROBS, "inf_scores", 0), Slot("decode_bboxes", PRED, "nan_boxes", 0),
                    Slot("gt_bboxes", GT, "gt_boxes", 0), Slot("gt_labels", LABELS, "labels", 0)], num_classes=C))
    e.append(Entry("MultiInstance", per_image(MultiInstanceAssigner()),
                   [Slot("pred_instances.priors", PRIORS, "boxes"), *gt_slots(),
                    Slot("gt_instances_ignore.bboxes", IGNORE, "gt_boxes")]))
    e.append(Entry("Uniform", per_image(UniformAssigner(match_times=1)),
                   [Slot("pred_instances.priors", PRIORS, "gt_boxes", 0),
                    Slot("pred_instances.decoder_priors", PRED, "gt_boxes", 0), *gt_slots()]))
    region = RegionAssigner()
    e.append(Entry("Region", lambda v: region.assign(inst(v, "pred_instances"), inst(v, "gt_instances"),
                                                    REGION_META, [(2, 3)], levels(v), 1.0, [10]),
                   [Slot("pred_instances.priors", PRIORS, "boxes", 0),
                    Slot("pred_instances.valid_flags", torch.ones(6, dtype=torch.bool), "flags", 0), *gt_slots()]))
    e.append(Entry("CenterRegion", per_image(CenterRegionAssigner(0.2, 0.2)),
                   [Slot("pred_instances.priors", PRIORS, "boxes"), *gt_slots(),
                    Slot("gt_instances_ignore.bboxes", IGNORE, "gt_boxes")]))
    e.append(Entry("Point", per_image(PointAssigner()),
                   [Slot("pred_instances.priors", torch.cat([POINTS[:, :2], torch.full((6, 1), 8.0)], 1), "boxes"),
                    *gt_slots()]))
    # match costs called on one image (mmdet's convention)
    for cost, slots, classes in (
            (ClassificationCost(), [Slot("pred_instances.scores", LOGITS, "inf_scores")], C),
            (FocalLossCost(), [Slot("pred_instances.scores", LOGITS, "inf_scores")], C),
            (BBoxL1Cost(), [Slot("pred_instances.bboxes", PRED, "boxes"),
                            Slot("gt_instances.bboxes", GT, "gt_boxes")], None),
            (IoUCost(), [Slot("pred_instances.bboxes", PRED, "boxes"), Slot("gt_instances.bboxes", GT, "gt_boxes")],
             None),
            (DiceCost(), [Slot("pred_instances.masks", MASKS_PRED, "nan_logits"),
                          Slot("gt_instances.masks", MASKS_GT, "masks")], None),
            (CrossEntropyLossCost(), [Slot("pred_instances.masks", MASKS_PRED, "nan_logits"),
                                      Slot("gt_instances.masks", MASKS_GT, "masks")], None)):
        if classes is not None:
            slots = slots + [Slot("gt_instances.labels", LABELS, "labels")]
        e.append(Entry(type(cost).__name__, (lambda c: lambda v: c(inst(v, "pred_instances"), inst(v, "gt_instances"),
                                                                  HUNGARIAN_META))(cost), slots, num_classes=classes))
    tokens = torch.zeros(2, 5)
    tokens[0, 1] = tokens[1, 3] = 1
    e.append(Entry("BinaryFocalLossCost", lambda v: BinaryFocalLossCost()(
        inst(v, "pred_instances"), Instances(text_token_mask=torch.ones(2, 5), **vars_of(inst(v, "gt_instances")))),
        [Slot("pred_instances.scores", torch.randn(6, 5, generator=GEN), "inf_scores"),
         Slot("gt_instances.positive_maps", tokens, "any")]))

    # ---- batched paths
    bm = BatchMaxIoUAssigner(0.5, 0.4)
    # (the batched interface: assign_batch(pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask))
    e.append(Entry("BatchMaxIoU.assign_batch", lambda v: bm.assign_batch(None, None, v["priors"], v["gt_labels"],
                                                                        v["gt_bboxes"], v["gt_mask"]),
                   batch_gt_slots() + [Slot("priors", PRIORS, "boxes")]))
    e.append(Entry("ATSS.assign_batch", lambda v: atss.assign_batch(None, None, box_priors(v), v["gt_labels"],
                                                                   v["gt_bboxes"], v["gt_mask"]),
                   batch_gt_slots() + [Slot("priors.boxes", PRIORS, "boxes")]))
    e.append(Entry("ATSS-DDOD.assign_batch", lambda v: ddod.assign_batch(
        v["pred_scores"], v["pred_bboxes"], box_priors(v), v["gt_labels"], v["gt_bboxes"], v["gt_mask"]),
        batch_gt_slots() + [Slot("priors.boxes", PRIORS, "boxes", 0), Slot("pred_scores", batched(LOGITS), "logits", 1),
                            Slot("pred_bboxes", batched(PRED), "boxes", 1)], num_classes=C))
    tal = TaskAlignedAssigner(topk=3)
    e.append(Entry("TAL.assign_batch", lambda v: tal.assign_batch(v["pred_scores"], v["pred_bboxes"],
                                                                 v["anchor_points"], v["gt_labels"], v["gt_bboxes"],
                                                                 v["gt_mask"]),
                   batch_gt_slots() + [Slot("pred_scores", batched(LOGITS), "logits", 1),
                                       Slot("pred_bboxes", batched(PRED), "boxes", 1),
                                       Slot("anchor_points", POINTS[:, :2], "boxes", 0)], num_classes=C))
    for name, assigner in (("SimOTA", SimOTAAssigner(candidate_topk=3)), ("DynamicSoftLabel",
                                                                           DynamicSoftLabelAssigner(topk=3))):
        e.append(Entry(f"{name}.assign_batch", (lambda a: lambda v: a.assign_batch(
            v["pred_scores"], v["pred_bboxes"], Priors(v["priors.points"], v["priors.strides"]), v["gt_labels"],
            v["gt_bboxes"], v["gt_mask"]))(assigner),
            batch_gt_slots() + [Slot("pred_scores", batched(LOGITS), "logits", 1),
                                Slot("pred_bboxes", batched(PRED), "boxes", 1), *prior_point_slots()],
            num_classes=C))
    simota = SimOTAAssigner(candidate_topk=3)
    e.append(Entry("SimOTA.assign_batch_probs", lambda v: simota.assign_batch_probs(
        v["pred_scores"], v["pred_bboxes"], Priors(v["priors.points"], v["priors.strides"]), v["gt_labels"],
        v["gt_bboxes"], v["gt_mask"]),
        batch_gt_slots() + [Slot("pred_scores", batched(PROBS), "probs", 1),
                            Slot("pred_bboxes", batched(PRED), "boxes", 1), *prior_point_slots()], num_classes=C))
    e.append(Entry("Hungarian.assign_batch", lambda v: hungarian.assign_batch(
        v["pred_scores"], v["pred_bboxes"], None, v["gt_labels"], v["gt_bboxes"], v["gt_mask"], img_shapes=(40, 40)),
        batch_gt_slots() + [Slot("pred_scores", batched(LOGITS), "nan_logits", 1),
                            Slot("pred_bboxes", batched(PRED), "nan_boxes", 1)], num_classes=C))
    e.append(Entry("Hungarian.assign_instances_batch", lambda v: hungarian.assign_instances_batch(
        inst(v, "pred_instances"), inst(v, "gt_instances"), v["gt_mask"], [(40, 40)] * B),
        [Slot("pred_instances.scores", batched(LOGITS), "nan_logits", 1),
         Slot("pred_instances.bboxes", batched(PRED), "nan_boxes", 1),
         Slot("gt_instances.bboxes", batched(GT), "gt_boxes", 1),
         Slot("gt_instances.labels", batched(LABELS), "labels", 1),
         Slot("gt_mask", GT_MASK, "flags", 1)], num_classes=C))
    e.append(Entry("MaskHungarian.assign_batch", lambda v: masked.assign_batch(
        v["pred_scores"], None, None, v["gt_labels"], None, v["gt_mask"], pred_masks=v["pred_masks"],
        gt_masks=v["gt_masks"]),
        [Slot("pred_scores", batched(LOGITS[:4]), "nan_logits", 1),
         Slot("pred_masks", batched(MASKS_PRED), "nan_logits", 1),
         Slot("gt_labels", batched(LABELS), "labels", 1), Slot("gt_masks", batched(MASKS_GT), "masks", 1),
         Slot("gt_mask", GT_MASK, "flags", 1)], num_classes=C))
    # ---- one-to-many matching (DETR family): HungarianAssigner's calls, so its entries' slots
    o2m = OneToManyHungarianAssigner(DETR, repeat=2, groups=2)
    hungarian_slots = {x.name: x.slots for x in e if x.name.startswith("Hungarian")}
    for call, run in (("", lambda v: o2m.assign(inst(v, "pred_instances"), inst(v, "gt_instances"), HUNGARIAN_META)),
                      (".assign_batch", lambda v: o2m.assign_batch(v["pred_scores"], v["pred_bboxes"], v["gt_labels"],
                                                                   v["gt_bboxes"], v["gt_mask"], (40, 40))),
                      (".assign_instances_batch", lambda v: o2m.assign_instances_batch(
                          inst(v, "pred_instances"), inst(v, "gt_instances"), v["gt_mask"], [(40, 40)] * B))):
        e.append(Entry(f"OneToManyHungarian{call}", run, hungarian_slots[f"Hungarian{call}"], num_classes=C))
    stage2 = Stage2Assigner()
    e.append(Entry("Stage2", lambda v: stage2.assign(inst(v, "pred_instances"), inst(v, "gt_instances"),
                                                    generator=torch.Generator().manual_seed(0)),
                   [Slot("pred_instances.scores", LOGITS, "logits", 0), Slot("pred_instances.bboxes", PRED, "boxes", 0),
                    *gt_slots()], num_classes=C))
    e.append(Entry("Stage2.assign_batch", lambda v: stage2.assign_batch(
        v["pred_scores"], v["pred_bboxes"], v["gt_labels"], v["gt_bboxes"], v["gt_mask"],
        torch.Generator().manual_seed(0)),
        batch_gt_slots() + [Slot("pred_scores", batched(LOGITS), "logits", 1),
                            Slot("pred_bboxes", batched(PRED), "boxes", 1)], num_classes=C))
    # ---- oriented boxes (xywhr): rotated TAL and the mmrotate calculators
    rtal = RotatedTaskAlignedAssigner(preset="ultralytics_loss", topk=3)
    e.append(Entry("RotatedTAL", per_image(rtal),
                   [Slot("pred_instances.priors", POINTS[:, :2], "boxes", 0),
                    Slot("pred_instances.bboxes", RPRED, "boxes", 0), Slot("pred_instances.scores", PROBS, "probs", 0),
                    *gt_slots(RGT, kind="gt_rboxes")], num_classes=C))
    for entry, scores, kind in (("assign_batch", LOGITS, "logits"), ("assign_batch_probs", PROBS, "probs")):
        e.append(Entry(f"RotatedTAL.{entry}", (lambda call: lambda v: call(
            v["pred_scores"], v["pred_bboxes"], v["anchor_points"], v["gt_labels"], v["gt_bboxes"], v["gt_mask"]))(
            getattr(rtal, entry)),
            batch_gt_slots(RGT, kind="gt_rboxes") + [Slot("pred_scores", batched(scores), kind, 1),
                                                      Slot("pred_bboxes", batched(RPRED), "boxes", 1),
                                                      Slot("anchor_points", POINTS[:, :2], "boxes", 0)],
            num_classes=C))
    e.append(Entry("RotatedMaxIoU", per_image(MaxIoUAssigner(0.5, 0.4, ignore_iof_thr=0.5, iou_calculator=RBOX)),
                   [Slot("pred_instances.priors", RPRIORS, "boxes"), *gt_slots(RGT, kind="gt_rboxes"),
                    Slot("gt_instances_ignore.bboxes", RIGNORE, "gt_rboxes")]))
    ratss = RotatedATSSAssigner(topk=3)
    e.append(Entry("RotatedATSS", lambda v: ratss.assign(inst(v, "pred_instances"), levels(v), inst(v, "gt_instances")),
                   [Slot("pred_instances.priors", RPRIORS, "boxes"), *gt_slots(RGT, kind="gt_rboxes")]))
    e.append(Entry("RotatedATSS.assign_batch", lambda v: ratss.assign_batch(
        None, None, box_priors(v), v["gt_labels"], v["gt_bboxes"], v["gt_mask"]),
        batch_gt_slots(RGT, kind="gt_rboxes") + [Slot("priors.boxes", RPRIORS, "boxes")]))
    rdsl = DynamicSoftLabelAssigner(topk=3, iou_calculator=RBOX)
    e.append(Entry("RotatedDSL", per_image(rdsl),
                   [Slot("pred_instances.priors", POINTS, "points", 0),
                    Slot("pred_instances.bboxes", RPRED, "boxes", 0),
                    Slot("pred_instances.scores", LOGITS, "logits", 0), *gt_slots(RGT, kind="gt_rboxes")],
                   num_classes=C))
    e.append(Entry("RotatedDSL.assign_batch", lambda v: rdsl.assign_batch(
        v["pred_scores"], v["pred_bboxes"], Priors(v["priors.points"], v["priors.strides"]), v["gt_labels"],
        v["gt_bboxes"], v["gt_mask"]),
        batch_gt_slots(RGT, kind="gt_rboxes") + [Slot("pred_scores", batched(LOGITS), "logits", 1),
                                                  Slot("pred_bboxes", batched(RPRED), "boxes", 1),
                                                  *prior_point_slots()], num_classes=C))
    return {x.name: x for x in e}


def levels(values):
    """One pyramid level holding every prior."""
    return [len(getattr(values["pred_instances.priors"], "tensor", values["pred_instances.priors"]))]


def vars_of(instances):
    return {k: instances.get(k) for k in instances.keys()}


def box_priors(values):
    """Priors of the anchor boxes of slot ``priors.boxes``, one pyramid level holding them all."""
    boxes = values["priors.boxes"]
    return Priors.from_boxes(boxes, [len(getattr(boxes, "tensor", boxes))])   # box objects: .tensor


def prior_point_slots():
    """A Priors of points and strides, as the batched interface reads it: its two fields' slots."""
    return [Slot("priors.points", POINTS[:, :2], "points", 0), Slot("priors.strides", POINTS[:, 2], "points", 0)]


def batch_gt_slots(boxes=GT, kind="gt_boxes"):
    return [Slot("gt_bboxes", batched(boxes), kind, 1), Slot("gt_labels", batched(LABELS), "labels", 1),
            Slot("gt_mask", GT_MASK, "flags", 1)]


ENTRIES = entries()


# ----------------------------------------------------------------------------- mutations
def cut(x, axis):
    return x.narrow(axis, 0, x.shape[axis] - 1)


def with_value(x, value, index=0):
    x = x.clone().float() if not x.is_floating_point() else x.clone()
    x.view(-1)[index] = value
    return x


def inverted(x):
    """The first box with x1 > x2."""
    x = x.clone()
    x1, x2 = x[..., 0, 0].clone(), x[..., 0, 2].clone()
    x[..., 0, 0], x[..., 0, 2] = x2 + 1, x1
    return x


FLOATS = ("boxes", "gt_boxes", "gt_rboxes", "points", "probs", "logits", "nan_boxes", "nan_logits", "inf_scores",
          "masks", "any")


def mutations(entry, slot):
    """(mutation id, bad value, exception type, text the message must contain)."""
    x = slot.value
    out = [("list", x.tolist(), TypeError, slot.name), ("numpy", x.numpy(), TypeError, slot.name),
           ("extra_dim", x[None], ValueError, slot.name), ("meta_device", x.to("meta"), ValueError, "device")]
    if slot.axis is not None:
        out.append(("one_row_fewer", cut(x, slot.axis), ValueError, slot.name))
    if slot.kind in ("boxes", "gt_boxes", "gt_rboxes", "points", "probs", "logits", "nan_boxes", "nan_logits"):
        out.append(("nan", with_value(x, math.nan), ValueError, slot.name))
    if slot.kind in ("boxes", "gt_boxes", "gt_rboxes", "points", "probs", "logits", "inf_scores"):
        out.append(("inf", with_value(x, math.inf), ValueError, slot.name))
    if slot.kind == "gt_boxes":
        out.append(("inverted", inverted(x), ValueError, slot.name))
    if slot.kind == "gt_rboxes":   # oriented GT (xywhr) with a negative width
        out.append(("negative_side", with_value(x, -1.0, index=2), ValueError, slot.name))
    if slot.kind == "probs":
        out.append(("logit_not_probability", with_value(x, 3.0), ValueError, slot.name))
    if slot.kind == "flags":
        out.append(("half_flag", with_value(x, 0.5), ValueError, slot.name))
    if slot.kind == "labels":
        out += [("label_-1", with_value(x, -1).long(), ValueError, slot.name),
                ("label_fractional_1.9", with_value(x, 1.9), ValueError, slot.name),
                ("label_nan", with_value(x, math.nan), ValueError, slot.name),
                ("label_bool", x.bool(), TypeError, slot.name)]
        if entry.num_classes is not None:
            out.append(("label_>=C", with_value(x, entry.num_classes).long(), ValueError, slot.name))
    return out


CASES = [pytest.param(e.name, s.name, m[0], id=f"{e.name}-{s.name}-{m[0]}")
         for e in ENTRIES.values() for s in e.slots for m in mutations(e, s)]


@pytest.mark.parametrize("entry_name", list(ENTRIES))
def test_valid_inputs_pass(entry_name):
    entry = ENTRIES[entry_name]
    entry.run(entry.values())


@pytest.mark.parametrize("entry_name, slot_name, mutation", CASES)
def test_bad_input_is_refused_naming_the_argument(entry_name, slot_name, mutation):
    entry = ENTRIES[entry_name]
    slot = next(s for s in entry.slots if s.name == slot_name)
    _, bad, error, text = next(m for m in mutations(entry, slot) if m[0] == mutation)
    values = entry.values()
    values[slot_name] = bad
    with pytest.raises(error) as info:
        entry.run(values)
    assert text in str(info.value), f"{error.__name__} does not name {text!r}: {info.value}"


def test_case_count():
    """The table above covers every assigner's entry points (a new one must be added to it)."""
    names = {n.split(".")[0].split("-")[0] for n in ENTRIES}
    assert {"MaxIoU", "ApproxMaxIoU", "Grid", "ATSS", "TAL", "SimOTA", "DynamicSoftLabel", "Hungarian",
            "MaskHungarian", "TopkHungarian", "MultiInstance", "Uniform", "Region", "CenterRegion", "Point",
            "BatchMaxIoU", "OneToManyHungarian", "Stage2", "RotatedTAL", "RotatedMaxIoU", "RotatedATSS",
            "RotatedDSL"} <= names
    assert len(CASES) > 300


# ----------------------------------------------------------------------------- the cases, one by one
def test_tal_blames_the_tensor_with_the_wrong_anchor_count():
    # pred_scores with 5 anchors against pred_bboxes and anchor_points with 6 used to blame pred_bboxes
    with pytest.raises(ValueError) as info:
        TaskAlignedAssigner().assign_batch(batched(PROBS)[:, :5], batched(PRED), POINTS[:, :2], batched(LABELS),
                                           batched(GT))
    assert str(info.value).startswith("pred_scores has A=5 but anchor_points, pred_bboxes have A=6")


def test_hungarian_batched_scores_per_image_name_the_field():
    # [1, Q, C] scores for one image used to fail with "too many values to unpack"
    with pytest.raises(ValueError, match=r"pred_instances.scores must have shape \[Q, C\], got \(1, 6, 3\)"):
        HungarianAssigner(DETR).assign(Instances(scores=LOGITS[None], bboxes=PRED),
                                       Instances(labels=LABELS, bboxes=GT), HUNGARIAN_META)


@pytest.mark.parametrize("label", [-1, 3])
def test_hungarian_label_out_of_range_never_reaches_indexing(label):
    # used to raise IndexError from the gather (a device-side assert on CUDA)
    with pytest.raises(ValueError, match=r"gt_instances.labels must be class indices"):
        HungarianAssigner(DETR).assign(Instances(scores=LOGITS, bboxes=PRED),
                                       Instances(labels=torch.tensor([0, label]), bboxes=GT), HUNGARIAN_META)


def test_hungarian_lists_and_mismatched_images():
    with pytest.raises(TypeError, match="gt_instances.labels must be a torch.Tensor, got list"):
        HungarianAssigner(DETR).assign(Instances(scores=LOGITS, bboxes=PRED), Instances(labels=[0, 2], bboxes=GT),
                                       HUNGARIAN_META)
    with pytest.raises(ValueError, match="B"):  # 2 images of predictions, 3 of GTs: torch.stack errors before
        HungarianAssigner(DETR).assign_batch(batched(LOGITS), batched(PRED), None, torch.zeros(3, 2).long(),
                                             GT.expand(3, 2, 4), None, img_shapes=(40, 40))


def test_max_iou_nan_neg_thr_refused():
    # NaN made every negative an "ignore" (iou < nan is never true)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=math.nan)
    with pytest.raises(ValueError, match=r"neg_iou_thr\[1\]"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=(0.0, math.nan))


def test_tal_nan_alpha_refused():
    # alpha = NaN gave NaN metrics and no error
    with pytest.raises(ValueError, match="alpha"):
        TaskAlignedAssigner(alpha=math.nan)
    with pytest.raises(ValueError, match="beta"):
        TaskAlignedAssigner().assign_batch(batched(PROBS), batched(PRED), POINTS[:, :2], batched(LABELS),
                                           batched(GT), beta=math.nan)


def test_string_weight_refused_when_built():
    # weight='2' failed later, inside the cost, with an unrelated message
    with pytest.raises(TypeError, match="weight must be a number, got str '2'"):
        build_match_cost(dict(type="FocalLossCost", weight="2"))
    with pytest.raises(TypeError, match="weight"):
        HungarianAssigner([dict(type="BBoxL1Cost", weight="2")])


def test_max_iou_negative_label_refused_without_num_classes():
    # MaxIoU has no class count; label -1 used to come back as a positive labelled -1
    with pytest.raises(ValueError, match="gt_instances.labels must be class indices >= 0, got -1"):
        MaxIoUAssigner(0.5, 0.4).assign(Instances(priors=PRIORS), Instances(bboxes=GT, labels=torch.tensor([0, -1])))


@pytest.mark.parametrize("entry_name", ["MaxIoU", "ApproxMaxIoU", "Grid", "BatchMaxIoU.assign_batch",
                                        "ATSS.assign_batch", "SimOTA.assign_batch", "Hungarian.assign_batch"])
def test_fractional_labels_refused_not_truncated(entry_name):
    # these paths used to truncate 1.9 to class 1
    entry = ENTRIES[entry_name]
    values = entry.values()
    key = "gt_instances.labels" if "gt_instances.labels" in values else "gt_labels"
    values[key] = values[key].float() + 0.9
    with pytest.raises(ValueError, match="integral class indices, got 0.9"):
        entry.run(values)


def test_multi_instance_non_finite_priors_refused():
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="pred_instances.priors must be finite"):
            MultiInstanceAssigner().assign(Instances(priors=with_value(PRIORS, bad)),
                                           Instances(bboxes=GT, labels=LABELS))


def test_topk_hungarian_inf_scores_refused():
    # an Inf score gives a finite focal cost and an Inf metric: it used to pass silently
    with pytest.raises(ValueError, match="pred_scores must be finite, got 1 Inf"):
        TopkHungarianAssigner(topk=2).assign(with_value(PROBS, math.inf), PRED, GT, LABELS, HUNGARIAN_META)


def test_hungarian_nan_error_names_the_input():
    with pytest.raises(ValueError, match=r"BBoxL1Cost produced .*non-finite inputs: pred_instances.bboxes \(1 NaN"):
        HungarianAssigner(DETR).assign(Instances(scores=LOGITS, bboxes=with_value(PRED, math.nan)),
                                       Instances(labels=LABELS, bboxes=GT), HUNGARIAN_META)
    with pytest.raises(ValueError, match=r"non-finite inputs: pred_bboxes \(1 NaN"):
        HungarianAssigner(DETR).assign_batch(batched(LOGITS), with_value(batched(PRED), math.nan), None,
                                             batched(LABELS), batched(GT), None, img_shapes=(40, 40))


def test_img_shapes_must_be_positive():
    with pytest.raises(ValueError, match="img_shapes must be positive"):
        HungarianAssigner(DETR).assign_batch(batched(LOGITS), batched(PRED), None, batched(LABELS), batched(GT),
                                             None, img_shapes=(0, 40))
    with pytest.raises(TypeError, match="img_shapes"):
        HungarianAssigner(DETR).assign_batch(batched(LOGITS), batched(PRED), None, batched(LABELS), batched(GT),
                                             None, img_shapes=("h", "w"))


def test_value_checks_off_keeps_shape_checks():
    with V.value_checks(False):
        with pytest.raises(ValueError, match="pred_instances.scores"):
            HungarianAssigner(DETR).assign(Instances(scores=LOGITS[None], bboxes=PRED),
                                           Instances(labels=LABELS, bboxes=GT), HUNGARIAN_META)
        MaxIoUAssigner(0.5, 0.4).assign(Instances(priors=PRIORS), Instances(bboxes=inverted(GT), labels=LABELS))


# ----------------------------------------------------------------------------- hyper-parameters
NAN = math.nan
BAD_PARAMETERS = [
    (MaxIoUAssigner, dict(pos_iou_thr="0.5", neg_iou_thr=0.4), TypeError, "pos_iou_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=NAN, neg_iou_thr=0.4), ValueError, "pos_iou_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr="0.4"), TypeError, "neg_iou_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=True), TypeError, "neg_iou_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=(0.5, 0.1)), ValueError, "lo <= hi"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=NAN), ValueError, "min_pos_iou"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, gt_max_assign_all="False"), TypeError,
     "gt_max_assign_all"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=NAN), ValueError, "ignore_iof_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, gpu_assign_thr="10"), TypeError, "gpu_assign_thr"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, low_quality_mode="max"), ValueError, "low_quality_mode"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, perm_repeat_gt_cfg=dict(perm_range=NAN)), ValueError,
     "perm_range"),
    (MaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, iou_calculator=dict(type="BboxOverlaps2D", scale=0)),
     ValueError, "scale"),
    (ApproxMaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=NAN), ValueError, "neg_iou_thr"),
    (BatchMaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, chunk_elements="5"), TypeError, "chunk_elements"),
    (BatchMaxIoUAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.4, sparse=1), TypeError, "sparse"),
    (GridAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=[0.3, 0.1, 0.4]), TypeError, "neg_iou_thr"),
    (GridAssigner, dict(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou="1"), TypeError, "min_pos_iou"),
    (ATSSAssigner, dict(topk="9"), TypeError, "topk"),
    (ATSSAssigner, dict(topk=9.0), TypeError, "topk"),
    (ATSSAssigner, dict(alpha=NAN), ValueError, "alpha"),
    (ATSSAssigner, dict(alpha="0.8"), TypeError, "alpha"),
    (ATSSAssigner, dict(alpha=1.5), ValueError, "alpha"),
    (ATSSAssigner, dict(ignore_iof_thr=NAN), ValueError, "ignore_iof_thr"),
    (ATSSAssigner, dict(threshold_compare=">="), ValueError, "threshold_compare"),
    (TaskAlignedAssigner, dict(alpha=NAN), ValueError, "alpha"),
    (TaskAlignedAssigner, dict(beta=-1), ValueError, "beta"),
    (TaskAlignedAssigner, dict(alpha="1"), TypeError, "alpha"),
    (TaskAlignedAssigner, dict(topk=2.5), TypeError, "topk"),
    (TaskAlignedAssigner, dict(topk2="3"), TypeError, "topk2"),
    (TaskAlignedAssigner, dict(num_classes=0), ValueError, "num_classes"),
    (TaskAlignedAssigner, dict(strides=(8, "16")), TypeError, r"strides\[1\]"),
    (TaskAlignedAssigner, dict(strides=8), TypeError, "strides"),
    (TaskAlignedAssigner, dict(eps=NAN), ValueError, "eps"),
    (TaskAlignedAssigner, dict(inside_eps=-1.0), ValueError, "inside_eps"),
    (TaskAlignedAssigner, dict(neg_overlap=NAN), ValueError, "neg_overlap"),
    (TaskAlignedAssigner, dict(widen_small_gt="yes"), TypeError, "widen_small_gt"),
    (TaskAlignedAssigner, dict(max_chunk_mib=0), ValueError, "max_chunk_mib"),
    (TaskAlignedAssigner, dict(tie_break=None, method="fast"), ValueError, "method"),
    (SimOTAAssigner, dict(center_radius=NAN), ValueError, "center_radius"),
    (SimOTAAssigner, dict(candidate_topk=1.0), TypeError, "candidate_topk"),
    (SimOTAAssigner, dict(iou_weight="3"), TypeError, "iou_weight"),
    (SimOTAAssigner, dict(cls_weight=-1), ValueError, "cls_weight"),
    (SimOTAAssigner, dict(candidate_mode="box"), ValueError, "candidate_mode"),
    (SimOTAAssigner, dict(exact="no"), TypeError, "exact"),
    (DynamicSoftLabelAssigner, dict(soft_center_radius=math.inf), ValueError, "soft_center_radius"),
    (DynamicSoftLabelAssigner, dict(topk=True), TypeError, "topk"),
    (DynamicSoftLabelAssigner, dict(iou_weight=NAN), ValueError, "iou_weight"),
    (DynamicSoftLabelAssigner, dict(block_pairs=0), ValueError, "block_pairs"),
    (HungarianAssigner, dict(match_costs=[dict(type="FocalLossCost", alpha=NAN)]), ValueError, "alpha"),
    (MaskHungarianAssigner, dict(dice_cost=dict(type="DiceCost", eps="1")), TypeError, "eps"),
    (TopkHungarianAssigner, dict(topk="4"), TypeError, "topk"),
    (TopkHungarianAssigner, dict(topk=4, dense_outputs=1), TypeError, "dense_outputs"),
    (TopkHungarianAssigner, dict(topk=4, cls_cost=dict(type="FocalLossCost", gamma=-2)), ValueError, "gamma"),
    (MultiInstanceAssigner, dict(num_instance=2.0), TypeError, "num_instance"),
    (MultiInstanceAssigner, dict(pos_iou_thr=NAN), ValueError, "pos_iou_thr"),
    (MultiInstanceAssigner, dict(neg_iou_thr="0.5"), TypeError, "neg_iou_thr"),
    (UniformAssigner, dict(match_times=4.0), TypeError, "match_times"),
    (UniformAssigner, dict(pos_ignore_thr=NAN), ValueError, "pos_ignore_thr"),
    (UniformAssigner, dict(max_overlaps_mode="all"), ValueError, "max_overlaps_mode"),
    (RegionAssigner, dict(center_ratio=True), TypeError, "center_ratio"),
    (RegionAssigner, dict(ignore_ratio=NAN), ValueError, "ignore_ratio"),
    (RegionAssigner, dict(mmdet_labels="yes"), TypeError, "mmdet_labels"),
    (CenterRegionAssigner, dict(pos_scale=NAN, neg_scale=0.2), ValueError, "pos_scale"),
    (CenterRegionAssigner, dict(pos_scale=0.2, neg_scale=0.2, foreground_dominate="no"), TypeError,
     "foreground_dominate"),
    (CenterRegionAssigner, dict(pos_scale=0.2, neg_scale=0.2, min_pos_iof=NAN), ValueError, "min_pos_iof"),
    (PointAssigner, dict(scale="4"), TypeError, "scale"),
    (PointAssigner, dict(pos_num=0), ValueError, "pos_num"),
    (FocalLossCost, dict(weight="2"), TypeError, "weight"),
    (FocalLossCost, dict(weight=NAN), ValueError, "weight"),
    (FocalLossCost, dict(alpha=1.5), ValueError, "alpha"),
    (FocalLossCost, dict(binary_input="True"), TypeError, "binary_input"),
    (ClassificationCost, dict(weight=math.inf), ValueError, "weight"),
    (BBoxL1Cost, dict(box_format=4), ValueError, "box_format"),
    (IoUCost, dict(iou_mode="diou"), ValueError, "iou_mode"),
    (IoUCost, dict(weight=-1.0), ValueError, "weight"),
    (DiceCost, dict(eps=NAN), ValueError, "eps"),
    (DiceCost, dict(pred_act=1), TypeError, "pred_act"),
    (CrossEntropyLossCost, dict(use_sigmoid="yes"), TypeError, "use_sigmoid"),
    (BinaryFocalLossCost, dict(gamma=NAN), ValueError, "gamma"),
    (OneToManyHungarianAssigner, dict(match_costs=DETR, repeat=2.0), TypeError, "repeat"),
    (OneToManyHungarianAssigner, dict(match_costs=DETR, groups=0), ValueError, "groups"),
    (OneToManyHungarianAssigner, dict(match_costs=DETR, layout="blocks"), ValueError, "layout"),
    (OneToManyHungarianAssigner, dict(match_costs=DETR, solver="lapx"), ValueError, "solver"),
    (OneToManyHungarianAssigner, dict(match_costs=[dict(type="IoUCost", weight="2")]), TypeError, "weight"),
    (Stage2Assigner, dict(threshold=NAN), ValueError, "threshold"),
    (Stage2Assigner, dict(topk=2.0), TypeError, "topk"),
    (Stage2Assigner, dict(iou_weight="0.7"), TypeError, "iou_weight"),
    (Stage2Assigner, dict(score_weight=-1), ValueError, "score_weight"),
    (Stage2Assigner, dict(positive_fraction=1.5), ValueError, "positive_fraction"),
    (Stage2Assigner, dict(num_samples=-1), ValueError, "num_samples"),
    (Stage2Assigner, dict(low_quality="yes"), TypeError, "low_quality"),
    (RotatedTaskAlignedAssigner, dict(alpha=NAN), ValueError, "alpha"),
    (RotatedTaskAlignedAssigner, dict(beta="6"), TypeError, "beta"),
    (RotatedTaskAlignedAssigner, dict(topk="9"), TypeError, "topk"),
    (RotatedTaskAlignedAssigner, dict(topk2=0), ValueError, "topk2"),
    (RotatedTaskAlignedAssigner, dict(num_classes=2.0), TypeError, "num_classes"),
    (RotatedTaskAlignedAssigner, dict(strides=(8, "16")), TypeError, r"strides\[1\]"),
    (RotatedTaskAlignedAssigner, dict(strides=8), TypeError, "strides"),
    (RotatedTaskAlignedAssigner, dict(widen_small_gt=1), TypeError, "widen_small_gt"),
    (RotatedTaskAlignedAssigner, dict(eps=NAN), ValueError, "eps"),
    (RotatedTaskAlignedAssigner, dict(tie_break="random"), ValueError, "tie_break"),
    (RotatedTaskAlignedAssigner, dict(preset="yolo99"), ValueError, "preset"),
    (RotatedTaskAlignedAssigner, dict(max_chunk_mib=-1), ValueError, "max_chunk_mib"),
    (RotatedATSSAssigner, dict(topk=9.0), TypeError, "topk"),
    (RotatedATSSAssigner, dict(alpha=NAN), ValueError, "alpha"),
    (RotatedATSSAssigner, dict(iou_calculator=dict(type="RBboxOverlaps2D", scale=2.0)), ValueError, "no other keys"),
    (DynamicSoftLabelAssigner, dict(iou_calculator=dict(type="RBboxOverlaps2D", mode="iof")), ValueError,
     "no other keys"),
]


@pytest.mark.parametrize("cls, kwargs, error, name", BAD_PARAMETERS,
                         ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _, _ in BAD_PARAMETERS])
def test_bad_hyper_parameter_refused_when_built(cls, kwargs, error, name):
    with pytest.raises(error, match=name):
        cls(**kwargs)


def test_wrong_type_is_also_a_value_error():
    """Wrong-type hyper-parameters raise a TypeError that is also a ValueError (callers of either keep working)."""
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk="9")


MMDET_CONFIGS = [  # configs from mmdet 3.3.0's model zoo (thresholds of -1, (lo, hi) pairs, int thresholds)
    dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True,
         ignore_iof_thr=-1),
    dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=(0, 0.4), min_pos_iou=0, ignore_iof_thr=-1,
         gpu_assign_thr=512),
    dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False,
         ignore_iof_thr=-1, iou_calculator=dict(type="BboxOverlaps2D", scale=1, dtype="fp16")),
    dict(type="ApproxMaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, ignore_iof_thr=-1),
    dict(type="GridAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0),
    dict(type="ATSSAssigner", topk=9),
    dict(type="ATSSAssigner", topk=9, alpha=0.8),
    dict(type="TaskAlignedAssigner", topk=13, iou_calculator=dict(type="BboxOverlaps2D")),
    dict(type="SimOTAAssigner", center_radius=2.5),
    dict(type="DynamicSoftLabelAssigner", topk=13),
    dict(type="HungarianAssigner", match_costs=[dict(type="FocalLossCost", weight=2.0),
                                                dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                                                dict(type="IoUCost", iou_mode="giou", weight=2.0)]),
    dict(type="HungarianAssigner", match_costs=[dict(type="ClassificationCost", weight=2.0),
                                                dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                                                dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0)]),
    dict(type="TopkHungarianAssigner", topk=4),
    dict(type="MultiInstanceAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False,
         num_instance=2),
    dict(type="UniformAssigner", pos_ignore_thr=0.15, neg_ignore_thr=0.7),
    dict(type="RegionAssigner", center_ratio=0.2, ignore_ratio=0.5),
    dict(type="CenterRegionAssigner", pos_scale=0.2, neg_scale=0.2, min_pos_iof=0.01),
    dict(type="PointAssigner", scale=4, pos_num=1),
    # mmrotate 1.x configs (rotated RetinaNet, rotated ATSS, rotated RTMDet) and the ultralytics OBB presets
    dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1,
         iou_calculator=dict(type="RBboxOverlaps2D")),
    dict(type="RotatedATSSAssigner", topk=9, iou_calculator=dict(type="RBboxOverlaps2D")),
    dict(type="DynamicSoftLabelAssigner", topk=13, iou_calculator=dict(type="RBboxOverlaps2D")),
    dict(type="RotatedTaskAlignedAssigner", preset="yolo26_one2one", num_classes=15),
]


@pytest.mark.parametrize("cfg", MMDET_CONFIGS, ids=[c["type"] for c in MMDET_CONFIGS])
def test_mmdet_configs_still_build(cfg):
    build_assigner(cfg)


def test_check_number_and_choice():
    assert V.check_number("x", np.float32(0.5), low=0, high=1) == np.float32(0.5)
    assert V.check_number("k", np.int64(3), integer=True) == 3
    assert V.check_number("t", -math.inf, finite=False) == -math.inf
    with pytest.raises(ValueError, match="x must be > 0 and <= 1, got 0"):
        V.check_number("x", 0, low=0, low_open=True, high=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        V.check_choice("mode", True, (None, 1))   # True == 1 but is not the choice 1
    assert V.check_flag("f", np.bool_(True)) is True


# ----------------------------------------------------------------------------- accepted inputs
EMPTIES = [torch.empty(0), torch.FloatTensor([]), torch.LongTensor([]), torch.empty(0, 2), torch.empty(0, 4).long()]
PER_IMAGE = ["MaxIoU", "ApproxMaxIoU", "Grid", "ATSS", "ATSS-DDOD", "TAL-mmdet", "TAL-ultralytics", "SimOTA",
             "DynamicSoftLabel", "Hungarian", "TopkHungarian", "MultiInstance", "Uniform", "Region", "CenterRegion",
             "Point", "OneToManyHungarian", "Stage2", "RotatedTAL", "RotatedMaxIoU", "RotatedATSS", "RotatedDSL"]


def gt_keys(values):
    return [k for k in values if k.startswith("gt_instances.") or k in ("gt_bboxes", "gt_labels")]


@pytest.mark.parametrize("empty", range(len(EMPTIES)), ids=[f"{tuple(t.shape)}-{t.dtype}" for t in EMPTIES])
@pytest.mark.parametrize("entry_name", PER_IMAGE)
def test_empty_gt_of_any_dtype_or_rank_means_no_gt(entry_name, empty):
    entry = ENTRIES[entry_name]
    values = entry.values()
    for key in gt_keys(values):
        values[key] = EMPTIES[empty]
    result = entry.run(values)
    gt_inds = result.gt_inds
    assert result.num_gts == (1 if entry_name == "MultiInstance" else 0)   # MultiInstance counts its ignore box
    if entry_name == "MultiInstance":
        assert (result.labels <= 0).all()   # [N, k] slots, background
    else:
        assert gt_inds.shape == (6,) and not (gt_inds > 0).any()


@pytest.mark.parametrize("empty", [torch.empty(0), torch.FloatTensor([])], ids=["empty(0)", "FloatTensor([])"])
@pytest.mark.parametrize("entry_name", [n for n in PER_IMAGE if n != "MultiInstance"])
def test_empty_priors_of_any_rank_means_no_priors(entry_name, empty):
    entry = ENTRIES[entry_name]
    values = entry.values()
    for key in values:
        if not key.startswith("gt_"):
            values[key] = empty if values[key].is_floating_point() else empty.bool()
    result = entry.run(values)
    assert result.gt_inds.shape == (0,)


class BoxObject:
    """Stands in for mmdet's HorizontalBoxes: anything with a ``.tensor`` of shape [N, 4]."""

    def __init__(self, tensor):
        self.tensor = tensor


@pytest.mark.parametrize("entry_name", [n for n in ENTRIES if not n.endswith("Cost") and n != "MaskHungarian"])
def test_box_objects_are_unwrapped(entry_name):
    entry = ENTRIES[entry_name]
    values = entry.values()
    expected = entry.run(values).gt_inds
    for slot in entry.slots:
        if slot.kind in ("gt_boxes", "boxes", "nan_boxes") and slot.value.shape[-1] == 4:
            values[slot.name] = BoxObject(slot.value)
    assert torch.equal(entry.run(values).gt_inds, expected)


@pytest.mark.parametrize("entry_name", [n for n in ENTRIES if any(s.kind == "labels" for s in ENTRIES[n].slots)])
def test_integral_float_labels_are_class_indices(entry_name):
    entry = ENTRIES[entry_name]
    values = entry.values()
    expected = entry.run(values)
    for slot in entry.slots:
        if slot.kind == "labels":
            values[slot.name] = slot.value.float()
    result = entry.run(values)
    if hasattr(expected, "gt_inds"):
        assert torch.equal(result.gt_inds, expected.gt_inds)
        assert result.labels is None or result.labels.dtype == torch.long
    else:
        assert torch.equal(result, expected)   # a match cost


# ----------------------------------------------------------------------------- box_area
@pytest.mark.parametrize("dtype, side", [(torch.int8, 100), (torch.uint8, 200), (torch.int16, 300),
                                         (torch.int32, 100_000), (torch.float16, 300), (torch.bfloat16, 300)])
def test_box_area_upcasts(dtype, side):
    # int8 100 x 100 used to wrap to 16; fp16 300 x 300 to overflow to inf
    area = box_area(torch.tensor([[0, 0, side, side]]).to(dtype))
    assert area.dtype == torch.float32
    assert area.item() == pytest.approx(float(side) ** 2, rel=1e-6)


def test_box_area_keeps_float64():
    assert box_area(torch.tensor([[0, 0, 3, 4.0]], dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("entry_name", ["Hungarian", "TopkHungarian", "TAL-mmdet", "SimOTA", "DynamicSoftLabel",
                                        "ATSS-DDOD", "Hungarian.assign_batch", "TAL.assign_batch",
                                        "MaskHungarian.assign_batch"])
def test_cuda_out_of_range_label_is_a_value_error_not_a_device_assert(entry_name):
    entry = ENTRIES[entry_name]
    values = {k: v.cuda() for k, v in entry.values().items()}
    key = next(s.name for s in entry.slots if s.kind == "labels")
    values[key] = with_value(values[key], C).long()
    with pytest.raises(ValueError, match="class indices"):
        entry.run(values)
    torch.cuda.synchronize()   # a device-side assert would surface here
