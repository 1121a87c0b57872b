"""Import mmdet 3.3.0's assigners with mmcv-lite (no compiled mmcv.ops), touching nothing on disk.

mmdet.models/__init__ pulls backbones -> mmcv.ops (compiled, absent in mmcv-lite), and
mmdet.structures.mask imports mmcv.ops.roi_align at import time. We register package modules
for mmdet.models and mmdet.models.task_modules whose __init__ never runs (real __path__, so
submodules import normally), an mmcv.ops package whose every name (and those of the submodules
heads import from) is a placeholder that raises when used, and an mmcv.ops.roi_align whose
function raises if ever called.

``heads()`` also imports mmdet's dense heads, losses, samplers, box coders and prior generators
(their modules import compiled ops by name; heads whose forward needs them are driven through
``loss_by_feat``). That needs ``six`` (mmdet.models.utils), an ORACLE_DEPS entry.
"""
import os
import sys
import types

import mmcv  # noqa: F401  (the real mmcv-lite, imported before mmcv.ops is registered)
import mmdet
import torch


def _package(name, path=None):
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__path__ = [path] if path else []
    module.__package__ = name
    if path:
        module.__file__ = os.path.join(path, "__init__.py")
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    return module


def _no_roi_align(*args, **kwargs):
    raise RuntimeError("mmcv.ops.roi_align is unavailable with mmcv-lite")


class _CompiledOps(types.ModuleType):
    """A stand-in for a compiled-ops module: every public name is a module class that raises when built."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} needs mmcv's compiled ops (mmcv-lite has none)")

        placeholder = type(name, (torch.nn.Module,), {"__init__": unavailable})
        setattr(self, name, placeholder)
        return placeholder


def _compiled_ops(name):
    if name not in sys.modules:
        module = _CompiledOps(name)
        module.__path__ = []
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)
    return sys.modules[name]


_compiled_ops("mmcv.ops")
for _sub in ("nms", "modulated_deform_conv", "carafe", "merge_cells", "multi_scale_deform_attn"):
    _compiled_ops(f"mmcv.ops.{_sub}")
_roi = types.ModuleType("mmcv.ops.roi_align")
_roi.roi_align = _no_roi_align
sys.modules["mmcv.ops.roi_align"] = _roi
sys.modules["mmcv.ops"].roi_align = _roi

_root = os.path.dirname(mmdet.__file__)
_package("mmdet.models", os.path.join(_root, "models"))
_package("mmdet.models.task_modules", os.path.join(_root, "models", "task_modules"))

import mmdet.models.task_modules.assigners as assigners  # noqa: E402
from mmdet.registry import TASK_UTILS as task_utils  # noqa: E402
from mmdet.structures.bbox import bbox_overlaps  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

__all__ = ["assigners", "task_utils", "bbox_overlaps", "InstanceData", "heads", "detectors"]


def heads():
    """mmdet's ``MODELS`` registry with its dense heads, losses, samplers, coders and prior generators."""
    task_modules = sys.modules["mmdet.models.task_modules"]
    if not hasattr(task_modules, "anchor_inside_flags"):
        # heads import names from the package itself: run its real __init__ now (assigners are loaded)
        with open(task_modules.__file__) as f:
            exec(compile(f.read(), task_modules.__file__, "exec"), task_modules.__dict__)
    import mmdet.models.dense_heads  # noqa: F401
    import mmdet.models.losses  # noqa: F401
    from mmdet.registry import MODELS

    return MODELS



def detectors():
    """``heads()`` plus mmdet's detectors, backbones, necks and data preprocessors (whole models)."""
    registry = heads()
    import mmdet.models.backbones  # noqa: F401
    import mmdet.models.data_preprocessors  # noqa: F401
    import mmdet.models.detectors  # noqa: F401
    import mmdet.models.necks  # noqa: F401

    return registry
