"""``profile(model, data)``: params, MACs (fvcore), firing rates (hooks), SOPs and energy per image.

``profile`` runs four named steps: :func:`trace_step` (MACs, and the data volumes for the
hardware model), :func:`measure_step` (firing rates, accuracy), :func:`paper_rows` (the papers'
convention) and :func:`hardware_rows` (:mod:`.hardware`, when a hardware preset is chosen),
under one frozen :class:`Conventions`. Two passes over the model:

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
import dataclasses
import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from svm_kernels import MultiStepLIF

from ..base import VisionModel, module_modes, restore_modes
from ..layers import ConvBN, CrossScanSSM
from . import hardware as hw_model
from .calibrate import calibrate_batchnorm
from .energy import DEFAULT, EnergyModel, get_energy_model
from .handles import (
    INPUT_LINEAR_OPS,
    NEURON_OP,
    SCAN_DT_OP,
    SCAN_OP,
    op_handles,
    split_volumes,
    volume_handles,
)
from .hardware import HW_PRESETS, REUSE, HardwareModel, Volumes, get_hardware_model
from .rates import (
    INTEGER,
    REAL,
    SPIKE,
    InputStats,
    OperandRecorder,
    OutputSpikeCounter,
    ProductStats,
    RateRecorder,
    modules_of_types,
)
from .report import HardwareReport, HardwareRow, LayerRow, Report

with warnings.catch_warnings():  # importing fvcore.nn calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

# Modules whose input is recorded (and decides how their conv/matmul ops are costed).
RATE_MODULE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, CrossScanSSM)

INTEGER_AS = ("ac", "mac")
HEAD_AS = ("mac", "auto")
FIRST_LAYER = ("per_step", "once")
PAPER = "paper"  # the papers' convention alone (the default preset)
PRESETS = (PAPER, *HW_PRESETS)


@dataclass(frozen=True)
class Conventions:
    """How ops are costed (see :func:`profile`'s arguments of the same names)."""

    first_layer: str = "per_step"  # "per_step": the image conv runs T times; "once": once
    count_batchnorm: bool = False
    integer_as: str = "ac"
    head_as: str = "mac"
    reuse: str = "none"  # hardware model: weight and input reuse of the MAC layers

    def __post_init__(self):
        for name, allowed in (
            ("first_layer", FIRST_LAYER),
            ("integer_as", INTEGER_AS),
            ("head_as", HEAD_AS),
            ("reuse", REUSE),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self, hardware: bool = False) -> dict[str, object]:
        """The report's conventions (the paper preset's keys as they have always been)."""
        out = {
            "mac_convention": "1 multiply-accumulate = 1 FLOP (fvcore)",
            "first_layer_T": self.first_layer == "per_step",
            "count_batchnorm": self.count_batchnorm,
            "integer_as": self.integer_as,
            "head_as": self.head_as,
            "scan": "4 x (9*B*L*D*N + B*D*L) (+ 4*B*L*D*R low-rank dt projection), costed as MAC",
            "neuron_updates": "reported, not costed",
        }
        if hardware:
            out["hardware_reuse"] = self.reuse
        return out


# --------------------------------------------------------------------------------------------
# The MAC trace


def trace_counts(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    count_batchnorm: bool = False,
    volumes: bool = False,
) -> tuple[dict[str, Counter], Counter]:
    """fvcore counts of ``model(*inputs)`` with our handles.

    Returns ``(by_module_and_operator, unsupported_ops)``: per module name (``""`` is the model)
    a Counter of MACs per op (its descendants included, as fvcore reports them; the
    ``neuron_updates`` key counts LIF updates, not MACs), and the ops no handle counted.
    ``volumes=True`` adds each op's data volumes (:func:`.handles.volume_handles`; separate
    them with :func:`.handles.split_volumes`).
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    handles = volume_handles(count_batchnorm) if volumes else op_handles(count_batchnorm)
    fca = FlopCountAnalysis(model, inputs).set_op_handle(**handles)
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


@dataclass(frozen=True)
class ModelView:
    """What the conventions need to know about the model."""

    name: str
    spiking: bool
    T: int
    img_size: int | None  # the size of the random images when no data is given
    first_name: str | None  # the layer that sees the image
    head_name: str | None  # the classifier
    units: dict[str, nn.Module]  # modules whose input is recorded (RATE_MODULE_TYPES)
    stage_of: Callable[[str], str]


def model_view(model: nn.Module, first_layer=None, head=None, stage_of=None, name=None) -> ModelView:
    """The :class:`~svm_models.base.VisionModel` protocol of ``model``.

    Any other ``nn.Module`` is accepted as well (:func:`_undeclared_protocol`): it names no
    first layer and no head unless ``first_layer`` / ``head`` are given.
    """
    names = {m: n for n, m in model.named_modules()}
    if isinstance(model, VisionModel):
        spiking, T, img_size = bool(model.spiking), int(model.T or 1), model.img_size
        first_default, head_default = model.first_conv, model.get_classifier()
        label = model.model_name
    else:
        spiking, T, img_size, label = _undeclared_protocol(model)
        first_default = head_default = None
    return ModelView(
        name=name or label or type(model).__name__,
        spiking=spiking,
        T=T if spiking else 1,
        img_size=img_size,
        first_name=_resolve(model, first_layer if first_layer is not None else first_default, names),
        head_name=_resolve(model, head if head is not None else head_default, names),
        units=modules_of_types(model, RATE_MODULE_TYPES),
        stage_of=stage_of or stage_function(model),
    )


def _undeclared_protocol(model: nn.Module) -> tuple[bool, int, int | None, str | None]:
    """(spiking, T, img_size, name) of a module outside the protocol, as far as it declares them
    as attributes: spiking unless it says otherwise, T 1, no native size, no registered name."""
    spiking = bool(getattr(model, "spiking", True))
    T = int(getattr(model, "T", 1) or 1)
    return (
        spiking,
        T,
        getattr(model, "img_size", None),
        getattr(model, "model_name", None) or getattr(model, "name", None),
    )


# --------------------------------------------------------------------------------------------
# The steps of profile


@dataclass
class Trace:
    """Step 1: per module, its own MACs per op and its own data volumes per op (one image)."""

    macs: dict[str, Counter]
    volumes: dict[str, dict[str, Counter]]
    inclusive: dict[str, Counter]
    unsupported: dict[str, int]


def trace_step(model: nn.Module, image: torch.Tensor, conventions: Conventions, volumes: bool) -> Trace:
    by_module, unsupported = trace_counts(model, (image,), conventions.count_batchnorm, volumes)
    own = exclusive_counts(model, by_module)
    macs, vols = {}, {}
    for name, counts in own.items():
        macs[name], vols[name] = split_volumes(counts)
    inclusive = {name: split_volumes(counts)[0] for name, counts in by_module.items()}
    return Trace(macs, vols, inclusive, dict(unsupported))


@dataclass
class Measurements:
    """Step 2: what the data pass saw."""

    stats: dict[str, InputStats] = field(default_factory=dict)
    products: dict[str, ProductStats] = field(default_factory=dict)
    neuron_spikes: dict[str, float] = field(default_factory=dict)  # output spikes, all images
    images: int = 0
    top1: float | None = None


def measure_step(
    model: nn.Module,
    view: ModelView,
    trace: Trace,
    batches: Iterable,
    device: torch.device,
    max_batches: int | None,
    count_spikes: bool,
) -> Measurements:
    """Firing rates of every hooked layer and attention product, output spikes of the neurons
    (for the hardware model), top-1 when labels come with the data; all on the device."""
    spiking = view.spiking
    # Matrix products outside Conv/Linear modules (spiking attention) need their operands recorded.
    has_products = spiking and any(
        n not in view.units and op in INPUT_LINEAR_OPS for n, ops in trace.macs.items() for op in ops
    )
    images = labelled = 0
    correct = None
    recorder = RateRecorder(view.units if spiking else {})
    operands = OperandRecorder(model) if has_products else contextlib.nullcontext()
    neurons = modules_of_types(model, (MultiStepLIF,)) if (spiking and count_spikes) else {}
    spikes = OutputSpikeCounter(neurons)
    with torch.no_grad(), recorder, operands, spikes:
        for i, (x, y) in enumerate(batches):
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
    return Measurements(
        stats=recorder.finalize(),
        products=operands.finalize() if has_products else {},
        neuron_spikes=spikes.finalize(),
        images=images,
        top1=100.0 * correct.item() / labelled if correct is not None else None,
    )


def paper_rows(view: ModelView, trace: Trace, meas: Measurements, em: EnergyModel, conv: Conventions):
    """Step 3: one :class:`LayerRow` per (module, op) under the papers' convention."""
    rows = []
    for mod_name, ops in trace.macs.items():
        st: InputStats | None = meas.stats.get(mod_name)
        stage = view.stage_of(mod_name)
        for op, count in ops.items():
            if mod_name not in view.units and op in INPUT_LINEAR_OPS and mod_name in meas.products:
                rows.append(
                    _product_row(mod_name, op, count, meas.products[mod_name], em, stage, conv.integer_as)
                )
                continue
            rows.append(
                _row(
                    mod_name,
                    op,
                    count,
                    st,
                    mod_name in view.units,
                    view.spiking,
                    view.T,
                    em,
                    stage,
                    is_first=mod_name == view.first_name,
                    is_head=mod_name == view.head_name,
                    first_layer_T=conv.first_layer == "per_step",
                    integer_as=conv.integer_as,
                    head_as=conv.head_as,
                )
            )
    return rows


def hardware_rows(
    model: nn.Module,
    view: ModelView,
    trace: Trace,
    meas: Measurements,
    rows: list[LayerRow],
    hw: HardwareModel,
    reuse: str,
) -> list[HardwareRow]:
    """Step 4: one :class:`HardwareRow` per (module, op) under the hardware model (:mod:`.hardware`).

    The split between spike-driven and MAC-driven work is the paper rows' (their SOPs and
    MACs-costed-as-MAC, so the conventions on the first layer, the head and integer inputs
    apply here too); the volumes come from the trace and the output spikes from the data pass.
    """
    paper = {(r.name, r.op): r for r in rows}
    modules = dict(model.named_modules())
    # A BatchNorm right after a conv (a ConvBN unit) folds into it; the others (y_norm) cannot.
    foldable = {m.bn for m in model.modules() if isinstance(m, ConvBN)}
    images = max(meas.images, 1)
    out = []
    for mod_name in dict.fromkeys([*trace.macs, *trace.volumes]):  # model order
        ops = trace.macs.get(mod_name, Counter())
        vols = trace.volumes.get(mod_name, {})
        for op in list(ops) + [o for o in vols if o not in ops]:
            comp = _hardware_components(
                op,
                float(ops.get(op, 0)),
                vols.get(op),
                paper.get((mod_name, op)),
                modules.get(mod_name) in foldable,
                meas.neuron_spikes.get(mod_name, 0.0) / images,
                hw,
                reuse,
            )
            if comp is not None:
                out.append(HardwareRow.from_components(mod_name, op, view.stage_of(mod_name), comp))
    return out


def _volumes(macs: float, v: Counter) -> Volumes:
    calls = max(v.get("calls", 1), 1)
    return Volumes(
        macs=macs,
        inputs=float(v.get("in", 0)),
        outputs=float(v.get("out", 0)),
        weights=float(v.get("w", 0)) / calls,  # the same weights at every call
        kernel=float(v.get("k", calls)) / calls,
        fan_out_cells=float(v.get("cells", 0)),
        batch=float(v.get("batch", calls)),
        state=float(v.get("state", 0)),
    )


def _hardware_components(op, macs, vols, row, folds, spikes_per_image, hw, reuse):
    """The hardware model's components of one (module, op); None for an op it does not cost."""
    if vols is None:  # an op without volumes (e.g. einsum): its arithmetic only, as the paper row costs it
        if row is not None:
            work = row.mac_ops * hw.e_mac_pj + row.sops * hw.e_add_pj
            return hw_model.Components(compute=work) if work else None
        return hw_model.Components(compute=macs * hw.e_mac_pj) if macs else None
    v = _volumes(macs, vols)
    if op == NEURON_OP:
        return hw_model.neuron_updates(macs, spikes_per_image, v.in_map, hw)
    if op == SCAN_OP:
        return hw_model.selective_scan(v, reuse, hw, float(vols.get("dn", 0)) / max(vols.get("calls", 1), 1))
    if op == SCAN_DT_OP:
        return hw_model.mac_driven(v, is_conv=False, reuse=reuse, hw=hw)
    if op in INPUT_LINEAR_OPS:
        if row is None or not macs:
            return None
        is_conv = op == "conv"
        comp = hw_model.Components()
        if row.sops:
            fan_out = macs / v.inputs if v.inputs else 1.0
            comp = comp + hw_model.spike_driven(v, row.sops / fan_out, is_conv, hw)
        if row.mac_ops:
            # first_layer="once": the layer's samples counted once, not T times; its weights
            # (a memory of the same size, read once per image with ideal reuse) stay as they are
            share = row.mac_ops / macs
            once = dataclasses.replace(
                v,
                macs=v.macs * share,
                inputs=v.inputs * share,
                outputs=v.outputs * share,
                fan_out_cells=v.fan_out_cells * share,
                batch=v.batch * share,
            )
            comp = comp + hw_model.mac_driven(once, is_conv, reuse, hw)
        return comp
    if op == "batch_norm":
        # Folded into its conv: free. Otherwise (y_norm, after the scan): one multiply-add per
        # element, a scale and a shift per channel.
        if folds:
            return None
        return hw_model.elementwise(
            Volumes(v.inputs, v.inputs, v.outputs, 2 * v.weights, batch=v.batch), False, reuse, hw
        )
    if op == "sum":  # reductions (QKTA's channel sums): one add per summed element
        return hw_model.elementwise(
            Volumes(max(v.inputs - v.outputs, 0.0), v.inputs, v.outputs, batch=v.batch), True, reuse, hw
        )
    if op in ("mean", "adaptive_avg_pool2d"):
        return hw_model.elementwise(v, True, reuse, hw)
    return hw_model.elementwise(v, False, reuse, hw)


# --------------------------------------------------------------------------------------------
# profile


def _input_channels(model: nn.Module, view: ModelView) -> int:
    """The channels of the first layer's input (3 where the model names no first layer)."""
    if view.first_name is not None:
        for m in model.get_submodule(view.first_name).modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                return m.in_channels
    return 3


def _random_batch(model, view, img_size, in_chans, random_batch, seed, calibrate_bn, device):
    """Random N(0, 1) images (and, for a spiking model, BatchNorm statistics from random batches)."""
    size = img_size or view.img_size
    if size is None:
        raise ValueError("no data given and the model has no img_size: pass data or img_size")
    in_chans = in_chans or _input_channels(model, view)
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(random_batch, in_chans, size, size, generator=gen).to(device)
    rates_from = f"random input ({random_batch} N(0,1) image{'s' if random_batch > 1 else ''})"
    if view.spiking and calibrate_bn > 0 and calibrate_batchnorm(model, data, calibrate_bn):
        rates_from += f", BatchNorm statistics from {calibrate_bn} random batches"
    return data, rates_from


def profile(
    model: nn.Module,
    data=None,
    *,
    energy: str | EnergyModel | dict = DEFAULT,
    preset: str | HardwareModel = PAPER,
    conventions: Conventions | None = None,
    first_layer_T: bool | None = None,
    count_batchnorm: bool = False,
    integer_as: str = "ac",
    head_as: str = "mac",
    reuse: str = "none",
    max_batches: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    random_batch: int = 1,
    seed: int = 0,
    calibrate_bn: int = 0,
    first_layer: str | nn.Module | None = None,
    head: str | nn.Module | None = None,
    stage_of: Callable[[str], str] | None = None,
    name: str | None = None,
) -> Report:
    """Params, MACs, SOPs, energy and firing rates of ``model``, per image.

    Args:
        model: a :class:`~svm_models.base.VisionModel` (``spiking``, ``T``, ``first_conv``,
            ``get_classifier()``), or any ``nn.Module`` taking a (B, C, H, W) image batch.
        data: a (B, C, H, W) tensor (a spiking model's event frames: (B, T, C, H, W)), an
            (images, labels) pair, or an iterable of those (a DataLoader). The firing rates are
            averaged over all of it; labels, when present, give a top-1 accuracy. ``None``: one
            random batch (``random_batch`` N(0, 1) images of ``img_size``, default
            ``model.img_size``, with ``in_chans`` channels, default the first layer's, from
            ``seed``), and the report says so;
            ``calibrate_bn=N`` then first sets a spiking model's BatchNorm statistics from N
            random batches (:func:`.calibrate.calibrate_batchnorm`).
        energy: the papers' convention's E_MAC / E_AC: preset name ("45nm_fp32" default,
            "fp16", "int8"), EnergyModel or mapping.
        preset: "paper" (default): the papers' convention only. A hardware preset
            (``hardware.HW_PRESETS``: "hw_45nm_fp32", "hw_45nm_fp16", "hw_45nm_int8",
            "hw_loihi") or a HardwareModel adds ``report.hardware`` (:mod:`.hardware`); the
            paper figures are unchanged.
        conventions: a :class:`Conventions`; or the separate arguments below.
        first_layer_T: legacy form of ``first_layer="per_step"`` (True) / ``"once"`` (False).
        count_batchnorm: count BatchNorm (fvcore's 1-2 per element); default off, since it folds
            into the preceding conv at inference.
        integer_as: "ac" (default): an input of non-negative integers (sums of spikes) costs
            ``mean value x MACs`` accumulates; "mac": it costs MACs.
        head_as: "mac" (default): the classifier head is costed as MACs whatever its input;
            "auto": like every other layer.
        reuse: hardware model only: "none" (default; one weight read per MAC) or "ideal"
            (every weight read once per image). ``report.hardware.totals_by_reuse`` has both.
        max_batches: stop the rate pass after this many batches.
        first_layer: "per_step" (default: the image is presented at each of the T steps, so the
            first conv runs T times, the papers' code) or "once" (it runs once, the papers'
            formula; refused for frame input, where each step has its own frame); or a module /
            module name overriding ``model.first_conv``.
        head: a module or its name overriding ``model.get_classifier()``. Without a first
            layer or a head, that convention is not applied.
        stage_of: maps a module name to its stage label (default: :func:`stage_function`).
    """
    mode = first_layer if isinstance(first_layer, str) and first_layer in FIRST_LAYER else None
    first_module = None if mode else first_layer  # a module (or its name) overriding first_conv
    if conventions is None:
        if first_layer_T is not None:
            mode = mode or ("per_step" if first_layer_T else "once")
        conventions = Conventions(mode or "per_step", count_batchnorm, integer_as, head_as, reuse)
    elif mode is not None:
        raise ValueError("give first_layer='once'/'per_step' or conventions, not both")
    em = get_energy_model(energy)
    hw = None if isinstance(preset, str) and preset == PAPER else get_hardware_model(preset)
    view = model_view(model, first_module, head, stage_of, name)
    params = sum(p.numel() for p in model.parameters())
    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else torch.device("cpu")
    notes = []

    if data is None:
        data, rates_from = _random_batch(
            model, view, img_size, in_chans, random_batch, seed, calibrate_bn, device
        )
        if view.spiking:
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
    if conventions.first_layer == "once" and view.spiking and first_image.dim() == 5:
        # (B, T, C, H, W): each step's first conv sees its own frame, so it does run T times
        raise ValueError(
            "first_layer='once' counts the first layer once for an image shown at every step; "
            "this data has a frame per step (B, T, C, H, W), where it runs T times: use 'per_step'"
        )
    modes = module_modes(model)
    model.eval()
    try:
        trace = trace_step(model, first_image, conventions, volumes=hw is not None)
        meas = measure_step(
            model, view, trace, itertools.chain([first], batches), device, max_batches, hw is not None
        )
    finally:
        restore_modes(modes)

    rows = paper_rows(view, trace, meas, em, conventions)
    hardware = None
    if hw is not None:
        hardware = HardwareReport(
            model=hw,
            reuse=conventions.reuse,
            rows=hardware_rows(model, view, trace, meas, rows, hw, conventions.reuse),
            totals_by_reuse={
                r: HardwareReport.sum_rows(hardware_rows(model, view, trace, meas, rows, hw, r))
                for r in REUSE
            },
        )
    notes += _notes(view, trace, meas)
    if trace.unsupported:
        warnings.warn(
            "svm_models.accounting: ops without a handle were counted as 0: "
            + ", ".join(f"{k} x{v}" for k, v in trace.unsupported.items()),
            stacklevel=2,
        )
    return _report(
        model, view, params, first_image, rates_from, em, conventions, rows, meas, trace, notes, hardware
    )


def _notes(view: ModelView, trace: Trace, meas: Measurements) -> list[str]:
    notes = []
    if view.spiking and view.first_name is None:
        notes.append(
            "the model names no first layer (first_conv): the first-layer convention is not applied; "
            "every layer is costed by its detected input kind"
        )
    if view.spiking and view.head_name is None:
        notes.append("the model names no head: the head convention is not applied")
    never = sorted(
        n
        for n in view.units
        if view.spiking
        and n not in meas.stats
        and any(op in INPUT_LINEAR_OPS for op in trace.inclusive.get(n, {}))
    )
    if never:
        notes.append(
            f"{len(never)} hooked layer(s) were traced but not called in the rate pass; costed as MACs"
        )
    return notes


def _report(
    model, view, params, first_image, rates_from, em, conventions, rows, meas, trace, notes, hardware
):
    """Step 5: the :class:`Report`."""
    spike_stats = [s for s in meas.stats.values() if s.kind == SPIKE]
    mean_rate = (
        (sum(s.total for s in spike_stats) / sum(s.numel for s in spike_stats)) if spike_stats else None
    )
    if not view.spiking:
        rates_from = "none needed (ANN: every op is costed as a MAC)"
    return Report(
        model=view.name,
        params=params,
        T=view.T,
        spiking=view.spiking,
        input_shape=tuple(first_image.shape[1:]),
        images=meas.images,
        rates_from=rates_from,
        energy_model=em,
        conventions=conventions.to_dict(hardware is not None),
        macs=sum(r.macs for r in rows),
        mac_ops=sum(r.mac_ops for r in rows),
        sops=sum(r.sops for r in rows),
        energy_mac_mj=sum(r.energy_mac_mj for r in rows),
        energy_ac_mj=sum(r.energy_ac_mj for r in rows),
        neuron_updates=sum(r.neuron_updates for r in rows),
        mean_firing_rate=mean_rate,
        rows=rows,
        unsupported_ops=trace.unsupported,
        top1=meas.top1,
        notes=notes,
        hardware=hardware,
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
