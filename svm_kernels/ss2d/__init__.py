from .interface import cross_selective_scan, cross_selective_scan_lowrank
from .naive import cross_merge, cross_scan, cross_selective_scan_naive

__all__ = [
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "cross_selective_scan_lowrank",
    "cross_selective_scan_naive",
]
