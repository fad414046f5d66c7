"""SVMamba: a spike-driven visual Mamba (the flagship model).

Images are presented directly at every one of T steps; activations are (T, B, C, H, W).

* Every Conv/Linear after the first stem conv receives spikes (binary, or with the "sew"
  shortcut sums of spikes), so it costs accumulates, not multiply-accumulates. The selective
  scan's recurrence is real-valued arithmetic.
* Shortcuts: "membrane" (default) keeps the residual stream real-valued and starts every
  branch with a LIF (x = x + Mixer(x); x = x + MLP(x)); "sew" (QKFormer-style) makes every
  branch end with a LIF instead, so spikes are added to spikes and the stream holds spike counts.
* Mixer (spiking SS2D): s = LIF(x); gate g = LIF(BN(Conv1x1(s))); u = LIF(BN(DWConv3x3(
  LIF(BN(Conv1x1(s)))))); y = four-direction scan of u (each time step independently, T folded
  into the batch), y = LIF(BN(y)); out = BN(Conv1x1(y * g)).
* Every LIF is stateless (v = 0 at the start of every forward), so nothing leaks between
  batches or images.
* ``memory_efficient=True`` (default): while training, the convs that receive spikes keep them
  for the backward as bits and every Conv -> BN recomputes its BN input (see
  :mod:`svm_models.spike_layers`); loss and gradients are the same as with ``False``.
  ``recompute_scan=True`` (opt-in) also keeps only the scan's input u (as bits) and reruns the
  scan in the backward: for the PyTorch reference scan, one more scan forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from .base import VisionModel, make_classifier
from .layers import (
    CrossScanSSM,
    SeqConvBN,
    encode_direct,
    fold_time,
    init_linears_trunc_normal,
    make_lif,
    resolve_dt_rank,
    stem_strides,
    unfold_time,
)
from .registry import build, register_model
from .spike_layers import set_memory_efficient, spike_mul

SHORTCUTS = ("membrane", "sew")
LIFFactory = Callable[[], nn.Module]


def receives_spikes(shortcut: str) -> bool:
    """Whether a branch's first conv gets spikes: yes after the entry LIF (membrane); with "sew"
    it reads the stream itself, sums of spikes (counts), which are not binary."""
    return shortcut == "membrane"


def branch_ends(shortcut: str, lif: LIFFactory) -> tuple[nn.Module, nn.Module]:
    """(entry, exit) of a residual branch: a LIF at the entry (membrane) or at the exit (sew)."""
    if shortcut == "membrane":
        return lif(), nn.Identity()
    return nn.Identity(), lif()


class SpikingStem(nn.Module):
    """Conv3x3 -> BN -> LIF -> Conv3x3 -> BN (-> LIF with "sew"); total stride = patch size."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, lif: LIFFactory, shortcut: str):
        super().__init__()
        s1, s2 = stem_strides(patch_size)
        self.conv1 = SeqConvBN(in_chans, dim // 2, 3, s1)  # the only conv that sees real values
        self.lif1 = lif()
        self.conv2 = SeqConvBN(dim // 2, dim, 3, s2, spike_input=True)
        self.exit = branch_ends(shortcut, lif)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit(self.conv2(self.lif1(self.conv1(x))))


class SpikingSS2D(nn.Module):
    """The spiking SS2D token mixer (see the module docstring)."""

    def __init__(
        self, dim: int, d_state: int, ssm_ratio: float, dt_rank, lif: LIFFactory, shortcut: str, backend: str
    ):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.entry, self.exit = branch_ends(shortcut, lif)
        # The scan input and the gate come from one 1x1 conv (+BN) on s, split in two.
        self.in_proj = SeqConvBN(dim, 2 * d_inner, 1, spike_input=receives_spikes(shortcut))
        self.in_lif = lif()
        self.dwconv = SeqConvBN(d_inner, d_inner, 3, groups=d_inner, spike_input=True)
        self.u_lif = lif()
        self.ssm = CrossScanSSM(d_inner, d_state, resolve_dt_rank(dt_rank, dim), backend=backend)
        self.ssm.spike_input = True  # u is the u_lif's spikes
        self.y_norm = nn.BatchNorm2d(d_inner)
        self.y_lif = lif()
        self.out_proj = SeqConvBN(d_inner, dim, 1, spike_input=True)  # spikes x spikes
        self.memory_efficient = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        u, g = self.in_lif(self.in_proj(self.entry(x))).chunk(2, dim=2)
        u = self.u_lif(self.dwconv(u))
        y = self.ssm(fold_time(u))  # (T*B, D, H, W): every time step is scanned on its own
        y = self.y_lif(unfold_time(self.y_norm(y), T))
        return self.exit(self.out_proj(spike_mul(y, g, self.memory_efficient)))


class SpikingMLP(nn.Module):
    """[LIF] -> Conv1x1 (C -> hC) -> BN -> LIF -> Conv1x1 (hC -> C) -> BN [-> LIF]."""

    def __init__(self, dim: int, hidden: int, lif: LIFFactory, shortcut: str):
        super().__init__()
        self.entry, self.exit = branch_ends(shortcut, lif)
        self.fc1 = SeqConvBN(dim, hidden, 1, spike_input=receives_spikes(shortcut))
        self.lif = lif()
        self.fc2 = SeqConvBN(hidden, dim, 1, spike_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit(self.fc2(self.lif(self.fc1(self.entry(x)))))


class SVMambaBlock(nn.Module):
    """x = x + Mixer(x); x = x + MLP(x)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        d_state: int,
        ssm_ratio: float,
        dt_rank,
        lif: LIFFactory,
        shortcut: str,
        backend: str,
    ):
        super().__init__()
        self.mixer = SpikingSS2D(dim, d_state, ssm_ratio, dt_rank, lif, shortcut, backend)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(x)
        return x + self.mlp(x)


class SpikingDownsample(nn.Module):
    """[LIF] -> Conv3x3 stride 2 -> BN [-> LIF]: C -> C' at half the resolution."""

    def __init__(self, dim: int, out_dim: int, lif: LIFFactory, shortcut: str):
        super().__init__()
        self.entry, self.exit = branch_ends(shortcut, lif)
        self.conv = SeqConvBN(dim, out_dim, 3, 2, spike_input=receives_spikes(shortcut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit(self.conv(self.entry(x)))


def check_choice(arg: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{arg} must be one of {choices}, got {value!r}")


class SpikingVMambaBase(VisionModel):
    """What SVMamba and the original SVMamba (svmamba_para133) share: their argument checks, the
    layout attributes and the LIF factory."""

    spiking = True

    def setup(
        self,
        num_classes: int,
        img_size: int,
        patch_size: int,
        dims: int | Sequence[int],
        depths: Sequence[int],
        T: int,
        backend: str,
        **lif_args,
    ) -> LIFFactory:
        """Checks the layout, stores it on the model, returns the factory of the model's LIFs."""
        T = self.check_time_steps(T)
        depths, dims = self.check_stages(depths, dims)
        if dims[0] % 2:
            raise ValueError(f"the first stage width must be even (the stem halves it), got {dims[0]}")
        self.num_classes, self.img_size, self.patch_size = num_classes, img_size, patch_size
        self.dims, self.depths, self.T, self.backend = dims, depths, T, backend
        return partial(make_lif, backend=backend, **lif_args)


class SVMamba(SpikingVMambaBase):
    """Spike-driven VMamba: stem, stages of SVMamba blocks with spiking downsampling, spiking head."""

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 4,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (1, 2, 4),
        T: int = 4,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank="auto",
        mlp_ratio: float = 4.0,
        shortcut: str = "membrane",
        tau: float = 2.0,
        v_threshold: float = 1.0,
        detach_reset: bool = True,
        surrogate: str = "sigmoid",
        backend: str = "auto",
        memory_efficient: bool = True,
        recompute_scan: bool = False,
    ):
        super().__init__()
        check_choice("shortcut", shortcut, SHORTCUTS)
        self.check_sizes(in_chans, mlp_ratio=mlp_ratio, ssm_ratio=ssm_ratio)
        self.shortcut = shortcut
        lif = self.setup(
            num_classes, img_size, patch_size, dims, depths, T, backend,
            tau=tau, v_threshold=v_threshold, detach_reset=detach_reset, surrogate=surrogate,
        )  # fmt: skip
        dims, depths = self.dims, self.depths

        self.stem = SpikingStem(in_chans, dims[0], patch_size, lif, shortcut)
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            stage = nn.Sequential()
            if i > 0:
                stage.add_module("downsample", SpikingDownsample(dims[i - 1], dims[i], lif, shortcut))
            for j in range(depth):
                stage.add_module(
                    f"block{j}",
                    SVMambaBlock(dims[i], mlp_ratio, d_state, ssm_ratio, dt_rank, lif, shortcut, backend),
                )
            self.stages.append(stage)
        # With the membrane shortcut the stream is real-valued: the head fires once more so that
        # the classifier, too, only accumulates spikes.
        self.head_lif = branch_ends(shortcut, lif)[0]
        self.num_features = dims[-1]
        self.head = make_classifier(self.num_features, num_classes)
        init_linears_trunc_normal(self)
        self.memory_efficient = memory_efficient
        set_memory_efficient(self, memory_efficient)
        # Opt-in, for CPU training: the reference scan's saved tensors are most of what is left.
        for m in self.modules():
            if isinstance(m, CrossScanSSM):
                m.recompute_scan = recompute_scan

    @property
    def first_conv(self) -> nn.Conv2d:
        """The conv that sees the real-valued image (every other conv/linear receives spikes)."""
        return self.stem.conv1.conv

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images or (B, T, C, H, W) frames -> the last stage's (T, B, C, H', W') stream."""
        x = self.stem(encode_direct(images, self.T))
        for stage in self.stages:
            x = stage(x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        # over T and space: the logits are the mean over T of the per-step logits (a linear head)
        return self.head_lif(features).mean(dim=(0, 3, 4))


# SVMamba-T's layout; svmamba_cifar is the same with patch 2 at 32 px.
SVMAMBA_T = dict(
    img_size=224, patch_size=4, dims=96, depths=(1, 2, 4), T=4, d_state=1, ssm_ratio=1.0, mlp_ratio=4.0
)


@register_model
def svmamba_t(num_classes: int = 1000, **overrides) -> SVMamba:
    """SVMamba-T, 224 px: C 96, depths [1, 2, 4], T 4, d_state 1, ssm_ratio 1, patch 4."""
    return build(SVMamba, dict(SVMAMBA_T, num_classes=num_classes), overrides, "svmamba_t")


@register_model
def svmamba_cifar(num_classes: int = 1000, **overrides) -> SVMamba:
    """SVMamba for 32 px inputs: as svmamba_t with patch 2 (stages at 16, 8 and 4 px)."""
    defaults = dict(SVMAMBA_T, num_classes=num_classes, img_size=32, patch_size=2)
    return build(SVMamba, defaults, overrides, "svmamba_cifar")
