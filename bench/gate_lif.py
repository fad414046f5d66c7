"""Gate cases of the multi-step LIF: float64 checks at real shapes, our kernels, spikingjelly and
torch.compile of the plain loop.

Bytes that must move per element-step (s = storage bytes of x): fwd reads x, writes spikes = 2s;
bwd reads x (saved) and grad_spikes, writes grad_x = 3s; full = 5s.
"""

from __future__ import annotations

import torch
from gate import DEVICE, HAS_CUDA, Case, Skip, provider, rel_err, timed_row
from shapes import LIF_CHECK_SHAPES, LIF_SHAPES, LIF_SMOKE

from svm_kernels import multistep_lif
from svm_kernels.lif.common import make_params
from svm_kernels.lif.naive import multistep_lif_naive

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "full")
PARAMS = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True)  # sigmoid surrogate, alpha 4
BYTES_PER_STEP = {"fwd": 2, "bwd": 3, "full": 5}


def lif_bytes(x: torch.Tensor, mode: str) -> int:
    return BYTES_PER_STEP[mode] * x.numel() * x.element_size()


def _inputs(T, n, dtype):
    x = (torch.randn(T, n, device=DEVICE) * 2).to(dtype)
    return x, torch.randn(T, n, device=DEVICE).to(dtype)


def ours(x, **params):
    return multistep_lif(x, backend="triton", **(params or PARAMS))


def check(T, n, dtype, params: dict):
    """Forward and backward against the float64 reference; spikes compared exactly, grad_x on the
    neurons whose spikes all agree (a spike that flips at the threshold changes its neuron's
    whole later history); two backward runs must be bit-identical."""
    x, g = _inputs(T, n, dtype)
    ref_x = x.double().requires_grad_(True)
    ref_s, _ = multistep_lif_naive(ref_x, make_params(**params))
    (ref_gx,) = torch.autograd.grad(ref_s, ref_x, g.double())
    x = x.requires_grad_(True)
    s = ours(x, **params)
    (gx,) = torch.autograd.grad(s, x, g, retain_graph=True)
    (gx2,) = torch.autograd.grad(s, x, g)
    agree = (s.double() == ref_s).all(0)
    mismatch = 1.0 - agree.double().mean().item()
    err = rel_err(gx[:, agree], ref_gx[:, agree])
    # fp32 arithmetic in both directions: error ~ T roundings; bf16 grad_x is rounded once more
    tol = 2e-6 * T if dtype == torch.float32 else 8e-3
    ok = err <= tol and mismatch <= 1e-5 and torch.equal(gx, gx2)
    return dict(
        max_rel_err=err, tol=tol, spike_mismatch=mismatch, bitwise_repeat=torch.equal(gx, gx2), ok=bool(ok)
    )


def time_case(fn, T, n, dtype, mode):
    """fn(x) -> spikes, timed in one of the modes."""
    x, g = _inputs(T, n, dtype)
    moved = lif_bytes(x, mode)
    if mode == "fwd":
        with torch.no_grad():
            return timed_row(lambda: fn(x), moved)
    x.requires_grad_(True)
    if mode == "full":
        return timed_row(lambda: torch.autograd.grad(fn(x), x, g), moved)
    s = fn(x)
    return timed_row(lambda: torch.autograd.grad(s, x, g, retain_graph=True), moved)


def spikingjelly_fn():
    """spikingjelly 2.0's multi-step LIF functional (what ``LIFNode(step_mode="m")`` runs) with an
    fp32 initial state built once; its Triton implementation is forced (gate.py), so an
    unavailable Triton path raises with spikingjelly's reason instead of falling back."""
    if not HAS_CUDA:
        raise Skip("spikingjelly's Triton LIF needs CUDA")
    try:
        from spikingjelly.activation_based import surrogate
        from spikingjelly.activation_based.functional.neuron import lif_multi_step
    except ImportError as exc:
        raise Skip(f"spikingjelly not importable: {exc}") from exc
    sg = surrogate.Sigmoid(alpha=4.0)
    v0 = {}

    def run(x):
        v = v0.setdefault(x.shape[1:], torch.zeros(x.shape[1:], device=x.device, dtype=torch.float32))
        return lif_multi_step(x, v, 2.0, True, 1.0, 0.0, sg, True)[0]

    return run


def _spikingjelly_selected() -> str:
    from spikingjelly._ops.lif import _selection

    chosen = _selection._selections.get(torch.cuda.current_device())
    return getattr(chosen, "name", repr(chosen))


def spikingjelly_case(T, n, dtype, mode):
    fn = spikingjelly_fn()
    row = time_case(fn, T, n, dtype, mode)
    row["selected"] = _spikingjelly_selected()
    if row["selected"] != "triton":
        raise Skip(f"spikingjelly selected its {row['selected']!r} implementation, not Triton")
    x, _ = _inputs(T, n, dtype)
    with torch.no_grad():
        row["max_rel_err"] = rel_err(fn(x), multistep_lif_naive(x.double(), make_params(**PARAMS))[0])
    return row


def compile_case(T, n, dtype, mode):
    """torch.compile of the plain loop: a fresh compiled function per case (no recompile limit),
    its compile time (first forward and backward) reported apart from the timing."""
    if not HAS_CUDA:
        raise Skip("torch.compile peer is timed on CUDA only (smoke run)")
    import time

    import torch._dynamo

    torch._dynamo.reset()
    p = make_params(**PARAMS)

    def loop(x):
        return multistep_lif_naive(x, p)[0]

    fn = torch.compile(loop, dynamic=False)
    x, g = _inputs(T, n, dtype)
    # The bwd timing runs one graph's backward again and again (retain_graph), which a compiled
    # backward with donated buffers refuses (it frees what it was given).
    import torch._functorch.config as functorch_config

    with functorch_config.patch(donated_buffer=False):
        start = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                fn(x)
        else:
            torch.autograd.grad(fn(x.requires_grad_(True)), x, g)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        row = time_case(fn, T, n, dtype, mode)
    row["compile_s"] = round(compile_s, 2)
    return row


@provider("lif")
def lif_cases(smoke: bool):
    check_shapes = LIF_SMOKE if smoke else LIF_CHECK_SHAPES
    shapes = LIF_SMOKE if smoke else LIF_SHAPES
    for name, (T, n) in check_shapes.items():
        for dt_name, dtype in DTYPES.items():
            case = dict(shape=name, dims=[T, n], dtype=dt_name, mode="check")
            yield Case("lif", "ours", "check", case, lambda T=T, n=n, d=dtype: check(T, n, d, PARAMS), 60)
    # the other reset / surrogate branches of the kernels, once
    other = dict(tau=3.0, v_threshold=0.5, v_reset=None, detach_reset=False, surrogate="atan")
    T, n = next(iter(check_shapes.values()))
    case = dict(shape=next(iter(check_shapes)), dims=[T, n], dtype="fp32", mode="check_soft_atan")
    yield Case("lif", "ours", "check", case, lambda: check(T, n, torch.float32, other), 60)
    for name, (T, n) in shapes.items():
        for dt_name, dtype in DTYPES.items():
            for mode in MODES:
                case = dict(shape=name, dims=[T, n], dtype=dt_name, mode=mode)
                args = (T, n, dtype, mode)
                yield Case("lif", "ours", "ours", case, lambda a=args: time_case(ours, *a), 30)
                yield Case("lif", "spikingjelly", "peer", case, lambda a=args: spikingjelly_case(*a), 60)
                yield Case("lif", "torch_compile", "peer", case, lambda a=args: compile_case(*a), 90)
