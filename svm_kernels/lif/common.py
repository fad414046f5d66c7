"""Argument checking shared by the LIF reference and the fused kernels.

Valid ranges (checked here, once, for every backend):

* ``x``: floating point (fp16, bf16, fp32, fp64), at least one dimension, ``T = x.shape[0] >= 1``.
* ``tau > 1``: with ``tau == 1`` the neuron forgets everything each step; below 1 it is unstable.
* ``v_threshold``: finite. ``v_reset``: ``None`` (soft reset) or a finite float below
  ``v_threshold`` (otherwise a neuron would fire forever).
* ``surrogate`` in {"sigmoid", "atan"}; ``alpha > 0`` (default 4 for sigmoid, 2 for atan, as
  spikingjelly).
* ``v_init``: ``None`` (start from rest, as spikingjelly's neurons do: v_reset, or 0 with soft
  reset) or a floating tensor of shape ``x.shape[1:]`` on x's device.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import torch

from ..utils import check_flag, check_floating, is_real, new_output, same_layout, time_major_dense

SURROGATE_DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0}


_FP32_MAX = torch.finfo(torch.float32).max


def _finite(value: float) -> bool:
    # Finite in float32, the kernels' arithmetic (1e39 is finite in Python, inf there). Not
    # math.isfinite: torch.compile with dynamic shapes traces that into the graph (a break).
    return -_FP32_MAX <= value <= _FP32_MAX


def _number(value):
    """A real number (numpy's included) as a Python float; anything else unchanged, for the
    checks to name. So the cache's key is the same for 2, 2.0 and np.float32(2.0)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class LIFParams:
    tau: float
    v_threshold: float
    v_reset: float | None
    decay_input: bool
    detach_reset: bool
    surrogate: str
    alpha: float

    @property
    def v_rest(self) -> float:
        """The resting potential: v_reset, or 0 with soft reset. The leak decays v towards it, and
        a neuron without v_init starts there (as spikingjelly's)."""
        return 0.0 if self.v_reset is None else self.v_reset


def make_params(
    tau=2.0,
    v_threshold=1.0,
    v_reset=0.0,
    decay_input=True,
    detach_reset=False,
    surrogate="sigmoid",
    alpha=None,
) -> LIFParams:
    """The checked parameters; a model repeats the same few, so they are checked once each
    (except while Dynamo traces: it would trace through the cache, and warn)."""
    args = (
        _number(tau),
        _number(v_threshold),
        _number(v_reset),
        decay_input,
        detach_reset,
        surrogate,
        _number(alpha),
    )
    if torch.compiler.is_compiling():
        return _check_params(*args)
    try:
        return _checked_params(*args)
    except TypeError:  # an unhashable argument: checked below, with the usual message
        return _check_params(*args)


@functools.lru_cache(maxsize=64, typed=True)
def _checked_params(*args) -> LIFParams:
    # (errors are not cached: an invalid set is checked, and raises, every time; typed, since
    # True == 1.0 and would find the checked v_threshold=1.0; numbers arrive as floats)
    return _check_params(*args)


def _check_params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha) -> LIFParams:
    if not is_real(tau) or not _finite(tau) or tau <= 1.0:
        raise ValueError(f"tau must be a finite (float32) number > 1, got {tau!r}")
    if not is_real(v_threshold) or not _finite(v_threshold):
        raise ValueError(f"v_threshold must be a finite (float32) number, got {v_threshold!r}")
    if v_reset is not None:
        if not is_real(v_reset) or not _finite(v_reset):
            raise ValueError(
                f"v_reset must be None (soft reset) or a finite (float32) number, got {v_reset!r}"
            )
        if v_reset >= v_threshold:
            raise ValueError(f"v_reset ({v_reset}) must be below v_threshold ({v_threshold})")
    check_flag("decay_input", decay_input)
    check_flag("detach_reset", detach_reset)
    if not isinstance(surrogate, str) or surrogate not in SURROGATE_DEFAULT_ALPHA:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATE_DEFAULT_ALPHA)}, got {surrogate!r}")
    if alpha is None:
        alpha = SURROGATE_DEFAULT_ALPHA[surrogate]
    if not is_real(alpha) or not _finite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite (float32) number > 0, got {alpha!r}")
    return LIFParams(
        float(tau),
        float(v_threshold),
        None if v_reset is None else float(v_reset),
        bool(decay_input),
        bool(detach_reset),
        surrogate,
        float(alpha),
    )


def check_inputs(x: torch.Tensor, v_init: torch.Tensor | None) -> None:
    check_floating("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (time first), got a 0-d tensor")
    if x.shape[0] == 0:
        raise ValueError("x must have at least one time step, got T = 0")
    if v_init is not None:
        check_floating("v_init", v_init)
        if tuple(v_init.shape) != tuple(x.shape[1:]):
            raise ValueError(
                f"v_init must have shape x.shape[1:] = {tuple(x.shape[1:])}, got {tuple(v_init.shape)}"
            )
        if v_init.device != x.device:
            raise ValueError(f"v_init is on {v_init.device} but x is on {x.device}")


def as_time_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is dense with time outermost in memory (any inner order), else a copy.

    Every implementation walks x as T rows of numel / T neurons and gives its outputs x's
    strides, so one flat offset addresses the same neuron in x, the spikes and the gradients.
    """
    # is_contiguous first: one C call answers the common case (the general test costs more)
    return x if x.is_contiguous() or time_major_dense(x) else x.contiguous()


def layout_like(like: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` laid out like ``like`` (itself when it already is, else a copy), or None."""
    if t is None or same_layout(t, like):
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def state_like(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
    """A per-neuron tensor laid out like one step of ``x`` (so flat offsets match), or None."""
    return None if t is None else layout_like(x[0], t)


def empty_outputs(x: torch.Tensor, return_v: bool):
    """Forward outputs of every implementation (and of the fake): spikes like x, final v (fp32)."""
    v_out = new_output(x[0], dtype=torch.float32) if return_v else x.new_empty(0, dtype=torch.float32)
    return new_output(x), v_out


def empty_grads(x: torch.Tensor, v_init: torch.Tensor | None, need_grad_v_init: bool):
    """Backward outputs: grad_x like x, grad_v_init like one step of x in v_init's dtype (or empty)."""
    if need_grad_v_init and v_init is not None:
        return new_output(x), new_output(x[0], dtype=v_init.dtype)
    return new_output(x), x.new_empty(0)
