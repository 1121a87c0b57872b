"""Blocks of rows, so that pairwise ``[M, A]`` work never lives whole on dense scenes.

An assigner that needs a quantity for every (GT, prior) pair computes it for a block of GTs (or of
proposals) at a time and keeps only per-GT / per-prior reductions between blocks. At M = 20,000 GTs and
A = 8,400 priors one float32 ``[M, A]`` matrix is 640 MiB; a block holds about ``BLOCK_ELEMENTS``
elements (8 MiB in float32) per temporary instead.

Blocks hold a multiple of ``ROW_MULTIPLE`` rows, except that the last block takes the remainder (and
at least ``ROW_MULTIPLE`` rows). Why: CPU kernels of transcendental functions (``exp``, ``log``,
``pow``, ``sigmoid``) compute a tensor in SIMD groups and its last ``numel % (2 x vector width)``
elements with the scalar function, which can round differently in the last bit. With a block of a
multiple of 64 rows every element of a contiguous ``[rows, ...]`` (or ``[..., rows, ...]``) block runs
in SIMD, and the scalar tail of the last block holds exactly the elements that formed the scalar tail
of the whole tensor. So, on one thread, a blocked computation gives the same bits as the unblocked
one. (With several threads torch also splits each tensor across threads, at boundaries that depend on
its size, blocked or not.) Blocks that only run correctly rounded arithmetic (``+ - * /``, ``min``,
``max``, comparisons; IoU is such) may use ``multiple=1``.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

# Elements per block temporary: 2**20 (4 MiB in float32). mmdet's one-hot class cost keeps about 20
# such temporaries alive at once, so a block's working set stays under ~100 MiB; larger blocks were
# slower (each temporary then comes from a fresh mmap, page faults included). Tests lower it to force
# many blocks on small inputs.
BLOCK_ELEMENTS = 2 ** 20
# 2 x the widest SIMD vector in elements (AVX-512: 32 half-precision values).
ROW_MULTIPLE = 64


def row_blocks(num_rows: int, elements_per_row: int, budget: Optional[int] = None,
               multiple: int = ROW_MULTIPLE) -> List[slice]:
    """Split ``range(num_rows)`` into consecutive slices of about ``budget // elements_per_row`` rows.

    ``budget`` (default ``BLOCK_ELEMENTS``, read at call time) bounds the elements of one block's
    temporaries, but a block has at least ``multiple`` rows. Every block but the last has a multiple
    of ``multiple`` rows; the last has at least ``multiple`` rows (a shorter remainder joins the block
    before it). ``num_rows == 0`` gives ``[slice(0, 0)]``.
    """
    budget = BLOCK_ELEMENTS if budget is None else budget
    if num_rows * max(1, elements_per_row) <= budget:
        return [slice(0, num_rows)]
    rows = budget // max(1, elements_per_row)
    rows = max(multiple, rows - rows % multiple)
    starts = list(range(0, num_rows, rows))
    if len(starts) > 1 and num_rows - starts[-1] < multiple:
        starts.pop()
    ends = starts[1:] + [num_rows]
    return [slice(a, b) for a, b in zip(starts, ends)]


def cat_row_blocks(fn: Callable[[slice], Tensor], num_rows: int, elements_per_row: int) -> Tensor:
    """``torch.cat([fn(rows) for rows in row_blocks(num_rows, elements_per_row)])``: a per-row function
    (its result's row i depends on input row i only) evaluated with bounded temporaries."""
    blocks = row_blocks(num_rows, elements_per_row)
    if len(blocks) == 1:
        return fn(blocks[0])
    return torch.cat([fn(rows) for rows in blocks])


def simd_sigmoid(logits: Tensor) -> Tensor:
    """``logits.sigmoid()`` of gathered logits (any shape; e.g. TaskAligned's pairs [P], SimOTA's candidate
    rows [B, A', C]), bit for bit what the sigmoid of the whole ``[B, A, C]`` tensor gives at those entries
    (where torch computes that tensor in SIMD, i.e. all of it but a tail of fewer than ``ROW_MULTIPLE``
    elements per thread, none when its size is a multiple of 64 per thread).

    The scalar tail of each thread's range would round differently (see the module docstring): padding the
    flat logits to a multiple of ``ROW_MULTIPLE`` per thread keeps every entry in SIMD. So only the logits an
    assigner reads get a probability; the sigmoid of all B * A * C logits is never computed.
    """
    multiple = ROW_MULTIPLE * max(torch.get_num_threads(), 1) if logits.device.type == "cpu" else 1
    flat = logits.reshape(-1)
    pad = (-flat.numel()) % multiple
    if pad == 0:
        return logits.sigmoid()
    return torch.cat((flat, flat.new_zeros(pad))).sigmoid_()[:flat.numel()].view(logits.shape)
