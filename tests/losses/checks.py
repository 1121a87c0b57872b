"""Checks every loss of ``detassign.losses`` must pass, shared by the loss test files."""

import torch


def assert_half_in_float32_and_empty(fn, pred, target, empty_shape, out_shape):
    """fn(pred, target) in float16 / bfloat16 is computed in float32 (equal to the upcast inputs' loss), and
    empty inputs of ``empty_shape`` give an ``out_shape`` loss whose gradient reaches the input."""
    for dtype in (torch.float16, torch.bfloat16):
        low = fn(pred.to(dtype), target.to(dtype))
        assert low.dtype == torch.float32
        assert torch.equal(low, fn(pred.to(dtype).float(), target.to(dtype).float()))
    empty = torch.zeros(empty_shape, requires_grad=True)
    out = fn(empty, torch.zeros(empty_shape))
    assert out.shape == out_shape
    out.sum().backward()
    assert empty.grad.shape == empty_shape
