"""Readers (COCO / VOC / YOLO), bad-file errors, NEON tiling rule, box-safe transforms, collate padding."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detassign.data import (DataError, DatasetFormatError, DataWarning, DetectionDataset, DetectionRecord,
                            DetectionSet, EvalTransform, TrainAugment, collate, letterbox, pad_targets, read_coco,
                            read_dataset, read_voc, read_yolo)
from detassign.data import neon
from detassign.data.transforms import hflip, pad_to_multiple, random_crop, rot90, vflip


def _png(path: Path, w: int = 40, h: int = 30) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- COCO


def _coco(tmp_path, annotations=None, images=None, categories=None, name="ann.json"):
    _png(tmp_path / "a.png")
    data = {
        "images": images if images is not None else [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [20, 10, 20, 20]},
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
        "categories": categories if categories is not None else [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_read_coco_converts_xywh_and_renumbers_categories(tmp_path):
    ds = read_coco(_coco(tmp_path))
    # categories sorted by id: 3 -> 0 (cat), 9 -> 1 (dog); crowd skipped; [x, y, w, h] -> xyxy
    assert ds.class_names == ["cat", "dog"]
    assert ds.category_ids == [3, 9] and ds.image_ids == [7]
    rec = ds[0]
    np.testing.assert_array_equal(rec.boxes, [[1, 2, 11, 7], [20, 10, 40, 30]])
    np.testing.assert_array_equal(rec.labels, [0, 1])
    assert (rec.width, rec.height, rec.image_id) == (40, 30, 7)


@pytest.mark.parametrize("case, entry, problem", [
    ("broken", "line 1", "invalid JSON"),
    ("unknown_class", "annotations[0] (id 1)", "unknown category_id 5"),
    ("outside", "annotations[0] (id 1)", "outside its 40x30 image"),
    ("no_area", "annotations[0] (id 1)", "no area"),
    ("missing_image", "images[1] (id 7)", "nope.png file does not exist"),
    ("bad_image_id", "annotations[0] (id 1)", "image_id 99"),
])
def test_coco_bad_files_name_file_and_entry(tmp_path, case, entry, problem):
    ann = {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 5]}
    if case == "broken":
        path = tmp_path / "bad.json"
        path.write_text('{"images": [')
    elif case == "unknown_class":
        path = _coco(tmp_path, annotations=[dict(ann, category_id=5)], name="bad.json")
    elif case == "outside":
        path = _coco(tmp_path, annotations=[dict(ann, bbox=[35, 2, 10, 5])], name="bad.json")
    elif case == "no_area":
        path = _coco(tmp_path, annotations=[dict(ann, bbox=[3, 2, 0, 5])], name="bad.json")
    elif case == "missing_image":
        path = _coco(tmp_path, images=[{"id": 6, "file_name": "a.png", "width": 40, "height": 30},
                                       {"id": 7, "file_name": "nope.png", "width": 40, "height": 30}],
                     annotations=[], name="bad.json")
    else:
        path = _coco(tmp_path, annotations=[dict(ann, image_id=99)], name="bad.json")
    with pytest.raises(DatasetFormatError, match="bad.json") as err:
        read_coco(path, strict=True)
    assert entry in str(err.value) and problem in str(err.value)


# --------------------------------------------------------------------------- VOC


def _voc(path: Path, objects, filename="a.png", size=(40, 30)):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")
    return path


def test_read_voc_folder_collects_classes(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    _voc(tmp_path / "a.xml", [("tree", (1, 1, 10, 12)), ("car", (5, 5, 40, 30))])
    _voc(tmp_path / "b.xml", [("tree", (0, 0, 3, 3))], filename="b.png")
    ds = read_voc(tmp_path)
    assert ds.class_names == ["car", "tree"]
    np.testing.assert_array_equal(ds[0].labels, [1, 0])
    np.testing.assert_array_equal(ds[0].boxes, [[1, 1, 10, 12], [5, 5, 40, 30]])
    assert len(ds) == 2 and ds.num_boxes == 3
    fixed = read_voc(tmp_path, class_names=["tree", "car"])
    np.testing.assert_array_equal(fixed[0].labels, [0, 1])


@pytest.mark.parametrize("case, entry, problem", [
    ("broken", "line", "invalid XML"),
    ("unknown_class", "<object> #1 (bus)", "unknown class 'bus'"),
    ("outside", "<object> #0 (tree)", "outside its 40x30 image"),
    ("missing_image", "<filename>", "does not exist"),
    ("not_number", "<object> #0 (tree)", "not a number"),
])
def test_voc_bad_files_name_file_and_entry(tmp_path, case, entry, problem):
    _png(tmp_path / "a.png")
    path = tmp_path / "bad.xml"
    if case == "broken":
        path.write_text("<annotation><filename>a.png</filename>")
    elif case == "unknown_class":
        _voc(path, [("tree", (1, 1, 5, 5)), ("bus", (1, 1, 5, 5))])
    elif case == "outside":
        _voc(path, [("tree", (1, 1, 45, 5))])
    elif case == "missing_image":
        _voc(path, [("tree", (1, 1, 5, 5))], filename="gone.png")
    else:
        path.write_text("<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>"
                        "<object><name>tree</name><bndbox><xmin>one</xmin><ymin>1</ymin><xmax>5</xmax>"
                        "<ymax>5</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetFormatError, match="bad.xml") as err:
        read_voc(path, class_names=["tree"], strict=True)
    assert entry in str(err.value) and problem in str(err.value)
    with pytest.warns(DataWarning, match="bad.xml"):  # not strict: the file is skipped and listed
        ds = read_voc(path, class_names=["tree"])
    assert len(ds) == 0 and len(ds.skipped) == 1 and problem in ds.skipped[0][1]


# --------------------------------------------------------------------------- YOLO


def test_read_yolo_layout_and_spec(tmp_path):
    _png(tmp_path / "images" / "train" / "a.png", w=40, h=20)
    _png(tmp_path / "images" / "train" / "b.png")
    lab = tmp_path / "labels" / "train"
    lab.mkdir(parents=True)
    # cx 0.5 * 40 = 20, w 0.5 * 40 = 20 -> x 10..30; cy 0.5 * 20 = 10, h 0.5 * 20 = 10 -> y 5..15
    (lab / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n")
    ds = read_yolo(tmp_path / "images" / "train", ["a", "b"])
    np.testing.assert_allclose(ds[0].boxes, [[10, 5, 30, 15]])
    np.testing.assert_array_equal(ds[0].labels, [1])
    assert len(ds[1].boxes) == 0  # no label file: background image
    spec = tmp_path / "data.yaml"
    spec.write_text("path: .\ntrain: images/train\nnames: {0: a, 1: b}\n")
    ds2 = read_dataset(spec)
    assert ds2.class_names == ["a", "b"] and len(ds2) == 2


@pytest.mark.parametrize("line, problem", [
    ("5 0.5 0.5 0.1 0.1", "unknown class 5"),
    ("0 0.5 0.5 0.1", "expected 5 fields"),
    ("0 0.95 0.5 0.2 0.2", "outside"),
    ("0 x 0.5 0.2 0.2", "not numbers"),
])
def test_yolo_bad_files_name_file_and_line(tmp_path, line, problem):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match="a.txt") as err:
        read_yolo(tmp_path / "images", ["tree", "car"], strict=True)
    assert "line 2" in str(err.value) and problem in str(err.value)
    with pytest.warns(DataWarning, match="a.txt"):
        ds = read_yolo(tmp_path / "images", ["tree", "car"])
    reason = str(err.value).split(": ", 1)[1]
    assert len(ds) == 0 and ds.skipped == [(str(tmp_path / "labels" / "a.txt"), reason)]


def test_read_dataset_needs_a_dataset_or_names(tmp_path):
    with pytest.raises(DataError, match="no dataset found"):
        read_dataset(tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        read_dataset(tmp_path, "yolo")
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset(tmp_path, "kitti")


# --------------------------------------------------------------------------- NEON tiling rule and fetch errors


def test_tile_boxes_min_visible_rule():
    boxes = np.array([[0, 0, 10, 10],     # inside the window (0, 0, 20, 20)
                      [15, 0, 25, 10],    # half visible: 50 % >= 30 % -> kept, clipped to x 15..20
                      [18, 0, 28, 10],    # 20 % visible -> dropped
                      [30, 30, 40, 40]],  # outside -> dropped
                     np.float32)
    out, keep = neon.tile_boxes(boxes, (0, 0, 20, 20), min_visible=0.3, min_side=1)
    np.testing.assert_array_equal(keep, [0, 1])
    np.testing.assert_array_equal(out, [[0, 0, 10, 10], [15, 0, 20, 10]])
    out, _ = neon.tile_boxes(boxes, (10, 0, 30, 20), min_visible=0.3, min_side=1)  # shifted to the window origin
    np.testing.assert_array_equal(out[0], [5, 0, 15, 10])


def test_tile_image_covers_image_evenly():
    image = np.zeros((100, 130, 3), np.uint8)
    recs = neon.tile_image(image, np.array([[60, 40, 80, 60]], np.float32), np.array([0]), tile=50, overlap=10)
    xs = sorted({int(r.name.split("_x")[1].split("_")[0]) for r in recs})
    ys = sorted({int(r.name.split("_y")[1]) for r in recs})
    assert xs[0] == 0 and xs[-1] == 80 and ys[-1] == 50  # last window touches the border
    assert all(b - a <= 40 for a, b in zip(xs, xs[1:]))  # overlap >= 10 px
    assert all(r.image.shape[:2] == (50, 50) for r in recs)
    assert sum(len(r.boxes) for r in recs) >= 1


def test_fetch_failure_says_what_was_tried(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):  # no network in tests: pip "fails"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(neon.subprocess, "run", fake_run)
    monkeypatch.setenv("DETASSIGN_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="Could not obtain") as err:
        neon.fetch_wheel(quiet=True)
    text = str(err.value)
    assert "pip download" in text and str(tmp_path) in text and neon.WHEEL_SHA256 in text


@pytest.mark.skipif(neon.find_wheel() is None, reason="deepforest wheel not cached (only `make demo` downloads it)")
def test_neon_split_matches_the_data_card():
    val = neon.load_neon("val")
    assert (val[0].width, val[0].height, len(val[0].boxes)) == (1249, 1035, 279)
    image, boxes, names = neon.read_wheel_image(str(neon.find_wheel()), neon.TRAIN_IMAGE)
    assert image.shape == (2472, 2299, 3) and len(boxes) == 574 and set(names) == {"Tree"}
    tiles = neon.load_neon("train")
    assert len(tiles) == 49 and all(len(r.boxes) == len(r.labels) for r in tiles.records)


@pytest.mark.skipif(neon.find_wheel() is None, reason="deepforest wheel not cached (only `make demo` downloads it)")
def test_neon_extra_training_images():
    tiles = neon.load_neon("train", extra_copies=2)
    extra = tiles.records[49:]
    assert [r.name for r in extra] == ["OSBS_029", "SOAP_061"] * 2
    assert [len(r.boxes) for r in extra] == [61, 37] * 2  # SOAP's Alive / Dead are both Tree (label 0)
    assert all(r.image.shape == (400, 400, 3) and not r.labels.any() for r in extra)
    assert [r.image_id for r in tiles.records] == list(range(53))
    with pytest.raises(ValueError, match="extra_copies is for the 'train' split"):
        neon.load_neon("val", extra_copies=1)
    with pytest.raises(ValueError, match="extra_copies must be an int >= 0, got -1"):
        neon.load_neon("train", extra_copies=-1)


# --------------------------------------------------------------------------- transforms


def _valid(boxes, w, h):
    return bool(np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 2] <= w)
                and np.all(boxes[:, 3] <= h) and np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1]))


@st.composite
def image_and_boxes(draw):
    w, h = draw(st.integers(8, 60)), draw(st.integers(8, 60))
    n = draw(st.integers(0, 6))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w - 2))
        y1 = draw(st.floats(0, h - 2))
        boxes.append([x1, y1, draw(st.floats(x1 + 1, w)), draw(st.floats(y1 + 1, h))])
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.arange(n, dtype=np.int64)


@given(image_and_boxes(), st.integers(0, 2 ** 31 - 1), st.integers(8, 48))
def test_train_augment_keeps_boxes_valid(sample, seed, crop):
    image, boxes, labels = sample
    aug = TrainAugment(size=32, crop=crop)
    out, b, lab, info = aug(image, boxes, labels, np.random.default_rng(seed))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert _valid(b, 32, 32) and len(b) == len(lab) <= len(labels)


@given(image_and_boxes(), st.integers(0, 3))
def test_rot90_and_flips_move_pixels_with_boxes(sample, k):
    image, boxes, _ = sample
    h, w = image.shape[:2]
    for fn in (lambda i, b: rot90(i, b, k), hflip, vflip):
        out, b = fn(image, boxes)
        assert _valid(b, out.shape[1], out.shape[0])
        np.testing.assert_allclose((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
                                   (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), rtol=1e-5)
    # four quarter turns are the identity
    out, b = rot90(image, boxes, 4)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_allclose(b, boxes)


def test_rot90_marks_the_same_pixels():
    image = np.zeros((6, 10, 3), np.uint8)
    image[1:3, 6:9] = 255  # box (6, 1, 9, 3)
    out, b = rot90(image, np.array([[6, 1, 9, 3]], np.float32), 1)
    x1, y1, x2, y2 = b[0].astype(int)
    assert out[y1:y2, x1:x2].min() == 255 and out.sum() == image.sum()  # the box still covers the bright patch


def test_letterbox_roundtrip_and_padding():
    image = np.zeros((50, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 30, 40]], np.float32)
    out, b, info = letterbox(image, boxes, 64)
    # scale 0.64: 100 x 50 -> 64 x 32, padded 16 px top and bottom
    assert out.shape == (64, 64, 3) and info.scale == pytest.approx(0.64) and info.pad_y == 16
    np.testing.assert_allclose(b, [[6.4, 22.4, 19.2, 41.6]], rtol=1e-5)
    np.testing.assert_allclose(info.to_original(b), boxes, rtol=1e-5)
    out, b, info = pad_to_multiple(np.zeros((33, 70, 3), np.uint8), boxes, 32)
    assert out.shape == (64, 96, 3) and info.scale == 1.0
    _, b, _, info = EvalTransform(64, rect=True)(image, boxes, np.zeros(1))
    assert info.pad_y == 0


def test_random_crop_is_reproducible():
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 30, 30], [40, 20, 59, 49]], np.float32)
    a = random_crop(image, boxes, np.array([0, 1]), 32, np.random.default_rng(3))
    b = random_crop(image, boxes, np.array([0, 1]), 32, np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- dataset and collate


def test_pad_targets_and_collate():
    gl, gb, gm = pad_targets([torch.ones(2, 4), torch.zeros(0, 4), torch.ones(3, 4)],
                             [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.long), torch.tensor([0, 0, 4])])
    assert gl.shape == (3, 3) and gb.shape == (3, 3, 4) and gm.dtype == torch.bool
    assert gm.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert gl[0].tolist() == [1, 2, 0] and gb[1].abs().sum() == 0
    gl, gb, gm = pad_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])
    assert gl.shape == (1, 0) and gb.shape == (1, 0, 4)


def test_dataset_items_collate_and_depend_only_on_seed_epoch_index():
    rng = np.random.default_rng(0)
    recs = [DetectionRecord(image=rng.integers(0, 255, (40, 48, 3), dtype=np.uint8),
                            boxes=np.array([[2, 2, 20, 20]] * (i + 1), np.float32), labels=[0] * (i + 1),
                            width=48, height=40, name=f"im{i}") for i in range(3)]
    ds = DetectionDataset(DetectionSet(recs, ["x"]), TrainAugment(size=32), seed=5)
    batch = collate([ds[0], ds[2]])
    assert batch["images"].shape == (2, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["gt_mask"].sum(1).tolist() == [1, 3] and batch["gt_bboxes"].shape == (2, 3, 4)
    again = DetectionDataset(DetectionSet(recs, ["x"]), TrainAugment(size=32), seed=5)
    assert torch.equal(again[2]["image"], ds[2]["image"])
    ds.set_epoch(1)
    changed = [not torch.equal(ds[i]["image"], again[i]["image"]) for i in range(3)]
    assert any(changed)  # a new epoch draws new augmentations
