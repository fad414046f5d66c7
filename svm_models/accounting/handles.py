"""fvcore op handles for the package's own ops, plus the counting conventions.

fvcore (``FlopCountAnalysis``) traces the model with ``torch.jit`` and counts every traced op
with a handle keyed by the op's name: ``node.kind()``, with ``"." + node.pyname()`` appended for
a ``prim::PythonOp`` (an autograd Function). One multiply-accumulate counts as one FLOP, the
convention of the VMamba and spiking-transformer papers, so fvcore's counts are MACs.

Our ops appear in a trace under two names each:

* older versions ran the PyTorch LIF as one autograd Function, ``prim::PythonOp.MultiStepLIFTorch``,
  whose node inputs are the tensor arguments in call order;
* every op is a ``torch.library`` custom op, whatever the backend: ``svmamba::lif_fwd``,
  ``svmamba::ss2d_fwd``, ``svmamba::ss2d_lowrank_fwd``, ``svmamba::ss2d_torch_fwd`` and
  ``svmamba::ss2d_torch_lowrank_fwd``; every argument is a node input.

Either way the leading tensors are (u, delta, A, ...) for the full scan, (u, dt_low, dt_weight,
A, ...) for the low-rank one and (x, ...) for the LIF neuron; the handles read only those.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

with warnings.catch_warnings():  # importing fvcore.nn calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn.jit_handles import Handle, batchnorm_flop_jit, elementwise_flop_counter, get_shape

K_DIRECTIONS = 4

# Names of the counters our handles return (fvcore keeps a handle's Counter keys as they are).
SCAN_OP = "selective_scan"
SCAN_DT_OP = "scan_dt_proj"
NEURON_OP = "neuron_updates"  # not MACs: reported on their own, never added to the MAC total

LIF_OPS = ("prim::PythonOp.MultiStepLIFTorch", "svmamba::lif_fwd")
SCAN_FULL_OPS = ("svmamba::ss2d_torch_fwd", "svmamba::ss2d_fwd")
SCAN_LOWRANK_OPS = ("svmamba::ss2d_torch_lowrank_fwd", "svmamba::ss2d_lowrank_fwd")

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
