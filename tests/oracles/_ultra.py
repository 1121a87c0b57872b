"""Import ultralytics 8.4.190 (installed --no-deps, no torchvision) for use as an oracle.

ultralytics/utils/__init__ reads importlib.metadata.version("torchvision") at import time. While
ultralytics is imported, and only then, that lookup answers a placeholder version for a missing
torchvision; no module we use imports torchvision. YOLO_CONFIG_DIR goes to a temp dir (ultralytics
writes a settings file), and the OMP_NUM_THREADS it sets on import is undone.
"""
import importlib.metadata as _metadata
import os
import tempfile

import torch  # noqa: F401  (before ultralytics touches OMP_NUM_THREADS)

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

__all__ = ["ultralytics", "tasks", "loss", "metrics", "tal"]
