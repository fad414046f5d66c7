from .fused import multistep_lif
from .module import MultiStepLIF
from .naive import multistep_lif_naive

__all__ = ["multistep_lif", "MultiStepLIF", "multistep_lif_naive"]
