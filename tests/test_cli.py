"""CLI: --help of every command; show / iou-figure write PNGs; train -> val -> predict on a tiny VOC set."""
import json

import numpy as np
import pytest
import torch

from detassign.cli import COMMANDS, main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert f"detassign {command}" in text and "--" in text


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in COMMANDS)


def _voc_dataset(root, n=2, size=64):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        img[10:30, 20:44] = 220
        Image.fromarray(img).save(root / f"im{i}.png")
        (root / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.png</filename><size><width>{size}</width><height>{size}</height></size>"
            "<object><name>square</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>44</xmax><ymax>30</ymax>"
            "</bndbox></object></annotation>")
    return root


def test_iou_figure_command(tmp_path, capsys):
    assert main(["iou-figure", "--out", str(tmp_path / "iou.png")]) == 0
    assert (tmp_path / "iou.png").stat().st_size > 10_000


@pytest.mark.parametrize("assigner", ["TaskAlignedAssigner", "ATSSAssigner"])
def test_show_command(tmp_path, capsys, assigner):
    data = _voc_dataset(tmp_path / "voc")
    out = tmp_path / "show.png"
    assert main(["show", "--data", str(data), "--format", "voc", "--assigner", assigner, "--scale", "p",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert "positives for 1 GTs" in capsys.readouterr().out


def test_train_val_predict_roundtrip(tmp_path, capsys):
    data = _voc_dataset(tmp_path / "voc")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model_kwargs": {"width": 0.0625}, "warmup_epochs": 0, "min_warmup_iters": 0}))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--format", "voc", "--val-data", str(data), "--config", str(cfg),
                 "--scale", "p", "--img-size", "64", "--val-img-size", "64", "--epochs", "1", "--batch", "2",
                 "--nominal-batch", "2", "--no-augment", "--out", str(run), "--quiet"]) == 0
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert main(["val", str(run / "best.pt"), "--data", str(data), "--format", "voc", "--img-size", "64",
                 "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "mAP50" in text and "mAP50-95" in text
    assert "map50" in json.loads((tmp_path / "m.json").read_text())
    pred = tmp_path / "pred"
    assert main(["predict", str(run / "best.pt"), str(data), "--conf", "0.0", "--out", str(pred)]) == 0
    results = json.loads((pred / "predictions.json").read_text())
    assert isinstance(results, list) and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    assert (pred / "im0_pred.png").exists() and (pred / "im1_pred.png").exists()


def test_bad_dataset_reports_file_and_entry(tmp_path, capsys):
    data = _voc_dataset(tmp_path / "voc")
    (data / "im0.xml").write_text("<annotation><filename>im0.png</filename>")
    assert main(["show", "--data", str(data), "--format", "voc", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "im0.xml" in err and "invalid XML" in err
