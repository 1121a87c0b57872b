"""Data: readers (COCO JSON, Pascal VOC XML, YOLO txt) that find the usual dataset layouts, the default NEON
tree-crown set, box-safe augmentations, and a Dataset + collate producing padded ``[B, M]`` targets."""
from .dataset import DetectionDataset, collate, pad_targets
from .neon import load_neon
from .readers import (DATA_HELP, SPEC_HELP, DataError, DatasetFormatError, DataWarning, DetectionRecord,
                      DetectionSet, check_image, load_image, read_coco, read_dataset, read_voc, read_yolo)
from .transforms import EvalTransform, LetterboxInfo, TrainAugment, letterbox

__all__ = [
    "DATA_HELP", "DataError", "DataWarning", "DatasetFormatError", "DetectionRecord", "DetectionSet",
    "DetectionDataset", "EvalTransform", "LetterboxInfo", "SPEC_HELP", "TrainAugment", "check_image", "collate",
    "letterbox", "load_image", "load_neon", "pad_targets", "read_coco", "read_dataset", "read_voc", "read_yolo",
]
