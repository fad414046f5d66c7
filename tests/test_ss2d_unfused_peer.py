"""The fla-based unfused SS2D peer (bench/ss2d_unfused.py), the gate's speed comparison for SS2D.

Its pipeline with the plain recurrence against our float64 reference (always), the segmented
recurrence that keeps each fla call within one chunk against the plain loop (always), and fla's
chunk_hgrn through it when fla-core is importable (forward under the Triton interpreter; the
gradients on CUDA only, as fla's backward cannot run in the interpreter).
"""

import math

import pytest
import torch
from helpers import DEVICE, assert_close_rel, load_bench

from svm_kernels.ss2d.naive import cross_selective_scan_naive, lowrank_delta

ARGS = ("u", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")


peer = load_bench("ss2d_unfused")


def make_inputs(batch, D, H, W, R, dtype=torch.float64, device="cpu"):
    """VMamba-like values at d_state 1: dt around softplus(-4) and A in [-1.5, -0.5], so that each
    step forgets ~2 % and states carry across many positions (and across fla's chunks)."""
    kw = dict(dtype=dtype, device=device)
    return dict(
        u=torch.randn(batch, D, H, W, **kw),
        dt_low=torch.randn(batch, 4, R, H, W, **kw) * 0.5,
        dt_weight=torch.randn(4, D, R, **kw) * R**-0.5,
        A=-torch.rand(4, D, 1, **kw) - 0.5,
        B=torch.randn(batch, 4, 1, H, W, **kw),
        C=torch.randn(batch, 4, 1, H, W, **kw),
        D=torch.randn(4, D, **kw),
        dt_bias=torch.randn(4, D, **kw) * 0.5 - 4.0,
    )


def reference(x):
    delta = lowrank_delta(x["dt_low"], x["dt_weight"])
    return cross_selective_scan_naive(
        x["u"], delta, x["A"], x["B"], x["C"], x["D"], x["dt_bias"], delta_softplus=True
    )


def output_and_grads(fn, x, grad_out, names=ARGS):
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    out = fn(leaves)
    return out, torch.autograd.grad(out, [leaves[k] for k in names], grad_out)


def pipeline(recurrence):
    return lambda x: peer.ss2d_unfused(*(x[k] for k in ARGS), recurrence=recurrence)


def loop_in_segments(segment):
    return lambda x, g: peer.segmented_recurrence(x, g, peer.sequential_recurrence, segment)


# ---- the pipeline's algebra, with recurrences that need no fla ----------------------------------


@pytest.mark.parametrize(
    "recurrence",
    [peer.sequential_recurrence, loop_in_segments(4)],
    ids=["plain_loop", "loop_in_segments_of_4"],
)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_pipeline_matches_the_float64_reference(recurrence, dtype, tol):
    # odd sizes, H != W: the four orders and their merge; L = 63 = 15 segments of 4 + 3
    x64 = make_inputs(2, 5, 7, 9, 3)
    grad_out = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    ref, ref_grads = output_and_grads(reference, x64, grad_out)
    x = {k: v.to(dtype) for k, v in x64.items()}
    out, grads = output_and_grads(pipeline(recurrence), x, grad_out.to(dtype))
    assert out.dtype == dtype
    assert_close_rel(out, ref, tol, "out")
    for name, got, want in zip(ARGS, grads, ref_grads):
        assert_close_rel(got, want, tol, f"d_{name}")


def test_pipeline_refuses_more_than_one_state():
    x = make_inputs(1, 3, 2, 3, 2)
    x["A"] = x["A"].expand(4, 3, 2)
    with pytest.raises(ValueError, match="N = 1 only"):
        pipeline(peer.sequential_recurrence)(x)


# ---- the segmented recurrence (how fla_recurrence calls chunk_hgrn) -----------------------------


def slow_gates(batch, L, D, dtype=torch.float64, device="cpu"):
    """x and log-gates ~ -0.02 a step, as SS2D's dt A at VMamba's dt_bias: states carry far."""
    x = torch.randn(batch, L, D, dtype=dtype, device=device)
    g = -(torch.rand(batch, L, D, dtype=dtype, device=device) * 0.03 + 0.005)
    return x, g


@pytest.mark.parametrize(
    "L, segment",
    [(1, 4), (4, 4), (5, 4), (37, 2), (37, 3), (200, 7), (300, 64)],
    ids=lambda v: str(v),
)
def test_segmented_recurrence_matches_the_loop(L, segment):
    # 37 in segments of 2 needs three levels of chaining (37 -> 19 -> 10 -> 5 -> 3 -> 2)
    x, g = slow_gates(2, L, 3)
    grad_out = torch.randn_like(x)
    loop = lambda t: peer.sequential_recurrence(t["x"], t["g"])
    segmented = lambda t: peer.segmented_recurrence(t["x"], t["g"], peer.sequential_recurrence, segment)
    ref, ref_grads = output_and_grads(loop, dict(x=x, g=g), grad_out, names=("x", "g"))
    out, grads = output_and_grads(segmented, dict(x=x, g=g), grad_out, names=("x", "g"))
    assert_close_rel(out, ref, 1e-12, "h")
    for name, got, want in zip("xg", grads, ref_grads):
        assert_close_rel(got, want, 1e-12, f"d_{name}")


def test_segmented_recurrence_reads_only_its_inputs():
    # x and g as strided views into NaN-filled buffers: padding and chaining must not touch
    # anything outside them, and every output position must be written
    x, g = slow_gates(2, 45, 3)
    x_buf = torch.full((2, 90, 5), math.nan, dtype=x.dtype)
    g_buf = torch.full((2, 90, 5), math.nan, dtype=g.dtype)
    x_buf[:, ::2, 1:4], g_buf[:, ::2, 1:4] = x, g
    out = peer.segmented_recurrence(x_buf[:, ::2, 1:4], g_buf[:, ::2, 1:4], peer.sequential_recurrence, 4)
    assert_close_rel(out, peer.sequential_recurrence(x, g), 1e-12, "h")


def test_segmented_recurrence_keeps_a_half_storage_dtype():
    x, g = slow_gates(1, 150, 4, dtype=torch.float32)
    out = peer.segmented_recurrence(x.bfloat16(), g.bfloat16(), peer.sequential_recurrence, 8)
    assert out.dtype == torch.bfloat16
    # the carry runs in float32: only the roundings of the storage dtype remain
    assert_close_rel(out, peer.sequential_recurrence(x.bfloat16().double(), g.bfloat16().double()), 3e-2)


def test_segments_must_shorten_the_sequence():
    x, g = slow_gates(1, 5, 2)
    with pytest.raises(ValueError, match="at least 2"):
        peer.segmented_recurrence(x, g, peer.sequential_recurrence, 1)


# ---- fla's chunk_hgrn through the segmented recurrence (optional peer) -------------------------


@pytest.fixture
def fla_hgrn(monkeypatch):
    """fla-core's HGRN kernels; under the interpreter each autotuner gets one config (it cannot
    benchmark without a GPU): BD = 32, so a width of 40 spans two channel blocks."""
    hgrn = pytest.importorskip(
        "fla.ops.hgrn.chunk", reason="fla-core (the optional SS2D peer) is not installed"
    )
    if DEVICE == "cpu":
        for name in ("chunk_hgrn_fwd_kernel_h", "chunk_hgrn_bwd_kernel_h"):
            kernel = getattr(hgrn, name)
            monkeypatch.setattr(kernel, "configs", kernel.configs[:1])
    return hgrn


def _fla_gradients_or_skip():
    if DEVICE == "cpu":
        pytest.skip(
            "fla's chunk_hgrn backward cannot run under the Triton interpreter "
            "(chunk_hgrn_bwd_kernel_o calls .to() on a Python int); checked on CUDA"
        )


@pytest.mark.parametrize("with_grads", [False, True], ids=["forward", "gradients"])
def test_fla_recurrence_matches_the_loop(fla_hgrn, with_grads):
    if with_grads:
        _fla_gradients_or_skip()
    # L = 200: four segments (the last one short) and a second level; 40 channels: two blocks
    x, g = slow_gates(2, 200, 40, dtype=torch.float32, device=DEVICE)
    x64, g64 = x.double(), g.double()
    ref = peer.sequential_recurrence(x64, g64)
    if not with_grads:
        with torch.no_grad():
            assert_close_rel(peer.fla_recurrence(x, g), ref, 1e-5, "h")
        return
    grad_out = torch.randn_like(x)
    loop = lambda t: peer.sequential_recurrence(t["x"], t["g"])
    ref, ref_grads = output_and_grads(loop, dict(x=x64, g=g64), grad_out.double(), names=("x", "g"))
    fla = lambda t: peer.fla_recurrence(t["x"], t["g"])
    out, grads = output_and_grads(fla, dict(x=x, g=g), grad_out, names=("x", "g"))
    assert_close_rel(out, ref, 1e-5, "h")
    for name, got, want in zip("xg", grads, ref_grads):
        assert_close_rel(got, want, 1e-5, f"d_{name}")


@pytest.mark.parametrize("with_grads", [False, True], ids=["forward", "gradients"])
def test_fla_pipeline_matches_the_float64_reference(fla_hgrn, with_grads):
    if with_grads:
        _fla_gradients_or_skip()
    x64 = make_inputs(1, 6, 9, 11, 3)  # L = 99: two segments per direction
    x = {k: v.float().to(DEVICE) for k, v in x64.items()}
    if not with_grads:
        with torch.no_grad():
            assert_close_rel(pipeline(peer.fla_recurrence)(x).cpu(), reference(x64), 1e-5, "out")
        return
    grad_out = torch.randn(1, 6, 9, 11, dtype=torch.float64)
    ref, ref_grads = output_and_grads(reference, x64, grad_out)
    out, grads = output_and_grads(pipeline(peer.fla_recurrence), x, grad_out.float().to(DEVICE))
    assert_close_rel(out.cpu(), ref, 1e-5, "out")
    for name, got, want in zip(ARGS, grads, ref_grads):
        assert_close_rel(got.cpu(), want, 1e-5, f"d_{name}")
