"""Data-parallel training on CPUs: DistributedDataParallel over gloo, one module for the rest.

A run is `world` processes (`ttr train --nproc N` starts them on this machine; `torchrun` starts
them on several, and sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT). Every process reads the
same rows and draws the same epoch order from the same seed; each trains on its own slice of
every batch, and DDP averages the gradients, so one step sees the whole batch, as one process
would (the in-batch negatives are each slice's own). Process 0 reports progress and publishes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def main() -> bool:
    """Whether this process reports and publishes (process 0, or the only one)."""
    return rank() == 0


def join_from_env() -> bool:
    """Join the process group `torchrun` (or `launch`) described in the environment, once; false
    where the environment describes none."""
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("gloo")
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world())))
    torch.set_num_threads(threads)  # the cores shared, not every process on all of them
    return True


def leave() -> None:
    if active():
        dist.destroy_process_group()


def wrap(module: nn.Module) -> nn.Module:
    """`module` under DDP in a process group (its parameters broadcast from process 0), else
    itself."""
    return nn.parallel.DistributedDataParallel(module) if active() else module


def my_slice(rows: torch.Tensor) -> torch.Tensor:
    """This process's share of a batch: every `world`-th row from its rank (all of it alone)."""
    return rows[rank() :: world()]


def agree(value: Any) -> Any:
    """Process 0's `value`, on every process (a decision all must take together)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(fn: Callable[..., None], nproc: int, *args: Any) -> None:
    """Run `fn(*args)` in `nproc` new processes on this machine, joined in one gloo group (an
    error in any is raised here)."""
    import torch.multiprocessing as mp

    port = _free_port()
    mp.start_processes(_entry, args=(nproc, port, fn, args), nprocs=nproc, start_method="spawn")


def _entry(index: int, nproc: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})  # fmt: skip
    join_from_env()
    try:
        fn(*args)
    finally:
        leave()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
