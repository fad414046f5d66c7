"""The SS2D core as an ``nn.Module``: VMamba's per-direction projections and parameters around
:func:`~svm_kernels.ss2d.interface.cross_selective_scan_lowrank`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_backend, is_int, is_real
from .interface import cross_selective_scan_lowrank
from .naive import K_DIRECTIONS


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half parameters (the scan's rates, skips and biases want fp32), fp64 kept."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class CrossSelectiveScan(nn.Module):
    """VMamba's SS2D core on an input u (B, D, H, W): y = four-direction selective scan of u.

    Parameters (VMamba's names and shapes; direction k uses slice k of each):

    * ``x_proj_weight`` (4, R + 2N, D): per-direction projection of u into dt_low (R), B (N), C (N).
      It is position-wise, so all four directions are one 1x1 convolution of u in spatial order
      (VMamba runs it as a grouped conv over the four scanned copies: the same numbers).
    * ``dt_projs_weight`` (4, D, R), ``dt_projs_bias`` (4, D): low-rank time steps; the
      up-projection runs inside the fused scan, so the (B, 4, D, H, W) delta never exists.
    * ``A_logs`` (4*D, N), ``Ds`` (4*D,): state matrix A = -exp(A_logs) and skip.

    The output is the sum of the four directions, (B, D, H, W), fp32 for half inputs.
    """

    # Parameters an optimiser should not decay (Mamba's ``_no_weight_decay`` ones, A_logs and Ds,
    # and the time steps' bias, a bias kept as one (4, D) tensor); read by the training's
    # parameter groups (config key ``scan_weight_decay``).
    NO_WEIGHT_DECAY = ("dt_projs_bias", "A_logs", "Ds")

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
        for name, value in (("d_inner", d_inner), ("d_state", d_state), ("dt_rank", dt_rank)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not all(is_real(v) and math.isfinite(v) for v in (dt_min, dt_max, dt_init_floor)):
            raise ValueError(
                f"dt_min, dt_max and dt_init_floor must be finite numbers, got {dt_min!r}, {dt_max!r}, {dt_init_floor!r}"
            )
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if not dt_init_floor > 0:
            raise ValueError(f"dt_init_floor must be > 0, got {dt_init_floor!r}")
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.backend = check_backend(backend)
        K, D, N, R = K_DIRECTIONS, d_inner, d_state, dt_rank
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, D))
        self.A_logs = nn.Parameter(torch.empty(K * D, N))
        self.Ds = nn.Parameter(torch.empty(K * D))
        self.reset_parameters(dt_min, dt_max, dt_init_floor)

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
        # (conv2d takes a 3-d u as one unbatched image: the error came from deep inside)
        if not isinstance(u, torch.Tensor) or u.dim() != 4 or u.shape[1] != self.d_inner:
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u must have shape (B, D={self.d_inner}, H, W), got {shape}")
        K, R, N = K_DIRECTIONS, self.dt_rank, self.d_state
        w = self.x_proj_weight.to(u.dtype).reshape(K * (R + 2 * N), self.d_inner, 1, 1)
        x_dbl = F.conv2d(u, w).unflatten(1, (K, R + 2 * N))
        return x_dbl[:, :, :R], x_dbl[:, :, R : R + N], x_dbl[:, :, R + N :]

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, D, H, W) -> the sum of the four directions' scans (B, D, H, W)."""
        dt_low, Bs, Cs = self.project(u)
        K, D, N = K_DIRECTIONS, self.d_inner, self.d_state
        return cross_selective_scan_lowrank(
            u,
            dt_low,
            self.dt_projs_weight,
            -torch.exp(_at_least_fp32(self.A_logs)).view(K, D, N),
            Bs,
            Cs,
            D=_at_least_fp32(self.Ds).view(K, D),
            dt_bias=_at_least_fp32(self.dt_projs_bias),
            delta_softplus=True,
            backend=self.backend,
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.scan(u)

    def extra_repr(self) -> str:
        return f"d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, backend={self.backend!r}"
