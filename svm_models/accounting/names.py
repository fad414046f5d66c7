"""Trace names of the package's ops, taken from svm_kernels rather than re-typed.

fvcore names a traced node ``node.kind()``: ``"prim::PythonOp." + <autograd Function class
name>`` for the PyTorch reference paths (``svm_kernels.utils.OpaqueTorchOp`` subclasses) and the
``torch.library`` qualified name (``"svmamba::..."``) for the Triton custom ops. Deriving both
from the objects keeps the accounting's handles in step with a renamed op.
"""

from __future__ import annotations

from svm_kernels.lif.fused import MultiStepLIFTorch, _lif_fwd_op
from svm_kernels.ss2d.fused import _ss2d_fwd_op, _ss2d_lowrank_fwd_op
from svm_kernels.ss2d.interface import CrossSelectiveScanLowrankTorch, CrossSelectiveScanTorch


def python_op_name(function: type) -> str:
    """The trace name of an autograd Function run as one node."""
    return f"prim::PythonOp.{function.__name__}"


def custom_op_name(op) -> str:
    """The trace name of a ``torch.library.custom_op`` ("namespace::name")."""
    return op._qualname  # CustomOpDef keeps its qualified name here (torch 2.4+)


LIF_OPS = (python_op_name(MultiStepLIFTorch), custom_op_name(_lif_fwd_op))
SCAN_FULL_OPS = (python_op_name(CrossSelectiveScanTorch), custom_op_name(_ss2d_fwd_op))
SCAN_LOWRANK_OPS = (python_op_name(CrossSelectiveScanLowrankTorch), custom_op_name(_ss2d_lowrank_fwd_op))
