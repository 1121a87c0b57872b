"""What `detassign val` and `detassign predict` print and write, checked with a stand-in detector of known output.

`ColourDetector` finds the red square (class 0) and the green square (class 1) of each test image exactly, so
every number below is known: perfect boxes give P = R = mAP = 1; boxes shifted 2 px right give IoU 18 * 20 /
(22 * 20) = 0.818 with their 20 x 20 GT, hence AP = 1 at IoU thresholds 0.50 ... 0.80 (7 of 10) and 0 above:
mAP50-95 = 0.7. The `--save-json` file is scored by pycocotools and faster-coco-eval against the user's own
COCO file, whose image ids (17, 4, 1009) and category ids (3, 11) are neither contiguous nor 0-based.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detassign import cli
from detassign.cli import main, overlay_names, translate_key_values

RED, GREEN = (230, 20, 20), (20, 230, 20)


class ColourDetector(torch.nn.Module):
    """Decoded-layout output [B, 4 + 2, 2]: anchor c holds the box around the pixels of colour c (x shifted by
    ``shift`` px), score 0.9 for class c; an absent colour gives score 0."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = shift
        self.num_classes = 2

    def forward(self, x):
        out = torch.zeros(x.shape[0], 6, 2, device=x.device)
        for b in range(x.shape[0]):
            red = (x[b, 0] > 0.8) & (x[b, 1] < 0.2)
            green = (x[b, 1] > 0.8) & (x[b, 0] < 0.2)
            for c, mask in enumerate((red, green)):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs):
                    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                    out[b, :4, c] = torch.stack(((x1 + x2) / 2 + self.shift, (y1 + y2) / 2, x2 - x1, y2 - y1))
                    out[b, 4 + c, c] = 0.9
        return out


def _image(path, size, squares):
    from PIL import Image

    img = np.full((size[1], size[0], 3), 90, np.uint8)
    for (x, y), colour in squares:
        img[y:y + 20, x:x + 20] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _coco_dataset(root):
    """Three images, ids 17 / 4 / 1009, categories red = 3 and green = 11; the JSON sits beside the images."""
    layout = {17: ("a.png", (70, 90), [((10, 12), RED), ((40, 50), GREEN)]),
              4: ("b.png", (96, 64), [((60, 30), RED)]),
              1009: ("c.png", (64, 64), [((5, 5), GREEN)])}
    images, annotations = [], []
    for image_id, (name, size, squares) in layout.items():
        _image(root / name, size, squares)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for (x, y), colour in squares:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 3 if colour == RED
                                else 11, "bbox": [x, y, 20, 20], "area": 400.0, "iscrowd": 0})
    path = root / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 11, "name": "green"}, {"id": 3, "name": "red"}]}))
    return path


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """A checkpoint path whose 'model' is ColourDetector(shift); returns a setter for the shift."""
    state = {"shift": 0.0}
    ckpt = tmp_path / "colour.pt"
    ckpt.write_bytes(b"stand-in")
    monkeypatch.setattr(cli, "_load_model", lambda path: (ColourDetector(state["shift"]), ["red", "green"], {}))

    def use(shift):
        state["shift"] = shift
        return str(ckpt)
    return use


def _score(backend, gt_path, dets_path):
    """AP50-95 and AP50 of a COCO results file against a COCO annotation file, by the evaluator itself."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    gt = COCO(str(gt_path))
    ev = COCOeval(gt, gt.loadRes(str(dets_path)), iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[1]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_save_json_scores_against_the_users_coco_file(tmp_path, stand_in, backend, capsys):
    gt = _coco_dataset(tmp_path / "coco")
    dets, metrics = tmp_path / "out" / "dets.json", tmp_path / "m.json"
    assert main(["val", stand_in(2.0), "--data", str(gt), "--img-size", "native", "--json", str(metrics),
                 "--save-json", str(dets)]) == 0
    results = json.loads(dets.read_text())
    assert {r["image_id"] for r in results} == {17, 4, 1009}
    assert {r["category_id"] for r in results} == {3, 11}
    ap, ap50 = _score(backend, gt, dets)
    assert ap == pytest.approx(0.7) and ap50 == pytest.approx(1.0)
    ours = json.loads(metrics.read_text())
    assert ours["map"] == pytest.approx(ap) and ours["map50"] == pytest.approx(ap50)
    assert ours["ap_per_class"] == pytest.approx({"red": 0.7, "green": 0.7})


def test_val_prints_the_per_class_table_and_speed(tmp_path, stand_in, capsys):
    gt = _coco_dataset(tmp_path / "coco")
    metrics = tmp_path / "m.json"
    assert main(["val", stand_in(0.0), "--data", str(gt), "--img-size", "native", "--json", str(metrics)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["class", "images", "instances"])
    assert lines[header].split() == ["class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:header + 4]}
    # 3 images; red in a.png and b.png (2 boxes), green in a.png and c.png (2 boxes); perfect boxes
    assert rows == {"all": ["3", "4", "1.000", "1.000", "1.000", "1.000"],
                    "red": ["2", "2", "1.000", "1.000", "1.000", "1.000"],
                    "green": ["2", "2", "1.000", "1.000", "1.000", "1.000"]}
    speed = next(line for line in lines if line.startswith("speed:"))
    assert "ms preprocess" in speed and "ms inference" in speed and "ms NMS per image" in speed
    written = json.loads(metrics.read_text())
    assert written["per_class"]["red"] == {"class": "red", "images": 2, "instances": 2, "precision": 1.0,
                                           "recall": 1.0, "map50": 1.0, "map": 1.0}
    assert set(written["speed_ms_per_image"]) == {"preprocess", "inference", "nms"}
    assert written["precision"] == written["recall"] == 1.0 and written["images"] == 3
    # confusion matrix: rows predicted, columns true, last background; every box found, nothing else
    assert written["confusion_matrix"]["counts"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_val_plots(tmp_path, stand_in, capsys):
    gt = _coco_dataset(tmp_path / "coco")
    assert main(["val", stand_in(2.0), "--data", str(gt), "--img-size", "native", "--plots", str(tmp_path / "p")]) == 0
    for name in ("PR_curve", "F1_curve", "confusion_matrix"):
        assert (tmp_path / "p" / f"{name}.png").stat().st_size > 5_000, name


def test_predict_on_a_dataset_keeps_its_ids(tmp_path, stand_in, capsys):
    gt = _coco_dataset(tmp_path / "coco")
    out = tmp_path / "pred"
    assert main(["predict", stand_in(2.0), str(gt), "--out", str(out)]) == 0
    ap, ap50 = _score("pycocotools", gt, out / "predictions.json")
    assert ap == pytest.approx(0.7) and ap50 == pytest.approx(1.0)
    index = json.loads((out / "images.json").read_text())
    assert sorted(i["id"] for i in index["images"]) == [4, 17, 1009]
    assert index["categories"] == [{"id": 3, "name": "red"}, {"id": 11, "name": "green"}]
    assert (out / "a_pred.png").exists() and (out / "c_pred.png").exists()


def test_predict_folder_skips_unreadable_images_and_keeps_sub_paths(tmp_path, stand_in, capsys):
    src = tmp_path / "photos"
    for rel in ("a/x.png", "b/x.png", "d/x.png"):
        _image(src / rel, (64, 64), [((10, 10), RED)])
    _image(src / "d" / "x.jpg", (64, 64), [((30, 30), GREEN)])
    (src / "c").mkdir()
    (src / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "pred"
    assert main(["predict", stand_in(0.0), str(src), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and "warning: skipped" in warnings[0] and "broken.png" in warnings[0]
    assert "4 image(s)" in captured.out and "1 skipped" in captured.out
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 4 and {r["category_id"] for r in results} == {1, 2}  # 1..C without a dataset
    index = json.loads((out / "images.json").read_text())
    assert [s["file_name"] for s in index["skipped"]] == [str(Path("c/broken.png"))]
    for rel in ("a/x_pred.png", "b/x_pred.png", "d/x_png_pred.png", "d/x_jpg_pred.png"):
        assert (out / rel).stat().st_size > 500, rel
    # a rerun into a folder inside the source does not read its own overlays
    assert main(["predict", stand_in(0.0), str(src), "--out", str(src / "pred"), "--no-overlays"]) == 0
    assert main(["predict", stand_in(0.0), str(src), "--out", str(src / "pred"), "--no-overlays"]) == 0
    assert len(json.loads((src / "pred" / "images.json").read_text())["images"]) == 4


def test_overlay_names_never_collide():
    names = overlay_names([Path("a/x.png"), Path("b/x.png"), Path("x.png"), Path("x.jpg"), Path("y.png"),
                           Path("y.png")])
    assert names == [Path("a/x_pred.png"), Path("b/x_pred.png"), Path("x_png_pred.png"), Path("x_jpg_pred.png"),
                     Path("y_pred.png"), Path("y_2_pred.png")]


def test_draw_detections_colours_names_and_legend():
    from detassign.viz import class_colors, draw_detections

    image = np.zeros((120, 160, 3), np.uint8)
    boxes = torch.tensor([[20.0, 40, 60, 100], [90, 50, 130, 110]])
    im = np.asarray(draw_detections(image, boxes, torch.tensor([0.9, 0.6]), torch.tensor([0, 2]),
                                    ["cat", "dog", "bird"]))
    colours = class_colors(3)
    assert (im[70, 20] == colours[0]).all() and (im[80, 90] == colours[2]).all()  # left edges in class colours
    assert (im[35:40, 21:40] == colours[0]).all(axis=-1).any()  # the name tab above the box
    legend = im[:40, 100:]  # top right: white panel with a swatch of each class present
    assert (legend == 255).all(axis=-1).any() and (legend == colours[0]).all(axis=-1).any()
    assert (legend == colours[2]).all(axis=-1).any() and not (legend == colours[1]).all(axis=-1).any()
    with pytest.raises(ValueError, match="labels"):
        draw_detections(image, boxes, torch.tensor([0.9, 0.6]), torch.tensor([0, 3]), ["cat", "dog", "bird"])


# ----------------------------------------------------------------------------- ultralytics-style key=value


def _parsed(argv):
    parser = cli.build_parser()
    return vars(parser.parse_args(translate_key_values(argv, parser)))


def test_key_values_equal_the_options():
    assert _parsed(["train", "data=coco.yaml", "epochs=100", "imgsz=640", "batch=16", "device=cpu", "lr0=0.01",
                    "workers=2"]) == \
        _parsed(["train", "--data", "coco.yaml", "--epochs", "100", "--img-size", "640", "--batch", "16",
                 "--device", "cpu", "--lr0", "0.01", "--workers", "2"])
    args = _parsed(["train", "model=yolo11s.yaml", "cos_lr=True", "augment=False", "resume=True", "nbs=32",
                    "project=runs", "name=exp", "exist_ok=True", "--names", "a=b"])
    assert (args["scale"], args["cos_lr"], args["augment"], args["resume"], args["nominal_batch"]) == \
        ("s", True, False, True, 32)
    assert args["out"] == str(Path("runs") / "exp") and args["names"] == "a=b"  # an option's value stays as is
    args = _parsed(["train", "model=w/last.pt", "resume=runs/x/last.pt", "cos_lr=false"])
    assert (args["weights"], args["resume"], args["cos_lr"]) == ("w/last.pt", "runs/x/last.pt", None)
    args = _parsed(["val", "model=best.pt", "data=d.yaml", "conf=0.01", "iou=0.6", "max_det=100", "save_json=True"])
    assert (args["checkpoint"], args["data"], args["conf"], args["iou"], args["max_det"], args["save_json"]) == \
        ("best.pt", "d.yaml", 0.01, 0.6, 100, "predictions.json")
    args = _parsed(["predict", "model=best.pt", "source=photos/", "conf=0.3", "imgsz=320"])
    assert (args["checkpoint"], args["source"], args["conf"], args["img_size"]) == ("best.pt", "photos/", 0.3, 320)


@pytest.mark.parametrize("argv, match", [
    (["train", "patience=50"], "unknown argument 'patience=50'"),
    (["train", "cos_lr=maybe"], "expected True or False"),
    (["train", "model=resnet50"], "expected a checkpoint"),
    (["show", "name=x"], "unknown argument 'name=x'"),
])
def test_bad_key_values(argv, match):
    with pytest.raises(cli.UsageError, match=match):
        translate_key_values(argv, cli.build_parser())


def test_train_in_ultralytics_style(tmp_path, capsys):
    from tests.test_cli import _voc_dataset

    data = _voc_dataset(tmp_path / "voc")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model_kwargs": {"width": 0.0625}, "warmup_epochs": 0, "min_warmup_iters": 0}))
    assert main(["train", f"data={data}", "format=voc", f"val_data={data}", f"config={cfg}", "model=yolo11p.yaml",
                 "imgsz=64", "val_img_size=64", "epochs=1", "batch=2", "nbs=2", "augment=False",
                 f"project={tmp_path}", "name=run", "quiet=True"]) == 0
    assert (tmp_path / "run" / "weights" / "best.pt").exists()
