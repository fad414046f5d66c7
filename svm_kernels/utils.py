"""Shared plumbing for the kernels: backend choice, input checks and Triton availability.

Every public op takes ``backend`` in {"auto", "triton", "torch"}:

* ``"torch"``  -- the plain PyTorch reference (``naive.py`` beside each op); runs anywhere.
* ``"triton"`` -- the fused kernels; needs CUDA tensors, or CPU tensors while Triton's
  interpreter is on (``TRITON_INTERPRET=1`` set before ``triton`` is first imported).
* ``"auto"``   -- Triton for CUDA tensors, the reference otherwise, so that a model
  trains on any machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD

try:  # triton is a Linux-only dependency; the reference paths work without it.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on platforms without triton
    HAS_TRITON = False

# Triton reads this variable when a kernel is *defined*, so it must be read once, at import.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_int(value) -> bool:
    """An int that is no bool: True is an int to Python, and ``d_state=True`` would build 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or a float that is no bool (``v_threshold=True`` would run as 1.0)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cdiv(a: int, b: int) -> int:
    """Ceiling division of integers on the host: the launchers size grids on every call, and
    ``triton.cdiv`` is a constexpr function since Triton 3.8 (~3 us a call)."""
    return -(-a // b)


BACKENDS = ("auto", "triton", "torch")
# Storage dtypes the fused kernels read and write (they compute in fp32 whatever the storage).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_backend(backend: str) -> str:
    """``backend`` if it names one (modules check it when built, not at their first call)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, *tensors: torch.Tensor | None) -> str:
    """Turn ``backend`` into "triton" or "torch" for the given tensors, or raise."""
    check_backend(backend)
    devices = {t.device.type for t in tensors if t is not None}
    on_cuda = devices == {"cuda"}
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if (on_cuda and HAS_TRITON) else "torch"
    # backend == "triton"
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    if not on_cuda and not TRITON_INTERPRET:
        raise ValueError(
            "backend='triton' needs CUDA tensors (got device "
            f"{sorted(devices)}); on the CPU set TRITON_INTERPRET=1 before importing "
            "triton, or use backend='torch'"
        )
    return "triton"


# The floating dtypes every op takes (float8 has no arithmetic of its own in PyTorch)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got dtype {t.dtype}")


def check_flag(name: str, value) -> bool:
    """``value`` if it is a bool (numpy's included): "false" from a config file, or None, would
    otherwise pass as true or false."""
    if isinstance(value, str) or value not in (True, False):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_no_tangents(op: str, *tensors: torch.Tensor | None) -> None:
    """Refuse forward-mode AD (``torch.func.jvp``, ``forward_ad`` dual tensors) by name: the ops
    define no forward derivative, and the custom ops' path drops the tangents (jvp returned
    zeros) where the eager one fails with autograd's own message."""
    if getattr(fwAD, "_current_level", -1) < 0:
        return
    if any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            f"{op} has no forward-mode derivative (torch.func.jvp, forward_ad); use reverse mode "
            "(.backward() or torch.autograd.grad; torch.func.grad and vjp reject the custom ops' "
            "autograd)"
        )


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers its storage span exactly once (any dimension order).

    Such a tensor can be walked as a flat array of ``numel`` elements; ``empty_like``
    reproduces its strides, so an output indexed by the same flat offsets lines up.
    """
    if t.numel() <= 1:
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def time_major_dense(x: torch.Tensor) -> bool:
    """True when ``x`` (T, *) is dense with time as its outermost dimension in memory.

    Then step t starts at ``t * x.stride(0)`` and every step is the same flat block, whatever
    the order of the inner dimensions (contiguous, channels_last, transposed...).
    """
    return is_dense(x) and (x.shape[0] == 1 or x.stride(0) == x[0].numel())


def autotune_configs(configs: list, interpreter_config) -> list:
    """Autotuning under the interpreter would run every config serially on the CPU: use one."""
    return [interpreter_config] if TRITON_INTERPRET else configs


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides on every dimension that has more than one element."""
    return a.shape == b.shape and all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


# Tests set this to fill every kernel output with NaN before launch, so that an element the
# kernel forgets to write fails the comparison instead of passing with stale memory.
POISON_OUTPUTS = False


def _poisoned(out: torch.Tensor) -> torch.Tensor:
    return out.fill_(float("nan")) if POISON_OUTPUTS and out.is_floating_point() else out


def new_output(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``empty_like`` (strides kept for dense tensors), NaN-filled when POISON_OUTPUTS is on."""
    return _poisoned(torch.empty_like(like, dtype=dtype))


def new_buffer(*shape: int, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A contiguous buffer a kernel fills, NaN-filled when POISON_OUTPUTS is on."""
    return _poisoned(torch.empty(shape, dtype=dtype, device=device))
