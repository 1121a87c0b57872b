"""Read detection datasets into one in-memory form: a :class:`DetectionSet` of :class:`DetectionRecord`.

Three on-disk formats are understood:

* COCO JSON (``images`` / ``annotations`` / ``categories``; ``bbox`` is ``[x, y, w, h]`` in pixels),
* Pascal VOC XML (one file per image; ``<bndbox>`` is ``xmin ymin xmax ymax`` in pixels),
* YOLO txt (one file per image; each line ``class cx cy w h`` normalised to ``[0, 1]``).

Every record holds boxes as ``float32 [M, 4]`` xyxy pixels and labels as ``int64 [M]`` indexing
``DetectionSet.class_names``. Reading is strict: a file that cannot be parsed, an image that does
not exist, a box that leaves its image (beyond ``tolerance`` pixels) or has no area, and a class
that is not known all raise :class:`DatasetFormatError` naming the file and the offending entry.
Images are not decoded while reading (only their headers, for YOLO sizes); ``load_image`` does that.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "DatasetFormatError",
    "DetectionRecord",
    "DetectionSet",
    "load_image",
    "read_coco",
    "read_voc",
    "read_yolo",
    "read_dataset",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageSource = Union[str, os.PathLike, np.ndarray, Callable[[], np.ndarray]]


class DatasetFormatError(ValueError):
    """A dataset file is malformed; the message names the file and the entry."""

    def __init__(self, path, entry: str, problem: str):
        self.path = str(path)
        self.entry = entry
        super().__init__(f"{self.path}: {entry}: {problem}")


@dataclass
class DetectionRecord:
    """One labelled image.

    image: a path, an ``[H, W, 3] uint8`` array, or a zero-argument callable returning one.
    boxes: ``float32 [M, 4]`` xyxy pixels.  labels: ``int64 [M]``.  width/height: image size.
    """

    image: ImageSource
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    name: str = ""
    image_id: int = 0

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"record {self.name!r}: {len(self.boxes)} boxes but {len(self.labels)} labels")


@dataclass
class DetectionSet:
    """Records plus the class names their labels index."""

    records: List[DetectionRecord]
    class_names: List[str]
    source: str = ""
    meta: Dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> DetectionRecord:
        return self.records[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.boxes) for r in self.records))


def load_image(image: ImageSource) -> np.ndarray:
    """Decode ``image`` to an ``[H, W, 3] uint8`` RGB array (paths via Pillow; arrays pass through)."""
    if callable(image):
        image = image()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    from PIL import Image

    with Image.open(image) as im:
        return np.asarray(im.convert("RGB"))


def _image_size(path: Path) -> tuple:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def _check_box(path, entry: str, box: Sequence[float], width: float, height: float, tolerance: float):
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise DatasetFormatError(path, entry, f"box {box} is not finite")
    if x2 <= x1 or y2 <= y1:
        raise DatasetFormatError(path, entry, f"box {[x1, y1, x2, y2]} (xyxy) has no area")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise DatasetFormatError(
            path, entry, f"box {[x1, y1, x2, y2]} (xyxy) lies outside its {int(width)}x{int(height)} image")


def _clip(boxes: List[List[float]], width: float, height: float) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def _resolve_image(path, entry: str, image_path: Path) -> Path:
    if not image_path.is_file():
        raise DatasetFormatError(path, entry, f"image file {str(image_path)!r} does not exist")
    return image_path


# --------------------------------------------------------------------------- COCO


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, f"line {err.lineno} column {err.colno}", f"invalid JSON ({err.msg})") from None
    except OSError as err:
        raise DatasetFormatError(path, "file", f"cannot be read ({err.strerror})") from None


def _coco_categories(path: Path, data: dict):
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DatasetFormatError(path, "categories", "missing or empty list")
    cat_index, names = {}, []
    for i, cat in enumerate(sorted(cats, key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetFormatError(path, f"categories[{i}]", "needs 'id' and 'name'")
        cat_index[cat["id"]] = len(names)
        names.append(str(cat["name"]))
    return cat_index, names


def read_coco(json_path, image_dir=None, tolerance: float = 1.0, check_images: bool = True) -> DetectionSet:
    """Read a COCO detection JSON. ``image_dir`` defaults to the JSON's folder.

    Labels are the categories sorted by id, renumbered 0..C-1 (``meta['category_ids']`` maps back).
    ``iscrowd`` annotations are skipped. Boxes within ``tolerance`` px of the border are clipped.
    """
    path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetFormatError(path, "top level", "expected a JSON object with images/annotations/categories")
    cat_index, names = _coco_categories(path, data)
    images = data.get("images")
    if not isinstance(images, list):
        raise DatasetFormatError(path, "images", "missing list")
    by_id: Dict[object, dict] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise DatasetFormatError(path, f"images[{i}]", "needs 'id', 'file_name', 'width' and 'height'")
        by_id[img["id"]] = dict(img, boxes=[], labels=[])
    for i, ann in enumerate(data.get("annotations", [])):
        entry = f"annotations[{i}] (id {ann.get('id')})" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict) or "bbox" not in ann or "image_id" not in ann or "category_id" not in ann:
            raise DatasetFormatError(path, entry, "needs 'image_id', 'category_id' and 'bbox'")
        if ann.get("iscrowd", 0):
            continue
        img = by_id.get(ann["image_id"])
        if img is None:
            raise DatasetFormatError(path, entry, f"image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_index:
            raise DatasetFormatError(path, entry, f"unknown category_id {ann['category_id']!r}; known: {sorted(cat_index)}")
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DatasetFormatError(path, entry, f"bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        _check_box(path, entry, [x, y, x + w, y + h], img["width"], img["height"], tolerance)
        img["boxes"].append([x, y, x + w, y + h])
        img["labels"].append(cat_index[ann["category_id"]])
    records = []
    for i, img in enumerate(by_id.values()):
        image_path = image_dir / img["file_name"]
        if check_images:
            _resolve_image(path, f"images[{i}] (id {img['id']})", image_path)
        records.append(DetectionRecord(
            image=str(image_path), boxes=_clip(img["boxes"], img["width"], img["height"]),
            labels=img["labels"], width=int(img["width"]), height=int(img["height"]),
            name=str(img["file_name"]), image_id=int(img["id"]) if isinstance(img["id"], int) else i))
    return DetectionSet(records, names, source=str(path),
                        meta={"category_ids": sorted(cat_index, key=cat_index.get)})


# --------------------------------------------------------------------------- Pascal VOC


def _xml_text(path, node, tag: str, entry: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetFormatError(path, entry, f"missing <{tag}>")
    return child.text.strip()


def _xml_number(path, node, tag: str, entry: str) -> float:
    text = _xml_text(path, node, tag, entry)
    try:
        return float(text)
    except ValueError:
        raise DatasetFormatError(path, entry, f"<{tag}> is not a number: {text!r}") from None


def parse_voc_file(xml_path, class_names: Optional[List[str]], image_dir=None, tolerance: float = 1.0,
                   check_images: bool = True, image_suffix: Optional[str] = None):
    """Parse one VOC XML -> (image path, width, height, boxes list, names list). Classes are checked by caller."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetFormatError(path, f"line {err.position[0]} column {err.position[1]}", f"invalid XML ({err})") from None
    except OSError as err:
        raise DatasetFormatError(path, "file", f"cannot be read ({err.strerror})") from None
    filename = _xml_text(path, root, "filename", "<annotation>")
    if image_suffix is not None:
        filename = str(Path(filename).with_suffix(image_suffix))
    width = _xml_number(path, root, "size/width", "<size>")
    height = _xml_number(path, root, "size/height", "<size>")
    image_path = (Path(image_dir) if image_dir is not None else path.parent) / filename
    if check_images:
        _resolve_image(path, "<filename>", image_path)
    boxes, names = [], []
    for i, obj in enumerate(root.iter("object")):
        entry = f"<object> #{i}"
        name = _xml_text(path, obj, "name", entry)
        entry = f"<object> #{i} ({name})"
        if class_names is not None and name not in class_names:
            raise DatasetFormatError(path, entry, f"unknown class {name!r}; known: {class_names}")
        box = [_xml_number(path, obj, f"bndbox/{k}", entry) for k in ("xmin", "ymin", "xmax", "ymax")]
        _check_box(path, entry, box, width, height, tolerance)
        boxes.append(box)
        names.append(name)
    return image_path, int(width), int(height), boxes, names


def read_voc(xml_files, class_names: Optional[Sequence[str]] = None, image_dir=None,
             tolerance: float = 1.0, check_images: bool = True) -> DetectionSet:
    """Read Pascal VOC XML files (a folder, one file, or a list of files).

    ``class_names`` fixes the label order and rejects other names; without it the sorted set of
    names found becomes the class list. Images are looked up by ``<filename>`` in ``image_dir``
    (default: next to each XML).
    """
    files = _xml_files(xml_files)
    known = list(class_names) if class_names is not None else None
    parsed = [parse_voc_file(f, known, image_dir, tolerance, check_images) for f in files]
    names = known if known is not None else sorted({n for p in parsed for n in p[4]})
    index = {n: i for i, n in enumerate(names)}
    records = [
        DetectionRecord(image=str(img), boxes=_clip(boxes, w, h), labels=[index[n] for n in cls],
                        width=w, height=h, name=Path(f).stem, image_id=i)
        for i, (f, (img, w, h, boxes, cls)) in enumerate(zip(files, parsed))
    ]
    return DetectionSet(records, names, source=str(xml_files))


def _xml_files(xml_files) -> List[Path]:
    if isinstance(xml_files, (str, os.PathLike)):
        p = Path(xml_files)
        if p.is_dir():
            files = sorted(p.glob("*.xml"))
            if not files:
                raise DatasetFormatError(p, "folder", "contains no .xml annotation files")
            return files
        if not p.exists():
            raise DatasetFormatError(p, "file", "does not exist")
        return [p]
    return [Path(f) for f in xml_files]


# --------------------------------------------------------------------------- YOLO txt


def _yolo_label_path(image_path: Path, images_dir: Path, labels_dir: Optional[Path]) -> Path:
    if labels_dir is not None:
        return labels_dir / image_path.relative_to(images_dir).with_suffix(".txt")
    # ultralytics layout: .../images/... -> .../labels/...
    parts = list(image_path.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def parse_yolo_file(txt_path, num_classes: int, width: int, height: int, tolerance: float = 1.0):
    """Parse one YOLO label file -> (boxes xyxy pixels list, labels list). A missing file means no objects."""
    path = Path(txt_path)
    if not path.exists():
        return [], []
    boxes, labels = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        entry = f"line {lineno} {line.strip()!r}"
        fields = line.split()
        if len(fields) != 5:
            raise DatasetFormatError(path, entry, "expected 5 fields: class cx cy w h (normalised)")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DatasetFormatError(path, entry, "fields are not numbers") from None
        if not 0 <= cls < num_classes:
            raise DatasetFormatError(path, entry, f"unknown class {cls}; the dataset has {num_classes} classes")
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        _check_box(path, entry, box, width, height, tolerance)
        boxes.append(box)
        labels.append(cls)
    return boxes, labels


def read_yolo(images_dir, class_names: Sequence[str], labels_dir=None, tolerance: float = 1.0) -> DetectionSet:
    """Read a YOLO-format folder: images under ``images_dir``, labels in ``labels_dir`` or the
    sibling ``labels`` tree (``images/x.jpg`` -> ``labels/x.txt``). An image without a label file has no objects."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetFormatError(images_dir, "folder", "does not exist")
    labels_dir = Path(labels_dir) if labels_dir is not None else None
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetFormatError(images_dir, "folder", f"contains no images ({', '.join(IMAGE_SUFFIXES)})")
    records = []
    for i, img in enumerate(images):
        try:
            width, height = _image_size(img)
        except OSError as err:
            raise DatasetFormatError(img, "image", f"cannot be opened ({err})") from None
        boxes, labels = parse_yolo_file(_yolo_label_path(img, images_dir, labels_dir), len(class_names),
                                        width, height, tolerance)
        records.append(DetectionRecord(image=str(img), boxes=_clip(boxes, width, height), labels=labels,
                                       width=width, height=height, name=img.name, image_id=i))
    return DetectionSet(records, list(class_names), source=str(images_dir))


# --------------------------------------------------------------------------- dispatch


def _load_spec(path: Path) -> dict:
    if path.suffix.lower() == ".json":
        return _load_json(path)
    try:
        import yaml
    except ImportError:
        raise DatasetFormatError(path, "file", "reading YAML needs PyYAML (pip install pyyaml); or use JSON") from None
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise DatasetFormatError(path, "file", f"invalid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise DatasetFormatError(path, "top level", "expected a mapping")
    return spec


def _names_from_spec(path, spec) -> Optional[List[str]]:
    names = spec.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DatasetFormatError(path, "names", "must be a list or an {index: name} mapping")


def read_dataset(path, fmt: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 split: str = "train") -> DetectionSet:
    """Read a dataset by format name (``coco`` | ``voc`` | ``yolo``) or from a small YAML/JSON spec.

    A spec file (``.yaml``/``.yml``, or ``.json`` without ``images``) holds ``format``, ``names``,
    and per split either ``train: <path>`` or ``train: {annotations: ..., images: ...}``; relative
    paths resolve against the spec's ``path`` key or its folder (the ultralytics data.yaml works:
    ``train: images/train`` with ``format: yolo`` assumed when absent).
    """
    p = Path(path)
    if fmt is None and p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file():
        spec = _load_spec(p)
        if "images" in spec and "annotations" in spec:  # a COCO file itself
            return read_coco(p)
        return _read_from_spec(p, spec, split, class_names)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {str(p)!r}: pass fmt='coco'|'voc'|'yolo' or a YAML/JSON spec")
    fmt = fmt.lower()
    if fmt == "coco":
        return read_coco(p)
    if fmt == "voc":
        return read_voc(p, class_names)
    if fmt == "yolo":
        if class_names is None:
            raise ValueError("YOLO txt labels are class indices: pass class_names (or --names / a data.yaml)")
        return read_yolo(p, class_names)
    raise ValueError(f"unknown dataset format {fmt!r}; accepted: coco, voc, yolo")


def _read_from_spec(p: Path, spec: dict, split: str, class_names) -> DetectionSet:
    root = Path(spec.get("path", p.parent))
    if not root.is_absolute():
        root = p.parent / root
    fmt = str(spec.get("format", "yolo")).lower()
    names = list(class_names) if class_names is not None else _names_from_spec(p, spec)
    entry = spec.get(split)
    if entry is None:
        raise DatasetFormatError(p, split, f"no '{split}' entry in the spec")
    if isinstance(entry, dict):
        ann, images = entry.get("annotations"), entry.get("images")
    else:
        ann, images = entry, None
    ann_path = root / str(ann)
    image_dir = root / str(images) if images is not None else None
    if fmt == "coco":
        return read_coco(ann_path, image_dir)
    if fmt == "voc":
        return read_voc(ann_path, names, image_dir)
    if fmt == "yolo":
        if names is None:
            raise DatasetFormatError(p, "names", "YOLO datasets need a 'names' list")
        # YOLO entries name the image folder: ``train: images/train`` or ``{images: ..., labels: ...}``
        if isinstance(entry, dict):
            labels = entry.get("labels")
            return read_yolo(root / str(images), names, root / str(labels) if labels else None)
        return read_yolo(ann_path, names)
    raise DatasetFormatError(p, "format", f"unknown format {fmt!r}; accepted: coco, voc, yolo")


def iter_image_files(path) -> Iterable[Path]:
    """Image files at ``path`` (one file or every image in a folder, sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
