"""Fused LIF (Triton; the interpreter on CPU) against the plain PyTorch reference."""

import itertools

import pytest
import torch
from helpers import assert_close_rel

import svm_kernels
from svm_kernels import MultiStepLIF, multistep_lif
from svm_kernels import utils as kutils
from svm_kernels.lif.common import make_params
from svm_kernels.lif.naive import lif_charge, lif_step, multistep_lif_naive

pytestmark = pytest.mark.usefixtures("kernel_device")

# (reset, detach_reset, decay_input): every combination.
COMBOS = list(itertools.product([0.0, None], [False, True], [False, True]))
# Relative tolerance per storage dtype for the final state and the gradients.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kutils, "POISON_OUTPUTS", True)


def away_from_threshold(shape, p, margin=1e-3, scale=1.5, dtype=torch.float32, v_init=None):
    """Inputs whose h never comes within ``margin`` of the threshold, so spikes are exact.

    Neurons are independent, so a neuron whose trajectory comes too close is redrawn whole.
    """
    cpu = dict(device="cpu", dtype=torch.float64)
    x = (torch.randn(shape, **cpu) * scale + 0.5).to(dtype).double()
    for _ in range(200):
        v = torch.zeros(shape[1:], **cpu) if v_init is None else v_init.double().cpu()
        bad = torch.zeros(shape[1:], dtype=torch.bool, device="cpu")
        for t in range(shape[0]):
            bad |= (lif_charge(v, x[t], p) - p.v_threshold).abs() < margin
            _, v = lif_step(v, x[t], p)
        if not bad.any():
            return x.to(dtype).to(torch.get_default_device())
        x[:, bad] = (torch.randn((shape[0], int(bad.sum())), **cpu) * scale + 0.5).to(dtype).double()
    raise AssertionError("could not draw inputs away from the threshold")


def run_both(x, g_s, g_v, v_init=None, **kw):
    """Forward and backward through the reference and the Triton path; returns both results."""
    out = {}
    for backend in ("torch", "triton"):
        xb = x.detach().clone().requires_grad_(True)
        vb = None if v_init is None else v_init.detach().clone().requires_grad_(True)
        s, v = multistep_lif(xb, v_init=vb, return_v=True, backend=backend, **kw)
        ((s.float() * g_s).sum() + (v * g_v).sum()).backward()
        out[backend] = (s, v, xb.grad, None if vb is None else vb.grad)
    return out["torch"], out["triton"]


@pytest.mark.parametrize("v_reset,detach_reset,decay_input", COMBOS)
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("T", [1, 2, 4, 7])
def test_fused_matches_reference(T, surrogate, v_reset, detach_reset, decay_input):
    kw = dict(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input, surrogate=surrogate)
    p = make_params(**kw)
    x = away_from_threshold((T, 3, 5, 7), p)  # 105 neurons: not a multiple of any block
    g_s = torch.randn(x.shape)
    g_v = torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert fused[0].dtype == x.dtype
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_initial_state_and_its_gradient(v_reset, surrogate):
    kw = dict(v_reset=v_reset, surrogate=surrogate, tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    v_init = torch.rand(2, 33) * 0.5 - 0.2
    x = away_from_threshold((4, 2, 33), p, v_init=v_init)
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, v_init=v_init, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    assert_close_rel(fused[3], ref[3], 1e-5, "grad v_init")


def test_without_final_state_gradient():
    """Only the spikes feed the loss: the final state's gradient is absent (None)."""
    p = make_params()
    x = away_from_threshold((4, 50), p)
    g_s = torch.randn(x.shape)
    grads = []
    for backend in ("torch", "triton"):
        xb = x.clone().requires_grad_(True)
        (multistep_lif(xb, backend=backend) * g_s).sum().backward()
        grads.append(xb.grad)
    assert_close_rel(grads[1], grads[0], 1e-5, "grad x")


@pytest.mark.parametrize("layout", ["transposed_inner", "channels_last", "strided_slice"])
def test_layouts(layout):
    p = make_params()
    T, B, C, H, W = 3, 2, 5, 3, 7
    base = away_from_threshold((T, B, C, H, W), p)
    if layout == "transposed_inner":
        x = base.transpose(3, 4).contiguous().transpose(3, 4)  # dense, not contiguous
        assert not x.is_contiguous() and kutils.time_major_dense(x)
    elif layout == "channels_last":
        x = base.reshape(T * B, C, H, W).contiguous(memory_format=torch.channels_last).reshape(T, B, C, H, W)
        assert not x.is_contiguous() and kutils.time_major_dense(x)
    else:
        wide = torch.cat([base, torch.zeros_like(base)], dim=-1)
        x = wide[..., :W]  # not dense: the launcher copies it
        assert not kutils.time_major_dense(x)
    g_s = torch.randn(x.shape)
    ref, fused = run_both(x, g_s, torch.randn(x.shape[1:]))
    assert torch.equal(fused[0], ref[0])
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    if layout != "strided_slice":  # in place: the output keeps x's layout
        assert fused[0].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage(dtype):
    """Half storage, fp32 arithmetic: spikes exact against the reference on the same input."""
    p = make_params(detach_reset=True)
    x = away_from_threshold((4, 3, 41), p, dtype=dtype)
    g_s = torch.randn(x.shape)
    ref, fused = run_both(x, g_s, torch.randn(x.shape[1:]), detach_reset=True)
    assert fused[0].dtype == dtype
    assert torch.equal(fused[0], ref[0])
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert fused[2].dtype == dtype
    assert_close_rel(fused[2], ref[2], TOL[dtype], "grad x")


def test_spikes_are_binary_and_rate_is_sane():
    x = torch.randn(4, 1000) * 2
    s = multistep_lif(x, backend="triton")
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert 0.05 < s.mean().item() < 0.95


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("v_reset,decay_input", list(itertools.product([0.0, None], [False, True])))
def test_reference_gradcheck_smooth(surrogate, v_reset, decay_input):
    """The reference's backward chain, checked numerically with the smooth spike in float64.

    (detach_reset deliberately drops a term of the true derivative, so gradcheck cannot apply;
    that path is checked against spikingjelly below.)
    """
    p = make_params(v_reset=v_reset, decay_input=decay_input, surrogate=surrogate)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(x, v0):
        s, v = multistep_lif_naive(x, p, v0, smooth=True)
        return s, v

    assert torch.autograd.gradcheck(f, (x, v0))


def test_reference_surrogate_matches_smooth_derivative():
    """The Heaviside path's backward equals the smooth path's at the same point (first step)."""
    for surrogate in ("sigmoid", "atan"):
        p = make_params(surrogate=surrogate)
        x = torch.randn(1, 20, dtype=torch.float64)
        grads = []
        for smooth in (False, True):
            xb = x.clone().requires_grad_(True)
            s, _ = multistep_lif_naive(xb, p, smooth=smooth)
            s.sum().backward()
            grads.append(xb.grad)
        torch.testing.assert_close(grads[0], grads[1])


def test_matches_spikingjelly():
    """Our reference reproduces spikingjelly's multi-step LIFNode (skipped without the peer)."""
    sj = pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import neuron, surrogate

    for v_reset, detach_reset, decay_input in COMBOS:
        for name, fn in (("sigmoid", surrogate.Sigmoid(alpha=4.0)), ("atan", surrogate.ATan(alpha=2.0))):
            node = neuron.LIFNode(
                tau=2.0,
                v_reset=v_reset,
                detach_reset=detach_reset,
                decay_input=decay_input,
                surrogate_function=fn,
                step_mode="m",
            )
            x = torch.randn(5, 40) * 2
            x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            s1 = node(x1)
            s2 = multistep_lif(
                x2,
                v_reset=v_reset,
                detach_reset=detach_reset,
                decay_input=decay_input,
                surrogate=name,
                backend="triton",
            )
            assert torch.equal(s1, s2)
            g = torch.randn_like(x)
            (s1 * g).sum().backward()
            (s2 * g).sum().backward()
            assert_close_rel(x2.grad, x1.grad, 1e-5, f"grad vs spikingjelly {name} {v_reset}")
    assert sj is not None


def test_saved_bytes_per_element_step():
    """The fused op keeps at most one tensor of x's dtype per element-step for backward."""
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(4, 2, 300, dtype=dtype, requires_grad=True)
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            s = multistep_lif(x, backend="triton")
        per_element_step = sum(saved) / x.numel()
        assert 0 < per_element_step <= x.element_size(), per_element_step
        s.sum().backward()


def test_empty_tensor():
    x = torch.empty(4, 0, 3)
    s, v = multistep_lif(x, return_v=True, backend="triton")
    assert s.shape == x.shape and v.shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs,x,err",
    [
        ({}, torch.zeros(3, 4, dtype=torch.int32), TypeError),
        ({}, torch.tensor(1.0), ValueError),
        ({}, torch.zeros(0, 4), ValueError),
        ({"tau": 1.0}, torch.zeros(3, 4), ValueError),
        ({"tau": 0.5}, torch.zeros(3, 4), ValueError),
        ({"tau": float("nan")}, torch.zeros(3, 4), ValueError),
        ({"v_reset": 1.5}, torch.zeros(3, 4), ValueError),
        ({"surrogate": "relu"}, torch.zeros(3, 4), ValueError),
        ({"alpha": -1.0}, torch.zeros(3, 4), ValueError),
        ({"v_init": torch.zeros(5)}, torch.zeros(3, 4), ValueError),
        ({"v_init": torch.zeros(4, dtype=torch.int64)}, torch.zeros(3, 4), TypeError),
        ({"backend": "cuda"}, torch.zeros(3, 4), ValueError),
    ],
)
def test_bad_inputs_raise(kwargs, x, err):
    for backend in ("triton", "torch"):
        with pytest.raises(err):
            multistep_lif(x, **{"backend": backend, **kwargs})


@pytest.mark.parametrize("kwargs", [{"tau": 1.0}, {"surrogate": "relu"}, {"v_reset": 2.0}, {"alpha": 0}])
def test_module_rejects_bad_arguments_at_construction(kwargs):
    with pytest.raises(ValueError):
        MultiStepLIF(**kwargs)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(kutils, "TRITON_INTERPRET", False)
    with pytest.raises(ValueError, match="CUDA"):
        multistep_lif(torch.zeros(2, 3, device="cpu"), backend="triton")


def test_auto_backend_uses_reference_on_cpu(monkeypatch):
    calls = []
    import svm_kernels.lif.fused as fused

    monkeypatch.setattr(fused, "multistep_lif_naive", lambda *a, **k: calls.append(1) or (a[0], a[0][0]))
    multistep_lif(torch.zeros(2, 3, device="cpu"), backend="auto")
    assert calls == [1]


def test_module_is_stateless_by_default():
    m = MultiStepLIF(backend="triton")
    x = torch.randn(4, 64) * 2
    assert torch.equal(m(x), m(x))
    assert m.v is None


def test_module_stateful_streaming_equals_one_call():
    """Two chunks in stateful mode equal one call over the concatenated time axis."""
    p = make_params()
    x = away_from_threshold((6, 70), p)
    whole = multistep_lif(x, backend="torch")
    m = MultiStepLIF(backend="triton", stateful=True)
    parts = torch.cat([m(x[:4]), m(x[4:])])
    assert torch.equal(parts, whole)
    m.reset()
    assert m.v is None
    assert torch.equal(m(x[:4]), whole[:4])


def test_torch_compile_traces_without_graph_breaks():
    def f(x):
        return multistep_lif(x * 2.0, backend="triton", detach_reset=True).sum(0)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 17, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    yr = f(xr)
    yr.sum().backward()
    assert torch.equal(y, yr)
    torch.testing.assert_close(x.grad, xr.grad)


def test_public_namespace():
    assert svm_kernels.multistep_lif is multistep_lif
    assert "tau" in MultiStepLIF().extra_repr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: 2^31 elements")
def test_more_than_2_31_elements_cuda():
    n = 2**29 + 7
    x = torch.randn(5, n, device="cuda", dtype=torch.float16)  # 2.7e9 elements > 2^31
    s = multistep_lif(x, backend="triton")
    tail = multistep_lif(x[:, -1000:].contiguous(), backend="torch")
    assert torch.equal(s[:, -1000:], tail)


@pytest.mark.parametrize("backend,name", [("torch", "prim::PythonOp"), ("triton", "svmamba::lif_fwd")])
def test_traces_as_one_node(backend, name):
    """FLOP counters (fvcore traces the model) see the neuron as one named op, nothing inside it."""
    graph, _ = torch.jit._get_trace_graph(lambda x: multistep_lif(x, backend=backend), (torch.randn(4, 6),))
    kinds = [n.kind() for n in graph.nodes() if n.kind() not in ("prim::Constant", "prim::TupleUnpack")]
    assert kinds == [name]
    if backend == "torch":
        assert next(iter(graph.nodes())).pyname() == "MultiStepLIFTorch"


def test_reference_path_second_backward_raises_like_autograd():
    """The wrapped reference frees its inner graph on backward, as autograd does: a second
    backward must fail loudly, never return silent zero gradients."""
    x = torch.randn(3, 8, requires_grad=True)
    s = multistep_lif(x, backend="torch")
    (s * torch.randn_like(s)).sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        s.sum().backward()
