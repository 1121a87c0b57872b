"""Defective data files: one DataError naming the file and the entry, or (per image, not strict) a skip that
is warned about by name and listed in ``DetectionSet.skipped``."""
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from detassign.data import (DataError, DatasetFormatError, DataWarning, check_image, load_image, read_coco,
                            read_dataset, read_voc, read_yolo)


def _png(path: Path, w: int = 8, h: int = 6) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def _jpeg(path: Path, w: int = 16, h: int = 12) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, "JPEG")
    return path


def _coco(tmp_path, images=None, annotations=None, categories=None, name="ann.json") -> Path:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    data = {"images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": 8, "height": 6},
                                                         {"id": 2, "file_name": "b.png", "width": 8, "height": 6}],
            "annotations": annotations if annotations is not None else [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
                {"id": 11, "image_id": 2, "category_id": 1, "bbox": [2, 2, 3, 3]}],
            "categories": categories if categories is not None else [{"id": 1, "name": "cat"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _voc(path: Path, body: str, filename: str = "a.png") -> Path:
    path.write_text(f"<annotation><filename>{filename}</filename>{body}</annotation>")
    return path


# --------------------------------------------------------------------------- the error type


def test_data_error_is_a_value_error_that_survives_pickling():
    err = DataError("/d/ann.json", "images[3]", "bad")
    assert isinstance(err, ValueError) and DatasetFormatError is DataError
    assert str(err) == "/d/ann.json: images[3]: bad"
    assert (err.path, err.entry, err.problem) == ("/d/ann.json", "images[3]", "bad")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # DataLoader workers send errors across processes


# --------------------------------------------------------------------------- COCO: whole-file defects always raise


def test_coco_duplicate_image_id_is_refused_naming_both(tmp_path):
    # before: the first image was dropped and its boxes landed on the second file
    path = _coco(tmp_path, images=[{"id": 1, "file_name": "a.png", "width": 8, "height": 6},
                                   {"id": 1, "file_name": "b.png", "width": 8, "height": 6}])
    with pytest.raises(DataError, match=r"ann.json: images\[0\] and images\[1\]: both have id 1 \('a.png', 'b.png'\)"):
        read_coco(path)  # not a per-image defect: refused even without strict


def test_coco_duplicate_category_id_is_refused_naming_both(tmp_path):
    # before: a phantom class (two names, one id)
    path = _coco(tmp_path, categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 1, "name": "cow"}])
    with pytest.raises(DataError, match=r"categories\[0\] and categories\[2\]: both have id 1 \('cat', 'cow'\)") as err:
        read_dataset(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("cats, problem", [
    ([], "missing or empty list"),
    ([{"id": "1", "name": "cat"}], "id must be an integer, got '1'"),
    ([{"id": True, "name": "cat"}], "id must be an integer, got True"),
    ([{"name": "cat"}], "needs 'id' and 'name'"),
])
def test_coco_bad_categories(tmp_path, cats, problem):
    with pytest.raises(DataError, match="ann.json: categor") as err:
        read_coco(_coco(tmp_path, categories=cats, annotations=[]))
    assert problem in str(err.value)


def test_coco_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "ann.json"
    path.write_bytes(b'{"images": [],\n "categories": [{"id": 1, "name": "caf\xe9"}]}')  # Latin-1 e-acute
    with pytest.raises(DataError, match=r"ann.json: line 2: byte 0xe9 at offset \d+ is not UTF-8"):
        read_dataset(path)


def test_coco_utf8_bom_is_accepted(tmp_path):
    path = _coco(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Windows tools write a byte-order mark
    assert len(read_coco(path)) == 2


# --------------------------------------------------------------------------- COCO: per-image defects


@pytest.mark.parametrize("bbox, problem", [
    ([1, None, 2, 2], "bbox[1] must be a number, got None"),
    ([1, "1", 2, 2], "bbox[1] must be a number, got '1'"),
    ([1, 1, True, 2], "bbox[2] must be a number, got True"),
    ([1, 1, float("nan"), 2], "bbox[2] is not finite"),
    (None, "bbox must be [x, y, w, h], got None"),
    ([1, 1, 2], "bbox must be [x, y, w, h], got [1, 1, 2]"),
])
def test_coco_bad_bbox_values_name_the_annotation(tmp_path, bbox, problem):
    path = _coco(tmp_path, annotations=[{"id": 10, "image_id": 1, "category_id": 1, "bbox": bbox},
                                        {"id": 11, "image_id": 2, "category_id": 1, "bbox": [2, 2, 3, 3]}])
    with pytest.raises(DataError, match=r"ann.json: annotations\[0\] \(id 10\)") as err:
        read_coco(path, strict=True)
    assert problem in str(err.value)
    with pytest.warns(DataWarning, match="ann.json"):
        ds = read_coco(path)  # the image with the bad annotation is left out, the other kept
    assert ds.image_ids == [2] and len(ds.skipped) == 1 and problem in ds.skipped[0][1]
    assert "1 skipped" in ds.summary()


@pytest.mark.parametrize("image, problem", [
    ({"id": 1, "file_name": "a.png", "width": None, "height": 6}, "width must be a number, got None"),
    ({"id": 1, "file_name": "a.png", "width": -8, "height": 6}, "width and height must be positive"),
    ({"id": 1, "file_name": "a.png", "width": 9, "height": 6}, "the JSON says 9x6 but"),
    ({"id": 1, "file_name": "gone.png", "width": 8, "height": 6}, "gone.png file does not exist"),
])
def test_coco_bad_image_entries_are_skipped_or_raise(tmp_path, image, problem):
    path = _coco(tmp_path, images=[image, {"id": 2, "file_name": "b.png", "width": 8, "height": 6}])
    with pytest.raises(DataError, match=r"ann.json: images\[0\] \(id 1\)") as err:
        read_coco(path, strict=True)
    assert problem in str(err.value)
    with pytest.warns(DataWarning):
        ds = read_coco(path)
    assert ds.image_ids == [2] and problem in ds.skipped[0][1]


def test_coco_non_integer_image_ids_fall_back_to_positions(tmp_path):
    path = _coco(tmp_path, images=[{"id": "a", "file_name": "a.png", "width": 8, "height": 6}],
                 annotations=[{"id": 1, "image_id": "a", "category_id": 1, "bbox": [1, 1, 2, 2]}])
    with pytest.warns(DataWarning, match="not all integers"):
        assert read_coco(path).image_ids == [0]


# --------------------------------------------------------------------------- VOC


@pytest.mark.parametrize("size, problem", [
    ("<width>-8</width><height>6</height>", "width and height must not be negative, got -8 x 6"),
    ("<width>8</width><height>-1</height>", "must not be negative, got 8 x -1"),
    ("<width>eight</width><height>6</height>", "<size/width> is not a number: 'eight'"),
    ("<width>nan</width><height>6</height>", "<size/width> is not finite"),
    ("<width>6</width><height>8</height>", "says 6x8 but"),  # the image is 8 x 6
])
def test_voc_bad_size_is_refused(tmp_path, size, problem):
    _png(tmp_path / "a.png")
    path = _voc(tmp_path / "a.xml", f"<size>{size}</size>")
    with pytest.raises(DataError, match="a.xml: <size>") as err:
        read_voc(path, strict=True)
    assert problem in str(err.value)
    with pytest.warns(DataWarning, match="a.xml"):
        assert read_voc(path).skipped == [(str(path), str(err.value).split(": ", 1)[1])]


def test_voc_non_utf8_without_declaration_names_the_line(tmp_path):
    _png(tmp_path / "a.png")
    path = tmp_path / "a.xml"
    path.write_bytes(b"<annotation><filename>a.png</filename>\n<object><name>caf\xe9</name></object></annotation>")
    with pytest.raises(DataError, match=r"a.xml: line 2: byte 0xe9 .* is not UTF-8"):
        read_voc(path, strict=True)
    # a declared encoding is honoured
    path.write_bytes(b'<?xml version="1.0" encoding="ISO-8859-1"?><annotation><filename>a.png</filename><size>'
                     b"<width>8</width><height>6</height></size><object><name>caf\xe9</name><bndbox><xmin>1</xmin>"
                     b"<ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>")
    assert read_voc(path, strict=True).names == ["caf\u00e9"]


def test_voc_split_list_naming_a_missing_xml_skips_it(tmp_path):
    voc = tmp_path / "VOC2007"
    _png(voc / "JPEGImages" / "1.png")
    (voc / "Annotations").mkdir(parents=True)
    _voc(voc / "Annotations" / "1.xml", "<size><width>8</width><height>6</height></size>", "1.png")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("1\n2\n")
    with pytest.warns(DataWarning, match="2.xml"):
        ds = read_dataset(voc)
    assert [r.name for r in ds.records] == ["1"] and ds.skipped[0][0] == str(voc / "Annotations" / "2.xml")


# --------------------------------------------------------------------------- YOLO and images


def test_yolo_non_utf8_label_file_is_skipped_naming_it(tmp_path):
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n0 0.5\xff 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"a.txt: line 2: byte 0xff"):
        read_yolo(tmp_path / "images", ["x"], strict=True)
    with pytest.warns(DataWarning, match="a.txt"):
        ds = read_yolo(tmp_path / "images", ["x"])
    assert [Path(r.image).name for r in ds.records] == ["b.png"] and ds.image_ids == [1]  # b keeps its position


@pytest.mark.parametrize("line, problem", [
    ("0 0.1 0.1 0.5 0.1 0.5", "expected 5 fields (class cx cy w h) or a polygon"),  # 5 coordinates: not x, y pairs
    ("0 0.1 0.1 0.5 0.0", "no area"),  # height 0
    ("1.5 0.5 0.5 0.2 0.2", "unknown class 1.5"),
    ("0 0.5 0.5 nan 0.2", "not finite"),
    ("0 0.1 0.1 0.5 0.1 1.4 0.9", "outside"),
])
def test_yolo_bad_lines(tmp_path, line, problem):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(line + "\n")
    with pytest.raises(DataError, match="a.txt: line 1") as err:
        read_yolo(tmp_path / "images", ["x", "y"], strict=True)
    assert problem in str(err.value)


def test_truncated_and_fake_images_are_named(tmp_path):
    png = _png(tmp_path / "cut.png", 16, 12)
    png.write_bytes(png.read_bytes()[:-30])
    jpg = _jpeg(tmp_path / "cut.jpg")
    jpg.write_bytes(jpg.read_bytes()[:-2])  # only the end-of-image marker is lost: Pillow's verify() passes
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    for path, problem in ((png, "cannot be read"), (jpg, "is truncated"), (fake, "cannot be read")):
        with pytest.raises(DataError, match=f"{path.name}: image: {problem}"):
            check_image(path)
    assert check_image(_jpeg(tmp_path / "ok.jpg")) == (16, 12)
    with pytest.raises(DataError, match=r"cut.jpg: image: cannot be decoded \(image file is truncated"):
        load_image(str(jpg))  # decoding at training time names the file too


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    images = tmp_path / "images"
    _png(images / "good.png")
    jpg = _jpeg(images / "cut.jpg")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (images / "fake.png").write_text("not an image")
    with pytest.warns(DataWarning) as record:
        ds = read_yolo(images, ["x"])
    assert [Path(r.image).name for r in ds.records] == ["good.png"]
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["cut.jpg", "fake.png"]
    assert {Path(str(w.message).split(": ")[1]).name for w in record} == {"cut.jpg", "fake.png"}
    with pytest.raises(DataError, match="cut.jpg"):
        read_yolo(images, ["x"], strict=True)
    # COCO: the same truncated image is skipped with the JSON entry named
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 3, "file_name": "cut.jpg", "width": 16, "height": 12}],
                                "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.warns(DataWarning, match=r"ann.json: images\[0\] \(id 3\): image .*cut.jpg cannot be read"):
        assert len(read_coco(path, images)) == 0


def test_many_skips_warn_a_few_by_name_then_sum_up(tmp_path):
    for k in range(13):
        _png(tmp_path / "images" / f"{k:02d}.png")
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{k:02d}.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = read_yolo(tmp_path / "images", ["x"])
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 11 and "skipped 13 images in all (3 not shown)" in messages[-1]
    assert len(ds) == 0 and len(ds.skipped) == 13


def test_image_list_naming_a_missing_file_is_a_defect_of_that_line(tmp_path):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "list.txt").write_text("images/a.png\nimages/gone.png\n")
    with pytest.raises(DataError, match=r"list.txt: line 2: image 'images/gone.png' does not exist"):
        read_yolo(tmp_path / "list.txt", ["x"], strict=True)


# --------------------------------------------------------------------------- specs and paths


@pytest.mark.parametrize("text, problem", [
    ("train: images\nnames: {0: a, 2: b}\n", "needs the keys 0..1, got [0, 2]"),
    ("train: images\nnames: [a, b]\nnc: 3\n", "2 names but nc: 3"),
    ("train: images\nnc: two\n", "nc: must be a positive integer, got 'two'"),
    ("train: images\nnames: a\n", "must be a list or an {index: name} mapping"),
    ("train: [images\n", "invalid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("format: kitti\ntrain: images\n", "unknown dataset format 'kitti'"),
    ("train: {annotations: a.json, imgs: x}\n", "unknown keys ['imgs']"),
])
def test_bad_specs(tmp_path, text, problem):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        read_dataset(tmp_path / "data.yaml")
    assert problem in str(err.value)


def test_spec_non_utf8_is_named(tmp_path):
    (tmp_path / "data.yaml").write_bytes(b"train: images\nnames: [caf\xe9]\n")
    with pytest.raises(DataError, match=r"data.yaml: line 2: byte 0xe9"):
        read_dataset(tmp_path / "data.yaml")


def test_paths_and_arguments(tmp_path):
    with pytest.raises(DataError, match="nowhere: path: does not exist"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="one image without labels"):
        read_dataset(_png(tmp_path / "a.png"))
    with pytest.raises(DataError, match="images: is not a folder"):
        read_dataset(tmp_path, images=tmp_path / "none")
    with pytest.raises(ValueError, match="unknown dataset format 'kitti'"):
        read_dataset(tmp_path, "kitti")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match="images= .* applies to COCO and VOC"):
        read_dataset(tmp_path, class_names=["x"], images=tmp_path)
    coco = _coco(tmp_path / "c")
    with pytest.raises(ValueError, match="is a COCO file, not voc"):
        read_dataset(coco, "voc")
    with pytest.raises(DataError, match=r"names \['cat'\] \(sorted by id\) differ from the expected \['dog'\]"):
        read_dataset(coco, class_names=["dog"])


def test_a_dataset_with_every_image_skipped_is_refused(tmp_path):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    with pytest.warns(DataWarning):
        assert len(read_yolo(tmp_path / "images", ["x"]).skipped) == 1  # the reader itself returns the empty set
    first = r"dataset: all 1 images were skipped; the first: .*a.txt: line 1 '3 0.5 0.5 0.2 0.2': unknown class 3"
    with pytest.warns(DataWarning), pytest.raises(DataError, match=first):
        read_dataset(tmp_path, class_names=["x"])  # nothing to train on


@pytest.mark.parametrize("text, fmt, problem", [
    ("format: coco\ntrain: {images: pics}\n", None, "a coco entry needs 'annotations'"),
    ("format: yolo\ntrain: images\nnames: [a]\n", "coco", "describes yolo data, not coco"),
])
def test_spec_entries_that_cannot_be_read(tmp_path, text, fmt, problem):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        read_dataset(tmp_path / "data.yaml", fmt)
    assert problem in str(err.value)


def test_images_folder_is_refused_for_yolo_specs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(ValueError, match="applies to COCO and VOC data; a YOLO spec lists its images itself"):
        read_dataset(tmp_path / "data.yaml", images=tmp_path / "images")
