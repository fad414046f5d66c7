from .interface import is_binary, pack_bits, pack_bytes_moved, unpack_bits, unpack_bytes_moved
from .naive import pack_bits_naive, packed_size, unpack_bits_naive

__all__ = [
    "is_binary",
    "pack_bits",
    "pack_bits_naive",
    "pack_bytes_moved",
    "packed_size",
    "unpack_bits",
    "unpack_bits_naive",
    "unpack_bytes_moved",
]
