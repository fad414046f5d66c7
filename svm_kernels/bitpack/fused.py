"""Triton bit packing: 8 spikes per byte, one read of the spikes and one write of the bytes.

Layout as in :mod:`.naive` (element ``8 * i + j`` is bit ``j`` of byte ``i``). Each program
handles ``BLOCK`` bytes as a (BLOCK, 8) tile of elements; the last program masks the tail, so
any n works. The ops are registered with ``torch.library`` so that ``torch.compile`` traces
through them.
"""

from __future__ import annotations

import torch

from .. import utils
from ..utils import HAS_TRITON, autotune_configs, cdiv, new_buffer
from .naive import BITS_PER_BYTE, packed_size

if HAS_TRITON:
    import triton
    import triton.language as tl

    _CONFIGS = autotune_configs(
        [
            triton.Config({"BLOCK": 256}, num_warps=4),
            triton.Config({"BLOCK": 512}, num_warps=4),
            triton.Config({"BLOCK": 1024}, num_warps=8),
        ],
        triton.Config({"BLOCK": 64}, num_warps=4),
    )

    @triton.autotune(configs=_CONFIGS, key=["n_bytes"])
    @triton.jit
    def pack_bits_kernel(x_ptr, packed_ptr, n, n_bytes, BLOCK: tl.constexpr, BITS: tl.constexpr):
        i_b = tl.program_id(0)
        o_byte = i_b * BLOCK + tl.arange(0, BLOCK)
        o_bit = tl.arange(0, BITS)
        # int64 element offsets: n may exceed 2**31 for large activations.
        o_elem = o_byte.to(tl.int64)[:, None] * BITS + o_bit[None, :]
        m_elem = o_elem < n
        b_x = tl.load(x_ptr + o_elem, mask=m_elem, other=0)
        b_bits = (b_x != 0).to(tl.int32) << o_bit[None, :]
        b_packed = tl.sum(b_bits, axis=1)  # distinct powers of two: the sum is an OR
        tl.store(packed_ptr + o_byte, b_packed.to(tl.uint8), mask=o_byte < n_bytes)

    @triton.autotune(configs=_CONFIGS, key=["n_bytes"])
    @triton.jit
    def unpack_bits_kernel(packed_ptr, out_ptr, n, n_bytes, BLOCK: tl.constexpr, BITS: tl.constexpr):
        i_b = tl.program_id(0)
        o_byte = i_b * BLOCK + tl.arange(0, BLOCK)
        o_bit = tl.arange(0, BITS)
        b_packed = tl.load(packed_ptr + o_byte, mask=o_byte < n_bytes, other=0).to(tl.int32)
        b_bits = (b_packed[:, None] >> o_bit[None, :]) & 1
        o_elem = o_byte.to(tl.int64)[:, None] * BITS + o_bit[None, :]
        # Through fp32: 0 and 1 are exact in every float dtype (a direct int -> bf16 cast is not
        # supported by the interpreter).
        b_out = b_bits.to(tl.float32).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + o_elem, b_out, mask=o_elem < n)


def _grid(n_bytes: int):
    return lambda meta: (cdiv(n_bytes, meta["BLOCK"]),)


def pack_bits_fwd(x: torch.Tensor) -> torch.Tensor:
    """Launch the pack kernel on a contiguous tensor; returns uint8 (ceil(n / 8),)."""
    n = x.numel()
    n_bytes = packed_size(n)
    packed = new_buffer(n_bytes, device=x.device, dtype=torch.uint8)
    if utils.POISON_OUTPUTS:  # NaN does not exist in uint8: a byte pattern no test input packs to
        packed.fill_(0xA5)
    if n_bytes:
        pack_bits_kernel[_grid(n_bytes)](x_ptr=x, packed_ptr=packed, n=n, n_bytes=n_bytes, BITS=BITS_PER_BYTE)
    return packed


def unpack_bits_fwd(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Launch the unpack kernel; returns a flat (numel,) tensor of ``dtype``."""
    out = new_buffer(numel, device=packed.device, dtype=dtype)
    n_bytes = packed_size(numel)
    if n_bytes:
        unpack_bits_kernel[_grid(n_bytes)](
            packed_ptr=packed, out_ptr=out, n=numel, n_bytes=n_bytes, BITS=BITS_PER_BYTE
        )
    return out


# ---- torch.library registration: torch.compile traces through these ops without graph breaks.


@torch.library.custom_op("svmamba::pack_bits", mutates_args=())
def pack_bits_op(x: torch.Tensor) -> torch.Tensor:
    return pack_bits_fwd(x)


@pack_bits_op.register_fake
def _(x):
    return x.new_empty(packed_size(x.numel()), dtype=torch.uint8)


@torch.library.custom_op("svmamba::unpack_bits", mutates_args=())
def unpack_bits_op(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return unpack_bits_fwd(packed, numel, dtype)


@unpack_bits_op.register_fake
def _(packed, numel, dtype):
    return packed.new_empty(numel, dtype=dtype)
