"""torch.distributed glue: who writes files, and averaging meta-gradients across ranks.

Without ``torchrun`` (no process group) every function is a no-op for a single process, so the
trainer calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as tdist

from metakit.episodes import MetaBatch


def is_initialized() -> bool:
    """Whether a process group is active."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return tdist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Only rank 0 writes checkpoints, logs and reports."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; return whether one exists.

    gloo on CPU, nccl when CUDA is available.
    """
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    tdist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group, if any (after training)."""
    if is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def shard(batch: MetaBatch) -> MetaBatch:
    """This rank's tasks of a meta-batch (every ``world_size``-th task, starting at ``rank``)."""
    n = world_size()
    if n == 1:
        return batch
    r = rank()
    return replace(
        batch,
        support_x=batch.support_x[r::n],
        support_y=batch.support_y[r::n],
        query_x=batch.query_x[r::n],
        query_y=batch.query_y[r::n],
        classes=None if batch.classes is None else batch.classes[r::n],
    )


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not is_initialized():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(tensor.data, src=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` over ranks (each rank's meta-batch shard)."""
    if not is_initialized():
        return
    n = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
        p.grad.div_(n)
