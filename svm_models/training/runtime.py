"""Where the scripts run: the device (config key ``device``), the CPU thread count (``threads``)
and the C allocator's handling of freed memory.

Threads: on a CPU the intra-op thread count changes both the speed and the floating-point
summation order, hence the results (bit for bit reproducible only at the same count). The
default is :data:`DEFAULT_CPU_THREADS`, measured best for the project's small models on a busy
2-core machine (README, "Threads"). Precedence: the config's ``threads`` (also ``--opts
threads=N``), else ``OMP_NUM_THREADS`` when set, else the default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems
RETAINED_BLOCK_BYTES = 32 << 20
RETAINED_TOTAL_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Keep freed CPU tensor memory in the process for the next step (Linux, glibc only).

    By default glibc hands each tensor above a few hundred KiB to the kernel when it is freed
    and maps fresh pages for the next one, so every training step page-faults through its large
    temporaries again: a (64, 4, 32, 64) fp32 tensor of the digits scan, 2 MiB, took ~1 ms to
    fill fresh and ~0.1 ms reused. Serving blocks up to :data:`RETAINED_BLOCK_BYTES` from the
    heap and trimming it only past :data:`RETAINED_TOTAL_BYTES` free keeps those pages mapped.
    Returns whether the allocator took the settings (False elsewhere: macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, RETAINED_TOTAL_BYTES)
    )
