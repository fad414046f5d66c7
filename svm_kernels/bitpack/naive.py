"""Plain PyTorch bit packing: the reference for the Triton kernels, and the CPU path.

Layout (shared by every backend): the tensor is read as a flat array of n elements in its
logical (row-major) order; element ``8 * i + j`` is bit ``j`` of byte ``i`` (least significant
bit first). The last byte is padded with zero bits, so ``ceil(n / 8)`` bytes hold n spikes.
"""

from __future__ import annotations

import functools

import torch

BITS_PER_BYTE = 8


def packed_size(numel: int) -> int:
    """Bytes that hold ``numel`` spikes."""
    return (numel + BITS_PER_BYTE - 1) // BITS_PER_BYTE


# Byte-wide multiply that gathers 8 bytes holding 0/1 into one byte: byte j of a little-endian
# int64 (at bit 8j) times 2^(56 - 7j) lands at bit 56 + j. The 64 partial products all fall on
# distinct bits (8j - 7k is unique for j, k in 0..7), so nothing carries, and bits 56..63 hold
# exactly the 8 flags; the bits above 63 wrap away (integer multiply is modulo 2^64).
_GATHER_BITS = sum(1 << (56 - 7 * j) for j in range(BITS_PER_BYTE))  # 0x0102040810204080


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8) of ``dtype``: row p holds the 8 bits of p, least significant first."""
    bits = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(BITS_PER_BYTE, device=device)) & 1
    return bits.to(dtype).contiguous()


_cached_bit_table = functools.lru_cache(maxsize=16)(_bit_table)


def _unpack_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Eager calls reuse one table per device and dtype; a traced graph builds its own (Dynamo
    # would trace through the cache anyway, and warns that it does).
    if torch.compiler.is_compiling():
        return _bit_table(device, dtype)
    return _cached_bit_table(device, dtype)


def pack_bits_naive(x: torch.Tensor) -> torch.Tensor:
    """Any tensor -> uint8 (ceil(n / 8),): bit set where the element is nonzero."""
    flags = (x != 0).reshape(-1)  # compare first: a strided x is then copied at 1 byte per element
    pad = packed_size(flags.numel()) * BITS_PER_BYTE - flags.numel()
    if pad:
        flags = torch.cat([flags, flags.new_zeros(pad)])
    # Vectorised over whole bytes: 8 flags (one byte each) are one int64 word. The flags as bytes
    # are a view in eager mode; traced, a conversion (which inductor fuses), since the inductor of
    # torch 2.11 cannot lower a bool tensor viewed as uint8.
    flags = flags.to(torch.uint8) if torch.compiler.is_compiling() else flags.view(torch.uint8)
    words = flags.view(torch.int64)
    return ((words * _GATHER_BITS) >> 56).to(torch.uint8)


def unpack_bits_naive(packed: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (ceil(n / 8),) -> a contiguous tensor of ``shape`` and ``dtype`` holding 0 and 1."""
    shape = torch.Size(shape)
    # One gather of 8-element rows writes the output in its dtype directly.
    rows = torch.index_select(_unpack_table(packed.device, dtype), 0, packed.reshape(-1).int())
    return rows.view(-1)[: shape.numel()].view(shape)
