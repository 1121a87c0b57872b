"""Import ultralytics 8.4.190 (installed --no-deps, no torchvision) for use as an oracle.

ultralytics/utils/__init__ reads importlib.metadata.version("torchvision") at import time. While
ultralytics is imported, and only then, that lookup answers a placeholder version for a missing
torchvision; no module we use imports torchvision. YOLO_CONFIG_DIR goes to a temp dir (ultralytics
writes a settings file), and the OMP_NUM_THREADS it sets on import is undone.

``training_standins()``: ``YOLO(...).train()`` also touches torchvision (the validator imports it and
NMS calls ``torchvision.ops.nms``) and polars (the trainer reads results.csv into its checkpoint).
Where they are not installed, the context registers minimal stand-ins for exactly those two uses (a
pure-torch greedy NMS, a csv reader) in ``sys.modules`` and removes them on exit. A real user has
``pip install ultralytics`` with its dependencies (torchvision matching torch, polars) instead.
"""
import contextlib
import csv
import importlib.machinery
import importlib.metadata as _metadata
import importlib.util
import io
import os
import sys
import tempfile
import types

import torch  # imported before ultralytics touches OMP_NUM_THREADS

_real_version = _metadata.version


def _version(name):
    try:
        return _real_version(name)
    except _metadata.PackageNotFoundError:
        if name == "torchvision":
            return "0.28.0"  # placeholder read only by version checks
        raise


os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "detassign_ultralytics_cfg"))
_omp_was_set = "OMP_NUM_THREADS" in os.environ
_metadata.version = _version
try:
    import ultralytics  # noqa: E402
    import ultralytics.nn.tasks as tasks  # noqa: E402
    import ultralytics.utils.loss as loss  # noqa: E402
    import ultralytics.utils.metrics as metrics  # noqa: E402
    import ultralytics.utils.tal as tal  # noqa: E402
finally:
    _metadata.version = _real_version
if not _omp_was_set:
    os.environ.pop("OMP_NUM_THREADS", None)



def stand_in_model(nc, reg_max=16, strides=(8.0, 16.0, 32.0)):
    """What ``v8DetectionLoss(model)`` reads from a model: a parameter (its device), ``args`` (the loss
    gains) and ``model[-1]`` (the head's ``nc``, ``reg_max``, ``stride``); no network is built."""
    head = torch.nn.Module()
    head.nc, head.reg_max, head.stride = nc, reg_max, torch.tensor(strides)
    model = torch.nn.Module()
    model.anchor = torch.nn.Parameter(torch.zeros(1))
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    model.model = torch.nn.ModuleList([head])
    return model


def nms(boxes, scores, iou_threshold):
    """Greedy NMS with torchvision's contract: boxes [N, 4] xyxy, scores [N] -> kept indices [K] long,
    by decreasing score; a box is dropped when its IoU with a kept, higher-scored box exceeds the threshold."""
    order = scores.argsort(descending=True)
    b = boxes[order].float()
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (torch.minimum(b[:, None, 2:], b[None, :, 2:]) - torch.maximum(b[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=torch.finfo(torch.float32).tiny)
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for i in range(len(b)):
        if keep[i]:
            keep[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    return order[keep]


class _Frame:
    def __init__(self, rows):
        self.rows = rows

    def to_dict(self, as_series=False):
        return {key: [float(row[key]) for row in self.rows] for key in (self.rows[0] if self.rows else ())}


def _read_csv(source, infer_schema_length=None):
    text = source.decode() if isinstance(source, bytes) else open(source).read()
    return _Frame(list(csv.DictReader(io.StringIO(text))))


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def training_standins():
    """Minimal ``torchvision`` (``ops.nms``) and ``polars`` (``read_csv``) while ultralytics trains, only
    where the real package is missing; ``sys.modules`` is restored on exit."""
    added = {}
    if importlib.util.find_spec("torchvision") is None:
        ops = _module("torchvision.ops", nms=nms)
        added["torchvision"] = _module("torchvision", __version__="0.28.0", ops=ops)
        added["torchvision.ops"] = ops
    if importlib.util.find_spec("polars") is None:
        added["polars"] = _module("polars", read_csv=_read_csv)
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


__all__ = ["ultralytics", "tasks", "loss", "metrics", "tal", "training_standins", "nms", "stand_in_model"]
