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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

__all__ = ["coco_evaluate", "to_coco_json", "coco_ground_truth", "COCO_IOU_THRESHOLDS"]

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
