"""Public bit-packing functions: argument checks and backend choice.

``pack_bits`` stores a binary tensor (spikes) as 1 bit per element, ``unpack_bits`` restores
it exactly. Spiking layers keep the packed form for the backward instead of a float tensor:
32x fewer bytes than fp32, 16x fewer than bf16. ``pack_bytes_moved`` / ``unpack_bytes_moved``
give the DRAM traffic of one call, for bandwidth figures.
"""

from __future__ import annotations

import torch

from ..utils import TRITON_DTYPES, check_flag, is_int, resolve_backend
from .fused import pack_bits_op, unpack_bits_op
from .naive import pack_bits_naive, packed_size, unpack_bits_naive

# Dtypes a spike tensor may have: the float storage dtypes, and bool.
PACKABLE_DTYPES = (*TRITON_DTYPES, torch.float64, torch.bool)


def is_binary(x: torch.Tensor) -> bool:
    """True when every element of ``x`` is exactly 0 or 1 (one pass over x; a debug check)."""
    if x.dtype == torch.bool:
        return True
    return bool(((x == 0) | (x == 1)).all())


def pack_bits(x: torch.Tensor, check: bool = False, backend: str = "auto") -> torch.Tensor:
    """Pack ``x`` to uint8 (ceil(numel / 8),), 8 elements per byte, bit set where x != 0.

    Elements are taken in x's logical (row-major) order, whatever its strides. Only spikes
    (0/1 values) survive the round trip; ``check=True`` raises ValueError on anything else
    instead of silently mapping it to 1.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in PACKABLE_DTYPES:
        raise TypeError(f"x must be one of {PACKABLE_DTYPES}, got {x.dtype}")
    if check_flag("check", check) and not is_binary(x):
        raise ValueError("pack_bits got a tensor with values other than 0 and 1 (not spikes)")
    use = resolve_backend(backend, x)
    if use == "triton" and x.dtype not in TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(f"backend='triton' packs fp16, bf16 and fp32 tensors, got {x.dtype}")
        use = "torch"
    if use == "torch":
        return pack_bits_naive(x)
    return pack_bits_op(x.contiguous())


def unpack_bits(
    packed: torch.Tensor, shape, dtype: torch.dtype = torch.float32, backend: str = "auto"
) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a contiguous tensor of ``shape`` and ``dtype`` holding 0 and 1."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed))}")
    shape = _as_shape(shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"shape must have no negative size, got {tuple(shape)}")
    if packed.numel() != packed_size(shape.numel()):
        raise ValueError(
            f"packed holds {packed.numel()} bytes, but shape {tuple(shape)} needs {packed_size(shape.numel())}"
        )
    if dtype not in PACKABLE_DTYPES:
        raise TypeError(f"dtype must be one of {PACKABLE_DTYPES}, got {dtype}")
    use = resolve_backend(backend, packed)
    if use == "triton" and dtype not in TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(f"backend='triton' unpacks to fp16, bf16 and fp32, got {dtype}")
        use = "torch"
    if use == "torch":
        return unpack_bits_naive(packed, shape, dtype)
    return unpack_bits_op(packed.contiguous(), shape.numel(), dtype).view(shape)


def _as_shape(shape) -> torch.Size:
    """``shape`` as a torch.Size: a sequence of ints, or one int (as ``torch.empty`` takes)."""
    if is_int(shape):
        return torch.Size((shape,))
    try:
        return torch.Size(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None


def pack_bytes_moved(numel: int, dtype: torch.dtype) -> int:
    """DRAM bytes one :func:`pack_bits` call moves: read the elements, write the bytes."""
    return numel * torch.empty(0, dtype=dtype).element_size() + packed_size(numel)


def unpack_bytes_moved(numel: int, dtype: torch.dtype) -> int:
    """DRAM bytes one :func:`unpack_bits` call moves: read the bytes, write the elements."""
    return pack_bytes_moved(numel, dtype)
