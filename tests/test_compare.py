"""detassign compare: naming assigners with arguments, the training comparison and the static one on a tiny
synthetic set, the tables and files, the per-epoch assignment columns of results.csv."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from detassign.compare import (STATIC_COLUMNS, TRAINING_COLUMNS, compare_static, compare_training,
                               default_image_index, markdown_table, parse_assigners, parse_key_values, summarize)
from detassign.data import DetectionRecord, DetectionSet
from detassign.stats import EPOCH_COLUMNS, add_to_tally, assignment_stats, combine_stats, tally_columns
from detassign.structures import AssignResult
from detassign.yolo.train import TrainConfig


def squares(n=2, size=64, seed=0):
    """Dark images with one bright 8-24 px square each (one COCO-small GT, side < 32)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        s = int(rng.integers(8, 25))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        img[y:y + s, x:x + s] = 220
        records.append(DetectionRecord(img, np.array([[x, y, x + s, y + s]], np.float32), np.zeros(1), size, size,
                                       f"s{i}", i))
    return DetectionSet(records, ["square"], source="squares")


def tiny_config(**kw):
    base = dict(train_set=squares(2), val_set=squares(1, seed=5), scale="p", model_kwargs=dict(width=0.0625),
                img_size=64, val_img_size=64, batch=2, nominal_batch=2, augment=False, warmup_epochs=0,
                min_warmup_iters=0, optimizer="AdamW", lr0=0.01, epochs=1, progress=False, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- naming assigners


def test_parse_key_values_yaml_values_and_bracketed_commas():
    assert parse_key_values("pos_iou_thr=0.5,neg_iou_thr=[0.0, 0.4],gt_max_assign_all=false,x=none") == dict(
        pos_iou_thr=0.5, neg_iou_thr=[0.0, 0.4], gt_max_assign_all=False, x=None)
    assert parse_key_values("") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_key_values("topk")


def test_parse_assigners_presets_arguments_and_continuations():
    specs = parse_assigners("tal,MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4,atss:topk=13,simota")
    assert [s.label for s in specs] == ["tal", "MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4", "atss:topk=13",
                                        "simota"]
    assert specs[0].config == dict(type="TaskAlignedAssigner", preset="ultralytics_loss")   # loss' DEFAULT_ASSIGNER
    assert specs[1].config == dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4)
    assert specs[2].config == dict(type="ATSSAssigner", topk=13)  # the argument overrides the preset's 9
    assert specs[3].name == "SimOTAAssigner" and specs[1].slug == "MaxIoUAssigner_pos_iou_thr-0.5_neg_iou_thr-0.4"


def test_parse_assigners_extra_args_once_or_per_assigner():
    one = parse_assigners("GridAssigner", ["pos_iou_thr=0.5,neg_iou_thr=0.4"])
    assert one[0].config == dict(type="GridAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4)
    assert one[0].label == "GridAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4"
    two = parse_assigners("atss,tal", ["topk=5", "topk=7"])
    assert [s.config["topk"] for s in two] == [5, 7]
    with pytest.raises(ValueError, match="once per assigner"):
        parse_assigners("atss,tal,dsl", ["topk=5", "topk=7"])
    with pytest.raises(ValueError, match="before any assigner"):
        parse_assigners("topk=5,atss")
    with pytest.raises(ValueError, match="named twice"):
        parse_assigners("atss,atss")


# --------------------------------------------------------------------------- tables


def test_summarize_mean_and_sample_std_by_hand():
    rows = [dict(assigner="a", seed=0, mAP50=0.2), dict(assigner="a", seed=1, mAP50=0.4),
            dict(assigner="b", seed=0, mAP50=0.5)]
    s = summarize(rows, ("assigner", "seed", "mAP50"))
    # a: mean 0.3, sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414; b: one run, std undefined
    assert [r["assigner"] for r in s] == ["a", "b"] and s[0]["runs"] == 2
    assert s[0]["mAP50"] == pytest.approx(0.3) and s[0]["mAP50_std"] == pytest.approx(math.sqrt(0.02))
    assert s[1]["mAP50"] == 0.5 and math.isnan(s[1]["mAP50_std"])
    table = markdown_table(s, ("assigner", "seed", "mAP50"))
    assert "| `a` | 0.300 ± 0.141 |" in table and "| `b` | 0.500 |" in table


def test_tally_equals_combined_stats():
    # two "batches": GT areas 100 (small) and 2500 (medium); then one small GT without a positive
    r1 = AssignResult(2, torch.tensor([1, 2, 2, 0]), None)
    r2 = AssignResult(1, torch.tensor([0, 0, -1]), None)
    s1 = assignment_stats(r1, torch.tensor([[0, 0, 10, 10.], [0, 0, 50, 50.]]))
    s2 = assignment_stats(r2, torch.tensor([[0, 0, 4, 4.]]))
    cols = tally_columns(add_to_tally(add_to_tally(None, s1, 0.25), s2, 0.5))
    both = combine_stats([s1, s2])
    assert set(cols) == set(EPOCH_COLUMNS)
    assert cols["assign/zero_pos_share"] == pytest.approx(both.zero_positive_share) == pytest.approx(1 / 3)
    assert cols["assign/zero_pos_share_small"] == pytest.approx(1 / 2)  # 2 small GTs, one without a positive
    assert cols["assign/pos_per_gt"] == pytest.approx(both.mean_positives_per_gt) == pytest.approx(1.0)
    assert cols["assign_time"] == pytest.approx(0.75)
    assert all(math.isnan(v) for v in tally_columns(None).values())


def test_default_image_index_is_a_typical_image_with_gts():
    data = squares(4)
    data.records[0].boxes = np.zeros((0, 4), np.float32)  # image 0 empty: never the default
    data.records[2].boxes = np.tile(data.records[2].boxes, (5, 1))  # a crowded one
    assert default_image_index(data) == 1  # counts 0, 1, 5, 1 -> median of non-empty 1 -> first 1
    empty = DetectionSet([], ["x"])
    assert default_image_index(empty) == 0


# --------------------------------------------------------------------------- training and static comparisons


def test_results_csv_carries_the_assignment_columns(tmp_path):
    from detassign.yolo.runs import read_results_csv
    from detassign.yolo.train import train

    from detassign.yolo.runs import plot_results

    result = train(tiny_config(out_dir=str(tmp_path / "run"), epochs=2, plots=False, val_interval=2))
    rows = read_results_csv(tmp_path / "run" / "results.csv")
    assert all(c in rows[0] for c in EPOCH_COLUMNS)
    for row in rows:
        assert 0.0 <= row["assign/zero_pos_share"] <= 1.0 and row["assign/pos_per_gt"] >= 0
        assert row["assign/zero_pos_share_small"] == row["assign/zero_pos_share"]  # every GT here is small
        assert row["assign_time"] > 0
    assert result.results[-1]["assign/pos_per_gt"] == pytest.approx(rows[-1]["assign/pos_per_gt"], rel=1e-5)
    # the loss figure gets a third row: GTs without a positive (all, small), positives per GT, assigner time
    plot_results(rows, tmp_path / "results.png")
    from PIL import Image

    with Image.open(tmp_path / "results.png") as im:
        assert im.size[1] > 900  # three rows of panels (two without the assignment columns: 660 px)


def test_compare_training_and_static_on_a_tiny_set(tmp_path, capsys):
    report = compare_training("tal,atss:topk=5", tiny_config(), seeds=2, out_dir=tmp_path / "cmp", log=None)
    assert [(r["assigner"], r["seed"]) for r in report.rows] == [("tal", 0), ("atss:topk=5", 0), ("tal", 1),
                                                                   ("atss:topk=5", 1)]
    for r in report.rows:
        assert 0 <= r["mAP50"] <= 1 and 0 <= r["mAP50-95"] <= r["mAP50"]
        assert 0 <= r["zero_pos_share"] <= 1 and r["pos_per_gt"] > 0 and r["assign_ms_per_step"] > 0
        assert r["train_s"] > 0 and r["steps"] == 1
    assert [s["runs"] for s in report.summary] == [2, 2]
    files = {p.name for p in report.files}
    assert {"compare.csv", "compare.md", "compare.png", "compare.json"} <= files
    with open(tmp_path / "cmp" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(TRAINING_COLUMNS)] == list(TRAINING_COLUMNS) and len(rows) == 4
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| `tal` |" in md and "| `atss:topk=5` |" in md and " ± " in md
    # the same seed gives the same run: a comparison differs only in the assigner
    tal = [r for r in report.rows if r["assigner"] == "tal"]
    again = compare_training("tal", tiny_config(), seeds=[0], out_dir=tmp_path / "again", log=None)
    assert again.rows[0]["mAP50-95"] == tal[0]["mAP50-95"]
    assert again.rows[0]["pos_per_gt"] == tal[0]["pos_per_gt"]

    # static: every assigner on the predictions of the trained TAL model, nothing trained
    weights = tal[0]["best"]
    static = compare_static("tal,atss,MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4", weights, data=squares(3),
                            out_dir=tmp_path / "static")
    assert [r["assigner"] for r in static.rows][0] == "tal" and len(static.rows) == 3
    for r in static.rows:
        assert r["images"] == 3 and r["gts"] == 3 and r["zero_pos_gts"] <= 3
        assert r["pos_per_gt"] == pytest.approx(r["positives"] / 3)
    assert {"compare.csv", "compare.md", "compare.png", "compare.json"} <= {p.name for p in static.files}
    header = (tmp_path / "static" / "compare.csv").read_text().splitlines()[0]
    assert header.split(",") == list(STATIC_COLUMNS)
    stats = json.loads((tmp_path / "static" / "compare.json").read_text())["stats"]
    assert stats["tal"]["num_gts"] == 3 and stats["tal"]["per_level"][0]["stride"] == 8
    with pytest.raises(ValueError, match="cannot run on grid priors"):
        compare_static("MaskHungarianAssigner", weights, data=squares(1), out_dir=tmp_path / "x")


def test_compare_command_training_static_and_errors(tmp_path, capsys, monkeypatch):
    from detassign.cli import main

    from .test_show import _voc

    monkeypatch.setenv("DETASSIGN_THREADS", "1")  # no thread-count measurement in a test
    data = _voc(tmp_path / "voc", [[(20, 10, 44, 30)], [(4, 4, 28, 28), (36, 30, 60, 58)]])
    common = ["--data", data, "--format", "voc", "--quiet"]
    out = tmp_path / "cmp"
    assert main(["compare", *common, "--val-data", data, "--assigners", "tal", "--epochs", "1", "--img-size", "64",
                 "--batch", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| `tal` |" in text and "compare.csv" in text
    assert {"compare.csv", "compare.md", "compare.png", "compare.json", "runs"} <= {p.name for p in out.iterdir()}
    weights = out / "runs" / "tal-seed0" / "weights" / "best.pt"
    assert weights.exists()
    static = tmp_path / "static"
    assert main(["compare", *common, "--static", "--weights", str(weights), "--assigners",
                 "tal,GridAssigner", "--assigner-args", "topk=5", "--assigner-args", "pos_iou_thr=0.5,neg_iou_thr=0.4",
                 "--out", str(static)]) == 0
    assert "| `GridAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4` |" in capsys.readouterr().out
    assert (static / "compare.png").stat().st_size > 10_000
    errors = {
        ("--static",): "--static needs --weights",
        ("--weights", str(weights)): "--weights is for --static",
        # every assigner with the batched interface trains (MaxIoU included); mask matching has no boxes to train on
        ("--assigners", "tal,MaskHungarianAssigner"): "the YOLO loss cannot train with it: MaskHungarianAssigner "
                                                      "cannot run on grid priors",
        ("--assigners", "tal,nope"): "'nope' is not an assigner",
    }
    for extra, words in errors.items():
        assert main(["compare", *common, "--out", str(tmp_path / "e"), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("detassign compare: error: ") and words in err[0], (extra, err)
