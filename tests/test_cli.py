"""CLI: --help of every command; show / iou-figure write PNGs; train -> val -> predict on a tiny VOC set."""
import json

import numpy as np
import pytest

from detassign.cli import COMMANDS, main


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
    assert (run / "weights" / "best.pt").exists() and (run / "weights" / "last.pt").exists()
    assert main(["val", str(run / "weights" / "best.pt"), "--data", str(data), "--format", "voc", "--img-size", "64",
                 "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "mAP50" in text and "mAP50-95" in text
    assert "map50" in json.loads((tmp_path / "m.json").read_text())
    pred = tmp_path / "pred"
    assert main(["predict", str(run / "weights" / "best.pt"), str(data), "--conf", "0.0", "--out", str(pred)]) == 0
    results = json.loads((pred / "predictions.json").read_text())
    assert isinstance(results, list) and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    assert (pred / "im0_pred.png").exists() and (pred / "im1_pred.png").exists()


def test_bad_dataset_file_is_skipped_with_a_one_line_warning(tmp_path, capsys):
    data = _voc_dataset(tmp_path / "voc")
    (data / "im0.xml").write_text("<annotation><filename>im0.png</filename>")
    assert main(["show", "--data", str(data), "--format", "voc", "--scale", "p", "--out", str(tmp_path / "x.png")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("detassign show: warning: ")
    assert "im0.xml" in lines[0] and "invalid XML" in lines[0]


def test_strict_fails_on_a_bad_dataset_file_in_one_line(tmp_path, capsys):
    data = _voc_dataset(tmp_path / "voc")
    (data / "im0.xml").write_text("<annotation><filename>im0.png</filename>")
    code = main(["show", "--data", str(data), "--format", "voc", "--strict", "--scale", "p",
                 "--out", str(tmp_path / "x.png")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "im0.xml" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x.png").exists()
