"""Memory-lean training for the layers of spiking models: same numbers, fewer saved bytes.

Autograd keeps, for the backward, every input a Conv/Linear needs for its weight gradient and
every input a BatchNorm needs for its own; in a spiking model those are (T x) full float
tensors. Two facts make most of them unnecessary:

* Almost every conv after the stem receives spikes, exactly 0 or 1: they are saved packed,
  1 bit per spike (:mod:`svm_kernels.bitpack`), and unpacked for the backward.
* A BatchNorm's input is the conv's output: the backward recomputes it from the (packed) conv
  input instead of keeping it, one conv forward more per training step.

:func:`conv_bn_train` runs Conv2d -> BatchNorm2d (training mode) as one autograd node that
saves only the conv input (packed when the layer is built for spikes), the weights and the
per-channel batch statistics. Its forward and backward call the same ATen kernels as the plain
modules, on the same values, so loss and gradients are bit-identical in fp32.
:func:`spike_mul` does the same for a product of two spike tensors (a gate, a token mask).

Whether a layer receives spikes is decided when the model is built (``spike_input``), never
guessed from the data; with :data:`DEBUG_CHECKS` on (environment ``SVMAMBA_DEBUG=1`` or
:func:`set_debug_checks`) every packed tensor is checked first and a non-binary one raises.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from svm_kernels.bitpack import is_binary, pack_bits, unpack_bits

DEBUG_CHECKS = os.environ.get("SVMAMBA_DEBUG", "0") == "1"


def set_debug_checks(enabled: bool) -> None:
    """Check every tensor a spike layer packs (one extra pass over it) and raise on non-binary ones."""
    global DEBUG_CHECKS
    DEBUG_CHECKS = bool(enabled)


# --------------------------------------------------------------------------------------------
# A tensor kept for the backward: packed to bits when it holds spikes, as it is otherwise


@dataclass(frozen=True)
class _Stash:
    shape: torch.Size
    dtype: torch.dtype
    packed: bool
    channels_last: bool


def stash_for_backward(x: torch.Tensor, spikes: bool, where: object) -> tuple[torch.Tensor, _Stash]:
    """(tensor to save, how to restore it): 1 bit per element when ``spikes``, else ``x`` itself."""
    if not spikes:
        return x, _Stash(x.shape, x.dtype, False, False)
    if DEBUG_CHECKS and not is_binary(x):
        raise ValueError(
            f"{where} was built for spike input (0/1) but got other values; build it with "
            "spike_input=False, or set memory_efficient=False"
        )
    # An input laid out channels_last is restored channels_last: the conv backward then takes
    # the same kernel as for the original tensor. That includes a channel slice of a
    # channels_last tensor (not dense, but strided like one): empty_like on the meta device
    # gives the layout torch's kernels would pick for it.
    channels_last = (
        x.dim() == 4
        and not x.is_contiguous()
        and torch.empty_like(x, device="meta").is_contiguous(memory_format=torch.channels_last)
    )
    return pack_bits(x), _Stash(x.shape, x.dtype, True, channels_last)


def restore(saved: torch.Tensor, how: _Stash, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The stashed tensor, in ``dtype`` (default: its own)."""
    dtype = dtype or how.dtype
    if not how.packed:
        return saved.to(dtype)
    x = unpack_bits(saved, how.shape, dtype)
    return x.contiguous(memory_format=torch.channels_last) if how.channels_last else x


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs convolutions in on this device, None when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _autocast_off(device_type: str):
    # Building a torch.autocast object costs more than a small conv's bookkeeping: only when on.
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Conv2d -> BatchNorm2d (batch statistics), one node that recomputes the BN input


class ConvBNTrainFunction(torch.autograd.Function):
    """Conv2d -> BatchNorm2d in training mode; saves the conv input (maybe packed), recomputes the rest."""

    @staticmethod
    def forward(
        ctx, x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, conv_args, bn_args, pool, spikes, where
    ):
        stride, padding, dilation, groups = conv_args
        momentum, eps = bn_args
        # Autocast casts what a conv reads; do it here so that the backward sees the same values.
        dtype = _autocast_dtype(x.device.type) or x.dtype
        with _autocast_off(x.device.type):
            x_c = x.to(dtype)
            y = F.conv2d(x_c, _cast(conv_w, dtype), _cast(conv_b, dtype), stride, padding, dilation, groups)
            if y.numel() == y.shape[1]:  # nn.BatchNorm2d's check: one value gives a NaN variance
                raise ValueError(
                    f"Expected more than 1 value per channel when training, got input size {y.shape}"
                )
            z, mean, invstd = torch.ops.aten.native_batch_norm(
                y, bn_w, bn_b, running_mean, running_var, True, momentum, eps
            )
            if pool is not None:
                z = F.max_pool2d(z, *pool)
        saved, ctx.how = stash_for_backward(x_c, spikes, where)
        ctx.save_for_backward(saved, conv_w, conv_b, bn_w, bn_b, mean, invstd)
        ctx.dtype, ctx.x_dtype, ctx.conv_args, ctx.eps, ctx.pool = dtype, x.dtype, conv_args, eps, pool
        return z

    @staticmethod
    def backward(ctx, grad_out):
        saved, conv_w, conv_b, bn_w, bn_b, mean, invstd = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        need_x, need_w, need_cb, need_g, need_b = ctx.needs_input_grad[:5]
        dtype = ctx.dtype
        with _autocast_off(grad_out.device.type):
            x = restore(saved, ctx.how, dtype)
            w, b = _cast(conv_w, dtype), _cast(conv_b, dtype)
            y = F.conv2d(x, w, b, stride, padding, dilation, groups)  # the BN input, recomputed
            grad_z = grad_out if ctx.pool is None else _max_pool_backward(grad_out, y, bn_w, bn_b, ctx)
            grad_y, grad_g, grad_beta = torch.ops.aten.native_batch_norm_backward(
                grad_z, y, bn_w, None, None, mean, invstd, True, ctx.eps, [True, need_g, need_b]
            )
            del y, grad_z
            grad_x, grad_w, grad_cb = torch.ops.aten.convolution_backward(
                grad_y,
                x,
                w,
                None if conv_b is None else list(conv_b.shape),
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                [need_x, need_w, need_cb and conv_b is not None],
            )
        return (
            _cast(grad_x, ctx.x_dtype) if need_x else None,
            _cast(grad_w, conv_w.dtype) if need_w else None,
            _cast(grad_cb, conv_b.dtype) if (need_cb and conv_b is not None) else None,
            grad_g if need_g else None,
            grad_beta if need_b else None,
        ) + (None,) * 7


def _max_pool_backward(grad_out, y, bn_w, bn_b, ctx) -> torch.Tensor:
    """Gradient through the max-pool after the BN: recompute the BN output (batch statistics
    again: the same deterministic reduction, the same values; running statistics untouched)
    and the argmax, then the pool's own backward kernel."""
    kernel, stride, padding = ctx.pool
    z = torch.ops.aten.native_batch_norm(y, bn_w, bn_b, None, None, True, 0.0, ctx.eps)[0]
    _, indices = torch.ops.aten.max_pool2d_with_indices(z, kernel, stride, padding)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_out, z, kernel, stride, padding, [1, 1], False, indices
    )


def _bn_momentum(bn: nn.BatchNorm2d) -> float:
    """The running-statistics factor nn.BatchNorm2d uses for this step (and its step count)."""
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative moving average
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _observed(*modules: nn.Module | None) -> bool:
    """True when hooks (forward or backward) watch these modules, or every module: the fused node
    would not call them, so the plain path runs and the hooks see what they expect."""
    glob = torch.nn.modules.module
    if any(getattr(glob, f"_global{h}", None) for h in _HOOKS):
        return True
    return any(getattr(m, h) for m in modules if m is not None for h in _HOOKS)


def conv_bn_supported(conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: nn.Module | None = None) -> bool:
    """The configurations :func:`conv_bn_train` reproduces exactly (the models' ones): the
    plain classes (not a subclass such as SyncBatchNorm, whose forward it would skip), with no
    hooks on the unit's modules."""
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and (pool is None or type(pool) is nn.MaxPool2d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and bn.track_running_stats
        and bn.affine
        and bn.training
        and not _observed(conv, bn, pool)
    )


def _pool_args(pool: nn.MaxPool2d | None):
    """(kernel, stride, padding) of a plain max-pool, the only kind conv_bn_train recomputes."""
    if pool is None:
        return None
    if pool.dilation not in (1, (1, 1)) or pool.ceil_mode or pool.return_indices:
        raise ValueError(f"conv_bn_train recomputes only plain max-pools, got {pool}")
    pair = torch.nn.modules.utils._pair
    return (
        list(pair(pool.kernel_size)),
        list(pair(pool.stride or pool.kernel_size)),
        list(pair(pool.padding)),
    )


def conv_bn_train(
    x: torch.Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d,
    spike_input: bool,
    pool: nn.MaxPool2d | None = None,
) -> torch.Tensor:
    """``pool(bn(conv(x)))`` (pool optional) for a BN in training mode, saving x (as bits when
    ``spike_input``) and the per-channel statistics instead of x, conv(x), the BN output and the
    pool's argmax. Same numbers as the modules."""
    return ConvBNTrainFunction.apply(
        x,
        conv.weight,
        conv.bias,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        (conv.stride, conv.padding, conv.dilation, conv.groups),
        (_bn_momentum(bn), bn.eps),
        _pool_args(pool),
        spike_input,
        conv,  # named in the debug check's error
    )


# --------------------------------------------------------------------------------------------
# Product of two spike tensors


class SpikeMulFunction(torch.autograd.Function):
    """a * b for spike tensors a and b (broadcasting); saves both as bits."""

    @staticmethod
    def forward(ctx, a, b):
        out = a * b
        sa, ctx.how_a = stash_for_backward(a, True, "spike_mul (first operand)")
        sb, ctx.how_b = stash_for_backward(b, True, "spike_mul (second operand)")
        ctx.save_for_backward(sa, sb)
        return out

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.saved_tensors
        grad_a = grad_b = None
        # The same products, casts (mixed dtypes under autocast) and broadcast reductions as
        # autograd's own backward of a * b.
        if ctx.needs_input_grad[0]:
            grad_a = (grad * restore(sb, ctx.how_b)).to(ctx.how_a.dtype).sum_to_size(ctx.how_a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = (grad * restore(sa, ctx.how_a)).to(ctx.how_b.dtype).sum_to_size(ctx.how_b.shape)
        return grad_a, grad_b


def spike_mul(a: torch.Tensor, b: torch.Tensor, memory_efficient: bool = True) -> torch.Tensor:
    """``a * b`` for two spike tensors; with ``memory_efficient`` both are saved as bits."""
    if not memory_efficient or not torch.is_grad_enabled() or torch.jit.is_tracing():
        return a * b
    if not (a.requires_grad or b.requires_grad):
        return a * b
    return SpikeMulFunction.apply(a, b)


def set_memory_efficient(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every memory-lean layer of ``model`` (and the model's own flag) on or off."""
    for m in model.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = bool(enabled)
    return model


def apply_memory_options(model: nn.Module, memory_efficient: bool | None, channels_last: bool) -> nn.Module:
    """A training config's ``memory_efficient`` (None: the model's default) and ``channels_last``
    keys applied to ``model``, as train.py builds it (and the throughput benchmark where the
    training stack cannot be imported)."""
    if memory_efficient is not None and hasattr(model, "memory_efficient"):
        set_memory_efficient(model, memory_efficient)
    if channels_last:
        # Convolutions give their output the weight's layout, so every activation follows.
        model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# A whole sub-computation recomputed in the backward (activation checkpointing with a packed input)


class RecomputeInBackwardFunction(torch.autograd.Function):
    """``module.compute(x)`` keeping only x (as bits when ``spikes``); the backward reruns it
    with gradients on (under the forward's autocast state) and differentiates that graph."""

    @staticmethod
    def forward(ctx, module, spikes, x, *params):
        ctx.module = module
        device = x.device.type
        ctx.autocast = (device, _autocast_dtype(device))
        saved, ctx.how = stash_for_backward(x, spikes, module)
        ctx.save_for_backward(saved)
        # Detached inputs and parameters: ops that decide from requires_grad whether to record a
        # graph (the reference scan's OpaqueTorchOp) then record none.
        detached = {name: p.detach() for name, p in module.named_parameters()}
        return torch.func.functional_call(module, detached, (x.detach(),), {"recompute": False})

    @staticmethod
    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        device, amp_dtype = ctx.autocast
        need_x, need_params = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        x = restore(saved, ctx.how).requires_grad_(need_x)
        params = [p for p, need in zip(ctx.module.parameters(), need_params) if need]
        autocast = torch.autocast(device, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with torch.enable_grad(), autocast:
            out = ctx.module(x, recompute=False)
        got = iter(torch.autograd.grad(out, ([x] if need_x else []) + params, grad_out, allow_unused=True))
        grad_x = next(got) if need_x else None
        return (None, None, grad_x, *[next(got) if need else None for need in need_params])


def recompute_in_backward(module: nn.Module, x: torch.Tensor, spikes: bool) -> torch.Tensor:
    """``module(x, recompute=False)``, saving only x for the backward (bits when ``spikes``) and
    recomputing the rest there: the same gradients, one more forward of ``module``. Under
    torch.compile, torch's own checkpoint (dynamo traces it; the Function's autograd.grad it
    cannot): x is then saved as it is, not as bits."""
    if torch.compiler.is_compiling():
        return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False, recompute=False)
    return RecomputeInBackwardFunction.apply(module, spikes, x, *module.parameters())
