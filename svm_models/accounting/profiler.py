"""``profile(model, data)``: params, MACs (fvcore), firing rates (hooks), SOPs and energy per image.

Two passes:

1. **MACs**: fvcore's ``FlopCountAnalysis`` on a trace of the model with *one* image (the first
   of ``data``), with our handles (:mod:`.handles`), so every count is per image whatever the
   batch size.
2. **Rates** (spiking models): forward pre-hooks on every Conv/Linear and on the SS2D scan core
   (:class:`svm_models.layers.CrossScanSSM`, whose input is the scan's u) accumulate input sums
   on the device over all of ``data``; one host transfer at the end (:mod:`.rates`). Matrix
   products run outside those layers (spiking self-attention) have their operands recorded too.

Each (module, op) pair of the trace becomes a row. Conv/matmul-type ops of a hooked module whose
input is spikes cost ``rate x MACs`` accumulates (SOPs, E_AC each); everything else costs MACs
(E_MAC each). An ANN (``model.spiking`` False) is costed entirely as MACs.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..layers import CrossScanSSM
from .energy import DEFAULT, EnergyModel, get_energy_model
from .handles import INPUT_LINEAR_OPS, NEURON_OP, op_handles
from .rates import (
    INTEGER,
    REAL,
    SPIKE,
    InputStats,
    OperandRecorder,
    ProductStats,
    RateRecorder,
    modules_of_types,
)
from .report import LayerRow, Report

with warnings.catch_warnings():  # importing fvcore.nn calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

# Modules whose input is recorded (and decides how their conv/matmul ops are costed).
RATE_MODULE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, CrossScanSSM)

INTEGER_AS = ("ac", "mac")
HEAD_AS = ("mac", "auto")


# --------------------------------------------------------------------------------------------
# The MAC trace


def trace_counts(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    count_batchnorm: bool = False,
) -> tuple[dict[str, Counter], Counter]:
    """fvcore counts of ``model(*inputs)`` with our handles.

    Returns ``(by_module_and_operator, unsupported_ops)``: per module name (``""`` is the model)
    a Counter of MACs per op (its descendants included, as fvcore reports them; the
    ``neuron_updates`` key counts LIF updates, not MACs), and the ops no handle counted.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    fca = FlopCountAnalysis(model, inputs).set_op_handle(**op_handles(count_batchnorm))
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_module = fca.by_module_and_operator()
        unsupported = fca.unsupported_ops()
    return by_module, unsupported


def exclusive_counts(model: nn.Module, by_module: dict[str, Counter]) -> dict[str, Counter]:
    """Each module's own ops: fvcore's (inclusive) count minus its children's counts."""
    out = {}
    for name, module in model.named_modules():
        if name not in by_module:
            continue
        own = Counter(by_module[name])
        for child, _ in module.named_children():
            full = f"{name}.{child}" if name else child
            if full in by_module:
                own.subtract(by_module[full])
        out[name] = Counter({k: v for k, v in own.items() if v > 0})
    return out


# --------------------------------------------------------------------------------------------
# Data


def _split(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        target = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return item[0], target
    if isinstance(item, dict):
        for key in ("image", "images", "input", "inputs", "x"):
            if key in item:
                target = next(
                    (item[k] for k in ("label", "labels", "target", "targets", "y") if k in item), None
                )
                return item[key], target
    raise TypeError(
        f"cannot find images in a batch of type {type(item).__name__}; "
        "pass a tensor, an (images, labels) pair or an iterable of those"
    )


def _batches(data) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """A tensor or an (images, labels) pair is one batch; anything else is iterated."""
    if data is None:
        return
    single = isinstance(data, (torch.Tensor, dict)) or (
        isinstance(data, (tuple, list))
        and data
        and isinstance(data[0], torch.Tensor)
        and not (len(data) > 1 and isinstance(data[1], torch.Tensor) and data[1].dim() == data[0].dim())
    )
    if single:
        yield _split(data)
        return
    for item in data:
        yield _split(item)


# --------------------------------------------------------------------------------------------
# Model conventions


def default_stage(name: str, lists: Iterable[str] = ()) -> str:
    """Stage of a module name: its first component ("patch_embed", "head"), or the first two when
    the first is a ModuleList of stages (``lists``), e.g. "layers.2"."""
    if not name:
        return "(model)"
    parts = name.split(".")
    if len(parts) > 1 and parts[0] in lists:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def stage_function(model: nn.Module) -> Callable[[str], str]:
    """:func:`default_stage` for ``model``: its top-level ModuleLists hold one stage per entry."""
    lists = frozenset(n for n, m in model.named_children() if isinstance(m, nn.ModuleList))
    return lambda name: default_stage(name, lists)


def _resolve(model: nn.Module, spec, names: dict[nn.Module, str]) -> str | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in dict(model.named_modules()):
            raise ValueError(f"no module named {spec!r} in the model")
        return spec
    if isinstance(spec, nn.Module):
        if spec not in names:
            raise ValueError("the given module is not part of the model")
        return names[spec]
    raise TypeError(f"expected a module or a module name, got {type(spec).__name__}")


def _find_head(model: nn.Module) -> nn.Module | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        return head
    head = getattr(getattr(model, "classifier", None), "head", None)
    return head if isinstance(head, nn.Module) else None


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", None) or getattr(model, "name", None) or type(model).__name__


# --------------------------------------------------------------------------------------------
# profile


def profile(
    model: nn.Module,
    data=None,
    *,
    energy: str | EnergyModel | dict = DEFAULT,
    first_layer_T: bool = True,
    count_batchnorm: bool = False,
    integer_as: str = "ac",
    head_as: str = "mac",
    max_batches: int | None = None,
    img_size: int | None = None,
    in_chans: int = 3,
    random_batch: int = 1,
    first_layer: str | nn.Module | None = None,
    head: str | nn.Module | None = None,
    stage_of: Callable[[str], str] | None = None,
    name: str | None = None,
) -> Report:
    """Params, MACs, SOPs, energy and firing rates of ``model``, per image.

    Args:
        model: any ``nn.Module`` taking a (B, C, H, W) image batch; the package's models give
            ``T`` (time steps) and ``spiking``; ``first_conv`` and ``head`` name the layers the
            conventions single out.
        data: a (B, C, H, W) tensor, an (images, labels) pair, or an iterable of those (a
            DataLoader). The firing rates are averaged over all of it; labels, when present, give
            a top-1 accuracy. ``None``: one random batch (``random_batch`` images of
            ``img_size``, default ``model.img_size``), and the report says so.
        energy: preset name ("45nm_fp32" default, "fp16", "int8"), EnergyModel or mapping.
        first_layer_T: cost the first layer once per time step (the image is presented T times;
            the papers' default). False costs it once.
        count_batchnorm: count BatchNorm (fvcore's 1-2 per element); default off, since it folds
            into the preceding conv at inference.
        integer_as: "ac" (default): an input of non-negative integers (sums of spikes) costs
            ``mean value x MACs`` accumulates; "mac": it costs MACs.
        head_as: "mac" (default): the classifier head is costed as MACs whatever its input;
            "auto": like every other layer.
        max_batches: stop the rate pass after this many batches.
        first_layer, head: override the layers found from ``model.first_conv`` and ``model.head``
            (or ``model.classifier.head``), as a module or its name. Without either, the
            convention is not applied and the layer is costed by its detected input kind.
        stage_of: maps a module name to its stage label (default: :func:`stage_function`).
    """
    if integer_as not in INTEGER_AS:
        raise ValueError(f"integer_as must be one of {INTEGER_AS}, got {integer_as!r}")
    if head_as not in HEAD_AS:
        raise ValueError(f"head_as must be one of {HEAD_AS}, got {head_as!r}")
    em = get_energy_model(energy)
    stage_of = stage_of or stage_function(model)
    spiking = bool(getattr(model, "spiking", True))
    T = int(getattr(model, "T", 1) or 1) if spiking else 1
    params = sum(p.numel() for p in model.parameters())
    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else torch.device("cpu")
    notes = []

    names = {m: n for n, m in model.named_modules()}
    units = modules_of_types(model, RATE_MODULE_TYPES)
    first_name = _resolve(
        model, first_layer if first_layer is not None else getattr(model, "first_conv", None), names
    )
    head_name = _resolve(model, head if head is not None else _find_head(model), names)

    if data is None:
        size = img_size or getattr(model, "img_size", None)
        if size is None:
            raise ValueError("no data given and the model has no img_size: pass data or img_size")
        gen = torch.Generator().manual_seed(0)
        data = torch.randn(random_batch, in_chans, size, size, generator=gen)
        rates_from = f"random input ({random_batch} N(0,1) image{'s' if random_batch > 1 else ''})"
        if spiking:
            notes.append(
                "firing rates come from random input images (and from random weights unless trained "
                "weights were loaded): they illustrate the accounting, they are not a trained model's rates"
            )
    else:
        rates_from = "data"

    batches = _batches(data)
    first = next(batches, None)
    if first is None:
        raise ValueError("data yielded no batch")
    first_image = first[0][:1].to(device)
    was_training = model.training
    model.eval()
    try:
        # MACs per image: one traced image.
        by_module, unsupported = trace_counts(model, (first_image,), count_batchnorm)
        own_ops = exclusive_counts(model, by_module)
        # Matrix products outside Conv/Linear modules (spiking attention) need their operands recorded.
        has_products = spiking and any(
            n not in units and op in INPUT_LINEAR_OPS for n, ops in own_ops.items() for op in ops
        )
        images = labelled = 0
        correct = None
        recorder = RateRecorder(units if spiking else {})
        operands = OperandRecorder(model) if has_products else contextlib.nullcontext()
        with torch.no_grad(), recorder, operands:
            for i, (x, y) in enumerate(itertools.chain([first], batches)):
                if max_batches is not None and i >= max_batches:
                    break
                if not spiking and y is None:
                    break  # an ANN needs no rates; without labels there is nothing to measure
                x = x.to(device)
                out = model(x)
                images += x.shape[0]
                if y is not None and isinstance(out, torch.Tensor) and out.dim() == 2:
                    hits = (out.argmax(dim=1) == y.to(out.device)).sum()
                    correct = hits if correct is None else correct + hits
                    labelled += x.shape[0]
        stats = recorder.finalize()
        products = operands.finalize() if has_products else {}
        top1 = 100.0 * correct.item() / labelled if correct is not None else None
    finally:
        model.train(was_training)

    if not spiking:
        rates_from = "none needed (ANN: every op is costed as a MAC)"
    if spiking and first_name is None:
        notes.append(
            "the model names no first layer (first_conv): the first-layer convention is not applied; "
            "every layer is costed by its detected input kind"
        )
    if spiking and head_name is None:
        notes.append("the model names no head: the head convention is not applied")
    never = sorted(
        n
        for n in units
        if spiking and n not in stats and any(op in INPUT_LINEAR_OPS for op in by_module.get(n, {}))
    )
    if never:
        notes.append(
            f"{len(never)} hooked layer(s) were traced but not called in the rate pass; costed as MACs"
        )

    rows = []
    for mod_name, ops in own_ops.items():
        st: InputStats | None = stats.get(mod_name)
        for op, count in ops.items():
            if mod_name not in units and op in INPUT_LINEAR_OPS and mod_name in products:
                rows.append(
                    _product_row(mod_name, op, count, products[mod_name], em, stage_of(mod_name), integer_as)
                )
                continue
            rows.append(
                _row(
                    mod_name,
                    op,
                    count,
                    st,
                    mod_name in units,
                    spiking,
                    T,
                    em,
                    stage_of(mod_name),
                    is_first=mod_name == first_name,
                    is_head=mod_name == head_name,
                    first_layer_T=first_layer_T,
                    integer_as=integer_as,
                    head_as=head_as,
                )
            )

    spike_stats = [s for s in stats.values() if s.kind == SPIKE]
    mean_rate = (
        (sum(s.total for s in spike_stats) / sum(s.numel for s in spike_stats)) if spike_stats else None
    )
    unsupported = dict(unsupported)
    if unsupported:
        warnings.warn(
            "svm_models.accounting: ops without a handle were counted as 0: "
            + ", ".join(f"{k} x{v}" for k, v in unsupported.items()),
            stacklevel=2,
        )
    conventions = {
        "mac_convention": "1 multiply-accumulate = 1 FLOP (fvcore)",
        "first_layer_T": first_layer_T,
        "count_batchnorm": count_batchnorm,
        "integer_as": integer_as,
        "head_as": head_as,
        "scan": "4 x (9*B*L*D*N + B*D*L) (+ 4*B*L*D*R low-rank dt projection), costed as MAC",
        "neuron_updates": "reported, not costed",
    }
    return Report(
        model=name or _model_name(model),
        params=params,
        T=T,
        spiking=spiking,
        input_shape=tuple(first_image.shape[1:]),
        images=images,
        rates_from=rates_from,
        energy_model=em,
        conventions=conventions,
        macs=sum(r.macs for r in rows),
        mac_ops=sum(r.mac_ops for r in rows),
        sops=sum(r.sops for r in rows),
        energy_mac_mj=sum(r.energy_mac_mj for r in rows),
        energy_ac_mj=sum(r.energy_ac_mj for r in rows),
        neuron_updates=sum(r.neuron_updates for r in rows),
        mean_firing_rate=mean_rate,
        rows=rows,
        unsupported_ops=unsupported,
        top1=top1,
        notes=notes,
    )


def _row(
    name,
    op,
    count,
    st,
    is_unit,
    spiking,
    T,
    em,
    stage,
    *,
    is_first,
    is_head,
    first_layer_T,
    integer_as,
    head_as,
) -> LayerRow:
    count = float(count)
    if op == NEURON_OP:
        return LayerRow(name, op, stage, "-", "none", None, 0.0, 0.0, 0.0, 0.0, 0.0, neuron_updates=count)
    kind = (st.kind if st is not None else REAL) if (is_unit and spiking) else (REAL if not spiking else "-")
    rate = st.rate if (st is not None and spiking and st.kind != REAL) else None  # no rate for real inputs
    mac_ops, sops, cost = count, 0.0, "mac"
    input_linear = is_unit and op in INPUT_LINEAR_OPS
    if input_linear and is_first:
        mac_ops = count if first_layer_T else count / T
    elif input_linear and is_head and head_as == "mac":
        pass
    elif (
        input_linear
        and st is not None
        and spiking
        and (kind == SPIKE or (kind == INTEGER and integer_as == "ac"))
    ):
        mac_ops, sops, cost = 0.0, st.rate * count, "ac"
    return LayerRow(
        name, op, stage, kind, cost, rate, count, mac_ops, sops, em.mac_mj(mac_ops), em.ac_mj(sops)
    )


def _product_row(name, op, count, products: ProductStats, em, stage, integer_as) -> LayerRow:
    """Matrix products inside a (non-hooked) module, e.g. spiking self-attention's Q K^T V.

    Per call, the operand that drives the accumulation is a spike operand (or an integer one
    with ``integer_as="ac"``), the sparser one when both are; the call then costs
    ``its mean value x MACs`` accumulates, and MACs when no operand is spikes. fvcore's count for
    the module's ``op`` is split in those proportions (the calls' own MACs are only weights).
    """
    count = float(count)
    total = ac_weight = ac_macs = mac_macs = 0.0
    kinds = set()
    for call_op, macs, operands in products.calls:
        if call_op != op:
            continue
        total += macs
        drivers = [
            (mean, kind)
            for mean, kind in operands
            if kind == SPIKE or (kind == INTEGER and integer_as == "ac")
        ]
        if drivers:
            mean, kind = min(drivers)
            ac_weight += mean * macs
            ac_macs += macs
            kinds.add(kind)
        else:
            mac_macs += macs
            kinds.add(REAL)
    if total == 0:  # the pass never ran this op here: cost it as MACs
        return LayerRow(name, op, stage, "-", "mac", None, count, count, 0.0, em.mac_mj(count), 0.0)
    sops, mac_ops = count * ac_weight / total, count * mac_macs / total
    cost = "ac" if mac_macs == 0 else ("mac" if ac_macs == 0 else "mixed")
    rate = ac_weight / ac_macs if ac_macs else None
    return LayerRow(
        name,
        op,
        stage,
        "+".join(sorted(kinds)),
        cost,
        rate,
        count,
        mac_ops,
        sops,
        em.mac_mj(mac_ops),
        em.ac_mj(sops),
    )
