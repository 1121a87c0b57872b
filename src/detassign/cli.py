"""Command line: ``detassign train | val | predict | show | iou-figure | compare | demo`` (also
``python -m detassign``)."""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "translate_key_values", "UsageError"]

ASSIGNER_HELP = ("label assigner: TaskAlignedAssigner (default; alias tal), ATSSAssigner (atss), SimOTAAssigner "
                 "(simota), DynamicSoftLabelAssigner (dsl), or any registered name (detassign.available_assigners()); "
                 "arguments after a colon: atss:topk=13")


class UsageError(Exception):
    """A mistake in the command line or in a file it names: ``main`` prints it as one line, exit status 2."""

    def __init__(self, message: str, prog: Optional[str] = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``error`` raises :class:`UsageError` for ``main`` to print, instead
    of printing the usage block and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')", prog=self.prog)


def _int_at_least(lowest: int):
    """argparse type: an integer >= ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
        return value
    return parse


def _float_in(low: float, high: float = math.inf, low_open: bool = False):
    """argparse type: a finite float in [low, high] (``(low, high]`` with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
                f"{'> ' if low_open else '>= '}{low:g}"
            raise argparse.ArgumentTypeError(f"must be {'in ' if math.isfinite(high) else ''}{span}, got {text}")
        return value
    return parse


_positive = _float_in(0.0, low_open=True)
_unit = _float_in(0.0, 1.0)
MAX_STRIDE = 32  # YOLO11's coarsest level: input sides must be multiples of it


def _img_size(text: str) -> int:
    """argparse type: a network input side, a positive multiple of 32."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MAX_STRIDE or value % MAX_STRIDE:
        near = max(MAX_STRIDE, round(value / MAX_STRIDE) * MAX_STRIDE)
        raise argparse.ArgumentTypeError(f"must be a positive multiple of {MAX_STRIDE} (YOLO11's largest stride), "
                                         f"got {value}; e.g. {near}")
    return value


def _size(text: str):
    """A side (:func:`_img_size`), 'native' (None: native resolution padded to a multiple of 32) or 'auto'."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("native", "none", "0"):
        return None
    return _img_size(text)


# ultralytics' names (key=value form) that differ from our option names: key -> our option's dest
ULTRALYTICS_KEYS = {"imgsz": "img_size", "nbs": "nominal_batch", "format": "data_format", "batch_size": "batch"}
_KEY_VALUE = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)=(.*)", re.DOTALL)
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off", "none")


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_of(argv: Sequence[str], parser: argparse.ArgumentParser) -> Optional[str]:
    """The command token of ``argv`` (the first one that is not an option), if it names a command."""
    token = next((a for a in argv if not a.startswith("-")), None)
    return token if token in _subparsers(parser) else None


def _flag_tokens(action: argparse.Action, key: str, value: str, prog: str) -> List[str]:
    """``--option value`` tokens for ``key=value``; booleans switch flags on or off."""
    flag = action.option_strings[-1]
    lowered = value.strip().lower()
    if action.nargs == 0:  # store_true / store_false: key=True turns on what the key names
        if lowered not in _TRUE + _FALSE:
            raise UsageError(f"{key}={value!r}: expected True or False", prog=prog)
        return [flag] if (lowered in _TRUE) == bool(action.const) else []
    if action.nargs == "?" and lowered in _TRUE + _FALSE:  # --resume [CKPT], --save-json [FILE]
        return [flag] if lowered in _TRUE else []
    return [f"{flag}={value}"]


def _model_tokens(command: str, value: str, prog: str) -> Tuple[List[str], List[str]]:
    """ultralytics' ``model=``: the checkpoint of val / predict; for train a .pt to start from or a scale."""
    if command != "train":
        return [value], []
    if value.lower().endswith((".pt", ".pth")):
        return [], ["--weights", value]
    scale = re.fullmatch(r"yolo(?:v8|v11|11)?([nsmlxp])(?:\.ya?ml)?", value.strip().lower())
    if scale is None:
        raise UsageError(f"model={value!r}: expected a checkpoint (.pt) or a YOLO11 size such as yolo11n.yaml "
                         f"(n, s, m, l, x, p)", prog=prog)
    return [], ["--scale", scale.group(1)]


def translate_key_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> List[str]:
    """Accept ultralytics-style ``key=value`` arguments: ``detassign train data=coco.yaml epochs=100
    imgsz=640 batch=16`` -> ``detassign train --data coco.yaml --epochs 100 --img-size 640 --batch 16``.

    A key is ultralytics' name (``imgsz``, ``nbs``, ``model``, ``source``, ``project`` + ``name``) or the dest of
    one of the command's options (``max_det``, ``val_data``...); ``key=True/False`` switches a flag.
    An unknown key is a :class:`UsageError` listing the accepted ones. Tokens after ``--`` or that are the
    value of the preceding option are left alone.
    """
    argv = list(argv)
    command = _command_of(argv, parser)
    if command is None:
        return argv
    sub = _subparsers(parser)[command]
    prog = f"{parser.prog} {command}"
    by_dest = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}
    by_flag = {s: a for a in sub._actions for s in a.option_strings}
    positional = {a.dest for a in sub._actions if not a.option_strings}
    start = argv.index(command) + 1
    head, rest, flags, run = argv[:start], [], [], {}
    leading: Dict[str, str] = {}
    expects_value = False
    for i, token in enumerate(argv[start:]):
        if token == "--":
            rest.extend(argv[start + i:])
            break
        match = None if expects_value or token.startswith("-") else _KEY_VALUE.fullmatch(token)
        action = by_flag.get(token.split("=", 1)[0]) if token.startswith("-") else None
        expects_value = action is not None and "=" not in token and action.nargs in (None, 1)
        if match is None:
            rest.append(token)
            continue
        key, value = match.group(1).lower().replace("-", "_"), match.group(2)
        if key == "model" and ("checkpoint" in positional or command == "train"):
            pos, extra = _model_tokens(command, value, prog)
            if pos:
                leading["checkpoint"] = pos[0]
            flags.extend(extra)
        elif key == "source" and "source" in positional:
            leading["source"] = value
        elif key in ("project", "name") and "out" in by_dest and command in OUT_FOLDER_COMMANDS:
            run[key] = value
        elif ULTRALYTICS_KEYS.get(key, key) in by_dest:
            flags.extend(_flag_tokens(by_dest[ULTRALYTICS_KEYS.get(key, key)], key, value, prog))
        else:
            accepted = sorted(set(by_dest) | set(k for k, d in ULTRALYTICS_KEYS.items() if d in by_dest)
                              | ({"model"} if "checkpoint" in positional or command == "train" else set())
                              | ({"source"} if "source" in positional else set())
                              | ({"project", "name"} if command in OUT_FOLDER_COMMANDS else set()))
            raise UsageError(f"unknown argument {token!r}; key=value names for {command}: {', '.join(accepted)}",
                             prog=prog)
    if run:
        flags.extend(["--out", str(Path(run.get("project", "runs")) / run.get("name", command))])
    ordered = [leading[d] for d in ("checkpoint", "source") if d in leading]
    return head + ordered + flags + rest


OUT_FOLDER_COMMANDS = ("train", "predict", "demo", "compare")  # --out names a folder (others: a picture file)


def _check_file(value: str, what: str) -> None:
    p = Path(value)
    if not p.exists():
        raise UsageError(f"{what} {value}: no such file")
    if p.is_dir():
        raise UsageError(f"{what} {value} is a folder; expected a file")


def _check_device(text: str) -> str:
    """A device the machine has, as a torch device string ('auto', 'cpu', 'cuda:1', ...); ultralytics' '0'
    means 'cuda:0'. Anything else is a UsageError saying what is available."""
    import torch

    name = str(text).strip().lower()
    if name == "auto":
        return name
    if "," in name:
        raise UsageError(f"--device {text}: one device per process; for several GPUs run 'torchrun "
                         f"--nproc_per_node=N -m detassign train ...'")
    if name.isdigit():
        name = f"cuda:{name}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {text}: CUDA is not available ({why}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"--device {text}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: detassign runs on cpu, cuda or mps")
    return name


def _check_assigner(text: str, trainable: bool, extra_args: Sequence[str] = (), single: bool = False):
    """--assigner / --assigners: comma-separated presets or registered names, each optionally with arguments
    (``NAME:key=value,...``, and ``--assigner-args``; ``detassign.compare.parse_assigners``), that build; to
    train a YOLO or to draw, ones that run through the batched interface on grid priors, as the detection
    loss calls them (``detassign.viz.check_on_grid``). Returns the parsed ``AssignerSpec`` list."""
    import difflib

    from .compare import EXAMPLE_ARGUMENTS, missing_arguments, parse_assigners
    from .registry import ASSIGNERS, build_assigner
    from .viz import check_on_grid
    from .yolo.train import ASSIGNER_PRESETS

    try:
        specs = parse_assigners(text, extra_args)
    except ValueError as err:
        raise UsageError(f"--assigner {text}: {_first_line(err)}") from None
    if single and len(specs) > 1:
        raise UsageError(f"--assigner {text}: one assigner per run; 'detassign compare --assigners {text}' "
                         f"trains one model per assigner")
    for spec in specs:
        kind, name = spec.name, spec.label
        accepted = list(ASSIGNERS)
        if kind not in ASSIGNERS:
            near = difflib.get_close_matches(kind, accepted + list(ASSIGNER_PRESETS), n=1, cutoff=0.5)
            hint = f"did you mean {near[0]}? " if near else ""
            raise UsageError(f"--assigner {name!r} is not an assigner; {hint}accepted: "
                             f"{', '.join(sorted(ASSIGNER_PRESETS))} or {', '.join(accepted)}")
        missing = missing_arguments(spec.config)
        if missing:
            example = EXAMPLE_ARGUMENTS.get(kind, ",".join(f"{m}=..." for m in missing))
            raise UsageError(f"--assigner {name}: {kind} needs {', '.join(missing)}; e.g. --assigner "
                             f"'{kind}:{example}' (or --assigner-args '{example}')")
        try:
            build_assigner(spec.config)
        except (TypeError, ValueError) as err:
            raise UsageError(f"--assigner {name}: {_first_line(err)}") from None
        try:   # the loss and the pictures call it through the batched interface on grid priors
            check_on_grid(spec.config)
        except ValueError as err:
            what = "the YOLO loss cannot train with it: " if trainable else ""
            raise UsageError(f"--assigner {name}: {what}{_first_line(err)}") from None
    return specs


def _check_out(args) -> None:
    """--out: a folder for train / predict / demo (not an existing file), a picture file for show and
    iou-figure (not a folder; without a suffix it gets .png, so that the path reported is the path written)."""
    out = getattr(args, "out", None)
    if out is None:
        return
    p = Path(out)
    blocker = next((q for q in reversed(p.parents) if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"--out {out}: {blocker} is a file, not a folder")
    if args.command in OUT_FOLDER_COMMANDS:
        if p.exists() and not p.is_dir():
            raise UsageError(f"--out {out} is a file; --out names a folder (created when missing)")
        return
    if p.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {p / (args.command + '.png')}")
    if not p.suffix:
        args.out = str(p.with_suffix(".png"))
        return
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if p.suffix.lower().lstrip(".") not in kinds:
        raise UsageError(f"--out {out}: cannot write a {p.suffix} picture; use one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")


def _check_source(args) -> None:
    """predict's source: an image, a folder, or a dataset file (a .json / .yaml, or anything with --format)."""
    from .data.readers import IMAGE_SUFFIXES

    p = Path(args.source)
    if not p.exists():
        raise UsageError(f"source {args.source}: no such file or folder")
    suffix = p.suffix.lower()
    if p.is_file() and args.data_format is None and suffix not in IMAGE_SUFFIXES + (".json", ".yaml", ".yml"):
        hint = "; a .txt list of images is read with --format yolo" if suffix == ".txt" else ""
        raise UsageError(f"source {args.source} is not an image ({', '.join(IMAGE_SUFFIXES)}), a folder of images "
                         f"or a dataset file (.json / .yaml){hint}")


def _check_args(args) -> None:
    """Refuse what is wrong before any work starts, naming the option: paths that do not exist, an --out of
    the wrong kind, an unknown assigner, a device this machine does not have."""
    for dest, flag in (("data", "--data"), ("val_data", "--val-data")):
        value = getattr(args, dest, None)
        if value is not None and str(value).lower() != "neon" and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or folder")
    for dest, what in (("config", "--config"), ("weights", "--weights"), ("checkpoint", "checkpoint")):
        if getattr(args, dest, None) is not None:
            _check_file(getattr(args, dest), what)
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and not Path(resume).exists():
        raise UsageError(f"--resume {resume}: no such checkpoint or run folder")
    if getattr(args, "device", None) is not None:
        args.device = _check_device(args.device)
    if getattr(args, "assigner", None) is not None:
        trains = args.command in ("train", "demo")
        args.assigner_specs = _check_assigner(args.assigner, trainable=trains,
                                              extra_args=getattr(args, "assigner_args", None) or (), single=trains)
        if trains and ":" in args.assigner:  # NAME:key=value: the run gets the config dict
            args.assigner = args.assigner_specs[0].config
    if getattr(args, "assigners", None) is not None:
        args.assigner_specs = _check_assigner(args.assigners, trainable=not args.static,
                                              extra_args=args.assigner_args or ())
    _check_out(args)
    if args.command == "predict":
        _check_source(args)


def _first_line(err: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror and str(err).startswith("[Errno"):
        return f"{err.filename}: {err.strerror}"  # rather than "[Errno 28] No space left on device: 'x'"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _describe(err: BaseException) -> Tuple[int, str]:
    """(exit status, one-line message): 2 for what the user can fix in the command or its files, 1 else."""
    # ValueError / TypeError: the library's validation names the argument (a DataError names the file and the
    # entry, a CheckpointError the checkpoint), and here the arguments came from the user
    user = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError)
    if any(t.__name__ == "OutOfMemoryError" for t in type(err).__mro__):
        return 1, f"out of memory ({_first_line(err)[:200]}); lower --batch or --img-size"
    if isinstance(err, user):
        return 2, _first_line(err)
    if isinstance(err, (OSError, ImportError)) or "Could not obtain" in str(err):
        return 1, _first_line(err)  # the machine's fault (disk full, a missing package, no network), not a bug
    return 1, (f"internal error ({type(err).__name__}: {_first_line(err)}); this is a bug in detassign: run again "
               f"with --debug for the traceback")


def _add_data_args(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--data", default=None, metavar="PATH",
                   help=f"dataset: a COCO .json, a Pascal VOC folder of .xml, a YOLO images folder, or a small "
                        f"YAML/JSON spec (format, names, train, val). {default_help}")
    p.add_argument("--format", dest="data_format", choices=("coco", "voc", "yolo"), default=None,
                   help="format of --data when it is not a spec file")
    p.add_argument("--names", default=None, metavar="A,B,...",
                   help="class names, comma separated (needed for YOLO txt labels; fixes the order for VOC)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="image folder of a COCO json / VOC set, when it is not where the layout puts it")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail on the first corrupt label file or unreadable image (default: skip it with a warning)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detassign",
        description="Train, evaluate and inspect YOLO11 detectors with any label assigner. Without --data the "
                    "commands use the NEON aerial tree-crown set (downloaded once, about 21 MB).",
        epilog="Run 'detassign COMMAND --help' for the options of one command. ultralytics-style key=value "
               "arguments work too: 'detassign train data=data.yaml epochs=100 imgsz=640 batch=16'. Errors are one "
               "line (exit status 2 for a mistake in the command or its files); --debug adds the traceback.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # ---------------------------------------------------------------- train
    p = sub.add_parser("train", help="train a YOLO11 on your dataset or the NEON tree crowns",
                       description="Train a YOLO11 detector into a run folder (--out, default runs/train; a "
                                   "folder that holds a run is never reused: runs/train2, ...). It holds "
                                   "weights/best.pt (stripped: EMA weights in float16), weights/last.pt (for "
                                   "--resume), results.csv, results.png, PR_curve.png, F1_curve.png, "
                                   "confusion_matrix.png and config.json.",
                       epilog="examples:\n  detassign train --epochs 30 --img-size 416 --out runs/trees\n"
                              "  detassign train --data coco/instances_train.json --format coco --val-data "
                              "coco/instances_val.json --epochs 100\n"
                              "  detassign train --data data.yaml --assigner atss --scale s\n"
                              "  detassign train --out runs/trees --resume          # continue a killed run\n"
                              "  detassign train data=data.yaml epochs=100 imgsz=640 batch=16   # ultralytics style\n"
                              "  torchrun --nproc_per_node=2 -m detassign train ...   # data-parallel",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p, "Default: NEON tree-crown tiles, validated on the held-out NEON image.")
    p.add_argument("--val-data", default=None, metavar="PATH", help="validation set (same format as --data)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON or YAML file of TrainConfig fields; command-line options override it")
    p.add_argument("--scale", default=None, help="model size: n, s, m, l, x (ultralytics) or p (pico, CPU demos)")
    p.add_argument("--epochs", type=_int_at_least(1), default=None)
    p.add_argument("--batch", type=_int_at_least(1), default=None,
                   help="images per optimiser batch, all processes together")
    p.add_argument("--nominal-batch", type=_int_at_least(1), default=None,
                   help="gradients are accumulated up to this many images per step (64)")
    p.add_argument("--img-size", type=_img_size, default=None,
                   help="training input side (letterboxed square; a multiple of 32)")
    p.add_argument("--crop", type=_int_at_least(1), default=None, help="random crop side applied before letterboxing")
    p.add_argument("--val-img-size", type=_size, default=argparse.SUPPRESS,
                   help="validation input side, 'native' (full resolution, padded to 32) or 'auto' (default: "
                        "native for NEON, else --img-size)")
    p.add_argument("--optimizer", default=None, help="auto (AdamW for short runs, else SGD), SGD, Adam, AdamW")
    p.add_argument("--lr0", type=_positive, default=None, help="initial learning rate (ignored by optimizer=auto)")
    p.add_argument("--lrf", type=_float_in(0.0, 1.0, low_open=True), default=None,
                   help="final learning rate as a fraction of lr0 (0.01)")
    p.add_argument("--cos-lr", action="store_true", default=None, help="cosine instead of linear decay")
    p.add_argument("--warmup-epochs", type=_float_in(0.0), default=None)
    p.add_argument("--ema-tau", type=_positive, default=None, help="EMA ramp time constant in steps (2000)")
    p.add_argument("--assigner", default=None, help=ASSIGNER_HELP)
    p.add_argument("--weights", default=None, metavar="CKPT", help="initialise from a checkpoint")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no flips / rotations / crops / colour changes")
    p.add_argument("--no-rot90", dest="rot90", action="store_false", default=None,
                   help="no 90-degree turns (use for street scenes; they suit aerial views)")
    p.add_argument("--max-steps", type=_int_at_least(1), default=None, help="stop after this many optimiser steps")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=_int_at_least(0), default=None, help="data-loader worker processes (0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="run folder (runs/train; runs/train2 ... when it holds a run)")
    p.add_argument("--exist-ok", action="store_true", default=None,
                   help="write into --out even when it holds a run (replacing its files)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run in --out (or a run folder / last.pt CKPT) exactly where it stopped; "
                        "with --epochs N, extend a finished run to N epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    # ---------------------------------------------------------------- val
    p = sub.add_parser("val", help="evaluate a checkpoint: per-class P, R, mAP50, mAP50-95 (COCO protocol)",
                       description="Evaluate a checkpoint on a labelled set. Prints a per-class table (images, "
                                   "instances, P, R, mAP50, mAP50-95, and an 'all' row) and the speed per image. "
                                   "mAP is COCO's (faster-coco-eval) with maxDets max(--max-det, 300); P and R are "
                                   "read at the confidence of the best mean F1, as ultralytics reports them.",
                       epilog="examples:\n  detassign val runs/trees/weights/best.pt --img-size native\n"
                              "  detassign val best.pt --data annotations/instances_val2017.json --save-json dets.json"
                              "   # scores with your COCO file\n"
                              "  detassign val model=best.pt data=data.yaml imgsz=640 batch=8   # ultralytics style",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a last.pt / best.pt written by 'detassign train'")
    _add_data_args(p, "Default: the held-out NEON image (or the checkpoint's own validation data).")
    p.add_argument("--split", default="val", help="split name inside a spec file (val)")
    p.add_argument("--img-size", type=_size, default=argparse.SUPPRESS,
                   help="input side, or 'native' (default: the checkpoint's validation size)")
    p.add_argument("--conf", type=_unit, default=0.001, help="score threshold (0.001 for mAP)")
    p.add_argument("--iou", type=_unit, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=_int_at_least(1), default=300,
                   help="detections kept per image (COCO maxDets uses >= 300)")
    p.add_argument("--batch", type=_int_at_least(1), default=1, help="images per forward pass (1)")
    p.add_argument("--workers", type=_int_at_least(0), default=0, help="data-loader worker processes (0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the numbers as JSON: COCO metrics, P, R, per-class rows and AP keyed by class name, "
                        "speed, confusion matrix")
    p.add_argument("--save-json", nargs="?", const="predictions.json", default=None, metavar="FILE",
                   help="write the detections as COCO results with the dataset's own image ids and category ids "
                        "(score them against your annotation file; FILE defaults to predictions.json)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write PR_curve.png, F1_curve.png and confusion_matrix.png (as a training run does)")

    # ---------------------------------------------------------------- predict
    p = sub.add_parser("predict", help="detect objects in images; write COCO JSON and overlay PNGs",
                       description="Run a checkpoint on an image, a folder of images (searched recursively) or a "
                                   "dataset. Writes predictions.json (COCO results: image_id, category_id, bbox "
                                   "[x, y, w, h], score), images.json (image ids, file names, sizes, categories, "
                                   "skipped files) and one overlay PNG per image (class name and score on each box, "
                                   "a legend) into --out, keeping the source's sub-folders. With a dataset source "
                                   "the ids are the dataset's own; otherwise images are numbered 0..n-1 and "
                                   "categories 1..C. An unreadable image is skipped with a warning.",
                       epilog="examples:\n"
                              "  detassign predict runs/trees/weights/best.pt photos/ --conf 0.3 --out preds\n"
                              "  detassign predict best.pt instances_val2017.json --out preds   # COCO ids kept\n"
                              "  detassign predict model=best.pt source=photos/ conf=0.3   # ultralytics style",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("source",
                   help="an image, a folder of images, or a dataset (.json / .yaml, or any path with --format)")
    p.add_argument("--format", dest="data_format", choices=("coco", "voc", "yolo"), default=None,
                   help="read the source as a dataset of this format")
    p.add_argument("--names", default=None, metavar="A,B,...", help="class names of a YOLO / VOC dataset source")
    p.add_argument("--split", default="val", help="split of a dataset source (val)")
    p.add_argument("--img-size", type=_size, default=None, help="input side, 'native' (default) or 'auto' "
                                                                "(the checkpoint's training size)")
    p.add_argument("--conf", type=_unit, default=0.25, help="score threshold")
    p.add_argument("--iou", type=_unit, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=_int_at_least(1), default=300)
    p.add_argument("--no-overlays", dest="overlays", action="store_false", help="write the JSON files only")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/predict")

    # ---------------------------------------------------------------- show
    p = sub.add_parser("show", help="draw which priors assigners make positive for an image's GTs, side by side",
                       description="Draw an image's GT boxes and the positive priors of one or more assigners: one "
                                   "row per assigner, one panel for all levels and one per pyramid level "
                                   "(P3/P4/P5), every panel on the image's own scale. Each GT is labelled with its "
                                   "positive count; a GT without any positive is dashed red and listed; ignored "
                                   "priors are grey crosses; a marker's area is the soft target the YOLO loss trains "
                                   "that prior with. Assigners are fed exactly as the YOLO loss feeds them (score-"
                                   "based ones read a model's predictions: --weights, else an untrained YOLO11, "
                                   "seed 0); per-image families (MaxIoU, Grid, Hungarian, ...) get square priors of "
                                   "5 x stride, points or queries. Prints one line per assigner; --json writes "
                                   "the statistics (detassign.stats.assignment_stats) and per-GT counts.",
                       epilog="examples:\n  detassign show --out assignment.png       # TAL, a typical NEON tile\n"
                              "  detassign show --assigner tal,atss,simota,dsl --out four.png --json four.json\n"
                              "  detassign show --assigner MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4,atss:topk=13"
                              "\n  detassign show --assigner GridAssigner --assigner-args "
                              "pos_iou_thr=0.5,neg_iou_thr=0.4\n"
                              "  detassign show --weights runs/train/weights/best.pt --index 3",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p, "Default: the NEON tree-crown training tiles.")
    p.add_argument("--index", type=_int_at_least(0), default=None,
                   help="which image of the dataset (default: the first whose GT count is the median of the "
                        "images that have GTs, a typical busy one)")
    p.add_argument("--assigner", default="TaskAlignedAssigner", metavar="A[,B,...]",
                   help="one or more assigners, comma separated, each a preset (tal, atss, simota, dsl) or a "
                        "registered name, with arguments as NAME:key=value,key=value (values are YAML)")
    p.add_argument("--assigner-args", action="append", default=None, metavar="KEY=VALUE,...",
                   help="arguments for the assigner(s): once for all of them, or once per assigner in order")
    p.add_argument("--weights", default=None, metavar="CKPT", help="score with a trained model")
    p.add_argument("--scale", default="n", help="untrained model scale when no --weights (n)")
    p.add_argument("--img-size", type=_img_size, default=None,
                   help="letterbox side, a multiple of 32 (default: the image, padded to 32)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write each assigner's statistics: positives per GT, GTs without a positive by COCO size, "
                        "per level, ignored priors, overlaps, soft-target mass, and one row per GT")
    p.add_argument("--out", default="assignment.png", help="picture file (.png when no suffix)")

    # ---------------------------------------------------------------- iou-figure
    p = sub.add_parser("iou-figure", help="plot IoU / GIoU / DIoU / CIoU against the offset and the aspect ratio",
                       description="Three panels computed with detassign.boxes: a 10 x 10 and a 20 x 10 box slide "
                                   "horizontally past a fixed 10 x 10 box, their centre 2 px below the fixed "
                                   "centre (x axis: the horizontal offset of the centres, up to --span px); and "
                                   "a box of the same centre and area whose aspect ratio changes, where DIoU equals "
                                   "IoU and only CIoU's aspect term separates them.")
    p.add_argument("--out", default="iou_variants.png")
    p.add_argument("--span", type=_positive, default=25.0,
                   help="largest horizontal offset of the centres in pixels (the fixed box is 10 px)")

    # ---------------------------------------------------------------- compare
    p = sub.add_parser("compare", help="train the same model with each assigner and compare them (or compare "
                                       "them on one model's predictions with --static)",
                       description="Train one YOLO11 per assigner (and per seed) with the same data, seed and budget, "
                                   "then write compare.csv (one row per run), compare.md (mean +- std per assigner), "
                                   "compare.png and compare.json into --out (runs in --out/runs/). Columns: held-out "
                                   "mAP50, mAP50-95, AP small / medium of the final EMA model, train time, assigner "
                                   "ms per step, and over all training steps the share of GTs without a positive "
                                   "(all and COCO-small) and positives per GT. Default: NEON tree crowns, YOLO11-p, "
                                   "60 epochs of 256 px crops (about 10 minutes for four assigners on 2 CPU cores). "
                                   "--static --weights CKPT trains nothing: every assigner gets the same "
                                   "predictions of CKPT on every image of the dataset (as the loss would give "
                                   "them); the table is their statistics and compare.png puts them side by side.",
                       epilog="examples:\n  detassign compare --assigners tal,atss,simota,dsl --out runs/compare\n"
                              "  detassign compare --assigners tal,atss:topk=13 --seeds 3 --epochs 60\n"
                              "  detassign compare --data data.yaml --assigners tal,dsl --img-size 640 --epochs 50\n"
                              "  detassign compare --static --weights runs/compare/runs/tal-seed0/weights/best.pt "
                              "--assigners tal,atss,simota,dsl,MaxIoUAssigner:pos_iou_thr=0.5,neg_iou_thr=0.4",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p, "Default: NEON tree crowns (train tiles; held out: another image).")
    p.add_argument("--val-data", default=None, metavar="PATH", help="held-out set (same format as --data)")
    p.add_argument("--assigners", default="tal,atss,simota,dsl", metavar="A,B,...",
                   help="assigners to compare: presets (tal, atss, simota, dsl) or registered names, with "
                        "arguments as NAME:key=value,key=value (default tal,atss,simota,dsl)")
    p.add_argument("--assigner-args", action="append", default=None, metavar="KEY=VALUE,...",
                   help="arguments for the assigners: once for all of them, or once per assigner in order")
    p.add_argument("--seeds", type=_int_at_least(1), default=1,
                   help="runs per assigner (seeds --seed, --seed + 1, ...); the table gives mean +- std")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="first seed (0)")
    p.add_argument("--epochs", type=_int_at_least(1), default=None, help="epochs per run (60)")
    p.add_argument("--scale", default=None, help="model size (p: YOLO11-pico, 0.8 M parameters)")
    p.add_argument("--img-size", type=_img_size, default=None,
                   help="training input side (256 for NEON's crops, else 640); with --static: the letterbox "
                        "side (default native, padded to 32)")
    p.add_argument("--batch", type=_int_at_least(1), default=None, help="images per batch (8)")
    p.add_argument("--static", action="store_true",
                   help="train nothing: run every assigner on the predictions of --weights over the dataset")
    p.add_argument("--weights", default=None, metavar="CKPT", help="the model of --static")
    p.add_argument("--index", type=_int_at_least(0), default=None,
                   help="--static: the image of compare.png (default: a typical busy one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/compare", help="folder for compare.* and the runs (runs/compare)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    # ---------------------------------------------------------------- demo
    p = sub.add_parser("demo", help="fetch the NEON tree crowns, train a small YOLO11 on CPU, evaluate, draw",
                       description="The end-to-end demo behind 'make demo': downloads the NEON tree-crown data "
                                   "(once), trains a YOLO11 on tiles of one image for a few minutes, evaluates "
                                   "on a held-out image 13 km away, prints a table and writes pictures.")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--epochs", type=_int_at_least(1), default=None, help="override the demo's epoch count")
    p.add_argument("--scale", default=None, help="override the demo's model scale")
    p.add_argument("--assigner", default=None, help=ASSIGNER_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------- commands


def _names(text: Optional[str]) -> Optional[List[str]]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _load_config_file(path: str) -> dict:
    """--config: a JSON or YAML mapping of TrainConfig fields; anything else is a UsageError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not a text file (its bytes are not UTF-8)") from None
    except OSError as err:
        raise UsageError(f"--config {path}: cannot be read ({err.strerror})") from None
    if p.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path}: invalid JSON at line {err.lineno} column {err.colno} "
                             f"({err.msg})") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            raise UsageError(f"--config {path}: invalid YAML{where} ({getattr(err, 'problem', None) or err})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a mapping of TrainConfig fields, got a {type(values).__name__}")
    return values


def cmd_train(args) -> int:
    from .yolo.train import TrainConfig, train

    # options named like a TrainConfig field are taken by name; these four are spelled differently
    values = _load_config_file(args.config) if args.config else {}
    renamed = {"out_dir": args.out, "class_names": _names(args.names), "progress": False if args.quiet else None}
    values.update({k: v for k, v in renamed.items() if v is not None})
    if hasattr(args, "val_img_size"):  # SUPPRESS: present only when given, and None ('native') is a value
        values["val_img_size"] = args.val_img_size
    config = TrainConfig.from_namespace(args, base=values, source=args.config or "detassign train")
    try:
        train(config)  # prints best.pt's metrics and the run folder's files at the end
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # started by train() under torchrun
            dist.destroy_process_group()
    return 0


def _device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(_check_device(text))


def _load_model(path: str):
    """(model in eval mode, class names, checkpoint dict); a file that is not a detassign checkpoint is a
    UsageError naming it (the training helper's CheckpointError says what is wrong with it)."""
    from .yolo import train as T

    try:
        from .yolo.checkpoint import CheckpointError as known
    except ImportError:  # before checkpoint.py existed: train.py's loader, errors described below
        known = None
    try:
        return T.model_from_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - loading a foreign file fails in as many ways as there are files
        if isinstance(known, type) and isinstance(err, known):
            raise UsageError(_first_line(err)) from err
        raise UsageError(f"{path}: not a detassign checkpoint ({type(err).__name__}: {_first_line(err)})") from err


def _read_kwargs(args) -> dict:
    """--images / --strict when the command has them (the dataset options of the readers)."""
    return {k: getattr(args, k) for k in ("images", "strict") if getattr(args, k, None) is not None}


def _check_classes(data, class_names: Sequence[str], what: str) -> None:
    if list(data.class_names) != list(class_names):
        raise UsageError(f"{what} has classes {list(data.class_names)} but the checkpoint {list(class_names)}; pass "
                         f"--names in the checkpoint's order if they are the same classes")


def category_ids(data, num_classes: int) -> List[int]:
    """COCO category id of each class index: the dataset's own ids (``DetectionSet.category_ids``: a COCO
    file's), else ``1..C`` (how a COCO export and ultralytics' save_json number other data)."""
    ids = getattr(data, "category_ids", None) if data is not None else None
    if ids is None and data is not None:
        ids = data.meta.get("category_ids")
    return [int(c) for c in ids] if ids is not None else list(range(1, num_classes + 1))


def _eval_set(args, ckpt_config: dict, class_names: Sequence[str]):
    """The dataset ``val`` evaluates: --data, else the checkpoint's validation data, else NEON val.
    Class names default to the checkpoint's, so VOC / YOLO labels get the indices the model predicts."""
    from .data import read_dataset
    from .data.neon import load_neon

    names = _names(args.names) or list(class_names)
    if args.data is not None and args.data.lower() != "neon":
        data = read_dataset(args.data, args.data_format, names, split=args.split, **_read_kwargs(args))
    elif args.data is None and ckpt_config.get("data") not in (None, "neon"):
        src = ckpt_config.get("val_data") or ckpt_config["data"]
        data = read_dataset(src, ckpt_config.get("data_format"), ckpt_config.get("class_names") or names, split="val")
    else:
        return load_neon("val"), True
    _check_classes(data, class_names, f"the dataset {data.source or args.data}")
    return data, False


def cmd_val(args) -> int:
    import torch

    from .data import DetectionDataset, EvalTransform, collate
    from .yolo.evaluate import evaluate_detections, to_coco_json
    from .yolo.predict import predict_loader
    from .yolo.train import resolve_val_size

    device = _device(args.device)
    model, class_names, ckpt = _load_model(args.checkpoint)
    model.to(device)
    saved = ckpt.get("config") or {}
    data, is_neon = _eval_set(args, saved, class_names)
    size = getattr(args, "img_size", saved.get("val_img_size", "auto"))
    size = resolve_val_size(size, saved.get("img_size", 640), is_neon)
    loader = torch.utils.data.DataLoader(DetectionDataset(data, EvalTransform(size)), batch_size=args.batch,
                                         collate_fn=collate, num_workers=args.workers)
    preds, gts, speed = predict_loader(model, loader, device, args.conf, args.iou, args.max_det, progress=True)
    max_dets = max(args.max_det, 300)
    report = evaluate_detections(preds, gts, class_names, max_dets=max_dets,
                                 image_sizes=[(r.height, r.width) for r in data.records])
    m = report.metrics
    print(f"{args.checkpoint} on {data.source or 'dataset'}: {len(data)} images, input "
          f"{'native' if size is None else size}, conf {args.conf:g}, NMS IoU {args.iou:g}, maxDets {max_dets}")
    print(report.table())
    print(f"COCO: mAP50-95 {m['map']:.4f}, mAP50 {m['map50']:.4f}, mAP75 {m['map75']:.4f}, small / medium / large "
          f"{m['map_small']:.3f} / {m['map_medium']:.3f} / {m['map_large']:.3f}, mAR@{max_dets} "
          f"{m.get(f'mar_{max_dets}', -1.0):.4f} (-1: no GT of that size)")
    print(f"speed: {speed['preprocess']:.1f} ms preprocess, {speed['inference']:.1f} ms inference, "
          f"{speed['nms']:.1f} ms NMS per image ({device}, batch {args.batch})")
    if args.json:
        out = dict(report.to_dict(), speed_ms_per_image=speed, checkpoint=str(args.checkpoint),
                   data=str(data.source), img_size="native" if size is None else size, max_dets=max_dets)
        _write_text(args.json, json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    if args.save_json:
        ids = category_ids(data, len(class_names))
        to_coco_json([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds],
                     image_ids=[p["image_id"] for p in preds], class_ids=ids, path=_parent_made(args.save_json))
        print(f"wrote {args.save_json} (COCO results: the dataset's image ids, category ids {ids[:8]}"
              f"{' ...' if len(ids) > 8 else ''})")
    if args.plots:  # the pictures a training run leaves after its final validation
        from .yolo.runs import plot_confusion_matrix, plot_f1_curve, plot_pr_curve

        plots = Path(args.plots)
        plot_pr_curve(report.curves, class_names, plots / "PR_curve.png")
        plot_f1_curve(report.curves, class_names, plots / "F1_curve.png")
        plot_confusion_matrix(report.confusion, class_names, plots / "confusion_matrix.png")
        print(f"wrote PR_curve.png, F1_curve.png and confusion_matrix.png to {plots}")
    return 0


def _parent_made(path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_text(path: str, text: str) -> None:
    Path(_parent_made(path)).write_text(text)


def _safe_relative(name: str, index: int) -> Path:
    """A record's name as a relative path that stays inside --out (no anchors, no '..')."""
    parts = [p for p in Path(str(name)).parts if p not in ("..", ".", "") and p != Path(str(name)).anchor]
    return Path(*parts) if parts else Path(f"image{index}")


def overlay_names(sources: Sequence[Path]) -> List[Path]:
    """Overlay file of each source image, relative to --out: ``a/x.png`` -> ``a/x_pred.png``; sources that
    would share one (``x.png`` and ``x.jpg`` in one folder) keep their suffix: ``x_png_pred.png``."""
    suffixes: Dict[Path, set] = {}
    for p in sources:
        suffixes.setdefault(p.with_suffix(""), set()).add(p.suffix.lower())
    used, out = set(), []
    for p in sources:
        base = p.with_suffix("")
        name = base.name + (f"_{p.suffix.lstrip('.').lower()}" if len(suffixes[base]) > 1 and p.suffix else "")
        candidate, k = base.parent / f"{name}_pred.png", 2
        while candidate in used:  # same name and suffix twice (a dataset listing one file twice)
            candidate, k = base.parent / f"{name}_{k}_pred.png", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def _predict_items(args, class_names: Sequence[str]):
    """[(name relative to the source, image source, image id)] and the dataset (None for images / folders).
    A dataset source (.json / .yaml, or any path with --format) keeps its image and category ids."""
    from .data import read_dataset
    from .data.readers import iter_image_files

    src = Path(args.source)
    if args.data_format is not None or (src.is_file() and src.suffix.lower() in (".json", ".yaml", ".yml")):
        data = read_dataset(src, args.data_format, _names(args.names) or list(class_names), split=args.split,
                            **_read_kwargs(args))
        _check_classes(data, class_names, f"the dataset {src}")
        return [(_safe_relative(r.name, i), r.image, r.image_id) for i, r in enumerate(data.records)], data
    out = Path(args.out).resolve()
    files = [f for f in iter_image_files(src) if out not in f.resolve().parents]  # not our own earlier overlays
    base = src if src.is_dir() else src.parent
    return [(f.relative_to(base), str(f), i) for i, f in enumerate(files)], None


def cmd_predict(args) -> int:
    import numpy as np
    import torch

    from .data.readers import load_image
    from .data.transforms import EvalTransform
    from .viz import save_detections
    from .yolo.predict import nms
    from .yolo.train import resolve_val_size

    device = _device(args.device)
    model, class_names, ckpt = _load_model(args.checkpoint)
    model.to(device).eval()
    items, data = _predict_items(args, class_names)
    skipped = [{"file_name": str(path), "reason": reason} for path, reason in getattr(data, "skipped", [])]
    if not items:
        unreadable = f" ({len(skipped)} unreadable)" if skipped else ""
        raise UsageError(f"source {args.source}: no images found{unreadable}")
    ids = category_ids(data, len(class_names))
    size = args.img_size
    if size == "auto":
        size = resolve_val_size("auto", (ckpt.get("config") or {}).get("img_size", 640), False)
    transform = EvalTransform(size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, images, overlays = [], [], 0
    for (name, source, image_id), overlay in zip(items, overlay_names([n for n, _, _ in items])):
        try:
            image = load_image(source)
        except Exception as err:  # noqa: BLE001 - whatever fails to decode one file skips that file only
            skipped.append({"file_name": str(name), "reason": _first_line(err)})
            print(f"detassign predict: warning: skipped {name}: {_first_line(err)}", file=sys.stderr)
            continue
        net, _, _, info = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        x = torch.from_numpy(net.transpose(2, 0, 1).copy())[None].to(device).float() / 255
        with torch.no_grad():
            det = nms(model(x), args.conf, args.iou, args.max_det)[0].cpu()
        boxes, scores, labels = info.to_original(det[:, :4]), det[:, 4], det[:, 5].long()
        for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": ids[c], "score": round(s, 5),
                            "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]})
        images.append({"id": int(image_id), "file_name": str(name), "width": image.shape[1],
                       "height": image.shape[0]})
        if args.overlays:
            save_detections(image, out / overlay, boxes, scores, labels, class_names)
            overlays += 1
        print(f"{name}: {len(det)} detection(s)")
    if not images:
        raise UsageError(f"source {args.source}: none of its {len(items)} image(s) could be read")
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps({"images": images, "categories": [
        {"id": i, "name": n} for i, n in zip(ids, class_names)], "skipped": skipped}, indent=1))
    print(f"{len(images)} image(s), {len(results)} detection(s)"
          + (f", {len(skipped)} skipped (unreadable, listed in images.json)" if skipped else "")
          + f"; wrote {out / 'predictions.json'}, {out / 'images.json'} and {overlays} overlay(s) under {out}")
    return 0


def _show_record(args):
    """(dataset, record, index) of ``show``: --index, else a typical busy image (never an empty one)."""
    from .compare import default_image_index
    from .data import read_dataset
    from .data.neon import load_neon

    if args.data is None or args.data.lower() == "neon":
        data = load_neon("train")
    else:
        data = read_dataset(args.data, args.data_format, _names(args.names), **_read_kwargs(args))
    index = default_image_index(data) if args.index is None else args.index
    if not 0 <= index < len(data):
        raise UsageError(f"--index {index} is out of range: the dataset has {len(data)} images")
    return data, data.records[index], index


def cmd_show(args) -> int:
    import torch

    from .data.readers import load_image
    from .data.transforms import EvalTransform
    from .viz import assign_on_grid, assignment_figure, assignment_summary, grid_inputs
    from .yolo.train import build_model

    data, rec, index = _show_record(args)
    image = load_image(rec.image)
    net, boxes, labels, _ = EvalTransform(args.img_size)(image, rec.boxes, rec.labels)
    if args.weights:
        model, _, _ = _load_model(args.weights)
        source = f"model {args.weights}"
    else:
        torch.manual_seed(0)
        model = build_model(args.scale, data.num_classes)
        source = f"untrained YOLO11-{args.scale}, seed 0"
    x = torch.from_numpy(net.transpose(2, 0, 1).copy())[None].float() / 255
    grid = grid_inputs(torch.from_numpy(boxes), torch.from_numpy(labels), net.shape[:2], data.num_classes,
                       model=model, image=x, strides=[int(s) for s in model.stride.tolist()])
    rows = []
    for spec in args.assigner_specs:
        row = assign_on_grid(dict(spec.config), grid)
        row["name"] = spec.label
        rows.append(row)
    path = assignment_figure(net, boxes, rows, args.out,
                             title=f"{rec.name} (image {index}, {len(boxes)} GTs, {net.shape[1]} x {net.shape[0]} "
                                   f"px; scores from {source})")
    for row in rows:
        stats = row["stats"]
        counts = stats.positives_per_gt
        zero = [str(j + 1) for j in (counts == 0).nonzero().flatten().tolist()]
        print(f"{row['name']}: {stats.num_positives} positives for {stats.num_gts} GTs (per GT min "
              f"{int(counts.min()) if len(counts) else 0}, mean {stats.mean_positives_per_gt:.1f}, max "
              f"{int(counts.max()) if len(counts) else 0}); {len(zero)} GT(s) without a positive"
              + (f": #{', #'.join(zero)}" if zero else ""))
    if args.json:
        summary = {"image": rec.name, "index": index, "image_size": list(net.shape[:2]), "scores_from": source,
                   "assigners": [assignment_summary(row, boxes) for row in rows]}
        _write_text(args.json, json.dumps(summary, indent=1))
        print(f"wrote {args.json}")
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    import torch

    from .compare import compare_static, compare_training, default_training_config

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if device == "cpu":
        from .demo import pick_threads

        print(f"CPU threads: {pick_threads()} (measured; set DETASSIGN_THREADS to choose)")
    if args.static:
        if args.weights is None:
            raise UsageError("--static needs --weights CKPT: the model whose predictions every assigner gets")
        from .data import read_dataset
        from .data.neon import load_neon

        _, class_names, _ = _load_model(args.weights)
        data = None
        if args.data is not None and args.data.lower() != "neon":
            data = read_dataset(args.data, args.data_format, _names(args.names) or class_names, split="train",
                                **_read_kwargs(args))
            _check_classes(data, class_names, f"the dataset {data.source or args.data}")
        elif len(class_names) != 1:
            raise UsageError(f"--weights {args.weights} has {len(class_names)} classes; the NEON data has one: "
                             f"pass its --data")
        data = load_neon("train") if data is None else data
        report = compare_static(args.assigner_specs, args.weights, data=data, out_dir=args.out,
                                img_size=args.img_size, picture_index=args.index, device=device)
    else:
        if args.weights is not None:
            raise UsageError("--weights is for --static (training compares models trained from scratch)")
        config = default_training_config(args.data, data_format=args.data_format, val_data=args.val_data,
                                         class_names=_names(args.names), epochs=args.epochs, scale=args.scale,
                                         img_size=args.img_size, batch=args.batch, seed=args.seed, device=device)
        report = compare_training(args.assigner_specs, config, seeds=args.seeds, out_dir=args.out,
                                  progress=not args.quiet)
    print(report.details["header"])
    print(report.table)
    print(f"wrote {', '.join(str(f) for f in report.files)}")
    return 0


def cmd_iou_figure(args) -> int:
    from .viz import iou_figure

    print(f"wrote {iou_figure(args.out, span=args.span)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, scale=args.scale, assigner=args.assigner, device=args.device,
             progress=not args.quiet)
    return 0


COMMANDS = {"train": cmd_train, "val": cmd_val, "predict": cmd_predict, "show": cmd_show,
            "iou-figure": cmd_iou_figure, "compare": cmd_compare, "demo": cmd_demo}


def _strip_debug(argv: List[str]) -> Tuple[List[str], bool]:
    """Remove ``--debug`` wherever it is (before ``--``): it is global, and users add it at the end."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"]
    return kept + argv[end:], len(kept) != end


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``detassign``; returns the exit status: 0, 2 for a user error (the command line or a file it
    names), 1 for anything else, 130 when interrupted. Errors are one line on stderr
    (``detassign <command>: error: ...``); ``--debug`` shows the traceback as well. Warnings (an image
    skipped, ...) are one line each too."""
    argv, debug = _strip_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    command = _command_of(argv, parser)
    prog = f"{parser.prog} {command}" if command else parser.prog

    def one_line_warning(message, category, *_args, **_kwargs):
        print(f"{prog}: warning: {_first_line(message) if isinstance(message, Exception) else message}",
              file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        try:
            args = parser.parse_args(translate_key_values(argv, parser))
            _check_args(args)
            return COMMANDS[args.command](args)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - the last line of defence: one line, a traceback only with --debug
            status, message = _describe(err)
            if debug:
                traceback.print_exception(type(err), err, err.__traceback__)
            if isinstance(err, UsageError) and err.prog == parser.prog and command:  # e.g. unrecognised options
                message = message.replace(f"(see '{parser.prog} --help')", f"(see '{prog} --help')")
            print(f"{prog}: error: {message}", file=sys.stderr)
            return status
