"""What the SS2D paths share: the input checks, and the forward custom ops' two signatures."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..utils import FLOAT_DTYPES, check_floating, check_no_tangents, check_same_device, check_shape

# The fused kernels keep the per-direction state for every n in registers.
MAX_D_STATE = 16


def check_scan_inputs(
    u: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    bias_name: str,
    **per_direction: torch.Tensor,
):
    """Checks every argument of the two public ops; returns (batch, d_inner, H, W, N).

    ``per_direction`` holds the delta tensor(s) (full: ``delta``; low rank: ``dt_low``), whose
    shapes are checked by the caller; here they are checked for dtype and device.
    """
    tensors = dict(u=u, A=A, B=B, C=C, **per_direction)
    for name, t in tensors.items():
        check_floating(name, t)
    for name, t in (("D", D), (bias_name, bias)):
        if t is not None:
            check_floating(name, t)
    if u.dim() != 4:
        raise ValueError(f"u must have shape (B, D, H, W), got {tuple(u.shape)}")
    batch, d_inner, H, W = u.shape
    if d_inner == 0:
        raise ValueError("u has D = 0 channels")
    if H == 0 or W == 0:
        raise ValueError(f"u has an empty spatial size {H}x{W}")
    if A.dim() != 3 or A.shape[0] != 4 or A.shape[1] != d_inner:
        raise ValueError(f"A must have shape (4, D={d_inner}, N), got {tuple(A.shape)}")
    N = A.shape[2]
    if N == 0:
        raise ValueError("A has N = 0 states")
    if B.dim() == C.dim() == 5 and B.shape[2] == C.shape[2] != N:  # B and C agree: A is the odd one
        raise ValueError(f"A has N={N} states but B and C have N={B.shape[2]}: A must have shape (4, D, N)")
    check_shape("B", B, (batch, 4, N, H, W))
    check_shape("C", C, (batch, 4, N, H, W))
    if D is not None:
        check_shape("D", D, (4, d_inner))
    if bias is not None:
        check_shape(bias_name, bias, (4, d_inner))
    check_same_device("u", u, A=A, B=B, C=C, D=D, **{bias_name: bias}, **per_direction)
    for name in ("B", "C", *per_direction):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"{name} has dtype {tensors[name].dtype} but u has {u.dtype}; they must match")
    return batch, d_inner, H, W, N


def default_out_dtype(u: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    """fp32 for half inputs (VMamba's "oflex"), else u's dtype, unless asked otherwise."""
    if out_dtype is not None:
        if not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES:
            raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
        return out_dtype
    return torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype


# ---- the forward custom ops: each backend (fused.py, vectorised.py) defines the same pair, one
# taking the full delta, one the low-rank dt = dt_weight @ dt_low; their own functions take all
# nine SCAN_ARGS in this order, the absent dt form as None.

SCAN_ARGS = ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "bias")
# the nine as a schema, the absent dt form (and D, bias) None: the backward ops take them after grad_out
SCAN_ARGS_SCHEMA = "Tensor u, Tensor? delta, Tensor? dt_low, Tensor? dt_weight, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? bias"

# (op name suffix, schema of the op's tensor arguments, what each of them is in SCAN_ARGS)
_FORWARD_VARIANTS = (
    (
        "fwd",
        "Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias",
        ("u", "delta", "A", "B", "C", "D", "bias"),
    ),
    (
        "lowrank_fwd",
        "Tensor u, Tensor dt_low, Tensor dt_weight, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? dt_bias",
        ("u", "dt_low", "dt_weight", "A", "B", "C", "D", "bias"),
    ),
)


def define_forward_ops(
    prefix: str, returns: str, forward: Callable, fake: Callable, save: Callable, backward: Callable
) -> tuple:
    """A backend's two differentiable forward ops, ``svmamba::<prefix>_fwd`` (full delta) and
    ``svmamba::<prefix>_lowrank_fwd``: (u, delta | dt_low, dt_weight, A, B, C, D, bias,
    delta_softplus, out_dtype) -> ``returns`` (a schema result type).

    forward(*scan_args, softplus, out_dtype) computes them; fake(u, A, dt_low, softplus,
    out_dtype) gives their outputs' metadata (dt_low None for the full-delta op); save(ctx, scan_args, softplus, output) keeps what
    backward(ctx, grad_out) needs, which returns the gradients of the nine SCAN_ARGS (None where
    absent). scan_args: the nine SCAN_ARGS, the absent dt form None.
    """
    return tuple(
        _define_forward_op(f"svmamba::{prefix}_{suffix}", args, names, returns, forward, fake, save, backward)
        for suffix, args, names in _FORWARD_VARIANTS
    )


def define_inference_ops(prefix: str, forward: Callable, fake: Callable) -> tuple:
    """A backend's forward for calls that no gradient can follow (grad mode off, or no input
    requires one), without autograd and without what only the backward reads:
    ``svmamba::<prefix>_infer`` and ``svmamba::<prefix>_lowrank_infer``, the arguments of
    define_forward_ops' pair -> Tensor out. forward(*scan_args, softplus, out_dtype) computes
    out; fake(u, out_dtype) gives its metadata."""
    return tuple(
        _define_inference_op(
            f"svmamba::{prefix}_{suffix.replace('fwd', 'infer')}", args, names, forward, fake
        )
        for suffix, args, names in _FORWARD_VARIANTS
    )


def _scan_args(names, tensors) -> list:
    """An op's tensor arguments (named ``names``) as the nine SCAN_ARGS, None where absent."""
    given = dict(zip(names, tensors))
    return [given.get(n) for n in SCAN_ARGS]


def _define_inference_op(name, args, names, forward, fake):
    def run(*inputs):
        *tensors, softplus, out_dtype = inputs
        return forward(*_scan_args(names, tensors), softplus, out_dtype)

    def run_fake(*inputs):
        *_, out_dtype = inputs
        return fake(inputs[0], out_dtype)

    schema = f"({args}, bool delta_softplus, ScalarType out_dtype) -> Tensor"
    op = torch.library.custom_op(name, run, mutates_args=(), schema=schema)
    op.register_fake(run_fake)
    return op


def _define_forward_op(name, args, names, returns, forward, fake, save, backward):
    positions = [SCAN_ARGS.index(n) for n in names]

    def run(*inputs):
        *tensors, softplus, out_dtype = inputs
        return forward(*_scan_args(names, tensors), softplus, out_dtype)

    def run_fake(*inputs):
        *tensors, softplus, out_dtype = inputs
        u, _, dt_low, _, A, *_ = _scan_args(names, tensors)
        return fake(u, A, dt_low, softplus, out_dtype)

    def setup_context(ctx, inputs, output):
        *tensors, softplus, _ = inputs
        # The outputs past the first are saved values that nothing differentiates: left
        # unmaterialised, autograd passes None for them instead of filling zero tensors of
        # their size (four (B, 4, D, L)-sized fills per call on the PyTorch backend).
        ctx.set_materialize_grads(False)
        save(ctx, _scan_args(names, tensors), softplus, output)

    def gradients(ctx, grad_out, *unused):  # outputs past the first (saved values) get none
        if grad_out is None:  # only a saved value was differentiated: nothing reaches the inputs
            return (None,) * (len(positions) + 2)
        grads = backward(ctx, grad_out)
        return (*(grads[position] for position in positions), None, None)

    schema = f"({args}, bool delta_softplus, ScalarType out_dtype) -> {returns}"
    op = torch.library.custom_op(name, run, mutates_args=(), schema=schema)
    op.register_fake(run_fake)
    op.register_autograd(gradients, setup_context=setup_context)
    return op


def call_forward_op(ops: tuple, u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    """The full-delta op of ``ops`` (define_forward_ops) where delta is given, else the low-rank one."""
    full, lowrank = ops
    if dt_low is None:
        return full(u, delta, A, B, C, D, bias, softplus, out_dtype)
    return lowrank(u, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype)


def scan_output(
    ops: tuple, inference_ops: tuple, u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype
):
    """The scan's output: through the differentiable op of ``ops`` (define_forward_ops) where
    autograd may ask for a gradient, else through that of ``inference_ops``
    (define_inference_ops), which saves nothing for a backward. Forward-mode AD is refused."""
    args = (u, delta, dt_low, dt_weight, A, B, C, D, bias)
    check_no_tangents("the selective scan", *args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return call_forward_op(ops, *args, softplus, out_dtype)[0]
    return call_forward_op(inference_ops, *args, softplus, out_dtype)
