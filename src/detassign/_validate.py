"""Input checks shared by every assigner.

Shape and dtype checks are free (no device synchronisation) and always run. Value checks
(NaN / Inf, inverted boxes, label range) read tensor values, which forces a host sync on
CUDA; they run by default and can be switched off for speed with
``detassign.set_value_checks(False)`` or the environment variable
``DETASSIGN_VALUE_CHECKS=0``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

_VALUE_CHECKS = os.environ.get("DETASSIGN_VALUE_CHECKS", "1") not in ("0", "false", "False")


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks (NaN / Inf, inverted boxes, label range) on or off globally."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Context manager form of :func:`set_value_checks`."""
    global _VALUE_CHECKS
    old = _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = old


Dim = Union[int, str, None]


def check_tensor(name: str, x, shape: Sequence[Dim], *, floating: Optional[bool] = None,
                 allow_none: bool = False) -> Optional[Tensor]:
    """Check ``x`` is a tensor of the symbolic ``shape`` (ints must match, strings / None are free).

    ``floating=True`` requires a floating dtype, ``False`` an integer or bool dtype.
    Raises ``TypeError`` / ``ValueError`` naming ``name``, the expected and the received shape.
    """
    if x is None:
        if allow_none:
            return None
        raise TypeError(f"{name} is required, got None")
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    expected = "[" + ", ".join(str(d) for d in shape) + "]"
    if x.dim() != len(shape):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    for got, want in zip(x.shape, shape):
        if isinstance(want, int) and got != want:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if floating is False and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x


def check_same_size(names: Sequence[str], sizes: Sequence[int], what: str = "length") -> None:
    if len(set(int(s) for s in sizes)) > 1:
        desc = ", ".join(f"{n}={int(s)}" for n, s in zip(names, sizes))
        raise ValueError(f"{' and '.join(names)} must have the same {what}, got {desc}")


def check_same_device(**tensors: Optional[Tensor]) -> None:
    devices = {k: v.device for k, v in tensors.items() if isinstance(v, Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {desc}")


def check_finite(name: str, x: Optional[Tensor]) -> None:
    if x is None or not _VALUE_CHECKS or x.numel() == 0 or not x.is_floating_point():
        return
    # One reduction in the common (valid) case; the detailed report is built only on failure.
    if bool(torch.isfinite(x).all()):
        return
    bad = ~torch.isfinite(x)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    raise ValueError(f"{name} must be finite, got {int(bad.sum())} NaN/Inf value(s), first at index {idx}: "
                     f"{x[idx].item()}")


def check_boxes(name: str, boxes: Optional[Tensor], mask: Optional[Tensor] = None) -> None:
    """Finite xyxy boxes with x1 <= x2 and y1 <= y2 (padding rows excluded by ``mask``)."""
    if boxes is None or not _VALUE_CHECKS or boxes.numel() == 0:
        return
    check_finite(name, boxes)
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if mask is not None:
        inverted = inverted & mask.bool()
    if bool(inverted.any()):
        idx = tuple(int(i) for i in torch.nonzero(inverted)[0])
        raise ValueError(f"{name} must be xyxy with x1 <= x2 and y1 <= y2; box at index {idx} is "
                         f"{boxes[idx].tolist()} (degenerate: {int(inverted.sum())} box(es))")


def check_labels(name: str, labels: Optional[Tensor], num_classes: Optional[int],
                 mask: Optional[Tensor] = None) -> None:
    if labels is None or not _VALUE_CHECKS or labels.numel() == 0 or num_classes is None:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if mask is not None:
        bad = bad & mask.bool()
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {int(labels[idx])} at index {idx}")


def check_range(name: str, x: Optional[Tensor], lo: float, hi: float) -> None:
    if x is None or not _VALUE_CHECKS or x.numel() == 0:
        return
    check_finite(name, x)
    low, high = torch.aminmax(x)
    if bool((low < lo) | (high > hi)):
        bad = (x < lo) | (x > hi)
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} must lie in [{lo}, {hi}] (probabilities, not logits?), got {x[idx].item()} "
                         f"at index {idx}")


def get_field(instances, field: str, owner: str, required: bool = True):
    """Read ``owner.field`` from an Instances / InstanceData, with a clear error when missing."""
    value = getattr(instances, field, None) if instances is not None else None
    if value is None and required:
        raise ValueError(f"{owner}.{field} is required by this assigner but is missing")
    return value
