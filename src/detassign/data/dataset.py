"""A torch ``Dataset`` over :class:`DetectionSet` records and the collate that pads targets to ``[B, M]``.

Augmentation randomness comes from ``numpy.random.default_rng((seed, epoch, index))``: a sample's
augmentation depends on nothing else, so runs are reproducible with any number of workers and a
resumed run sees exactly the samples the uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .readers import DetectionSet, load_image
from .transforms import EvalTransform

__all__ = ["DetectionDataset", "collate", "pad_targets"]


class DetectionDataset(torch.utils.data.Dataset):
    """Items are dicts: ``image`` uint8 ``[3, H, W]``, ``boxes`` float32 ``[M, 4]`` xyxy px (network
    input frame), ``labels`` int64 ``[M]``, ``info`` (:class:`LetterboxInfo` back to the original image),
    ``index``, ``image_id`` (the dataset's own id, as in ``DetectionSet.image_ids``), ``name``."""

    def __init__(self, data: DetectionSet, transform: Optional[Callable] = None, seed: int = 0):
        self.data = data
        self.transform = transform if transform is not None else EvalTransform(640)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating, like DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Dict[str, object]:
        rec = self.data.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        image = load_image(rec.image)
        image, boxes, labels, info = self.transform(image, rec.boxes, rec.labels, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
            "info": info,
            "index": int(index),
            "image_id": rec.image_id,
            "name": rec.name,
        }


def pad_targets(boxes: List[torch.Tensor], labels: List[torch.Tensor]):
    """Per-image ``[M_i, 4]`` / ``[M_i]`` -> ``gt_labels [B, M] long``, ``gt_bboxes [B, M, 4]``, ``gt_mask [B, M] bool``
    with ``M = max(M_i)`` (at least 0); padding has label 0, box 0 and mask False."""
    b = len(boxes)
    m = max((len(x) for x in boxes), default=0)
    gt_labels = torch.zeros(b, m, dtype=torch.long)
    gt_bboxes = torch.zeros(b, m, 4, dtype=torch.float32)
    gt_mask = torch.zeros(b, m, dtype=torch.bool)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        n = len(bx)
        gt_bboxes[i, :n] = bx
        gt_labels[i, :n] = lb
        gt_mask[i, :n] = True
    return gt_labels, gt_bboxes, gt_mask


def collate(batch: List[Dict[str, object]], pad_value: int = 114) -> Dict[str, object]:
    """Stack images (padding right/bottom to the largest one) and pad targets.

    Returns ``images`` uint8 ``[B, 3, H, W]``, ``gt_labels [B, M]``, ``gt_bboxes [B, M, 4]``, ``gt_mask [B, M]``,
    and the lists ``infos``, ``indices``, ``image_ids``, ``names``.
    """
    h = max(item["image"].shape[1] for item in batch)
    w = max(item["image"].shape[2] for item in batch)
    images = torch.full((len(batch), 3, h, w), pad_value, dtype=torch.uint8)
    for i, item in enumerate(batch):
        img = item["image"]
        images[i, :, :img.shape[1], :img.shape[2]] = img
    gt_labels, gt_bboxes, gt_mask = pad_targets([x["boxes"] for x in batch], [x["labels"] for x in batch])
    return {
        "images": images,
        "gt_labels": gt_labels,
        "gt_bboxes": gt_bboxes,
        "gt_mask": gt_mask,
        "infos": [x["info"] for x in batch],
        "indices": [x["index"] for x in batch],
        "image_ids": [x["image_id"] for x in batch],
        "names": [x["name"] for x in batch],
    }
