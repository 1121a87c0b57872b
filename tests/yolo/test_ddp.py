"""Two CPU processes (gloo) train with DDP: parameters stay identical across ranks; rank 0 writes the files."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, dump_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from detassign.yolo.train import train
    from tests.yolo.test_train import toy_config

    try:
        result = train(toy_config(out_dir, n=8, batch=4, nominal_batch=4, max_steps=3, augment=True))
        flat = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
        torch.save({"ema": flat, "steps": result.steps}, f"{dump_dir}/rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_process_ddp_keeps_ranks_in_sync(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(dump)), nprocs=2, join=True)
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert r0["steps"] == r1["steps"] == 3
    # same averaged gradients -> the same weights on both ranks at every step (so the same EMA of them).
    # BatchNorm running statistics are rank-local after the last forward (DDP re-broadcasts rank 0's before
    # each forward); only rank 0's EMA is validated and saved, as in ultralytics.
    assert torch.equal(r0["ema"], r1["ema"])
    from detassign.yolo.train import load_checkpoint

    # written by rank 0 only (one file each, no per-rank copies); stopped mid-epoch 2, so no best.pt yet
    ckpt = load_checkpoint(out / "weights" / "last.pt")
    assert ckpt["updates"] == 3 and sorted(p.name for p in out.iterdir()) == ["config.json", "results.csv", "weights"]
    assert sorted(p.name for p in (out / "weights").iterdir()) == ["last.pt"]
