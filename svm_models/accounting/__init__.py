"""FLOP (MAC), SOP and energy accounting built on fvcore.

>>> from svm_models import accounting, create_model
>>> report = accounting.profile(create_model("svmamba_cifar", num_classes=10), test_images)
>>> print(report.to_markdown()); report.plot("energy.png"); open("r.json", "w").write(report.to_json())

* MACs: fvcore's ``FlopCountAnalysis`` (one multiply-accumulate = one FLOP) with handles for the
  package's ops (:mod:`.handles`), traced on one image, so every figure is per image.
* Firing rates: on-device input statistics of every Conv/Linear and SS2D scan over the data
  (:mod:`.rates`).
* Preset ``paper`` (default), the spiking-transformer papers' convention: SOPs = rate x MACs
  for spike (and integer) inputs; energy = E_MAC x MACs + E_AC x SOPs (:mod:`.energy`, 45 nm
  fp32 by default: 4.6 pJ and 0.9 pJ).
* Hardware presets (``hw_45nm_fp32``, ``hw_45nm_fp16``, ``hw_45nm_int8``, ``hw_loihi``) add
  Lemaire et al.'s model (:mod:`.hardware`): arithmetic, neuron updates, addressing, weight,
  membrane and activation memory traffic per layer (``report.hardware``).

Command line: ``python -m svm_models.accounting --model vmamba_t --img-size 224 --preset hw_45nm_fp32``.
"""

from .calibrate import calibrate_batchnorm
from .energy import PRESETS, EnergyModel, get_energy_model
from .handles import cross_scan_macs, lowrank_dt_macs, op_handles, selective_scan_macs
from .hardware import HW_PRESETS, HardwareModel, get_hardware_model
from .profiler import Conventions, default_stage, exclusive_counts, profile, trace_counts
from .rates import InputStats, RateRecorder
from .report import HardwareReport, HardwareRow, LayerRow, Report, StageRow

__all__ = [
    "HW_PRESETS",
    "PRESETS",
    "Conventions",
    "EnergyModel",
    "HardwareModel",
    "HardwareReport",
    "HardwareRow",
    "InputStats",
    "LayerRow",
    "RateRecorder",
    "Report",
    "StageRow",
    "calibrate_batchnorm",
    "cross_scan_macs",
    "default_stage",
    "exclusive_counts",
    "get_energy_model",
    "get_hardware_model",
    "lowrank_dt_macs",
    "op_handles",
    "profile",
    "selective_scan_macs",
    "trace_counts",
]
