"""Run folders: never overwritten, resumable and extendable, results.csv / pictures; TrainConfig from a dict;
the trainer's steps; precision-recall curves and the confusion matrix the run folder plots."""
import argparse
import errno
import hashlib
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detassign.yolo.evaluate import coco_evaluate, confusion_matrix, precision_recall_curves
from detassign.yolo.runs import (RESULTS_COLUMNS, FileWriteError, holds_run, next_run_dir, read_results_csv,
                                 results_csv_text, write_atomic)
from detassign.yolo.train import DEFAULT_EPOCHS, TrainConfig, Trainer, train
from tests.yolo.test_train import toy_config, toy_set


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) > 100


# --------------------------------------------------------------------------- run folders


def test_next_run_dir_numbers_like_ultralytics(tmp_path):
    base = tmp_path / "train"
    assert next_run_dir(base) == base  # missing
    base.mkdir()
    assert next_run_dir(base) == base  # empty: nothing to lose
    (base / "weights").mkdir()
    (base / "weights" / "last.pt").write_bytes(b"x")
    assert holds_run(base) and next_run_dir(base) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    (tmp_path / "train2" / "results.csv").write_text("epoch\n")
    assert next_run_dir(base) == tmp_path / "train3"
    assert next_run_dir(base, exist_ok=True) == base


def test_second_run_never_touches_the_first(tmp_path):
    out = tmp_path / "runs" / "train"
    first = train(toy_config(out, epochs=1))
    kept = {name: _digest(out / "weights" / name) for name in ("best.pt", "last.pt")}
    second = train(toy_config(out, epochs=1, seed=1))
    assert (first.run_dir, second.run_dir) == (str(out), str(tmp_path / "runs" / "train2"))
    assert {name: _digest(out / "weights" / name) for name in kept} == kept
    assert second.best == str(tmp_path / "runs" / "train2" / "weights" / "best.pt")
    third = train(toy_config(out, epochs=1, seed=2, exist_ok=True))  # asked for: reuse the folder
    assert third.run_dir == str(out) and _digest(out / "weights" / "last.pt") != kept["last.pt"]


def test_resume_extends_a_finished_run(tmp_path):
    first = train(toy_config(tmp_path, epochs=1))
    assert first.epochs_run == 1
    with pytest.raises(ValueError, match="already finished 1 epoch"):
        train(toy_config(tmp_path, resume=True, epochs=None))  # not given: the run's own count, which is done
    longer = train(toy_config(tmp_path, epochs=3, resume=str(tmp_path / "weights" / "last.pt")))
    assert longer.epochs_run == 3 and longer.run_dir == str(tmp_path)
    assert [r["epoch"] for r in read_results_csv(tmp_path / "results.csv")] == [1, 2, 3]
    assert len(longer.history["step_loss"]) == 3 * 2  # 4 images, batch 2: 2 steps per epoch
    assert not (tmp_path.parent / (tmp_path.name + "2")).exists()  # resume never opens a new folder


def test_results_csv_and_pictures(tmp_path):
    def extra(trainer):  # any per-epoch number a user wants in results.csv
        return {"hook/value": 7.0 + trainer.state.epoch}

    result = train(toy_config(tmp_path, epochs=2, val_interval=2, plots=True, val_set=toy_set(2, seed=3),
                              val_img_size=64), hooks=[extra])
    lines = (tmp_path / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:len(RESULTS_COLUMNS)] == list(RESULTS_COLUMNS) and "hook/value" in header[len(RESULTS_COLUMNS):]
    rows = read_results_csv(tmp_path / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and [r["hook/value"] for r in rows] == [8.0, 9.0]
    assert math.isnan(rows[0]["metrics/mAP50"]) and math.isnan(rows[0]["val/box_loss"])  # validated at 2 only
    last = rows[1]
    assert all(np.isfinite(last[c]) and last[c] >= 0 for c in RESULTS_COLUMNS)
    assert 0 <= last["metrics/precision"] <= 1 and 0 <= last["metrics/recall"] <= 1
    assert last["metrics/mAP50"] == pytest.approx(result.metrics["map50"], abs=1e-6)
    assert last["val/cls_loss"] > 0 and last["epoch_time"] > 0
    for name in ("results.png", "PR_curve.png", "F1_curve.png", "confusion_matrix.png"):
        assert _png(tmp_path / name), name
    assert result.best_epoch == 2 and result.best_metrics["map50"] == last["metrics/mAP50"]


def test_final_summary_prints_best_metrics_and_files(tmp_path, capsys):
    train(toy_config(tmp_path, epochs=1, verbose=True, val_set=toy_set(1, seed=3), val_img_size=64))
    out = capsys.readouterr().out
    assert "best.pt: epoch 1/1" in out and "mAP50-95" in out
    assert f"run folder {tmp_path}: " in out and "weights/best.pt" in out and "results.csv" in out


def test_hook_may_not_replace_a_standard_column(tmp_path):
    with pytest.raises(ValueError, match="standard results column"):
        train(toy_config(tmp_path, epochs=1, save=False), hooks=[lambda trainer: {"lr": 1.0}])


def test_results_csv_text_leaves_undefined_cells_empty():
    rows = [{"epoch": 1, "train/box_loss": 1.5, "metrics/mAP50": float("nan")},
            {"epoch": 2, "train/box_loss": 1.25, "extra": 3}]
    lines = results_csv_text(rows).splitlines()
    assert lines[0].endswith(",epoch_time,extra")
    assert lines[1].split(",")[:2] == ["1", "1.5"] and lines[1].split(",")[9] == "" and lines[1].endswith(",")
    assert lines[2].split(",")[-1] == "3"


def test_write_atomic_full_disk(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "results.csv", b"old")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FileWriteError, match=f"could not write {path}: No space left on device"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


# --------------------------------------------------------------------------- TrainConfig and the trainer


def test_train_config_from_dict_and_namespace():
    cfg = TrainConfig.from_dict({"epochs": 3, "batch": 4, "out_dir": "runs/x"})
    assert (cfg.epochs, cfg.batch, cfg.out_dir) == (3, 4, "runs/x")
    with pytest.raises(ValueError, match=r"cfg.yaml: unknown TrainConfig field\(s\) 'epoch' \(did you mean 'epochs'\?\)"):
        TrainConfig.from_dict({"epoch": 3}, source="cfg.yaml")
    args = argparse.Namespace(epochs=5, batch=None, scale="s", command="train", quiet=True)  # None: not given
    cfg = TrainConfig.from_namespace(args, base={"batch": 8, "epochs": 2})
    assert (cfg.epochs, cfg.batch, cfg.scale) == (5, 8, "s")
    assert TrainConfig().epochs is None  # DEFAULT_EPOCHS for a new run, the run's own count on resume
    assert DEFAULT_EPOCHS == 100


@pytest.mark.parametrize("field, value, phrase", [
    ("batch", 0, "batch must be an int >= 1"), ("epochs", 2.5, "epochs must be an int >= 1 or None"),
    ("img_size", True, "img_size must be an int"), ("lr0", float("nan"), "lr0 must be a finite number"),
    ("lr0", "1e-3", "lr0 must be a finite number"), ("iou_thres", 0.0, r"iou_thres must be a finite number in \(0"),
    ("augment", "no", "augment must be True or False"), ("val_img_size", -32, "val_img_size must be"),
    ("workers", -1, "workers must be an int >= 0"),
])
def test_train_config_refuses_bad_values(field, value, phrase):
    with pytest.raises(ValueError, match=phrase):
        TrainConfig(**{field: value})


def test_trainer_steps_run_one_by_one(tmp_path):
    trainer = Trainer(toy_config(tmp_path, n=6, epochs=2, nominal_batch=4, save=False))
    trainer.build_data()
    assert (trainer.batches_per_epoch, trainer.class_names) == (3, ["square"])
    trainer.build_model()
    assert trainer.accumulate == 2 and trainer.config.epochs == 2
    trainer.restore()
    assert trainer.train_epoch(0)
    assert trainer.state.updates == 2 and trainer.state.partial["batches"] == 3  # steps after batch 2 and 3
    trainer.end_epoch(0)
    assert trainer.state.epoch == 1 and len(trainer.state.results) == 1 and trainer.state.partial["batches"] == 0


# --------------------------------------------------------------------------- curves and confusion matrix


def test_precision_recall_hand_case():
    # 2 GTs; detections by score: 0.9 hits GT 0, 0.8 misses, 0.7 hits GT 1
    gts = [{"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 0])}]
    preds = [{"boxes": torch.tensor([[0., 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]),
              "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])}]
    curves = precision_recall_curves(preds, gts, num_classes=1)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope 1 up to recall 0.5 (51 levels), then 2/3 (50 levels)
    assert curves["ap"][0] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert curves["ap"][0] == pytest.approx(coco_evaluate(preds, gts, num_classes=1)["map50"])
    conf = curves["confidence"]
    at = {c: int(np.searchsorted(conf, c)) for c in (0.75, 0.85, 0.95)}
    assert curves["precision"][0, at[0.75]] == 0.5 and curves["recall"][0, at[0.75]] == 0.5  # 0.9 and 0.8 kept
    assert curves["precision"][0, at[0.85]] == 1.0 and curves["recall"][0, at[0.85]] == 0.5  # only 0.9
    assert curves["precision"][0, at[0.95]] == 1.0 and curves["recall"][0, at[0.95]] == 0.0  # none kept
    # best F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8 with all three kept
    assert curves["f1"].max() == pytest.approx(0.8)
    assert (curves["mean_precision"], curves["mean_recall"]) == (pytest.approx(2 / 3), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_precision_recall_ap_equals_the_coco_evaluator(seed):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(5):
        m = int(rng.integers(0, 8))
        corner = rng.uniform(0, 80, (m, 2))
        gt = np.concatenate([corner, corner + rng.uniform(5, 30, (m, 2))], 1)
        labels = rng.integers(0, 3, m)
        n = int(rng.integers(0, 15))
        pick = rng.integers(0, max(m, 1), n)
        boxes = (gt[pick] if m else np.tile([10.0, 10, 30, 30], (n, 1))) + rng.normal(0, 4, (n, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        guess = labels[pick] if m else np.zeros(n, np.int64)
        pred_labels = np.where(rng.uniform(size=n) < 0.8, guess, rng.integers(0, 3, n))
        preds.append({"boxes": torch.tensor(boxes), "scores": torch.tensor(rng.uniform(0, 1, n)),
                      "labels": torch.tensor(pred_labels)})
        gts.append({"boxes": torch.tensor(gt), "labels": torch.tensor(labels)})
    ours = precision_recall_curves(preds, gts, num_classes=3)["ap"]
    reference = coco_evaluate(preds, gts, num_classes=3)["ap50_per_class"]
    assert np.allclose(ours, [reference[c] for c in range(3)], atol=1e-12)


def test_confusion_matrix_hand_case():
    gts = [{"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])}]
    preds = [{"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]]),
              "scores": torch.tensor([0.9, 0.8, 0.6, 0.1]), "labels": torch.tensor([0, 0, 1, 0])}]
    matrix = confusion_matrix(preds, gts, num_classes=2)
    # rows predicted (0, 1, background), columns true: GT 0 found as 0, GT 1 found as 0, a class-1 box on nothing;
    # the 0.1 detection is under the 0.25 threshold
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    missed = confusion_matrix([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
                              gts, num_classes=2)
    assert missed.tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 0]]
