"""FLOP (MAC), SOP and energy accounting built on fvcore.

>>> from svm_models import accounting, create_model
>>> report = accounting.profile(create_model("svmamba_cifar", num_classes=10), test_images)
>>> print(report.to_markdown()); report.plot("energy.png"); open("r.json", "w").write(report.to_json())

* MACs: fvcore's ``FlopCountAnalysis`` (one multiply-accumulate = one FLOP) with handles for the
  package's ops (:mod:`.handles`), traced on one image, so every figure is per image.
* Firing rates: on-device input statistics of every Conv/Linear and SS2D scan over the data
  (:mod:`.rates`).
* SOPs = rate x MACs for spike (and integer) inputs; energy = E_MAC x MACs + E_AC x SOPs
  (:mod:`.energy`, 45 nm fp32 by default: 4.6 pJ and 0.9 pJ).

Command line: ``python -m svm_models.accounting --model vmamba_t --img-size 224``.
"""

from .calibrate import calibrate_batchnorm
from .energy import PRESETS, EnergyModel, get_energy_model
from .handles import cross_scan_macs, lowrank_dt_macs, op_handles, selective_scan_macs
from .profiler import default_stage, exclusive_counts, profile, trace_counts
from .rates import InputStats, RateRecorder
from .report import LayerRow, Report, StageRow

__all__ = [
    "PRESETS",
    "EnergyModel",
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
    "lowrank_dt_macs",
    "op_handles",
    "profile",
    "selective_scan_macs",
    "trace_counts",
]
