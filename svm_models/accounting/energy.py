"""Energy per operation: E = E_MAC x MACs + E_AC x SOPs.

Costs per operation (pJ) in 45 nm CMOS at 0.9 V from M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014, Fig. 1.1.9 (the table every spiking-network paper
cites; Spikformer and QKFormer use E_MAC = 4.6 pJ, E_AC = 0.9 pJ):

=========== ======== ======== ===================== ============
 format      mult     add      MAC = mult + add      AC = add
=========== ======== ======== ===================== ============
 fp32        3.7      0.9      4.6                   0.9
 fp16        1.1      0.4      1.5                   0.4
 int8        0.2      0.03     0.23                  0.03
=========== ======== ======== ===================== ============
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from svm_kernels.utils import is_real

HOROWITZ = "Horowitz, ISSCC 2014 (45 nm CMOS, 0.9 V)"


@dataclass(frozen=True)
class EnergyModel:
    """Energy of one multiply-accumulate (MAC) and one accumulate (AC, a synaptic op), in pJ."""

    name: str
    e_mac_pj: float
    e_ac_pj: float
    source: str = ""

    def __post_init__(self):
        for field in ("e_mac_pj", "e_ac_pj"):
            value = getattr(self, field)
            if not is_real(value) or value < 0 or value != value:
                raise ValueError(f"{field} must be a non-negative number, got {value!r}")

    def mac_mj(self, macs: float) -> float:
        """Energy of ``macs`` multiply-accumulates in mJ (1 pJ = 1e-9 mJ)."""
        return macs * self.e_mac_pj * 1e-9

    def ac_mj(self, sops: float) -> float:
        """Energy of ``sops`` accumulates in mJ."""
        return sops * self.e_ac_pj * 1e-9

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "45nm_fp32": EnergyModel("45nm_fp32", 4.6, 0.9, HOROWITZ + ": fp32 mult 3.7 + add 0.9; AC = fp32 add"),
    "fp16": EnergyModel("fp16", 1.5, 0.4, HOROWITZ + ": fp16 mult 1.1 + add 0.4; AC = fp16 add"),
    "int8": EnergyModel("int8", 0.23, 0.03, HOROWITZ + ": int8 mult 0.2 + add 0.03; AC = int8 add"),
}
ALIASES = {"fp32": "45nm_fp32", "default": "45nm_fp32", "45nm_fp16": "fp16", "45nm_int8": "int8"}
DEFAULT = "45nm_fp32"


def get_energy_model(spec: str | EnergyModel | Mapping = DEFAULT) -> EnergyModel:
    """A preset name ("45nm_fp32" (alias "fp32"), "fp16", "int8"), an EnergyModel, or a mapping
    with ``e_mac_pj`` and ``e_ac_pj`` (and optionally ``name``, ``source``)."""
    if isinstance(spec, EnergyModel):
        return spec
    if isinstance(spec, str):
        key = ALIASES.get(spec, spec)
        if key not in PRESETS:
            raise ValueError(
                f"unknown energy preset {spec!r}; choose one of {sorted(PRESETS)} or pass an EnergyModel"
            )
        return PRESETS[key]
    if isinstance(spec, Mapping):
        missing = {"e_mac_pj", "e_ac_pj"} - set(spec)
        if missing:
            raise ValueError(f"an energy mapping needs {sorted(missing)}")
        return EnergyModel(
            spec.get("name", "custom"),
            float(spec["e_mac_pj"]),
            float(spec["e_ac_pj"]),
            spec.get("source", ""),
        )
    raise TypeError(f"energy must be a preset name, an EnergyModel or a mapping, got {type(spec).__name__}")
