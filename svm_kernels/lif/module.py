"""``MultiStepLIF``: the module wrapper around :func:`multistep_lif`."""

from __future__ import annotations

import torch
from torch import nn

from ..utils import check_backend, check_flag
from .common import make_params
from .interface import lif_with_params


class MultiStepLIF(nn.Module):
    """Multi-step LIF neuron layer over inputs of shape (T, *).

    Stateless by default: every forward starts from rest (v = v_reset, or 0 with soft reset, as
    spikingjelly's neurons after ``reset_net``), so nothing leaks from one batch (or
    one image) to the next. With ``stateful=True`` the final membrane potential is kept and the
    next call continues from it (streaming a long sequence in chunks); call :meth:`reset` to
    start over, and :meth:`detach` between chunks to train them one backward at a time
    (truncated backpropagation through time: the kept potential otherwise carries the previous
    chunks' graph). ``.to()`` moves the kept potential with the module; it is a sequence's
    state, not the model's, and stays out of ``state_dict``. Arguments are those of :func:`svm_kernels.multistep_lif`.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        backend: str = "auto",
        stateful: bool = False,
    ):
        super().__init__()
        self.params = make_params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
        self.backend = check_backend(backend)
        self.stateful = check_flag("stateful", stateful)
        self.v: torch.Tensor | None = None

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() move and convert the kept potential with the parameters (a
        # plain attribute, not a buffer: it is a sequence's state, not the model's, so it stays
        # out of state_dict, as spikingjelly's memories do)
        module = super()._apply(fn, *args, **kwargs)
        if self.v is not None:
            self.v = fn(self.v)
        return module

    def __getstate__(self):
        # deepcopy and pickle take the kept potential's value, not the graph it still carries
        # mid-sequence (a tensor with a graph refuses deepcopy: copying the model for an EMA failed)
        state = super().__getstate__()
        if state.get("v") is not None:
            state = {**state, "v": state["v"].detach()}
        return state

    def reset(self) -> None:
        self.v = None

    def detach(self) -> None:
        """Keep the membrane potential's value but cut its graph (stateful mode)."""
        if self.v is not None:
            self.v = self.v.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stateful:
            return lif_with_params(x, self.params, backend=self.backend)
        if self.v is not None and self.v.shape != x.shape[1:]:
            raise ValueError(
                f"stateful MultiStepLIF: the kept potential has shape {tuple(self.v.shape)}, the input "
                f"(T, *) has {tuple(x.shape)}; call reset() to start a new sequence"
            )
        spikes, self.v = lif_with_params(x, self.params, v_init=self.v, return_v=True, backend=self.backend)
        return spikes

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, "
            f"decay_input={p.decay_input}, detach_reset={p.detach_reset}, "
            f"surrogate={p.surrogate}(alpha={p.alpha}), backend={self.backend!r}, stateful={self.stateful}"
        )
