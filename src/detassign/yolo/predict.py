"""Inference: anchor points, decoding of the head's raw maps, and non-maximum suppression (pure torch).

Shape symbols: B batch, A anchor points (sum of H_l * W_l), K classes, R DFL bins, N boxes.

* :func:`make_anchor_points` cell centres (offset 0.5) in grid units, and each point's stride.
* :func:`decode` raw maps -> [B, 4 + K, A]: (cx, cy, w, h) in input pixels, sigmoid class scores
  (no objectness), ultralytics' inference layout.
* :func:`nms` per-image, class-aware greedy NMS -> list of [N_i, 6] (x1, y1, x2, y2, score, class).
  :func:`greedy_nms` is exact greedy NMS computed the Cluster-NMS way (Zheng et al., "Enhancing
  Geometric Factors in Model Learning and Inference", 2021) on blocks of score-sorted boxes: within a
  block, iterate ``keep <- no kept higher-scored box overlaps it by > iou_thres`` from all-kept to its
  fixed point, which is the sequential greedy result; each step is one boolean matrix reduction
  instead of one Python iteration per box. Blocks keep memory at O(block * (block + kept)).
* :func:`predict_loader` runs a model over a loader of :func:`detassign.data.collate` batches and times
  preprocess / inference / NMS per image (the speed line of ``detassign val``).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..boxes import cxcywh_to_xyxy, pairwise_iou
from ..losses import dfl_decode

__all__ = ["make_anchor_points", "distances_to_boxes", "split_predictions", "decode", "greedy_nms",
           "batched_greedy_nms", "nms", "predict_loader"]


def make_anchor_points(feats: Sequence[Tensor], strides: Union[Sequence[float], Tensor],
                       offset: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Cell centres of every level, row-major per level, levels concatenated.

    feats: per-level maps [B, *, H_l, W_l] (only shapes, dtype and device are read).
    -> (anchor_points [A, 2] (x, y) in grid units of their level, stride_tensor [A, 1]).
    Pixel coordinates are ``anchor_points * stride_tensor``.
    """
    if len(feats) != len(strides):
        raise ValueError(f"feats and strides must have the same length, got {len(feats)} and {len(strides)}")
    dtype, device = feats[0].dtype, feats[0].device
    points, stride_rows = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[-2:]
        xs = torch.arange(w, device=device, dtype=dtype) + offset
        ys = torch.arange(h, device=device, dtype=dtype) + offset
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((gx, gy), dim=-1).view(-1, 2))
        stride_rows.append(torch.full((h * w, 1), float(stride), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_rows)


def distances_to_boxes(distances: Tensor, anchor_points: Tensor) -> Tensor:
    """(l, t, r, b) distances [..., A, 4] from anchor points [A, 2] -> xyxy boxes [..., A, 4]."""
    left_top, right_bottom = distances.chunk(2, dim=-1)
    return torch.cat((anchor_points - left_top, anchor_points + right_bottom), dim=-1)


def split_predictions(feats: Sequence[Tensor], reg_max: int, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Raw per-level maps [B, 4R + K, H_l, W_l] -> (box logits [B, A, 4R], class logits [B, A, K])."""
    channels = 4 * reg_max + num_classes
    for i, f in enumerate(feats):
        if f.dim() != 4 or f.shape[1] != channels:
            raise ValueError(f"feats[{i}] must have shape [B, {channels}, H, W] (4 * reg_max + num_classes), "
                             f"got {tuple(f.shape)}")
    B = feats[0].shape[0]
    flat = torch.cat([f.view(B, channels, -1) for f in feats], dim=2)  # [B, 4R + K, A]
    box_logits, cls_logits = flat.split((4 * reg_max, num_classes), dim=1)
    return box_logits.transpose(1, 2), cls_logits.transpose(1, 2)


def decode(feats: Sequence[Tensor], strides: Union[Sequence[float], Tensor], reg_max: int = 16,
           num_classes: Optional[int] = None) -> Tensor:
    """Raw per-level maps -> predictions [B, 4 + K, A]: (cx, cy, w, h) pixels, sigmoid class scores.

    ``num_classes`` defaults to ``channels - 4 * reg_max``.
    """
    if num_classes is None:
        num_classes = feats[0].shape[1] - 4 * reg_max
    box_logits, cls_logits = split_predictions(feats, reg_max, num_classes)
    anchor_points, stride_tensor = make_anchor_points(feats, strides)
    boxes = distances_to_boxes(dfl_decode(box_logits, reg_max), anchor_points)  # [B, A, 4] xyxy, grid units
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    xywh = torch.cat((centre, size), dim=-1) * stride_tensor
    return torch.cat((xywh, cls_logits.sigmoid()), dim=-1).transpose(1, 2)


def _resolve_block(suppress: Tensor, alive: Tensor) -> Tensor:
    """Greedy decisions inside one block of score-sorted boxes.

    suppress [n, n] bool, S[i, j] = i < j and IoU(i, j) > thr; alive [n] = not suppressed by an earlier
    block. Box j is kept iff alive and no kept i < j suppresses it. Iterating that rule from
    ``keep = alive`` settles one more rank per step and stops at the greedy result (Cluster-NMS).
    """
    keep = alive
    for _ in range(suppress.shape[0] + 1):
        new_keep = alive & ~(suppress & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def greedy_nms(boxes: Tensor, scores: Tensor, iou_thres: float, max_keep: Optional[int] = None,
               block_size: int = 1024) -> Tensor:
    """Greedy NMS. boxes [N, 4] xyxy, scores [N] -> kept indices [N_kept], by descending score.

    Boxes are visited in descending score (ties: lower index first); a box is kept unless a kept,
    higher-ranked box overlaps it with IoU > ``iou_thres``. Same result as torchvision's ``nms``
    (up to ties). Works through blocks of ``block_size`` sorted boxes: a block is first tested against
    the boxes already kept, then resolved internally, so memory is O(block_size * (block_size + N_kept)).
    ``max_keep``: stop once that many boxes are kept; exact, because later (lower-scored) boxes never
    change the decision on earlier ones. Returns at most ``max_keep`` indices.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].float()
    kept = torch.zeros(0, dtype=torch.long, device=boxes.device)  # positions in the sorted order
    ranks = torch.arange(len(order), device=boxes.device)
    for start in range(0, len(order), block_size):
        block = boxes[start:start + block_size]                       # [n, 4]
        alive = ~(pairwise_iou(boxes[kept], block) > iou_thres).any(dim=0)  # [n]
        local = ranks[:len(block)]
        suppress = (pairwise_iou(block, block) > iou_thres) & (local[None, :] > local[:, None])  # [n, n]
        keep = _resolve_block(suppress, alive)
        kept = torch.cat((kept, start + torch.nonzero(keep)[:, 0]))
        if max_keep is not None and len(kept) >= max_keep:
            break
    return order[kept[:max_keep]]


def batched_greedy_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_thres: float,
                       max_keep: Optional[int] = None) -> Tensor:
    """Class-aware greedy NMS: boxes of different classes never suppress each other.

    Each class is shifted by ``class * (max coordinate + 1)`` so that boxes of different classes
    cannot overlap, then one :func:`greedy_nms` runs over all. -> kept indices by descending score.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    offsets = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return greedy_nms(boxes + offsets, scores, iou_thres, max_keep)


def nms(predictions: Tensor, conf_thres: float = 0.25, iou_thres: float = 0.7, max_det: int = 300,
        multi_label: bool = False, agnostic: bool = False, max_nms: int = 30000) -> List[Tensor]:
    """Non-maximum suppression of decoded predictions.

    predictions [B, 4 + K, A] ((cx, cy, w, h) pixels, class scores) -> list of B tensors [N_i, 6]
    (x1, y1, x2, y2, score, class as float), sorted by descending score, N_i <= max_det.

    Candidates: score > conf_thres for the best class (``multi_label=False``) or for every class
    (``multi_label=True``, one row per (box, class), used for mAP evaluation). At most ``max_nms``
    highest-scored candidates enter NMS. ``agnostic=True`` suppresses across classes.
    """
    if predictions.dim() != 3 or predictions.shape[1] < 5:
        raise ValueError(f"predictions must have shape [B, 4 + K, A] with K >= 1, got {tuple(predictions.shape)}")
    for name, value in (("conf_thres", conf_thres), ("iou_thres", iou_thres)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    output = []
    for pred in predictions.transpose(1, 2):  # [A, 4 + K]
        boxes, scores = cxcywh_to_xyxy(pred[:, :4]), pred[:, 4:]
        if multi_label and scores.shape[1] > 1:
            box_idx, cls_idx = torch.nonzero(scores > conf_thres, as_tuple=True)
            conf = scores[box_idx, cls_idx]
        else:
            conf, cls_idx = scores.max(dim=1)
            box_idx = torch.nonzero(conf > conf_thres, as_tuple=True)[0]
            conf, cls_idx = conf[box_idx], cls_idx[box_idx]
        if conf.numel() > max_nms:
            top = conf.topk(max_nms).indices
            box_idx, cls_idx, conf = box_idx[top], cls_idx[top], conf[top]
        cand = boxes[box_idx]
        if agnostic:
            keep = greedy_nms(cand, conf, iou_thres, max_det)
        else:
            keep = batched_greedy_nms(cand, conf, cls_idx, iou_thres, max_det)
        output.append(torch.cat((cand[keep], conf[keep, None], cls_idx[keep, None].to(cand.dtype)), dim=1))
    return output


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader, device, conf_thres: float = 0.001, iou_thres: float = 0.7,
                   max_det: int = 300, multi_label: bool = True, progress: bool = False
                   ) -> Tuple[List[Dict[str, object]], List[Dict[str, object]], Dict[str, float]]:
    """Run ``model`` over ``loader`` (batches of :func:`detassign.data.collate`) with timings.

    Returns (predictions, ground truths, speed). Per image: predictions ``dict(boxes [K, 4] xyxy in
    original pixels, scores [K], labels [K], image_id, name)`` (NMS with ``multi_label``, as mAP needs),
    ground truths ``dict(boxes [M, 4], labels [M], image_id, name)``. ``speed`` holds milliseconds per
    image: ``preprocess`` (reading, decoding, letterboxing and collating the batch, copying it to the
    device as float), ``inference`` (the forward pass) and ``nms`` (NMS and mapping boxes back).
    CUDA work is synchronised before each clock reading.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds: List[Dict[str, object]] = []
    gts: List[Dict[str, object]] = []
    total = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
    batches = iter(loader)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="val", leave=False, dynamic_ncols=True)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            break
        images = batch["images"].to(device, non_blocking=True).float().div_(255.0)
        _sync(device)
        loaded = time.perf_counter()
        out = model(images)
        _sync(device)
        inferred = time.perf_counter()
        dets = nms(out.float(), conf_thres, iou_thres=iou_thres, max_det=max_det, multi_label=multi_label)
        for i, det in enumerate(dets):
            info, det, mask = batch["infos"][i], det.cpu(), batch["gt_mask"][i]
            meta = {"image_id": batch["image_ids"][i], "name": batch["names"][i]}
            preds.append({"boxes": info.to_original(det[:, :4]), "scores": det[:, 4], "labels": det[:, 5].long(),
                          **meta})
            gts.append({"boxes": info.to_original(batch["gt_bboxes"][i][mask]), "labels": batch["gt_labels"][i][mask],
                        **meta})
        done = time.perf_counter()
        total["preprocess"] += loaded - start
        total["inference"] += inferred - loaded
        total["nms"] += done - inferred
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    speed = {k: 1000.0 * v / max(len(preds), 1) for k, v in total.items()}
    return preds, gts, speed
