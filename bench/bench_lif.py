"""Multi-step LIF: eager PyTorch loop, torch.compile of that loop, spikingjelly 2.0, ours.

``test_lif`` (CUDA): the GPU providers. ``test_lif_cpu`` (any machine): the CPU path v1 (a
per-step autograd loop, what ``backend="auto"`` ran on CPU before v2) against v2 (the vectorised
custom op), forward + backward, side by side in one process:
``pytest bench/bench_lif.py -k cpu --benchmark-only --benchmark-columns=mean,stddev``.

Modes: "fwd" (spikes only), "bwd" (backward of a ready graph), "full" (forward + backward).
Bytes that must move per element-step, with s = storage bytes per element:
fwd: read x, write spikes = 2s; bwd: read x (saved), read grad_s, write grad_x = 3s; full = 5s.
"""

import pytest
import torch
from conftest import DEVICE, DTYPES, SMOKE, require_device, run_benchmark

from svm_kernels import multistep_lif
from svm_kernels.lif.common import make_params
from svm_kernels.lif.naive import multistep_lif_naive

PARAMS = make_params(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True)
_compiled = {}


def eager(x):
    return multistep_lif_naive(x, PARAMS)[0]


def compiled(x):
    # one compiled function per case (shape, dtype, grad mode): Dynamo's caches are reset when
    # the case changes, so the variants never reach its recompile limit
    key = (tuple(x.shape), x.dtype, x.requires_grad)
    if _compiled.get("key") != key:
        torch._dynamo.reset()
        _compiled.update(key=key, fn=torch.compile(eager))
    return _compiled["fn"](x)


def ours(x):
    return multistep_lif(x, detach_reset=True, backend="triton")


_SPIKINGJELLY: dict = {}


def spikingjelly(x):
    # the gate's provider: spikingjelly's multi-step LIF functional with its Triton kernels asked
    # for (gate.py) and an fp32 initial state built once per shape (a node reset at every call
    # would charge it an allocation and a memset of N values that ours does not pay)
    if "fn" not in _SPIKINGJELLY:
        from gate_lif import spikingjelly_fn

        _SPIKINGJELLY["fn"] = spikingjelly_fn()
    return _SPIKINGJELLY["fn"](x)


PROVIDERS = {"eager": eager, "compile": compiled, "spikingjelly": spikingjelly, "ours": ours}


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("n", [2**10] if SMOKE else [2**20, 2**24, 2**26])
@pytest.mark.parametrize("T", [4, 8, 16])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_lif(benchmark, provider, T, n, dtype, mode):
    require_device()
    if provider == "spikingjelly":
        pytest.importorskip("spikingjelly.activation_based")
        if not torch.cuda.is_available():
            pytest.skip("spikingjelly's Triton LIF needs CUDA")
    if provider == "compile" and SMOKE:
        pytest.skip("torch.compile of the loop is a GPU comparison")
    fn = PROVIDERS[provider]
    x = torch.randn(T, n, device=DEVICE, dtype=DTYPES[dtype]) * 2
    if provider == "spikingjelly":
        from gate_lif import _spikingjelly_selected

        with torch.no_grad():
            fn(x)  # (spikingjelly picks its implementation at the first call)
        selected = _spikingjelly_selected()
        if selected != "triton":
            pytest.skip(f"spikingjelly selected its {selected!r} implementation, not Triton")
    size = x.element_size() * x.numel()
    if mode == "fwd":
        with torch.no_grad():
            run_benchmark(benchmark, lambda: fn(x), 2 * size, provider=provider)
        return
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    if mode == "full":
        run_benchmark(benchmark, lambda: torch.autograd.grad(fn(x), x, grad), 5 * size, provider=provider)
        return
    out = fn(x)  # bwd: the same graph, differentiated again each round
    run_benchmark(
        benchmark, lambda: torch.autograd.grad(out, x, grad, retain_graph=True), 3 * size, provider=provider
    )


def cpu_v1(x):
    """v1's CPU path: the reference loop, differentiated by autograd step by step."""
    return multistep_lif_naive(x, PARAMS)[0]


def cpu_v2(x):
    return multistep_lif(x, detach_reset=True, backend="torch")


@pytest.mark.parametrize("provider", ["v1_autograd_loop", "v2_vectorised_op"])
def test_lif_cpu(benchmark, provider):
    """Forward + backward on the CPU at T = 4, N = 2^20, fp32 (the issue's comparison point)."""
    fn = {"v1_autograd_loop": cpu_v1, "v2_vectorised_op": cpu_v2}[provider]
    benchmark.group = "lif-cpu T=4 N=2^20 fp32 full"
    x = (torch.randn(4, 2**10 if SMOKE else 2**20, device="cpu") * 2).requires_grad_(True)
    grad = torch.randn_like(x)
    size = x.element_size() * x.numel()
    run_benchmark(
        benchmark, lambda: torch.autograd.grad(fn(x), x, grad), 5 * size, rounds=10, provider=provider
    )
