"""Trace names of the package's ops, taken from svm_kernels rather than re-typed.

fvcore names a traced node ``node.kind()``: the ``torch.library`` qualified name
(``"svmamba::..."``) of the custom op, for the Triton kernels and the PyTorch paths alike.
Deriving the names from the op objects keeps the accounting's handles in step with a renamed op.
"""

from __future__ import annotations

from svm_kernels.lif.fused import _lif_fwd_op
from svm_kernels.ss2d.fused import _ss2d_fwd_op, _ss2d_infer_op, _ss2d_lowrank_fwd_op, _ss2d_lowrank_infer_op
from svm_kernels.ss2d.vectorised import (
    _ss2d_torch_fwd_op,
    _ss2d_torch_infer_op,
    _ss2d_torch_lowrank_fwd_op,
    _ss2d_torch_lowrank_infer_op,
)


def custom_op_name(op) -> str:
    """The trace name of a ``torch.library.custom_op`` ("namespace::name")."""
    return op._qualname  # CustomOpDef keeps its qualified name here (torch 2.4+)


LIF_OPS = (custom_op_name(_lif_fwd_op),)
# each backend's differentiable op and its inference op (taken where no gradient can follow)
SCAN_FULL_OPS = tuple(
    map(custom_op_name, (_ss2d_torch_fwd_op, _ss2d_torch_infer_op, _ss2d_fwd_op, _ss2d_infer_op))
)
SCAN_LOWRANK_OPS = tuple(
    map(
        custom_op_name,
        (
            _ss2d_torch_lowrank_fwd_op,
            _ss2d_torch_lowrank_infer_op,
            _ss2d_lowrank_fwd_op,
            _ss2d_lowrank_infer_op,
        ),
    )
)
