"""Float tolerances for comparing results across code paths, stated once per dtype.

Two code paths (batched vs per image, permuted GTs, dense vs sparse candidates) may compute the same
element with ops whose last-bit rounding depends on the CPU kernel (AVX-512, AVX2, scalar) and on the
tensor's layout: ``torch.pow`` with a general exponent, ``atan``, ``exp`` and vectorised reductions
are measured examples. Such results agree to a few ulp, not bit for bit, so they are compared here
with ``rtol`` = a few machine epsilons of the dtype. Indices and labels stay exact (``torch.equal``),
and the same op on the same data stays exact too.
"""
from __future__ import annotations

import torch

# dtype -> (rtol, atol). rtol is 8 ulp at 1.0; atol covers values that cancel to ~0.
PATH_TOLERANCES = {
    torch.float64: (8 * torch.finfo(torch.float64).eps, 1e-12),
    torch.float32: (8 * torch.finfo(torch.float32).eps, 1e-9),
    torch.bfloat16: (8 * torch.finfo(torch.bfloat16).eps, 1e-5),
    torch.float16: (8 * torch.finfo(torch.float16).eps, 1e-5),
}


def assert_close_across_paths(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Equal up to the kernel / layout rounding of ``PATH_TOLERANCES``; shapes and dtypes must match."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        raise AssertionError(f"{msg}: dtype/shape {actual.dtype}{tuple(actual.shape)} vs "
                             f"{expected.dtype}{tuple(expected.shape)}")
    if not actual.is_floating_point():
        if not torch.equal(actual, expected):
            raise AssertionError(f"{msg}: integer tensors differ")
        return
    rtol, atol = PATH_TOLERANCES[actual.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg or None)
