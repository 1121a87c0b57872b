"""Augmentations that keep boxes valid. Images are ``[H, W, 3] uint8`` arrays, boxes ``float32 [M, 4]``
xyxy pixels, labels ``int64 [M]``; every function returns new arrays (inputs are never modified).

Random transforms take an explicit ``numpy.random.Generator`` so that a sample's augmentation is a
function of (seed, epoch, index) only: the same on resume, with any number of loader workers.
Guarantee (tested with hypothesis): output boxes satisfy ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np

from .neon import tile_boxes

__all__ = [
    "hflip", "vflip", "rot90", "random_crop", "random_scaled_crop", "mosaic4", "letterbox", "pad_to_multiple",
    "hsv_jitter", "TrainAugment", "EvalTransform", "LetterboxInfo",
]


def hflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror left-right: x -> W - x."""
    w = image.shape[1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def vflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror top-bottom: y -> H - y."""
    h = image.shape[0]
    out = boxes.copy()
    out[:, 1], out[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return np.ascontiguousarray(image[::-1]), out


def rot90(image: np.ndarray, boxes: np.ndarray, k: int = 1):
    """Rotate by ``k`` * 90 degrees counter-clockwise (as ``np.rot90``); a point (x, y) -> (y, W - x) per turn."""
    image, boxes = np.asarray(image), boxes.copy()
    for _ in range(k % 4):
        w = image.shape[1]
        boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], axis=1).astype(np.float32)
        image = np.rot90(image)
    return np.ascontiguousarray(image), boxes.reshape(-1, 4)


def random_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size, rng: np.random.Generator,
                min_visible: float = 0.3, min_side: float = 2.0):
    """Crop a ``size`` x ``size`` window (or ``size = (width, height)``) at a uniform random position (the whole
    side when the image is smaller); boxes follow the tiling rule of :func:`detassign.data.neon.tile_boxes`."""
    h, w = image.shape[:2]
    size_w, size_h = (size, size) if np.isscalar(size) else size
    cw, ch = min(int(size_w), w), min(int(size_h), h)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    out, keep = tile_boxes(boxes, (x0, y0, x0 + cw, y0 + ch), min_visible, min_side)
    return np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]), out, labels[keep]


def random_scaled_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size, rng: np.random.Generator,
                       jitter: float = 0.0, min_visible: float = 0.3, min_side: float = 2.0):
    """Scale jitter: a random window of ``size / s`` px resized to ``size`` (``size`` an int or (width, height)),
    with the zoom ``s`` log-uniform in ``[1 - jitter, 1 + jitter]`` (the range of ultralytics' ``scale``;
    ``0 <= jitter < 1``). ``jitter=0`` is :func:`random_crop` (the same random draws).
    An image smaller than the window gives a smaller output (the letterbox pads it later)."""
    if not (np.isfinite(jitter) and 0 <= jitter < 1):
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
    size_w, size_h = (size, size) if np.isscalar(size) else size
    zoom = float(np.exp(rng.uniform(np.log1p(-jitter), np.log1p(jitter)))) if jitter > 0 else 1.0
    window = (max(1, int(round(size_w / zoom))), max(1, int(round(size_h / zoom))))
    image, boxes, labels = random_crop(image, boxes, labels, window, rng, min_visible, 0.0 if zoom != 1 else min_side)
    if zoom == 1.0:
        return image, boxes, labels
    h, w = image.shape[:2]
    new_w, new_h = min(int(size_w), max(1, int(round(w * zoom)))), min(int(size_h), max(1, int(round(h * zoom))))
    image = _resize(image, new_w, new_h)
    boxes = boxes * np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    return image, boxes[keep], labels[keep]


def mosaic4(parts: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], size: int, center: Tuple[int, int],
            pad_value: int = 114):
    """Four samples on one ``size`` x ``size`` canvas split at ``center = (cx, cy)``.

    ``parts``: four (image [h_i, w_i, 3], boxes [M_i, 4] xyxy in that image, labels [M_i]) for the quadrants
    top-left, top-right, bottom-left, bottom-right; each image is pasted at its quadrant's top-left corner
    and must fit in it (cut it to the quadrant first, e.g. with :func:`random_scaled_crop`); a smaller
    one leaves ``pad_value``. Returns (canvas [size, size, 3], boxes [sum M_i, 4], labels [sum M_i]).
    """
    cx, cy = int(center[0]), int(center[1])
    if len(parts) != 4:
        raise ValueError(f"parts must hold 4 (image, boxes, labels) samples, got {len(parts)}")
    if not (0 <= cx <= size and 0 <= cy <= size):
        raise ValueError(f"center must lie in [0, {size}] x [0, {size}], got {(cx, cy)}")
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    quadrants = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
    all_boxes, all_labels = [], []
    for q, ((image, boxes, labels), (x0, y0, x1, y1)) in enumerate(zip(parts, quadrants)):
        h, w = image.shape[:2]
        if h > y1 - y0 or w > x1 - x0:
            raise ValueError(f"parts[{q}] is {w} x {h} px but its quadrant is {x1 - x0} x {y1 - y0}")
        canvas[y0:y0 + h, x0:x0 + w] = image
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32))
        all_labels.append(np.asarray(labels, np.int64).reshape(-1))
    return canvas, np.concatenate(all_boxes), np.concatenate(all_labels)


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the network input: ``input = original * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int

    def to_original(self, boxes):
        """Map xyxy boxes (array or tensor, last dim 4) from network input back to original pixels, clipped."""
        out = boxes.clone() if hasattr(boxes, "clone") else np.array(boxes, dtype=np.float32, copy=True)
        out[..., 0::2] = (out[..., 0::2] - self.pad_x) / self.scale
        out[..., 1::2] = (out[..., 1::2] - self.pad_y) / self.scale
        out[..., 0::2] = out[..., 0::2].clip(0, self.orig_w)
        out[..., 1::2] = out[..., 1::2].clip(0, self.orig_h)
        return out


def _resize(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def letterbox(image: np.ndarray, boxes: np.ndarray, size: int, scale_up: bool = True, pad_value: int = 114,
              stride: Optional[int] = None):
    """Resize keeping the aspect ratio so the long side is ``size``, then pad (centred) to ``size`` x ``size``,
    or, with ``stride``, only to the next multiple of ``stride`` (rectangular inference).

    Returns (image, boxes, LetterboxInfo). ``scale_up=False`` never enlarges (only pads).
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if not scale_up:
        scale = min(scale, 1.0)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (new_w, new_h) != (w, h):
        image = _resize(image, new_w, new_h)
    if stride is None:
        out_w = out_h = size
    else:
        out_w, out_h = int(np.ceil(new_w / stride) * stride), int(np.ceil(new_h / stride) * stride)
    pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = image
    sx, sy = new_w / w, new_h / h
    out = boxes.astype(np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
    out += np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
    return canvas, out, LetterboxInfo(float(sx), float(pad_x), float(pad_y), w, h)


def pad_to_multiple(image: np.ndarray, boxes: np.ndarray, stride: int = 32, pad_value: int = 114):
    """Pad right/bottom to a multiple of ``stride`` at native resolution (boxes unchanged)."""
    h, w = image.shape[:2]
    out_h, out_w = int(np.ceil(h / stride) * stride), int(np.ceil(w / stride) * stride)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[:h, :w] = image
    return canvas, boxes.astype(np.float32).copy(), LetterboxInfo(1.0, 0.0, 0.0, w, h)


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.3, contrast: float = 0.3,
               saturation: float = 0.5, channel_gain: float = 0.1):
    """Random photometric change (boxes untouched): contrast around the image mean, brightness, saturation
    (blend with the grey image) and per-channel gains (white balance: imagery from other flights differs)."""
    b = 1 + rng.uniform(-brightness, brightness)
    c = 1 + rng.uniform(-contrast, contrast)
    sat = 1 + rng.uniform(-saturation, saturation)
    gains = 1 + rng.uniform(-channel_gain, channel_gain, size=3)
    out = image.astype(np.float32)
    mean = out.mean()
    out = (out - mean) * c + mean * b
    grey = out.mean(axis=2, keepdims=True)
    out = (grey + (out - grey) * sat) * gains.astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _drop_tiny(boxes: np.ndarray, labels: np.ndarray, min_side: float = 1.0):
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    return boxes[keep], labels[keep]


@dataclass
class TrainAugment:
    """Training pipeline: random crop to ``crop`` (if set; zoomed by ``1 +- scale_jitter``, see
    :func:`random_scaled_crop`),
    or with probability ``mosaic`` a 2 x 2 mosaic of four such crops (this image and three drawn from ``pool``,
    split at a random centre in the middle half); then flips, 90-degree turns (for nadir imagery, where every
    orientation is a valid image), brightness / contrast (``color``), saturation and per-channel gains, and a
    letterbox to ``size``. With the defaults (no jitter, no mosaic) the random draws are those of earlier
    versions, so seeded runs repeat.

    ``pool``: the records mosaic partners come from (the training set's ``records``; required when
    ``mosaic > 0``). A mosaic canvas is ``crop`` px (``size`` without crop).

    ``__call__(image, boxes, labels, rng) -> (image [size, size, 3], boxes, labels, LetterboxInfo)``.
    """

    size: int = 640
    crop: Optional[int] = None
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    color: float = 0.3
    min_visible: float = 0.3
    saturation: float = 0.5
    channel_gain: float = 0.1
    scale_jitter: float = 0.0
    mosaic: float = 0.0
    pool: Optional[Sequence] = field(default=None, repr=False)

    def __post_init__(self):
        def number(value) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))

        for name in ("hflip", "vflip", "mosaic"):
            value = getattr(self, name)
            if not (number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"TrainAugment.{name} is a probability in [0, 1], got {value!r}")
        for name in ("color", "saturation", "channel_gain"):
            value = getattr(self, name)
            if not (number(value) and value >= 0):
                raise ValueError(f"TrainAugment.{name} must be a finite number >= 0, got {value!r}")
        if not (number(self.scale_jitter) and 0 <= self.scale_jitter < 1):
            raise ValueError(f"TrainAugment.scale_jitter must be a number in [0, 1), got {self.scale_jitter!r}")
        if self.mosaic > 0:
            if self.pool is None or len(self.pool) == 0:
                raise ValueError("TrainAugment.mosaic > 0 needs pool: the records to draw mosaic partners from")
            if (self.crop or self.size) < 8:
                raise ValueError(f"TrainAugment.mosaic needs a canvas (crop, else size) of at least 8 px, got "
                                 f"{self.crop or self.size}")

    def _crop(self, image, boxes, labels, size, rng):
        return random_scaled_crop(image, boxes, labels, size, rng, self.scale_jitter, self.min_visible)

    def _mosaic(self, image, boxes, labels, rng):
        from .readers import load_image

        side = self.crop or self.size
        cx, cy = (int(v) for v in rng.integers(side // 4, 3 * side // 4 + 1, size=2))
        quadrants = [(cx, cy), (side - cx, cy), (cx, side - cy), (side - cx, side - cy)]
        parts = []
        for q, quadrant in enumerate(quadrants):
            if q > 0:
                rec = self.pool[int(rng.integers(len(self.pool)))]
                image, boxes, labels = load_image(rec.image), rec.boxes, rec.labels
            parts.append(self._crop(image, boxes, labels, quadrant, rng))
        return mosaic4(parts, side, (cx, cy))

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if self.mosaic > 0 and rng.random() < self.mosaic:
            image, boxes, labels = self._mosaic(image, boxes, labels, rng)
        elif self.crop is not None:
            image, boxes, labels = self._crop(image, boxes, labels, self.crop, rng)
        if rng.random() < self.hflip:
            image, boxes = hflip(image, boxes)
        if rng.random() < self.vflip:
            image, boxes = vflip(image, boxes)
        if self.rot90:
            image, boxes = rot90(image, boxes, int(rng.integers(0, 4)))
        if self.color > 0:
            image = hsv_jitter(image, rng, self.color, self.color, self.saturation, self.channel_gain)
        image, boxes, info = letterbox(image, boxes, self.size)
        boxes, labels = _drop_tiny(boxes, labels)
        return image, boxes, labels, info


@dataclass
class EvalTransform:
    """Deterministic pipeline: letterbox to ``size`` (square), or with ``size=None`` keep native
    resolution and pad to a multiple of ``stride`` (how the NEON held-out image is evaluated)."""

    size: Optional[int] = 640
    stride: int = 32
    rect: bool = False

    def __call__(self, image, boxes, labels, rng=None):
        if self.size is None:
            image, boxes, info = pad_to_multiple(image, boxes, self.stride)
        else:
            image, boxes, info = letterbox(image, boxes, self.size, stride=self.stride if self.rect else None)
        return image, boxes, labels, info
