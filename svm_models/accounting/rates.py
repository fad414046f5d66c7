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

from collections.abc import Iterable
from dataclasses import dataclass

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
        self.stats: torch.Tensor | None = None  # float64: [sum, nonzero, not_binary, not_nonneg_int]
        self.numel = 0
        self.calls = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        not_binary = ((x != 0) & (x != 1)).any()
        not_nonneg_int = ((x < 0) | (x != torch.round(x))).any()
        batch = torch.stack(
            [
                x.sum(dtype=torch.float64),
                (x != 0).sum().to(torch.float64),
                not_binary.to(torch.float64),
                not_nonneg_int.to(torch.float64),
            ]
        )
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

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = dict(modules)
        self._acc: dict[str, _Accumulator] = {name: _Accumulator() for name in self.modules}
        self._handles: list = []
        self.call_order: list[str] = []  # names in order of their first call

    def _hook(self, name: str):
        acc = self._acc[name]

        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            if acc.calls == 0:
                self.call_order.append(name)
            acc.add(args[0])

        return hook

    def __enter__(self) -> RateRecorder:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def finalize(self) -> dict[str, InputStats]:
        """Per-module statistics of everything recorded so far (one device-to-host transfer)."""
        called = [(n, a) for n, a in self._acc.items() if a.stats is not None]
        if not called:
            return {}
        host = torch.stack([a.stats for _, a in called]).cpu().tolist()
        out = {}
        for (name, acc), (total, nonzero, not_binary, not_int) in zip(called, host):
            kind = SPIKE if not not_binary else (INTEGER if not not_int else REAL)
            out[name] = InputStats(
                kind=kind,
                rate=total / acc.numel,
                nonzero_rate=nonzero / acc.numel,
                numel=acc.numel,
                total=total,
                calls=acc.calls,
            )
        return out


def modules_of_types(model: nn.Module, types: Iterable[type]) -> dict[str, nn.Module]:
    """Named modules of ``model`` that are instances of ``types`` (first name of shared modules)."""
    types = tuple(types)
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


# --------------------------------------------------------------------------------------------
# Operands of matrix products inside modules (spiking attention: Q K^T V on spikes)

# torch function name -> the op name fvcore's count carries for it
_PRODUCTS = {
    "matmul": "matmul",
    "__matmul__": "matmul",
    "__rmatmul__": "matmul",
    "mm": "mm",
    "bmm": "bmm",
    "einsum": "einsum",
}


def _operand_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, not_binary, not_nonneg_int] of x, on its device (float64)."""
    return torch.stack(
        [
            x.sum(dtype=torch.float64) / max(x.numel(), 1),
            ((x != 0) & (x != 1)).any().to(torch.float64),
            ((x < 0) | (x != torch.round(x))).any().to(torch.float64),
        ]
    )


def _product_macs(name: str, args, out: torch.Tensor) -> int:
    """Multiply-accumulates of one matrix product (only used to weight its calls against each other)."""
    if name == "einsum":
        eq, ops = args[0], args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        sizes = {}
        for term, t in zip(eq.replace(" ", "").split("->")[0].split(","), ops):
            for letter, size in zip(
                term.replace("...", ""), t.shape[-len(term.replace("...", "")) :] if term else ()
            ):
                sizes[letter] = size
        macs = 1
        for size in sizes.values():
            macs *= size
        return macs
    a = args[1] if name == "__rmatmul__" else args[0]
    return out.numel() * (a.shape[-1] if a.dim() > 0 else 1)


@dataclass
class ProductStats:
    """The matrix products one module ran directly (not inside a child), over the pass.

    ``calls`` holds, per product call, its op name (as fvcore names it), its MACs and, per
    operand, (mean value, kind).
    """

    calls: list[tuple[str, int, list[tuple[float, str]]]]


class OperandRecorder:
    """Context manager: records the operands of every matrix product (``@``, matmul, bmm, einsum)
    run by ``model``'s modules, attributed to the innermost module running it.

    Statistics stay on the device until :meth:`finalize` (one transfer), as in RateRecorder.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._stack: list[str] = []
        self._records: list[tuple[str, str, int, list[torch.Tensor]]] = []
        self._handles: list = []
        self._mode = None

    def __enter__(self) -> OperandRecorder:
        from torch.overrides import TorchFunctionMode

        recorder = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = getattr(func, "__name__", "")
                if name in _PRODUCTS and recorder._stack and isinstance(out, torch.Tensor):
                    recorder._record(name, args, out)
                return out

        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop))
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []

    def _push(self, name: str):
        def hook(module, args):
            self._stack.append(name)

        return hook

    def _pop(self, module, args, out):
        if self._stack:
            self._stack.pop()

    def _record(self, name: str, args, out: torch.Tensor) -> None:
        operands = [a for a in (args[1:] if name == "einsum" else args) if isinstance(a, torch.Tensor)]
        if name == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
            operands = [a for a in args[1] if isinstance(a, torch.Tensor)]
        with torch.no_grad():
            stats = [_operand_stats(t.detach()) for t in operands]
        self._records.append((self._stack[-1], _PRODUCTS[name], _product_macs(name, args, out), stats))

    def finalize(self) -> dict[str, ProductStats]:
        if not self._records:
            return {}
        flat = [s for *_, stats in self._records for s in stats]
        host = torch.stack(flat).cpu().tolist() if flat else []
        out: dict[str, ProductStats] = {}
        i = 0
        for module, op, macs, stats in self._records:
            operands = []
            for mean, not_binary, not_int in host[i : i + len(stats)]:
                operands.append((mean, SPIKE if not not_binary else (INTEGER if not not_int else REAL)))
            i += len(stats)
            out.setdefault(module, ProductStats([])).calls.append((op, macs, operands))
        return out


# --------------------------------------------------------------------------------------------
# Output spikes of the neurons (the hardware model's resets and spike writes)


class OutputSpikeCounter:
    """Context manager: forward hooks summing the outputs of ``modules`` (name -> LIF module).

    The sums stay on the device until :meth:`finalize` (one transfer), as in RateRecorder.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = dict(modules)
        self._sums: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out) -> None:
            if isinstance(out, torch.Tensor):
                total = out.detach().sum(dtype=torch.float64)
                self._sums[name] = total if name not in self._sums else self._sums[name] + total

        return hook

    def __enter__(self) -> OutputSpikeCounter:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def finalize(self) -> dict[str, float]:
        """Output sums (spikes) per module over everything recorded."""
        if not self._sums:
            return {}
        names = list(self._sums)
        return dict(zip(names, torch.stack([self._sums[n] for n in names]).cpu().tolist()))
