"""The default real dataset: NEON aerial RGB tree crowns, read from the ``deepforest`` 2.1.0 wheel.

Images: NEON Airborne Observation Platform RGB orthophotos (public domain, CC0). Boxes: drawn by hand
for the NeonTreeEvaluation benchmark (Weinstein et al. 2021, "A benchmark dataset for canopy crown
detection and delineation in co-registered airborne RGB, LiDAR and hyperspectral imagery from the
National Ecological Observation Network", PLoS Comput Biol 17(7): e1009180), shipped in the MIT
licensed ``deepforest`` wheel. The wheel is downloaded once with pip (no dependencies, never
imported), its sha256 checked, and the PNG + Pascal VOC XML files are read straight from the zip.

Split (one class, ``Tree``):

* train: ``2019_YELL_2_528000_4978000_image_crop2`` (2299 x 2472 px, 574 boxes) cut into tiles;
* val (held out): ``2019_YELL_2_541000_4977000_image_crop`` (1249 x 1035 px, 279 boxes), a different
  1 km NEON tile 13 km away, kept whole (the model is fully convolutional: it runs at native resolution);
* ood (optional): ``OSBS_029`` (Florida) + ``SOAP_061`` (California, Alive/Dead merged to Tree), 400 x 400 px
  each; ``load_neon("train", extra_copies=k)`` adds them (whole, ``k`` times each) to the training tiles
  instead (then they are no longer an out-of-domain test).

Tiling rule: a box cut by a tile border is clipped to the tile and kept when the visible part is at
least ``min_visible`` of its area (default 0.3) and both visible sides are at least ``min_side`` px
(default 4); otherwise it is dropped. Tiles overlap so that every tree is whole in at least one tile.

Cache: ``$DETASSIGN_CACHE`` or ``~/.cache/detassign``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .readers import DetectionRecord, DetectionSet

__all__ = [
    "WHEEL_NAME", "WHEEL_SHA256", "TRAIN_IMAGE", "VAL_IMAGE", "OOD_IMAGES", "CREDIT",
    "cache_dir", "find_wheel", "fetch_wheel", "read_wheel_image", "tile_boxes", "tile_image",
    "load_neon", "neon_train_tiles", "neon_val", "neon_records",
]

WHEEL_NAME = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
TRAIN_IMAGE = "2019_YELL_2_528000_4978000_image_crop2"
VAL_IMAGE = "2019_YELL_2_541000_4977000_image_crop"
OOD_IMAGES = ("OSBS_029", "SOAP_061")
CLASS_NAMES = ["Tree"]
CREDIT = ("NEON AOP RGB imagery (public domain, CC0); tree-crown boxes from the NeonTreeEvaluation "
          "benchmark, Weinstein et al. 2021 (PLoS Comput Biol 17(7): e1009180), via the deepforest wheel (MIT)")


def cache_dir() -> Path:
    """``$DETASSIGN_CACHE`` if set, else ``~/.cache/detassign``."""
    return Path(os.environ.get("DETASSIGN_CACHE", Path.home() / ".cache" / "detassign")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_wheel(cache: Optional[Path] = None) -> Optional[Path]:
    """The cached wheel if present and intact, else None (never downloads)."""
    path = Path(cache or cache_dir()) / WHEEL_NAME
    return path if path.is_file() and _sha256(path) == WHEEL_SHA256 else None


def fetch_wheel(cache: Optional[Path] = None, quiet: bool = False) -> Path:
    """Return the verified wheel path, downloading it with pip into the cache when missing."""
    cache = Path(cache or cache_dir())
    found = find_wheel(cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "deepforest==2.1.0", "-d", str(cache), "--disable-pip-version-check"]
    if not quiet:
        print(f"Downloading the NEON tree-crown data (deepforest 2.1.0 wheel, 20.6 MB) into {cache} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(cache)
    if found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            "Could not obtain the NEON tree-crown data.\n"
            f"  tried: {' '.join(cmd)}\n"
            f"  pip said: {' | '.join(tail) if tail else 'nothing'}\n"
            f"  fix: on a machine with internet run `pip download --no-deps deepforest==2.1.0`, copy "
            f"{WHEEL_NAME} into {cache} (or set DETASSIGN_CACHE to its folder); "
            f"expected sha256 {WHEEL_SHA256}")
    return found


@functools.lru_cache(maxsize=8)
def read_wheel_image(wheel: str, stem: str, png_stem: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Decode ``deepforest/data/<stem>.png`` and its VOC XML from the wheel.

    Returns (image [H, W, 3] uint8, boxes float32 [M, 4] xyxy px, class names [M]). Cached per process.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the 2299 x 2472 training image trips Pillow's bomb guard otherwise
    with zipfile.ZipFile(wheel) as zf:
        png = zf.read(f"deepforest/data/{png_stem or stem}.png")
        root = ET.fromstring(zf.read(f"deepforest/data/{stem}.xml"))
    with Image.open(io.BytesIO(png)) as im:
        image = np.asarray(im.convert("RGB"))
    boxes, names = [], []
    for obj in root.iter("object"):
        boxes.append([float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")])
        names.append(obj.find("name").text.strip())
    image.setflags(write=False)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), names


def tile_boxes(boxes: np.ndarray, window: Tuple[int, int, int, int], min_visible: float = 0.3,
               min_side: float = 4.0) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes [M, 4] xyxy clipped to ``window`` (x0, y0, x1, y1), shifted to its origin.

    Returns (clipped boxes [K, 4], kept indices [K]): a box is kept when its visible area is at least
    ``min_visible`` of its full area and both visible sides are at least ``min_side`` px.
    """
    x0, y0, x1, y1 = window
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(x0, x1)
    clipped[:, 1::2] = clipped[:, 1::2].clip(y0, y1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.nonzero((w * h >= min_visible * full) & (w >= min_side) & (h >= min_side))[0]
    out = clipped[keep] - np.array([x0, y0, x0, y0], dtype=np.float32)
    return out.astype(np.float32), keep


def _starts(length: int, tile: int, overlap: int) -> List[int]:
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / max(tile - overlap, 1))) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def tile_image(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, tile: int = 416, overlap: int = 64,
               min_visible: float = 0.3, min_side: float = 4.0, name: str = "") -> List[DetectionRecord]:
    """Cut an image into ``tile`` x ``tile`` windows overlapping by at least ``overlap`` px, evenly spread
    so the last window touches the border. Each tile is a record whose image is a view of ``image``."""
    height, width = image.shape[:2]
    records = []
    for y in _starts(height, tile, overlap):
        for x in _starts(width, tile, overlap):
            window = (x, y, min(x + tile, width), min(y + tile, height))
            tb, keep = tile_boxes(boxes, window, min_visible, min_side)
            crop = image[window[1]:window[3], window[0]:window[2]]
            records.append(DetectionRecord(image=crop, boxes=tb, labels=labels[keep],
                                           width=crop.shape[1], height=crop.shape[0],
                                           name=f"{name}_x{x}_y{y}", image_id=len(records)))
    return records


def neon_records(stems, wheel=None) -> List[DetectionRecord]:
    """Whole images of the wheel as records (every class name mapped to ``Tree``), ``image_id`` = position."""
    wheel = str(wheel or fetch_wheel())
    records = []
    for i, stem in enumerate(stems):
        image, boxes, _ = read_wheel_image(wheel, stem)
        records.append(DetectionRecord(image=image, boxes=boxes, labels=np.zeros(len(boxes), dtype=np.int64),
                                       width=image.shape[1], height=image.shape[0], name=stem, image_id=i))
    return records


def neon_train_tiles(tile: int = 416, overlap: int = 64, min_visible: float = 0.3, wheel=None,
                     extra_copies: int = 0) -> DetectionSet:
    """Training tiles of ``TRAIN_IMAGE`` (``tile`` = 416, overlap 64 gives 7 x 7 = 49 tiles), then
    ``extra_copies`` copies of each ``OOD_IMAGES`` image (whole: 400 x 400 px, about one tile, so a copy is
    drawn as often as a tile). Record ``image_id`` is the position in the set."""
    if isinstance(extra_copies, bool) or not isinstance(extra_copies, int) or extra_copies < 0:
        raise ValueError(f"extra_copies must be an int >= 0, got {extra_copies!r}")
    wheel = str(wheel or fetch_wheel())
    image, boxes, _ = read_wheel_image(wheel, TRAIN_IMAGE)
    labels = np.zeros(len(boxes), dtype=np.int64)
    records = tile_image(image, boxes, labels, tile, overlap, min_visible, name=TRAIN_IMAGE)
    source = f"{WHEEL_NAME}:{TRAIN_IMAGE}"
    if extra_copies:
        for rec in neon_records(OOD_IMAGES, wheel) * extra_copies:
            records.append(dataclasses.replace(rec, image_id=len(records)))
        source += f"+{extra_copies}x({'+'.join(OOD_IMAGES)})"
    return DetectionSet(records, list(CLASS_NAMES), source=source,
                        meta={"tile": tile, "overlap": overlap, "min_visible": min_visible,
                              "extra_copies": extra_copies})


def neon_val(wheel=None, include_ood: bool = False) -> DetectionSet:
    """The held-out image ``VAL_IMAGE`` kept whole (plus OSBS_029 / SOAP_061 with ``include_ood``)."""
    stems = [VAL_IMAGE] + (list(OOD_IMAGES) if include_ood else [])
    return DetectionSet(neon_records(stems, wheel), list(CLASS_NAMES), source=f"{WHEEL_NAME}:{'+'.join(stems)}")


def load_neon(split: str = "train", tile: int = 416, overlap: int = 64, min_visible: float = 0.3,
              wheel=None, extra_copies: int = 0) -> DetectionSet:
    """``split``: 'train' (tiles, plus ``extra_copies`` copies of OSBS_029 and SOAP_061), 'val' (the held-out
    image) or 'ood' (val + OSBS_029 + SOAP_061)."""
    if split == "train":
        return neon_train_tiles(tile, overlap, min_visible, wheel, extra_copies)
    if extra_copies:
        raise ValueError(f"extra_copies is for the 'train' split, got split={split!r}")
    if split in ("val", "ood"):
        return neon_val(wheel, include_ood=split == "ood")
    raise ValueError(f"unknown NEON split {split!r}; accepted: train, val, ood")
