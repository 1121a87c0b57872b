"""Input checks shared by every assigner and match cost.

Shape and dtype checks are free (no device synchronisation) and always run. Value checks
(NaN / Inf, inverted boxes, label range, fractional labels) read tensor values, which forces a
host sync on CUDA; they run by default and can be switched off for speed with
``detassign.set_value_checks(False)`` or the environment variable ``DETASSIGN_VALUE_CHECKS=0``.
With them off, out-of-range labels are not caught and can reach an indexing kernel (a device-side
assert on CUDA).

Hyper-parameters are checked once, when an assigner or match cost is built
(:func:`check_number`, :func:`check_choice`, :func:`check_flag`); these never touch a tensor.

What every tensor input accepts (mmdetection's conventions):

* a ``torch.Tensor``, or any box object carrying one as ``.tensor`` (mmdet's ``HorizontalBoxes``);
  lists and numpy arrays are refused with a ``TypeError`` naming the argument;
* per image, an empty tensor of any dtype or rank (``torch.empty(0)``, ``torch.FloatTensor([])``)
  means zero rows: no GT, no priors (:func:`tensor_input` with ``empty_rows=True``);
* labels in an integer dtype, or a float dtype holding integral values (``1.0``, as mmdet and
  ultralytics pipelines produce); fractional values, NaN and bool are refused (:func:`labels_input`).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
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


# ----------------------------------------------------------------------------- hyper-parameters
class ParameterTypeError(TypeError, ValueError):
    """A hyper-parameter of the wrong type (a string, a bool for a number, a float for an int).

    A ``TypeError``, and a ``ValueError`` too: these were ValueErrors before, and code catching
    either keeps working.
    """


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, finite: bool = True,
                 allow_none: bool = False):
    """A real number (never bool, str or NaN) within the bounds; returned unchanged (ints as ``int``).

    ``low`` / ``high`` are inclusive unless ``low_open`` / ``high_open``; ``integer=True`` requires an
    integral type (``4``, not ``4.0``); ``finite=False`` lets +-inf through (thresholds that disable a
    rule). Raises :class:`ParameterTypeError` (a TypeError) for a wrong type, ``ValueError`` for NaN or
    out-of-range values.

    >>> check_number("topk", 9, low=1, integer=True)
    9
    """
    if value is None:
        if allow_none:
            return None
        raise ParameterTypeError(f"{name} must be {'an int' if integer else 'a number'}, got None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(f"{name} must be {'an int' if integer else 'a number'}, got {_describe(value)}")
    if integer and not isinstance(value, numbers.Integral):
        raise ParameterTypeError(f"{name} must be an int, got {_describe(value)}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    if finite and math.isinf(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}")
    return int(value) if integer else value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` must be one of ``choices``; returned unchanged. Types must match too (``1`` is not ``True``)."""
    def same(a, b) -> bool:
        return (type(a) is type(b) or (isinstance(a, str) and isinstance(b, str))) and a == b

    if not any(same(value, c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_flag(name: str, value: Any, allow_none: bool = False) -> Optional[bool]:
    """A bool (numpy bools too), not a string or a number: ``bool("False")`` is True."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ParameterTypeError(f"{name} must be True or False{' or None' if allow_none else ''}, got "
                             f"{_describe(value)}")


# ----------------------------------------------------------------------------- tensors
def _type_name(x: Any) -> str:
    kind = type(x).__name__
    if isinstance(x, (list, tuple)) or type(x).__module__.split(".")[0] == "numpy":
        return f"{kind} (convert it with torch.as_tensor)"
    return kind


def as_tensor(name: str, x: Any, *, allow_none: bool = False) -> Optional[Tensor]:
    """``x`` itself if a Tensor; the ``.tensor`` of a box object (mmdet ``HorizontalBoxes``); else TypeError."""
    if x is None:
        if allow_none:
            return None
        raise TypeError(f"{name} is required, got None")
    if isinstance(x, Tensor):
        return x
    inner = getattr(x, "tensor", None)  # duck typing: mmdet's BaseBoxes without importing mmdet
    if isinstance(inner, Tensor):
        return inner
    raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(x)}")


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


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
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(x)}")
    if x.dim() != len(shape) or any(isinstance(w, int) and g != w for g, w in zip(x.shape, shape)):
        raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if floating is False and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x


def _is_empty_rows(x: Tensor) -> bool:
    """torch.empty(0), FloatTensor([]), [0, ...]: no rows, whatever the rank."""
    return x.numel() == 0 and (x.dim() <= 1 or x.shape[0] == 0)


def _zero_rows(x: Tensor, shape: Sequence[Dim], floating: Optional[bool]) -> Tensor:
    """An empty tensor -> zeros of ``shape`` with 0 rows (free dims keep x's size when the rank matches)."""
    same_rank = x.dim() == len(shape)
    dims = [d if isinstance(d, int) else (x.shape[i] if same_rank else 0) for i, d in enumerate(shape)]
    dims[0] = 0
    dtype = x.dtype
    if floating is True and not x.is_floating_point():
        dtype = torch.float32
    elif floating is False and (x.is_floating_point() or x.dtype == torch.bool):
        dtype = torch.long
    return x.new_zeros(dims, dtype=dtype)


def tensor_input(name: str, x, shape: Sequence[Dim], *, floating: Optional[bool] = None,
                 allow_none: bool = False, empty_rows: bool = False) -> Optional[Tensor]:
    """:func:`as_tensor` then :func:`check_tensor`; returns the tensor to use.

    ``empty_rows=True`` (per-image inputs): an empty tensor of any dtype or rank is read as zero rows
    of ``shape`` (``torch.empty(0)`` for ``gt_instances.bboxes`` is an image without GT), as mmdet does.
    """
    x = as_tensor(name, x, allow_none=allow_none)
    if x is None:
        return None
    first = shape[0] if len(shape) else None
    if empty_rows and _is_empty_rows(x) and (not isinstance(first, int) or first == 0):
        x = _zero_rows(x, shape, floating)
    return check_tensor(name, x, shape, floating=floating)


def labels_input(name: str, x, shape: Sequence[Dim], *, num_classes: Optional[int] = None,
                 mask: Optional[Tensor] = None, allow_none: bool = False,
                 rows_like: Optional[Tuple[str, Tensor]] = None) -> Optional[Tensor]:
    """Class indices of ``shape`` -> a long tensor. The one label check every path shares.

    Integer dtypes are taken as they are; float dtypes must hold integral values (``1.0`` is class 1,
    ``1.9`` is refused, never truncated); bool is refused. With value checks on, every label (where
    ``mask`` is True) must be ``>= 0`` and, when ``num_classes`` is known, ``< num_classes``. A
    one-dimensional ``shape`` accepts an empty tensor of any dtype or rank as zero labels.
    ``rows_like=(name, boxes)``: one label per row of ``boxes`` (a mismatch names both).
    """
    if rows_like is not None:
        shape = ("M",) + tuple(shape[1:])
    x = tensor_input(name, x, shape, allow_none=allow_none, empty_rows=len(shape) == 1)
    if x is None:
        return None
    if rows_like is not None:
        check_agree("M", [(rows_like[0], rows_like[1], 0), (name, x, 0)])
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")
    check_labels(name, x, num_classes, mask)
    return x.long()


def num_classes_of(scores: Tensor, rows_dim: int = 0) -> Optional[int]:
    """C of scores [..., A, C]; None (unknown) when there are no rows, e.g. ``torch.empty(0)`` for no priors."""
    return None if scores.shape[rows_dim] == 0 else scores.shape[-1]


def check_agree(symbol: str, entries: Sequence[Tuple[str, Tensor, int]]) -> int:
    """Tensors sharing a symbolic dimension must agree on its size; returns the size.

    entries: (name, tensor, dim). On disagreement the tensors in the minority are blamed (all of them
    on a tie), with every shape, e.g. "pred_scores has A=83 but pred_bboxes, anchor_points have A=84".
    """
    sizes = [(name, t.shape[dim], tuple(t.shape)) for name, t, dim in entries]
    values = [s for _, s, _ in sizes]
    if len(set(values)) <= 1:
        return values[0] if values else 0
    counts = {v: values.count(v) for v in values}
    best = max(counts.values())
    majority = [v for v, c in counts.items() if c == best]
    shapes = ", ".join(f"{n} {shape}" for n, _, shape in sizes)
    if len(majority) == 1:
        want = majority[0]
        bad = [f"{n} has {symbol}={s}" for n, s, _ in sizes if s != want]
        good = ", ".join(n for n, s, _ in sizes if s == want)
        raise ValueError(f"{'; '.join(bad)} but {good} {'has' if counts[want] == 1 else 'have'} "
                         f"{symbol}={want} (shapes: {shapes})")
    raise ValueError(f"{', '.join(n for n, _, _ in sizes)} must agree on {symbol}, got {shapes}")


def check_same_size(names: Sequence[str], sizes: Sequence[int], what: str = "length") -> None:
    if len(set(int(s) for s in sizes)) > 1:
        desc = ", ".join(f"{n}={int(s)}" for n, s in zip(names, sizes))
        raise ValueError(f"{' and '.join(names)} must have the same {what}, got {desc}")


def check_same_device(**tensors: Optional[Tensor]) -> None:
    devices = {k: v.device for k, v in tensors.items() if isinstance(v, Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {desc}")


# ----------------------------------------------------------------------------- values (host sync)
def _within(x: Tensor, lo: float = float("-inf"), hi: float = float("inf")) -> bool:
    """All of floating ``x`` finite and in [lo, hi]: one min / max reduction (they propagate NaN) and no
    temporary the size of ``x``, so the check stays cheap on the [B, A, C] score tensors."""
    low, high = torch.aminmax(x.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high) & (low >= lo) & (high <= hi))


def check_finite(name: str, x: Optional[Tensor]) -> None:
    if x is None or not _VALUE_CHECKS or x.numel() == 0 or not x.is_floating_point():
        return
    # One reduction in the common (valid) case; the detailed report is built only on failure.
    if _within(x):
        return
    bad = ~torch.isfinite(x)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    raise ValueError(f"{name} must be finite, got {int(bad.sum())} NaN/Inf value(s), first at index {idx}: "
                     f"{x[idx].item()}")


def check_predictions(names: Tuple[str, str, str], scores: Tensor, boxes: Tensor, points: Tensor,
                      probabilities: bool) -> None:
    """A dense head's outputs, named as the caller passed them: class scores (probabilities in [0, 1], or
    finite logits), finite predicted boxes and finite prior points / boxes."""
    if probabilities:
        check_range(names[0], scores, 0.0, 1.0)
    else:
        check_finite(names[0], scores)
    check_finite(names[1], boxes)
    check_finite(names[2], points)


def check_not_inf(name: str, x: Optional[Tensor]) -> None:
    """No +-Inf (NaN is left to a later, more specific report, e.g. the Hungarian cost terms)."""
    if x is None or not _VALUE_CHECKS or x.numel() == 0 or not x.is_floating_point():
        return
    if _within(x):
        return
    inf = torch.isinf(x)
    if bool(inf.any()):
        idx = tuple(int(i) for i in torch.nonzero(inf)[0])
        raise ValueError(f"{name} must be finite, got {int(inf.sum())} Inf value(s), first at index {idx}: "
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


def check_rboxes(name: str, boxes: Optional[Tensor], mask: Optional[Tensor] = None) -> None:
    """Finite oriented boxes ``[..., 5]`` xywhr with w >= 0 and h >= 0 (padding rows excluded by ``mask``).

    A zero side is accepted, as both references take it (ultralytics widens it for the candidate test
    and its ProbIoU has an eps; mmrotate clamps sides at 1e-3); a negative one is an error, as an
    inverted xyxy box is.
    """
    if boxes is None or not _VALUE_CHECKS or boxes.numel() == 0:
        return
    check_finite(name, boxes)
    negative = (boxes[..., 2] < 0) | (boxes[..., 3] < 0)
    if mask is not None:
        negative = negative & mask.bool()
    if bool(negative.any()):
        idx = tuple(int(i) for i in torch.nonzero(negative)[0])
        raise ValueError(f"{name} must be xywhr with non-negative w and h; box at index {idx} is "
                         f"{boxes[idx].tolist()} ({int(negative.sum())} box(es) with a negative side)")


def check_labels(name: str, labels: Optional[Tensor], num_classes: Optional[int] = None,
                 mask: Optional[Tensor] = None) -> None:
    """Labels >= 0 (< num_classes when known), integral and finite for float dtypes; only where ``mask``."""
    if labels is None or not _VALUE_CHECKS or labels.numel() == 0:
        return
    bad = labels < 0
    if num_classes is not None:
        bad = bad | (labels >= num_classes)
    floating = labels.is_floating_point()
    if floating:
        bad = bad | ~torch.isfinite(labels) | (labels != labels.round())
    if mask is not None:
        bad = bad & mask.bool()
    if not bool(bad.any()):
        return
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    value = labels[idx].item()
    if floating and not (math.isfinite(value) and value == round(value)):
        raise ValueError(f"{name} must hold integral class indices, got {value:.6g} at index {idx} "
                         f"(fractional labels are refused, never truncated)")
    shown = int(value) if floating else value
    if num_classes is None:
        raise ValueError(f"{name} must be class indices >= 0, got {shown} at index {idx}")
    raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {shown} at index {idx}")


def check_binary(name: str, x: Optional[Tensor]) -> None:
    """A mask / flag tensor: bool, or numbers that are all 0 or 1 (0.5 is not silently True)."""
    if x is None or not _VALUE_CHECKS or x.numel() == 0 or x.dtype == torch.bool:
        return
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} must be bool or 0 / 1, got {x[idx].item()} at index {idx}")


def check_range(name: str, x: Optional[Tensor], lo: float, hi: float) -> None:
    if x is None or not _VALUE_CHECKS or x.numel() == 0:
        return
    if x.is_floating_point() and _within(x, lo, hi):
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
