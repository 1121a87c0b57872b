"""Import mmdet 3.3.0's assigners with mmcv-lite (no compiled mmcv.ops), touching nothing on disk.

mmdet.models/__init__ pulls backbones -> mmcv.ops (compiled, absent in mmcv-lite), and
mmdet.structures.mask imports mmcv.ops.roi_align at import time. We register package modules
for mmdet.models and mmdet.models.task_modules whose __init__ never runs (real __path__, so
submodules import normally), an empty mmcv.ops package and an mmcv.ops.roi_align whose function
raises if ever called.
"""
import os
import sys
import types

import mmcv  # noqa: F401  (the real mmcv-lite, imported before mmcv.ops is registered)
import mmdet


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


_package("mmcv.ops")
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

__all__ = ["assigners", "task_utils", "bbox_overlaps", "InstanceData"]
