"""Process-group setup for ``torchrun`` (NCCL on CUDA, gloo on the CPU) and small helpers.

Launched as ``torchrun --nproc_per_node=N train.py --config ...``, each process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment; a plain ``python train.py`` is world size 1.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before :func:`setup`."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


_group_started = False  # set once this process joined a process group (errors after it: see fail_together)


def group_started() -> bool:
    """Whether this process has joined a torchrun process group."""
    return _group_started


def peer_failed(e: BaseException) -> bool:
    """Whether ``e`` is a collective broken by another process's exit: the connection closed or
    reset by the peer (not any backend error: NCCL's own, an out-of-memory one, is this rank's)."""
    text = str(e)
    return "closed by peer" in text or "reset by peer" in text


def _mark_group_started() -> None:
    global _group_started
    _group_started = True


def fail_together(status: int, timeout_s: float = 60.0) -> None:
    """Under torchrun, for an error found before the process group exists (a bad config): count
    this rank as failed in the launcher's key-value store, wait until every rank has, and exit
    with ``status`` (a SIGTERM meanwhile exits with ``status`` too). torchrun stops the other ranks as soon as one exits;
    without this, a rank still checking its config would die by SIGTERM instead of exiting 2."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "MASTER_ADDR" not in os.environ or _group_started:
        return
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        signal.signal(signal.SIGTERM, lambda *_: os._exit(status))
        key = f"svm_models/failed/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
        store.add(key, 1)
        deadline = time.monotonic() + timeout_s
        while store.add(key, 0) < world and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # no store (another launcher): exit on our own
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # all ranks at once: no slow interpreter teardown for torchrun to race


def setup(device_name: str | None = None) -> DistInfo:
    """Join the torchrun process group (if any) on ``device_name`` (the config's ``device``)."""
    from .runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = env_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _mark_group_started()
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=world,
            **({"device_id": device} if cuda else {}),
        )
    return DistInfo(rank, world, local, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over the processes (on the process's device, as NCCL needs); same device back."""
    if not info.distributed:
        return t
    work = t.to(info.device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def broadcast_module(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every process (BatchNorm running statistics
    drift apart under DDP, each process updating them from its own shard)."""
    if not info.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
