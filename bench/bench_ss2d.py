"""Four-direction selective scan: the unfused pipeline against the fused ops.

Providers:
* ``unfused``: the way VMamba runs SS2D without its CUDA extension: delta = einsum(dt_weight,
  dt_low) materialised as (B, 4, D, L), ``cross_scan`` copies of u, a sequential per-direction
  scan (the reference loop), ``cross_merge``.
* ``unfused_mamba``: the same pipeline with mamba_ssm's ``selective_scan_fn`` as the 1-D scan
  (skipped when mamba_ssm is not importable).
* ``compile``: torch.compile of ``unfused`` (short sequences only: the loop unrolls per position).
* ``ours_full``: ``cross_selective_scan`` given the materialised delta.
* ``ours_lowrank``: ``cross_selective_scan_lowrank``: no delta tensor at all.

Bytes that must move (s = storage bytes of u, B, C, dt_low; the output and grad_out are fp32):
forward reads u, dt_low, B, C and writes out; backward reads them and grad_out and writes their
gradients. The full-delta variant also reads delta (and writes its gradient).
"""

import pytest
import torch
from conftest import DEVICE, DTYPES, SMOKE, require_device, run_benchmark
from gate_ss2d import make, ss2d_bytes

from svm_kernels import cross_merge, cross_scan, cross_selective_scan, cross_selective_scan_lowrank
from svm_kernels.ss2d.naive import lowrank_delta, order_by_direction, selective_scan_naive

# name: (batch, D, H, W, N, R)
SHAPES = {
    "vmamba_t_stage1": (128, 96, 56, 56, 1, 6),
    "vmamba_t_stage3": (128, 384, 14, 14, 1, 24),
    "svmamba_cifar_stage1": (512, 96, 16, 16, 1, 6),
    "n16": (32, 96, 28, 28, 16, 6),
}
if SMOKE:
    SHAPES = {"smoke": (1, 4, 3, 4, 1, 2)}


def unfused(x, scan=None):
    H, W = x["u"].shape[-2:]
    delta = lowrank_delta(x["dt_low"], x["dt_weight"].to(x["dt_low"].dtype))
    us, deltas = cross_scan(x["u"]), order_by_direction(delta)  # the copies VMamba makes
    Bs, Cs = order_by_direction(x["B"]), order_by_direction(x["C"])
    if scan is None:
        ys = selective_scan_naive(us, deltas, x["A"], Bs, Cs, x["D"], x["dt_bias"], True)
    else:
        ys = scan(us, deltas, x["A"], Bs, Cs, x["D"], x["dt_bias"])
    return cross_merge(ys, H, W)


def unfused_mamba(x):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def scan(us, deltas, A, Bs, Cs, Ds, bias):
        b, k, d, length = us.shape
        y = selective_scan_fn(
            us.reshape(b, k * d, length),
            deltas.reshape(b, k * d, length),
            A.reshape(k * d, -1),
            Bs,
            Cs,
            Ds.reshape(-1),
            delta_bias=bias.reshape(-1),
            delta_softplus=True,
        )
        return y.view(b, k, d, length)

    return unfused(x, scan)


_compiled = {}


def compiled(x):
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(unfused)
    return _compiled["fn"](x)


def ours_full(x):
    return cross_selective_scan(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["dt_bias"], backend="triton"
    )


def ours_lowrank(x):
    return cross_selective_scan_lowrank(
        x["u"], x["dt_low"], x["dt_weight"], x["A"], x["B"], x["C"], x["D"], x["dt_bias"], backend="triton"
    )


PROVIDERS = {
    "unfused": unfused,
    "unfused_mamba": unfused_mamba,
    "compile": compiled,
    "ours_full": ours_full,
    "ours_lowrank": ours_lowrank,
}


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_ss2d(benchmark, provider, shape, dtype, mode):
    require_device()
    if provider == "unfused_mamba":
        pytest.importorskip("mamba_ssm")
    if provider == "compile" and (SMOKE or SHAPES[shape][2] * SHAPES[shape][3] > 256):
        pytest.skip("torch.compile unrolls the per-position loop: short sequences only")
    if provider == "unfused" and not SMOKE and SHAPES[shape][2] * SHAPES[shape][3] > 1024 and mode != "fwd":
        pytest.skip("the per-position Python loop needs minutes per backward at this length")
    x = make(SHAPES[shape], DTYPES[dtype])
    if provider == "ours_full":
        x["delta"] = lowrank_delta(x["dt_low"], x["dt_weight"].to(x["dt_low"].dtype)).contiguous()
    fn = PROVIDERS[provider]
    moved = ss2d_bytes(x, mode, provider == "ours_full")
    info = dict(provider=provider, shape=shape, roofline_note="bytes that must move / time")
    rounds = 3 if provider == "unfused" else 20
    if mode == "fwd":
        with torch.no_grad():
            run_benchmark(benchmark, lambda: fn(x), moved, rounds=rounds, **info)
        return
    leaves = [k for k in ("u", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias", "delta") if k in x]
    for k in leaves:
        x[k].requires_grad_(True)
    grad = torch.randn(x["u"].shape, device=DEVICE)
    tensors = [x[k] for k in leaves]
    if mode == "full":
        run_benchmark(
            benchmark,
            lambda: torch.autograd.grad(fn(x), tensors, grad, allow_unused=True),
            moved,
            rounds=rounds,
            **info,
        )
        return
    out = fn(x)
    run_benchmark(
        benchmark,
        lambda: torch.autograd.grad(out, tensors, grad, retain_graph=True, allow_unused=True),
        moved,
        rounds=rounds,
        **info,
    )
