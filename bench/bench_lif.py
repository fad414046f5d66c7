"""Multi-step LIF: eager PyTorch loop, torch.compile of that loop, spikingjelly 2.0, ours.

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


def spikingjelly(x):
    from spikingjelly.activation_based import neuron, surrogate

    node = neuron.LIFNode(
        tau=2.0, v_reset=0.0, detach_reset=True, surrogate_function=surrogate.Sigmoid(), step_mode="m"
    )
    return node(x)


PROVIDERS = {"eager": eager, "compile": compiled, "spikingjelly": spikingjelly, "ours": ours}


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("n", [2**10] if SMOKE else [2**20, 2**24, 2**26])
@pytest.mark.parametrize("T", [4, 8])
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
