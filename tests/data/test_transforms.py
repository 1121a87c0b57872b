"""Scale jitter (``random_scaled_crop``), the 2 x 2 mosaic (``mosaic4``) and their use in ``TrainAugment``.

The older transforms (flips, turns, crop, letterbox) are tested in ``test_data.py``.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detassign.data import DetectionRecord, TrainAugment
from detassign.data.transforms import (hflip, hsv_jitter, letterbox, mosaic4, random_crop, random_scaled_crop,
                                       rot90, vflip)


def _valid(boxes, w, h):
    return bool(np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 2] <= w)
                and np.all(boxes[:, 3] <= h) and np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1]))


def _record(value: int, label: int, size: int = 40) -> DetectionRecord:
    """A flat image of one grey ``value`` with one 10 px box in the middle, class ``label``."""
    image = np.full((size, size, 3), value, np.uint8)
    c = size // 2
    return DetectionRecord(image=image, boxes=np.array([[c - 5, c - 5, c + 5, c + 5]], np.float32),
                           labels=np.array([label]), width=size, height=size)


# --------------------------------------------------------------------------- mosaic4


def test_mosaic4_places_each_part_at_its_quadrant_corner():
    # canvas 8 x 8 split at (3, 2): quadrants TL 3 x 2 at (0, 0), TR 5 x 2 at (3, 0), BL 3 x 6 at (0, 2),
    # BR 5 x 6 at (3, 2). Each part holds one box [0, 0, 1, 1] -> shifted by its quadrant's origin.
    sizes = [(2, 3), (2, 5), (6, 3), (4, 4)]  # (h, w); the last one is smaller than its quadrant
    parts = [(np.full((h, w, 3), 10 * (q + 1), np.uint8), np.array([[0, 0, 1, 1]], np.float32), np.array([q]))
             for q, (h, w) in enumerate(sizes)]
    canvas, boxes, labels = mosaic4(parts, 8, (3, 2))
    assert canvas.shape == (8, 8, 3)
    assert canvas[0, 0, 0] == 10 and canvas[1, 2, 0] == 10          # TL
    assert canvas[0, 3, 0] == 20 and canvas[1, 7, 0] == 20          # TR
    assert canvas[2, 0, 0] == 30 and canvas[7, 2, 0] == 30          # BL
    assert canvas[2, 3, 0] == 40 and canvas[5, 6, 0] == 40          # BR, its 4 x 4 part
    assert canvas[6, 3, 0] == 114 and canvas[2, 7, 0] == 114        # padding right of / below the short BR part
    np.testing.assert_array_equal(boxes, [[0, 0, 1, 1], [3, 0, 4, 1], [0, 2, 1, 3], [3, 2, 4, 3]])
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    assert boxes.dtype == np.float32 and labels.dtype == np.int64


def test_mosaic4_empty_parts_and_edges():
    empty = (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    canvas, boxes, labels = mosaic4([empty] * 4, 6, (0, 6))  # centre on the border: two quadrants are empty
    assert canvas.shape == (6, 6, 3) and np.all(canvas == 114)
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_mosaic4_refuses_bad_input():
    part = (np.zeros((2, 2, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="4 .*samples, got 3"):
        mosaic4([part] * 3, 8, (4, 4))
    with pytest.raises(ValueError, match="center must lie"):
        mosaic4([part] * 4, 8, (9, 4))
    big = (np.zeros((5, 5, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"parts\[0\] is 5 x 5 px but its quadrant is 4 x 4"):
        mosaic4([big, part, part, part], 8, (4, 4))


# --------------------------------------------------------------------------- random_scaled_crop


def test_scaled_crop_without_jitter_is_random_crop():
    rng_img = np.random.default_rng(0)
    image = rng_img.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 20, 30], [40, 10, 69, 49]], np.float32)
    labels = np.array([0, 1])
    for seed in range(5):
        a = random_crop(image, boxes, labels, 32, np.random.default_rng(seed))
        b = random_scaled_crop(image, boxes, labels, 32, np.random.default_rng(seed), jitter=0.0)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_scaled_crop_zooms_a_box_by_the_drawn_factor():
    # one 10 x 10 box in a flat 50 x 50 image; a 40 px output window with jitter 0.5 zooms by s in [0.5, 1.5]:
    # a window of 40 / s px (at most the 50 px image) is cut and resized by s, so a wholly visible box
    # becomes 10 * s px wide.
    image = np.full((50, 50, 3), 7, np.uint8)
    boxes = np.array([[20, 20, 30, 30]], np.float32)
    sides = []
    for seed in range(100):
        out, b, l = random_scaled_crop(image, boxes, np.array([0]), 40, np.random.default_rng(seed), jitter=0.5,
                                       min_visible=0.99)
        assert out.shape[0] <= 40 and out.shape[1] <= 40
        assert _valid(b, out.shape[1], out.shape[0])
        sides += list(b[:, 2] - b[:, 0])
    sides = np.array(sides)
    assert len(sides) >= 20
    assert sides.min() >= 5 - 0.5 and sides.max() <= 15 + 0.5  # 10 * [0.5, 1.5], up to rounding of the window
    assert sides.max() - sides.min() > 5  # it really varies


@settings(max_examples=40, deadline=None)
@given(w=st.integers(8, 60), h=st.integers(8, 60), size=st.integers(4, 40), jitter=st.floats(0, 0.9),
       seed=st.integers(0, 2**16))
def test_scaled_crop_keeps_boxes_valid(w, h, size, jitter, seed):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, w - 2, 5), rng.uniform(0, h - 2, 5)
    boxes = np.stack([x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)], 1).astype(np.float32)
    out, b, l = random_scaled_crop(np.zeros((h, w, 3), np.uint8), boxes, np.arange(5), size, rng, jitter)
    assert out.shape[0] <= size and out.shape[1] <= size and len(b) == len(l)
    assert _valid(b, out.shape[1], out.shape[0])


@pytest.mark.parametrize("jitter", [-0.1, 1.0, float("nan")])
def test_scaled_crop_refuses_jitter_outside_0_1(jitter):
    with pytest.raises(ValueError, match=r"jitter must be a number in \[0, 1\)"):
        random_scaled_crop(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0), 4,
                           np.random.default_rng(0), jitter=jitter)


# --------------------------------------------------------------------------- TrainAugment


def test_train_augment_defaults_draw_as_before():
    """Without jitter and mosaic, TrainAugment is crop, flips, turn, colour, letterbox with the same draws in
    the same order (seeded runs of earlier versions repeat)."""
    rng_img = np.random.default_rng(1)
    image = rng_img.integers(0, 255, (60, 50, 3), dtype=np.uint8)
    boxes = np.array([[2, 3, 30, 40], [20, 20, 49, 59]], np.float32)
    labels = np.array([0, 1])
    aug = TrainAugment(size=40, crop=32)
    for seed in range(4):
        got = aug(image, boxes, labels, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        im, b, l = random_crop(image, boxes, labels, 32, rng, 0.3)
        if rng.random() < 0.5:
            im, b = hflip(im, b)
        if rng.random() < 0.5:
            im, b = vflip(im, b)
        im, b = rot90(im, b, int(rng.integers(0, 4)))
        im = hsv_jitter(im, rng, 0.3, 0.3)
        im, b, _ = letterbox(im, b, 40)
        keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
        np.testing.assert_array_equal(got[0], im)
        np.testing.assert_array_equal(got[1], b[keep])
        np.testing.assert_array_equal(got[2], l[keep])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), jitter=st.floats(0, 0.5))
def test_train_augment_mosaic_output(seed, jitter):
    pool = [_record(10 * (i + 1), i) for i in range(5)]
    aug = TrainAugment(size=48, crop=32, mosaic=1.0, scale_jitter=jitter, color=0.0, pool=pool)
    first = pool[0]
    image, boxes, labels, info = aug(first.image, first.boxes, first.labels, np.random.default_rng(seed))
    assert image.shape == (48, 48, 3) and info.scale == 48 / 32
    assert _valid(boxes, 48, 48) and len(boxes) == len(labels)
    assert set(labels.tolist()) <= set(range(5))
    # four 16-ish px quadrants cut from 40 px flat images: the canvas shows at least two different greys
    assert len({int(v) for v in np.unique(image[..., 0])} - {114}) >= 2


def test_train_augment_mosaic_probability_zero_and_one():
    pool = [_record(10 * (i + 1), i) for i in range(3)]
    base = TrainAugment(size=32, crop=32, color=0.0)
    never = TrainAugment(size=32, crop=32, color=0.0, mosaic=0.0, pool=pool)
    rec = pool[0]
    for seed in range(3):
        a = base(rec.image, rec.boxes, rec.labels, np.random.default_rng(seed))
        b = never(rec.image, rec.boxes, rec.labels, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
    always = TrainAugment(size=32, crop=32, color=0.0, hflip=0.0, vflip=0.0, rot90=False, mosaic=1.0, pool=pool)
    image, *_ = always(rec.image, rec.boxes, rec.labels, np.random.default_rng(0))
    assert len(np.unique(image[..., 0])) >= 2  # partners from the pool are pasted in


@pytest.mark.parametrize("kwargs, message", [
    (dict(mosaic=0.5), "needs pool"),
    (dict(mosaic=1.5, pool=[0]), r"mosaic is a probability in \[0, 1\], got 1.5"),
    (dict(hflip=-0.1), "hflip is a probability"),
    (dict(scale_jitter=-1.0), r"scale_jitter must be a number in \[0, 1\)"),
    (dict(scale_jitter=1.0), r"scale_jitter must be a number in \[0, 1\)"),
    (dict(channel_gain=float("nan")), "channel_gain must be a finite number"),
    (dict(saturation=True), "saturation must be a finite number"),
    (dict(mosaic=1.0, pool=[0], crop=4), "at least 8 px"),
])
def test_train_augment_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainAugment(size=32, **kwargs)
