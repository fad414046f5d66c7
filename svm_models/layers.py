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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from svm_kernels import MultiStepLIF, cross_selective_scan_lowrank

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
        if not (lean and conv_bn_supported(self.conv, self.bn)):
            return super().forward(x)
        return conv_bn_train(x, self.conv, self.bn, self.spike_input, getattr(self, "pool", None))

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
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def stem_strides(patch_size: int) -> tuple[int, int]:
    """Strides of the two 3x3 stem convs, whose product is the patch size (2, 2) for 4, (2, 1) for 2."""
    table = {1: (1, 1), 2: (2, 1), 4: (2, 2)}
    if patch_size not in table:
        raise ValueError(f"patch_size must be one of {sorted(table)}, got {patch_size!r}")
    return table[patch_size]


def stage_dims(dims: int | Sequence[int], num_stages: int) -> list:
    """``dims`` as VMamba takes it: an int C (stages C, 2C, 4C, ...) or one width per stage."""
    if isinstance(dims, int):
        return [dims * 2**i for i in range(num_stages)]
    dims = [int(d) for d in dims]
    if len(dims) != num_stages:
        raise ValueError(f"dims has {len(dims)} entries but depths has {num_stages} stages")
    return dims


def check_depths(depths: Sequence[int], num_stages: int | None = None) -> list:
    depths = [int(d) for d in depths]
    if num_stages is not None and len(depths) != num_stages:
        raise ValueError(f"depths must have {num_stages} entries, got {depths}")
    if not depths or any(d < 0 for d in depths):
        raise ValueError(f"depths must be non-negative, got {depths}")
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

K_DIRECTIONS = 4


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """Mamba's "auto" rank of the time-step projection: ceil(d_model / 16)."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class CrossScanSSM(nn.Module):
    """VMamba's SS2D core on an input u (B, D, H, W): y = four-direction selective scan of u.

    Parameters (VMamba's names and shapes; direction k uses slice k of each):

    * ``x_proj_weight`` (4, R + 2N, D): per-direction projection of u into dt_low (R), B (N), C (N).
      It is position-wise, so all four directions are one 1x1 convolution of u in spatial order
      (VMamba runs it as a grouped conv over the four scanned copies: the same numbers).
    * ``dt_projs_weight`` (4, D, R), ``dt_projs_bias`` (4, D): low-rank time steps; the
      up-projection runs inside the fused scan, so the (B, 4, D, H, W) delta never exists.
    * ``A_logs`` (4*D, N), ``Ds`` (4*D,): state matrix A = -exp(A_logs) and skip.

    The output is the sum of the four directions, (B, D, H, W), fp32 for half inputs.

    ``recompute_scan`` (off by default): while training, keep only u for the backward (as bits
    when ``spike_input``) and rerun the projections and the scan there. Meant for the PyTorch
    reference scan (CPU), which otherwise keeps ~40 values per (B, D, L) element; the fused CUDA
    scan keeps only its inputs. Same gradients, one more scan forward per step.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 1,
        dt_rank: int = 6,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.backend = backend
        K, D, N, R = K_DIRECTIONS, d_inner, d_state, dt_rank
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, D))
        self.A_logs = nn.Parameter(torch.empty(K * D, N))
        self.Ds = nn.Parameter(torch.empty(K * D))
        self.reset_parameters(dt_min, dt_max, dt_init_floor)
        self.spike_input = False
        self.recompute_scan = False

    @torch.no_grad()
    def reset_parameters(
        self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4
    ) -> None:
        """VMamba's "v0" init (mamba_init): the parts that make the scan start out well-behaved."""
        D, N, R = self.d_inner, self.d_state, self.dt_rank
        # x_proj: nn.Linear's default init, U(-1/sqrt(D), 1/sqrt(D)), per direction.
        bound = 1.0 / math.sqrt(D)
        self.x_proj_weight.uniform_(-bound, bound)
        # dt_proj weight: U(-R^-0.5, R^-0.5) ("random", dt_scale 1).
        std = R**-0.5
        self.dt_projs_weight.uniform_(-std, std)
        # dt_proj bias: softplus(bias) = dt, dt log-uniform in [dt_min, dt_max], floored.
        dt = torch.exp(torch.rand(K_DIRECTIONS, D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_projs_bias.copy_(inverse_softplus(dt.clamp(min=dt_init_floor)))
        # A = -[1, 2, ..., N] for every channel (S4D-real); D = 1.
        self.A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(K_DIRECTIONS * D, 1))
        self.Ds.fill_(1.0)

    def project(self, u: torch.Tensor):
        """Per-direction projections of u: dt_low (B, 4, R, H, W), B and C (B, 4, N, H, W)."""
        K, R, N = K_DIRECTIONS, self.dt_rank, self.d_state
        w = self.x_proj_weight.to(u.dtype).reshape(K * (R + 2 * N), self.d_inner, 1, 1)
        x_dbl = F.conv2d(u, w).unflatten(1, (K, R + 2 * N))
        return x_dbl[:, :, :R], x_dbl[:, :, R : R + N], x_dbl[:, :, R + N :]

    def forward(self, u: torch.Tensor, recompute: bool = True) -> torch.Tensor:
        lean = recompute and self.recompute_scan and self.training and torch.is_grad_enabled()
        if lean and not torch.jit.is_tracing():
            return recompute_in_backward(self, u, self.spike_input)
        dt_low, Bs, Cs = self.project(u)
        K, D, N = K_DIRECTIONS, self.d_inner, self.d_state
        return cross_selective_scan_lowrank(
            u,
            dt_low,
            self.dt_projs_weight,
            -torch.exp(self.A_logs.float()).view(K, D, N),
            Bs,
            Cs,
            D=self.Ds.float().view(K, D),
            dt_bias=self.dt_projs_bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, backend={self.backend!r}"
