"""Datasets as people keep them, found from the path alone: COCO, VOC and YOLO layouts, spec files, ids kept."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from detassign.data import (DATA_HELP, SPEC_HELP, DataError, DetectionDataset, EvalTransform, collate,
                            read_dataset, read_yolo)


def _png(path: Path, w: int = 8, h: int = 6) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def _coco_json(path: Path, files, image_ids=None, categories=((1, "cat"), (18, "dog"))):
    """One box per image: image k gets category categories[k % C] with bbox [1, 1, 3, 2] (xyxy 1, 1, 4, 3)."""
    ids = list(image_ids) if image_ids is not None else list(range(1, len(files) + 1))
    cats = [{"id": c, "name": n} for c, n in categories]
    data = {"images": [{"id": i, "file_name": f, "width": 8, "height": 6} for i, f in zip(ids, files)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": cats[k % len(cats)]["id"], "bbox": [1, 1, 3, 2]}
                            for k, i in enumerate(ids)],
            "categories": cats}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _voc_xml(path: Path, filename: str, objects, size=(8, 6)):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC2007</folder><filename>{filename}</filename><size><width>{size[0]}"
                    f"</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")
    return path


# --------------------------------------------------------------------------- COCO


def _official_coco(root: Path) -> Path:
    """coco/annotations/instances_{train,val}2017.json beside coco/train2017/ and coco/val2017/ (the official tree)."""
    for split, names, ids in (("train2017", ["a.png", "b.png"], [42, 7]), ("val2017", ["c.png"], [1000])):
        for n in names:
            _png(root / split / n)
        _coco_json(root / "annotations" / f"instances_{split}.json", names, ids)
    return root


def test_coco_official_layout_from_the_json_or_the_root(tmp_path):
    root = _official_coco(tmp_path / "coco")
    ds = read_dataset(root / "annotations" / "instances_train2017.json")
    assert [Path(r.image) for r in ds.records] == [root / "train2017" / "a.png", root / "train2017" / "b.png"]
    # the file's own ids, so predictions score against it: image ids in file order, category ids 1 and 18
    assert ds.image_ids == [42, 7] and ds.category_ids == [1, 18] and ds.names == ["cat", "dog"]
    np.testing.assert_array_equal(ds[0].boxes, [[1, 1, 4, 3]])
    train = read_dataset(root, split="train")  # 'train' finds instances_train2017.json
    assert train.image_ids == [42, 7] and train.split == "train2017"
    val = read_dataset(root, split="val")
    assert val.image_ids == [1000] and Path(val[0].image) == root / "val2017" / "c.png" and val.split == "val2017"
    assert read_dataset(root, "coco", split="val").image_ids == [1000]


@pytest.mark.parametrize("layout", ["images_split", "images", "beside", "explicit"])
def test_coco_image_folder_candidates(tmp_path, layout):
    ann = tmp_path / "ds" / "annotations" / "val.json"
    folder = {"images_split": tmp_path / "ds" / "images" / "val", "images": tmp_path / "ds" / "images",
              "beside": ann.parent, "explicit": tmp_path / "elsewhere"}[layout]
    _png(folder / "x.png")
    _coco_json(ann, ["x.png"])
    ds = read_dataset(ann, images=folder if layout == "explicit" else None)
    assert Path(ds[0].image) == folder / "x.png" and ds.skipped == []


def test_coco_images_not_found_says_where_it_looked(tmp_path):
    ann = _coco_json(tmp_path / "annotations" / "instances_val.json", ["x.png"])
    with pytest.raises(DataError, match="instances_val.json: images: cannot find image files such as 'x.png'") as err:
        read_dataset(ann)
    assert str(tmp_path / "val") in str(err.value) and "--images" in str(err.value)


def test_coco_roboflow_layout_and_valid_alias(tmp_path):
    for split in ("train", "valid"):  # Roboflow: <split>/_annotations.coco.json beside the images
        _png(tmp_path / split / f"{split}.png")
        _coco_json(tmp_path / split / "_annotations.coco.json", [f"{split}.png"])
    assert Path(read_dataset(tmp_path, split="val")[0].image).name == "valid.png"
    assert Path(read_dataset(tmp_path, split="train")[0].image).name == "train.png"


def test_coco_root_with_two_matching_files_asks_for_one(tmp_path):
    for year in (2014, 2017):
        _coco_json(tmp_path / "annotations" / f"instances_val{year}.json", ["x.png"])
    with pytest.raises(DataError, match="several annotation files match"):
        read_dataset(tmp_path, split="val")
    with pytest.raises(DataError, match="no annotation file for split 'test'; present: instances_val2014.json"):
        read_dataset(tmp_path, split="test")


# --------------------------------------------------------------------------- VOC


def _voc2007(voc: Path, splits) -> Path:
    """VOC2007-style: Annotations/<id>.xml, JPEGImages/<id>.png, ImageSets/Main/<split>.txt."""
    for split, ids in splits.items():
        for i in ids:
            _png(voc / "JPEGImages" / f"{i}.png")
            _voc_xml(voc / "Annotations" / f"{i}.xml", f"{i}.png",
                     [("dog", (1, 1, 5, 4), False), ("cat", (2, 2, 6, 5), False), ("cat", (0, 0, 2, 2), True)])
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "ImageSets" / "Main" / "cat_train.txt").write_text("000001  1\n")  # per-class lists are not splits
    return voc


def test_voc_devkit_and_year_folder(tmp_path):
    voc = _voc2007(tmp_path / "VOCdevkit" / "VOC2007", {"train": ["000001", "000002"], "val": ["000003"]})
    for path in (tmp_path / "VOCdevkit", voc, tmp_path):  # the devkit, the year folder, or the devkit's parent
        ds = read_dataset(path, split="train")
        assert [r.name for r in ds.records] == ["000001", "000002"] and ds.split == "train"
    # classes sorted by name; the difficult cat is left out; ids 0..n-1 in list order, categories 1-based
    assert ds.names == ["cat", "dog"] and ds.category_ids == [1, 2] and ds.image_ids == [0, 1]
    np.testing.assert_array_equal(ds[0].labels, [1, 0])
    np.testing.assert_array_equal(ds[0].boxes, [[1, 1, 5, 4], [2, 2, 6, 5]])
    assert Path(ds[0].image) == voc / "JPEGImages" / "000001.png"
    assert [r.name for r in read_dataset(voc, "voc", split="val").records] == ["000003"]
    listed = read_dataset(voc / "ImageSets" / "Main" / "val.txt")  # a split list given directly
    assert [r.name for r in listed.records] == ["000003"] and listed.split == "val"
    with pytest.raises(DataError, match=r"no 'test' split .*available: \['train', 'val'\]"):
        read_dataset(voc, split="test")
    every = read_dataset(voc / "Annotations")  # the XML folder alone: every file, images from ../JPEGImages
    assert [r.name for r in every.records] == ["000001", "000002", "000003"] and every.skipped == []


def test_voc_devkit_joins_years_that_have_the_split(tmp_path):
    _voc2007(tmp_path / "VOC2007", {"trainval": ["07a"], "test": ["07b"]})
    _voc2007(tmp_path / "VOC2012", {"trainval": ["12a"]})
    assert [r.name for r in read_dataset(tmp_path, split="trainval").records] == ["07a", "12a"]
    assert [r.name for r in read_dataset(tmp_path, split="test").records] == ["07b"]


def test_voc_zero_size_is_read_from_the_image(tmp_path):
    _png(tmp_path / "a.png", w=8, h=6)
    _voc_xml(tmp_path / "a.xml", "a.jpg", [("tree", (1, 1, 8, 6), False)], size=(0, 0))
    ds = read_dataset(tmp_path)  # a flat folder of XML; <filename> names a .jpg, the image is a .png
    assert (ds[0].width, ds[0].height) == (8, 6) and Path(ds[0].image).name == "a.png" and ds.split is None


# --------------------------------------------------------------------------- YOLO


def _yolo_tree(root: Path, splits=("train", "val")):
    """root/images/<split>/<split>N.png with root/labels/<split>/<split>N.txt (8 x 6 px images)."""
    for split in splits:
        for k in range(2):
            _png(root / "images" / split / f"{split}{k}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}{k}.txt").write_text(f"{k} 0.5 0.5 0.5 0.5\n")
    return root


def test_yolo_data_yaml_folders_and_names_forms(tmp_path):
    root = _yolo_tree(tmp_path / "ds")
    spec = tmp_path / "data.yaml"
    spec.write_text("path: ds\ntrain: images/train\nval: images/val\nnames: {0: person, 1: car}\n")
    ds = read_dataset(spec)
    assert ds.names == ["person", "car"] and ds.category_ids == [1, 2] and ds.split == "train"
    assert [Path(r.image).name for r in ds.records] == ["train0.png", "train1.png"] and ds.image_ids == [0, 1]
    # cx 0.5 * 8 = 4, w 0.5 * 8 = 4 -> x 2..6; cy 0.5 * 6 = 3, h 0.5 * 6 = 3 -> y 1.5..4.5
    np.testing.assert_allclose(ds[1].boxes, [[2, 1.5, 6, 4.5]])
    assert [Path(r.image).name for r in read_dataset(spec, split="val").records] == ["val0.png", "val1.png"]
    spec.write_text("path: ds\ntrain: [images/train, images/val]\nnames: [person, car]\n")
    assert len(read_dataset(spec)) == 4
    spec.write_text("path: ds\ntrain: images/train\nnc: 2\n")
    assert read_dataset(spec).names == ["class_0", "class_1"]
    assert read_dataset(root / "images" / "train", class_names=["a", "b"]).names == ["a", "b"]


def test_yolo_txt_image_lists(tmp_path):
    root = _yolo_tree(tmp_path)
    # ultralytics' train2017.txt style: './' lines relative to the list's folder, others to the root
    (root / "train.txt").write_text("./images/train/train1.png\nimages/val/val0.png\n")
    (root / "data.yaml").write_text("train: train.txt\nnames: [a, b]\n")
    ds = read_dataset(root / "data.yaml")
    assert [Path(r.image).name for r in ds.records] == ["train1.png", "val0.png"]
    np.testing.assert_array_equal([int(r.labels[0]) for r in ds.records], [1, 0])
    assert [Path(r.image).name for r in read_dataset(root / "train.txt", class_names=["a", "b"]).records] == \
        ["train1.png", "val0.png"]


def test_yolo_roboflow_yaml_relative_paths(tmp_path):
    # Roboflow exports: data.yaml beside train/ and valid/, entries '../train/images' (ultralytics strips '../')
    for split in ("train", "valid"):
        _png(tmp_path / split / "images" / f"{split}.png")
        (tmp_path / split / "labels").mkdir(parents=True)
        (tmp_path / split / "labels" / f"{split}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['crack']\n")
    assert Path(read_dataset(tmp_path / "data.yaml", split="val")[0].image).name == "valid.png"
    assert Path(read_dataset(tmp_path, split="train")[0].image).name == "train.png"  # the folder finds data.yaml


def test_yolo_root_without_yaml_uses_classes_txt(tmp_path):
    root = _yolo_tree(tmp_path / "ds")
    with pytest.raises(ValueError, match="classes.txt"):
        read_dataset(root, split="val")
    (root / "classes.txt").write_text("person\ncar\n")
    ds = read_dataset(root, split="val")
    assert ds.names == ["person", "car"] and ds.split == "val" and len(ds) == 2
    assert read_dataset(root, "yolo", ["x", "y"], split="val").names == ["x", "y"]


def test_yolo_labels_beside_images(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = read_dataset(tmp_path, class_names=["x"])
    assert len(ds) == 1 and len(ds[0].boxes) == 1 and ds.split is None


def test_yolo_segment_polygon_lines_give_their_bounding_box(tmp_path):
    _png(tmp_path / "images" / "a.png", w=10, h=20)
    (tmp_path / "labels").mkdir()
    # triangle (0.1, 0.2), (0.6, 0.1), (0.3, 0.9) on 10 x 20 px: x 1..6, y 2..18; a box line is kept as is
    (tmp_path / "labels" / "a.txt").write_text("1 0.1 0.2 0.6 0.1 0.3 0.9\n0 0.5 0.5 0.2 0.1\n")
    ds = read_yolo(tmp_path / "images", ["a", "b"])
    np.testing.assert_allclose(ds[0].boxes, [[1, 2, 6, 18], [4, 9, 6, 11]], atol=1e-5)
    np.testing.assert_array_equal(ds[0].labels, [1, 0])


@pytest.mark.oracle
def test_yolo_polygons_match_ultralytics_label_reader(tmp_path):
    from tests.oracles import _ultra  # noqa: F401  (imports ultralytics as an oracle)
    from ultralytics.data.utils import verify_image_label

    rng = np.random.default_rng(0)
    _png(tmp_path / "images" / "a.png", w=32, h=24)
    lines = []
    for k in range(6):
        pts = rng.uniform(0.05, 0.95, size=(int(rng.integers(3, 9)), 2))
        lines.append(" ".join([str(k % 3)] + [f"{v:.6f}" for v in pts.ravel()]))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    ours = read_yolo(tmp_path / "images", ["a", "b", "c"])[0]
    ref = verify_image_label((str(tmp_path / "images" / "a.png"), str(tmp_path / "labels" / "a.txt"), "", False,
                              3, 0, 0, False))
    cls, cxcywh = ref[1][:, 0], ref[1][:, 1:] * np.array([32, 24, 32, 24])
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    order = np.lexsort(np.c_[xyxy, cls].T)  # ultralytics drops duplicates via np.unique, which sorts
    ours_order = np.lexsort(np.c_[ours.boxes, ours.labels].T)
    np.testing.assert_array_equal(ours.labels[ours_order], cls[order])
    np.testing.assert_allclose(ours.boxes[ours_order], xyxy[order], atol=1e-4)


# --------------------------------------------------------------------------- spec files and help


def test_spec_file_for_coco_and_voc(tmp_path):
    _png(tmp_path / "pics" / "x.png")
    _coco_json(tmp_path / "labels" / "train.json", ["x.png"], image_ids=[5])
    spec = tmp_path / "spec.yaml"
    spec.write_text("format: coco\ntrain: {annotations: labels/train.json, images: pics}\n")
    ds = read_dataset(spec)
    assert ds.image_ids == [5] and ds.split == "train" and Path(ds[0].image) == tmp_path / "pics" / "x.png"
    voc = _voc2007(tmp_path / "VOC2007", {"train": ["1"], "val": ["2"]})
    (tmp_path / "voc.json").write_text(json.dumps({"format": "voc", "names": ["dog", "cat"], "path": str(voc),
                                                   "train": ".", "val": "ImageSets/Main/val.txt"}))
    train, val = read_dataset(tmp_path / "voc.json"), read_dataset(tmp_path / "voc.json", split="val")
    assert [r.name for r in train.records] == ["1"] and [r.name for r in val.records] == ["2"]
    assert train.names == ["dog", "cat"]  # the spec fixes the class order
    np.testing.assert_array_equal(train[0].labels, [0, 1])


def test_spec_missing_split_names_what_it_has(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(DataError, match="no 'val' entry in the spec; it has: train"):
        read_dataset(tmp_path / "data.yaml", split="val")


def test_help_strings_name_every_layout():
    for word in ("instances_<split>.json", "--images", "VOCdevkit", "ImageSets/Main", "data.yaml", "labels/<split>"):
        assert word in DATA_HELP
    for word in ("format:", "names:", "annotations:", "images:", "labels:"):
        assert word in SPEC_HELP
    example = yaml.safe_load(textwrap.dedent(SPEC_HELP.split("\n", 1)[1]))  # the example itself is a valid spec
    assert example["format"] == "coco" and example["names"] == ["cat", "dog"] and example["train"]["images"] == "train"


def test_read_sets_feed_the_loader_with_their_ids(tmp_path):
    root = _official_coco(tmp_path)
    ds = read_dataset(root, split="train")
    loader = torch.utils.data.DataLoader(DetectionDataset(ds, EvalTransform(32)), batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image_ids"] == [42, 7] and batch["images"].shape == (2, 3, 32, 32)
    assert batch["gt_mask"].sum().item() == 2
