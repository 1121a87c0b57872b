"""The command line speaks in one line: every user error is `detassign <cmd>: error: ...` on stderr, exit status 2,
no traceback; `--debug` adds the traceback; a bug is one line too (exit 1)."""
import json

import pytest
import torch

from detassign import cli
from detassign.cli import main


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def _voc(t):
    from tests.test_cli import _voc_dataset

    return str(_voc_dataset(t / "voc"))


def _foreign_checkpoint(t):
    path = t / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, path)
    return str(path)


def _truncated_checkpoint(t):
    path = t / "truncated.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    return str(path)


# name -> argv built in a fresh tmp folder; each must fail before any training or download
CASES = {
    "missing --data": lambda t: ["train", "--data", str(t / "nope.json")],
    "unrecognised --data file": lambda t: ["train", "--data", _write(t / "d.csv", "a,b\n")],
    "unrecognised --data folder": lambda t: ["show", "--data", str((t / "empty").mkdir() or t / "empty")],
    "missing --val-data": lambda t: ["train", "--data", _voc(t), "--val-data", str(t / "val.json")],
    "--batch 0": lambda t: ["train", "--batch", "0"],
    "--epochs abc": lambda t: ["train", "--epochs", "abc"],
    "--img-size -32": lambda t: ["train", "--img-size", "-32"],
    "--img-size 100": lambda t: ["train", "--img-size", "100"],
    "--lr0 nan": lambda t: ["train", "--lr0", "nan"],
    "val --conf 2": lambda t: ["val", _foreign_checkpoint(t), "--conf", "2"],
    "unknown --assigner (train)": lambda t: ["train", "--assigner", "nope"],
    "unknown --assigner (show)": lambda t: ["show", "--assigner", "MaxIouAssigner"],
    "untrainable --assigner": lambda t: ["train", "--assigner", "HungarianAssigner"],
    "--device tpu": lambda t: ["train", "--device", "tpu"],
    "--device cuda:7 (or cuda on a CPU machine)": lambda t: ["val", _foreign_checkpoint(t), "--device", "cuda:7"],
    "--device 0,1": lambda t: ["train", "--device", "0,1"],
    "invalid YAML --config": lambda t: ["train", "--config", _write(t / "c.yaml", "epochs: [1\n")],
    "YAML --config not a mapping": lambda t: ["train", "--config", _write(t / "c.yaml", "- 1\n- 2\n")],
    "invalid JSON --config": lambda t: ["train", "--config", _write(t / "c.json", "{epochs: 1}")],
    "missing --config": lambda t: ["train", "--config", str(t / "c.yaml")],
    "--out that is a file (train)": lambda t: ["train", "--out", _write(t / "f", "x")],
    "--out below a file": lambda t: ["predict", _foreign_checkpoint(t), _voc(t), "--out", _write(t / "f", "x") + "/o"],
    "--out that is a folder (show)": lambda t: ["show", "--out", str(t)],
    "--out of an unknown picture type": lambda t: ["iou-figure", "--out", str(t / "fig.v2")],
    "missing checkpoint": lambda t: ["val", str(t / "best.pt")],
    "checkpoint that is a folder": lambda t: ["val", str(t)],
    "random bytes checkpoint": lambda t: ["val", _write(t / "r.pt", bytes(range(256)) * 4)],
    "empty checkpoint": lambda t: ["predict", _write(t / "e.pt", b""), _voc(t)],
    "JSON checkpoint": lambda t: ["val", _write(t / "j.pt", json.dumps({"arch": 1}))],
    "foreign checkpoint": lambda t: ["val", _foreign_checkpoint(t)],
    "truncated checkpoint": lambda t: ["show", "--weights", _truncated_checkpoint(t), "--data", _voc(t)],
    "missing --resume": lambda t: ["train", "--resume", str(t / "run" / "last.pt")],
    "a .txt given to predict": lambda t: ["predict", _foreign_checkpoint(t), _write(t / "labels.txt", "0 .5 .5 .1 .1")],
    "missing predict source": lambda t: ["predict", _foreign_checkpoint(t), str(t / "photos")],
    "unknown key=value": lambda t: ["train", "patience=50"],
    "unknown option": lambda t: ["val", _foreign_checkpoint(t), "--bogus"],
    "no command": lambda t: [],
    "unknown command": lambda t: ["fit"],
    "--index out of range": lambda t: ["show", "--data", _voc(t), "--index", "5"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_exit_2(case, tmp_path, capsys):
    argv = CASES[case](tmp_path)
    if case.startswith("--device cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(argv) == 2, case
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    command = argv[0] if argv and argv[0] in cli.COMMANDS else None
    assert lines[0].startswith(f"detassign {command}: error: " if command else "detassign: error: "), lines[0]
    assert "Traceback" not in out + err


def test_error_messages_name_the_problem(tmp_path, capsys):
    expected = {
        "--batch 0": "argument --batch: must be >= 1, got 0",
        "--img-size -32": "must be a positive multiple of 32",
        "missing --data": "--data",
        "--device tpu": "'tpu' is not a device",
        "invalid YAML --config": "invalid YAML at line 2",
        "--out that is a file (train)": "is a file; --out names a folder",
        "random bytes checkpoint": "r.pt",
        "foreign checkpoint": "foreign.pt",
        "a .txt given to predict": "labels.txt is not an image",
        "unknown --assigner (show)": "did you mean MaxIoUAssigner?",
        "unknown option": "unrecognized arguments: --bogus (see 'detassign val --help')",
    }
    for i, (case, words) in enumerate(expected.items()):
        folder = tmp_path / str(i)
        folder.mkdir()
        assert main(CASES[case](folder)) == 2
        assert words in capsys.readouterr().err, case


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = CASES["random bytes checkpoint"](tmp_path)
    assert main(["--debug"] + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("detassign val: error: ")
    assert main(argv + ["--debug"]) == 2  # accepted after the command too
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_is_one_line_exit_1_and_debug_shows_it(monkeypatch, capsys, tmp_path):
    def broken(args):
        return {}["missing"]

    monkeypatch.setitem(cli.COMMANDS, "iou-figure", broken)
    assert main(["iou-figure", "--out", str(tmp_path / "x.png")]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "internal error (KeyError: 'missing')" in err and "--debug" in err
    assert "Traceback" not in out + err
    assert main(["iou-figure", "--out", str(tmp_path / "x.png"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_environment_failures_are_one_line_exit_1(monkeypatch, capsys, tmp_path):
    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setitem(cli.COMMANDS, "iou-figure", disk_full)
    assert main(["iou-figure", "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err == f"detassign iou-figure: error: {tmp_path / 'x.png'}: No space left on device\n"

    def save_fails(args):
        from detassign.yolo.runs import FileWriteError

        raise FileWriteError(tmp_path / "last.pt", OSError(28, "No space left on device"))

    monkeypatch.setitem(cli.COMMANDS, "iou-figure", save_fails)
    assert main(["iou-figure", "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err.startswith(f"detassign iou-figure: error: could not write {tmp_path / 'last.pt'}")


@pytest.mark.parametrize("command", ["iou-figure", "show"])
def test_out_without_suffix_reports_the_path_written(command, tmp_path, capsys):
    argv = [command, "--out", str(tmp_path / "fig")]
    if command == "show":
        argv += ["--data", _voc(tmp_path), "--scale", "p"]
    assert main(argv) == 0
    assert (tmp_path / "fig.png").stat().st_size > 10_000 and not (tmp_path / "fig").exists()
    assert f"wrote {tmp_path / 'fig.png'}" in capsys.readouterr().out
