from .interface import multistep_lif
from .module import MultiStepLIF
from .naive import multistep_lif_naive

__all__ = ["MultiStepLIF", "multistep_lif", "multistep_lif_naive"]
