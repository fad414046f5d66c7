from .interface import cross_selective_scan, cross_selective_scan_lowrank
from .module import CrossSelectiveScan
from .naive import cross_merge, cross_scan, cross_selective_scan_naive

__all__ = [
    "CrossSelectiveScan",
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "cross_selective_scan_lowrank",
    "cross_selective_scan_naive",
]
