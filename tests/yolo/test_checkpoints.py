"""Checkpoints are data, never code: hostile and broken files fail with one line; saves are atomic, ENOSPC named."""
import errno
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from detassign.yolo import YOLO11
from detassign.yolo import checkpoint as C
from detassign.yolo.checkpoint import (CheckpointError, FileWriteError, capture_rng_state, load_checkpoint,
                                       model_from_checkpoint, remove_stale_temporaries, restore_rng_state,
                                       save_checkpoint_atomic, strip_checkpoint)
from detassign.yolo.train import train
from tests.yolo.test_train import toy_config, toy_set

# Words of the low-level errors a user must never be left with.
LOW_LEVEL = ("PytorchStreamReader", "EOFError", "UnpicklingError", "KeyError", "Weights only", "weights_only",
             "Traceback")


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: loading it with plain pickle would create the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_one_clear_line(err: CheckpointError, path, *phrases):
    text = str(err)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert not any(word in text for word in LOW_LEVEL), text
    assert all(p in text for p in phrases), text


def _tiny_full_checkpoint(num_classes=1, names=("square",)):
    model = YOLO11("p", num_classes, width=0.0625)
    state = model.state_dict()
    return C.checkpoint_header(
        "full", arch={"scale": "p", "num_classes": num_classes, "kwargs": {"width": 0.0625}},
        class_names=list(names), config={"epochs": 1}, metrics={"map50": 0.5}, model=state,
        ema={"model": state, "updates": 3}, optimizer={}, scaler={}, epoch=1, skip=0, updates=3, best_fitness=0.1,
        best_epoch=1, history={"step_loss": [[1.0, 2.0, 3.0]], "lr": [0.01]}, results=[], partial={}, rng={})


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_payload_is_refused_without_running_it(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"model": _Payload(marker), "arch": {"scale": "n", "num_classes": 1}}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        _assert_one_clear_line(err.value, path, "refused without running it")
    assert not marker.exists()
    if how == "torch.save":
        assert "builtins.open" in str(err.value) or "io.open" in str(err.value)  # names what it would have called


def test_pickled_module_as_ultralytics_saves_it_is_refused(tmp_path):
    # ultralytics' .pt files pickle the model object itself: loading one would import and build classes
    path = tmp_path / "yolo.pt"
    torch.save({"model": YOLO11("p", 1, width=0.0625), "train_args": {}, "epoch": -1}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_clear_line(err.value, path, "refused without running it", "detassign.yolo.model.YOLO11")


def test_unversioned_checkpoint_with_numpy_state_is_refused(tmp_path):
    # what detassign wrote before checkpoints became data only: the numpy RNG state pickled as an ndarray
    path = tmp_path / "old.pt"
    torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}, "arch": {"scale": "n"}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_clear_line(err.value, path, "numpy", "refused")


def _bad_file(kind: str, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(_tiny_full_checkpoint(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "json":
        path.write_text(json.dumps({"arch": {"scale": "n"}, "model": {}}))
    elif kind == "state_dict":
        torch.save(YOLO11("p", 1, width=0.0625).state_dict(), path)
    elif kind == "ultralytics":  # its layout, with a state dict where ultralytics pickles the model object
        torch.save({"epoch": -1, "best_fitness": None, "model": YOLO11("p", 1, width=0.0625).state_dict(),
                    "ema": None, "updates": 10, "optimizer": None, "train_args": {"imgsz": 640},
                    "date": "2025-01-01", "version": "8.4.190"}, path)
    elif kind == "list":
        torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize("kind, phrase", [
    ("empty", "empty file"), ("truncated", "truncated or corrupt"), ("random", "not a PyTorch checkpoint"),
    ("json", "JSON"), ("state_dict", "bare state_dict"), ("ultralytics", "no 'format'"), ("list", "holds a list"),
])
def test_broken_and_foreign_files_fail_with_one_line(tmp_path, kind, phrase):
    path = tmp_path / f"{kind}.pt"
    _bad_file(kind, path)
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        _assert_one_clear_line(err.value, path, phrase)
    assert isinstance(err.value, ValueError)  # callers that catch ValueError keep working


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("change, phrase", [
    (lambda c: c.pop("optimizer"), "incomplete full checkpoint: missing optimizer"),
    (lambda c: c.update(version=99), "newer detassign"),
    (lambda c: c.update(kind="mystery"), "unknown checkpoint kind"),
    (lambda c: c.update(class_names=["a", "b"]), "'class_names' must be 1 strings"),
    (lambda c: c.update(arch={"scale": "p", "num_classes": 0}), "invalid 'arch'"),
    (lambda c: c.update(epoch="3"), "'epoch' must be an int"),
    (lambda c: c["model"].update(extra=[1, 2]), "not dicts of tensors"),
])
def test_tampered_structure_is_named(tmp_path, change, phrase):
    ckpt = _tiny_full_checkpoint()
    ckpt["model"] = dict(ckpt["model"])
    change(ckpt)
    path = tmp_path / "t.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_clear_line(err.value, path, phrase)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    ckpt = _tiny_full_checkpoint()
    ckpt["arch"] = {"scale": "p", "num_classes": 1, "kwargs": {"width": 0.125}}  # wider than the weights
    path = tmp_path / "w.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(path)
    _assert_one_clear_line(err.value, path, "do not fit YOLO11-p with 1 class(es)")


def test_training_checkpoints_are_plain_data_and_best_is_stripped(tmp_path):
    result = train(toy_config(tmp_path, epochs=1, val_set=toy_set(1, seed=3), val_img_size=64))
    last = torch.load(tmp_path / "weights" / "last.pt", weights_only=True)  # no allow-listed globals needed
    best = torch.load(tmp_path / "weights" / "best.pt", weights_only=True)
    assert (last["kind"], best["kind"]) == ("full", "weights")
    assert {"optimizer", "ema", "rng", "history", "results"} <= set(last) and not {"optimizer", "ema", "rng"} & set(best)
    assert all(v.dtype == torch.float16 for v in best["model"].values() if v.is_floating_point())
    assert best["metrics"]["map50"] == result.best_metrics["map50"] and best["epoch"] == 1
    # the stripped weights are the EMA's, rounded to float16
    model, names, _ = model_from_checkpoint(tmp_path / "weights" / "best.pt")
    assert names == ["square"] and not model.training
    ema = result.model.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, ema[k], rtol=1e-3, atol=1e-4), k
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(model(x), result.model.eval()(x), rtol=1e-2, atol=1e-2)


def test_stripped_yolo11n_is_about_five_megabytes(tmp_path):
    model = YOLO11("n", 80)
    state = model.state_dict()
    full = C.checkpoint_header("full", arch={"scale": "n", "num_classes": 80, "kwargs": {}},
                               class_names=[str(i) for i in range(80)], config={}, metrics={}, model=state,
                               ema={"model": state, "updates": 1})
    path = save_checkpoint_atomic(strip_checkpoint(full), tmp_path / "best.pt")
    size = path.stat().st_size / 2**20
    assert 4.5 < size < 6.0, size  # 2,624,080 parameters x 2 bytes, plus BatchNorm buffers
    loaded, _, _ = model_from_checkpoint(path)
    assert sum(p.numel() for p in loaded.parameters()) == 2_624_080


def test_rng_state_round_trip_through_a_data_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's generator state
    np.random.standard_normal()
    path = save_checkpoint_atomic({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(3).tolist())
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
            torch.rand(3).tolist()) == expected


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["torch.save", "os.replace", "file.write"])
def test_full_disk_is_one_error_naming_the_path(tmp_path, monkeypatch, target):
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"v": 1}, path)
    if target == "torch.save":
        monkeypatch.setattr(torch, "save", _enospc)
    elif target == "os.replace":
        monkeypatch.setattr(os, "replace", _enospc)
    else:  # the real path: the disk fills while torch.save streams (torch wraps the OSError in a RuntimeError)
        real_open = open

        class FullDisk:
            def __init__(self, file):
                self.file, self.written = file, 0

            def write(self, data):
                self.written += len(data)
                if self.written > 100:
                    _enospc()
                return self.file.write(data)

            def __getattr__(self, name):
                return getattr(self.file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

        monkeypatch.setattr(C, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    with pytest.raises(FileWriteError) as err:
        save_checkpoint_atomic({"v": torch.zeros(1000)}, path)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert str(err.value) == f"could not write {path}: No space left on device (the previous file, if any, is unchanged)"
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no last.pt.tmp* left


def test_full_disk_during_training_names_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(FileWriteError, match=f"could not write {tmp_path / 'weights' / 'last.pt'}: No space"):
        train(toy_config(tmp_path, epochs=1))
    assert [p.name for p in (tmp_path / "weights").iterdir()] == []


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (weights / f"last.pt.tmp{dead}").write_bytes(b"half")
    (weights / f"best.pt.tmp{os.getppid()}").write_bytes(b"a live writer's")  # a running process: kept
    (weights / "notes.tmp1").write_text("not ours")  # another naming: kept
    assert remove_stale_temporaries(weights) == [weights / f"last.pt.tmp{dead}"]
    (weights / f"last.pt.tmp{dead}").write_bytes(b"half")
    (tmp_path / f"results.csv.tmp{dead}").write_text("epoch\n")
    train(toy_config(tmp_path, epochs=1, exist_ok=True))  # starting a run in the folder cleans it too
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        ["best.pt", "last.pt", f"best.pt.tmp{os.getppid()}", "notes.tmp1"])
    assert not (tmp_path / f"results.csv.tmp{dead}").exists()
