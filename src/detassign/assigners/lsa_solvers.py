"""Linear-assignment solvers behind one batched call (the Hungarian family's back end).

Shape symbols: N cost blocks (images x decoder layers x query groups), Q rows (queries), M columns (GTs).

    solve_batched(costs, sizes=None, solver="auto") -> [(rows [K_i], cols [K_i]), ...]

``costs`` is a list of [Q_i, M_i] blocks or a padded [N, Q, M] tensor with ``sizes`` (valid columns
[N], or valid (rows, cols) [N, 2]; None: every block full). Each block is solved as a rectangular
minimum-cost assignment: ``K_i = min(Q_i, M_i)`` pairs, rows ascending (scipy's order), every row and
every column used at most once. Results are int64 on the costs' device.

Solvers (``solver=``):

* ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` per block (the reference), after one host
  transfer of all blocks.
* ``"torch_linear_assignment"``: the ``torch-linear-assignment`` package's ``batch_linear_assignment``
  (a GPU kernel of the same shortest-augmenting-path algorithm), one call per group of blocks with the
  same number of rows. Padded columns get a constant cost: 0 when the rows outnumber all columns (every
  column is then matched, the constant does not change which real matching is optimal) and
  ``max real cost + 1`` otherwise (a row then always prefers a real column, and the optimum uses every
  real column it can). Optimal matchings are unique for tie-free costs, so indices equal scipy's; with
  exactly equal costs both return an optimal matching, possibly a different one of the same total cost.
* ``"auto"`` (:func:`resolve_solver`): ``torch_linear_assignment`` when it imports and the costs are on a
  CUDA device of compute capability >= 8.0 (its Triton kernel; below that the package solves block by
  block with scipy itself, slower than one transfer here), else scipy.

Non-finite costs on valid entries raise ``ValueError`` naming the block (scipy would only report an
infeasible matrix).
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["SOLVERS", "solve_batched", "resolve_solver", "available_solvers", "torch_linear_assignment_available",
           "matching_cost"]

SOLVERS = ("auto", "scipy", "torch_linear_assignment")
Match = Tuple[Tensor, Tensor]


def _tla():
    """The ``torch_linear_assignment`` module, or None when it is not installed (an optional extra)."""
    try:
        return importlib.import_module("torch_linear_assignment")
    except ImportError:
        return None


def torch_linear_assignment_available() -> bool:
    return _tla() is not None


def available_solvers() -> Tuple[str, ...]:
    """Solvers usable in this environment ("auto" and "scipy" always)."""
    return SOLVERS if torch_linear_assignment_available() else SOLVERS[:2]


def resolve_solver(solver: str, device: Union[str, torch.device]) -> str:
    """The solver that runs for costs on ``device``: ``"auto"`` resolved (module docstring), any other
    name checked and returned. ``"scipy"`` means the costs go to the host once."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    device = torch.device(device)
    gpu = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    return "torch_linear_assignment" if gpu and torch_linear_assignment_available() else "scipy"


def _as_padded(costs, sizes) -> Tuple[Tensor, Tensor]:
    """-> (padded [N, Q, M] float, sizes [N, 2] long on the CPU)."""
    if isinstance(costs, Tensor):
        if costs.dim() != 3:
            raise ValueError(f"costs must be a list of [Q, M] tensors or a padded [N, Q, M] tensor, got shape "
                             f"{tuple(costs.shape)}")
        N, Q, M = costs.shape
        if sizes is None:
            size = torch.tensor([[Q, M]] * N, dtype=torch.long).reshape(N, 2)
        else:
            size = torch.as_tensor(sizes).detach().to("cpu", torch.long)
            if size.shape == (N,):
                size = torch.stack((torch.full((N,), Q, dtype=torch.long), size), 1)
            if size.shape != (N, 2):
                raise ValueError(f"sizes must be [N] valid columns or [N, 2] (rows, cols) for costs of shape "
                                 f"{tuple(costs.shape)}, got shape {tuple(size.shape)}")
            if bool(((size < 0) | (size > torch.tensor([Q, M]))).any()):
                raise ValueError(f"sizes must lie within the padded block ({Q}, {M}), got {size.tolist()}")
        return costs, size
    if sizes is not None:
        raise ValueError("sizes is only for a padded [N, Q, M] tensor; a list of blocks carries its own sizes")
    blocks = list(costs)
    for i, block in enumerate(blocks):
        if not isinstance(block, Tensor) or block.dim() != 2:
            raise ValueError(f"costs[{i}] must be a [Q, M] tensor, got "
                             f"{tuple(block.shape) if isinstance(block, Tensor) else type(block).__name__}")
    size = torch.tensor([tuple(b.shape) for b in blocks], dtype=torch.long).reshape(len(blocks), 2)
    if not blocks:
        return torch.zeros(0, 0, 0), size
    Q, M = int(size[:, 0].max()), int(size[:, 1].max())
    dtype = blocks[0].dtype
    for b in blocks[1:]:
        dtype = torch.promote_types(dtype, b.dtype)
    padded = blocks[0].new_zeros(len(blocks), Q, M, dtype=dtype)
    for i, b in enumerate(blocks):
        padded[i, :b.shape[0], :b.shape[1]] = b
    return padded, size


def _check_finite(cost: np.ndarray, size: np.ndarray) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(cost.sum()):   # finite only without NaN / Inf anywhere (an overflow falls through)
            return
    for i, (q, m) in enumerate(size):
        block = cost[i, :q, :m]
        if not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).sum())
            raise ValueError(f"cost block {i} ({q} x {m}) holds {bad} NaN / Inf value(s); a linear assignment needs "
                             f"finite costs (check the predictions for NaN / Inf, e.g. NaN logits under AMP)")


def _solve_scipy(cost: Tensor, size: Tensor, maximize: bool) -> List[Match]:
    host = cost.detach().to("cpu", torch.float64 if cost.dtype == torch.float64 else torch.float32).numpy()
    sizes = size.numpy()
    _check_finite(host, sizes)
    out = []
    for i, (q, m) in enumerate(sizes):
        if q == 0 or m == 0:
            rows = cols = np.zeros(0, dtype=np.int64)
        elif q > m:
            # scipy solves a tall block as its transpose, copied after the float64 conversion; handed the
            # transposed view it converts and solves that same matrix, one copy fewer; rows ascending, as it does
            cols, rows = linear_sum_assignment(host[i, :q, :m].T, maximize=maximize)
            order = np.argsort(rows)
            rows, cols = rows[order], cols[order]
        else:
            rows, cols = linear_sum_assignment(host[i, :q, :m], maximize=maximize)
        out.append((torch.from_numpy(rows.astype(np.int64)).to(cost.device),
                    torch.from_numpy(cols.astype(np.int64)).to(cost.device)))
    return out


def _solve_tla(cost: Tensor, size: Tensor, maximize: bool) -> List[Match]:
    tla = _tla()
    if tla is None:
        raise ImportError("solver='torch_linear_assignment' needs the torch-linear-assignment package "
                          "(pip install torch-linear-assignment); use solver='scipy' or 'auto'")
    cost = -cost.detach() if maximize else cost.detach()
    device = cost.device
    rows_valid = torch.arange(cost.shape[1], device=device)[None, :] < size[:, 0, None].to(device)      # [N, Q]
    cols_valid = torch.arange(cost.shape[2], device=device)[None, :] < size[:, 1, None].to(device)      # [N, M]
    valid = rows_valid[:, :, None] & cols_valid[:, None, :]
    if not bool(torch.where(valid, torch.isfinite(cost), True).all()):                 # one sync
        _check_finite(cost.cpu().numpy(), size.numpy())
    out: List[Optional[Match]] = [None] * cost.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    for q in torch.unique(size[:, 0]).tolist():                       # blocks with the same number of rows
        members = torch.nonzero(size[:, 0] == q).squeeze(1)
        m_max = int(size[members, 1].max())
        if q == 0 or m_max == 0:
            for i in members.tolist():
                out[i] = (empty, empty)
            continue
        index = members.to(device)
        block = cost.index_select(0, index)[:, :q, :m_max].float()
        real_cols = cols_valid.index_select(0, index)[:, None, :m_max]                  # [n, 1, m_max]
        top = torch.where(real_cols, block, torch.full_like(block, float("-inf"))).amax(dim=(1, 2), keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))        # a block without columns
        pad = torch.zeros_like(top) if q >= m_max else top + 1
        col4row = tla.batch_linear_assignment(torch.where(real_cols, block, pad).contiguous())   # [n, q], -1 none
        keep = (col4row >= 0) & (col4row < size[members, 1, None].to(device))
        # the pairs of all blocks of the group at once, split on the host: two syncs per group, not per block
        block_of, row = torch.nonzero(keep, as_tuple=True)
        counts = torch.bincount(block_of, minlength=len(members)).tolist()
        for i, r, c in zip(members.tolist(), torch.split(row, counts), torch.split(col4row[block_of, row].long(),
                                                                                     counts)):
            out[i] = (r, c)
    return out  # type: ignore[return-value]


def solve_batched(costs: Union[Sequence[Tensor], Tensor], sizes=None, solver: str = "auto",
                  maximize: bool = False) -> List[Match]:
    """Minimum-cost one-to-one matching of every cost block in one call (see the module docstring).

    costs: list of [Q_i, M_i] or padded [N, Q, M]; sizes: None, [N] valid columns (all rows valid) or
    [N, 2] valid (rows, cols) of each padded block (the valid part is the top-left corner). Returns N
    pairs ``(rows, cols)`` int64 on the costs' device, rows ascending, ``min(q, m)`` of each.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    cost, size = _as_padded(costs, sizes)
    if not cost.is_floating_point():
        cost = cost.float()
    solver = resolve_solver(solver, cost.device)
    if cost.shape[0] == 0:
        return []
    if solver == "scipy":
        return _solve_scipy(cost, size, maximize)
    return _solve_tla(cost, size, maximize)


def matching_cost(cost: Tensor, match: Match) -> Tensor:
    """Total cost of a matching. cost [Q, M], (rows, cols) -> scalar (compare solvers on ties)."""
    rows, cols = match
    return cost[rows, cols].sum()
