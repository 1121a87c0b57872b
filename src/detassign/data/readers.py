"""Read detection datasets into one in-memory form: a :class:`DetectionSet` of :class:`DetectionRecord`.

Formats:

* COCO JSON (``images`` / ``annotations`` / ``categories``; ``bbox`` is ``[x, y, w, h]`` in pixels),
* Pascal VOC XML (one file per image; ``<bndbox>`` is ``xmin ymin xmax ymax`` in pixels),
* YOLO txt (one file per image; each line ``class cx cy w h`` normalised to ``[0, 1]``, or a segment
  polygon ``class x1 y1 x2 y2 x3 y3 ...`` whose bounding box becomes the target).

:func:`read_dataset` finds them in the layouts people keep (see :data:`DATA_HELP`): the official COCO tree
(``annotations/instances_<split>.json`` beside ``<split>/``), ``VOCdevkit/VOC2007``, an ultralytics
``data.yaml``, or a small spec file. Every record holds boxes as ``float32 [M, 4]`` xyxy pixels and labels
as ``int64 [M]`` indexing ``DetectionSet.class_names``; ``DetectionSet.image_ids`` / ``category_ids`` keep the
dataset's own ids so predictions can be scored against the user's annotation file.

Defects are reported with :class:`DataError` (a ``ValueError``) naming the file and the entry:

* a defect of the whole dataset (invalid JSON / XML / YAML, bytes that are not UTF-8 in a COCO JSON or a
  spec, a duplicate image id or category id, an annotation naming an image or category that does not exist,
  a missing split) always raises;
* a defect of one image (its label file or XML is corrupt, a box value is not a number, has no area or
  leaves the image, its image file is missing, unreadable or truncated) skips that image with a
  :class:`DataWarning` naming the file, and ``DetectionSet.skipped`` lists ``(path, reason)`` for every
  skipped image; with ``strict=True`` the first one raises instead.

Image files are checked while reading without decoding their pixels (header, PNG chunk CRCs, the JPEG
end-of-image marker); :func:`load_image` decodes them.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "DATA_HELP",
    "SPEC_HELP",
    "DataError",
    "DataWarning",
    "DatasetFormatError",
    "DetectionRecord",
    "DetectionSet",
    "IMAGE_SUFFIXES",
    "check_image",
    "iter_image_files",
    "load_image",
    "parse_voc_file",
    "parse_yolo_file",
    "read_coco",
    "read_dataset",
    "read_voc",
    "read_yolo",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Other names the same split goes by (Roboflow exports call the validation split "valid").
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val"), "validation": ("validation", "val")}

DATA_HELP = (
    "dataset, format and layout found from the path: "
    "COCO: a .json (images looked for in <root>/<split> when the JSON is "
    "<root>/annotations/instances_<split>.json, then images/<split>, images/, beside the JSON; or --images DIR) "
    "or a folder holding annotations/instances_<split>.json; "
    "Pascal VOC: a VOCdevkit or VOC2007 folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) or a "
    "folder of .xml; YOLO: an ultralytics data.yaml (path:, train:/val: folders, lists of folders or .txt image "
    "lists; names: list or dict), a folder with images/<split> and labels/<split>, or an images folder (labels "
    "from images/ -> labels/; class names from --names or classes.txt); or a spec .yaml/.json (see below)."
)

SPEC_HELP = """\
spec file (YAML or JSON; relative paths resolve against 'path:', else the spec's folder):
  format: coco            # coco | voc | yolo (default: coco for .json entries, else yolo)
  path: /data/mine        # optional dataset root
  names: [cat, dog]       # or {0: cat, 1: dog}; needed for YOLO, fixes the class order for VOC
  train: {annotations: annotations/train.json, images: train}   # COCO: JSON + image folder
  val: annotations/val.json                                     # images found as for --data
  # VOC:  train: VOCdevkit/VOC2007 (split = the key) | VOC2007/ImageSets/Main/trainval.txt
  #       | {annotations: xml/, images: jpg/}
  # YOLO: train: images/train | [images/a, images/b] | train.txt | {images: img/train, labels: lab/train}"""

ImageSource = Union[str, os.PathLike, np.ndarray, Callable[[], np.ndarray]]


class DataError(ValueError):
    """A dataset file is malformed; the message names the file and the entry (``path``, ``entry``, ``problem``)."""

    def __init__(self, path, entry: str = "", problem: str = ""):
        self.path = str(path)
        self.entry = entry
        self.problem = problem
        super().__init__(": ".join(x for x in (self.path, entry, problem) if x))


DatasetFormatError = DataError  # the name of the first release


class DataWarning(UserWarning):
    """An image was skipped while reading a dataset (``strict=False``)."""


@dataclass
class DetectionRecord:
    """One labelled image.

    image: a path, an ``[H, W, 3] uint8`` array, or a zero-argument callable returning one.
    boxes: ``float32 [M, 4]`` xyxy pixels.  labels: ``int64 [M]``.  width/height: image size.
    image_id: the dataset's own id (COCO ``images[].id``; else the position in the file list).
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


@dataclass(repr=False)
class DetectionSet:
    """Records plus the class names their labels index.

    category_ids: class index -> the dataset's category id (COCO: the file's ids; otherwise ``1..C``, as a
    COCO export and ultralytics' ``save_json`` number them). skipped: ``(path, reason)`` of every image left
    out while reading. split: the split that was read (``None`` when the layout has no splits, e.g. one
    COCO file or a flat folder: reading another split gives the same images).
    """

    records: List[DetectionRecord]
    class_names: List[str]
    source: str = ""
    meta: Dict[str, object] = field(default_factory=dict)
    category_ids: Optional[List[int]] = None
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    split: Optional[str] = None

    def __post_init__(self):
        self.class_names = [str(n) for n in self.class_names]
        if self.category_ids is None:
            self.category_ids = list(range(1, len(self.class_names) + 1))
        self.category_ids = [int(c) for c in self.category_ids]
        if len(self.category_ids) != len(self.class_names) or len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category_ids must be {len(self.class_names)} distinct ids (one per class), "
                             f"got {self.category_ids}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> DetectionRecord:
        return self.records[i]

    def __repr__(self) -> str:
        return f"DetectionSet({self.summary()})"

    @property
    def names(self) -> List[str]:
        """Class names (``class_names``), indexed by label."""
        return self.class_names

    @property
    def image_ids(self) -> List[int]:
        """The dataset's own id of each record (COCO ``images[].id``; else the file-list position)."""
        return [r.image_id for r in self.records]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.boxes) for r in self.records))

    def summary(self) -> str:
        """One line: images, boxes, classes, skipped images, where from."""
        text = f"{len(self)} images, {self.num_boxes} boxes, {self.num_classes} classes"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (see .skipped)"
        return text + (f" from {self.source}" if self.source else "")


# --------------------------------------------------------------------------- images


# What Pillow raises for a file it cannot read: OSError (truncated, unidentified), SyntaxError (broken PNG
# chunks), ValueError; ImportError when an opener hook loads a missing plugin (importing ultralytics patches
# Image.open to import pi_heif on any unidentified file).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, ImportError)


def load_image(image: ImageSource) -> np.ndarray:
    """Decode ``image`` to an ``[H, W, 3] uint8`` RGB array (paths via Pillow; arrays pass through).

    A file that is missing, truncated or not an image raises :class:`DataError` naming it."""
    if callable(image):
        image = image()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    from PIL import Image

    try:
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(image, "image", "file does not exist") from None
    except _PIL_ERRORS + (Image.DecompressionBombError,) as err:
        raise DataError(image, "image", f"cannot be decoded ({err})") from None


def check_image(path) -> Tuple[int, int]:
    """``(width, height)`` of an image file, after checking it can be read; :class:`DataError` otherwise.

    No pixels are decoded: Pillow reads the header and verifies the structure (PNG chunk CRCs), and a JPEG
    must end with its end-of-image marker (a file cut short in a copy or download lacks it, and Pillow's
    ``verify`` does not notice)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image", "file does not exist")
    try:
        with Image.open(path) as im:
            size, kind = im.size, im.format
            im.verify()
    except _PIL_ERRORS + (Image.DecompressionBombError,) as err:
        raise DataError(path, "image", f"cannot be read ({err})") from None
    if kind == "JPEG" and not _jpeg_has_end(path):
        raise DataError(path, "image", "is truncated (the JPEG has no end-of-image marker)")
    return int(size[0]), int(size[1])


def _jpeg_has_end(path: Path) -> bool:
    # Entropy-coded JPEG data never contains FF D9 (0xFF bytes are stuffed), so a tail without the
    # marker means the scan was cut; the tail window allows for padding written after the marker.
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return b"\xff\xd9" in f.read()


def iter_image_files(path) -> Iterable[Path]:
    """Image files at ``path`` (one file or every image in a folder, sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- shared checks


class _Skips:
    """Per-image defects: raised under ``strict``, else warned about (the first few by name) and listed."""

    def __init__(self, strict: bool, shown: int = 10):
        self.strict = bool(strict)
        self.shown = shown
        self.items: List[Tuple[str, str]] = []

    def add(self, err: DataError) -> None:
        if self.strict:
            raise err
        self.items.append((err.path, f"{err.entry}: {err.problem}" if err.entry else err.problem))
        if len(self.items) <= self.shown:
            warnings.warn(f"skipped an image: {err}", DataWarning, stacklevel=3)

    def done(self) -> List[Tuple[str, str]]:
        if len(self.items) > self.shown:
            warnings.warn(f"skipped {len(self.items)} images in all ({len(self.items) - self.shown} not shown); "
                          "DetectionSet.skipped lists every one", DataWarning, stacklevel=3)
        return self.items


def _number(path, entry: str, value, what: str) -> float:
    """A finite JSON number (``bool``, ``null`` and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, entry, f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise DataError(path, entry, f"{what} is not finite ({value})")
    return value


def _check_box(path, entry: str, box: Sequence[float], width: float, height: float, tolerance: float):
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(path, entry, f"box {list(box)} is not finite")
    if x2 <= x1 or y2 <= y1:
        raise DataError(path, entry, f"box {[x1, y1, x2, y2]} (xyxy) has no area")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise DataError(
            path, entry, f"box {[x1, y1, x2, y2]} (xyxy) lies outside its {int(width)}x{int(height)} image")


def _clip(boxes: List[List[float]], width: float, height: float) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark is allowed); other bytes raise naming the line."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(path, "file", f"cannot be read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(path, f"line {line}", f"byte {data[err.start]:#04x} at offset {err.start} is not UTF-8 text; "
                                              "save the file as UTF-8") from None


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- COCO


def _load_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"line {err.lineno} column {err.colno}", f"invalid JSON ({err.msg})") from None


def _is_coco(data) -> bool:
    return isinstance(data, dict) and "images" in data and ("annotations" in data or "categories" in data)


def _coco_categories(path: Path, data: dict):
    """-> ({category id: label}, names, ids): labels are the categories sorted by id, numbered 0..C-1."""
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(path, "categories", "missing or empty list")
    first: Dict[int, int] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(path, f"categories[{i}]", "needs 'id' and 'name'")
        cid = cat["id"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(path, f"categories[{i}]", f"id must be an integer, got {cid!r}")
        if cid in first:
            j = first[cid]
            raise DataError(path, f"categories[{j}] and categories[{i}]",
                            f"both have id {cid} ({cats[j]['name']!r}, {cat['name']!r}); category ids must be unique")
        first[cid] = i
    ids = sorted(first)
    return {c: k for k, c in enumerate(ids)}, [str(cats[first[c]]["name"]) for c in ids], ids


def _coco_images(path: Path, data: dict) -> List[dict]:
    """Image entries with their position; duplicate ids raise (they would merge two images' boxes)."""
    images = data.get("images")
    if not isinstance(images, list):
        raise DataError(path, "images", "missing list")
    first: Dict[object, int] = {}
    out = []
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise DataError(path, f"images[{i}]", "needs 'id', 'file_name', 'width' and 'height'")
        iid = img["id"]
        if isinstance(iid, bool) or not isinstance(iid, (int, str)):
            raise DataError(path, f"images[{i}]", f"id must be an integer, got {iid!r}")
        if iid in first:
            j = first[iid]
            raise DataError(path, f"images[{j}] and images[{i}]",
                            f"both have id {iid!r} ({images[j]['file_name']!r}, {img['file_name']!r}); "
                            "image ids must be unique")
        first[iid] = i
        out.append({"index": i, "id": iid, "entry": f"images[{i}] (id {iid!r})", "raw": img,
                    "boxes": [], "labels": [], "error": None})
    return out


def _coco_size(path: Path, img: dict) -> Tuple[float, float]:
    raw = img["raw"]
    w = _number(path, img["entry"], raw["width"], "width")
    h = _number(path, img["entry"], raw["height"], "height")
    if w <= 0 or h <= 0:
        raise DataError(path, img["entry"], f"width and height must be positive, got {raw['width']} x {raw['height']}")
    if not isinstance(raw["file_name"], str) or not raw["file_name"]:
        raise DataError(path, img["entry"], f"file_name must be a non-empty string, got {raw['file_name']!r}")
    return w, h


def _coco_box(path: Path, entry: str, bbox, width: float, height: float, tolerance: float) -> List[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(path, entry, f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(path, entry, v, f"bbox[{k}]") for k, v in enumerate(bbox))
    box = [x, y, x + w, y + h]
    _check_box(path, entry, box, width, height, tolerance)
    return box


def _coco_annotations(path: Path, data: dict, images: List[dict], cat_index: Dict[int, int], tolerance: float):
    """Attach each non-crowd annotation to its image; a bad box marks the image (``img['error']``)."""
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(path, "annotations", "must be a list")
    by_id = {img["id"]: img for img in images}
    for i, ann in enumerate(anns):
        entry = f"annotations[{i}] (id {ann.get('id')})" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict) or not {"bbox", "image_id", "category_id"} <= set(ann):
            raise DataError(path, entry, "needs 'image_id', 'category_id' and 'bbox'")
        if ann.get("iscrowd", 0):
            continue
        img = by_id.get(ann["image_id"]) if isinstance(ann["image_id"], (int, str)) else None
        if img is None:
            raise DataError(path, entry, f"image_id {ann['image_id']!r} is not in 'images'")
        cid = ann["category_id"]
        if isinstance(cid, bool) or cid not in cat_index:
            raise DataError(path, entry, f"unknown category_id {cid!r}; known: {sorted(cat_index)}")
        if img["error"] is not None:
            continue
        try:
            width, height = _coco_size(path, img)
            img["boxes"].append(_coco_box(path, entry, ann["bbox"], width, height, tolerance))
            img["labels"].append(cat_index[cid])
        except DataError as err:
            img["error"] = err


def _coco_image_dirs(json_path: Path) -> List[Path]:
    """Where COCO layouts keep the images of ``<dir>/[instances_]<split>.json``, most specific first."""
    split = json_path.stem[len("instances_"):] if json_path.stem.startswith("instances_") else json_path.stem
    here = json_path.parent
    roots = [here.parent, here] if here.name.lower() == "annotations" else [here]
    out: List[Path] = []
    for root in roots:
        for d in (root / split, root / "images" / split, root / "images", root):
            if d not in out:
                out.append(d)
    return out


def _find_coco_image_dir(path: Path, images: List[dict]) -> Path:
    """The candidate folder holding most of the first few images named in the JSON (the first one on ties)."""
    names = [img["raw"]["file_name"] for img in images if isinstance(img["raw"]["file_name"], str)][:5]
    candidates = _coco_image_dirs(path)
    if not names:
        return candidates[0] if candidates[0].is_dir() else path.parent
    found = [sum((d / n).is_file() for n in names) for d in candidates]
    if max(found) == 0:
        raise DataError(path, "images", f"cannot find image files such as {names[0]!r}: looked in "
                                        f"{', '.join(str(d) for d in candidates)}; pass the folder (--images DIR)")
    return candidates[found.index(max(found))]


def read_coco(json_path, image_dir=None, tolerance: float = 1.0, check_images: bool = True,
              strict: bool = False, class_names: Optional[Sequence[str]] = None, _data=None) -> DetectionSet:
    """Read a COCO detection JSON.

    image_dir: the folder ``file_name`` is relative to; by default the first of ``<root>/<split>`` (for
    ``<root>/annotations/instances_<split>.json``), ``images/<split>``, ``images/`` and the JSON's folder
    that holds the images. Labels are the categories sorted by id, renumbered 0..C-1; ``category_ids``
    maps back and ``image_ids`` are the file's image ids (positions if the ids are not integers).
    ``iscrowd`` annotations are skipped; boxes within ``tolerance`` px of the border are clipped.
    class_names: expected names in label order (e.g. the training set's); a different category list raises.
    check_images: check every image file can be read (and that its size is the one the JSON gives).
    """
    path = Path(json_path)
    data = _load_json(path) if _data is None else _data
    if not _is_coco(data):
        raise DataError(path, "top level", "expected a COCO object with 'images', 'annotations' and 'categories'")
    cat_index, names, cat_ids = _coco_categories(path, data)
    if class_names is not None and list(class_names) != names:
        raise DataError(path, "categories",
                        f"names {names} (sorted by id) differ from the expected {list(class_names)}")
    images = _coco_images(path, data)
    _coco_annotations(path, data, images, cat_index, tolerance)
    if image_dir is not None:
        image_dir = Path(image_dir)
    else:
        image_dir = _find_coco_image_dir(path, images) if check_images else _coco_image_dirs(path)[-1]
    integer_ids = all(isinstance(img["id"], int) for img in images)
    if not integer_ids:
        warnings.warn(f"{path}: image ids are not all integers; image_ids are the positions 0..n-1", DataWarning,
                      stacklevel=2)
    skips, records = _Skips(strict), []
    for img in images:
        try:
            records.append(_coco_record(path, img, image_dir, check_images, integer_ids))
        except DataError as err:
            skips.add(err)
    return DetectionSet(records, names, source=str(path), category_ids=cat_ids, skipped=skips.done(),
                        meta={"image_dir": str(image_dir)})


def _coco_record(path: Path, img: dict, image_dir: Path, check_images: bool, integer_ids: bool) -> DetectionRecord:
    if img["error"] is not None:
        raise img["error"]
    width, height = _coco_size(path, img)
    image_path = image_dir / img["raw"]["file_name"]
    if check_images:
        try:
            actual = check_image(image_path)
        except DataError as err:  # name the JSON entry too: the file name may be the defect
            raise DataError(path, img["entry"], f"image {err.path} {err.problem}") from None
        if actual != (int(width), int(height)):
            raise DataError(path, img["entry"], f"the JSON says {int(width)}x{int(height)} but {image_path} is "
                                                f"{actual[0]}x{actual[1]}")
    return DetectionRecord(image=str(image_path), boxes=_clip(img["boxes"], width, height), labels=img["labels"],
                           width=int(width), height=int(height), name=str(img["raw"]["file_name"]),
                           image_id=img["id"] if integer_ids else img["index"])


# --------------------------------------------------------------------------- Pascal VOC


def _parse_xml(path: Path) -> ET.Element:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, "file", f"cannot be read ({err.strerror or err})") from None
    if b"encoding=" not in data[:200]:  # no declared encoding: XML means UTF-8
        _read_text(path)
    try:
        return ET.fromstring(data)
    except ET.ParseError as err:
        raise DataError(path, f"line {err.position[0]} column {err.position[1]}", f"invalid XML ({err})") from None


def _xml_text(path, node, tag: str, entry: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(path, entry, f"missing <{tag}>")
    return child.text.strip()


def _xml_number(path, node, tag: str, entry: str) -> float:
    text = _xml_text(path, node, tag, entry)
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, entry, f"<{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DataError(path, entry, f"<{tag}> is not finite: {text!r}")
    return value


def _voc_size(path: Path, root: ET.Element) -> Optional[Tuple[float, float]]:
    """``<size>`` as (width, height); ``None`` when absent or 0 (some tools write 0: the image says)."""
    if root.find("size") is None or root.find("size/width") is None or root.find("size/height") is None:
        return None
    w = _xml_number(path, root, "size/width", "<size>")
    h = _xml_number(path, root, "size/height", "<size>")
    if w < 0 or h < 0:
        raise DataError(path, "<size>", f"width and height must not be negative, got {w:g} x {h:g}")
    return None if w == 0 or h == 0 else (w, h)


def _voc_image(path: Path, root: ET.Element, image_dir: Path, image_suffix: Optional[str]) -> Path:
    """The image of an XML: ``<filename>`` in ``image_dir``, else the XML's stem with an image suffix."""
    node = root.find("filename")
    filename = node.text.strip() if node is not None and node.text and node.text.strip() else ""
    if filename and image_suffix is not None:
        filename = str(Path(filename).with_suffix(image_suffix))
    tried = [image_dir / filename, image_dir / Path(filename).name] if filename else []
    tried += [image_dir / (path.stem + s) for s in IMAGE_SUFFIXES]
    for p in tried:
        if p.is_file():
            return p
    named = f"<filename> {filename!r}" if filename else "no <filename>"
    raise DataError(path, "<filename>", f"{named}: image file {str(tried[0])!r} does not exist")


def parse_voc_file(xml_path, class_names: Optional[List[str]], image_dir=None, tolerance: float = 1.0,
                   check_images: bool = True, image_suffix: Optional[str] = None, keep_difficult: bool = False):
    """Parse one VOC XML -> (image path, width, height, boxes list, names list); any defect raises DataError.

    Objects marked ``<difficult>1</difficult>`` are left out unless ``keep_difficult`` (as ultralytics'
    VOC conversion does; mmdetection ignores them). A missing or zero ``<size>`` is read from the image; one
    that differs from the image is a defect (the boxes were drawn on another picture)."""
    path = Path(xml_path)
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise DataError(path, f"<{root.tag}>", "expected a Pascal VOC <annotation> root element")
    folder = Path(image_dir) if image_dir is not None else path.parent
    image_path = _voc_image(path, root, folder, image_suffix) if check_images else folder / _xml_text(
        path, root, "filename", "<annotation>")
    size = _voc_size(path, root)
    if check_images:
        actual = check_image(image_path)
        if size is not None and (int(size[0]), int(size[1])) != actual:
            raise DataError(path, "<size>", f"says {int(size[0])}x{int(size[1])} but {image_path} is "
                                            f"{actual[0]}x{actual[1]}")
        size = size or (float(actual[0]), float(actual[1]))
    if size is None:
        raise DataError(path, "<size>", "missing; the image size is needed (or read with check_images=True)")
    width, height = size
    boxes, names = [], []
    for i, obj in enumerate(root.findall("object")):
        name = _xml_text(path, obj, "name", f"<object> #{i}")
        entry = f"<object> #{i} ({name})"
        if class_names is not None and name not in class_names:
            raise DataError(path, entry, f"unknown class {name!r}; known: {class_names}")
        box = [_xml_number(path, obj, f"bndbox/{k}", entry) for k in ("xmin", "ymin", "xmax", "ymax")]
        _check_box(path, entry, box, width, height, tolerance)
        difficult = obj.find("difficult")
        if not keep_difficult and difficult is not None and (difficult.text or "").strip() in ("1", "true"):
            continue
        boxes.append(box)
        names.append(name)
    return image_path, int(width), int(height), boxes, names


def read_voc(xml_files, class_names: Optional[Sequence[str]] = None, image_dir=None, tolerance: float = 1.0,
             check_images: bool = True, strict: bool = False, keep_difficult: bool = False) -> DetectionSet:
    """Read Pascal VOC XML files (a folder, one file, or a list of files).

    ``class_names`` fixes the label order and makes other names a defect; without it the sorted set of
    names found becomes the class list. Images are looked up by ``<filename>`` in ``image_dir`` (default:
    next to each XML). ``image_ids`` are positions in the file list (a skipped file keeps its number).
    """
    files = _xml_files(xml_files)
    return _read_voc_items([(f, image_dir) for f in files], class_names, tolerance, check_images, strict,
                           keep_difficult, source=str(xml_files))


def _read_voc_items(items: Sequence[Tuple[Path, Optional[Path]]], class_names, tolerance: float,
                    check_images: bool, strict: bool, keep_difficult: bool, source: str,
                    split: Optional[str] = None) -> DetectionSet:
    known = list(class_names) if class_names is not None else None
    skips, parsed = _Skips(strict), []
    for i, (xml, image_dir) in enumerate(items):
        try:
            parsed.append((i, xml, parse_voc_file(xml, known, image_dir, tolerance, check_images,
                                                  keep_difficult=keep_difficult)))
        except DataError as err:
            skips.add(err)
    names = known if known is not None else sorted({n for _, _, p in parsed for n in p[4]})
    index = {n: k for k, n in enumerate(names)}
    records = [
        DetectionRecord(image=str(img), boxes=_clip(boxes, w, h), labels=[index[n] for n in cls],
                        width=w, height=h, name=Path(xml).stem, image_id=i)
        for i, xml, (img, w, h, boxes, cls) in parsed
    ]
    return DetectionSet(records, names, source=source, skipped=skips.done(), split=split)


def _xml_files(xml_files) -> List[Path]:
    if isinstance(xml_files, (str, os.PathLike)):
        p = Path(xml_files)
        if p.is_dir():
            files = sorted(p.glob("*.xml"))
            if not files:
                raise DataError(p, "folder", "contains no .xml annotation files")
            return files
        if not p.exists():
            raise DataError(p, "file", "does not exist")
        return [p]
    return [Path(f) for f in xml_files]


def _voc_year_dirs(root: Path) -> List[Path]:
    """``root`` itself if it holds ``Annotations/``, else its ``VOC*``-style children (``VOCdevkit/...`` too)."""
    if (root / "Annotations").is_dir():
        return [root]
    parents = [root] + ([root / "VOCdevkit"] if (root / "VOCdevkit").is_dir() else [])
    return sorted(d for parent in parents for d in parent.iterdir() if d.is_dir() and (d / "Annotations").is_dir())


def _voc_split_items(list_file: Path, voc_dir: Path, image_dir: Optional[Path]) -> List[Tuple[Path, Path]]:
    """Image ids of an ``ImageSets/Main/<split>.txt`` (first column) -> (XML, image folder) pairs."""
    ids = [line.split()[0] for line in _read_text(list_file).splitlines() if line.strip()]
    images = image_dir if image_dir is not None else voc_dir / "JPEGImages"
    return [(voc_dir / "Annotations" / f"{i}.xml", images) for i in ids]


def _read_voc_layout(root: Path, split: str, class_names, image_dir, strict: bool) -> DetectionSet:
    """A VOCdevkit (all years that have the split) or one VOC2007-style folder."""
    years = _voc_year_dirs(root)
    items: List[Tuple[Path, Path]] = []
    found, available = None, set()
    for voc in years:
        main = voc / "ImageSets" / "Main"
        if not main.is_dir():  # no split lists: every annotation of the folder
            images = Path(image_dir) if image_dir is not None else voc / "JPEGImages"
            items += [(x, images) for x in sorted((voc / "Annotations").glob("*.xml"))]
            continue
        available |= {p.stem for p in main.glob("*.txt") if "_" not in p.stem}
        for name in _split_names(split):
            if (main / f"{name}.txt").is_file():
                items += _voc_split_items(main / f"{name}.txt", voc, Path(image_dir) if image_dir else None)
                found = name
                break
    if not items:
        raise DataError(root, "ImageSets/Main", f"no '{split}' split (a {split}.txt list of image ids); "
                                                f"available: {sorted(available) or 'none'}")
    return _read_voc_items(items, class_names, 1.0, True, strict, False, source=str(root), split=found)


# --------------------------------------------------------------------------- YOLO txt


def _yolo_label_path(image_path: Path, images_dir: Optional[Path], labels_dir: Optional[Path]) -> Path:
    if labels_dir is not None and images_dir is not None:
        return labels_dir / image_path.relative_to(images_dir).with_suffix(".txt")
    # ultralytics layout: the last .../images/... becomes .../labels/...; else the label sits beside the image
    parts = list(image_path.parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[-2::-1].index("images")
        parts[i] = "labels"
        return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def _yolo_line(path: Path, entry: str, fields: List[str], num_classes: int, width: int, height: int):
    """One label line -> (class, box xyxy px): 5 fields are a box, 1 + 2k (k >= 3) a polygon."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise DataError(path, entry, f"expected 5 fields (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), "
                                     f"got {n}")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise DataError(path, entry, "fields are not numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(path, entry, "fields are not finite")
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise DataError(path, entry, f"unknown class {fields[0]}; the dataset has {num_classes} classes")
    if n == 5:
        cx, cy, w, h = values[1:]
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    else:
        xs, ys = values[1::2], values[2::2]
        box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
    return int(cls), box


def parse_yolo_file(txt_path, num_classes: int, width: int, height: int, tolerance: float = 1.0):
    """Parse one YOLO label file -> (boxes xyxy pixels list, labels list). A missing file means no objects.

    Lines are ``class cx cy w h`` or a segment polygon ``class x1 y1 ... xk yk`` (k >= 3), normalised; a
    polygon's target is its bounding box. Any defect raises :class:`DataError` naming the line."""
    path = Path(txt_path)
    if not path.exists():
        return [], []
    boxes, labels = [], []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        text = line.strip()
        entry = f"line {lineno} {text if len(text) <= 60 else text[:57] + '...'!r}"
        cls, box = _yolo_line(path, entry, line.split(), num_classes, width, height)
        _check_box(path, entry, box, width, height, tolerance)
        boxes.append(box)
        labels.append(cls)
    return boxes, labels


def _image_list(list_file: Path, root: Optional[Path]) -> List[Tuple[Path, Optional[DataError]]]:
    """Images of a ``.txt`` list (one path a line, as ultralytics' ``train2017.txt``): relative paths resolve
    against the list's folder, then ``root``; a listed file that does not exist is a defect of that line."""
    out = []
    for lineno, line in enumerate(_read_text(list_file).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        p = Path(name)
        options = [p] if p.is_absolute() else [list_file.parent / p] + ([root / p] if root else []) + [p]
        hit = next((q for q in options if q.is_file()), None)
        out.append((hit, None) if hit else (options[0], DataError(list_file, f"line {lineno}",
                                                                  f"image {name!r} does not exist")))
    return out


def _yolo_images(source, root: Optional[Path] = None) -> List[Tuple[Path, Optional[DataError]]]:
    """(image, defect or None) for a folder, a ``.txt`` image list, one image, or a list of those."""
    if isinstance(source, (list, tuple)):
        return [item for s in source for item in _yolo_images(s, root)]
    p = Path(source)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if _is_image_file(q))
        if not files:
            raise DataError(p, "folder", f"contains no images ({', '.join(IMAGE_SUFFIXES)})")
        return [(q, None) for q in files]
    if p.is_file() and p.suffix.lower() == ".txt":
        return _image_list(p, root)
    if p.is_file() and _is_image_file(p):
        return [(p, None)]
    raise DataError(p, "path", "does not exist" if not p.exists() else "is not an image folder, image or .txt list")


def read_yolo(images, class_names: Sequence[str], labels_dir=None, tolerance: float = 1.0,
              strict: bool = False, root=None) -> DetectionSet:
    """Read YOLO-format data.

    images: an images folder (searched recursively), a ``.txt`` list of image paths, or a list of those.
    Labels are in ``labels_dir`` (one folder only) or where ultralytics puts them: the last ``images``
    folder of the path becomes ``labels`` (``images/train/x.jpg`` -> ``labels/train/x.txt``), else beside
    the image. An image without a label file has no objects. ``image_ids`` are positions in the image list.
    root: a dataset root that relative lines of a ``.txt`` list also resolve against (after the list's folder).
    """
    if class_names is None:
        raise ValueError("YOLO txt labels are class indices: pass class_names (or --names / a data.yaml)")
    names = list(class_names)
    images_dir = Path(images) if isinstance(images, (str, os.PathLike)) and Path(images).is_dir() else None
    if labels_dir is not None and images_dir is None:
        raise ValueError(f"labels_dir needs one images folder, got images={images!r}")
    labels_dir = Path(labels_dir) if labels_dir is not None else None
    skips, records = _Skips(strict), []
    for i, (img, defect) in enumerate(_yolo_images(images, Path(root) if root is not None else None)):
        try:
            if defect is not None:
                raise defect
            width, height = check_image(img)
            boxes, labels = parse_yolo_file(_yolo_label_path(img, images_dir, labels_dir), len(names), width, height,
                                            tolerance)
        except DataError as err:
            skips.add(err)
            continue
        records.append(DetectionRecord(image=str(img), boxes=_clip(boxes, width, height), labels=labels,
                                       width=width, height=height, name=img.name, image_id=i))
    return DetectionSet(records, names, source=str(images), skipped=skips.done())


# --------------------------------------------------------------------------- layouts and spec files


def _split_names(split: str) -> Tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def _check_fmt(fmt: Optional[str]) -> Optional[str]:
    if fmt is None or str(fmt).lower() == "auto":
        return None
    fmt = str(fmt).lower()
    if fmt not in ("coco", "voc", "yolo"):
        raise ValueError(f"unknown dataset format {fmt!r}; accepted: coco, voc, yolo (or none to detect it)")
    return fmt


def read_dataset(path, fmt: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 split: str = "train", *, images=None, strict: bool = False) -> DetectionSet:
    """Read the ``split`` of the dataset at ``path``, finding its format and layout (see :data:`DATA_HELP`).

    path: a COCO ``.json``, a VOC ``.xml`` / folder / ``VOCdevkit``, an ultralytics ``data.yaml`` or spec
    file (:data:`SPEC_HELP`), a dataset root, or a YOLO images folder / ``.txt`` image list.
    fmt: ``coco`` | ``voc`` | ``yolo`` to restrict the search (``None``: detect).
    class_names: label order (required for YOLO without a data.yaml or ``classes.txt``; for VOC it fixes the
    order and makes other names a defect; for COCO it must equal the file's categories).
    split: ``train`` / ``val`` / ``test`` ... (``val`` also finds ``valid``); ignored by layouts without splits.
    images: the image folder for COCO / VOC when it is not where the layout puts it.
    strict: raise on the first defective image instead of skipping it with a warning.
    A dataset whose every image was skipped raises (naming the first reason): there is nothing to train on.
    """
    p = Path(path)
    fmt = _check_fmt(fmt)
    if not p.exists():
        raise DataError(p, "path", "does not exist")
    if images is not None and not Path(images).is_dir():
        raise DataError(images, "images", "is not a folder")
    if p.is_file():
        ds = _read_file(p, fmt, class_names, split, images, strict)
    else:
        ds = _read_folder(p, fmt, class_names, split, images, strict)
    if not ds.records and ds.skipped:
        first_path, reason = ds.skipped[0]
        raise DataError(ds.source or p, "dataset", f"all {len(ds.skipped)} images were skipped; the first: "
                                                   f"{first_path}: {reason}")
    return ds


def _no_images_arg(images, what: str) -> None:
    if images is not None:
        raise ValueError(f"images= (--images) applies to COCO and VOC data; {what} lists its images itself")


def _read_file(p: Path, fmt, class_names, split: str, images, strict: bool) -> DetectionSet:
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _read_spec(p, _load_spec(p), fmt, class_names, split, images, strict)
    if suffix == ".json":
        data = _load_json(p)
        if _is_coco(data):
            if fmt not in (None, "coco"):
                raise ValueError(f"{p} is a COCO file, not {fmt}")
            return read_coco(p, images, strict=strict, class_names=class_names, _data=data)
        if not isinstance(data, dict):
            raise DataError(p, "top level", "expected a COCO object or a spec mapping")
        return _read_spec(p, data, fmt, class_names, split, images, strict)
    if suffix == ".xml":
        return read_voc([p], class_names, images, strict=strict)
    if suffix == ".txt":
        if p.parent.name == "Main" and p.parent.parent.name == "ImageSets":  # VOC split list
            items = _voc_split_items(p, p.parent.parent.parent, Path(images) if images else None)
            return _read_voc_items(items, class_names, 1.0, True, strict, False, source=str(p), split=p.stem)
        _no_images_arg(images, "a YOLO .txt list")
        return read_yolo(p, _yolo_names(class_names, [p.parent, p.parent.parent]), strict=strict)
    if _is_image_file(p):
        raise DataError(p, "path", "is one image without labels: pass its dataset (or use 'detassign predict')")
    raise DataError(p, "path", "is not a dataset file (.json, .yaml, .xml, .txt) or folder")


def _read_folder(p: Path, fmt, class_names, split: str, images, strict: bool) -> DetectionSet:
    """Try the layouts in turn: VOC, COCO with splits, YOLO (data.yaml, then folders), flat XML, one COCO JSON."""
    if fmt in (None, "voc") and _voc_year_dirs(p):
        return _read_voc_layout(p, split, class_names, images, strict)
    if fmt in (None, "coco"):
        ann = _find_coco_json(p, split)
        if ann is not None:
            ds = read_coco(ann[0], images, strict=strict, class_names=class_names)
            ds.split = ann[1]
            return ds
    if fmt in (None, "yolo"):
        spec = _find_data_yaml(p)
        if spec is not None:
            return _read_spec(spec, _load_spec(spec), fmt, class_names, split, images, strict)
        found = _find_yolo_images(p, split)
        if found is not None or fmt == "yolo":
            _no_images_arg(images, "a YOLO folder")
            folder, found_split = found if found is not None else (p, None)
            labels = _yolo_label_path(folder / "x", None, None).parent
            ds = read_yolo(folder, _yolo_names(class_names, [p, folder, folder.parent, labels]), strict=strict)
            ds.split = found_split
            return ds
    if fmt in (None, "voc") and any(p.glob("*.xml")):
        if images is None and p.name == "Annotations" and (p.parent / "JPEGImages").is_dir():
            images = p.parent / "JPEGImages"  # the Annotations/ folder of a VOC2007-style tree
        return read_voc(p, class_names, images, strict=strict)
    jsons = sorted(p.glob("*.json")) if fmt in (None, "coco") else []
    if len(jsons) == 1:  # the last candidate: its own error (invalid JSON...) is the useful message
        data = _load_json(jsons[0])
        if _is_coco(data):
            return read_coco(jsons[0], images, strict=strict, class_names=class_names, _data=data)
    tried = {None: "COCO (annotations/*.json), VOC (Annotations/), YOLO (data.yaml, images/ + labels/), "
                   ".xml files, one COCO .json", "coco": "annotations/instances_<split>.json, <split>/*.json or one "
                   "COCO .json", "voc": "Annotations/ (VOC2007-style), VOCdevkit/VOC*/ or .xml files"}[fmt]
    raise DataError(p, "folder", f"no dataset found: looked for {tried}")


def _find_coco_json(root: Path, split: str) -> Optional[Tuple[Path, Optional[str]]]:
    """(annotation JSON, split) of a COCO root: ``annotations/instances_<split>*.json``, ``annotations/<split>*.json``,
    ``<split>/*.json`` (Roboflow) or ``instances_<split>*.json`` / ``<split>.json``."""
    ann_dir = root / "annotations"
    for name in _split_names(split):
        for pattern in (f"annotations/instances_{name}.json", f"annotations/instances_{name}*.json",
                        f"annotations/{name}.json", f"annotations/{name}*.json", f"{name}/*.json",
                        f"instances_{name}*.json", f"{name}.json"):
            hits = sorted(root.glob(pattern))
            if len(hits) > 1:
                raise DataError(root, split, f"several annotation files match: {', '.join(str(h) for h in hits)}; "
                                             "pass one of them")
            if hits:
                stem = hits[0].stem
                return hits[0], stem[len("instances_"):] if stem.startswith("instances_") else name
    if ann_dir.is_dir() and any(ann_dir.glob("*.json")):
        present = ", ".join(q.name for q in sorted(ann_dir.glob("*.json")))
        raise DataError(ann_dir, split, f"no annotation file for split '{split}'; present: {present}")
    return None


def _find_data_yaml(root: Path) -> Optional[Path]:
    """``data.yaml`` / ``dataset.yaml`` in ``root``, else its only YAML file."""
    for name in ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml"):
        if (root / name).is_file():
            return root / name
    specs = [q for q in sorted(root.glob("*")) if q.suffix.lower() in (".yaml", ".yml") and q.is_file()]
    return specs[0] if len(specs) == 1 else None


def _find_yolo_images(root: Path, split: str) -> Optional[Tuple[Path, Optional[str]]]:
    """(images folder, split) of a YOLO root: ``images/<split>``, ``<split>/images`` (Roboflow), ``images/``;
    or ``root`` itself when some of its images have label files (``.../images/x.png`` -> ``.../labels/x.txt``,
    else ``x.txt`` beside the image)."""
    for name in _split_names(split):
        for cand in (root / "images" / name, root / name / "images"):
            if cand.is_dir():
                return cand, name
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return root / "images", None
    first = sorted(q for q in root.iterdir() if _is_image_file(q))[:20]
    if any(_yolo_label_path(q, None, None).is_file() for q in first):
        return root, None
    return None


def _yolo_names(class_names, folders: Sequence[Path]) -> List[str]:
    """``class_names``, else a ``classes.txt`` / ``obj.names`` (one name a line, LabelImg / darknet) in ``folders``."""
    if class_names is not None:
        return list(class_names)
    for folder in folders:
        for fname in ("classes.txt", "obj.names"):
            f = folder / fname
            if f.is_file():
                names = [line.strip() for line in _read_text(f).splitlines() if line.strip()]
                if names:
                    return names
    raise ValueError("YOLO txt labels are class indices: pass class_names (--names A,B,...), a data.yaml, "
                     "or put a classes.txt (one name a line) beside the images")


def _load_spec(path: Path) -> dict:
    text = _read_text(path)
    try:
        import yaml
    except ImportError:
        raise DataError(path, "file", "reading YAML needs PyYAML (pip install pyyaml); or use JSON") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(path, "file", f"invalid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise DataError(path, "top level", "expected a mapping")
    return spec


def _names_from_spec(path, spec) -> Optional[List[str]]:
    names, nc = spec.get("names"), spec.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DataError(path, "nc", f"must be a positive integer, got {nc!r}")
    if names is None:
        return None if nc is None else [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        keys = sorted(int(k) if isinstance(k, str) and k.isdigit() else k for k in names)
        if keys != list(range(len(names))):
            raise DataError(path, "names", f"an {{index: name}} mapping needs the keys 0..{len(names) - 1}, got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    elif not isinstance(names, list):
        raise DataError(path, "names", "must be a list or an {index: name} mapping")
    if nc is not None and nc != len(names):
        raise DataError(path, "names", f"{len(names)} names but nc: {nc}")
    return [str(n) for n in names]


def _spec_root(path: Path, spec: dict) -> Path:
    """``path:`` resolved as ultralytics does (spec folder, then the working directory), else the spec's folder."""
    given = spec.get("path")
    if given in (None, ""):
        return path.parent
    root = Path(str(given)).expanduser()
    if root.is_absolute():
        return root
    for base in (path.parent, Path.cwd()):
        if (base / root).exists():
            return base / root
    return path.parent / root


def _spec_path(root: Path, rel) -> Path:
    p = root / str(rel)
    # ultralytics strips a leading '../' that leaves the root (Roboflow's 'train: ../train/images')
    if not p.exists() and str(rel).startswith("../") and (root / str(rel)[3:]).exists():
        return root / str(rel)[3:]
    return p


def _read_spec(p: Path, spec: dict, fmt, class_names, split: str, images, strict: bool) -> DetectionSet:
    root = _spec_root(p, spec)
    names = list(class_names) if class_names is not None else _names_from_spec(p, spec)
    key = next((k for k in _split_names(split) if spec.get(k) not in (None, "")), None)
    if key is None:
        present = [k for k in ("train", "val", "valid", "test") if spec.get(k)]
        raise DataError(p, split, f"no '{split}' entry in the spec; it has: {', '.join(present) or 'none'}")
    entry = spec[key]
    kind = _check_fmt(spec.get("format")) or fmt or _guess_format(entry)
    if fmt is not None and kind != fmt:
        raise ValueError(f"{p} describes {kind} data, not {fmt}")
    parts = entry if isinstance(entry, dict) else {"annotations": entry}
    if isinstance(entry, dict) and not set(entry) <= {"annotations", "images", "labels"}:
        raise DataError(p, key, f"unknown keys {sorted(set(entry) - {'annotations', 'images', 'labels'})}; "
                                "accepted: annotations, images, labels")
    if kind in ("coco", "voc") and parts.get("annotations") in (None, ""):
        raise DataError(p, key, f"a {kind} entry needs 'annotations' (a path, or {{annotations: ..., images: ...}})")
    if kind == "yolo":
        _no_images_arg(images, "a YOLO spec")
    image_dir = _spec_path(root, parts["images"]) if parts.get("images") is not None else images
    if kind == "coco":
        ds = read_coco(_spec_path(root, parts.get("annotations")), image_dir, strict=strict, class_names=names)
    elif kind == "voc":
        ds = read_dataset(_spec_path(root, parts.get("annotations")), "voc", names, key, images=image_dir,
                          strict=strict)
    else:
        ds = _read_spec_yolo(p, key, entry, root, names, strict)
    ds.split = key
    return ds


def _guess_format(entry) -> str:
    ann = entry.get("annotations") if isinstance(entry, dict) else entry
    return "coco" if isinstance(ann, str) and ann.lower().endswith(".json") else "yolo"


def _read_spec_yolo(p: Path, key: str, entry, root: Path, names, strict: bool) -> DetectionSet:
    if names is None:
        raise DataError(p, "names", "YOLO datasets need a 'names' list (or 'nc')")
    if isinstance(entry, dict):
        if entry.get("images") is None:
            raise DataError(p, key, "a YOLO entry mapping needs 'images' (and optionally 'labels')")
        labels = _spec_path(root, entry["labels"]) if entry.get("labels") else None
        return read_yolo(_spec_path(root, entry["images"]), names, labels, strict=strict)
    sources = entry if isinstance(entry, list) else [entry]
    paths = [_spec_path(root, s) for s in sources]
    missing = [str(q) for q in paths if not q.exists()]
    if missing:
        raise DataError(p, key, f"{', '.join(missing)} does not exist")
    return read_yolo(paths if len(paths) > 1 else paths[0], names, strict=strict, root=root)
