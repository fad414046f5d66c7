"""Plain PyTorch bit packing: the reference for the Triton kernels, and the CPU path.

Layout (shared by every backend): the tensor is read as a flat array of n elements in its
logical (row-major) order; element ``8 * i + j`` is bit ``j`` of byte ``i`` (least significant
bit first). The last byte is padded with zero bits, so ``ceil(n / 8)`` bytes hold n spikes.
"""

from __future__ import annotations

import torch

BITS_PER_BYTE = 8


def packed_size(numel: int) -> int:
    """Bytes that hold ``numel`` spikes."""
    return (numel + BITS_PER_BYTE - 1) // BITS_PER_BYTE


def _bit_weights(device) -> torch.Tensor:
    return torch.tensor([1 << j for j in range(BITS_PER_BYTE)], dtype=torch.uint8, device=device)


def pack_bits_naive(x: torch.Tensor) -> torch.Tensor:
    """Any tensor -> uint8 (ceil(n / 8),): bit set where the element is nonzero."""
    flat = x.reshape(-1) != 0
    pad = packed_size(flat.numel()) * BITS_PER_BYTE - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, BITS_PER_BYTE).to(torch.uint8) * _bit_weights(x.device)
    # Distinct powers of two: the sum is an OR, and it fits a byte.
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bits_naive(packed: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (ceil(n / 8),) -> a contiguous tensor of ``shape`` and ``dtype`` holding 0 and 1."""
    shape = torch.Size(shape)
    bits = (packed.reshape(-1, 1) & _bit_weights(packed.device)) != 0
    return bits.reshape(-1)[: shape.numel()].to(dtype).reshape(shape)
