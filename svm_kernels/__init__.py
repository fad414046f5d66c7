"""svm_kernels: fused Triton kernels for spiking vision models.

* :func:`multistep_lif` / :class:`MultiStepLIF` -- multi-timestep LIF firing, forward and backward.
* :func:`cross_selective_scan` / :func:`cross_selective_scan_lowrank` -- VMamba's four-direction
  selective scan (SS2D), fused; :func:`cross_scan` / :func:`cross_merge` are its explicit permutations;
  :class:`CrossSelectiveScan` is the module with VMamba's projections and parameters around it.
"""

from .lif import MultiStepLIF, multistep_lif
from .ss2d import (
    CrossSelectiveScan,
    cross_merge,
    cross_scan,
    cross_selective_scan,
    cross_selective_scan_lowrank,
)

__all__ = [
    "CrossSelectiveScan",
    "MultiStepLIF",
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "cross_selective_scan_lowrank",
    "multistep_lif",
]
__version__ = "0.1.0"
