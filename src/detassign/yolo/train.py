"""Training loop for :class:`detassign.yolo.YOLO11` (the ultralytics recipe, written out step by step).

    >>> from detassign.yolo.train import TrainConfig, train
    >>> result = train(TrainConfig(epochs=30, img_size=416, out_dir="runs/trees"))   # NEON tree crowns
    >>> result.best_metrics["map50"], result.best, result.run_dir

Recipe (``REFERENCE_NOTES.md`` section 5):

1. Optimiser: ``optimizer="auto"`` picks AdamW with ``lr = 0.002 * 5 / (4 + num_classes)`` (momentum 0.9) for
   short runs (<= 10 000 optimiser steps at the nominal batch) and SGD(0.01, momentum 0.937, Nesterov)
   otherwise; "SGD" / "AdamW" / "Adam" are honoured with ``lr0``. Three parameter groups: conv/linear weights
   with decay, norm weights without, biases without. Weight decay is scaled by ``batch * accumulate / 64``.
2. Nominal batch 64: gradients of ``accumulate = max(round(64 / batch), 1)`` batches are summed before a step
   (and a step is always taken at the end of an epoch, so epochs are self-contained).
3. Warmup over ``max(warmup_epochs * batches_per_epoch, min_warmup_iters)`` iterations: bias lr falls from
   ``warmup_bias_lr`` (0 for "auto", as ultralytics), other lrs rise from 0, momentum rises from
   ``warmup_momentum`` to ``momentum``; then linear (or cosine) decay per epoch to ``lr0 * lrf``.
4. Grad-norm clip 10 after unscaling; EMA of weights and buffers with decay ``d * (1 - exp(-updates / tau))``
   (``tau`` 2000 by default: lower it for runs of a few hundred steps); the EMA is validated and saved.
5. AMP (float16 autocast + GradScaler) on CUDA only.
6. The run folder (:mod:`detassign.yolo.runs`): ``out_dir`` itself when it holds no run yet, else ``out_dir2``,
   ``out_dir3`` ... (``exist_ok=True`` reuses it). Each epoch rewrites ``results.csv`` (one row per epoch,
   ultralytics' column names, then the epoch's assignment statistics ``assign/zero_pos_share``,
   ``assign/zero_pos_share_small`` (COCO-small GTs), ``assign/pos_per_gt`` and ``assign_time`` (seconds in
   the assigner; :func:`detassign.stats.tally_columns`), then whatever ``hooks`` return) and, when it
   validates, ``results.png``;
   ``weights/last.pt`` (full) every epoch and ``weights/best.pt`` (stripped: EMA weights in float16) on the best fitness
   ``0.1 * mAP50 + 0.9 * mAP50-95``; after the last epoch ``PR_curve.png``, ``F1_curve.png`` and
   ``confusion_matrix.png`` of the best model. Files are written to a temporary and ``os.replace``d.
7. ``resume=True`` (the run in ``out_dir``) or a path restores model, EMA, optimiser, GradScaler, epoch,
   position in the epoch, history, results rows and RNG states, and keeps writing into that run's folder; a
   larger ``epochs`` extends a finished run (the learning-rate schedule is then laid over the new length).
   Sampling is ``DistributedSampler``-style (seed + epoch) and augmentation uses
   ``default_rng((seed, epoch, index))``, so a resumed run repeats the uninterrupted run's steps exactly (on CPU
   with the same thread count: bit-identical losses). Checkpoints are data only (:mod:`.checkpoint`).
8. Multi-process: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU, NCCL on
   CUDA), each rank gets ``batch / world_size`` images, the loss is multiplied by the world size (DDP
   averages gradients), and only rank 0 validates, prints and writes files.

The steps are the methods of :class:`Trainer` (``build_data``, ``build_model``, ``restore``, ``train_epoch``,
``validate``, ``save_checkpoints``, ``finish``); :func:`train` runs them.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import numbers
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.dataset import DetectionDataset, collate
from ..data.readers import DataError, DetectionSet, read_dataset
from ..data.transforms import EvalTransform, TrainAugment
from .checkpoint import (CheckpointError, capture_rng_state, checkpoint_header, load_checkpoint,
                         model_from_checkpoint, plain, remove_stale_temporaries, restore_rng_state,
                         save_checkpoint_atomic, strip_checkpoint)
from ..stats import add_to_tally, new_tally, tally_columns
from .loss import DEFAULT_ASSIGNER
from .runs import (RESULTS_COLUMNS, RUN_FILES, next_run_dir, plot_confusion_matrix, plot_f1_curve, plot_pr_curve, plot_results,
                   write_atomic, write_results_csv)

__all__ = [
    "TrainConfig", "TrainResult", "TrainState", "Trainer", "EpochHook", "ModelEMA", "train", "build_model",
    "build_optimizer", "lr_factor", "load_checkpoint", "model_from_checkpoint", "save_checkpoint_atomic",
    "CheckpointError", "validate", "predict_dataset", "ValidationPass", "run_validation", "resolve_assigner",
    "resolve_val_size", "recalibrate_batchnorm", "ASSIGNER_PRESETS", "DEFAULT_EPOCHS",
]

# Short names accepted for ``TrainConfig.assigner``; ultralytics' TAL settings are the default.
ASSIGNER_PRESETS: Dict[str, Dict[str, Any]] = {
    "tal": DEFAULT_ASSIGNER,   # ultralytics' training TAL, defined once in detassign.yolo.loss
    "atss": dict(type="ATSSAssigner", topk=9),
    "simota": dict(type="SimOTAAssigner"),
    "dsl": dict(type="DynamicSoftLabelAssigner"),
}
ASSIGNER_PRESETS["taskaligned"] = ASSIGNER_PRESETS["tal"]
ASSIGNER_PRESETS["dynamicsoftlabel"] = ASSIGNER_PRESETS["dsl"]

DEFAULT_EPOCHS = 100  # TrainConfig.epochs=None: this for a new run, the run's own count on resume

# Fields a resumed run takes from the call rather than from the checkpoint's config (how to run, not what).
_RUN_CONTROL_FIELDS = ("max_steps", "resume", "progress", "verbose", "device", "workers", "save", "plots", "exist_ok")

# Checks of TrainConfig values: counts are ints (not bools), numbers are finite and inside their range.
_INT_MINIMA = {"batch": 1, "nominal_batch": 1, "img_size": 1, "tile": 1, "val_interval": 1, "val_batch": 1,
               "max_det": 1, "tile_overlap": 0, "workers": 0, "min_warmup_iters": 0, "seed": 0}
_OPTIONAL_INT_MINIMA = {"epochs": 1, "crop": 1, "max_steps": 1}
_FLOAT_RANGES = {  # name: (low, high, low included)
    "lr0": (0.0, math.inf, False), "lrf": (0.0, math.inf, False), "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, math.inf, True), "warmup_epochs": (0.0, math.inf, True),
    "warmup_momentum": (0.0, 1.0, True), "warmup_bias_lr": (0.0, math.inf, True),
    "clip_grad": (0.0, math.inf, False), "ema_decay": (0.0, 1.0, True), "ema_tau": (0.0, math.inf, False),
    "conf_thres": (0.0, 1.0, True), "iou_thres": (0.0, 1.0, False), "min_visible": (0.0, 1.0, True),
    "color": (0.0, math.inf, True),
}
_BOOL_FIELDS = ("augment", "drop_last", "rot90", "cos_lr", "amp", "deterministic", "exist_ok", "save", "plots",
                "progress", "verbose")


@dataclass
class TrainConfig:
    """Everything a run needs; JSON-serialisable except the optional in-memory ``train_set`` / ``val_set``.

    Values are checked on construction (a count that is not an int >= 1, a NaN learning rate, a string
    where a number belongs raise ``ValueError`` naming the field). Build one from a mapping of field names
    with :meth:`from_dict`, which names unknown keys.
    """

    # data
    data: Optional[str] = None  # None or "neon": NEON tree crowns; else a COCO json / VOC folder / YOLO folder / spec
    data_format: Optional[str] = None  # coco | voc | yolo (None: read from a YAML/JSON spec)
    val_data: Optional[str] = None  # defaults to the spec's 'val' split; None with a plain path: no validation
    class_names: Optional[List[str]] = None
    images: Optional[str] = None  # image folder of a COCO json / VOC set, when not where the layout puts it
    strict: bool = False  # fail on a corrupt label file or unreadable image instead of skipping it
    train_set: Optional[DetectionSet] = field(default=None, repr=False)
    val_set: Optional[DetectionSet] = field(default=None, repr=False)
    img_size: int = 640  # training input (square, letterboxed)
    crop: Optional[int] = None  # random crop side before letterboxing (None: whole image)
    val_img_size: Union[int, str, None] = "auto"  # None: native size padded to 32; "auto": native for NEON, else img_size
    tile: int = 416  # NEON training tiles
    tile_overlap: int = 64
    min_visible: float = 0.3  # keep a box cut by a tile/crop border if this fraction of it is visible
    augment: bool = True
    drop_last: bool = False  # skip an epoch's incomplete last batch (a 1-image batch makes BatchNorm noisy)
    rot90: bool = True  # 90-degree turns (right for nadir imagery; turn off for street scenes)
    color: float = 0.3
    # model and loss
    scale: str = "n"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None  # initialise from a checkpoint (its EMA weights)
    assigner: Union[None, str, Dict[str, Any]] = None  # None: TAL(topk 10, alpha 0.5, beta 6)
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    # optimisation
    epochs: Optional[int] = None  # None: DEFAULT_EPOCHS (100) for a new run, the run's own count on resume
    batch: int = 16
    nominal_batch: int = 64
    optimizer: str = "auto"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    min_warmup_iters: int = 100
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    cos_lr: bool = False
    clip_grad: float = 10.0
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    amp: bool = True
    max_steps: Optional[int] = None  # stop (and checkpoint) after this many optimiser steps in total
    # evaluation
    val_interval: int = 1
    val_batch: int = 1
    conf_thres: float = 0.001
    iou_thres: float = 0.7
    max_det: int = 300
    # runtime
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    deterministic: bool = True
    out_dir: str = "runs/train"  # a folder that already holds a run is not reused: out_dir2, out_dir3, ...
    exist_ok: bool = False  # write into out_dir even when it holds a run (its files are replaced)
    resume: Union[bool, str] = False  # True: the run in out_dir; or a run folder / last.pt path
    save: bool = True
    plots: bool = True
    progress: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        _check_config_values(self)

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "TrainConfig") -> "TrainConfig":
        """A config from a mapping of field names (a parsed YAML / JSON file, ``vars(namespace)`` filtered...).
        Unknown keys raise ``ValueError`` naming them (with the closest field name) and ``source``."""
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=1)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise ValueError(f"{source}: unknown TrainConfig field(s) {', '.join(hints)}")
        return cls(**dict(values))

    @classmethod
    def from_namespace(cls, namespace: Any, base: Optional[Mapping[str, Any]] = None,
                       source: str = "TrainConfig") -> "TrainConfig":
        """``base`` (e.g. a config file's fields) overridden by every attribute of ``namespace`` (an argparse
        result) that is named like a field and is not None (None: the option was not given)."""
        values = dict(base or {})
        values.update({name: getattr(namespace, name) for name in cls.field_names()
                       if getattr(namespace, name, None) is not None})
        return cls.from_dict(values, source)  # unknown keys can only come from ``base``

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly copy (in-memory datasets dropped)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("train_set", "val_set")}


def _check_config_values(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first TrainConfig field whose value is of the wrong kind or out of range."""
    def is_int(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    for name, minimum in {**_INT_MINIMA, **_OPTIONAL_INT_MINIMA}.items():
        value = getattr(cfg, name)
        optional = name in _OPTIONAL_INT_MINIMA
        if not ((optional and value is None) or (is_int(value) and value >= minimum)):
            raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}{' or None' if optional else ''}, "
                             f"got {value!r}")
    for name, (low, high, low_included) in _FLOAT_RANGES.items():
        value = getattr(cfg, name)
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        inside = number and (value >= low if low_included else value > low) and value <= high
        if not (inside and math.isfinite(value)):
            bracket = "[" if low_included else "("
            top = f"{high:g}]" if math.isfinite(high) else "inf)"
            raise ValueError(f"TrainConfig.{name} must be a finite number in {bracket}{low:g}, {top}, got {value!r}")
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"TrainConfig.{name} must be True or False, got {getattr(cfg, name)!r}")
    size = cfg.val_img_size
    if not (size is None or size == "auto" or (is_int(size) and size >= 1)):
        raise ValueError(f"TrainConfig.val_img_size must be an int >= 1, None (native) or 'auto', got {size!r}")
    if not isinstance(cfg.resume, (bool, str, os.PathLike)):
        raise ValueError(f"TrainConfig.resume must be True, False or a path, got {cfg.resume!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``metrics``: the last validation's; ``best_metrics`` / ``best_epoch``: those of ``best.pt`` (``map50``,
    ``map``, ``precision``, ``recall``); ``results``: the results.csv rows; ``history``: per-epoch lists
    (``epoch``, ``box``, ``cls``, ``dfl``, ``map50``, ``map``; NaN where not validated) and per-step lists
    (``step_loss`` [box, cls, dfl], ``lr`` of the first parameter group at each optimiser step).
    """

    metrics: Dict[str, float]
    best_fitness: float
    history: Dict[str, list]
    last: Optional[str]
    best: Optional[str]
    model: nn.Module  # the EMA model (eval mode)
    class_names: List[str]
    epochs_run: int
    steps: int
    seconds: float
    run_dir: Optional[str] = None
    best_epoch: int = 0
    best_metrics: Dict[str, float] = field(default_factory=dict)
    results: List[Dict[str, float]] = field(default_factory=list)
# --------------------------------------------------------------------------- small pure pieces


def lr_factor(epoch: float, epochs: int, lrf: float, cosine: bool = False) -> float:
    """Multiplier of lr0 at ``epoch``: linear 1 -> ``lrf`` over ``epochs``, or a cosine (one-cycle) ramp."""
    if cosine:
        return ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return max(1 - epoch / epochs, 0) * (1.0 - lrf) + lrf


def resolve_val_size(val_img_size, img_size: int, native_default: bool) -> Optional[int]:
    """``"auto"`` -> None (native resolution) for NEON-like data whose objects keep their pixel size, else
    ``img_size``; an int or None is returned as it is."""
    if val_img_size == "auto":
        return None if native_default else int(img_size)
    return None if val_img_size is None else int(val_img_size)


def resolve_assigner(assigner: Union[None, str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """None -> None (DetectionLoss' default TAL); a preset name or registry class name -> config dict."""
    if assigner is None or isinstance(assigner, dict):
        return copy.deepcopy(assigner)
    key = str(assigner).lower().replace("_", "").replace("-", "")
    if key in ASSIGNER_PRESETS:
        return dict(ASSIGNER_PRESETS[key])
    for preset in ASSIGNER_PRESETS.values():
        if preset["type"].lower() == key:
            return dict(preset)
    return dict(type=str(assigner))


def param_groups(model: nn.Module) -> Tuple[list, list, list]:
    """(weights with decay, norm weights, biases): ultralytics' split, by module type and name."""
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    decay, norm, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                norm.append(p)
            else:
                decay.append(p)
    return decay, norm, bias


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    num_classes: int, iterations: float):
    """Return (optimizer, name, lr, momentum). "auto": AdamW(lr_fit, 0.9) if iterations <= 10000 else SGD(0.01, 0.9).

    Group 0 carries ``weight_decay``; norm weights and biases get none. Each group records ``param_group``.
    """
    if name.lower() == "auto":
        lr_fit = round(0.002 * 5 / (4 + num_classes), 6)
        name, lr, momentum = ("SGD", 0.01, 0.9) if iterations > 10000 else ("AdamW", lr_fit, 0.9)
    decay, norm, bias = param_groups(model)
    key = name.lower()
    if key in ("adam", "adamw"):
        cls = torch.optim.AdamW if key == "adamw" else torch.optim.Adam
        opt = cls([{"params": bias, "param_group": "bias"}], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif key == "sgd":
        opt = torch.optim.SGD([{"params": bias, "param_group": "bias"}], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"optimizer must be 'auto', 'SGD', 'Adam' or 'AdamW', got {name!r}")
    opt.add_param_group({"params": decay, "weight_decay": weight_decay, "param_group": "weight"})
    opt.add_param_group({"params": norm, "weight_decay": 0.0, "param_group": "norm"})
    return opt, name, lr, momentum


class ModelEMA:
    """Exponential moving average of a model's state (parameters and float buffers).

    decay(updates) = ``decay * (1 - exp(-updates / tau))``: near 0 at first so early weights are not frozen in.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(_unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        model_state = _unwrap(model).state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(model_state[name].detach(), alpha=1 - decay)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.ema.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- model, loss, data


def build_model(scale: str, num_classes: int, **kwargs) -> nn.Module:
    from . import YOLO11

    return YOLO11(scale=scale, num_classes=num_classes, **kwargs)


def _build_loss(cfg: TrainConfig, model: nn.Module, num_classes: int):
    from .loss import DetectionLoss

    strides = tuple(int(s) for s in torch.as_tensor(_unwrap(model).stride).tolist())
    return DetectionLoss(num_classes, strides=strides, assigner=resolve_assigner(cfg.assigner), **cfg.loss_kwargs)


def _load_sets(cfg: TrainConfig) -> Tuple[DetectionSet, Optional[DetectionSet], bool]:
    """(train set, val set or None, is_neon)."""
    if cfg.train_set is not None:
        return cfg.train_set, cfg.val_set, False
    if cfg.data is None or str(cfg.data).lower() == "neon":
        from ..data.neon import load_neon

        return (load_neon("train", cfg.tile, cfg.tile_overlap, cfg.min_visible), load_neon("val"), True)
    # --images names the training split's folder; the val split's images are found by its own layout
    train_set = read_dataset(cfg.data, cfg.data_format, cfg.class_names, split="train", images=cfg.images,
                             strict=cfg.strict)
    val_set = None
    if cfg.val_data is not None:
        val_set = read_dataset(cfg.val_data, cfg.data_format, train_set.class_names, split="val", strict=cfg.strict)
    else:
        try:
            val_set = read_dataset(cfg.data, cfg.data_format, train_set.class_names, split="val", strict=cfg.strict)
        except DataError as err:  # no 'val' split in this layout: train without validation, and say why
            warnings.warn(f"no validation set ({err}); training without validation", stacklevel=2)
            val_set = None
        if val_set is not None and (val_set.split is None or train_set.split is None):
            val_set = None  # a layout without splits returns the training images again: never validate on them
    return train_set, val_set, False


def _train_transform(cfg: TrainConfig):
    if not cfg.augment:
        return EvalTransform(cfg.img_size)
    return TrainAugment(size=cfg.img_size, crop=cfg.crop, rot90=cfg.rot90, color=cfg.color,
                        min_visible=cfg.min_visible)


class _SkipSampler(torch.utils.data.Sampler):
    """DistributedSampler-style order (seed + epoch, this rank's share) with the first ``skip`` items dropped,
    so a resumed epoch continues where the killed one stopped."""

    def __init__(self, size: int, rank: int, world: int, seed: int, shuffle: bool = True):
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> List[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - self.size]  # pad so every rank has the same count
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return max(math.ceil(self.size / self.world) - self.skip, 0)


# --------------------------------------------------------------------------- evaluation


def _images_to_float(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


def _targets_on(batch: Dict[str, Any], device) -> Dict[str, torch.Tensor]:
    """The loss' padded targets from a collated batch: labels [B, M], bboxes [B, M, 4] xyxy px, mask [B, M]."""
    return {"labels": batch["gt_labels"].to(device), "bboxes": batch["gt_bboxes"].to(device),
            "mask": batch["gt_mask"].to(device)}


@dataclass
class ValidationPass:
    """One pass of a model over a loader: per-image predictions and ground truths in original pixels
    (see :func:`predict_dataset`) and, when a loss was given, its mean (box, cls, dfl) over the batches."""

    predictions: List[Dict[str, Any]]
    ground_truths: List[Dict[str, Any]]
    losses: Optional[List[float]] = None


@torch.no_grad()
def run_validation(model: nn.Module, loader, device, conf_thres: float = 0.001, iou_thres: float = 0.7,
                   max_det: int = 300, progress: bool = False, loss_fn=None) -> ValidationPass:
    """Run ``model`` (eval mode) over ``loader``; with ``loss_fn`` also the validation loss of its raw maps
    (the model's ``forward_raw``, decoded here as its eval-mode ``forward`` does)."""
    from .predict import decode, nms

    was_training = model.training
    model.eval()
    predictions, ground_truths, loss_sum, batches = [], [], torch.zeros(3), 0
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc="val", leave=False, dynamic_ncols=True)
    for batch in iterator:
        images = _images_to_float(batch["images"], device)
        if loss_fn is None:
            out = model(images)
        else:
            raw = model.forward_raw(images)
            out = decode(raw, model.stride, model.reg_max, model.num_classes)
            _, items = loss_fn([f.float() for f in raw], _targets_on(batch, device))
            loss_sum += items.detach().float().cpu()
            batches += 1
        dets = nms(out.float(), conf_thres, iou_thres=iou_thres, max_det=max_det, multi_label=True)
        for i, det in enumerate(dets):
            info, mask, det = batch["infos"][i], batch["gt_mask"][i], det.detach().cpu()
            predictions.append({"boxes": info.to_original(det[:, :4]), "scores": det[:, 4],
                                "labels": det[:, 5].long(), "image_id": batch["image_ids"][i],
                                "name": batch["names"][i]})
            ground_truths.append({"boxes": info.to_original(batch["gt_bboxes"][i][mask]),
                                  "labels": batch["gt_labels"][i][mask], "image_id": batch["image_ids"][i],
                                  "name": batch["names"][i]})
    model.train(was_training)
    losses = (loss_sum / max(batches, 1)).tolist() if loss_fn is not None else None
    return ValidationPass(predictions, ground_truths, losses)


def predict_dataset(model: nn.Module, loader, device, conf_thres: float = 0.001, iou_thres: float = 0.7,
                    max_det: int = 300, progress: bool = False) -> Tuple[List[Dict[str, torch.Tensor]], list]:
    """Run ``model`` (eval mode) over ``loader``; boxes mapped back to original pixels.

    Returns (predictions, ground truths): per image dicts with ``boxes`` [K, 4] xyxy, ``scores`` [K],
    ``labels`` [K] and ``image_id`` / ``name``; ground truths have ``boxes`` and ``labels``.
    """
    result = run_validation(model, loader, device, conf_thres, iou_thres, max_det, progress)
    return result.predictions, result.ground_truths


def validate(model: nn.Module, loader, device, conf_thres: float = 0.001, iou_thres: float = 0.7,
             max_det: int = 300, progress: bool = False) -> Dict[str, float]:
    """mAP50 / mAP50-95 (COCO protocol, ``max_dets = max(max_det, 300)``) of ``model`` on ``loader``."""
    from .evaluate import coco_evaluate

    preds, gts = predict_dataset(model, loader, device, conf_thres, iou_thres, max_det, progress)
    stats = coco_evaluate(preds, gts, max_dets=max(max_det, 300), num_classes=getattr(model, "num_classes", None))
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device, num_batches: int) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over ``num_batches`` training batches
    (detectron2's PreciseBN). In short runs with a high learning rate the momentum-0.03 running averages
    lag the weights, and the eval-mode model scores far below the train-mode one."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for i, batch in enumerate(loader):
        if i >= num_batches:
            break
        model(_images_to_float(batch["images"], device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def fitness(metrics: Mapping[str, float]) -> float:
    return 0.1 * metrics.get("map50", 0.0) + 0.9 * metrics.get("map", 0.0)


# --------------------------------------------------------------------------- distributed


def _dist_info(cfg: TrainConfig) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if cfg.device == "auto":
        cuda = torch.cuda.is_available()
        device = torch.device((f"cuda:{local_rank}" if world > 1 else "cuda") if cuda else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --------------------------------------------------------------------------- schedule


def _set_lrs(optimizer, iteration: int, warmup_iterations: int, epoch: int, cfg: TrainConfig, lr0: float,
             warmup_bias_lr: float, momentum: float) -> None:
    """Warmup interpolation for ``iteration`` (< ``warmup_iterations``), else the per-epoch schedule."""
    factor = lr_factor(epoch, cfg.epochs, cfg.lrf, cfg.cos_lr)
    for group in optimizer.param_groups:
        target = lr0 * factor
        if iteration < warmup_iterations:
            start = warmup_bias_lr if group["param_group"] == "bias" else 0.0
            group["lr"] = float(np.interp(iteration, [0, warmup_iterations], [start, target]))
            warm = float(np.interp(iteration, [0, warmup_iterations], [cfg.warmup_momentum, momentum]))
            if "momentum" in group:
                group["momentum"] = warm
            elif "betas" in group:
                group["betas"] = (warm, group["betas"][1])
        else:
            group["lr"] = target


def _step(model, optimizer, scaler, clip: float) -> None:
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- resume and run folder


def _resume_source(cfg: TrainConfig) -> Optional[Path]:
    """The last.pt to resume from: ``resume`` as a path (a file, or a run folder), or the run in ``out_dir``."""
    if cfg.resume is False:
        return None
    path = Path(cfg.out_dir) if cfg.resume is True else Path(cfg.resume)
    if path.is_dir():
        candidates = [path / "weights" / "last.pt", path / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {str(path)!r} (train once without resume first)")
    return path


def _run_folder_of(checkpoint: Path) -> Path:
    """``runs/x`` for ``runs/x/weights/last.pt`` (and for a flat ``runs/x/last.pt``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "weights" else checkpoint.parent


def _config_for_resume(cfg: TrainConfig, ckpt: Dict[str, Any], source: Path, run_dir: Path) -> TrainConfig:
    """The checkpoint's config, with this call's run-control fields, its ``epochs`` when given, and the run's
    own folder as ``out_dir``."""
    saved = dict(ckpt["config"])
    for key in _RUN_CONTROL_FIELDS:
        saved[key] = getattr(cfg, key)
    if cfg.epochs is not None:
        saved["epochs"] = cfg.epochs
    saved["out_dir"] = str(run_dir)
    known = set(TrainConfig.field_names())
    try:
        new = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError) as err:
        raise CheckpointError(source, f"its config cannot be used: {err}") from err
    new.train_set, new.val_set = cfg.train_set, cfg.val_set
    return new


# --------------------------------------------------------------------------- the trainer

EpochHook = Callable[["Trainer"], Mapping[str, float]]


def _new_partial() -> Dict[str, Any]:
    """Running sums of the epoch in progress (kept in last.pt so a mid-epoch resume completes the means)."""
    return {"loss_sum": [0.0, 0.0, 0.0], "batches": 0, "seconds": 0.0, "assignment": new_tally()}


@dataclass
class TrainState:
    """What a run has done and measured; saved in last.pt and restored by ``resume``."""

    epoch: int = 0  # epochs completed
    skip: int = 0  # batches of epoch ``epoch`` already trained (a checkpoint taken mid-epoch)
    updates: int = 0  # optimiser steps
    best_fitness: float = -1.0
    best_epoch: int = 0  # 0: none yet
    history: Dict[str, list] = field(default_factory=lambda: {"step_loss": [], "lr": []})
    results: List[Dict[str, Any]] = field(default_factory=list)  # the results.csv rows
    partial: Dict[str, Any] = field(default_factory=_new_partial)

    def to_checkpoint(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> "TrainState":
        return cls(**{f.name: ckpt[f.name] for f in dataclasses.fields(cls)})


class Trainer:
    """One training run with its state in named attributes; :meth:`run` calls the steps in order.

    ``hooks``: callables ``hook(trainer) -> {column: value}`` run at the end of every epoch (after
    validation, on every rank); their values become extra results.csv columns (e.g. assignment statistics
    read from ``trainer.loss_fn``, the training loss; validation uses its own ``val_loss_fn``). They may not
    reuse a standard column name.
    """

    def __init__(self, config: TrainConfig, hooks: Sequence[EpochHook] = ()):
        self.hooks = list(hooks)
        self.rank, self.world, self.device = _dist_info(config)
        self.is_main = self.rank == 0
        self.resume_from = _resume_source(config)
        self.checkpoint = load_checkpoint(self.resume_from) if self.resume_from is not None else None
        if self.checkpoint is not None:
            self.run_dir = _run_folder_of(self.resume_from)
            config = _config_for_resume(config, self.checkpoint, self.resume_from, self.run_dir)
        else:
            self.run_dir = next_run_dir(config.out_dir, config.exist_ok)
            config = dataclasses.replace(config, out_dir=str(self.run_dir))
        if config.epochs is None:
            config = dataclasses.replace(config, epochs=DEFAULT_EPOCHS)
        self.config = config
        if self.checkpoint is not None and self.checkpoint["epoch"] >= config.epochs:
            done = self.checkpoint["epoch"]
            raise ValueError(f"resume: the run in {self.run_dir} already finished {done} epoch(s); pass a larger "
                             f"epochs (e.g. epochs={done + 10}) to train it further")
        self.weights_dir = self.run_dir / "weights"
        self.state = TrainState()
        self.stopped = False  # max_steps reached
        self.metrics: Dict[str, float] = {}  # of the last validation
        self.best_report = None  # the evaluation of the best epoch, when it happened in this process
        self.last_path: Optional[Path] = None
        self.best_path: Optional[Path] = None
        _barrier(self.world)  # every rank chose the run folder before rank 0 creates it

    # ------------------------------------------------------------------ steps

    def build_data(self) -> None:
        """Datasets, the (distributed, resumable) sampler and the loaders; batches per epoch."""
        cfg = self.config
        self.train_set, self.val_set, self.is_neon = _load_sets(cfg)
        self.class_names = list(self.train_set.class_names)
        self.batch_per_rank = max(cfg.batch // self.world, 1)
        self.dataset = DetectionDataset(self.train_set, _train_transform(cfg), seed=cfg.seed)
        self.sampler = _SkipSampler(len(self.dataset), self.rank, self.world, cfg.seed)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler,
                                                  collate_fn=collate, num_workers=cfg.workers,
                                                  pin_memory=self.device.type == "cuda")
        self.val_loader = None
        if self.val_set is not None and self.is_main:
            transform = EvalTransform(resolve_val_size(cfg.val_img_size, cfg.img_size, self.is_neon))
            self.val_loader = torch.utils.data.DataLoader(DetectionDataset(self.val_set, transform),
                                                          batch_size=cfg.val_batch, shuffle=False,
                                                          collate_fn=collate, num_workers=cfg.workers)
        images_per_rank = math.ceil(len(self.dataset) / self.world)
        if cfg.drop_last and images_per_rank >= self.batch_per_rank:
            self.batches_per_epoch = images_per_rank // self.batch_per_rank
        else:
            self.batches_per_epoch = math.ceil(images_per_rank / self.batch_per_rank)

    def build_model(self) -> None:
        """Model (optionally initialised from ``weights``), loss, optimiser, schedule constants, scaler, EMA."""
        cfg = self.config
        num_classes = len(self.class_names)
        self.arch = {"scale": cfg.scale, "num_classes": num_classes, "kwargs": dict(cfg.model_kwargs)}
        self.model = build_model(cfg.scale, num_classes, **cfg.model_kwargs).to(self.device)
        if cfg.weights and self.checkpoint is None:
            initial, _, _ = model_from_checkpoint(cfg.weights)
            try:
                self.model.load_state_dict(initial.state_dict())
            except RuntimeError as err:
                raise CheckpointError(cfg.weights, f"its weights ({initial.extra_repr()}) do not fit this run's "
                                                   f"YOLO11-{cfg.scale} with {num_classes} class(es)") from err
        self.loss_fn = _build_loss(cfg, self.model, num_classes)
        # a second instance for validation, so what the training loss records (hooks read it) sees training only
        self.val_loss_fn = _build_loss(cfg, self.model, num_classes)
        self.accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
        weight_decay = cfg.weight_decay * cfg.batch * self.accumulate / cfg.nominal_batch
        iterations = math.ceil(len(self.dataset) / max(cfg.batch, cfg.nominal_batch)) * cfg.epochs
        self.optimizer, self.optimizer_name, self.lr0, self.momentum = build_optimizer(
            self.model, cfg.optimizer, cfg.lr0, cfg.momentum, weight_decay, num_classes, iterations)
        self.warmup_bias_lr = 0.0 if cfg.optimizer.lower() == "auto" else cfg.warmup_bias_lr
        self.warmup_iterations = (max(round(cfg.warmup_epochs * self.batches_per_epoch), cfg.min_warmup_iters)
                                  if cfg.warmup_epochs > 0 else 0)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_tau)

    def restore(self) -> None:
        """Load model, EMA, optimiser, scaler, state and RNG states from the resume checkpoint (if any), then wrap
        the model in DDP when running multi-process."""
        if self.checkpoint is not None:
            ckpt = self.checkpoint
            try:
                self.model.load_state_dict(ckpt["model"])
                self.ema.load_state_dict(ckpt["ema"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
                self.scaler.load_state_dict(ckpt["scaler"])
                self.state = TrainState.from_checkpoint(ckpt)
                restore_rng_state(ckpt["rng"])
            except (RuntimeError, KeyError, TypeError, ValueError) as err:
                first_line = (str(err).splitlines() or [type(err).__name__])[0]
                raise CheckpointError(self.resume_from, f"cannot resume from it: {first_line}") from err
            self.metrics = dict(ckpt["metrics"])
        self.train_model = self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def prepare_run_dir(self) -> None:
        """Create the run folder, remove temporaries of killed saves, write config.json (rank 0, ``save``)."""
        if not (self.is_main and self.config.save):
            return
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.weights_dir)
        remove_stale_temporaries(self.run_dir, RUN_FILES)
        text = json.dumps(self.config.to_dict(), indent=2, default=str)
        write_atomic(self.run_dir / "config.json", text.encode())

    def train_step(self, batch: Dict[str, Any], epoch: int, index: int) -> bool:
        """Forward, loss, backward on one batch; an optimiser step (and EMA update) every ``accumulate`` batches
        and at the end of the epoch. Returns whether a step was taken."""
        cfg, state = self.config, self.state
        iteration = index + self.batches_per_epoch * epoch
        _set_lrs(self.optimizer, iteration, self.warmup_iterations, epoch, cfg, self.lr0, self.warmup_bias_lr,
                 self.momentum)
        images = _images_to_float(batch["images"], self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            feats = self.train_model(images)
        loss, items, assignment = self.loss_fn([f.float() for f in feats], _targets_on(batch, self.device),
                                               return_assignment=True)
        if self.world > 1:
            loss = loss * self.world  # DDP averages gradients over ranks; keep the single-process scale
        self.scaler.scale(loss).backward()
        items = [float(v) for v in items.detach().float().cpu().tolist()]
        state.partial["loss_sum"] = [s + v for s, v in zip(state.partial["loss_sum"], items)]
        state.partial["batches"] += 1
        state.partial["assignment"] = add_to_tally(state.partial.get("assignment"), assignment.stats(),
                                                   assignment.seconds)
        state.history["step_loss"].append(items)
        stepped = (index + 1) % self.accumulate == 0 or index == self.batches_per_epoch - 1
        if stepped:
            _step(self.train_model, self.optimizer, self.scaler, cfg.clip_grad)
            self.ema.update(self.model)
            state.updates += 1
            state.history["lr"].append(self.optimizer.param_groups[0]["lr"])
        return stepped

    def train_epoch(self, epoch: int) -> bool:
        """Train the batches of ``epoch`` not yet done; stops early when ``max_steps`` is reached (then a
        mid-epoch last.pt remembers the position). Returns whether the epoch was completed."""
        cfg, state = self.config, self.state
        self.train_model.train()
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, state.skip * self.batch_per_rank)
        batches = iter(self.loader)
        bar = range(state.skip, self.batches_per_epoch)
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(bar, total=self.batches_per_epoch, initial=state.skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=True)
        started = time.time()
        self.optimizer.zero_grad(set_to_none=True)
        completed = True
        for index in bar:
            batch = next(batches)
            stepped = self.train_step(batch, epoch, index)
            if hasattr(bar, "set_postfix"):
                box, cls, dfl = (s / state.partial["batches"] for s in state.partial["loss_sum"])
                bar.set_postfix(box=f"{box:.3f}", cls=f"{cls:.3f}", dfl=f"{dfl:.3f}",
                                gts=int(batch["gt_mask"].sum()), size=batch["images"].shape[-1])
            if stepped and cfg.max_steps is not None and state.updates >= cfg.max_steps:
                self.stopped = True
                completed = index == self.batches_per_epoch - 1
                state.skip = 0 if completed else index + 1
                break
        if hasattr(bar, "close"):
            bar.close()
        state.partial["seconds"] += time.time() - started
        if not completed and self.is_main and cfg.save:
            self.save_checkpoints(improved=False)
        return completed

    def validate(self, model: nn.Module) -> Tuple[Any, List[float]]:
        """Evaluate ``model`` on the validation loader -> (:class:`~detassign.yolo.evaluate.DetectionReport`,
        mean validation (box, cls, dfl) loss)."""
        from .evaluate import evaluate_detections

        cfg = self.config
        result = run_validation(model, self.val_loader, self.device, cfg.conf_thres, cfg.iou_thres, cfg.max_det,
                                loss_fn=self.val_loss_fn)
        report = evaluate_detections(result.predictions, result.ground_truths, self.class_names,
                                     max_dets=max(cfg.max_det, 300))
        return report, result.losses

    def end_epoch(self, epoch: int) -> None:
        """Close epoch ``epoch``: its results row (validating when due), best-so-far bookkeeping, files."""
        cfg, state = self.config, self.state
        partial = state.partial
        train_losses = [s / max(partial["batches"], 1) for s in partial["loss_sum"]]
        seconds = partial["seconds"]
        state.partial, state.skip, state.epoch = _new_partial(), 0, epoch + 1
        is_last = state.epoch == cfg.epochs or self.stopped
        report, val_losses = None, [math.nan] * 3
        if self.val_loader is not None and (state.epoch % cfg.val_interval == 0 or is_last):
            report, val_losses = self.validate(self.ema.ema)
            self.metrics = _report_metrics(report)
            if cfg.verbose:
                print(f"  val: P {self.metrics['precision']:.3f}  R {self.metrics['recall']:.3f}  "
                      f"mAP50 {self.metrics['map50']:.4f}  mAP50-95 {self.metrics['map']:.4f}", flush=True)
        row = self._results_row(state.epoch, train_losses, val_losses, report, seconds)
        row.update(tally_columns(partial.get("assignment")))  # GTs without a positive, positives per GT
        state.results.append(row)
        improved = report is not None and fitness(self.metrics) > state.best_fitness
        if improved:
            state.best_fitness, state.best_epoch = fitness(self.metrics), state.epoch
            self.best_report = report
        if self.is_main and cfg.save:
            # without a validation that improved (none at all, or never better than -1): best.pt = the last EMA
            self.save_checkpoints(improved=improved or (is_last and state.best_epoch == 0))
            write_results_csv(state.results, self.run_dir / "results.csv")
            if cfg.plots and (report is not None or is_last):  # a figure costs ~0.4 s: drawn when validated
                plot_results(state.results, self.run_dir / "results.png")
        _barrier(self.world)

    def _results_row(self, epoch: int, train_losses: Sequence[float], val_losses: Sequence[float], report,
                     seconds: float) -> Dict[str, Any]:
        weight_group = next(g for g in self.optimizer.param_groups if g["param_group"] == "weight")
        metrics = _report_metrics(report) if report is not None else {}
        row: Dict[str, Any] = {"epoch": epoch}
        row.update(zip(RESULTS_COLUMNS[1:4], map(float, train_losses)))
        row.update(zip(RESULTS_COLUMNS[4:7], map(float, val_losses)))
        for column, key in zip(RESULTS_COLUMNS[7:11], ("precision", "recall", "map50", "map")):
            row[column] = metrics.get(key, math.nan)
        row.update({"lr": float(weight_group["lr"]), "epoch_time": float(seconds)})
        for hook in self.hooks:
            extra = hook(self)
            clash = sorted(set(extra) & set(RESULTS_COLUMNS))
            if clash:
                raise ValueError(f"epoch hook {hook!r} returned standard results column(s) {clash}")
            row.update({str(k): float(v) for k, v in extra.items()})
        return row

    def _checkpoint(self) -> Dict[str, Any]:
        return checkpoint_header(
            "full", arch=self.arch, class_names=self.class_names, config=plain(self.config.to_dict()),
            metrics=plain(self.metrics), model=self.model.state_dict(), ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=capture_rng_state(),
            **self.state.to_checkpoint())

    def save_checkpoints(self, improved: bool) -> None:
        """weights/last.pt (full) and, when ``improved``, weights/best.pt (stripped)."""
        full = self._checkpoint()
        self.last_path = save_checkpoint_atomic(full, self.weights_dir / "last.pt")
        if improved:
            self.best_path = save_checkpoint_atomic(strip_checkpoint(full), self.weights_dir / "best.pt")

    def finish(self, seconds: float) -> TrainResult:
        """After the last epoch: the best model's curves and confusion matrix, the summary, the result."""
        state, cfg = self.state, self.config
        if self.best_path is None and (self.weights_dir / "best.pt").exists():
            self.best_path = self.weights_dir / "best.pt"
        finished = state.skip == 0 and state.epoch > 0
        if self.is_main and cfg.save and cfg.plots and finished and self.val_loader is not None:
            self._final_plots()
        best_row = next((r for r in state.results if r["epoch"] == state.best_epoch), None)
        best_metrics = {} if best_row is None else {
            key: best_row[column] for key, column in zip(("precision", "recall", "map50", "map"), RESULTS_COLUMNS[7:11])}
        if self.is_main and cfg.verbose and cfg.save:
            self._print_summary(best_metrics)
        return TrainResult(metrics=self.metrics, best_fitness=state.best_fitness, history=_history_lists(state),
                           last=str(self.last_path) if self.last_path else None,
                           best=str(self.best_path) if self.best_path else None, model=self.ema.ema,
                           class_names=self.class_names, epochs_run=len(state.results), steps=state.updates,
                           seconds=seconds, run_dir=str(self.run_dir), best_epoch=state.best_epoch,
                           best_metrics=best_metrics, results=state.results)

    def _final_plots(self) -> None:
        """PR / F1 curves and the confusion matrix of best.pt's model (re-evaluated when it was saved by an
        earlier process of a resumed run)."""
        report = self.best_report
        if report is None and self.best_path is not None:
            model, _, _ = model_from_checkpoint(self.best_path)
            report, _ = self.validate(model.to(self.device))
        if report is None:
            return
        names = self.class_names
        plot_pr_curve(report.curves, names, self.run_dir / "PR_curve.png")
        plot_f1_curve(report.curves, names, self.run_dir / "F1_curve.png")
        plot_confusion_matrix(report.confusion, names, self.run_dir / "confusion_matrix.png")

    def _print_summary(self, best_metrics: Mapping[str, float]) -> None:
        state = self.state
        if best_metrics and state.best_epoch:
            size = self.best_path.stat().st_size / 2**20 if self.best_path else 0.0
            print(f"best.pt: epoch {state.best_epoch}/{self.config.epochs} ({size:.1f} MB, EMA weights in float16): "
                  f"P {best_metrics['precision']:.3f}  R {best_metrics['recall']:.3f}  "
                  f"mAP50 {best_metrics['map50']:.4f}  mAP50-95 {best_metrics['map']:.4f}", flush=True)
        files = [p.relative_to(self.run_dir).as_posix() for p in sorted(self.run_dir.rglob("*")) if p.is_file()]
        print(f"run folder {self.run_dir}: {', '.join(files)}", flush=True)

    def announce(self) -> None:
        cfg = self.config
        if not (self.is_main and cfg.verbose):
            return
        if self.checkpoint is not None:
            print(f"resuming {self.resume_from} at epoch {self.state.epoch + 1}/{cfg.epochs}"
                  + (f", batch {self.state.skip + 1}" if self.state.skip else ""), flush=True)
            return
        parameters = sum(p.numel() for p in self.model.parameters())
        val_images = len(self.val_set) if self.val_set is not None else 0
        print(f"YOLO11-{cfg.scale}: {parameters:,} parameters, {len(self.class_names)} class(es) | train "
              f"{len(self.train_set)} images ({self.train_set.num_boxes} boxes), val {val_images} | "
              f"{self.optimizer_name} lr {self.lr0:g}, batch {cfg.batch} x accumulate {self.accumulate}, "
              f"{self.device}, {self.world} process(es) | {self.run_dir if cfg.save else 'not saving'}", flush=True)

    def run(self) -> TrainResult:
        """build_data, build_model, restore, then train_epoch / end_epoch per epoch, then finish."""
        started = time.time()
        seed_everything(self.config.seed, self.config.deterministic)
        self.build_data()
        self.build_model()
        self.restore()
        self.prepare_run_dir()
        self.announce()
        for epoch in range(self.state.epoch, self.config.epochs):
            if not self.train_epoch(epoch):
                break  # stopped mid-epoch by max_steps; last.pt holds the position
            self.end_epoch(epoch)
            if self.stopped:
                break
        return self.finish(time.time() - started)


def _report_metrics(report) -> Dict[str, float]:
    """Scalar metrics of a DetectionReport: the evaluator's (map, map50, ...) plus ultralytics' P and R."""
    metrics = {k: float(v) for k, v in report.metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(precision=float(report.curves["mean_precision"]), recall=float(report.curves["mean_recall"]))
    return metrics


def _history_lists(state: TrainState) -> Dict[str, list]:
    """Per-epoch lists from the results rows (``epoch``, ``box``, ``cls``, ``dfl``, ``map50``, ``map``) and the
    per-step lists (``step_loss``, ``lr``): the shape :func:`detassign.viz.plot_loss_curves` reads."""
    columns = {"epoch": "epoch", "box": "train/box_loss", "cls": "train/cls_loss", "dfl": "train/dfl_loss",
               "map50": "metrics/mAP50", "map": "metrics/mAP50-95"}
    lists = {key: [row[column] for row in state.results] for key, column in columns.items()}
    lists.update(step_loss=state.history["step_loss"], lr=state.history["lr"])
    return lists


def train(config: Optional[TrainConfig] = None, *, hooks: Sequence[EpochHook] = (), **overrides) -> TrainResult:
    """Train a YOLO11 as described in the module docstring; returns a :class:`TrainResult`.

    ``overrides`` replace fields of ``config`` (unknown names raise ``ValueError``); ``hooks`` add per-epoch
    results columns (see :class:`Trainer`).
    """
    config = config or TrainConfig()
    if overrides:
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        config = TrainConfig.from_dict({**values, **overrides}, source="train()")
    return Trainer(config, hooks).run()
