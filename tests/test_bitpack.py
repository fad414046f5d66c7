"""Bit packing: Triton kernels (the interpreter on CPU) against the PyTorch reference."""

import pytest
import torch

from svm_kernels import utils as kutils
from svm_kernels.bitpack import (
    is_binary,
    pack_bits,
    pack_bits_naive,
    pack_bytes_moved,
    packed_size,
    unpack_bits,
    unpack_bits_naive,
    unpack_bytes_moved,
)

pytestmark = pytest.mark.usefixtures("kernel_device")

# Odd sizes: below one byte, one byte, one bit over, tails that fill no whole block.
SHAPES = [(1,), (7,), (8,), (9,), (3, 5, 7), (2, 3, 37, 11), (1031,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kutils, "POISON_OUTPUTS", True)


def spikes(shape, dtype, rate=0.3):
    return (torch.rand(shape) < rate).to(dtype)


def test_reference_layout_by_hand():
    """Element 8i + j is bit j of byte i, zero padded: checked on a hand-made example."""
    x = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1, 1], dtype=torch.float32)
    expected = torch.tensor([0b10001101, 0b00000011], dtype=torch.uint8)
    assert torch.equal(pack_bits_naive(x).cpu(), expected)
    assert torch.equal(unpack_bits_naive(expected.to(x.device), (10,), torch.float32), x)


def spec_pack(x):
    """The layout spelled out element by element, in Python."""
    flags = [int(v != 0) for v in x.reshape(-1).tolist()]
    flags += [0] * (-len(flags) % 8)
    return torch.tensor(
        [sum(flags[8 * i + j] << j for j in range(8)) for i in range(len(flags) // 8)], dtype=torch.uint8
    )


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 1031])
def test_reference_matches_the_layout_spelled_out(n):
    x = spikes((n,), torch.float32, rate=0.5)
    assert torch.equal(pack_bits_naive(x).cpu(), spec_pack(x))
    assert torch.equal(unpack_bits_naive(spec_pack(x).to(x.device), (n,), torch.float32), x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_pack_unpack_match_reference(shape, dtype):
    x = spikes(shape, dtype)
    ref = pack_bits(x, backend="torch")
    got = pack_bits(x, backend="triton")
    assert got.dtype == torch.uint8 and got.shape == (packed_size(x.numel()),)
    assert torch.equal(got, ref)
    out = unpack_bits(got, shape, dtype, backend="triton")
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, x)  # exact, and no NaN left from the poisoned buffer
    assert torch.equal(unpack_bits(ref, shape, dtype, backend="torch"), x)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_zero_and_all_one(backend):
    # All-zero input checks that no byte keeps the poison pattern; all-one that the tail is padded with 0.
    for value, byte in ((0.0, 0), (1.0, 255)):
        x = torch.full((4, 21), value)
        packed = pack_bits(x, backend=backend)
        assert packed[:-1].eq(byte).all()
        assert packed[-1].item() == (byte & 0b1111)  # 84 = 10 * 8 + 4: the last byte has 4 bits
        assert torch.equal(unpack_bits(packed, x.shape, backend=backend), x)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_input_is_read_in_logical_order(backend):
    base = spikes((6, 10, 5), torch.float32)
    x = base.transpose(0, 2)[:, 1:9:2]  # strided view
    assert not x.is_contiguous()
    assert torch.equal(pack_bits(x, backend=backend), pack_bits_naive(x.contiguous()))
    assert torch.equal(unpack_bits(pack_bits(x, backend=backend), x.shape, backend=backend), x)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_any_nonzero_value_sets_its_bit(backend):
    # guards a kernel that tests x > 0 (a negative value lost its bit) instead of x != 0
    x = torch.tensor([-1.0, 0.0, 2.0, 0.0, -0.5, 0.0, 0.0, 1.0, -3.0])
    assert torch.equal(pack_bits(x, backend=backend).cpu(), spec_pack(x))


def test_triton_block_boundaries():
    """Sizes around the kernel's block (64 bytes under the interpreter) and several programs."""
    for n in (64 * 8 - 1, 64 * 8, 64 * 8 + 1, 3 * 64 * 8 + 13):
        x = spikes((n,), torch.float32)
        assert torch.equal(pack_bits(x, backend="triton"), pack_bits_naive(x)), n


def test_bool_input_on_the_torch_path():
    x = torch.rand(3, 11) < 0.5
    packed = pack_bits(x)
    assert torch.equal(unpack_bits(packed, x.shape, torch.bool), x)


def test_check_rejects_non_binary():
    assert is_binary(torch.tensor([0.0, 1.0, 1.0]))
    for bad in (0.5, 2.0, -1.0, float("nan")):
        x = torch.tensor([0.0, 1.0, bad])
        assert not is_binary(x)
        with pytest.raises(ValueError, match="other than 0 and 1"):
            pack_bits(x, check=True)
    pack_bits(torch.tensor([0.0, 1.0]), check=True)


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.Tensor"):
        pack_bits([0, 1])
    with pytest.raises(TypeError, match="must be one of"):
        pack_bits(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(torch.zeros(2), (16,))
    with pytest.raises(ValueError, match="needs 2"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), (9,))
    with pytest.raises(ValueError, match="needs 2"):  # too many bytes is a mismatch too
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (9,))
    # an explicit backend='triton' refuses the dtypes its kernels lack (no silent fallback)
    with pytest.raises(TypeError, match="backend='triton'"):
        pack_bits(torch.zeros(9, dtype=torch.float64), backend="triton")
    with pytest.raises(TypeError, match="backend='triton'"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), (9,), torch.float64, backend="triton")
    for backend in ("torch", "triton"):  # (torch gave an empty tensor, triton a RuntimeError)
        for shape in ((-1,), (-1, 9)):
            with pytest.raises(ValueError, match="negative"):
                unpack_bits(torch.zeros(0, dtype=torch.uint8), shape, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        pack_bits(torch.zeros(3), backend="cuda")


def test_shape_as_one_int_and_check_as_a_bool():
    # a bare int shape raised "'int' object is not iterable"; check="no" ran the check
    x = spikes((13,), torch.float32)
    for backend in ("torch", "triton"):
        assert torch.equal(unpack_bits(pack_bits(x, backend=backend), 13, backend=backend), x)
    for bad in ((2.0, 8), "16", None):
        with pytest.raises(TypeError, match="shape must be an int or a sequence of ints"):
            unpack_bits(torch.zeros(2, dtype=torch.uint8), bad)
    for flag in ("no", None):
        with pytest.raises(TypeError, match="check must be a bool"):
            pack_bits(torch.tensor([0.0, 0.5]), check=flag)


def test_a_bool_is_no_shape():
    # True is an int to Python: it would unpack one element instead of naming the bad shape
    with pytest.raises(TypeError, match="shape must be an int or a sequence of ints"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_packed_bytes_are_read_in_logical_order(backend):
    # the bytes as every other element of a wider buffer: the kernel walks flat offsets
    x = spikes((5, 7), torch.float32, rate=0.5)
    packed = spec_pack(x).to(x.device)
    wide = torch.full((2 * packed.numel(),), 0xFF, dtype=torch.uint8)
    wide[::2] = packed
    assert torch.equal(unpack_bits(wide[::2], x.shape, backend=backend), x)


def test_empty():
    x = torch.zeros(0, 4)
    for backend in ("torch", "triton"):
        packed = pack_bits(x, backend=backend)
        assert packed.numel() == 0
        assert unpack_bits(packed, x.shape, backend=backend).shape == x.shape


def test_bytes_moved():
    # fp32: read 4 bytes per element, write 1 bit per element (rounded up to whole bytes).
    assert pack_bytes_moved(1000, torch.float32) == 4000 + 125
    assert pack_bytes_moved(1001, torch.bfloat16) == 2002 + 126
    assert unpack_bytes_moved(1001, torch.bfloat16) == 2002 + 126


@pytest.mark.parametrize("n", [1, 9, 1031])
def test_opcheck(n):
    """The custom ops' fakes agree with the real kernels (shapes, strides, dtypes) and trace cleanly."""
    from svm_kernels.bitpack.fused import pack_bits_op, unpack_bits_op

    x = spikes((n,), torch.float32)
    torch.library.opcheck(pack_bits_op, (x,))
    packed = pack_bits_op(x)
    torch.library.opcheck(unpack_bits_op, (packed, n, torch.bfloat16))


@pytest.mark.slow
def test_reference_compiles_with_inductor():
    """The PyTorch path as the CPU models' memory-lean layers run it inside torch.compile: lowered
    by inductor (not only captured), with a tail that needs padding, equal to eager."""
    torch._dynamo.reset()
    x = spikes((2, 3, 37), torch.float32, rate=0.5)
    roundtrip = torch.compile(
        lambda t: unpack_bits_naive(pack_bits_naive(t), t.shape, t.dtype), backend="inductor", fullgraph=True
    )
    assert torch.equal(roundtrip(x), x)
    assert torch.equal(torch.compile(pack_bits_naive, backend="inductor", fullgraph=True)(x), spec_pack(x))
