"""The hardware energy model: arithmetic, memory traffic, neuron updates and addressing per layer.

The papers' convention (:mod:`.energy`, preset ``paper``) counts arithmetic only. This model
follows E. Lemaire, L. Cordone, A. Castagnetti, P.-E. Novac, J. Courtois, B. Miramond, "An
analytical estimation of spiking neural networks energy efficiency", ICONIP 2022 (arXiv
2210.13107), whose equations count, per layer and per inference, the operations *and* the
memory accesses of a formal (ANN) and of an event-driven spiking (SNN) implementation. Each
function below names the equation it implements; every figure is per image, all T steps.

Notation: θ_in = input spikes over all steps (rate x input elements, a spike count for integer
inputs), fan-out = outputs one input spike reaches (MACs / input elements; ⌈k/s⌉² x Cout in the
paper, which ignores borders and overcounts strided kernels: we use the exact ratio from the
trace), N_out = output elements (all steps), E_rd(S) = E_wr(S) = SRAM access energy of a memory
holding S values.

Components (pJ, reported in mJ): ``compute`` (MACs, accumulates, neuron updates), ``addressing``
(index arithmetic), ``weights`` (parameter reads), ``membrane`` (potentials, accumulators and
the scan's recurrent state, read and written), ``io`` (activation / spike reads and writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from svm_kernels.utils import is_real

HOROWITZ = "Horowitz, ISSCC 2014 (45 nm CMOS, 0.9 V), Fig. 1.1.9"

# SRAM read energy of a 64-bit access against the memory size (Horowitz, ISSCC 2014: 8 KB 10 pJ,
# 32 KB 20 pJ, 1 MB 100 pJ). Lemaire et al. (Sec. 4) fit a line to these three points by least
# squares, E(S) = a x S + b; the fit is recomputed here from the points so that it stays theirs.
HOROWITZ_SRAM_POINTS = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))  # (bytes, pJ)


def sram_fit(points=HOROWITZ_SRAM_POINTS) -> tuple[float, float]:
    """Least-squares line through (bytes, pJ) points: (slope pJ/byte, intercept pJ)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return slope, my - slope * mx


SRAM_SLOPE_PJ_PER_BYTE, SRAM_INTERCEPT_PJ = sram_fit()  # 8.2816e-5 pJ/byte, 13.256 pJ

COMPONENTS = ("compute", "addressing", "weights", "membrane", "io")
REUSE = ("none", "ideal")


@dataclass(frozen=True)
class HardwareModel:
    """Per-operation energies (pJ) of one technology, and its memory model.

    ``e_add_pj`` / ``e_mul_pj``: one add (an accumulate, a comparison) and one multiply at the
    datapath width ``value_bytes``. A memory access costs the SRAM fit of the memory's size in
    bytes (values x ``value_bytes``). ``e_synop_pj``, ``e_neuron_update_pj``, ``e_spike_pj``:
    when set (a neuromorphic chip's measured figures, which include the core's own memory
    accesses), a synaptic op, a neuron update and a spike cost these instead of the
    add/multiply and SRAM terms; the layers that are not spike-driven keep the 45 nm figures.
    """

    name: str
    e_add_pj: float
    e_mul_pj: float
    value_bytes: int
    source: str
    sram_slope_pj_per_byte: float = SRAM_SLOPE_PJ_PER_BYTE
    sram_intercept_pj: float = SRAM_INTERCEPT_PJ
    e_synop_pj: float | None = None
    e_neuron_update_pj: float | None = None
    e_spike_pj: float | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "source") or value is None:
                continue
            if not is_real(value) or value < 0 or value != value:
                raise ValueError(f"{f.name} must be a non-negative number, got {value!r}")
        if self.value_bytes <= 0:
            raise ValueError(f"value_bytes must be positive, got {self.value_bytes!r}")

    @property
    def e_mac_pj(self) -> float:
        return self.e_mul_pj + self.e_add_pj

    def sram_pj(self, values: float) -> float:
        """One access to an SRAM holding ``values`` values (Lemaire et al.'s fit of Horowitz)."""
        return self.sram_slope_pj_per_byte * values * self.value_bytes + self.sram_intercept_pj

    def to_dict(self) -> dict:
        return asdict(self)


# Horowitz's table (45 nm, 0.9 V): fp32 add 0.9 / mult 3.7, fp16 add 0.4 / mult 1.1, 8-bit int
# add 0.03 / mult 0.2 pJ.
# Loihi: M. Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning",
# IEEE Micro 38(1), 2018, Table 1: energy per synaptic spike op (min) 23.6 pJ, per neuron update
# (active) 81 pJ, within-tile spike energy 1.7 pJ (14 nm). Loihi has no multiplier array: the
# layers that see real values (the image conv, the scan, the head) are costed as on a 45 nm int8
# accelerator beside it.
HW_PRESETS = {
    "hw_45nm_fp32": HardwareModel("hw_45nm_fp32", 0.9, 3.7, 4, HOROWITZ + ": fp32 add 0.9, mult 3.7 pJ"),
    "hw_45nm_fp16": HardwareModel("hw_45nm_fp16", 0.4, 1.1, 2, HOROWITZ + ": fp16 add 0.4, mult 1.1 pJ"),
    "hw_45nm_int8": HardwareModel("hw_45nm_int8", 0.03, 0.2, 1, HOROWITZ + ": int8 add 0.03, mult 0.2 pJ"),
    "hw_loihi": HardwareModel(
        "hw_loihi",
        0.03,
        0.2,
        1,
        "Davies et al., IEEE Micro 2018, Table 1: synaptic op 23.6 pJ, neuron update 81 pJ, spike 1.7 pJ; "
        "non-spiking layers at " + HOROWITZ + " int8",
        e_synop_pj=23.6,
        e_neuron_update_pj=81.0,
        e_spike_pj=1.7,
    ),
}


def get_hardware_model(spec: str | HardwareModel | Mapping) -> HardwareModel:
    """A hardware preset name (``HW_PRESETS``), a HardwareModel, or a mapping of its fields."""
    if isinstance(spec, HardwareModel):
        return spec
    if isinstance(spec, str):
        if spec not in HW_PRESETS:
            raise ValueError(f"unknown hardware preset {spec!r}; choose one of {sorted(HW_PRESETS)}")
        return HW_PRESETS[spec]
    if isinstance(spec, Mapping):
        return HardwareModel(**{"name": "custom", "source": "", **spec})
    raise TypeError(
        f"expected a hardware preset name, a HardwareModel or a mapping, got {type(spec).__name__}"
    )


# --------------------------------------------------------------------------------------------
# The equations. Each returns the five components in pJ.


@dataclass
class Components:
    compute: float = 0.0
    addressing: float = 0.0
    weights: float = 0.0
    membrane: float = 0.0
    io: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.addressing + self.weights + self.membrane + self.io

    def scaled(self, factor: float) -> Components:
        return Components(*(getattr(self, c) * factor for c in COMPONENTS))

    def __add__(self, other: Components) -> Components:
        return Components(*(getattr(self, c) + getattr(other, c) for c in COMPONENTS))


@dataclass(frozen=True)
class Volumes:
    """What one op of one module moves, per image (all steps), from the trace.

    ``inputs`` / ``outputs``: elements read / written; ``weights``: parameter elements (the
    second operand of an activation x activation product); ``kernel``: kernel positions (kh x kw,
    1 for a linear layer); ``fan_out_cells``: Cout x kh x kw per sample summed over samples
    (Lemaire's addressing term); ``batch``: samples (time steps x images); ``state``: recurrent
    state updates (scan).
    """

    macs: float
    inputs: float = 0.0
    outputs: float = 0.0
    weights: float = 0.0
    kernel: float = 1.0
    fan_out_cells: float = 0.0
    batch: float = 1.0
    state: float = 0.0

    @property
    def in_map(self) -> float:
        """Input elements of one sample (the size of the input memory)."""
        return self.inputs / max(self.batch, 1.0)

    @property
    def out_map(self) -> float:
        return self.outputs / max(self.batch, 1.0)


def spike_driven(v: Volumes, theta_in: float, is_conv: bool, hw: HardwareModel) -> Components:
    """A conv / linear layer driven by θ_in input spikes (Lemaire et al., SNN equations).

    * compute, Eq. (1.4) / (2.4) first term: one accumulate per synaptic op, θ_in x fan-out
      (the SOPs of the papers' convention);
    * addressing, Eq. (16) (conv): 2 MACs per input spike (its output window) + one add per
      kernel position; Eq. (17) (linear): one add per synaptic op, θ_in x N_out;
    * weights, Eq. (7f) / (8f): one weight read per synaptic op from the layer's weight memory;
    * membrane, Eq. (9) / (14) first terms: one potential read and one write per synaptic op;
    * io, Eq. (5): one read per input spike. The outputs stay in the potentials (Eq. (13)'s
      spike writes are the neuron layer's).
    """
    fan_out = v.macs / v.inputs if v.inputs else 0.0
    sops = theta_in * fan_out
    if hw.e_synop_pj is not None:  # a chip's synaptic op: accumulate, weight and potential access
        return Components(compute=sops * hw.e_synop_pj)
    if is_conv:
        addressing = theta_in * (2 * hw.e_mac_pj + v.kernel * hw.e_add_pj)
    else:
        addressing = sops * hw.e_add_pj
    return Components(
        compute=sops * hw.e_add_pj,
        addressing=addressing,
        weights=sops * hw.sram_pj(v.weights),
        membrane=2 * sops * hw.sram_pj(v.out_map),
        io=theta_in * hw.sram_pj(v.in_map),
    )


def mac_driven(v: Volumes, is_conv: bool, reuse: str, hw: HardwareModel) -> Components:
    """A conv / linear / matrix product on real values (Lemaire et al., formal-network equations).

    * compute, Eq. (1.1)-(1.2) / (2.1)-(2.2): MACs x (E_mul + E_add) + N_out accumulator adds;
    * addressing (conv): one add per input element, per output element and per Cout x kernel
      position; (linear) one add per MAC;
    * weights, Eq. (6.1f) / (6.2f): ``reuse="none"``: one weight read per MAC; ``"ideal"``:
      every weight read once per image (perfect on-chip reuse);
    * io, Eq. (3) / (4) and (11) / (12): input reads (one per MAC for a conv without reuse, one
      per input element for a linear layer or with ideal reuse) and one write per output.
    """
    ideal = reuse == "ideal"
    if is_conv:
        addressing = (v.inputs + v.outputs + v.fan_out_cells) * hw.e_add_pj
        input_reads = v.inputs if ideal else v.macs
    else:
        addressing = v.macs * hw.e_add_pj
        input_reads = v.inputs
    weight_reads = v.weights if ideal else v.macs
    return Components(
        compute=v.macs * hw.e_mac_pj + v.outputs * hw.e_add_pj,
        addressing=addressing,
        weights=weight_reads * hw.sram_pj(v.weights),
        io=input_reads * hw.sram_pj(v.in_map) + v.outputs * hw.sram_pj(v.out_map),
    )


def neuron_updates(updates: float, spikes: float, neurons: float, hw: HardwareModel) -> Components:
    """A LIF layer: ``updates`` neuron updates (neurons x steps), ``spikes`` output spikes.

    * compute, Eq. (1.3) + (1.4) second and third terms: per neuron and step a leak multiply and
      a charge add (one MAC) and a threshold comparison (one add); one reset add per spike;
    * membrane, Eq. (9) / (14) second terms: one potential read and one write per update, in a
      memory of ``neurons`` (one step's) potentials;
    * io, Eq. (13): one write per output spike.
    """
    if hw.e_neuron_update_pj is not None:
        return Components(compute=updates * hw.e_neuron_update_pj, io=spikes * (hw.e_spike_pj or 0.0))
    return Components(
        compute=updates * (hw.e_mac_pj + hw.e_add_pj) + spikes * hw.e_add_pj,
        membrane=2 * updates * hw.sram_pj(neurons),
        io=spikes * hw.sram_pj(neurons),
    )


def selective_scan(v: Volumes, reuse: str, hw: HardwareModel, d_state_map: float) -> Components:
    """The four-direction scan (not in Lemaire et al.; their formal-network terms applied to it).

    * compute: VMamba's MAC count x (E_mul + E_add);
    * membrane: the recurrent state h, one read and one write per state update (4·B·L·D·N), in a
      memory of one direction's D x N states (``d_state_map``);
    * weights: A, D and the dt bias, read once per state update (``reuse="none"``) or once per
      image (``"ideal"``);
    * io: u (once per direction), delta or dt_low, B and C read, y written.
    """
    weight_reads = v.weights if reuse == "ideal" else v.state
    return Components(
        compute=v.macs * hw.e_mac_pj,
        weights=weight_reads * hw.sram_pj(v.weights),
        membrane=2 * v.state * hw.sram_pj(d_state_map),
        io=v.inputs * hw.sram_pj(v.in_map) + v.outputs * hw.sram_pj(v.out_map),
    )


def elementwise(v: Volumes, adds_only: bool, reuse: str, hw: HardwareModel) -> Components:
    """Ops without weights-per-MAC structure: an unfoldable BatchNorm (scale and shift, one MAC
    per element, 2 parameters per channel), a reduction (QKTA's channel sums, the head's mean:
    one add per counted op), a LayerNorm. Inputs read once, outputs written once."""
    per_op = hw.e_add_pj if adds_only else hw.e_mac_pj
    weight_reads = v.weights if reuse == "ideal" else (v.macs if v.weights else 0.0)
    return Components(
        compute=v.macs * per_op,
        weights=weight_reads * hw.sram_pj(v.weights) if v.weights else 0.0,
        io=v.inputs * hw.sram_pj(v.in_map) + v.outputs * hw.sram_pj(v.out_map),
    )
