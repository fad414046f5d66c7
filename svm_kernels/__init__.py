"""svm_kernels: fused Triton kernels for spiking vision models.

* :func:`multistep_lif` / :class:`MultiStepLIF` -- multi-timestep LIF firing, forward and backward.
"""
from .lif import MultiStepLIF, multistep_lif

__all__ = ["multistep_lif", "MultiStepLIF"]
__version__ = "0.1.0"
