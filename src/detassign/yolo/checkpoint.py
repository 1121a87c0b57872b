"""Checkpoints are data, never code: what :func:`detassign.yolo.train.train` writes and how every command reads it.

A checkpoint is a dict saved with ``torch.save`` that holds only tensors and plain containers (dict, list,
tuple, str, int, float, bool, None), so it is read with ``torch.load(weights_only=True)``: a file that carries
any other pickled object (a class, a function, a numpy array, a payload whose ``__reduce__`` runs a command)
is refused *before* anything in it runs. Random-number states, the loss history and the config are stored as
tensors and plain values for that reason.

Two kinds, told apart by ``ckpt["kind"]``:

* ``"full"`` (``weights/last.pt``): model, EMA, optimiser, GradScaler, epoch and position in it, history,
  results rows, RNG states, config: everything ``resume`` needs.
* ``"weights"`` (``weights/best.pt``, stripped): the EMA weights in float16, the architecture, class names,
  config and the metrics of that epoch (about 5 MB for YOLO11n instead of 42 MB).

Every way a file can be wrong (missing keys, empty, truncated, random bytes, JSON, a bare ``state_dict``,
another library's checkpoint, pickled code) raises :class:`CheckpointError` with one line naming the file and
what is wrong. Writes go to ``<name>.tmp<pid>`` and are ``os.replace``d into place; a failed write (a full
disk) raises :class:`~detassign.yolo.runs.FileWriteError` naming the path and leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .runs import FileWriteError

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "FileWriteError", "load_checkpoint",
    "save_checkpoint_atomic", "remove_stale_temporaries", "strip_checkpoint", "model_from_checkpoint",
    "capture_rng_state", "restore_rng_state", "plain", "checkpoint_header",
]

CHECKPOINT_FORMAT = "detassign.yolo"
CHECKPOINT_VERSION = 2  # 2: data-only checkpoints (the unversioned ones before pickled numpy RNG states)

_COMMON_KEYS = ("arch", "class_names", "model", "config", "metrics")
_FULL_KEYS = _COMMON_KEYS + ("ema", "optimizer", "scaler", "epoch", "skip", "updates", "best_fitness", "best_epoch",
                             "history", "results", "partial", "rng")
_TEMPORARY = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$")

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A file that is not a readable detassign checkpoint. ``str(err)`` is one line: ``<path>: <what is wrong>``."""

    def __init__(self, path: PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


# --------------------------------------------------------------------------- plain data


def plain(obj: Any) -> Any:
    """A JSON-like copy of ``obj`` (dicts, lists, str, numbers, bool, None; paths and other objects as str), so
    that it loads with ``weights_only=True``. NaN and infinities are kept."""
    return json.loads(json.dumps(obj, default=str))


def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain numbers."""
    version, python_state, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when CUDA is available)."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def strip_checkpoint(full: Dict[str, Any]) -> Dict[str, Any]:
    """The ``"weights"`` checkpoint of a ``"full"`` one: EMA weights (the raw model's without EMA) in float16,
    architecture, class names, config, metrics, epoch. Loads for inference and ``weights=``, not for resume."""
    weights = full["ema"]["model"] if full.get("ema") else full["model"]
    stripped = {key: full[key] for key in ("arch", "class_names", "config", "metrics", "epoch", "best_fitness",
                                           "date") if key in full}
    stripped.update(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, kind="weights",
                    model={k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in weights.items()})
    return stripped


# --------------------------------------------------------------------------- writing


class _RecordingWriter:
    """File wrapper that keeps the ``OSError`` of a failed write: ``torch.save`` turns it into a RuntimeError."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint_atomic(obj: Dict[str, Any], path: PathLike) -> Path:
    """``torch.save`` to ``<path>.tmp<pid>``, fsync, then ``os.replace``: readers see the old file or the new one,
    never half of one. The temporary is removed whatever happens (an error, Ctrl-C); a write that fails with an
    ``OSError`` (ENOSPC ...) raises :class:`~detassign.yolo.runs.FileWriteError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            writer = _RecordingWriter(file)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise FileWriteError(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing anything yet when it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or the platform cannot tell: leave it
        return True
    return True


def remove_stale_temporaries(folder: PathLike, names: Optional[Collection[str]] = None) -> List[Path]:
    """Delete ``<name>.tmp<pid>`` files in ``folder`` left by a process that was killed mid-save (and no longer
    runs), for ``name`` in ``names`` (default: any ``*.pt``); returns what was removed. Files of any other naming
    are never touched."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        ours = match and (match["name"] in names if names is not None else match["name"].endswith(".pt"))
        if ours and entry.is_file() and not _process_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


# --------------------------------------------------------------------------- reading


def _why_unreadable(head: bytes, size: int, err: Exception) -> str:
    """One phrase for a file ``torch.load(weights_only=True)`` could not read (``head``: its first bytes)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return (f"refused without running it: it holds pickled Python objects ({found.group(1)}), not only "
                f"tensors and plain data, and loading those could run code")
    if head.startswith(b"PK\x03\x04"):
        return f"truncated or corrupt: a PyTorch zip archive of {size} bytes that cannot be read to the end"
    if head[:1] == b"\x80":
        return "a raw Python pickle, not a PyTorch checkpoint; refused without running it (pickles can run code)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON or text file, not a PyTorch checkpoint"
    return f"not a PyTorch checkpoint ({size} bytes of unrecognised content)"


def _describe_foreign(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"not a detassign checkpoint: the file holds a {type(obj).__name__}, not a dict"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return (f"not a detassign checkpoint: a bare state_dict of {len(obj)} tensors, without the architecture "
                f"and class names (write checkpoints with detassign train)")
    keys = sorted(str(k) for k in obj)
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return (f"not a detassign checkpoint: a dict with keys [{shown}] and no 'format': {CHECKPOINT_FORMAT!r} entry "
            f"(checkpoints of other libraries, e.g. ultralytics, cannot be read)")


def _check_structure(path: Path, ckpt: Any) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, _describe_foreign(ckpt))
    version = ckpt.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(path, f"written by a newer detassign (format version {version!r}; this one reads "
                                    f"up to {CHECKPOINT_VERSION})")
    kind = ckpt.get("kind")
    required = {"full": _FULL_KEYS, "weights": _COMMON_KEYS}.get(kind)
    if required is None:
        raise CheckpointError(path, f"unknown checkpoint kind {kind!r} (expected 'full' or 'weights')")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"incomplete {kind} checkpoint: missing {', '.join(missing)}")
    arch, names = ckpt["arch"], ckpt["class_names"]
    if not (isinstance(arch, dict) and isinstance(arch.get("scale"), str) and isinstance(arch.get("num_classes"), int)
            and arch["num_classes"] >= 1 and isinstance(arch.get("kwargs", {}), dict)):
        raise CheckpointError(path, f"invalid 'arch' entry {arch!r} (expected scale, num_classes >= 1, kwargs)")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == arch["num_classes"]):
        raise CheckpointError(path, f"'class_names' must be {arch['num_classes']} strings, got {names!r:.120}")
    if kind == "full" and not (isinstance(ckpt["ema"], dict) and isinstance(ckpt["ema"].get("updates"), int)):
        raise CheckpointError(path, "its 'ema' entry must be a dict with 'model' and 'updates'")
    tensors = [ckpt["model"]] + ([ckpt["ema"].get("model")] if kind == "full" else [])
    if not all(isinstance(t, dict) and all(isinstance(v, torch.Tensor) for v in t.values()) for t in tensors):
        raise CheckpointError(path, "its 'model' / 'ema' weights are not dicts of tensors")
    if kind == "full":
        for key in ("epoch", "skip", "updates"):
            if not isinstance(ckpt[key], int) or ckpt[key] < 0:
                raise CheckpointError(path, f"'{key}' must be an int >= 0, got {ckpt[key]!r}")


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`detassign.yolo.train.train` as data only (``weights_only=True``) and
    check its structure. Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for any
    file that is not a readable detassign checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file (pass e.g. <run>/weights/best.pt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as file:
        head = file.read(64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing a raw pickle
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # every reader error of a bad file (zip, pickle, EOF, ...) becomes one line
        raise CheckpointError(path, _why_unreadable(head, size, err)) from err
    _check_structure(path, ckpt)
    return ckpt


def model_from_checkpoint(path: PathLike, map_location: Any = "cpu", use_ema: bool = True
                          ) -> Tuple[nn.Module, List[str], Dict[str, Any]]:
    """Rebuild the model of a checkpoint -> (YOLO11 in eval mode, float32, class names, checkpoint dict).

    ``use_ema``: the EMA weights of a full checkpoint (a stripped one holds only those).
    """
    from .model import YOLO11

    ckpt = load_checkpoint(path, map_location)
    arch = ckpt["arch"]
    try:
        model = YOLO11(scale=arch["scale"], num_classes=arch["num_classes"], **arch.get("kwargs", {}))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(path, f"its architecture {arch} cannot be built: {err}") from err
    state = ckpt["ema"]["model"] if use_ema and ckpt.get("ema") else ckpt["model"]
    try:
        model.load_state_dict(state)  # float16 weights of a stripped file are cast to the model's float32
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(path, f"its weights do not fit YOLO11-{arch['scale']} with {arch['num_classes']} "
                                    f"class(es): {detail[:200]}") from err
    return model.float().eval(), list(ckpt["class_names"]), ckpt


def checkpoint_header(kind: str, **entries: Any) -> Dict[str, Any]:
    """The format marker, version, kind and date every checkpoint starts with, plus ``entries``."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **entries}
