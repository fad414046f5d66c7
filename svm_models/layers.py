"""Building blocks shared by SVMamba, VMamba and QKFormer.

Layout conventions:

* Spiking models carry activations as (T, B, C, H, W), time first. Convolutions, linears and
  norms see the time steps folded into the batch, (T*B, C, H, W) (:class:`SeqToBatch`); LIF
  neurons see the unfolded tensor and integrate over T (:func:`make_lif`).
* Every LIF is a stateless :class:`svm_kernels.MultiStepLIF`: it starts from v = 0 on every
  call, so no membrane potential leaks from one batch, or one image, to the next.
* Every ``backend`` argument ("auto", "torch", "triton") goes to each LIF and scan call;
  :func:`set_backend` switches a built model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from svm_kernels import MultiStepLIF
from svm_kernels.ss2d.module import CrossSelectiveScan
from svm_kernels.utils import check_backend, is_int

from .spike_layers import conv_bn_supported, conv_bn_train, recompute_in_backward

# --------------------------------------------------------------------------------------------
# Time <-> batch folding, spiking neurons


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """(T, B, ...) -> (T*B, ...): a view for tensors whose first two dims are contiguous."""
    return x.flatten(0, 1)


def unfold_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """(T*B, ...) -> (T, B, ...)."""
    return x.unflatten(0, (T, x.shape[0] // T))


class SeqToBatch(nn.Module):
    """Runs ``module`` on a (T, B, ...) sequence with the time steps folded into the batch.

    Convolutions and norms have no notion of time: folding lets one call serve every step
    (BatchNorm statistics are then taken over T*B samples, as in spikingjelly's SeqToANN).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_time(self.module(fold_time(x)), x.shape[0])


def make_lif(
    backend: str = "auto",
    tau: float = 2.0,
    v_threshold: float = 1.0,
    detach_reset: bool = True,
    surrogate: str = "sigmoid",
) -> MultiStepLIF:
    """The one spiking neuron of every model: multi-step LIF with hard reset to 0, stateless."""
    return MultiStepLIF(
        tau=tau,
        v_threshold=v_threshold,
        v_reset=0.0,
        decay_input=True,
        detach_reset=detach_reset,
        surrogate=surrogate,
        backend=backend,
    )


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Point every LIF and scan of ``model`` at ``backend`` ("auto", "torch" or "triton")."""
    check_backend(backend)
    for m in model.modules():
        if isinstance(m, (MultiStepLIF, CrossScanSSM)):
            m.backend = backend
    if hasattr(model, "backend"):
        model.backend = backend
    return model


def encode_direct(images: torch.Tensor, T: int) -> torch.Tensor:
    """The (T, B, C, H, W) input stream of a spiking model.

    A static (B, C, H, W) image is presented at every step (direct encoding); a (B, T, C, H, W)
    sequence of frames (event-camera data) gives each step its own frame.
    """
    if images.dim() == 5:
        if images.shape[1] != T:
            raise ValueError(
                f"a (B, T, C, H, W) frame sequence must have T = {T} frames, got {images.shape[1]} "
                f"(shape {tuple(images.shape)})"
            )
        return images.transpose(0, 1)
    if images.dim() != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W) or frames (B, T, C, H, W), got {tuple(images.shape)}"
        )
    return images.unsqueeze(0).expand(T, *images.shape)


# --------------------------------------------------------------------------------------------
# Convolution units and norms


class ConvBN(nn.Sequential):
    """Conv2d ("same" padding) -> BatchNorm2d, optionally -> MaxPool(3, 2, 1), on (N, C, H, W).

    No conv bias by default: the BatchNorm's shift makes it redundant (QKFormer keeps some, so
    ``bias`` is there to reproduce its parameter count).

    ``spike_input``: the layer is built to receive spikes (0/1). ``memory_efficient`` (switched
    on by the spiking models): while training, Conv -> BN runs as one node that saves the input
    (as bits when ``spike_input``) and recomputes the BN input in the backward
    (:func:`svm_models.spike_layers.conv_bn_train`); the same numbers as the plain modules.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        pool: bool = False,
        spike_input: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch)
        if pool:
            self.pool = nn.MaxPool2d(3, 2, 1)
        self.spike_input = spike_input
        self.memory_efficient = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lean = self.memory_efficient and torch.is_grad_enabled() and not torch.jit.is_tracing()
        pool = getattr(self, "pool", None)
        if not (lean and conv_bn_supported(self.conv, self.bn, pool)):
            return super().forward(x)
        return conv_bn_train(x, self.conv, self.bn, self.spike_input, pool)

    def extra_repr(self) -> str:
        return f"spike_input={self.spike_input}, memory_efficient={self.memory_efficient}"


class SeqConvBN(ConvBN):
    """:class:`ConvBN` on a (T, B, C, H, W) sequence, time folded into the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_time(super().forward(fold_time(x)), x.shape[0])


class Linear2d(nn.Conv2d):
    """A position-wise linear layer on (B, C, H, W), i.e. a 1x1 convolution.

    Its own class so that VMamba's init (truncated normal for every linear) can find it; it is an
    nn.Conv2d for everything else (FLOP counters included).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, kernel_size=1, bias=bias)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor (VMamba's channels-first LN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p <= 1.0:  # (also refuses NaN)
            raise ValueError(f"drop path rate must be in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        # kept samples scaled by 1 / keep (the expectation unchanged); at p = 1 every one dropped
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def stem_strides(patch_size: int) -> tuple[int, int]:
    """Strides of the two 3x3 stem convs, whose product is the patch size (2, 2) for 4, (2, 1) for 2."""
    table = {1: (1, 1), 2: (2, 1), 4: (2, 2)}
    if patch_size not in table:
        raise ValueError(f"patch_size must be one of {sorted(table)}, got {patch_size!r}")
    return table[patch_size]


def _positive_ints(name: str, values: Sequence[int], minimum: int) -> list:
    """``values`` as a list of Python ints >= minimum, or a ValueError naming ``name`` (no
    truncation of 16.5, no bool taken for 1)."""
    if is_int(values) or not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{name} must be ints >= {minimum}, got {list(values)!r}")
    return [int(v) for v in values]


def stage_dims(dims: int | Sequence[int], num_stages: int) -> list:
    """``dims`` as VMamba takes it: an int C (stages C, 2C, 4C, ...) or one width per stage."""
    if is_int(dims):
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        return [dims * 2**i for i in range(num_stages)]
    dims = _positive_ints("dims", dims, 1)
    if len(dims) != num_stages:
        raise ValueError(f"dims has {len(dims)} entries but depths has {num_stages} stages")
    return dims


def check_depths(depths: Sequence[int], num_stages: int | None = None) -> list:
    depths = _positive_ints("depths", depths, 0)
    if num_stages is not None and len(depths) != num_stages:
        raise ValueError(f"depths must have {num_stages} entries, got {depths}")
    if not depths:
        raise ValueError("depths must name at least one stage, got []")
    return depths


def init_linears_trunc_normal(model: nn.Module, std: float = 0.02) -> None:
    """timm-style init shared by the three models: truncated normal linears with zero bias."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, Linear2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# The SS2D core: per-direction projections + fused four-direction selective scan


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """Mamba's "auto" rank of the time-step projection: ceil(d_model / 16)."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if not is_int(dt_rank) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


class CrossScanSSM(CrossSelectiveScan):
    """The models' SS2D core: :class:`svm_kernels.ss2d.module.CrossSelectiveScan` with their memory
    options (set by the models: ``spike_input`` when u is binary, ``recompute_scan``).

    ``recompute_scan`` (off by default): while training, keep only u for the backward (as bits
    when ``spike_input``) and rerun the projections and the scan there. Meant for the PyTorch
    reference scan (CPU), which otherwise keeps ~40 values per (B, D, L) element; the fused CUDA
    scan keeps only its inputs. Same gradients, one more scan forward per step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spike_input = False
        self.recompute_scan = False

    def forward(self, u: torch.Tensor, recompute: bool = True) -> torch.Tensor:
        lean = recompute and self.recompute_scan and self.training and torch.is_grad_enabled()
        if lean and not torch.jit.is_tracing():
            return recompute_in_backward(self, u, self.spike_input)
        return self.scan(u)
