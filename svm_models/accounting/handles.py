"""fvcore op handles for the package's own ops, plus the counting conventions.

fvcore (``FlopCountAnalysis``) traces the model with ``torch.jit`` and counts every traced op
with a handle keyed by the op's name: ``node.kind()``, with ``"." + node.pyname()`` appended for
a ``prim::PythonOp`` (an autograd Function). One multiply-accumulate counts as one FLOP, the
convention of the VMamba and spiking-transformer papers, so fvcore's counts are MACs.

Every op of the package is a ``torch.library`` custom op, whatever the backend, and appears in a
trace under its qualified name (``svmamba::lif_fwd``, ``svmamba::ss2d_fwd``,
``svmamba::ss2d_lowrank_fwd``, ``svmamba::ss2d_torch_fwd``, ``svmamba::ss2d_torch_lowrank_fwd``,
see :mod:`.names`) with every argument as a node input.

The leading tensors are (u, delta, A, ...) for the full scan, (u, dt_low, dt_weight,
A, ...) for the low-rank one and (x, ...) for the LIF neuron; the handles read only those.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

with warnings.catch_warnings():  # importing fvcore.nn calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS
    from fvcore.nn.jit_handles import Handle, batchnorm_flop_jit, elementwise_flop_counter, get_shape

from svm_kernels.ss2d.naive import K_DIRECTIONS

from .names import LIF_OPS, SCAN_FULL_OPS, SCAN_LOWRANK_OPS

# Names of the counters our handles return (fvcore keeps a handle's Counter keys as they are).
SCAN_OP = "selective_scan"
SCAN_DT_OP = "scan_dt_proj"
NEURON_OP = "neuron_updates"  # not MACs: reported on their own, never added to the MAC total


# Ops that fvcore's handles count as products with their first input (conv / matmul family): a
# layer whose input is spikes performs these as accumulates (SOPs) instead of MACs.
INPUT_LINEAR_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum"})

# Ops the models use that cost nothing under the papers' conventions (elementwise activations,
# residual adds, gating products, shape changes, max pooling). Listed explicitly so that a new,
# unlisted op shows up in ``Report.unsupported_ops`` instead of being dropped silently.
IGNORED_OPS = (
    # residual adds, gates, scaling, signs
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::sub_",
    "aten::rsub",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::div_",
    "aten::neg",
    "aten::abs",
    "aten::pow",
    "aten::sqrt",
    "aten::rsqrt",
    # activations and exponentials (VMamba's -exp(A_logs) included)
    "aten::exp",
    "aten::gelu",
    "aten::silu",
    "aten::sigmoid",
    "aten::relu",
    "aten::relu_",
    "aten::tanh",
    "aten::softplus",
    "aten::softmax",
    "aten::log",
    "aten::hardtanh",
    # shapes, copies and comparisons
    "aten::unflatten",
    "aten::flip",
    "aten::repeat",
    "aten::stack",
    "aten::expand_as",
    "aten::type_as",
    "aten::to",
    "aten::where",
    "aten::lt",
    "aten::le",
    "aten::ne",
    "aten::round",
    "aten::split",
    "aten::split_with_sizes",
    "aten::unbind",
    "aten::roll",
    "aten::pad",
    # reductions that are not averages, max pooling
    "aten::sum",
    "aten::amax",
    "aten::max_pool1d",
    "aten::max_pool2d",
    "aten::max_pool3d",
    "aten::dropout_",
    "aten::feature_dropout",
)


def _shape(value: Any, what: str) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f"svm_models.accounting: the traced {what} has no complete tensor shape")
    return list(shape)


def selective_scan_macs(batch: int, length: int, d: int, n: int) -> int:
    """VMamba's count for one selective scan over (batch, d, length) with state size n.

    ``9 * B * L * D * N + B * D * L``: VMamba's ``flops_selective_scan_fn(with_D=True,
    with_Z=False)``, the formula VMamba registers for its selective scan (D is the number of
    scanned channels; VMamba passes all four directions' channels at once).
    """
    return 9 * batch * length * d * n + batch * d * length


def cross_scan_macs(batch: int, d_inner: int, length: int, n: int) -> int:
    """The four-direction scan: ``selective_scan_macs`` per direction, times four."""
    return K_DIRECTIONS * selective_scan_macs(batch, length, d_inner, n)


def lowrank_dt_macs(batch: int, d_inner: int, length: int, rank: int) -> int:
    """The in-kernel time-step projection of the low-rank scan: delta[k] = dt_weight[k] @ dt_low[k].

    ``4 * B * L * D * R``, what fvcore counts for VMamba's grouped dt_proj conv1d.
    """
    return K_DIRECTIONS * batch * length * d_inner * rank


def _scan_dims(u, A, what: str):
    u_shape, a_shape = _shape(u, f"{what} input u"), _shape(A, f"{what} input A")
    if len(u_shape) != 4 or len(a_shape) != 3 or a_shape[0] != K_DIRECTIONS or a_shape[1] != u_shape[1]:
        raise ValueError(
            f"svm_models.accounting: unexpected {what} inputs u {u_shape}, A {a_shape}; "
            "expected u (B, D, H, W) and A (4, D, N) -- has the op's signature changed?"
        )
    batch, d_inner, h, w = u_shape
    return batch, d_inner, h * w, a_shape[2]


def cross_scan_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Handle for the full-delta scan: inputs (u, delta, A, B, C, ...)."""
    batch, d_inner, length, n = _scan_dims(inputs[0], inputs[2], "scan")
    return Counter({SCAN_OP: cross_scan_macs(batch, d_inner, length, n)})


def cross_scan_lowrank_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Handle for the low-rank scan: inputs (u, dt_low, dt_weight, A, B, C, ...)."""
    batch, d_inner, length, n = _scan_dims(inputs[0], inputs[3], "low-rank scan")
    w_shape = _shape(inputs[2], "low-rank scan input dt_weight")
    if len(w_shape) != 3 or w_shape[:2] != [K_DIRECTIONS, d_inner]:
        raise ValueError(
            f"svm_models.accounting: unexpected dt_weight shape {w_shape}, expected (4, {d_inner}, R)"
        )
    return Counter(
        {
            SCAN_OP: cross_scan_macs(batch, d_inner, length, n),
            SCAN_DT_OP: lowrank_dt_macs(batch, d_inner, length, w_shape[2]),
        }
    )


def lif_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Handle for the LIF neuron: no MACs; one neuron update per element of x (T, *)."""
    numel = 1
    for s in _shape(inputs[0], "LIF input x"):
        numel *= s
    return Counter({NEURON_OP: numel})


def zero_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """A handle that counts nothing (for ops fvcore would count by default)."""
    return Counter()


def op_handles(count_batchnorm: bool = False) -> dict[str, Handle | None]:
    """The handles ``profile`` adds to fvcore's defaults (conv, linear, matmul, einsum, norms...).

    * our scans and LIF neuron, under both of their trace names;
    * ``aten::batch_norm``: ignored by default (it folds into the preceding conv at inference);
      ``count_batchnorm=True`` keeps fvcore's count (1-2 per element in eval mode);
    * ``aten::mean``: the number of averaged elements, as fvcore counts ``adaptive_avg_pool2d``;
    * ``IGNORED_OPS``: deliberately counted as zero.
    """
    handles: dict[str, Handle | None] = {name: None for name in IGNORED_OPS}
    handles.update({name: lif_flop_jit for name in LIF_OPS})
    handles.update({name: cross_scan_flop_jit for name in SCAN_FULL_OPS})
    handles.update({name: cross_scan_lowrank_flop_jit for name in SCAN_LOWRANK_OPS})
    # fvcore's defaults include a batch_norm handle, and a handle wins over the ignore list, so
    # "not counted" needs a handle that counts nothing.
    handles["aten::batch_norm"] = batchnorm_flop_jit if count_batchnorm else zero_flop_jit
    handles["aten::mean"] = elementwise_flop_counter(1, 0)
    return handles


# --------------------------------------------------------------------------------------------
# Data volumes for the hardware energy model
#
# With ``volumes=True`` every counted op also returns what it reads and writes, under keys
# ``"<op>|<field>"`` beside its MAC count (fvcore sums a handle's Counter per module, so the
# volumes of a module's calls add up like its MACs). Fields: ``in`` (elements of the activation
# input), ``w`` (weight elements, or the second operand of a product), ``out`` (output
# elements), ``k`` (kernel positions), ``cells`` (Cout x kernel positions x samples), ``batch``
# (samples), ``state`` (scan state updates), ``dn`` (one direction's D x N states), ``calls``. ``split_volumes`` separates them again,
# so the MAC counts are exactly those of ``volumes=False``.

VOLUME_SEP = "|"


def _numel(value) -> int:
    shape = get_shape(value)
    if shape is None:
        return 0
    n = 1
    for s in shape:
        n *= s
    return n


def split_volumes(counts: Counter) -> tuple[Counter, dict[str, Counter]]:
    """``(MAC counts, {op: Counter(field -> volume)})`` of a Counter from volume-recording handles."""
    macs, volumes = Counter(), {}
    for key, value in counts.items():
        if VOLUME_SEP in key:
            op, field = key.split(VOLUME_SEP, 1)
            volumes.setdefault(op, Counter())[field] += value
        else:
            macs[key] = value
    return macs, volumes


def _volume_counter(op: str, **fields) -> Counter:
    return Counter({f"{op}{VOLUME_SEP}{k}": v for k, v in fields.items() if v})


def _product_volumes(x_index: int, w_index: int | None, is_conv: bool = False):
    """Volumes of a conv / linear / matrix product / norm / reduction with its activation input
    at ``x_index`` and its weight (or second operand) at ``w_index``."""

    def volumes(op: str, inputs: list[Any], outputs: list[Any]) -> Counter:
        out_shape = get_shape(outputs[0]) if outputs else None
        batch = out_shape[0] if out_shape else 1
        w_shape = get_shape(inputs[w_index]) if w_index is not None and len(inputs) > w_index else None
        fields = {
            "in": _numel(inputs[x_index]),
            "w": _numel(inputs[w_index]) if w_shape else 0,
            "out": _numel(outputs[0]) if outputs else 0,
            "batch": batch,
            "calls": 1,
        }
        if is_conv and w_shape:
            k = 1
            for s in w_shape[2:]:
                k *= s
            fields.update(k=k, cells=w_shape[0] * k * batch)
        return _volume_counter(op, **fields)

    return volumes


def _scan_volumes(lowrank: bool):
    """Scan inputs (u, delta, A, B, C, D, bias) or (u, dt_low, dt_weight, A, B, C, D, bias)."""
    a_at = 3 if lowrank else 2

    def volumes(op: str, inputs: list[Any], outputs: list[Any]) -> Counter:
        u, A = _shape(inputs[0], "scan input u"), _shape(inputs[a_at], "scan input A")
        batch, d_inner, length = u[0], u[1], u[2] * u[3]
        params = sum(_numel(inputs[i]) for i in (a_at, a_at + 3, a_at + 4) if len(inputs) > i)
        reads = K_DIRECTIONS * _numel(inputs[0]) + _numel(inputs[a_at + 1]) + _numel(inputs[a_at + 2])
        scan = dict(
            inputs=reads + (0 if lowrank else _numel(inputs[1])),
            w=params,
            out=_numel(outputs[0]),
            batch=batch,
            state=K_DIRECTIONS * batch * length * d_inner * A[2],
            dn=d_inner * A[2],  # one direction's states: the state memory of a sequence
            calls=1,
        )
        scan["in"] = scan.pop("inputs")
        counts = _volume_counter(SCAN_OP, **scan)
        if lowrank:  # delta = dt_weight @ dt_low never leaves the kernel: no output
            counts += _volume_counter(
                SCAN_DT_OP, **{"in": _numel(inputs[1]), "w": _numel(inputs[2]), "batch": batch, "calls": 1}
            )
        return counts

    return volumes


def _lif_volumes(op: str, inputs: list[Any], outputs: list[Any]) -> Counter:
    x = _shape(inputs[0], "LIF input x")  # (T, *): one step's neurons = numel / T
    return _volume_counter(NEURON_OP, **{"in": _numel(inputs[0]), "batch": x[0], "calls": 1})


# op name -> (the Counter key of a handle returning a plain number, how to read its volumes)
_VOLUME_READERS = {
    "aten::_convolution": ("conv", _product_volumes(0, 1, is_conv=True)),
    "aten::linear": ("linear", _product_volumes(0, 1)),
    "aten::addmm": ("addmm", _product_volumes(1, 2)),
    "aten::matmul": ("matmul", _product_volumes(0, 1)),
    "aten::mm": ("mm", _product_volumes(0, 1)),
    "aten::bmm": ("bmm", _product_volumes(0, 1)),
    "aten::batch_norm": ("batch_norm", _product_volumes(0, 1)),
    "aten::layer_norm": ("layer_norm", _product_volumes(0, 2)),
    "aten::group_norm": ("group_norm", _product_volumes(0, 2)),
    "aten::mean": ("mean", _product_volumes(0, None)),
    "aten::adaptive_avg_pool2d": ("adaptive_avg_pool2d", _product_volumes(0, None)),
    "aten::sum": ("sum", _product_volumes(0, None)),
}


def _recording(handle: Handle | None, key: str, volumes) -> Handle:
    """``handle`` (None: counts nothing) plus the op's volumes under ``key``."""

    def counted(inputs: list[Any], outputs: list[Any]) -> Counter:
        counts = handle(inputs, outputs) if handle is not None else Counter()
        if not isinstance(counts, Counter):
            counts = Counter({key: counts})
        return counts + volumes(key, inputs, outputs)

    return counted


def volume_handles(count_batchnorm: bool = False) -> dict[str, Handle | None]:
    """``op_handles`` whose handles also return the data volumes (see above)."""
    handles = {**_DEFAULT_SUPPORTED_OPS, **op_handles(count_batchnorm)}
    for name, (key, volumes) in _VOLUME_READERS.items():
        handles[name] = _recording(handles.get(name), key, volumes)
    for name in SCAN_FULL_OPS:
        handles[name] = _recording(handles[name], SCAN_OP, _scan_volumes(lowrank=False))
    for name in SCAN_LOWRANK_OPS:
        handles[name] = _recording(handles[name], SCAN_OP, _scan_volumes(lowrank=True))
    for name in LIF_OPS:
        handles[name] = _recording(handles[name], NEURON_OP, _lif_volumes)
    return handles
