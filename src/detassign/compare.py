"""``detassign compare``: which assigner trains best on *my* data, and what each one does to my GTs.

Two modes, both writing ``compare.csv``, ``compare.md`` and ``compare.png`` into the output folder:

* **training** (:func:`compare_training`): the same model, data, seed(s) and budget for every assigner; each
  run is an ordinary :func:`detassign.yolo.train.train` run (its folder under ``out/runs/``). Per run: held-out
  mAP50, mAP50-95, AP small / medium (COCO, the final EMA model, not the best epoch: the validation set is
  the test set here), train time, assignment milliseconds per step, and over all training steps the share
  of GTs without a positive (all and COCO-small) and positives per GT (results.csv's ``assign/*`` columns).
  With several seeds the table gives mean ± sample std.
* **static** (:func:`compare_static`): nothing is trained; one model's predictions on every image of a
  dataset are given to every assigner (exactly as the loss would give them), and the statistics are
  tabulated; ``compare.png`` puts the assigners side by side on one image.

Assigners are named as on the command line: a preset (``tal``, ``atss``, ``simota``, ``dsl``) or a registry
name, with arguments after a colon: ``atss:topk=13``, ``MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4``
(:func:`parse_assigners`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["AssignerSpec", "parse_assigners", "parse_key_values", "COMPARE_RECIPE", "TRAINING_COLUMNS",
           "STATIC_COLUMNS", "CompareReport", "compare_training", "compare_static", "summarize", "markdown_table"]

# The budget of a comparison on the NEON tree crowns: the demo's recipe (detassign.demo.DEMO_RECIPE: 60 epochs,
# 360 optimiser steps, tuned for TAL) per assigner, validated once at the end instead of every 10 epochs. Four
# assigners take about 10 minutes on 2 CPU cores.
COMPARE_RECIPE = dict(
    scale="p", img_size=256, crop=256, tile=416, tile_overlap=64, val_img_size=None, epochs=60, batch=8,
    nominal_batch=8, drop_last=True, optimizer="AdamW", lr0=0.006, warmup_epochs=1.0, min_warmup_iters=10,
    ema_tau=50.0, seed=0,
)
_NEON_ONLY = ("crop", "tile", "tile_overlap", "val_img_size", "img_size")  # NEON-specific keys of the recipe

# One row per (assigner, seed) run; the table reports these.
TRAINING_COLUMNS = ("assigner", "seed", "mAP50", "mAP50-95", "AP_small", "AP_medium", "train_s",
                    "assign_ms_per_step", "zero_pos_share", "zero_pos_share_small", "pos_per_gt")
STATIC_COLUMNS = ("assigner", "images", "gts", "positives", "pos_per_gt", "zero_pos_gts", "zero_pos_share",
                  "small_gts", "zero_pos_share_small", "ignored_priors", "mean_overlap", "soft_target_per_pos",
                  "assign_ms_per_image")


# --------------------------------------------------------------------------- naming assigners


def _split_top_level(text: str) -> List[str]:
    """Split at commas that are not inside brackets, braces, parentheses or quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


def _value(text: str) -> Any:
    """A YAML scalar or collection: ``0.5`` -> float, ``true`` -> bool, ``[0.4, 0.5]`` -> list, ``none`` -> None;
    anything YAML cannot read stays a string."""
    import yaml

    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_key_values(text: str) -> Dict[str, Any]:
    """``"pos_iou_thr=0.5,neg_iou_thr=0.4"`` -> ``{"pos_iou_thr": 0.5, "neg_iou_thr": 0.4}``. Values are YAML
    (numbers, booleans, ``none``, ``[lists]``, ``{mappings}``); commas inside brackets do not split."""
    out: Dict[str, Any] = {}
    for part in _split_top_level(text or ""):
        match = _KEY.fullmatch(part)
        if match is None:
            raise ValueError(f"assigner arguments must be key=value pairs separated by commas, got {part!r} in "
                             f"{text!r}")
        out[match.group(1)] = _value(match.group(2))
    return out


@dataclass
class AssignerSpec:
    """One assigner of a comparison: ``label`` as the user wrote it (``atss:topk=13``), ``config`` the
    dict for :func:`detassign.build_assigner` (presets resolved, arguments merged)."""

    label: str
    config: Dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config["type"]).split(".")[-1]

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace(":", "_").replace("=", "-")).strip("_") or "a"


def parse_assigners(text: Union[str, Sequence[str]], extra_args: Sequence[str] = ()) -> List[AssignerSpec]:
    """Assigners named on a command line.

    ``text``: comma-separated names, each a preset (``tal``, ``atss``, ``simota``, ``dsl``; see
    :data:`detassign.yolo.train.ASSIGNER_PRESETS`) or a registry name, optionally followed by
    ``:key=value`` arguments; a comma-separated ``key=value`` continues the preceding assigner's arguments:
    ``"tal,MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4,atss"`` is three assigners. ``extra_args``
    (``--assigner-args``): one string of ``key=value`` pairs applied to every assigner, or one per assigner,
    in order. Arguments override the preset's values.
    """
    from .yolo.train import resolve_assigner

    tokens = _split_top_level(text) if isinstance(text, str) else [t for s in text for t in _split_top_level(s)]
    groups: List[List[str]] = []
    for token in tokens:
        if _KEY.fullmatch(token) and ":" not in token.split("=", 1)[0]:
            if not groups:
                raise ValueError(f"assigner arguments {token!r} come before any assigner name in {text!r}")
            groups[-1].append(token)
        else:
            groups.append([token])
    if not groups:
        raise ValueError(f"no assigner named in {text!r}; e.g. tal,atss,simota,dsl")
    extra = list(extra_args or ())
    if extra and len(extra) not in (1, len(groups)):
        raise ValueError(f"--assigner-args was given {len(extra)} times for {len(groups)} assigners: give it once "
                         f"(for every assigner) or once per assigner")
    specs = []
    for i, group in enumerate(groups):
        name, _, first = group[0].partition(":")
        if not name.strip():
            raise ValueError(f"assigner name missing before ':' in {group[0]!r}")
        args = parse_key_values(",".join(([first] if first else []) + group[1:]))
        if extra:
            args.update(parse_key_values(extra[0] if len(extra) == 1 else extra[i]))
        config = resolve_assigner(name.strip())
        config.update(args)
        label = ",".join(group)
        if extra:
            label += ("," if ":" in group[0] else ":") + (extra[0] if len(extra) == 1 else extra[i])
        specs.append(AssignerSpec(label=label, config=config))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"an assigner is named twice in {text!r}: {labels}")
    return specs


# --------------------------------------------------------------------------- tables and files


def _mean_std(values: Sequence[float]):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def summarize(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per assigner (in first-seen order): ``column`` mean and ``column_std`` (sample std over the
    seeds; NaN with one seed) of every numeric column, and ``runs``."""
    order: List[str] = []
    for r in rows:
        if r["assigner"] not in order:
            order.append(r["assigner"])
    out = []
    for name in order:
        mine = [r for r in rows if r["assigner"] == name]
        row: Dict[str, Any] = {"assigner": name, "runs": len(mine)}
        for c in columns:
            if c in ("assigner", "seed"):
                continue
            row[c], row[f"{c}_std"] = _mean_std([r.get(c, float("nan")) for r in mine])
        out.append(row)
    return out


_FORMATS = {"mAP50": (".3f", 1), "mAP50-95": (".3f", 1), "AP_small": (".3f", 1), "AP_medium": (".3f", 1),
            "train_s": (".0f", 1), "assign_ms_per_step": (".1f", 1), "zero_pos_share": (".1f", 100),
            "zero_pos_share_small": (".1f", 100), "pos_per_gt": (".2f", 1), "pos_per_gt_static": (".2f", 1),
            "zero_pos_gts": ("d", 1), "gts": ("d", 1), "positives": ("d", 1), "small_gts": ("d", 1),
            "images": ("d", 1), "ignored_priors": ("d", 1), "mean_overlap": (".3f", 1),
            "soft_target_per_pos": (".3f", 1), "assign_ms_per_image": (".1f", 1)}
_HEADERS = {"mAP50": "mAP50", "mAP50-95": "mAP50-95", "AP_small": "AP small", "AP_medium": "AP medium",
            "train_s": "train s", "assign_ms_per_step": "assign ms / step", "zero_pos_share": "GTs w/o positive %",
            "zero_pos_share_small": "small GTs w/o positive %", "pos_per_gt": "positives / GT", "gts": "GTs",
            "positives": "positives", "zero_pos_gts": "GTs w/o positive", "small_gts": "small GTs",
            "images": "images", "ignored_priors": "ignored priors", "mean_overlap": "mean IoU of positives",
            "soft_target_per_pos": "soft target / positive", "assign_ms_per_image": "assign ms / image"}


def _cell(value, fmt: str, scale: float, std=None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if fmt == "d":
        text = f"{int(round(value))}"
    else:
        text = f"{value * scale:{fmt}}"
    if std is not None and isinstance(std, float) and math.isfinite(std):
        text += f" ± {std * scale:{fmt if fmt != 'd' else '.1f'}}"
    return text


def markdown_table(summary: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of :func:`summarize` rows (mean ± std where there are several runs)."""
    shown = [c for c in columns if c not in ("assigner", "seed")]
    lines = ["| assigner | " + " | ".join(_HEADERS.get(c, c) for c in shown) + " |",
             "|---|" + "---:|" * len(shown)]
    for row in summary:
        cells = [_cell(row.get(c), *_FORMATS.get(c, (".4g", 1)), std=row.get(f"{c}_std")) for c in shown]
        lines.append(f"| `{row['assigner']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if isinstance(r.get(c), float) and not math.isfinite(r[c]) else
                             (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, ""))) for c in columns})
    path.write_text(buffer.getvalue())
    return path


@dataclass
class CompareReport:
    """What a comparison produced: ``rows`` (one per run, :data:`TRAINING_COLUMNS` or :data:`STATIC_COLUMNS`),
    ``summary`` (one per assigner, mean and std), the Markdown ``table``, and the files written."""

    rows: List[Dict[str, Any]]
    summary: List[Dict[str, Any]]
    table: str
    files: List[Path] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- training comparison


def _mean_column(results: Sequence[Mapping[str, Any]], column: str) -> float:
    values = [r.get(column, float("nan")) for r in results]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(values)) if values else float("nan")


def _run_row(spec: AssignerSpec, seed: int, result) -> Dict[str, Any]:
    """The comparison row of one finished training run (``TrainResult``)."""
    # COCO's -1 means "no GT of that size in the validation set": no value, not a score
    nan = float("nan")
    m = {k: (v if not isinstance(v, float) or v >= 0 else nan) for k, v in result.metrics.items()}
    steps = len(result.history.get("step_loss", [])) or 1  # loss evaluations = assigner calls
    assign_seconds = sum(float(r.get("assign_time", 0.0)) for r in result.results
                         if r.get("assign_time") is not None and math.isfinite(float(r.get("assign_time"))))
    train_seconds = sum(float(r.get("epoch_time", 0.0)) for r in result.results)
    return {
        "assigner": spec.label, "seed": seed, "mAP50": m.get("map50", nan), "mAP50-95": m.get("map", nan),
        "AP_small": m.get("map_small", nan), "AP_medium": m.get("map_medium", nan), "train_s": train_seconds,
        "assign_ms_per_step": 1000.0 * assign_seconds / steps if assign_seconds else nan,
        # mean over epochs of each epoch's share: every epoch sees the same images, so it weighs them equally
        "zero_pos_share": _mean_column(result.results, "assign/zero_pos_share"),
        "zero_pos_share_small": _mean_column(result.results, "assign/zero_pos_share_small"),
        "pos_per_gt": _mean_column(result.results, "assign/pos_per_gt"),
        "run_dir": result.run_dir, "best": result.best, "epochs": result.epochs_run, "steps": result.steps,
    }


def _training_config(config, spec: AssignerSpec, seed: int, out: Path, progress: bool):
    from .yolo.train import TrainConfig

    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values.update(assigner=dict(spec.config), seed=int(seed), out_dir=str(out / "runs" / f"{spec.slug}-seed{seed}"),
                  exist_ok=True, resume=False, plots=False, progress=progress, verbose=False,
                  val_interval=values.get("epochs") or 1)
    return TrainConfig(**values)


def default_training_config(data: Optional[str] = None, **overrides):
    """The :data:`COMPARE_RECIPE` as a ``TrainConfig`` (for other data than NEON without its NEON-only
    settings: crops, tiles, native-size validation), with ``overrides`` applied."""
    from .yolo.train import TrainConfig

    recipe = dict(COMPARE_RECIPE)
    if data is not None and str(data).lower() != "neon":
        recipe = {k: v for k, v in recipe.items() if k not in _NEON_ONLY}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "batch" in overrides and "nominal_batch" not in overrides:
        overrides["nominal_batch"] = overrides["batch"]  # the recipe steps once per batch
    recipe.update(overrides)
    if data is not None and str(data).lower() != "neon":
        recipe["data"] = data
    return TrainConfig(**recipe)


def compare_training(assigners: Union[str, Sequence[Union[str, AssignerSpec]]], config=None,
                     seeds: Union[int, Sequence[int]] = 1, out_dir: Union[str, Path] = "runs/compare",
                     progress: bool = False, log=print) -> CompareReport:
    """Train one model per assigner and seed with everything else equal, then tabulate.

    assigners: a command-line string (:func:`parse_assigners`) or a list of names / :class:`AssignerSpec`.
    config: the ``TrainConfig`` every run starts from (default :func:`default_training_config`: NEON,
        :data:`COMPARE_RECIPE`); each run replaces its ``assigner``, ``seed`` and ``out_dir``
        (``out_dir/runs/<assigner>-seed<k>``), validates once after the last epoch and draws no per-run plots.
    seeds: a count N (seeds ``config.seed .. config.seed + N - 1``) or the seeds themselves.

    Writes ``compare.csv`` (one row per run), ``compare.md`` (mean ± std per assigner) and ``compare.png``
    into ``out_dir``; returns a :class:`CompareReport`.
    """
    from .yolo.train import train

    specs = _specs(assigners)
    config = default_training_config() if config is None else config
    seed_list = list(range(config.seed, config.seed + int(seeds))) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError(f"seeds must be a count >= 1 or a non-empty list, got {seeds!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, histories = [], {}
    for seed in seed_list:
        for spec in specs:
            started = time.time()
            result = train(_training_config(config, spec, seed, out, progress))
            row = _run_row(spec, seed, result)
            rows.append(row)
            histories[(spec.label, seed)] = result.results
            if log:
                log(f"{spec.label} seed {seed}: mAP50 {row['mAP50']:.3f}, mAP50-95 {row['mAP50-95']:.3f}, "
                    f"GTs without a positive {100 * row['zero_pos_share']:.1f} % (small "
                    f"{100 * row['zero_pos_share_small']:.1f} %), {row['pos_per_gt']:.2f} positives per GT, "
                    f"{time.time() - started:.0f} s")
    summary = summarize(rows, TRAINING_COLUMNS)
    table = markdown_table(summary, TRAINING_COLUMNS)
    data = config.data or (config.train_set.source or "in-memory set" if config.train_set is not None
                           else "NEON tree crowns")
    header = (f"{len(specs)} assigner(s) x {len(seed_list)} seed(s) {seed_list}; YOLO11-{config.scale}, "
              f"{config.epochs} epochs, batch {config.batch}, img {config.img_size}, data {data}; held-out "
              f"metrics of the final EMA model")
    files = [_write_csv(rows, list(TRAINING_COLUMNS) + ["run_dir"], out / "compare.csv")]
    (out / "compare.md").write_text(f"{header}\n\n{table}\n")
    files.append(out / "compare.md")
    files.append(plot_training_comparison(summary, histories, out / "compare.png", header))
    (out / "compare.json").write_text(json.dumps({"header": header, "rows": rows, "summary": summary},
                                                 indent=1, default=str))
    files.append(out / "compare.json")
    return CompareReport(rows, summary, table, files, {"header": header, "seeds": seed_list})


def _specs(assigners) -> List[AssignerSpec]:
    if isinstance(assigners, str):
        return parse_assigners(assigners)
    out = []
    for a in assigners:
        out.extend([a] if isinstance(a, AssignerSpec) else parse_assigners(str(a)))
    if not out:
        raise ValueError("assigners must name at least one assigner, got none")
    return out


def _bars(ax, summary, columns, labels, scale=1.0, title=""):
    names = [s["assigner"] for s in summary]
    width = 0.8 / len(columns)
    x = np.arange(len(names))
    for k, (column, label) in enumerate(zip(columns, labels)):
        means = np.array([s.get(column, np.nan) for s in summary], dtype=np.float64) * scale
        stds = np.array([s.get(f"{column}_std", np.nan) for s in summary], dtype=np.float64) * scale
        spread = np.where(np.isfinite(stds), stds, 0) if np.isfinite(stds).any() else None  # none with one seed
        ax.bar(x + (k - (len(columns) - 1) / 2) * width, np.nan_to_num(means), width, yerr=spread, capsize=3,
               label=label, color=f"C{k}")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(columns) > 1:
        ax.legend(fontsize=8)


def plot_training_comparison(summary, histories, path: Path, header: str = "") -> Path:
    """compare.png: held-out mAP, AP by size, GTs without a positive, positives per GT, time; and the share of
    GTs without a positive per epoch (does it fall as the model learns?)."""
    from .viz import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    axes = axes.reshape(-1)
    _bars(axes[0], summary, ["mAP50", "mAP50-95"], ["mAP50", "mAP50-95"], title="held-out mAP (final EMA model)")
    _bars(axes[1], summary, ["AP_small", "AP_medium"], ["AP small", "AP medium"], title="held-out AP by COCO size")
    _bars(axes[2], summary, ["zero_pos_share", "zero_pos_share_small"], ["all GTs", "small GTs"], scale=100,
          title="GTs without a positive, % (training)")
    _bars(axes[3], summary, ["pos_per_gt"], ["positives per GT"], title="positives per GT (training)")
    _bars(axes[4], summary, ["train_s"], ["train s"], title="train time, s (label: assigner ms per step)")
    for k, s in enumerate(summary):
        ms = s.get("assign_ms_per_step", float("nan"))
        if math.isfinite(ms):
            axes[4].annotate(f"{ms:.1f} ms", (k, np.nan_to_num(s.get("train_s", 0.0))), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points")
    for ax in axes[:5]:
        ax.set_ylim(bottom=0)
    ax = axes[5]
    for k, name in enumerate(dict.fromkeys(label for label, _ in histories)):
        for j, ((label, seed), results) in enumerate((key, r) for key, r in histories.items() if key[0] == name):
            epochs = [r["epoch"] for r in results]
            share = [100 * r.get("assign/zero_pos_share_small", np.nan) for r in results]
            ax.plot(epochs, share, "-", color=f"C{k}", lw=1.2, alpha=0.9, label=name if j == 0 else None)
    ax.set_title("small GTs without a positive, % per epoch", fontsize=10)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    if header:
        fig.suptitle(header, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- static comparison


def _static_row(spec: AssignerSpec, stats, seconds: float, images: int, strength: float) -> Dict[str, Any]:
    small = stats.by_size["small"]
    overlap = stats.overlap
    return {
        "assigner": spec.label, "images": images, "gts": stats.num_gts, "positives": stats.num_positives,
        "pos_per_gt": stats.mean_positives_per_gt, "zero_pos_gts": stats.zero_positive_gts,
        "zero_pos_share": stats.zero_positive_share, "small_gts": small["gts"],
        "zero_pos_share_small": small["zero_positive_gts"] / small["gts"] if small["gts"] else float("nan"),
        "ignored_priors": stats.ignored_priors,
        "mean_overlap": overlap["mean"] if overlap is not None else float("nan"),
        "soft_target_per_pos": strength / stats.num_positives if stats.num_positives else float("nan"),
        "assign_ms_per_image": 1000.0 * seconds / max(images, 1),
    }


def compare_static(assigners: Union[str, Sequence[Union[str, AssignerSpec]]], weights: Union[str, Path],
                   data=None, out_dir: Union[str, Path] = "runs/compare", img_size: Optional[int] = None,
                   picture_index: Optional[int] = None, device: str = "cpu") -> CompareReport:
    """Run every assigner on the same predictions: the model of checkpoint ``weights`` on every image of
    ``data`` (a :class:`~detassign.data.DetectionSet`; default the NEON training tiles, the images
    assignment happens on), each image at ``img_size`` (default: native, padded to 32).

    Each assigner is fed as the YOLO loss feeds it (:func:`detassign.viz.assign_on_grid`); per assigner the
    :class:`~detassign.stats.AssignmentStats` of all images are combined. Writes ``compare.csv``,
    ``compare.md``, ``compare.json`` (the full statistics, per size and level) and ``compare.png`` (the
    assigners side by side on image ``picture_index``, default :func:`default_image_index`).
    """
    from .data import EvalTransform
    from .data.neon import load_neon
    from .data.readers import load_image
    from .stats import combine_stats
    from .viz import assign_on_grid, assignment_figure, check_on_grid, grid_inputs
    from .yolo.train import model_from_checkpoint

    specs = _specs(assigners)
    for spec in specs:
        check_on_grid(spec.config)
    model, class_names, _ = model_from_checkpoint(weights)
    model.to(device).eval()
    data = load_neon("train") if data is None else data
    if len(data) == 0:
        raise ValueError("compare --static needs a dataset with at least one image, got an empty one")
    strides = [int(s) for s in model.stride.tolist()]
    transform = EvalTransform(img_size)
    parts: Dict[str, list] = {s.label: [] for s in specs}
    seconds = {s.label: 0.0 for s in specs}
    strength = {s.label: 0.0 for s in specs}
    picture_index = default_image_index(data) if picture_index is None else int(picture_index)
    picture = None
    for i, rec in enumerate(data.records):
        net, boxes, labels, _ = transform(load_image(rec.image), rec.boxes, rec.labels)
        x = torch.from_numpy(net.transpose(2, 0, 1).copy())[None].float().div(255).to(device)
        g = grid_inputs(torch.from_numpy(boxes), torch.from_numpy(labels), net.shape[:2], len(class_names), model, x,
                        strides)
        drawn = []
        for spec in specs:
            started = time.perf_counter()
            a = assign_on_grid(dict(spec.config), g)
            seconds[spec.label] += time.perf_counter() - started
            parts[spec.label].append(a["stats"])
            strength[spec.label] += float(a["strength"].sum())
            a["name"] = spec.label
            drawn.append(a)
        if i == picture_index:
            picture = (net, boxes, drawn, rec.name)
    rows = []
    for spec in specs:
        stats = combine_stats(parts[spec.label])
        rows.append(_static_row(spec, stats, seconds[spec.label], len(data), strength[spec.label]))
        parts[spec.label] = stats
    summary = summarize(rows, STATIC_COLUMNS)
    table = markdown_table(summary, STATIC_COLUMNS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"{len(specs)} assigner(s) on the predictions of {weights} over {len(data)} image(s) of "
              f"{data.source or 'the dataset'} (nothing trained)")
    files = [_write_csv(rows, STATIC_COLUMNS, out / "compare.csv")]
    (out / "compare.md").write_text(f"{header}\n\n{table}\n")
    files.append(out / "compare.md")
    full = {s.label: parts[s.label].to_dict() for s in specs}
    (out / "compare.json").write_text(json.dumps({"header": header, "rows": rows, "stats": full}, indent=1,
                                                 default=str))
    files.append(out / "compare.json")
    if picture is not None:
        net, boxes, drawn, name = picture
        files.append(assignment_figure(net, boxes, drawn, out / "compare.png",
                                       title=f"the same predictions ({Path(str(weights)).name}) given to each "
                                             f"assigner, image {picture_index} ({name})"))
    return CompareReport(rows, summary, table, files, {"header": header, "stats": parts})


def default_image_index(data) -> int:
    """The image a picture shows by default: the first whose GT count is closest to the median count of the
    images that have GTs (a typical busy image, never an empty one). 0 when no image has a GT."""
    counts = np.array([len(r.boxes) for r in data.records])
    present = counts[counts > 0]
    if len(present) == 0:
        return 0
    target = np.median(present)
    distance = np.where(counts > 0, np.abs(counts - target), np.inf)
    return int(np.argmin(distance))


# Arguments that make an assigner which needs some (no default) run on YOLO grid priors: what the error for
# a bare name suggests, and what `detassign show --assigner NAME` uses when the name is given alone.
EXAMPLE_ARGUMENTS: Dict[str, str] = {
    "MaxIoUAssigner": "pos_iou_thr=0.5,neg_iou_thr=0.4",
    "BatchMaxIoUAssigner": "pos_iou_thr=0.5,neg_iou_thr=0.4",
    "AscendMaxIoUAssigner": "pos_iou_thr=0.5,neg_iou_thr=0.4",
    "ApproxMaxIoUAssigner": "pos_iou_thr=0.5,neg_iou_thr=0.4",
    "GridAssigner": "pos_iou_thr=0.5,neg_iou_thr=0.4",
    "CenterRegionAssigner": "pos_scale=0.2,neg_scale=0.5",
    "TopkHungarianAssigner": "topk=4",
    "HungarianAssigner": "match_costs=[{type: FocalLossCost, weight: 2.0}, {type: IoUCost, iou_mode: giou, "
                         "weight: 2.0}]",
    "OneToManyHungarianAssigner": "match_costs=[{type: FocalLossCost, weight: 2.0}, {type: IoUCost, iou_mode: "
                                  "giou, weight: 2.0}]",
}


def missing_arguments(config: Mapping[str, Any]) -> List[str]:
    """Constructor arguments without a default that ``config`` (for :func:`detassign.build_assigner`) lacks."""
    import importlib
    import inspect

    from .registry import ASSIGNERS

    name = str(config.get("type", "")).split(".")[-1]
    if name not in ASSIGNERS:
        return []
    module, attr = ASSIGNERS[name].split(":")  # import this one assigner's module only
    cls = getattr(importlib.import_module(f"detassign.assigners.{module}"), attr)
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in params.items()
            if n != "self" and p.kind in kinds and p.default is inspect.Parameter.empty and n not in config]
