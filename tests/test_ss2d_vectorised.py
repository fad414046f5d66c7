"""The vectorised PyTorch scan (backend="torch") against the per-position reference, in float64.

The reference (``naive.py``) walks the positions one at a time and lets autograd derive the
backward; the vectorised ops solve the recurrence in chunks and have an analytic backward.
"""

import pytest
import torch
from helpers import assert_close_rel

from svm_kernels import cross_selective_scan, cross_selective_scan_lowrank
from svm_kernels import utils as kutils
from svm_kernels.ss2d import vectorised
from svm_kernels.ss2d.naive import cross_selective_scan_naive, lowrank_delta


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kutils, "POISON_OUTPUTS", True)


def sequential_scan(a, b, reverse):
    x, state = torch.zeros_like(b), torch.zeros_like(b[..., 0])
    L = b.shape[-1]
    for p in range(L - 1, -1, -1) if reverse else range(L):
        state = a[..., p] * state + b[..., p]
        x[..., p] = state
    return x


def chunk_major(t, c):
    """(..., L) in sequence order -> (c, L / c, ...): linear_scan's layout (p = i c + j at [j, i, ...])."""
    return t.unflatten(-1, (-1, c)).movedim((-1, -2), (0, 1))


def sequence_order(t):
    return t.movedim((0, 1), (-1, -2)).flatten(-2)


SCAN_SHAPES = [(1, 1), (1, 2), (2, 1), (3, 1), (1, 7), (4, 4), (3, 5), (5, 10), (8, 8)]  # (c, n)


@pytest.mark.parametrize("c,n", SCAN_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_the_sequential_recurrence(c, n, reverse):
    g = torch.Generator().manual_seed(c * 100 + n)
    a = torch.rand(2, 3, c * n, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, c * n, generator=g, dtype=torch.float64)
    x = vectorised.linear_scan(chunk_major(a, c), chunk_major(b, c), reverse)
    assert_close_rel(sequence_order(x), sequential_scan(a, b, reverse), 1e-13)


@pytest.mark.parametrize("c,n", [(1, 1), (1, 4), (4, 1), (3, 5)])
def test_linear_scan_leaves_its_inputs_alone(c, n):
    # it works in place on copies; with one position per chunk a careless copy is a view
    a, b = torch.rand(c, n, 3), torch.randn(c, n, 3)
    a0, b0 = a.clone(), b.clone()
    vectorised.linear_scan(a, b)
    vectorised.linear_scan(a, b, reverse=True)
    assert torch.equal(a, a0) and torch.equal(b, b0)


@pytest.mark.parametrize("c,n", SCAN_SHAPES)
def test_shifted_is_the_sequence_shifted_by_one(c, n):
    a = torch.randn(2, c * n, dtype=torch.float64)
    zero = torch.zeros(2, 1, dtype=a.dtype)
    following, preceding = torch.cat([a[:, 1:], zero], dim=-1), torch.cat([zero, a[:, :-1]], dim=-1)
    assert torch.equal(sequence_order(vectorised.shifted(chunk_major(a, c), 1)), following)
    assert torch.equal(sequence_order(vectorised.shifted(chunk_major(a, c), -1)), preceding)


def test_linear_scan_keeps_tiny_decays_finite():
    a = torch.full((4, 40), 1e-30)  # exp(dt * A) far below what a cumulative-sum trick could divide by
    b = torch.randn(4, 40)
    x = sequence_order(vectorised.linear_scan(chunk_major(a, 8), chunk_major(b, 8)))
    assert torch.isfinite(x).all() and torch.allclose(x, b, rtol=1e-6)


def make_inputs(batch, D, H, W, N, R, lowrank, skip, bias, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inputs = dict(
        u=rnd(batch, D, H, W),
        A=-(torch.rand(4, D, N, generator=g, dtype=torch.float64) + 0.2),
        B=rnd(batch, 4, N, H, W),
        C=rnd(batch, 4, N, H, W),
        D=rnd(4, D) if skip else None,
    )
    if lowrank:
        inputs.update(dt_low=rnd(batch, 4, R, H, W, scale=0.5), dt_weight=rnd(4, D, R, scale=0.5))
        inputs["dt_bias"] = rnd(4, D, scale=0.3) if bias else None
    else:
        inputs.update(delta=rnd(batch, 4, D, H, W, scale=0.5))
        inputs["delta_bias"] = rnd(4, D, scale=0.3) if bias else None
    return inputs


def reference(inputs, lowrank, softplus):
    i = dict(inputs)
    if lowrank:
        i["delta"] = lowrank_delta(i.pop("dt_low"), i.pop("dt_weight"))
        i["delta_bias"] = i.pop("dt_bias")
    return cross_selective_scan_naive(**i, delta_softplus=softplus)


def output_and_grads(fn, inputs, grad_out):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(leaves)
    (y.double() * grad_out).sum().backward()
    return y, {k: None if v is None else v.grad for k, v in leaves.items()}


CASES = [
    # batch, D, H, W, N, R, lowrank, softplus, skip, bias
    (2, 3, 5, 7, 1, 2, True, True, True, True),  # odd H and W, the models' N = 1
    (1, 4, 8, 8, 4, 3, True, True, True, True),
    (2, 5, 3, 5, 2, 1, False, True, True, True),
    (1, 3, 1, 6, 1, 1, True, False, False, False),  # H = 1, no softplus, no D, no bias
    (1, 2, 1, 1, 3, 1, False, True, True, True),  # a single position
    (3, 2, 17, 3, 1, 2, False, False, True, False),  # L = 51: a ragged last chunk
    (2, 3, 4, 1, 2, 1, False, False, False, True),  # W = 1, no softplus but a bias
    (1, 2, 3, 4, 3, 2, True, False, True, True),  # low rank, no softplus but a bias
]


@pytest.mark.parametrize("batch,D,H,W,N,R,lowrank,softplus,skip,bias", CASES)
def test_matches_per_position_reference_float64(batch, D, H, W, N, R, lowrank, softplus, skip, bias):
    inputs = make_inputs(batch, D, H, W, N, R, lowrank, skip, bias)
    grad_out = torch.randn(batch, D, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y, grads = output_and_grads(lambda t: op(**t, delta_softplus=softplus, backend="torch"), inputs, grad_out)
    y_ref, ref = output_and_grads(lambda t: reference(t, lowrank, softplus), inputs, grad_out)
    assert y.dtype == torch.float64
    assert_close_rel(y, y_ref, 1e-12, "output")
    for name, g in ref.items():
        if g is None:
            assert grads[name] is None, name
        else:
            assert grads[name].dtype == inputs[name].dtype
            assert_close_rel(grads[name], g, 1e-11, f"grad {name}")


def test_float32_and_bfloat16_inputs():
    inputs = make_inputs(2, 4, 6, 5, 1, 2, True, True, True)
    grad_out = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, ref = output_and_grads(lambda t: reference(t, True, True), inputs, grad_out)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        low = {k: v if k in ("A", "D", "dt_bias", "dt_weight") else v.to(dtype) for k, v in inputs.items()}
        y, grads = output_and_grads(
            lambda t: cross_selective_scan_lowrank(**t, backend="torch"), low, grad_out
        )
        assert y.dtype == torch.float32  # fp32 for half inputs, else u's dtype
        assert_close_rel(y, y_ref, tol, f"output {dtype}")
        for name, g in ref.items():
            assert grads[name].dtype == low[name].dtype
            assert_close_rel(grads[name], g, tol * 10, f"grad {name} {dtype}")


@pytest.mark.parametrize("dt_bias", [10.0, 25.0])
def test_decay_rate_gradient_keeps_fp32_precision_at_large_time_steps(dt_bias):
    """dA needs a[p] x[p - 1], which vanishes with the decay a = exp(dt A): formed as
    x[p] - dt[p] u[p] B[p] (the same value) it cancelled to rounding noise, 1.0 relative error
    at dt ~ 25, A = -1."""
    inputs = make_inputs(1, 2, 2, 3, 1, 1, False, True, True, dtype=torch.float32)
    inputs["A"] = -torch.ones(4, 2, 1)
    inputs["delta"] = inputs["delta"] * 0.2
    inputs["delta_bias"] = torch.full((4, 2), dt_bias)
    grad_out = torch.randn(1, 2, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, grads = output_and_grads(lambda t: cross_selective_scan(**t, backend="torch"), inputs, grad_out)
    wide = {k: None if v is None else v.double() for k, v in inputs.items()}
    _, ref = output_and_grads(lambda t: reference(t, False, True), wide, grad_out)
    for name in ("A", "u", "B", "C", "D", "delta", "delta_bias"):
        assert_close_rel(grads[name].double(), ref[name], 1e-5, f"grad {name}")


def test_strided_inputs_channels_last_and_sliced():
    inputs = make_inputs(2, 4, 5, 6, 2, 2, True, True, True, dtype=torch.float32)
    y_ref = cross_selective_scan_lowrank(**inputs, backend="torch")
    strided = dict(inputs)
    strided["u"] = inputs["u"].to(memory_format=torch.channels_last)
    packed = torch.cat([inputs["dt_low"], inputs["B"], inputs["C"]], dim=2)  # as the models' x_proj
    strided["dt_low"], strided["B"], strided["C"] = packed[:, :, :2], packed[:, :, 2:4], packed[:, :, 4:]
    assert_close_rel(cross_selective_scan_lowrank(**strided, backend="torch"), y_ref, 1e-6)


def _torch_forward_op(lowrank: bool):
    """The PyTorch backend's differentiable op and the order of its tensor arguments."""
    if lowrank:
        return torch.ops.svmamba.ss2d_torch_lowrank_fwd, (
            "u",
            "dt_low",
            "dt_weight",
            "A",
            "B",
            "C",
            "D",
            "dt_bias",
        )
    return torch.ops.svmamba.ss2d_torch_fwd, ("u", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("lowrank", [False, True])
def test_custom_ops_pass_opcheck(lowrank, channels_last):
    inputs = make_inputs(2, 3, 4, 5, 2, 2, lowrank, True, True, dtype=torch.float32)
    if channels_last:  # the fakes promise the real strides whatever u's layout
        inputs["u"] = inputs["u"].contiguous(memory_format=torch.channels_last)
    args = {k: v.requires_grad_(True) if v is not None else None for k, v in inputs.items()}
    op, order = _torch_forward_op(lowrank)
    torch.library.opcheck(op, (*(args[k] for k in order), True, torch.float32))
    inference_op = getattr(torch.ops.svmamba, op.__name__.replace("fwd", "infer"))
    torch.library.opcheck(inference_op, (*(inputs[k].detach() for k in order), True, torch.float32))


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("lowrank", [False, True])
def test_inference_op_gives_the_differentiable_ops_output(lowrank, softplus):
    # without a gradient to follow, the scan skips dt's slope and reuses its decays: the same
    # output, bit for bit, and the same layout
    inputs = make_inputs(2, 3, 4, 5, 2, 2, lowrank, True, True, dtype=torch.float32)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    with torch.no_grad():
        y = op(**inputs, delta_softplus=softplus, backend="torch")
    y_grad = op(
        **{k: v.requires_grad_(True) for k, v in inputs.items()}, delta_softplus=softplus, backend="torch"
    )
    assert y_grad.requires_grad and not y.requires_grad
    assert torch.equal(y, y_grad.detach()) and y.stride() == y_grad.stride()


@pytest.mark.parametrize("H,W", [(4, 4), (3, 5)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_output_and_u_gradient_are_channels_last(H, W, memory_format):
    # the layout the sequences write fastest, and the one a channels_last model passes on
    inputs = make_inputs(2, 3, H, W, 1, 2, True, True, True, dtype=torch.float32)
    inputs["u"] = inputs["u"].contiguous(memory_format=memory_format).requires_grad_(True)
    y = cross_selective_scan_lowrank(**inputs, backend="torch")
    # autograd.grad: the op's own gradient (a leaf's .grad is copied into the leaf's layout)
    (du,) = torch.autograd.grad(y, inputs["u"], torch.randn_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert du.is_contiguous(memory_format=torch.channels_last)


def test_backward_fills_no_zero_gradients_for_the_saved_outputs():
    # The forward op's outputs past y (states, decays, dt) are saved values that nothing
    # differentiates: autograd must pass None for them, not fill (B, 4, D, L)-sized zeros.
    from torch.utils._python_dispatch import TorchDispatchMode

    inputs = make_inputs(2, 3, 4, 5, 1, 2, True, True, True, dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    y = cross_selective_scan_lowrank(**leaves, backend="torch")
    per_direction = 2 * 4 * 3 * 4 * 5
    fills = []

    class RecordFills(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            zeros = (
                torch.ops.aten.zeros,
                torch.ops.aten.zeros_like,
                torch.ops.aten.fill_,
                torch.ops.aten.zero_,
            )
            if func.overloadpacket in zeros:
                fills.append(out.numel())
            return out

    with RecordFills():
        y.backward(torch.randn_like(y))
    assert all(leaves[k].grad is not None for k in leaves)
    assert not [n for n in fills if n >= per_direction], fills


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("lowrank", [False, True])
def test_traces_as_one_node(lowrank, grad):
    # the differentiable op where an input requires a gradient (here only A), else the
    # inference op
    inputs = make_inputs(1, 3, 4, 4, 1, 2, lowrank, True, True, dtype=torch.float32)
    inputs["A"].requires_grad_(grad)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    keys = list(inputs)

    def f(*args):
        return op(**dict(zip(keys, args)), backend="torch")

    graph, _ = torch.jit._get_trace_graph(f, tuple(inputs.values()))
    name = f"svmamba::ss2d_torch_{'lowrank_' if lowrank else ''}{'fwd' if grad else 'infer'}"
    kinds = [n.kind() for n in graph.nodes()]
    assert kinds.count(name) == 1 and sum(k.startswith("svmamba::") for k in kinds) == 1, kinds


@pytest.mark.parametrize("lowrank", [False, True])
def test_no_grad_takes_the_inference_op_even_when_an_input_requires_grad(lowrank):
    # Guards the grad-mode check: under torch.no_grad() nothing can be differentiated, so the scan
    # must take the inference op (which saves nothing) even though A requires a gradient.
    inputs = make_inputs(1, 3, 4, 4, 1, 2, lowrank, True, True, dtype=torch.float32)
    inputs["A"].requires_grad_(True)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    keys = list(inputs)

    def f(*args):
        with torch.no_grad():
            return op(**dict(zip(keys, args)), backend="torch")

    graph, _ = torch.jit._get_trace_graph(f, tuple(inputs.values()))
    kinds = [n.kind() for n in graph.nodes()]
    name = f"svmamba::ss2d_torch_{'lowrank_' if lowrank else ''}infer"
    assert kinds.count(name) == 1 and sum(k.startswith("svmamba::") for k in kinds) == 1, kinds


@pytest.mark.parametrize("inference", [False, True])
def test_torch_compile_fullgraph_dynamic_matches_eager(inference):
    # under no_grad the scan goes through the inference op: it traces as well
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda t: cross_selective_scan_lowrank(**t, backend="torch"),
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for shape in ((2, 3, 5, 7), (1, 3, 4, 4)):  # the second reuses the symbolic graph
        batch, D, H, W = shape
        inputs = make_inputs(batch, D, H, W, 1, 2, True, True, True, dtype=torch.float32)
        if inference:
            with torch.no_grad():
                assert torch.equal(compiled(inputs), cross_selective_scan_lowrank(**inputs, backend="torch"))
            continue
        grad_out = torch.randn(shape, dtype=torch.float64)
        y, grads = output_and_grads(compiled, inputs, grad_out)
        y_ref, ref = output_and_grads(
            lambda t: cross_selective_scan_lowrank(**t, backend="torch"), inputs, grad_out
        )
        assert_close_rel(y, y_ref, 1e-6, "output")
        for name, g in ref.items():
            assert_close_rel(grads[name], g, 1e-6, f"grad {name}")


def test_module_in_float64_runs_the_scan_in_float64():
    """A float64 CrossSelectiveScan scans in float64 (its rates, skips and biases were cast to
    fp32: 4e-9 from the float64 reference, too far for a float64 gradcheck)."""
    from svm_kernels.ss2d import CrossSelectiveScan

    torch.manual_seed(0)
    m = CrossSelectiveScan(2, d_state=2, dt_rank=1, backend="torch").double()
    with torch.no_grad():
        for p in (m.A_logs, m.Ds, m.dt_projs_bias):
            p.add_(torch.randn_like(p) * 0.3)
    u = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        y = m(u)
        dt_low, B, C = m.project(u)
        A = -torch.exp(m.A_logs).view(4, 2, 2)
        delta = lowrank_delta(dt_low, m.dt_projs_weight)
        ref = cross_selective_scan_naive(u, delta, A, B, C, m.Ds.view(4, 2), m.dt_projs_bias)
    assert y.dtype == torch.float64
    assert_close_rel(y, ref, 1e-12, "output")


def test_module_projection_splits_dt_low_then_B_then_C():
    """Guards the order of x_proj_weight's rows, VMamba's (dt_low R, B N, C N): B and C swapped
    changed VMamba's golden logits by less than that test's tolerance."""
    from svm_kernels.ss2d import CrossSelectiveScan

    m = CrossSelectiveScan(2, d_state=2, dt_rank=1, backend="torch")
    with torch.no_grad():
        m.x_proj_weight.copy_(torch.arange(5.0).view(1, 5, 1).expand(4, 5, 2))  # row r of u's sum times r
    dt_low, B, C = m.project(torch.ones(1, 2, 1, 1))
    assert dt_low.flatten().tolist() == [0.0] * 4
    assert B.flatten().tolist() == [2.0, 4.0] * 4 and C.flatten().tolist() == [6.0, 8.0] * 4


def test_softplus_is_mambas_thresholded_softplus():
    """Both softplus forms against F.softplus (mamba's: threshold 20), elementwise: log1p, not
    log(1 + exp), keeps the relative precision of the tiny time steps of very negative z, and
    float64 passes values above 20 through as the reference does."""
    from svm_kernels.ss2d.naive import softplus_thresholded

    z = torch.cat([torch.linspace(-60.0, 40.0, 2001, dtype=torch.float64), torch.tensor([19.5, 20.0, 20.5])])
    want = torch.nn.functional.softplus(z)
    torch.testing.assert_close(softplus_thresholded(z), want, rtol=1e-15, atol=0)
    torch.testing.assert_close(vectorised._softplus(z.clone()), want, rtol=1e-15, atol=0)
    z32 = z.float()  # against the exact softplus of the rounded values
    want32 = torch.nn.functional.softplus(z32.double())
    torch.testing.assert_close(vectorised._softplus(z32).double(), want32, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_scan_in_fp32(dtype):
    """Half storage, fp32 arithmetic and output: against the float64 reference on the same rounded
    inputs the output keeps fp32's precision (a scan run in the storage dtype is ~1e-2 off)."""
    inputs = make_inputs(2, 3, 4, 5, 2, 2, True, True, True)
    low = {k: v.to(dtype) if k in ("u", "dt_low", "B", "C") else v for k, v in inputs.items()}
    y = cross_selective_scan_lowrank(**low, backend="torch")
    assert y.dtype == torch.float32
    assert_close_rel(y, reference({k: v.double() for k, v in low.items()}, True, True), 2e-5)


@pytest.mark.parametrize("out_dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("lowrank", [False, True])
def test_explicit_out_dtype(lowrank, out_dtype):
    # both ops (differentiable and inference) return y in out_dtype, not the compute dtype
    inputs = make_inputs(1, 3, 3, 4, 2, 2, lowrank, True, True, dtype=torch.float32)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    want = op(**inputs, backend="torch").to(out_dtype)
    with torch.no_grad():
        y = op(**inputs, out_dtype=out_dtype, backend="torch")
    inputs["u"].requires_grad_(True)
    y_grad = op(**inputs, out_dtype=out_dtype, backend="torch")
    assert y.dtype == y_grad.dtype == out_dtype
    assert torch.equal(y, want) and torch.equal(y_grad.detach(), want)
    (du,) = torch.autograd.grad(y_grad.sum(), inputs["u"])
    assert du.dtype == torch.float32


@pytest.mark.parametrize("lowrank", [False, True])
def test_the_torch_ops_give_empty_gradients_for_an_empty_batch(lowrank):
    # guards _or_none: only the 1-d placeholders of absent inputs become None, not the empty
    # gradients of a batch of 0 through the op itself (the interface never passes one)
    inputs = make_inputs(0, 3, 2, 2, 1, 2, lowrank, True, True, dtype=torch.float32)
    op, order = _torch_forward_op(lowrank)
    leaves = [inputs[k].clone().requires_grad_(True) for k in order]
    y = op(*leaves, True, torch.float32)[0]
    y.sum().backward()
    for name, leaf in zip(order, leaves):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape, name


def test_backward_op_returns_each_gradient_in_its_inputs_dtype():
    # as its fake promises: half inputs' gradients in half, the fp32 parameters' in fp32 (autograd
    # casts what the op returns, torch.compile's graph trusts the fake)
    inputs = make_inputs(1, 3, 3, 4, 2, 2, True, True, True, dtype=torch.bfloat16)
    for k in ("A", "D", "dt_weight", "dt_bias"):
        inputs[k] = inputs[k].float()
    args = [inputs.get(k) for k in ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")]
    _, *saved = torch.ops.svmamba.ss2d_torch_lowrank_fwd(
        *(a for a in args if a is not None), True, torch.float32
    )
    grads = torch.ops.svmamba.ss2d_torch_bwd(torch.randn(1, 3, 3, 4), *args, *saved)
    for name, arg, grad in zip(vectorised.SCAN_ARGS, args, grads):
        if arg is not None:
            assert grad.dtype == arg.dtype and grad.shape == arg.shape, name


def test_module_in_half_keeps_its_rates_in_fp32():
    """A bfloat16 CrossSelectiveScan computes A = -exp(A_logs) in fp32: exp in bfloat16 rounded
    the decay rates by up to 0.4 %."""
    from svm_kernels.ss2d import CrossSelectiveScan

    torch.manual_seed(0)
    m = CrossSelectiveScan(3, d_state=2, dt_rank=2, backend="torch")
    with torch.no_grad():
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.dt_projs_bias.fill_(0.5)  # dt ~ 1: decays that matter
    m = m.to(torch.bfloat16)
    u = torch.randn(1, 3, 3, 4).to(torch.bfloat16)
    with torch.no_grad():
        y = m(u)
        dt_low, B, C = (t.double() for t in m.project(u))
        A = -torch.exp(m.A_logs.double()).view(4, 3, 2)
        delta = lowrank_delta(dt_low, m.dt_projs_weight.double())
        D, bias = m.Ds.double().view(4, 3), m.dt_projs_bias.double()
        ref = cross_selective_scan_naive(u.double(), delta, A, B, C, D, bias)
    assert y.dtype == torch.float32
    assert_close_rel(y, ref, 2e-5, "output")
