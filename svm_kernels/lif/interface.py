"""``multistep_lif``: argument checks and the choice between the Triton kernels and the PyTorch path."""

from __future__ import annotations

import torch

from ..utils import TRITON_DTYPES, check_flag, check_no_tangents, resolve_backend
from .common import LIFParams, check_inputs, make_params
from .fused import lif_op


def multistep_lif(
    x: torch.Tensor,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    backend: str = "auto",
):
    """Multi-step leaky integrate-and-fire neuron with a surrogate gradient.

    Semantics are spikingjelly's multi-step ``LIFNode``: for t = 0..T-1,
    ``h = v + (x[t] - (v - v_reset)) / tau`` (``decay_input=True``; otherwise
    ``h = v - (v - v_reset) / tau + x[t]``), ``s[t] = (h >= v_threshold)``, then a hard reset
    ``v = h * (1 - s) + v_reset * s`` or, with ``v_reset=None``, a soft reset
    ``v = h - v_threshold * s``. The backward replaces the Heaviside by the surrogate's derivative
    at ``h - v_threshold`` ("sigmoid", alpha 4 by default, or "atan", alpha 2);
    ``detach_reset`` stops the gradient through the spike in the reset term.

    Both implementations are one autograd node that saves only x and recompute the membrane
    potential in the backward (a ``torch.library`` custom op under torch.compile, tracing and
    dispatch modes; a plain ``autograd.Function`` around the same functions in eager calls); the division by tau is correctly
    rounded as in spikingjelly, so the spikes are bit-identical to its.

    Args:
        x: (T, *) input currents, time first; fp16, bf16, fp32 (fp64 on the torch backend).
        v_init: optional initial membrane potential of shape ``x.shape[1:]`` (default: rest,
            ``v_reset``, or 0 with soft reset, where spikingjelly's neurons start).
        return_v: also return the final membrane potential (fp32).
        backend: "auto" (Triton on CUDA, the vectorised PyTorch path otherwise), "triton" or
            "torch".

    Returns:
        Spikes of x's shape and dtype (exact 0/1), or ``(spikes, v_final)`` when ``return_v``.
        Arithmetic is fp32 whatever the storage dtype (fp64 for fp64 x). With finite x the
        backends agree bit for bit; a hard reset of an infinite h is spikingjelly's on the
        PyTorch path (h * (1 - s): NaN from then on) and to ``v_reset`` by the Triton kernels.
    """
    p = make_params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    return lif_with_params(x, p, v_init=v_init, return_v=check_flag("return_v", return_v), backend=backend)


def lif_with_params(
    x: torch.Tensor,
    p: LIFParams,
    *,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    backend: str = "auto",
):
    """:func:`multistep_lif` with its neuron parameters checked already (``make_params``): what a
    module that holds them calls."""
    check_inputs(x, v_init)
    check_no_tangents("multistep_lif", x, v_init)
    use = resolve_backend(backend, x, v_init)
    if use == "triton" and x.dtype not in TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(f"backend='triton' supports fp16, bf16 and fp32 x, got {x.dtype}")
        use = "torch"
    if x.numel() == 0:  # nothing to compute: results built from the inputs stay in autograd's graph
        spikes = x * 0
        if not return_v:
            return spikes
        v = x[0].to(torch.float32) * 0
        # (v_init's zeros keep it in the graph; v stays fp32 whatever v_init's dtype)
        return spikes, (v if v_init is None else v + (v_init * 0).to(torch.float32))
    spikes, v = lif_op(x, v_init, p, return_v, use_triton=use == "triton")
    return (spikes, v) if return_v else spikes
