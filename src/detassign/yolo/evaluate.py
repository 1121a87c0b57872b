"""COCO-style box evaluation through faster-coco-eval (pycocotools as a fallback), and COCO JSON export.

Shape symbols: N detections, M ground truths of one image.

Matching, precision / recall curves and their 101-point interpolation are the evaluator's
(``COCOeval.evaluate`` + ``accumulate``); this module only converts tensors to COCO dicts and reads the
accumulated arrays the way ``COCOeval.summarize`` does, for any ``maxDets`` (pycocotools' own
``summarize`` reports -1 for AP when 100 is not among ``maxDets``). Dense scenes (aerial tree
crowns: hundreds per image) need ``max_dets`` above COCO's 100; the default is 300.

Inputs per image:

* predictions: a tensor [N, 6] (x1, y1, x2, y2, score, class) as returned by
  :func:`detassign.yolo.predict.nms`, or ``dict(boxes [N, 4] xyxy, scores [N], labels [N])``;
* ground truths: ``dict(boxes [M, 4] xyxy, labels [M])`` (``bboxes`` accepted for ``boxes``), or a
  tensor [M, 5] (class, x1, y1, x2, y2).

Boxes are in pixels; COCO's area ranges (small < 32^2 < medium < 96^2 < large) use the GT box areas.
An image list with no GT at all yields -1 for every metric (COCO's convention for "undefined").
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

__all__ = ["coco_evaluate", "to_coco_json", "coco_ground_truth", "COCO_IOU_THRESHOLDS", "precision_recall_curves",
           "confusion_matrix", "class_counts", "DetectionReport", "evaluate_detections"]

COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
_AREAS = ("all", "small", "medium", "large")


def _backend():
    """(COCO, COCOeval, name): faster-coco-eval when importable, else pycocotools."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster, "faster_coco_eval"
    except ImportError:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            return COCO, COCOeval, "pycocotools"
        except ImportError as err:
            raise ImportError("coco_evaluate needs faster-coco-eval (pip install faster-coco-eval) "
                              "or pycocotools") from err


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _split_predictions(pred) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(pred, dict):
        boxes, scores, labels = pred["boxes"], pred["scores"], pred["labels"]
    else:
        pred = _to_numpy(pred)
        if pred.ndim != 2 or pred.shape[1] < 6:
            raise ValueError(f"each prediction must be [N, 6] (x1, y1, x2, y2, score, class), got {pred.shape}")
        boxes, scores, labels = pred[:, :4], pred[:, 4], pred[:, 5]
    return (_to_numpy(boxes).reshape(-1, 4).astype(np.float64), _to_numpy(scores).reshape(-1).astype(np.float64),
            _to_numpy(labels).reshape(-1).astype(np.int64))


def _split_ground_truth(gt) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(gt, dict):
        boxes = gt["boxes"] if "boxes" in gt else gt["bboxes"]
        labels = gt["labels"]
    else:
        gt = _to_numpy(gt)
        if gt.ndim != 2 or gt.shape[1] != 5:
            raise ValueError(f"each ground truth must be a dict(boxes, labels) or [M, 5] (class, x1, y1, x2, y2), "
                             f"got shape {gt.shape}")
        boxes, labels = gt[:, 1:], gt[:, 0]
    return _to_numpy(boxes).reshape(-1, 4).astype(np.float64), _to_numpy(labels).reshape(-1).astype(np.int64)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def to_coco_json(predictions: Sequence, image_ids: Optional[Sequence[int]] = None,
                 class_ids: Optional[Sequence[int]] = None, path: Optional[str] = None) -> List[Dict[str, Any]]:
    """Detections as COCO results: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.

    image_ids: id of each image (default 0, 1, ...); class_ids: category id of each class index
    (default the index itself). Writes the list to ``path`` as JSON when given.
    """
    image_ids = list(range(len(predictions))) if image_ids is None else list(image_ids)
    if len(image_ids) != len(predictions):
        raise ValueError(f"image_ids must have one id per image, got {len(image_ids)} for {len(predictions)} images")
    results = []
    for image_id, pred in zip(image_ids, predictions):
        boxes, scores, labels = _split_predictions(pred)
        for box, score, label in zip(_xywh(boxes), scores, labels):
            category = int(class_ids[label]) if class_ids is not None else int(label)
            results.append({"image_id": int(image_id), "category_id": category,
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(score), 5)})
    if path is not None:
        with open(path, "w") as f:
            json.dump(results, f)
    return results


def coco_ground_truth(ground_truths: Sequence, image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                      num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None
                      ) -> Dict[str, Any]:
    """Ground truths as a COCO dataset dict (images 0..n-1, categories = class indices, annotation ids from 1).

    image_sizes: (h, w) per image (only stored; default 0 x 0).
    """
    images, annotations, seen = [], [], set()
    for i, gt in enumerate(ground_truths):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i, "height": int(h), "width": int(w)})
        boxes, labels = _split_ground_truth(gt)
        for box, label in zip(_xywh(boxes), labels):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
            seen.add(int(label))
    if class_names is not None:
        num_classes = len(class_names)
    ids = range(num_classes) if num_classes is not None else sorted(seen)
    categories = [{"id": int(c), "name": class_names[c] if class_names is not None else str(c)} for c in ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_from_dict(coco_cls, dataset: Dict[str, Any]):
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections_dataset(gt_dataset: Dict[str, Any], predictions: Sequence) -> Dict[str, Any]:
    annotations = []
    for image_id, pred in enumerate(predictions):
        boxes, scores, labels = _split_predictions(pred)
        for box, score, label in zip(_xywh(boxes), scores, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "score": float(score),
                                "iscrowd": 0})
    return {"images": gt_dataset["images"], "categories": gt_dataset["categories"], "annotations": annotations}


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (the evaluator's 'undefined' marker), -1 when none: summarize's rule."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _read_metrics(evaluator, max_dets: Sequence[int]) -> Dict[str, Any]:
    """Summary numbers from the accumulated precision [T, R, K, areas, maxDets] and recall [T, K, areas, maxDets]."""
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    area_labels = list(evaluator.params.areaRngLbl)
    last = len(max_dets) - 1
    ious = np.asarray(evaluator.params.iouThrs)

    def ap(area: str = "all", t: Optional[int] = None, k: Optional[int] = None) -> float:
        p = precision[:, :, :, area_labels.index(area), last]
        p = p if t is None else p[t:t + 1]
        p = p if k is None else p[:, :, k:k + 1]
        return _mean_valid(p)

    def ar(area: str = "all", m: int = last) -> float:
        return _mean_valid(recall[:, :, area_labels.index(area), m])

    t50, t75 = int(np.argmin(np.abs(ious - 0.5))), int(np.argmin(np.abs(ious - 0.75)))
    out = {"map": ap(), "map50": ap(t=t50), "map75": ap(t=t75), "map_small": ap("small"),
           "map_medium": ap("medium"), "map_large": ap("large")}
    for m, md in enumerate(max_dets):
        out[f"mar_{md}"] = ar(m=m)
    out.update({"mar_small": ar("small"), "mar_medium": ar("medium"), "mar_large": ar("large")})
    out["ap_per_iou"] = {round(float(thr), 2): ap(t=t) for t, thr in enumerate(ious)}
    cat_ids = list(evaluator.params.catIds)
    out["ap_per_class"] = {int(c): ap(k=k) for k, c in enumerate(cat_ids)}
    out["ap50_per_class"] = {int(c): ap(t=t50, k=k) for k, c in enumerate(cat_ids)}
    return out


def coco_evaluate(predictions: Sequence, ground_truths: Sequence, max_dets: int = 300,
                  image_sizes: Optional[Sequence[Tuple[int, int]]] = None, num_classes: Optional[int] = None,
                  class_names: Optional[Sequence[str]] = None, verbose: bool = False) -> Dict[str, Any]:
    """COCO box mAP of per-image predictions against per-image ground truths.

    predictions, ground_truths: one entry per image (formats in the module docstring).
    max_dets: detections kept per image (highest scores); ``maxDets = [1, 10, max_dets]``.
    Returns ``dict(map (0.50:0.95), map50, map75, map_small / medium / large, mar_1, mar_10,
    mar_<max_dets>, mar_small / medium / large, ap_per_iou {0.5: ..., 0.95: ...}, ap_per_class
    {class: AP50:95}, ap50_per_class, backend)``; -1 marks an undefined value (no GT in that group).
    ``verbose=True`` prints the evaluator's summary table.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions and ground_truths must have one entry per image, got {len(predictions)} "
                         f"and {len(ground_truths)}")
    if int(max_dets) < 10:
        raise ValueError(f"max_dets must be >= 10 (maxDets = [1, 10, max_dets]), got {max_dets}")
    coco_cls, eval_cls, backend = _backend()
    gt_dataset = coco_ground_truth(ground_truths, image_sizes, num_classes, class_names)
    coco_gt = _coco_from_dict(coco_cls, gt_dataset)
    coco_dt = _coco_from_dict(coco_cls, _detections_dataset(gt_dataset, predictions))
    evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.maxDets = [1, 10, int(max_dets)]
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        evaluator.evaluate()
        evaluator.accumulate()
        if verbose:
            evaluator.summarize()
    metrics = _read_metrics(evaluator, evaluator.params.maxDets)
    metrics["backend"] = backend
    return metrics


# --------------------------------------------------------------------------- curves and confusion matrix
# Precision / recall at one IoU threshold, as functions of the confidence threshold (ultralytics' P, R,
# F1 curve and PR curve), and the detection confusion matrix: what a run folder plots after the last
# validation. The matching is COCOeval's, so ``ap`` equals ``coco_evaluate``'s per-class AP50.


def _pairwise_iou_np(gt_boxes: np.ndarray, pred_boxes: np.ndarray) -> np.ndarray:
    """[M, 4], [N, 4] xyxy -> [M, N] IoU (``detassign.boxes.pairwise_iou`` in float64)."""
    import torch

    from ..boxes import pairwise_iou

    return pairwise_iou(torch.from_numpy(gt_boxes), torch.from_numpy(pred_boxes)).numpy()


def _true_positives(pred_boxes: np.ndarray, pred_scores: np.ndarray, pred_labels: np.ndarray,
                    gt_boxes: np.ndarray, gt_labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """[N] bool: detection n matches a GT of its class with IoU >= ``iou_threshold``. Detections are visited
    by descending score and each takes the best-IoU GT not yet taken (COCOeval's rule)."""
    tp = np.zeros(len(pred_scores), bool)
    if not len(pred_scores) or not len(gt_labels):
        return tp
    ious = _pairwise_iou_np(gt_boxes, pred_boxes)                 # [M, N]
    ious[gt_labels[:, None] != pred_labels[None, :]] = -1.0
    taken = np.zeros(len(gt_labels), bool)
    for n in np.argsort(-pred_scores, kind="mergesort"):
        candidates = np.where(taken, -1.0, ious[:, n])
        m = len(candidates) - 1 - int(candidates[::-1].argmax())  # equal IoUs: the last GT, as COCOeval's loop
        if candidates[m] >= iou_threshold:
            taken[m] = tp[n] = True
    return tp


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} labels must be in [0, {num_classes}) (num_classes={num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")


def precision_recall_curves(predictions: Sequence, ground_truths: Sequence, num_classes: int,
                            iou_threshold: float = 0.5, max_dets: int = 300, points: int = 1000) -> Dict[str, Any]:
    """Per-class precision, recall and F1 against the confidence threshold, and COCO's interpolated
    precision-recall curve, at one IoU threshold. Inputs as :func:`coco_evaluate` (one entry per image).

    Returns a dict (C = ``num_classes``, P = ``points``):

    * ``confidence`` [P]: thresholds 0 ... 1; ``precision``, ``recall``, ``f1`` [C, P] of the detections
      scoring >= each threshold (precision is 1 above a class's top score, 0 for a class never detected);
    * ``recall_levels`` [101] and ``pr_curve`` [C, 101]: COCO's interpolated precision at recall 0, 0.01, ... 1;
      ``ap`` [C] its mean (AP at ``iou_threshold``; -1 for a class without GT); ``num_gt`` [C];
    * ``best_confidence``: the threshold of the highest mean F1 over the classes that have GT, and there
      ``precision_at_best`` / ``recall_at_best`` [C], ``mean_precision`` / ``mean_recall`` (ultralytics' P and R).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions and ground_truths must have one entry per image, got {len(predictions)} "
                         f"and {len(ground_truths)}")
    num_classes = int(num_classes)
    scores = [[] for _ in range(num_classes)]
    hits = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    for pred, gt in zip(predictions, ground_truths):
        boxes, score, labels = _split_predictions(pred)
        top = np.argsort(-score, kind="mergesort")[:max_dets]
        boxes, score, labels = boxes[top], score[top], labels[top]
        gt_boxes, gt_labels = _split_ground_truth(gt)
        _check_labels(labels, num_classes, "prediction")
        _check_labels(gt_labels, num_classes, "ground-truth")
        tp = _true_positives(boxes, score, labels, gt_boxes, gt_labels, iou_threshold)
        num_gt += np.bincount(gt_labels, minlength=num_classes)
        for c in np.unique(labels):
            scores[c].append(score[labels == c])
            hits[c].append(tp[labels == c])
    confidence = np.linspace(0.0, 1.0, points)
    recall_levels = np.linspace(0.0, 1.0, 101)
    precision = np.zeros((num_classes, points))
    recall = np.zeros((num_classes, points))
    pr_curve = np.zeros((num_classes, 101))
    for c in range(num_classes):
        if not scores[c]:
            continue
        s, t = np.concatenate(scores[c]), np.concatenate(hits[c])
        order = np.argsort(-s, kind="mergesort")                   # COCOeval's order across images
        s, t = s[order], t[order]
        true_pos = np.cumsum(t)
        rec = true_pos / max(num_gt[c], 1)                          # [D]
        prec = true_pos / np.arange(1, len(t) + 1)                  # [D]
        kept = np.searchsorted(-s, -confidence, side="right")       # [P] detections scoring >= threshold
        precision[c] = np.where(kept > 0, prec[np.maximum(kept - 1, 0)], 1.0)
        recall[c] = np.where(kept > 0, rec[np.maximum(kept - 1, 0)], 0.0)
        envelope = np.maximum.accumulate(prec[::-1])[::-1]          # precision made non-increasing in recall
        at = np.searchsorted(rec, recall_levels, side="left")
        pr_curve[c] = np.where(at < len(rec), envelope[np.minimum(at, len(rec) - 1)], 0.0)
    f1 = 2 * precision * recall / (precision + recall + 1e-16)
    present = num_gt > 0
    best = int(f1[present].mean(0).argmax()) if present.any() else 0
    return {
        "confidence": confidence, "precision": precision, "recall": recall, "f1": f1,
        "recall_levels": recall_levels, "pr_curve": pr_curve, "num_gt": num_gt,
        "ap": np.where(present, pr_curve.mean(1), -1.0),
        "best_confidence": float(confidence[best]),
        "precision_at_best": precision[:, best], "recall_at_best": recall[:, best],
        "mean_precision": float(precision[present, best].mean()) if present.any() else 0.0,
        "mean_recall": float(recall[present, best].mean()) if present.any() else 0.0,
    }


def confusion_matrix(predictions: Sequence, ground_truths: Sequence, num_classes: int,
                     conf_threshold: float = 0.25, iou_threshold: float = 0.45) -> np.ndarray:
    """Detection confusion matrix [C + 1, C + 1] of counts: row = predicted class, column = true class,
    index C = background (row C: a GT nobody found; column C: a detection of nothing). Detections scoring
    >= ``conf_threshold`` are paired one to one with GTs of any class, by descending IoU, among pairs with
    IoU > ``iou_threshold`` (ultralytics' layout and thresholds)."""
    num_classes = int(num_classes)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for pred, gt in zip(predictions, ground_truths):
        boxes, score, labels = _split_predictions(pred)
        keep = score >= conf_threshold
        boxes, labels = boxes[keep], labels[keep]
        gt_boxes, gt_labels = _split_ground_truth(gt)
        _check_labels(labels, num_classes, "prediction")
        _check_labels(gt_labels, num_classes, "ground-truth")
        found, used = np.zeros(len(gt_labels), bool), np.zeros(len(labels), bool)
        if len(gt_labels) and len(labels):
            ious = _pairwise_iou_np(gt_boxes, boxes)               # [M, N]
            g, d = np.nonzero(ious > iou_threshold)
            for m, n in zip(*(x[np.argsort(-ious[g, d], kind="mergesort")] for x in (g, d))):
                if not found[m] and not used[n]:
                    found[m] = used[n] = True
                    matrix[labels[n], gt_labels[m]] += 1
        np.add.at(matrix, (num_classes, gt_labels[~found]), 1)
        np.add.at(matrix, (labels[~used], num_classes), 1)
    return matrix


# --------------------------------------------------------------------------- the report of ``detassign val``


def class_counts(ground_truths: Sequence, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(images [C]: how many images hold at least one GT of each class, instances [C]: GT boxes per class)."""
    images = np.zeros(int(num_classes), np.int64)
    instances = np.zeros(int(num_classes), np.int64)
    for gt in ground_truths:
        _, labels = _split_ground_truth(gt)
        _check_labels(labels, int(num_classes), "ground-truth")
        counts = np.bincount(labels, minlength=int(num_classes))
        instances += counts
        images += counts > 0
    return images, instances


@dataclass
class DetectionReport:
    """What ``detassign val`` prints and writes, for C classes.

    metrics: :func:`coco_evaluate`'s dict (per-class entries keyed by class index);
    curves: :func:`precision_recall_curves` at IoU 0.5; confusion: :func:`confusion_matrix` [C + 1, C + 1];
    images / instances [C]: images holding each class and its GT boxes; num_images: images evaluated.
    P and R are ultralytics' (at the confidence of the best mean F1); mAP50 and mAP50-95 are the evaluator's.
    """

    class_names: List[str]
    metrics: Dict[str, Any]
    curves: Dict[str, Any]
    confusion: np.ndarray
    images: np.ndarray
    instances: np.ndarray
    num_images: int

    def rows(self) -> List[Dict[str, Any]]:
        """The table: an ``all`` row, then one row per class that has GT (as ultralytics prints it)."""
        rows = [{"class": "all", "images": int(self.num_images), "instances": int(self.instances.sum()),
                 "precision": self.curves["mean_precision"], "recall": self.curves["mean_recall"],
                 "map50": float(self.metrics["map50"]), "map": float(self.metrics["map"])}]
        return rows + [row for row in self.class_rows().values() if row["instances"] > 0]

    def class_rows(self) -> Dict[str, Dict[str, Any]]:
        """Per class name: images, instances, precision, recall, map50, map (-1: no GT, COCO's 'undefined')."""
        out = {}
        for c, name in enumerate(self.class_names):
            defined = self.instances[c] > 0
            out[name] = {"class": name, "images": int(self.images[c]), "instances": int(self.instances[c]),
                         "precision": float(self.curves["precision_at_best"][c]) if defined else -1.0,
                         "recall": float(self.curves["recall_at_best"][c]) if defined else -1.0,
                         "map50": float(self.metrics["ap50_per_class"].get(c, -1.0)),
                         "map": float(self.metrics["ap_per_class"].get(c, -1.0))}
        return out

    def table(self) -> str:
        """The rows as aligned text, ultralytics' columns."""
        width = max([len("class")] + [len(r["class"]) for r in self.rows()])
        lines = [f"{'class':>{width}} {'images':>8} {'instances':>10} {'P':>8} {'R':>8} {'mAP50':>8} {'mAP50-95':>9}"]
        for r in self.rows():
            lines.append(f"{r['class']:>{width}} {r['images']:>8} {r['instances']:>10} {r['precision']:>8.3f} "
                         f"{r['recall']:>8.3f} {r['map50']:>8.3f} {r['map']:>9.3f}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: the evaluator's scalar metrics (map, map50, map75, ..., mar_300), ``precision`` /
        ``recall`` / ``confidence`` (ultralytics' P, R and the threshold they are read at), ``images``,
        ``instances``, ``per_class`` {name: row}, ``ap_per_class`` / ``ap50_per_class`` {name: AP},
        ``ap_per_iou`` {"0.5": AP, ...} and the ``confusion_matrix`` (rows predicted, columns true, last
        background)."""
        out = {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows = self.class_rows()
        out.update({"precision": self.curves["mean_precision"], "recall": self.curves["mean_recall"],
                    "confidence": self.curves["best_confidence"], "images": int(self.num_images),
                    "instances": int(self.instances.sum()), "backend": self.metrics.get("backend"),
                    "per_class": rows,
                    "ap_per_class": {n: r["map"] for n, r in rows.items()},
                    "ap50_per_class": {n: r["map50"] for n, r in rows.items()},
                    "ap_per_iou": {f"{k:g}": float(v) for k, v in self.metrics["ap_per_iou"].items()},
                    "confusion_matrix": {"names": list(self.class_names) + ["background"],
                                         "counts": self.confusion.tolist()}})
        return out


def evaluate_detections(predictions: Sequence, ground_truths: Sequence, class_names: Sequence[str],
                        max_dets: int = 300, image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                        conf_threshold: float = 0.25, iou_threshold: float = 0.45) -> DetectionReport:
    """COCO mAP, per-class P / R / AP, the curves and the confusion matrix in one pass (inputs as
    :func:`coco_evaluate`). ``conf_threshold`` / ``iou_threshold`` are the confusion matrix's."""
    names = [str(n) for n in class_names]
    metrics = coco_evaluate(predictions, ground_truths, max_dets=max_dets, image_sizes=image_sizes,
                            class_names=names)
    curves = precision_recall_curves(predictions, ground_truths, len(names), max_dets=max_dets)
    matrix = confusion_matrix(predictions, ground_truths, len(names), conf_threshold, iou_threshold)
    images, instances = class_counts(ground_truths, len(names))
    return DetectionReport(names, metrics, curves, matrix, images, instances, len(ground_truths))
