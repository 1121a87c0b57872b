"""Build assigners and match costs from mmdetection-style config dicts.

    >>> from detassign import build_assigner
    >>> assigner = build_assigner(dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4))

Names resolve lazily to classes (the library itself constructs objects directly; the
registry exists because users' configs speak this language). ``type`` may also be a class.
An ``mmdet.`` or ``detassign.`` prefix is accepted so that mmdet configs work unchanged.

A config dict means what it means in mmdetection: where one of our constructors defaults to
another reference's behaviour, :data:`CONFIG_DEFAULTS` gives the mmdet default instead. Today that
is ``TaskAlignedAssigner``: ``TaskAlignedAssigner()`` is ultralytics' TAL, while
``build_assigner(dict(type="TaskAlignedAssigner", topk=13))`` (mmdet's TOOD config) is
``preset="mmdet"``. Name a ``preset`` in the dict to choose another.
"""
from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any, Dict, Mapping

__all__ = ["ASSIGNERS", "MATCH_COSTS", "CONFIG_DEFAULTS", "build_assigner", "build_match_cost",
           "available_assigners"]

# name -> "module:attribute" under detassign.assigners
ASSIGNERS: Dict[str, str] = {
    "MaxIoUAssigner": "max_iou:MaxIoUAssigner",
    "BatchMaxIoUAssigner": "batch_max_iou:BatchMaxIoUAssigner",
    "AscendMaxIoUAssigner": "batch_max_iou:BatchMaxIoUAssigner",
    "ApproxMaxIoUAssigner": "approx_max_iou:ApproxMaxIoUAssigner",
    "ATSSAssigner": "atss:ATSSAssigner",
    "TaskAlignedAssigner": "task_aligned:TaskAlignedAssigner",
    "SimOTAAssigner": "sim_ota:SimOTAAssigner",
    "DynamicSoftLabelAssigner": "dynamic_soft_label:DynamicSoftLabelAssigner",
    "HungarianAssigner": "hungarian:HungarianAssigner",
    "MaskHungarianAssigner": "mask_hungarian:MaskHungarianAssigner",
    "TopkHungarianAssigner": "topk_hungarian:TopkHungarianAssigner",
    "MultiInstanceAssigner": "multi_instance:MultiInstanceAssigner",
    "GridAssigner": "grid:GridAssigner",
    "UniformAssigner": "uniform:UniformAssigner",
    "RegionAssigner": "region:RegionAssigner",
    "CenterRegionAssigner": "center_region:CenterRegionAssigner",
    "PointAssigner": "point:PointAssigner",
    "RotatedTaskAlignedAssigner": "rotated_task_aligned:RotatedTaskAlignedAssigner",
    "RotatedATSSAssigner": "rotated_calculators:RotatedATSSAssigner",
    "OneToManyHungarianAssigner": "one_to_many:OneToManyHungarianAssigner",
    "Stage2Assigner": "stage2:Stage2Assigner",
}

MATCH_COSTS: Dict[str, str] = {
    name: f"match_costs:{name}"
    for name in ("ClassificationCost", "FocalLossCost", "BBoxL1Cost", "IoUCost", "DiceCost",
                 "CrossEntropyLossCost", "BinaryFocalLossCost")
}


# Arguments a config dict gets when it leaves them out (explicit keys win): the mmdet class of that name
# is what an mmdet-style config means, and our constructor's default is another reference's preset.
CONFIG_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "TaskAlignedAssigner": dict(preset="mmdet"),
}


def _resolve(table: Mapping[str, str], name: str, what: str):
    for scope in ("mmdet.", "detassign."):
        if name.startswith(scope):
            name = name[len(scope):]
    if name not in table:
        raise ValueError(f"unknown {what} type {name!r}; accepted: {sorted(table)}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(f"detassign.assigners.{module}"), attr)


def _build(cfg: Mapping[str, Any], table: Mapping[str, str], what: str):
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what} config must be a dict with a 'type' key, got {type(cfg).__name__}")
    cfg = dict(copy.deepcopy(cfg))
    if "type" not in cfg:
        raise ValueError(f"{what} config needs a 'type' key; accepted types: {sorted(table)}")
    kind = cfg.pop("type")
    cls = kind if inspect.isclass(kind) else _resolve(table, str(kind), what)
    for name, defaults in CONFIG_DEFAULTS.items():
        if name in table and cls is _resolve(table, name, what):
            cfg = {**defaults, **cfg}
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if n != "self" and p.kind not in
                (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    unknown = [k for k in cfg if k not in accepted]
    if unknown and not takes_kwargs:
        raise TypeError(f"{cls.__name__} got unknown argument(s) {unknown}; accepted: {accepted}")
    return cls(**cfg)


def build_assigner(cfg: Mapping[str, Any]):
    """Build an assigner from ``dict(type=name, **kwargs)``; unknown names / arguments fail with the accepted ones."""
    return _build(cfg, ASSIGNERS, "assigner")


def build_match_cost(cfg: Mapping[str, Any]):
    """Build a Hungarian match cost from ``dict(type=name, weight=..., ...)``."""
    return _build(cfg, MATCH_COSTS, "match cost")


def available_assigners() -> Dict[str, type]:
    """Name -> class for every registered assigner (aliases included)."""
    return {name: _resolve(ASSIGNERS, name, "assigner") for name in ASSIGNERS}
