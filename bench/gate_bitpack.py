"""Gate cases of the spike bit-pack op (pack a {0, 1} spike tensor into bits and back).

The op is ``svm_kernels.bitpack``: ``pack_bits(s) -> packed`` and ``unpack_bits(packed, shape,
dtype) -> s``. Bytes that must move: pack reads the spikes (s bytes per element) and writes one bit
per element; unpack the reverse.
"""

from __future__ import annotations

import torch
from gate import DEVICE, Case, provider, timed_row
from shapes import LIF_SHAPES, LIF_SMOKE

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def bitpack_op():
    from svm_kernels.bitpack import pack_bits, unpack_bits

    def pack(s):
        return pack_bits(s, backend="triton")

    def unpack(packed, shape, dtype):
        return unpack_bits(packed, shape, dtype, backend="triton")

    return pack, unpack


def _spikes(T, n, dtype):
    return (torch.rand(T, n, device=DEVICE) < 0.2).to(dtype)


def check(T, n, dtype):
    pack, unpack = bitpack_op()
    s = _spikes(T, n, dtype)
    back = unpack(pack(s), s.shape, s.dtype)
    return dict(max_rel_err=(back.double() - s.double()).abs().max().item(), ok=bool(torch.equal(back, s)))


def time_case(T, n, dtype, mode):
    pack, unpack = bitpack_op()
    s = _spikes(T, n, dtype)
    moved = s.numel() * s.element_size() + s.numel() // 8
    if mode == "pack":
        return timed_row(lambda: pack(s), moved)
    packed = pack(s)
    return timed_row(lambda: unpack(packed, s.shape, s.dtype), moved)


@provider("bitpack")
def bitpack_cases(smoke: bool):
    shapes = LIF_SMOKE if smoke else LIF_SHAPES
    for name, (T, n) in shapes.items():
        for dt_name, dtype in DTYPES.items():
            case = dict(shape=name, dims=[T, n], dtype=dt_name)
            run = lambda a=(T, n, dtype): check(*a)
            yield Case("bitpack", "ours", "check", {**case, "mode": "check"}, run, 30, priority=2)
            for mode in ("pack", "unpack"):
                run = lambda a=(T, n, dtype, mode): time_case(*a)
                yield Case("bitpack", "ours", "ours", {**case, "mode": mode}, run, 30, priority=2)
