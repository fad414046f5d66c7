"""Firing rates: forward pre-hooks that accumulate input statistics on the device.

A hooked module's first input is summarised per call by on-device tensor ops only (no
``.item()``, no host sync): the sum of its values, the number of non-zero entries, and two flags
(a value outside {0, 1}; a negative or non-integer value). Over a whole evaluation pass these add
up, so the rate of several batches is exactly the rate of their concatenation. ``finalize`` moves
everything to the host in one transfer.

Input kinds:

* ``"spike"``   -- every value is 0 or 1 (LIF output);
* ``"integer"`` -- non-negative integers (sums of spikes, e.g. SEW residual streams);
* ``"real"``    -- anything else (images, membrane-shortcut streams, ANN activations).

The rate is the mean input value: the firing rate for spikes, the mean spike count per element
for integer inputs (each spike is one accumulate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

SPIKE, INTEGER, REAL = "spike", "integer", "real"


@dataclass
class InputStats:
    """What one module received over the pass (all inputs, every call, every time step)."""

    kind: str  # SPIKE, INTEGER or REAL
    rate: float  # mean input value (= firing rate for spikes)
    nonzero_rate: float  # fraction of non-zero inputs
    numel: int  # elements seen
    total: float  # sum of the inputs
    calls: int


class _Accumulator:
    """Per-module running sums, kept as device tensors."""

    def __init__(self):
        self.stats: Optional[torch.Tensor] = None  # float64: [sum, nonzero, not_binary, not_nonneg_int]
        self.numel = 0
        self.calls = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        not_binary = ((x != 0) & (x != 1)).any()
        not_nonneg_int = ((x < 0) | (x != torch.round(x))).any()
        batch = torch.stack([
            x.sum(dtype=torch.float64),
            (x != 0).sum().to(torch.float64),
            not_binary.to(torch.float64),
            not_nonneg_int.to(torch.float64),
        ])
        if self.stats is None:
            self.stats = batch
        else:
            sums = self.stats[:2] + batch[:2]
            flags = torch.maximum(self.stats[2:], batch[2:])
            self.stats = torch.cat([sums, flags])
        self.numel += x.numel()
        self.calls += 1


class RateRecorder:
    """Context manager: hooks ``modules`` (name -> module) and records their inputs.

    >>> with RateRecorder({"fc": model.fc}) as rec:
    ...     model(batch1); model(batch2)
    >>> rec.finalize()["fc"].rate
    """

    def __init__(self, modules: Dict[str, nn.Module]):
        self.modules = dict(modules)
        self._acc: Dict[str, _Accumulator] = {name: _Accumulator() for name in self.modules}
        self._handles: List = []
        self.call_order: List[str] = []  # names in order of their first call

    def _hook(self, name: str):
        acc = self._acc[name]

        def hook(module: nn.Module, args: Tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            if acc.calls == 0:
                self.call_order.append(name)
            acc.add(args[0])

        return hook

    def __enter__(self) -> "RateRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def finalize(self) -> Dict[str, InputStats]:
        """Per-module statistics of everything recorded so far (one device-to-host transfer)."""
        called = [(n, a) for n, a in self._acc.items() if a.stats is not None]
        if not called:
            return {}
        host = torch.stack([a.stats for _, a in called]).cpu().tolist()
        out = {}
        for (name, acc), (total, nonzero, not_binary, not_int) in zip(called, host):
            kind = SPIKE if not not_binary else (INTEGER if not not_int else REAL)
            out[name] = InputStats(kind=kind, rate=total / acc.numel, nonzero_rate=nonzero / acc.numel,
                                   numel=acc.numel, total=total, calls=acc.calls)
        return out


def modules_of_types(model: nn.Module, types: Iterable[type]) -> Dict[str, nn.Module]:
    """Named modules of ``model`` that are instances of ``types`` (first name of shared modules)."""
    types = tuple(types)
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}
