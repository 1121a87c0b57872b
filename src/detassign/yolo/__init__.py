"""A compact YOLO11 stack: model, loss (with pluggable assigners), inference and COCO evaluation.

    model = YOLO11("n", num_classes=K)                      # exact ultralytics yolo11n architecture
    criterion = DetectionLoss(K, strides=model.stride)        # BCE + CIoU + DFL, TAL by default
    loss, items = criterion(model(images), targets)           # train mode: raw per-level maps
    model.eval(); dets = nms(model(images), conf_thres=0.25)  # eval mode: [B, 4 + K, A] decoded
    metrics = coco_evaluate(dets, ground_truths, max_dets=300)
"""
from .evaluate import coco_evaluate, to_coco_json
from .loss import DetectionLoss, DetectionTargets, targets_from_yolo_batch
from .model import SCALES, YOLO11
from .predict import decode, make_anchor_points, nms

__all__ = [
    "YOLO11",
    "SCALES",
    "DetectionLoss",
    "DetectionTargets",
    "targets_from_yolo_batch",
    "decode",
    "make_anchor_points",
    "nms",
    "coco_evaluate",
    "to_coco_json",
]
