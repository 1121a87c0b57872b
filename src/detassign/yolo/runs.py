"""Run folders as ultralytics users know them: ``runs/train``, ``runs/train2``, ...; ``results.csv``, and the pictures.

A run folder holds::

    config.json            the TrainConfig of the run
    weights/last.pt        full checkpoint (resume); weights/best.pt: stripped (EMA weights in float16)
    results.csv            one row per epoch, columns RESULTS_COLUMNS then any extra per-epoch metrics
    results.png            losses and metrics per epoch
    PR_curve.png, F1_curve.png, confusion_matrix.png    after the final validation

:func:`next_run_dir` never hands out a folder that already holds a run (unless ``exist_ok``). Every file is
written to a temporary and moved into place; a failed write raises :class:`FileWriteError` naming the path.
Figures use matplotlib's object API (``matplotlib.figure.Figure``): no pyplot state, no display needed.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "RESULTS_COLUMNS", "RUN_FILES", "FileWriteError", "holds_run", "next_run_dir", "write_atomic", "results_csv_text",
    "write_results_csv", "read_results_csv", "plot_results", "plot_pr_curve", "plot_f1_curve",
    "plot_confusion_matrix",
]

PathLike = Union[str, Path]

RESULTS_COLUMNS = (
    "epoch", "train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP50", "metrics/mAP50-95", "lr", "epoch_time",
)
# The files a run writes in its folder (weights/ holds last.pt and best.pt).
RUN_FILES = ("config.json", "results.csv", "results.png", "PR_curve.png", "F1_curve.png", "confusion_matrix.png")
# Files whose presence means "a run lives here": a new run must not replace them.
_RUN_MARKERS = ("weights/last.pt", "weights/best.pt", "last.pt", "best.pt", "results.csv")


class FileWriteError(OSError):
    """A run file could not be written (full disk, permissions): names the path; the previous file is intact."""

    def __init__(self, path: PathLike, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror} (the previous file, if any, is unchanged)"


def holds_run(folder: PathLike) -> bool:
    """True when ``folder`` has checkpoints or a results.csv of an earlier run."""
    folder = Path(folder)
    return any((folder / marker).exists() for marker in _RUN_MARKERS)


def next_run_dir(path: PathLike, exist_ok: bool = False) -> Path:
    """``path`` itself when it holds no run yet (or ``exist_ok``), else the first free ``path2``, ``path3``, ...
    (ultralytics' numbering: ``runs/train``, ``runs/train2``). A folder is free when it holds no run."""
    path = Path(path)
    if exist_ok or not holds_run(path):
        return path
    number = 2
    while holds_run(path.with_name(f"{path.name}{number}")):
        number += 1
    return path.with_name(f"{path.name}{number}")


def write_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``<path>.tmp<pid>``, then ``os.replace`` it onto ``path``; the temporary never stays."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as err:
        raise FileWriteError(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- results.csv


def _columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """RESULTS_COLUMNS, then extra keys in the order they first appear."""
    columns = list(RESULTS_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""  # no validation that epoch, or an undefined metric
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results.csv text of ``rows`` (one dict per epoch): a header, then one line per row, empty cells for
    missing or non-finite values."""
    columns = _columns(rows)
    lines = [",".join(columns)]
    lines += [",".join(_cell(row.get(column)) for column in columns) for row in rows]
    return "\n".join(lines) + "\n"


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Rewrite results.csv from all rows (so a resumed run's file equals an uninterrupted run's)."""
    return write_atomic(path, results_csv_text(rows).encode())


def read_results_csv(path: PathLike) -> List[Dict[str, float]]:
    """Rows of a results.csv as dicts of floats (NaN for an empty cell; ``epoch`` as int)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        values = [float(v) if v else float("nan") for v in line.split(",")]
        row = dict(zip(header, values))
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- figures


def _save(fig, path: PathLike, dpi: int = 110) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_atomic(path, buffer.getvalue())


def _figure(rows: int, cols: int, size):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="tight")
    return fig, np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)


def plot_results(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """results.png: train and val box / cls / DFL losses, precision, recall, mAP50, mAP50-95 per epoch; when the
    rows carry the trainer's assignment columns (:data:`detassign.stats.EPOCH_COLUMNS`), a third row with the
    share of GTs without a positive (all and COCO-small), positives per GT and the seconds in the assigner."""
    panels = ("train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision", "metrics/recall",
              "val/box_loss", "val/cls_loss", "val/dfl_loss", "metrics/mAP50", "metrics/mAP50-95")
    assignment = any("assign/zero_pos_share" in row for row in rows)
    fig, axes = _figure(3 if assignment else 2, 5, (15, 9 if assignment else 6))
    epochs = np.array([row["epoch"] for row in rows], dtype=np.float64)
    groups = [[c] for c in panels]
    if assignment:
        groups += [["assign/zero_pos_share", "assign/zero_pos_share_small"], ["assign/pos_per_gt"], ["assign_time"]]
    for ax, columns in zip(axes, groups):
        for column in columns:
            values = np.array([np.nan if row.get(column) is None else row[column] for row in rows], dtype=np.float64)
            ok = np.isfinite(values)
            if ok.any():
                ax.plot(epochs[ok], values[ok], "o-", ms=3, lw=1.5, label=column if len(columns) > 1 else None)
        ax.set_title(columns[0] if len(columns) == 1 else "assign/zero_pos_share (all, small GTs)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(columns) > 1 and ax.lines:
            ax.legend(fontsize=7)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return _save(fig, path)


def _per_class_lines(ax, x: np.ndarray, curves: np.ndarray, class_names: Sequence[str], values: np.ndarray,
                     present: np.ndarray) -> None:
    """One thin line per class that has GT (labelled when there are at most 20), for the PR and F1 plots."""
    shown = np.flatnonzero(present)
    for c in shown:
        label = f"{class_names[c]} {values[c]:.3f}" if len(shown) <= 20 else None
        ax.plot(x, curves[c], lw=1, label=label)


def plot_pr_curve(curves: Mapping[str, Any], class_names: Sequence[str], path: PathLike) -> Path:
    """PR_curve.png from :func:`detassign.yolo.evaluate.precision_recall_curves`: COCO's interpolated precision
    against recall at IoU 0.5, per class (AP50 in the legend) and the mean over classes."""
    fig, (ax,) = _figure(1, 1, (7, 6))
    present = np.asarray(curves["num_gt"]) > 0
    recall, pr = np.asarray(curves["recall_levels"]), np.asarray(curves["pr_curve"])
    _per_class_lines(ax, recall, pr, class_names, np.asarray(curves["ap"]), present)
    if present.any():
        ax.plot(recall, pr[present].mean(0), lw=3, color="tab:blue",
                label=f"all classes {np.asarray(curves['ap'])[present].mean():.3f} mAP@0.5")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="precision-recall curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_f1_curve(curves: Mapping[str, Any], class_names: Sequence[str], path: PathLike) -> Path:
    """F1_curve.png: F1 of the detections scoring >= each confidence threshold, per class and mean."""
    fig, (ax,) = _figure(1, 1, (7, 6))
    present = np.asarray(curves["num_gt"]) > 0
    confidence, f1 = np.asarray(curves["confidence"]), np.asarray(curves["f1"])
    _per_class_lines(ax, confidence, f1, class_names, f1.max(1), present)
    if present.any():
        mean = f1[present].mean(0)
        best = int(mean.argmax())
        ax.plot(confidence, mean, lw=3, color="tab:blue",
                label=f"all classes {mean[best]:.2f} at {confidence[best]:.3f}")
    ax.set(xlabel="confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.01), title="F1-confidence curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: PathLike,
                          normalize: bool = True) -> Path:
    """confusion_matrix.png of :func:`detassign.yolo.evaluate.confusion_matrix` ([C + 1, C + 1], rows predicted,
    columns true, last index background); ``normalize`` divides each column by its total."""
    matrix = np.asarray(matrix, dtype=np.float64)
    shown = matrix / np.maximum(matrix.sum(0, keepdims=True), 1) if normalize else matrix
    names = list(class_names) + ["background"]
    side = min(4 + 0.5 * len(names), 20)
    fig, (ax,) = _figure(1, 1, (side, side * 0.85))
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if len(names) <= 30:
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=8)
        ax.set_yticks(ticks, names, fontsize=8)
        for (i, j), value in np.ndenumerate(shown):
            if matrix[i, j]:
                ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                        fontsize=7, color="white" if value > 0.5 * max(shown.max(), 1e-12) else "black")
    ax.set(xlabel="true", ylabel="predicted",
           title="confusion matrix" + (" (normalised per true class)" if normalize else ""))
    return _save(fig, path)
