"""Training loop for :class:`detassign.yolo.YOLO11` (the ultralytics recipe, written out step by step).

    >>> from detassign.yolo.train import TrainConfig, train
    >>> result = train(TrainConfig(epochs=30, img_size=416, out_dir="runs/trees"))   # NEON tree crowns
    >>> result.metrics["map50"], result.best

Recipe (``REFERENCE_NOTES.md`` section 5):

1. Optimiser: ``optimizer="auto"`` picks AdamW with ``lr = 0.002 * 5 / (4 + nc)`` (momentum 0.9) for short
   runs (<= 10 000 optimiser steps at the nominal batch) and SGD(0.01, momentum 0.937, Nesterov) otherwise;
   "SGD" / "AdamW" / "Adam" are honoured with ``lr0``. Three parameter groups: conv/linear weights with
   decay, norm weights without, biases without. Weight decay is scaled by ``batch * accumulate / 64``.
2. Nominal batch 64: gradients of ``accumulate = max(round(64 / batch), 1)`` batches are summed before a step
   (and a step is always taken at the end of an epoch, so epochs are self-contained).
3. Warmup over ``max(warmup_epochs * batches_per_epoch, min_warmup_iters)`` iterations: bias lr falls from
   ``warmup_bias_lr`` (0 for "auto", as ultralytics), other lrs rise from 0, momentum rises from
   ``warmup_momentum`` to ``momentum``; then linear (or cosine) decay per epoch to ``lr0 * lrf``.
4. Grad-norm clip 10 after unscaling; EMA of weights and buffers with decay ``d * (1 - exp(-updates / tau))``
   (``tau`` 2000 by default: lower it for runs of a few hundred steps); the EMA is validated and saved.
5. AMP (float16 autocast + GradScaler) on CUDA only.
6. ``last.pt`` every epoch and ``best.pt`` on the best fitness ``0.1 * mAP50 + 0.9 * mAP50-95``, both written
   to a temporary file then ``os.replace``d (a killed run never leaves a torn checkpoint).
7. ``resume=True`` (or a path) restores model, EMA, optimiser, GradScaler, epoch, position in the epoch,
   loss history and RNG states. Sampling is ``DistributedSampler``-style (seed + epoch) and augmentation
   uses ``default_rng((seed, epoch, index))``, so a resumed run repeats the uninterrupted run's steps
   exactly (on CPU with the same thread count: bit-identical losses).
8. Multi-process: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU, NCCL on
   CUDA), each rank gets ``batch / world_size`` images, the loss is multiplied by the world size (DDP
   averages gradients), and only rank 0 validates, prints and writes files.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.dataset import DetectionDataset, collate
from ..data.readers import DetectionSet, read_dataset
from ..data.transforms import EvalTransform, TrainAugment

__all__ = [
    "TrainConfig", "TrainResult", "ModelEMA", "train", "build_model", "build_optimizer", "lr_factor",
    "load_checkpoint", "model_from_checkpoint", "save_checkpoint_atomic", "validate", "predict_dataset",
    "resolve_assigner", "resolve_val_size", "recalibrate_batchnorm", "ASSIGNER_PRESETS",
]

# Short names accepted for ``TrainConfig.assigner``; ultralytics' TAL settings are the default.
ASSIGNER_PRESETS: Dict[str, Dict[str, Any]] = {
    "tal": dict(type="TaskAlignedAssigner", topk=10, alpha=0.5, beta=6.0),
    "atss": dict(type="ATSSAssigner", topk=9),
    "simota": dict(type="SimOTAAssigner"),
    "dsl": dict(type="DynamicSoftLabelAssigner"),
}
ASSIGNER_PRESETS["taskaligned"] = ASSIGNER_PRESETS["tal"]
ASSIGNER_PRESETS["dynamicsoftlabel"] = ASSIGNER_PRESETS["dsl"]


@dataclass
class TrainConfig:
    """Everything a run needs; JSON-serialisable except the optional in-memory ``train_set`` / ``val_set``."""

    # data
    data: Optional[str] = None  # None or "neon": NEON tree crowns; else a COCO json / VOC folder / YOLO folder / spec
    data_format: Optional[str] = None  # coco | voc | yolo (None: read from a YAML/JSON spec)
    val_data: Optional[str] = None  # defaults to the spec's 'val' split; None with a plain path: no validation
    class_names: Optional[List[str]] = None
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
    epochs: int = 100
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
    out_dir: str = "runs/train"
    resume: Union[bool, str] = False
    save: bool = True
    plots: bool = True
    progress: bool = True
    verbose: bool = True

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly copy (in-memory datasets dropped)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("train_set", "val_set")}


@dataclass
class TrainResult:
    """What :func:`train` returns."""

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
        d = self.current_decay()
        msd = _unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.ema.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint_atomic(obj: Dict[str, Any], path: Union[str, Path]) -> Path:
    """``torch.save`` to ``<path>.tmp`` then ``os.replace``: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def model_from_checkpoint(path: Union[str, Path], map_location="cpu", use_ema: bool = True):
    """Rebuild the model saved by :func:`train` -> (model in eval mode, class names, checkpoint dict)."""
    ckpt = load_checkpoint(path, map_location)
    arch = ckpt["arch"]
    model = build_model(arch["scale"], arch["num_classes"], **arch.get("kwargs", {}))
    state = ckpt["ema"]["model"] if use_ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    return model.eval(), list(ckpt["class_names"]), ckpt


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
    train_set = read_dataset(cfg.data, cfg.data_format, cfg.class_names, split="train")
    val_set = None
    if cfg.val_data is not None:
        val_set = read_dataset(cfg.val_data, cfg.data_format, train_set.class_names, split="val")
    elif cfg.data_format is None:
        try:
            val_set = read_dataset(cfg.data, None, train_set.class_names, split="val")
        except Exception:  # a spec without a 'val' split: train without validation
            val_set = None
    return train_set, val_set, False


def _train_transform(cfg: TrainConfig):
    if not cfg.augment:
        return EvalTransform(cfg.img_size)
    return TrainAugment(size=cfg.img_size, crop=cfg.crop, rot90=cfg.rot90, color=cfg.color,
                        min_visible=cfg.min_visible)


class _SkipSampler(torch.utils.data.Sampler):
    """DistributedSampler-style order (seed + epoch, this rank's share) with the first ``skip`` items dropped,
    so a resumed epoch continues where the killed one stopped."""

    def __init__(self, n: int, rank: int, world: int, seed: int, shuffle: bool = True):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]  # pad so every rank has the same count
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return max(math.ceil(self.n / self.world) - self.skip, 0)


# --------------------------------------------------------------------------- evaluation


def _images_to_float(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def predict_dataset(model: nn.Module, loader, device, conf_thres: float = 0.001, iou_thres: float = 0.7,
                    max_det: int = 300, progress: bool = False) -> Tuple[List[Dict[str, torch.Tensor]], list]:
    """Run ``model`` (eval mode) over ``loader``; boxes mapped back to original pixels.

    Returns (predictions, ground truths): per image dicts with ``boxes`` [K, 4] xyxy, ``scores`` [K],
    ``labels`` [K] and ``image_id`` / ``name``; ground truths have ``boxes`` and ``labels``.
    """
    from .predict import nms

    was_training = model.training
    model.eval()
    preds, gts = [], []
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="val", leave=False, dynamic_ncols=True)
    for batch in it:
        out = model(_images_to_float(batch["images"], device))
        dets = nms(out.float(), conf_thres, iou_thres=iou_thres, max_det=max_det, multi_label=True)
        for i, det in enumerate(dets):
            info = batch["infos"][i]
            det = det.detach().cpu()
            mask = batch["gt_mask"][i]
            preds.append({"boxes": info.to_original(det[:, :4]), "scores": det[:, 4],
                          "labels": det[:, 5].long(), "image_id": batch["image_ids"][i], "name": batch["names"][i]})
            gts.append({"boxes": info.to_original(batch["gt_bboxes"][i][mask]), "labels": batch["gt_labels"][i][mask],
                        "image_id": batch["image_ids"][i], "name": batch["names"][i]})
    model.train(was_training)
    return preds, gts


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


def fitness(metrics: Dict[str, float]) -> float:
    return 0.1 * metrics.get("map50", 0.0) + 0.9 * metrics.get("map", 0.0)


# --------------------------------------------------------------------------- distributed


def _dist_info(cfg: TrainConfig) -> Tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu") if world > 1 else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, local, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --------------------------------------------------------------------------- the loop


def _resume_source(cfg: TrainConfig) -> Optional[Path]:
    if not cfg.resume:
        return None
    path = Path(cfg.resume) if isinstance(cfg.resume, str) else Path(cfg.out_dir) / "last.pt"
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {str(path)!r} (train once without --resume first)")
    return path


def _config_for_resume(cfg: TrainConfig, ckpt: Dict[str, Any]) -> TrainConfig:
    """The checkpoint's config, with this call's run-control fields (max_steps, progress, out_dir...) kept."""
    saved = dict(ckpt["config"])
    for key in ("max_steps", "resume", "progress", "verbose", "out_dir", "device", "workers", "save", "plots"):
        saved[key] = getattr(cfg, key)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    new = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    new.train_set, new.val_set = cfg.train_set, cfg.val_set
    return new


def _set_lrs(optimizer, ni: int, nw: int, epoch: int, cfg: TrainConfig, lr0: float, warmup_bias_lr: float,
             momentum: float) -> None:
    """Warmup interpolation for iteration ``ni`` (< nw), else the per-epoch schedule."""
    factor = lr_factor(epoch, cfg.epochs, cfg.lrf, cfg.cos_lr)
    for g in optimizer.param_groups:
        target = lr0 * factor
        if ni < nw:
            start = warmup_bias_lr if g["param_group"] == "bias" else 0.0
            g["lr"] = float(np.interp(ni, [0, nw], [start, target]))
            m = float(np.interp(ni, [0, nw], [cfg.warmup_momentum, momentum]))
            if "momentum" in g:
                g["momentum"] = m
            elif "betas" in g:
                g["betas"] = (m, g["betas"][1])
        else:
            g["lr"] = target


def _step(model, optimizer, scaler, clip: float) -> None:
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train(config: Optional[TrainConfig] = None, **overrides) -> TrainResult:
    """Train a YOLO11 as described in the module docstring; returns a :class:`TrainResult`."""
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    rank, world, _, device = _dist_info(cfg)
    main = rank == 0
    resume_path = _resume_source(cfg)
    ckpt = load_checkpoint(resume_path) if resume_path is not None else None
    if ckpt is not None:
        cfg = _config_for_resume(cfg, ckpt)
    seed_everything(cfg.seed, cfg.deterministic)
    t_start = time.time()

    train_set, val_set, is_neon = _load_sets(cfg)
    class_names = list(train_set.class_names)
    nc = len(class_names)
    arch = {"scale": cfg.scale, "num_classes": nc, "kwargs": dict(cfg.model_kwargs)}
    model = build_model(cfg.scale, nc, **cfg.model_kwargs).to(device)
    if cfg.weights and ckpt is None:
        init, _, _ = model_from_checkpoint(cfg.weights)
        model.load_state_dict(init.state_dict())
    loss_fn = _build_loss(cfg, model, nc)

    per_rank_batch = max(cfg.batch // world, 1)
    dataset = DetectionDataset(train_set, _train_transform(cfg), seed=cfg.seed)
    sampler = _SkipSampler(len(dataset), rank, world, cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda")
    val_loader = None
    if val_set is not None and main:
        val_tf = EvalTransform(resolve_val_size(cfg.val_img_size, cfg.img_size, is_neon))
        val_loader = torch.utils.data.DataLoader(DetectionDataset(val_set, val_tf), batch_size=cfg.val_batch,
                                                 shuffle=False, collate_fn=collate, num_workers=cfg.workers)

    per_rank_images = math.ceil(len(dataset) / world)
    nb = per_rank_images // per_rank_batch if cfg.drop_last and per_rank_images >= per_rank_batch else \
        math.ceil(per_rank_images / per_rank_batch)
    accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
    weight_decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nominal_batch
    iterations = math.ceil(len(dataset) / max(cfg.batch, cfg.nominal_batch)) * cfg.epochs
    optimizer, opt_name, lr0, momentum = build_optimizer(model, cfg.optimizer, cfg.lr0, cfg.momentum,
                                                         weight_decay, nc, iterations)
    warmup_bias_lr = 0.0 if cfg.optimizer.lower() == "auto" else cfg.warmup_bias_lr
    nw = max(round(cfg.warmup_epochs * nb), cfg.min_warmup_iters) if cfg.warmup_epochs > 0 else 0
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)

    start_epoch, skip, updates, best_fitness = 0, 0, 0, -1.0
    history: Dict[str, list] = {"epoch": [], "box": [], "cls": [], "dfl": [], "map50": [], "map": [],
                                "step_loss": [], "lr": []}
    partial = {"sum": [0.0, 0.0, 0.0], "count": 0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, skip, updates = ckpt["epoch"], ckpt["skip"], ckpt["updates"]
        best_fitness, history, partial = ckpt["best_fitness"], ckpt["history"], ckpt["partial"]
        _set_rng_state(ckpt["rng"])

    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    out_dir = Path(cfg.out_dir)
    if main and cfg.save:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    if main and cfg.verbose and ckpt is None:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"YOLO11-{cfg.scale}: {n_params:,} parameters, {nc} class(es) | train {len(train_set)} images "
              f"({train_set.num_boxes} boxes), val {len(val_set) if val_set is not None else 0} | {opt_name} "
              f"lr {lr0:g}, batch {cfg.batch} x accumulate {accumulate}, {device}, {world} process(es)", flush=True)

    def snapshot(epoch: int, next_skip: int, metrics=None) -> Dict[str, Any]:
        return {"epoch": epoch, "skip": next_skip, "updates": updates, "model": model.state_dict(),
                "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "best_fitness": best_fitness, "history": history, "partial": partial, "rng": _rng_state(),
                "config": cfg.to_dict(), "arch": arch, "class_names": class_names, "metrics": metrics or {},
                "date": time.strftime("%Y-%m-%dT%H:%M:%S")}

    metrics: Dict[str, float] = {}
    stopped = False
    epoch = start_epoch
    last_path = best_path = None
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, skip * per_rank_batch)
        batches = iter(loader)
        bar = range(skip, nb)
        if main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(bar, total=nb, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True,
                       leave=True)
        optimizer.zero_grad(set_to_none=True)
        for i in bar:
            batch = next(batches)
            ni = i + nb * epoch
            _set_lrs(optimizer, ni, nw, epoch, cfg, lr0, warmup_bias_lr, momentum)
            images = _images_to_float(batch["images"], device)
            targets = {"labels": batch["gt_labels"].to(device), "bboxes": batch["gt_bboxes"].to(device),
                       "mask": batch["gt_mask"].to(device)}
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                feats = train_model(images)
            loss, items = loss_fn([f.float() for f in feats], targets)
            if world > 1:
                loss = loss * world  # DDP averages gradients over ranks; keep the single-process scale
            scaler.scale(loss).backward()
            items = items.detach().float().cpu()
            partial["sum"] = [s + float(v) for s, v in zip(partial["sum"], items.tolist())]
            partial["count"] += 1
            history["step_loss"].append([float(v) for v in items.tolist()])
            stepped = (i + 1) % accumulate == 0 or i == nb - 1
            if stepped:
                _step(train_model, optimizer, scaler, cfg.clip_grad)
                ema.update(model)
                updates += 1
                history["lr"].append(optimizer.param_groups[0]["lr"])
            if hasattr(bar, "set_postfix"):
                mean = [s / partial["count"] for s in partial["sum"]]
                bar.set_postfix(box=f"{mean[0]:.3f}", cls=f"{mean[1]:.3f}", dfl=f"{mean[2]:.3f}",
                                gts=int(batch["gt_mask"].sum()), size=images.shape[-1])
            if stepped and cfg.max_steps is not None and updates >= cfg.max_steps:
                stopped = True
                if i < nb - 1 and main and cfg.save:  # mid-epoch: remember the position; else the epoch end saves
                    last_path = save_checkpoint_atomic(snapshot(epoch, i + 1), out_dir / "last.pt")
                break
        if hasattr(bar, "close"):
            bar.close()
        if stopped and i < nb - 1:
            break
        mean = [s / max(partial["count"], 1) for s in partial["sum"]]
        partial = {"sum": [0.0, 0.0, 0.0], "count": 0}
        skip = 0
        history["epoch"].append(epoch + 1)
        for k, v in zip(("box", "cls", "dfl"), mean):
            history[k].append(v)
        is_last = epoch == cfg.epochs - 1 or stopped
        if main and val_loader is not None and ((epoch + 1) % cfg.val_interval == 0 or is_last):
            metrics = validate(ema.ema, val_loader, device, cfg.conf_thres, cfg.iou_thres, cfg.max_det)
            history["map50"].append(metrics.get("map50", 0.0))
            history["map"].append(metrics.get("map", 0.0))
            if cfg.verbose:
                print(f"  val: mAP50 {metrics.get('map50', 0.0):.4f}  mAP50-95 {metrics.get('map', 0.0):.4f}", flush=True)
        else:
            history["map50"].append(float("nan"))
            history["map"].append(float("nan"))
        improved = bool(metrics) and fitness(metrics) > best_fitness
        if improved:
            best_fitness = fitness(metrics)
        if main and cfg.save:
            state = snapshot(epoch + 1, 0, metrics)
            last_path = save_checkpoint_atomic(state, out_dir / "last.pt")
            if improved or (val_loader is None and is_last):
                best_path = save_checkpoint_atomic(state, out_dir / "best.pt")
            if cfg.plots and ((epoch + 1) % cfg.val_interval == 0 or is_last):
                from ..viz import plot_loss_curves

                plot_loss_curves(history, out_dir / "loss_curves.png")
        _barrier(world)
        if stopped:
            break
    if main and cfg.save and best_path is None and (out_dir / "best.pt").exists():
        best_path = out_dir / "best.pt"
    return TrainResult(metrics=metrics, best_fitness=best_fitness, history=history,
                       last=str(last_path) if last_path else None, best=str(best_path) if best_path else None,
                       model=ema.ema, class_names=class_names, epochs_run=len(history["epoch"]), steps=updates,
                       seconds=time.time() - t_start)
