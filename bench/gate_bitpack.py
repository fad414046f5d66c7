"""Gate cases of the spike bit-pack op (pack a {0, 1} spike tensor into bits and back).

The op is being added to ``svm_kernels``; until it exists every case is a row skipped with the
reason. Expected API: ``svm_kernels.pack_spikes(s) -> packed`` and
``svm_kernels.unpack_spikes(packed, shape, dtype) -> s``. Bytes that must move: pack reads the
spikes (s bytes per element) and writes one bit per element; unpack the reverse.
"""

from __future__ import annotations

import torch
from gate import DEVICE, Case, Skip, provider, timed_row
from shapes import LIF_SHAPES, LIF_SMOKE

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def bitpack_op():
    import svm_kernels

    pack, unpack = getattr(svm_kernels, "pack_spikes", None), getattr(svm_kernels, "unpack_spikes", None)
    if pack is None or unpack is None:
        raise Skip("svm_kernels has no spike bit-pack op yet (pack_spikes / unpack_spikes)")
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
            yield Case("bitpack", "ours", "check", {**case, "mode": "check"}, run, 30)
            for mode in ("pack", "unpack"):
                run = lambda a=(T, n, dtype, mode): time_case(*a)
                yield Case("bitpack", "ours", "ours", {**case, "mode": mode}, run, 30)
