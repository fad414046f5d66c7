"""Fused LIF (Triton; the interpreter on CPU) against the plain PyTorch reference."""

import itertools

import pytest
import torch
import torch._dynamo.testing
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
        v_rest = 0.0 if p.v_reset is None else p.v_reset
        v = torch.full(shape[1:], v_rest, **cpu) if v_init is None else v_init.double().cpu()
        bad = torch.zeros(shape[1:], dtype=torch.bool, device="cpu")
        for t in range(shape[0]):
            bad |= (lif_charge(v, x[t], p) - p.v_threshold).abs() < margin
            _, v = lif_step(v, x[t], p)
        if not bad.any():
            return x.to(dtype).to(torch.get_default_device())
        x[:, bad] = (torch.randn((shape[0], int(bad.sum())), **cpu) * scale + 0.5).to(dtype).double()
    raise AssertionError("could not draw inputs away from the threshold")


def run_both(x, g_s, g_v, v_init=None, backend="triton", **kw):
    """Forward and backward through the plain reference and one fused path; returns both results."""
    out = {}
    p = make_params(**kw)
    for name in ("reference", backend):
        xb = x.detach().clone().requires_grad_(True)
        vb = None if v_init is None else v_init.detach().clone().requires_grad_(True)
        if name == "reference":
            s, v = multistep_lif_naive(xb, p, vb)
        else:
            s, v = multistep_lif(xb, v_init=vb, return_v=True, backend=backend, **kw)
        ((s.float() * g_s).sum() + (v * g_v).sum()).backward()
        out[name] = (s, v, xb.grad, None if vb is None else vb.grad)
    return out["reference"], out[backend]


BACKENDS = ["torch", "triton"]
# T = 16 is the longest fully unrolled segment; 17 and 40 take several segments, their last one
# shorter (9 + 8, 14 + 14 + 12: the backward stops that one early).
LONG_T = [pytest.param(T, marks=pytest.mark.slow) for T in (16, 17, 40)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input", COMBOS)
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("T", [1, 2, 4, 7, *LONG_T])
def test_fused_matches_reference(T, surrogate, v_reset, detach_reset, decay_input, backend):
    kw = dict(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input, surrogate=surrogate)
    p = make_params(**kw)
    x = away_from_threshold((T, 3, 5, 7), p)  # 105 neurons: not a multiple of any block
    g_s = torch.randn(x.shape)
    g_v = torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, backend=backend, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert fused[0].dtype == x.dtype
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [4, pytest.param(21, marks=pytest.mark.slow)])  # 21 = 11 + 10
@pytest.mark.parametrize("v_reset", [0.0, None, -0.25])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_initial_state_and_its_gradient(v_reset, surrogate, T, backend):
    kw = dict(v_reset=v_reset, surrogate=surrogate, tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    v_init = torch.rand(2, 33) * 0.5 - 0.2
    x = away_from_threshold((T, 2, 33), p, v_init=v_init)
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, v_init=v_init, backend=backend, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    assert_close_rel(fused[3], ref[3], 1e-5, "grad v_init")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 4, pytest.param(17, marks=pytest.mark.slow)])
@pytest.mark.parametrize("detach_reset,decay_input", [(True, True), (False, False)])
def test_starts_from_rest_at_a_nonzero_reset(T, detach_reset, decay_input, backend):
    """Without v_init the neuron starts at rest, v = v_reset, where spikingjelly's neurons start
    (it started at 0, off rest, when v_reset was not 0)."""
    kw = dict(v_reset=-0.25, detach_reset=detach_reset, decay_input=decay_input, tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    x = away_from_threshold((T, 3, 37), p)
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, backend=backend, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    # bit for bit what an explicit v_init = v_reset gives, and no input leaves v at rest
    at_rest = torch.full(x.shape[1:], -0.25)
    for impl in (multistep_lif_naive, None):
        if impl is None:
            s0, v0 = multistep_lif(x, return_v=True, backend=backend, **kw)
            s1, v1 = multistep_lif(x, v_init=at_rest, return_v=True, backend=backend, **kw)
            s2, v2 = multistep_lif(torch.zeros_like(x), return_v=True, backend=backend, **kw)
        else:
            (s0, v0), (s1, v1), (s2, v2) = (impl(x, p), impl(x, p, at_rest), impl(torch.zeros_like(x), p))
        assert torch.equal(s0, s1) and torch.equal(v0, v1)
        assert not s2.any() and torch.equal(v2, at_rest)


def test_cpu_blocks_take_their_own_initial_state(monkeypatch):
    """The CPU path walks neurons in blocks: every block reads its own slice of v_init, forward
    and backward (the tests' sizes are otherwise below one block)."""
    from svm_kernels.lif import vectorized

    monkeypatch.setattr(vectorized, "BLOCK", 64)
    kw = dict(v_reset=-0.25, tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    v_init = torch.rand(150) * 0.5 - 0.2
    x = away_from_threshold((3, 150), p, v_init=v_init)
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    ref, fused = run_both(x, g_s, g_v, v_init=v_init, backend="torch", **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    assert_close_rel(fused[3], ref[3], 1e-5, "grad v_init")


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_final_state_gradient(backend):
    """Only the spikes feed the loss: the final state's gradient is absent (None)."""
    p = make_params()
    x = away_from_threshold((4, 50), p)
    g_s = torch.randn(x.shape)
    xr = x.clone().requires_grad_(True)
    (multistep_lif_naive(xr, p)[0] * g_s).sum().backward()
    xb = x.clone().requires_grad_(True)
    (multistep_lif(xb, backend=backend) * g_s).sum().backward()
    assert_close_rel(xb.grad, xr.grad, 1e-5, "grad x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_final_state_reaches_the_loss(backend):
    """The spikes' gradient is absent (None, not a zero tensor): grad_x flows from v alone."""
    kw = dict(v_reset=None, tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    v_init = torch.rand(3, 20) * 0.5
    x = away_from_threshold((5, 3, 20), p, v_init=v_init)
    g_v = torch.randn(x.shape[1:])
    grads = {}
    for name in ("reference", backend):
        xb, vb = x.clone().requires_grad_(True), v_init.clone().requires_grad_(True)
        if name == "reference":
            v = multistep_lif_naive(xb, p, vb)[1]
        else:
            v = multistep_lif(xb, v_init=vb, return_v=True, backend=backend, **kw)[1]
        (v * g_v).sum().backward()
        grads[name] = (xb.grad, vb.grad)
    assert_close_rel(grads[backend][0], grads["reference"][0], 1e-5, "grad x")
    assert_close_rel(grads[backend][1], grads["reference"][1], 1e-5, "grad v_init")


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_calls_and_the_custom_op_agree(backend, monkeypatch):
    """Eager calls skip the custom op (its dispatch costs the host more than a launch) but run the
    same functions: spikes, final v and both gradients bit-identical to the op's, one node each."""
    from svm_kernels.lif import fused

    kw = dict(v_reset=0.0, tau=2.0, detach_reset=False, surrogate="atan")
    x = torch.randn(6, 2, 37) * 2
    v_init = torch.rand(2, 37) - 0.5
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    results = {}
    for path in ("eager", "custom_op"):
        if path == "custom_op":
            monkeypatch.setattr(fused, "_eager", lambda x, v_init: False)
        xb, vb = x.clone().requires_grad_(True), v_init.clone().requires_grad_(True)
        s, v = multistep_lif(xb, v_init=vb, return_v=True, backend=backend, **kw)
        results[path] = (s, v, *torch.autograd.grad((s * g_s).sum() + (v * g_v).sum(), (xb, vb)))
        results[path + " node"] = type(s.grad_fn).__name__
    assert "EagerLIF" in results["eager node"] and "lif_fwd" in results["custom_op node"]
    for got, want in zip(results["eager"], results["custom_op"]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_raises(backend):
    """The backward is not itself differentiable: asking for it fails loudly, on either path."""
    x = torch.randn(3, 8, requires_grad=True)
    s = multistep_lif(x, backend=backend)
    (gx,) = torch.autograd.grad(s, x, torch.randn(3, 8), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward|no autograd formula"):
        torch.autograd.grad(gx.sum(), x)


@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_raises_instead_of_dropping_its_terms(backend, path, monkeypatch):
    """A penalty on the gradient beside the loss itself (one backward through both): the eager
    node's gradients were constants there, so the penalty's terms vanished from x's gradient
    without a word. Both paths refuse it, on v_init's gradient too."""
    from svm_kernels.lif import fused

    if path == "custom_op":
        monkeypatch.setattr(fused, "_eager", lambda x, v_init: False)
    x = torch.randn(3, 8, requires_grad=True)
    v_init = torch.randn(8, requires_grad=True)
    s, v = multistep_lif(x, v_init=v_init, return_v=True, backend=backend)
    gx, gv = torch.autograd.grad(s.sum() + v.sum(), (x, v_init), create_graph=True)
    assert gx.requires_grad and gv.requires_grad
    loss = s.sum() + (gx**2).sum() + (gv**2).sum()
    with pytest.raises(RuntimeError, match="double backward|no autograd formula"):
        loss.backward()


@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_forward_mode_ad_is_refused_by_name(path, monkeypatch):
    # the custom op's path dropped the tangents (jvp returned zeros, a dual x a plain result)
    import torch.autograd.forward_ad as fwAD

    from svm_kernels.lif import fused

    if path == "custom_op":
        monkeypatch.setattr(fused, "_eager", lambda x, v_init: False)
    x, v_init = torch.randn(3, 8), torch.randn(8)
    with pytest.raises(NotImplementedError, match="multistep_lif has no forward-mode derivative"):
        torch.func.jvp(lambda a: multistep_lif(a, return_v=True)[1], (x,), (torch.ones_like(x),))
    with fwAD.dual_level():
        plain = multistep_lif(x, v_init=v_init)  # no dual input: computed as usual
        assert torch.equal(plain, multistep_lif(x, v_init=v_init))
        dual = fwAD.make_dual(v_init, torch.ones_like(v_init))
        with pytest.raises(NotImplementedError, match="multistep_lif has no forward-mode derivative"):
            multistep_lif(x, v_init=dual)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed_inner", "channels_last", "strided_slice"])
def test_layouts(layout, backend):
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
    ref, fused = run_both(x, g_s, torch.randn(x.shape[1:]), backend=backend)
    assert torch.equal(fused[0], ref[0])
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")
    if layout != "strided_slice":  # in place: the outputs keep x's layout
        assert fused[0].stride() == x.stride() and fused[2].stride() == x.stride()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [4, 16, 17])
def test_half_storage(T, dtype, backend):
    """Half storage, fp32 arithmetic: spikes exact against the reference on the same input. At
    T = 16 and 17 the backward loads grad_s after the recompute (``grad_s_ahead``), at 4 with x."""
    from svm_kernels.lif.fused import grad_s_ahead, segments

    assert grad_s_ahead(segments(T)[0], dtype) == (T == 4)
    p = make_params(detach_reset=True)
    x = away_from_threshold((T, 3, 41), p, dtype=dtype)
    g_s = torch.randn(x.shape)
    ref, fused = run_both(x, g_s, torch.randn(x.shape[1:]), backend=backend, detach_reset=True)
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


def spikingjelly_lif(x, v_reset, detach_reset, decay_input, surrogate_name, tau=2.0, v_threshold=1.0):
    """spikingjelly's multi-step LIFNode on x (spikes; its own autograd); skips without the peer."""
    pytest.importorskip(
        "spikingjelly.activation_based", reason="spikingjelly (the 'peers' extra) not installed"
    )
    from spikingjelly.activation_based import neuron, surrogate

    fn = surrogate.Sigmoid(alpha=4.0) if surrogate_name == "sigmoid" else surrogate.ATan(alpha=2.0)
    node = neuron.LIFNode(
        tau=float(tau),
        v_threshold=v_threshold,
        v_reset=v_reset,
        detach_reset=detach_reset,
        decay_input=decay_input,
        surrogate_function=fn,
        step_mode="m",
    )
    return node(x)


def on_threshold_inputs(T, n, tau):
    """Inputs whose membrane potential often lands exactly on v_threshold = 1.

    Multiples of 1/4 with tau = 2 keep every early step exact (x = 2.0 from rest gives h = 1.0);
    with tau = 3 the threshold is set below to a quotient that only a correctly rounded division
    reproduces.
    """
    x = torch.randint(-4, 13, (T, n), device="cpu").float() / 4.0
    x[0, : n // 4] = 2.0  # h[0] = 0 + (2 - 0) / 2 = 1.0 exactly at tau = 2
    if tau != 2.0:
        x[0, : n // 4] = 2.9
    return x.to(torch.get_default_device())


def threshold_for(tau):
    # tau = 3: v_threshold = fl(2.9 / 3), h[0] of the neurons fed 2.9 (an approximate division can miss it).
    return 1.0 if tau == 2.0 else (torch.tensor(2.9) / torch.tensor(3.0)).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input", COMBOS)
@pytest.mark.parametrize("tau", [2.0, 3.0])
@pytest.mark.parametrize("T", [1, 4, 16, pytest.param(64, marks=pytest.mark.slow)])
def test_exactly_on_threshold(T, tau, v_reset, detach_reset, decay_input, backend, surrogate="sigmoid"):
    """Spikes where h == v_threshold exactly are bit-identical to the reference; gradients close."""
    theta = threshold_for(tau)
    kw = dict(tau=tau, v_threshold=theta, surrogate=surrogate)
    kw.update(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input)
    if v_reset is not None and v_reset >= theta:
        pytest.skip("v_reset must be below the threshold")
    x = on_threshold_inputs(T, 64, tau)
    p = make_params(**kw)
    h0 = lif_charge(torch.zeros_like(x[0]), x[0], p)
    if decay_input:
        assert (h0 == theta).any(), "the test must put some h exactly on the threshold"
    g_s = torch.randn(x.shape)
    ref, fused = run_both(x, g_s, torch.randn(x.shape[1:]), backend=backend, **kw)
    assert torch.equal(fused[0], ref[0]), "spikes differ from the reference"
    assert_close_rel(fused[1], ref[1], 1e-6, "final v")
    assert_close_rel(fused[2], ref[2], 1e-5, "grad x")


def test_exact_reciprocal_only_for_powers_of_two():
    from svm_kernels.lif.fused import exact_reciprocal

    assert exact_reciprocal(2.0) == 0.5 and exact_reciprocal(1024.0) == 2.0**-10
    assert exact_reciprocal(2.0**125) == 2.0**-125  # the smallest normal fp32 reciprocal is 2^-126
    for tau in (3.0, 1.5, 2.0000001, 2.0**127):  # not a power of two; 2^-127 is subnormal in fp32
        assert exact_reciprocal(tau) is None, tau


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("tau", [2.0, 4.0, 1024.0])
def test_power_of_two_tau_multiplies_to_the_same_bits(tau, decay_input, kernel_device):
    """With tau a power of two the kernels multiply by 1 / tau instead of dividing: the same exact
    value, so the same bits, over fp32's range (subnormal, tiny, huge; no overflow, whose NaNs
    would differ in their bits between a GPU and the CPU reference)."""
    g = torch.Generator().manual_seed(3)
    n = 4096
    magnitude = torch.exp2(torch.randint(-149, 126, (3, n), generator=g).float())
    x = (magnitude * (torch.rand(3, n, generator=g) + 0.5) * torch.randn(3, n, generator=g).sign()).to(
        kernel_device
    )
    kw = dict(tau=tau, v_threshold=3.0e38, v_reset=0.0, decay_input=decay_input)
    s, v = multistep_lif(x, return_v=True, backend="triton", **kw)
    s_ref, v_ref = multistep_lif_naive(x, make_params(**kw), None)
    assert torch.equal(s, s_ref)
    assert torch.equal(v.view(torch.int32), v_ref.view(torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "v_reset,detach_reset,decay_input", [*COMBOS, (-0.25, True, True), (-0.25, False, False)]
)
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("T", [1, 4, 16, pytest.param(64, marks=pytest.mark.slow)])
def test_matches_spikingjelly(T, surrogate, v_reset, detach_reset, decay_input, backend):
    """Spikes bit-identical to spikingjelly 2.0's LIFNode (inputs on the threshold included),
    gradients within fp32 rounding."""
    for tau in (2.0, 3.0):
        theta = threshold_for(tau)
        kw = dict(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input)
        x = torch.cat([on_threshold_inputs(T, 64, tau), torch.randn(T, 64) * 2], dim=1)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        s1 = spikingjelly_lif(x1, surrogate_name=surrogate, tau=tau, v_threshold=theta, **kw)
        s2 = multistep_lif(x2, tau=tau, v_threshold=theta, surrogate=surrogate, backend=backend, **kw)
        assert torch.equal(s1, s2), f"spikes differ from spikingjelly at tau={tau}"
        g = torch.randn_like(x)
        (s1 * g).sum().backward()
        (s2 * g).sum().backward()
        assert_close_rel(x2.grad, x1.grad, 1e-5, f"grad vs spikingjelly, tau={tau}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_bytes_per_element_step(backend):
    """Either path keeps exactly x (its dtype, one element per element-step) for backward."""
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(4, 2, 300, dtype=dtype, requires_grad=True)
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            s = multistep_lif(x, backend=backend)
        per_element_step = sum(saved) / x.numel()
        assert per_element_step == x.element_size(), per_element_step
        s.sum().backward()


def test_empty_tensor():
    x = torch.empty(4, 0, 3)
    s, v = multistep_lif(x, return_v=True, backend="triton")
    assert s.shape == x.shape and v.shape == (0, 3)
    for backend in ("triton", "torch"):  # v is fp32 whatever v_init's dtype, as when not empty
        _, v = multistep_lif(x, v_init=torch.empty(0, 3, dtype=torch.float64), return_v=True, backend=backend)
        assert v.dtype == torch.float32


def test_flags_take_bools_and_their_numpy_kin():
    np = pytest.importorskip("numpy")
    assert make_params(decay_input=np.bool_(False)) == make_params(decay_input=False)
    assert make_params(detach_reset=1).detach_reset is True


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
        ({"v_reset": 1.0}, torch.zeros(3, 4), ValueError),  # v_reset == v_threshold fires forever
        ({"surrogate": "relu"}, torch.zeros(3, 4), ValueError),
        ({"surrogate": ["atan"]}, torch.zeros(3, 4), ValueError),
        ({"decay_input": "false"}, torch.zeros(3, 4), TypeError),
        ({"detach_reset": "yes"}, torch.zeros(3, 4), TypeError),
        ({"detach_reset": None}, torch.zeros(3, 4), TypeError),
        ({"alpha": -1.0}, torch.zeros(3, 4), ValueError),
        ({"v_threshold": True}, torch.zeros(3, 4), ValueError),  # a bool is no number here
        ({"v_reset": False}, torch.zeros(3, 4), ValueError),
        ({"tau": True}, torch.zeros(3, 4), ValueError),
        ({"alpha": True}, torch.zeros(3, 4), ValueError),
        ({"v_init": torch.zeros(5)}, torch.zeros(3, 4), ValueError),
        ({"v_init": torch.zeros(4, 2)}, torch.zeros(3, 2, 4), ValueError),  # right numel, wrong shape
        ({"v_init": torch.zeros(4, device="meta")}, torch.zeros(3, 4), ValueError),  # not on x's device
        ({"v_init": torch.zeros(4, dtype=torch.int64)}, torch.zeros(3, 4), TypeError),
        ({"backend": "cuda"}, torch.zeros(3, 4), ValueError),
    ],
)
def test_bad_inputs_raise(kwargs, x, err):
    for backend in ("triton", "torch"):
        with pytest.raises(err):
            multistep_lif(x, **{"backend": backend, **kwargs})


def test_explicit_triton_refuses_float64_and_auto_falls_back():
    # the kernels store fp16, bf16 and fp32: an explicit backend='triton' says so, no silent fallback
    x = torch.tensor([[0.6], [0.9]], dtype=torch.float64)
    with pytest.raises(TypeError, match="backend='triton'"):
        multistep_lif(x, backend="triton")
    s = multistep_lif(x, backend="auto")  # h = 0.3, then 0.3 + (0.9 - 0.3) / 2 = 0.6: no spike
    assert s.dtype == torch.float64 and torch.equal(s, torch.zeros_like(x))


def test_params_are_checked_once_and_bad_ones_raise_every_time():
    """make_params caches a checked set (a model repeats a few); errors are never cached."""
    assert make_params(tau=3.0, alpha=2) is make_params(tau=3, alpha=2.0)
    for _ in range(2):
        with pytest.raises(ValueError, match="tau"):
            make_params(tau=0.5)
        with pytest.raises(ValueError, match="tau"):
            make_params(tau=[2.0])  # unhashable: checked without the cache


@pytest.mark.parametrize("kwargs", [{"tau": 1.0}, {"surrogate": "relu"}, {"v_reset": 2.0}, {"alpha": 0}])
def test_module_rejects_bad_arguments_at_construction(kwargs):
    with pytest.raises(ValueError):
        MultiStepLIF(**kwargs)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(kutils, "TRITON_INTERPRET", False)
    with pytest.raises(ValueError, match="CUDA"):
        multistep_lif(torch.zeros(2, 3, device="cpu"), backend="triton")


def test_auto_backend_uses_vectorised_path_on_cpu(monkeypatch):
    from svm_kernels.lif import vectorized

    calls = []
    real = vectorized.lif_forward
    monkeypatch.setattr(vectorized, "lif_forward", lambda *a: calls.append(1) or real(*a))
    multistep_lif(torch.zeros(2, 3, device="cpu"), backend="auto")
    assert calls == [1]


def test_module_runs_its_own_backend():
    # backend='triton' on a float64 input refuses as the function does (the default 'auto' falls back)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="backend='triton'"):
        MultiStepLIF(backend="triton")(x)
    assert torch.equal(MultiStepLIF(backend="auto")(x), x)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_stateful_trains_chunk_by_chunk_with_detach(backend):
    """Truncated backpropagation through time: detach() between chunks keeps the potential's
    value and drops the earlier chunks' graph; a state of another shape is an error."""
    p = make_params()
    x = away_from_threshold((6, 70), p).requires_grad_(True)
    m = MultiStepLIF(backend=backend, stateful=True)
    first = m(x[:3])
    first.sum().backward()
    m.detach()
    second = m(x[3:])
    second.sum().backward()  # (raised "backward through the graph a second time" without detach)
    assert torch.equal(torch.cat([first, second]), multistep_lif(x.detach(), backend="torch"))
    with pytest.raises(ValueError, match="reset"):
        m(x[:2, :10].detach())
    m.reset()
    assert m(x[:2, :10].detach()).shape == (2, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_stays_in_autograd(backend):
    x = torch.zeros(4, 0, 3, requires_grad=True)
    v0 = torch.zeros(0, 3, requires_grad=True)
    spikes, v = multistep_lif(x, v_init=v0, return_v=True, backend=backend)
    assert spikes.shape == x.shape and v.shape == (0, 3) and spikes.requires_grad and v.requires_grad
    (spikes.sum() + v.sum()).backward()
    assert x.grad.shape == x.shape and v0.grad.shape == v0.shape


def test_empty_input_final_state_is_fp32():
    # guards the empty-input path: v is fp32 whatever x's dtype, as for non-empty inputs
    x = torch.zeros(3, 0, 4, dtype=torch.float16)
    spikes, v = multistep_lif(x, return_v=True, backend="torch")
    assert spikes.dtype == torch.float16 and v.dtype == torch.float32 and v.shape == (0, 4)


def test_a_single_time_step_is_time_major_whatever_its_stride():
    # guards time_major_dense's T == 1 case: a size-1 time dimension's stride is meaningless
    x = torch.randn(64, 1).t()  # (1, 64) with strides (1, 1)
    assert x.stride(0) != x[0].numel() and kutils.time_major_dense(x)


def test_numpy_and_float32_range_parameters():
    """numpy numbers are numbers (the cache once decided it by what ran before); values beyond
    float32's range, the kernels' arithmetic, are refused (they overflowed or gave NaN)."""
    np = pytest.importorskip("numpy")
    assert make_params(tau=np.float32(2.0)) is make_params(tau=2.0)
    assert make_params(tau=np.float64(3.0), v_threshold=np.int64(1)).tau == 3.0
    for bad in ({"tau": 1e39}, {"v_threshold": -1e39, "v_reset": -2e39}, {"alpha": 1e39}):
        with pytest.raises(ValueError, match="float32"):
            make_params(**bad)


@pytest.mark.slow  # Dynamo captures and recompiles: a compile test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dynamic", [None, True])
def test_torch_compile_fullgraph(backend, dynamic):
    """multistep_lif and MultiStepLIF compile with fullgraph=True (a graph break raises), with
    static and dynamic shapes; outputs and gradients equal eager."""
    torch._dynamo.reset()
    module = MultiStepLIF(tau=3.0, detach_reset=False, backend=backend)

    def f(x, v0):
        s, v = multistep_lif(x * 2.0, v_init=v0, return_v=True, backend=backend, surrogate="atan")
        return module(s + x).sum(0) + v

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic, backend=counter)
    compiles = []
    for shape in [(4, 3, 17), (4, 5, 9), (6, 5, 9)]:
        x = torch.randn(shape, requires_grad=True)
        v0 = torch.rand(shape[1:], requires_grad=True)
        y = compiled(x, v0)
        y.sum().backward()
        xr, vr = x.detach().clone().requires_grad_(True), v0.detach().clone().requires_grad_(True)
        yr = f(xr, vr)
        yr.sum().backward()
        assert torch.equal(y, yr)
        torch.testing.assert_close(x.grad, xr.grad)
        torch.testing.assert_close(v0.grad, vr.grad)
        compiles.append(counter.frame_count)
    if dynamic:
        assert compiles[0] == compiles[-1], f"recompiled for new shapes despite dynamic=True: {compiles}"


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    """The default (Inductor) backend around the CPU path: the op stays one opaque node."""
    torch._dynamo.reset()
    x = torch.randn(4, 2, 33, device="cpu", requires_grad=True)
    f = lambda x: multistep_lif(torch.sigmoid(x) * 3.0, tau=3.0, backend="torch").mean(0)
    y = torch.compile(f, fullgraph=True)(x)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    f(xr).sum().backward()
    assert torch.equal(y, f(xr))
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck(use_triton):
    """torch.library.opcheck: schema, fake vs real (shapes and strides), autograd registration."""
    from svm_kernels.lif.fused import _lif_bwd_op, _lif_fwd_op

    params = (3.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
    cl = torch.randn(4 * 2, 3, 5, 6).contiguous(memory_format=torch.channels_last).view(4, 2, 3, 5, 6)
    cases = [
        (torch.randn(4, 3, 17, requires_grad=True), None, True),
        (torch.randn(3, 40, requires_grad=True), torch.rand(40, requires_grad=True), True),
        (cl.requires_grad_(True), torch.rand(2, 3, 5, 6), False),
        # fp16, not bf16: the interpreter's bf16 emulation does not survive opcheck's schema mode.
        (torch.randn(5, 2, 7, dtype=torch.float16, requires_grad=True), None, False),
    ]
    for x, v0, return_v in cases:
        torch.library.opcheck(_lif_fwd_op, (x, v0, *params, return_v, use_triton))
        g = torch.randn(x.shape, dtype=x.dtype)
        g_v = torch.randn(x.shape[1:]) if return_v else None
        v0 = None if v0 is None else v0.detach()  # (no double backward)
        torch.library.opcheck(_lif_bwd_op, (g, g_v, x.detach(), v0, *params, v0 is not None, use_triton))


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck_time_not_outermost(use_triton):
    """Guards the fakes giving x's own strides where the kernels run on a time-major copy of x."""
    from svm_kernels.lif.fused import _lif_bwd_op, _lif_fwd_op

    params = (2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
    x = torch.randn(2, 3, 5).transpose(0, 1)  # dense, but time is not outermost in memory
    assert not kutils.time_major_dense(x)
    torch.library.opcheck(_lif_fwd_op, (x.requires_grad_(True), None, *params, True, use_triton))
    g_s, g_v = torch.randn(2, 3, 5).transpose(0, 1), torch.randn(2, 5)
    torch.library.opcheck(_lif_bwd_op, (g_s, g_v, x.detach(), None, *params, False, use_triton))


def test_public_namespace():
    assert svm_kernels.multistep_lif is multistep_lif
    assert "tau" in MultiStepLIF().extra_repr()


@pytest.mark.parametrize("T", range(1, 100))
def test_segments_are_balanced_and_cover_T(T):
    """The kernels' time segments: cdiv(T, 16) of them, at most 16 steps each, the last one the
    same length or shorter by less than the number of segments, together exactly T steps."""
    from svm_kernels.lif.fused import MAX_SEGMENT, segments

    seg, num_seg, last_seg = segments(T)
    assert num_seg == -(-T // MAX_SEGMENT)
    assert 1 <= last_seg <= seg <= MAX_SEGMENT
    assert seg - last_seg < num_seg
    assert (num_seg - 1) * seg + last_seg == T


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: 2^31 elements")
@pytest.mark.parametrize(
    "T,n",
    [
        (5, 2**29 + 7),  # 2.7e9 elements > 2^31
        (20, 2**28 + 7),  # two segments of 10 rows: a segment's offset 10 n passes 2^31 itself
    ],
)
def test_more_than_2_31_elements_cuda(T, n):
    x = torch.randn(T, n, device="cuda", dtype=torch.float16)
    s = multistep_lif(x, backend="triton")
    tail = multistep_lif(x[:, -1000:].contiguous(), backend="torch")
    assert torch.equal(s[:, -1000:], tail)


@pytest.mark.parametrize("backend", BACKENDS)
def test_traces_as_one_node(backend, name="svmamba::lif_fwd"):
    """FLOP counters (fvcore traces the model) see the neuron as one named op, nothing inside it."""
    graph, _ = torch.jit._get_trace_graph(lambda x: multistep_lif(x, backend=backend), (torch.randn(4, 6),))
    kinds = [n.kind() for n in graph.nodes() if n.kind() not in ("prim::Constant", "prim::TupleUnpack")]
    assert kinds == [name]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispatch_modes_see_one_named_op(backend):
    """A dispatch mode (a FLOP or memory counter) sees the neuron as the custom op, not the ops of
    its implementation."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    x = torch.tensor([[0.6, 3.0], [0.9, -1.0]])
    with Ops() as mode:
        s = multistep_lif(x, backend=backend)
    assert mode.names == ["svmamba.lif_fwd"]
    assert torch.equal(s, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # h = (0.3, 1.5), then (0.6, -0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_raises_like_autograd(backend):
    """The op frees its saved x after a backward, as autograd does: another backward without
    retain_graph fails loudly (never silent zero gradients); with retain_graph it repeats."""
    x = torch.randn(3, 8, requires_grad=True)
    g = torch.randn(3, 8)
    s = multistep_lif(x, backend=backend)
    first = torch.autograd.grad(s, x, g, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(s, x, g)[0], first)
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(s, x, g)


@pytest.mark.slow  # a subprocess: Triton's compiled-kernel path, without the interpreter
def test_host_cost_script_runs_the_real_path():
    """bench/lif_host.py times the real Python path with the kernels' launch stubbed: every row
    gets a time, and the stub saw both kernels launched (else a row would time nothing)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "lif_host.py"), "--reps", "3", "--groups", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    times = {
        line[:30].strip(): float(line[30:]) for line in out if line.startswith("  ") and line[:30].strip()
    }
    for row in ("fwd", "bwd", "full", "launcher fwd (lif_fwd)", "launcher bwd (lif_bwd)"):
        assert times[row] > 0, out
    assert "launched: fused_lif_bwd_kernel, fused_lif_fwd_kernel" in out, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, -0.25])
def test_any_tau_charges_to_the_reference_bits(v_reset, decay_input, backend):
    """Guards the correctly rounded division by a tau that is not a power of two (x * (1 / tau)
    differs in the last bit) and spikingjelly's order of operations without decay_input
    (v - leak / tau + x, not v + x - leak / tau), on both paths: the final v bit for bit."""
    g = torch.Generator().manual_seed(5)
    shape = (5, 2048)
    magnitude = torch.exp2(torch.randint(-8, 9, shape, generator=g).float())
    x = (torch.randn(shape, generator=g) * magnitude).to(torch.get_default_device())
    for tau in (3.0, 1.7):
        kw = dict(tau=tau, v_threshold=3.0e38, v_reset=v_reset, decay_input=decay_input)
        s, v = multistep_lif(x, return_v=True, backend=backend, **kw)
        s_ref, v_ref = multistep_lif_naive(x, make_params(**kw), None)
        assert not s_ref.any() and torch.equal(s, s_ref)
        assert torch.equal(v.view(torch.int32), v_ref.view(torch.int32)), f"tau={tau}"


def test_reference_fires_on_the_threshold_without_autograd():
    """Guards the reference's comparison without autograd (h >= v_threshold, as with it): the
    CPU and model paths are checked against the reference under no_grad too."""
    for tau in (2.0, 3.0):
        p = make_params(tau=tau, v_threshold=threshold_for(tau))
        x = on_threshold_inputs(4, 64, tau)
        s, v = multistep_lif_naive(x, p)
        with torch.no_grad():
            s_ng, v_ng = multistep_lif_naive(x, p)
        assert s[0].any(), "the test must put some h exactly on the threshold"
        assert torch.equal(s_ng, s) and torch.equal(v_ng, v)


def test_float64_runs_in_float64_on_the_cpu_path():
    """Guards fp64 arithmetic for fp64 x on the torch path: gradients (and v_init's) to fp64
    rounding, not fp32's; the final v is fp32 as always."""
    # (tau = 2: the final v's gradient is fp32, like v, and its scaling by 1 / tau stays exact)
    kw = dict(tau=2.0, v_reset=-0.25, v_threshold=0.8, surrogate="atan")
    p = make_params(**kw)
    v_init = torch.rand(2, 40, dtype=torch.float64) * 0.5 - 0.2
    x = away_from_threshold((6, 2, 40), p, dtype=torch.float64, v_init=v_init)
    g_s, g_v = torch.randn(x.shape, dtype=torch.float64), torch.randn(x.shape[1:]).double()  # (v: fp32)
    ref, got = run_both(x, g_s, g_v, v_init=v_init, backend="torch", **kw)
    assert torch.equal(got[0], ref[0])
    assert got[1].dtype == torch.float32
    assert_close_rel(got[1], ref[1].float(), 1e-6, "final v")
    assert got[2].dtype == torch.float64 and got[3].dtype == torch.float64
    assert_close_rel(got[2], ref[2], 1e-12, "grad x")
    assert_close_rel(got[3], ref[3], 1e-12, "grad v_init")


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_state_gradient_keeps_its_own_precision(backend):
    """Guards grad_v_init in v_init's dtype: an fp32 v_init beside fp16 x gets an fp32-accurate
    gradient (not one rounded to fp16 and widened back)."""
    kw = dict(tau=3.0, v_threshold=0.8)
    p = make_params(**kw)
    v_init = torch.rand(3, 41) * 0.5 - 0.2
    x = away_from_threshold((4, 3, 41), p, dtype=torch.float16, v_init=v_init)
    g_s, g_v = torch.randn(x.shape), torch.randn(x.shape[1:])
    ref, got = run_both(x, g_s, g_v, v_init=v_init, backend=backend, **kw)
    assert got[3].dtype == torch.float32
    assert_close_rel(got[3], ref[3], 1e-5, "grad v_init")
    from svm_kernels.lif.fused import _run_backward

    grad_s = torch.randn(x.shape, dtype=x.dtype)
    _, gvi = _run_backward(grad_s, g_v, x, v_init, p, True, backend == "triton")
    assert gvi.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_gradient_is_rounded_once(dtype, backend):
    """Guards the walk back in fp32 whatever the storage dtype: grad_x in fp16 / bf16 is the
    fp32 gradient of the same input rounded once (to within one unit in the last place), not
    accumulated in half precision step after step."""
    p = make_params()
    x = away_from_threshold((16, 300), p, dtype=dtype)
    g_s, g_v = torch.randn(x.shape).to(dtype), torch.randn(x.shape[1:])
    grads = []
    for xs, gs in ((x, g_s), (x.float(), g_s.float())):
        xb = xs.clone().requires_grad_(True)
        s, v = multistep_lif(xb, return_v=True, backend=backend)
        torch.autograd.backward([s, v], [gs, g_v])
        grads.append(xb.grad)
    got, ref = grads[0].float(), grads[1]
    assert grads[0].dtype == dtype
    finfo = torch.finfo(dtype)
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(finfo.smallest_normal)))) * finfo.eps
    assert ((got - ref).abs() <= ulp).all(), ((got - ref).abs() / ulp).max().item()


def test_float32_extremes_are_finite_parameters():
    """Guards the inclusive float32 range check: +-float32 max are finite parameters."""
    big = torch.finfo(torch.float32).max
    assert make_params(tau=big).tau == big
    assert make_params(v_threshold=big, alpha=big).v_threshold == big
    assert make_params(v_threshold=0.0, v_reset=-big).v_reset == -big
    with pytest.raises(ValueError, match="float32"):
        make_params(tau=float("inf"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_default_alpha_gives_a_unit_slope_at_the_threshold(surrogate, backend):
    """Guards spikingjelly's default alpha (sigmoid 4, atan 2: alpha / 4 and alpha / 2 at the
    threshold, both 1); every other comparison shares the default with the reference, and the
    comparison with spikingjelly needs the peer installed."""
    assert make_params(surrogate=surrogate).alpha == {"sigmoid": 4.0, "atan": 2.0}[surrogate]
    x = torch.tensor([[1.0, 0.5]], requires_grad=True)  # h = x without decay_input: on, below
    s = multistep_lif(x, decay_input=False, surrogate=surrogate, backend=backend)
    assert s.tolist() == [[1.0, 0.0]]
    s.sum().backward()
    assert x.grad[0, 0].item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reset_near_float32s_limit_gives_finite_gradients(backend):
    # v_reset * tau overflowed to -inf in the Triton backward, and -inf times a zero gradient
    # (no gradient reaching the last step's reset) is NaN; the reference stays finite
    torch.manual_seed(0)
    x = (torch.randn(4, 50) * 2).to(torch.get_default_device())
    for kw in (dict(v_reset=-1.5e38, tau=3.0), dict(v_reset=-2e38)):
        ref, got = run_both(x, torch.randn(x.shape), torch.zeros(x.shape[1:]), backend=backend, **kw)
        assert torch.isfinite(got[2]).all(), kw
        assert_close_rel(got[2], ref[2], 1e-5, "grad x")


def test_stateful_potential_moves_with_the_module_and_flags_are_bools():
    # .to() left the kept potential behind (a plain attribute): the next chunk on the new device
    # was refused; a string flag would pass as true
    m = MultiStepLIF(stateful=True)
    m(torch.randn(3, 2, 4))
    m.to("meta")
    assert m.v.device.type == "meta"
    assert m(torch.randn(3, 2, 4, device="meta")).device.type == "meta"
    assert m.state_dict() == {}  # a sequence's state, not the model's
    with pytest.raises(TypeError, match="stateful must be a bool"):
        MultiStepLIF(stateful="no")
    for flag in ("false", None):
        with pytest.raises(TypeError, match="return_v must be a bool"):
            multistep_lif(torch.randn(2, 3), return_v=flag)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        multistep_lif(torch.randn(2, 3).to(torch.float8_e4m3fn))


def test_stateful_module_copies_mid_sequence_without_the_graph():
    # the kept potential carries the chunk's graph until detach(): deepcopy (an EMA copy of the
    # model) raised "Only Tensors created explicitly by the user ... support the deepcopy protocol"
    import copy
    import io

    m = MultiStepLIF(stateful=True)
    x = (torch.randn(3, 2, 4) * 2).requires_grad_()
    m(x)
    assert m.v.grad_fn is not None
    twins = copy.deepcopy(m), torch.load(_saved(m, io.BytesIO()), weights_only=False)
    assert m.v.grad_fn is not None  # the original keeps its graph
    for twin in twins:
        assert torch.equal(twin.v, m.v) and not twin.v.requires_grad
    spikes = m(x.detach())
    for twin in twins:  # both continue the same sequence
        assert torch.equal(twin(x.detach()), spikes)


def _saved(module, buffer):
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("v_reset", [0.0, -0.25, None])
def test_backends_agree_bit_for_bit_and_differ_only_after_an_infinite_charge(v_reset):
    x = torch.randn(6, 37) * 2
    x[0, :3] = 2.0  # h exactly on the threshold (tau = 2)
    kw = dict(v_reset=v_reset, return_v=True)
    for a, b in zip(multistep_lif(x, backend="torch", **kw), multistep_lif(x, backend="triton", **kw)):
        assert torch.equal(a, b)
    x[0, 0] = float("inf")
    (s_t, v_t), (s_k, v_k) = (multistep_lif(x, backend=be, **kw) for be in ("torch", "triton"))
    assert s_t[0, 0] == 1 and s_k[0, 0] == 1
    if v_reset is None:  # soft reset: inf - theta, then inf - inf / tau, NaN on both
        torch.testing.assert_close(v_t, v_k, rtol=0, atol=0, equal_nan=True)
        assert v_t[0].isnan()
    else:  # spikingjelly's h * (1 - s) is NaN on the PyTorch path; the kernels reset to v_reset
        assert v_t[0].isnan() and torch.isfinite(v_k[0]) and torch.equal(v_t[1:], v_k[1:])
