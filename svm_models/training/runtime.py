"""Where the scripts run: the device (config key ``device``) and the CPU thread count (``threads``).

Threads: on a CPU the intra-op thread count changes both the speed and the floating-point
summation order, hence the results (bit for bit reproducible only at the same count). The
default is :data:`DEFAULT_CPU_THREADS`, measured best for the project's small models on a busy
2-core machine (README, "Threads"). Precedence: the config's ``threads`` (also ``--opts
threads=N``), else ``OMP_NUM_THREADS`` when set, else the default.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .config import ConfigError

DEFAULT_CPU_THREADS = 1


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``None`` -> cuda (this process's GPU under torchrun) when available, else cpu."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but no CUDA device is available (use cpu)")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else local_rank % count
        if index >= count:
            raise ConfigError(f"device {name!r} requested but only {count} CUDA device(s) exist")
        device = torch.device("cuda", index)
    return device


def thread_count(cfg: dict[str, Any]) -> int:
    """The CPU threads a run uses (see the module docstring for the precedence)."""
    if cfg.get("threads") is not None:
        return int(cfg["threads"])
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return DEFAULT_CPU_THREADS


def set_threads(cfg: dict[str, Any]) -> int:
    """Apply :func:`thread_count` to torch's intra-op pool; returns it."""
    n = thread_count(cfg)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
