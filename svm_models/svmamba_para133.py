"""The original SVMamba architecture (para133/SNN_Mamba), as a registered model.

The original is a VMamba whose token mixer passes through two spiking neurons; most of the
network is real-valued:

* stem: Conv3x3 (stride 2) -> LN -> GELU, twice; downsampling: Conv3x3 (stride 2) -> LN -> GELU.
* block (pre-norm; the residual is taken from the *normalised* input, as in the original):
  x = LN(x); x = SpikeMamba(x) + x; x = LN(x); x = FFN(x) + x.
* SpikeMamba: s = LIF(Linear(x)); u = SiLU(DenseConv3x3(s)); y = SS2D(u) (VMamba's "v05_noz":
  in_proj, depthwise 3x3, SiLU, four-direction scan, LN, out_proj); out = LIF(y) * x, a spike mask
  on the real input.
* FFN: Conv1x1 (C -> 4C) -> SiLU -> Conv1x1 (4C -> C), real-valued.
* head: mean over T, global average pool, Linear.

At [1, 2, 4] x 96 and 1000 classes it has 15,135,784 parameters; 7 of its 68 Conv/Linear layers
(the dense 3x3 conv of every block) receive spikes.

Deliberate differences from the original code:

* ``fix_batch_leak`` (default on): the original runs its first LIF on the (T*B)-flattened tensor,
  so the membrane potential flows from one sample into the next (and across time steps in sample
  order). With the flag each sample integrates over its own T steps; off reproduces the original.
* Every LIF is stateless (v = 0 at every forward); the original's spikingjelly neurons keep their
  state until ``reset_net`` is called.
* ``patch_size`` 2 (the original's stem is only shape-correct for 4) uses strides (2, 1).
* ``memory_efficient`` (default on, as for the other spiking models): while training, the convs
  built to receive spikes save them as bits (:mod:`svm_models.spike_layers`); the same numbers.

The switches ``stem``, ``ffn``, ``norm`` and the mixer's ``scan_input``, ``gate`` and
``mixer_norm`` (see :class:`SpikeMamba`) replace one part at a time by SVMamba's spiking
counterpart; they exist for the ablation ladder from this model to ``svmamba``
(``bench/ablation.py``). The defaults are the original. With all six switched, what is left
between this model and ``svmamba`` is the block: pre-norms with the residual taken after them
here, the membrane shortcut there (no pre-norms, a LIF at the mixer's entry and before the head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import make_classifier
from .layers import (
    ConvBN,
    CrossScanSSM,
    LayerNorm2d,
    Linear2d,
    SeqConvBN,
    SeqToBatch,
    encode_direct,
    fold_time,
    init_linears_trunc_normal,
    resolve_dt_rank,
    stem_strides,
    unfold_time,
)
from .registry import build, register_model
from .spike_layers import set_memory_efficient
from .svmamba import SpikingDownsample, SpikingMLP, SpikingStem, SpikingVMambaBase, check_choice
from .vmamba import SS2D

STEMS = ("gelu", "spiking")
FFNS = ("silu", "spiking")
NORMS = ("ln", "bn")
SCAN_INPUTS = ("real", "spike")
GATES = ("mask", "conv")


class ConvLNGELU(nn.Sequential):
    """Conv (with bias, padding 1) -> channels-first LN -> GELU on (N, C, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, stride, 1), LayerNorm2d(out_ch), nn.GELU())


class RealStem(nn.Module):
    """The original stem: two Conv-LN-GELU units, image -> C at 1/patch, on every time step."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        s1, s2 = stem_strides(patch_size)
        self.conv1 = SeqToBatch(ConvLNGELU(in_chans, dim // 2, s1))
        self.conv2 = SeqToBatch(ConvLNGELU(dim // 2, dim, s2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class RealFFN(nn.Module):
    """The original FFN: Conv1x1 (C -> hC) -> SiLU -> Conv1x1 (hC -> C), with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = SeqToBatch(nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, dim, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpikeMamba(nn.Module):
    """s = LIF(Linear(x)); y = LIF(SS2D(SiLU(Conv3x3(s)))); out = y * x (see the module docstring).

    The mixer switches of the ablation ladder (defaults: the original):

    * ``scan_input="spike"``: s feeds a depthwise Conv3x3-BN-LIF whose spikes are the scan's
      input, in place of the dense Conv3x3-SiLU and SS2D's in_proj-DWConv3x3-SiLU.
    * ``gate="conv"``: in_proj also computes a gate g (LIF of a second set of channels) and
      out = out_proj(LIF(N(y)) * g), in place of the spike mask LIF(out_proj(N(y))) on x.
    * ``mixer_norm="bn"``: BN after the scan in place of LN, and in_proj / out_proj as
      Conv1x1-BN in place of Linear layers.
    """

    def __init__(
        self,
        dim: int,
        d_state: int,
        ssm_ratio: float,
        dt_rank,
        lif,
        fix_batch_leak: bool,
        backend,
        scan_input: str = "real",
        gate: str = "mask",
        mixer_norm: str = "ln",
    ):
        super().__init__()
        self.fix_batch_leak, self.scan_input, self.gate = fix_batch_leak, scan_input, gate
        d_inner = int(ssm_ratio * dim)
        scan_width = dim if scan_input == "real" else d_inner  # what s feeds
        self.splits = [scan_width] + ([d_inner] if gate == "conv" else [])
        self.in_proj = projection(dim, sum(self.splits), mixer_norm, bias=True)
        self.snn_in = lif()
        if scan_input == "real":
            self.conv = nn.Conv2d(dim, dim, 3, padding=1)  # dense, the one layer fed by spikes
            self.act = nn.SiLU()
            self.ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, backend=backend)
            if mixer_norm == "bn":
                self.ssm.out_norm = nn.BatchNorm2d(d_inner)
                self.ssm.out_proj = projection(d_inner, dim, mixer_norm, bias=False)
        else:
            self.ssm = SpikeInputScan(dim, d_inner, d_state, dt_rank, lif, mixer_norm, backend)
        self.snn2 = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        h = self.in_proj(fold_time(x))  # (T*B, C, H, W), time-major
        if self.fix_batch_leak:
            s = self.snn_in(unfold_time(h, T))
        else:
            s = unfold_time(self.snn_in(h), T)  # the original: one neuron sequence over T*B samples
        if self.gate == "mask" and self.scan_input == "real":
            y = self.ssm(self.act(self.conv(fold_time(s))))  # the original, through SS2D's forward
            return self.snn2(unfold_time(y, T)) * x
        s, *g = s.split(self.splits, dim=2)
        if self.scan_input == "real":
            ssm = self.ssm
            u = ssm.act(ssm.conv2d(ssm.in_proj(self.act(self.conv(fold_time(s))))))
            y = ssm.out_norm(ssm.ssm(u))
        else:
            y = self.ssm.normed_scan(s)
        if self.gate == "mask":
            return self.snn2(unfold_time(self.ssm.out_proj(y), T)) * x
        return unfold_time(self.ssm.out_proj(fold_time(self.snn2(unfold_time(y, T)) * g[0])), T)


def projection(in_ch: int, out_ch: int, norm: str, bias: bool) -> nn.Module:
    """A 1x1 projection: the original's Linear, or a Conv1x1-BN (``norm="bn"``, as in svmamba)."""
    return Linear2d(in_ch, out_ch, bias=bias) if norm == "ln" else ConvBN(in_ch, out_ch, 1)


class SpikeInputScan(nn.Module):
    """The scan path of ``scan_input="spike"``: u = LIF(BN(DWConv3x3(s))); y = N(scan(u)).

    Holds ``out_proj`` too, as SS2D does, so that both scan paths have the same outer layers.
    """

    def __init__(self, dim: int, d_inner: int, d_state: int, dt_rank, lif, mixer_norm: str, backend):
        super().__init__()
        self.dwconv = SeqConvBN(d_inner, d_inner, 3, groups=d_inner, spike_input=True)
        self.u_lif = lif()
        self.ssm = CrossScanSSM(d_inner, d_state, resolve_dt_rank(dt_rank, dim), backend=backend)
        self.ssm.spike_input = True
        self.out_norm = LayerNorm2d(d_inner) if mixer_norm == "ln" else nn.BatchNorm2d(d_inner)
        self.out_proj = projection(d_inner, dim, mixer_norm, bias=False)

    def normed_scan(self, s: torch.Tensor) -> torch.Tensor:
        """(T, B, C, H, W) spikes -> (T*B, D, H, W): every time step is scanned on its own."""
        u = self.u_lif(self.dwconv(s))
        return self.out_norm(self.ssm(fold_time(u)))


class SpikMambaBlock(nn.Module):
    """x = N(x); x = SpikeMamba(x) + x; x = N(x); x = FFN(x) + x (the residuals start after the norms)."""

    def __init__(self, dim: int, norm: str, ffn: str, lif, **mixer_kwargs):
        super().__init__()
        Norm = LayerNorm2d if norm == "ln" else nn.BatchNorm2d
        self.norm1 = SeqToBatch(Norm(dim))
        self.spikmamba = SpikeMamba(dim, lif=lif, **mixer_kwargs)
        self.norm2 = SeqToBatch(Norm(dim))
        self.ffn = RealFFN(dim, 4 * dim) if ffn == "silu" else SpikingMLP(dim, 4 * dim, lif, "membrane")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = self.spikmamba(x) + x
        x = self.norm2(x)
        return self.ffn(x) + x


class SVMambaPara133(SpikingVMambaBase):
    """The original SVMamba (para133/SNN_Mamba) with its T*B leak fixed by default."""

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
        tau: float = 2.0,
        v_threshold: float = 1.0,
        fix_batch_leak: bool = True,
        stem: str = "gelu",
        ffn: str = "silu",
        norm: str = "ln",
        scan_input: str = "real",
        gate: str = "mask",
        mixer_norm: str = "ln",
        backend: str = "auto",
        memory_efficient: bool = True,
    ):
        super().__init__()
        check_choice("stem", stem, STEMS)
        check_choice("ffn", ffn, FFNS)
        check_choice("norm", norm, NORMS)
        check_choice("scan_input", scan_input, SCAN_INPUTS)
        check_choice("gate", gate, GATES)
        check_choice("mixer_norm", mixer_norm, NORMS)
        self.check_sizes(in_chans, ssm_ratio=ssm_ratio)
        lif = self.setup(
            num_classes, img_size, patch_size, dims, depths, T, backend,
            tau=tau, v_threshold=v_threshold, detach_reset=True,
        )  # fmt: skip
        dims, depths = self.dims, self.depths

        if stem == "gelu":
            self.patch_embed = RealStem(in_chans, dims[0], patch_size)
        else:
            self.patch_embed = SpikingStem(in_chans, dims[0], patch_size, lif, "membrane")
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            layer = nn.Sequential()
            for j in range(depth):
                block = SpikMambaBlock(
                    dims[i],
                    norm,
                    ffn,
                    lif,
                    d_state=d_state,
                    ssm_ratio=ssm_ratio,
                    dt_rank=dt_rank,
                    fix_batch_leak=fix_batch_leak,
                    backend=backend,
                    scan_input=scan_input,
                    gate=gate,
                    mixer_norm=mixer_norm,
                )
                layer.add_module(f"block{j}", block)
            if i + 1 < len(depths):  # the original downsamples at the end of a stage
                if stem == "gelu":
                    down = SeqToBatch(ConvLNGELU(dims[i], dims[i + 1], 2))
                else:
                    down = SpikingDownsample(dims[i], dims[i + 1], lif, "membrane")
                layer.add_module("downsample", down)
            self.layers.append(layer)
        self.num_features = dims[-1]
        self.head = make_classifier(self.num_features, num_classes)
        self._init_weights()
        self.memory_efficient = memory_efficient
        set_memory_efficient(self, memory_efficient)

    def _init_weights(self) -> None:
        # The original: every Linear, the SS2D projections included, trunc_normal(0.02) with zero
        # bias; LayerNorms (1, 0) and convs keep PyTorch's defaults (what the original sets).
        init_linears_trunc_normal(self)
        for m in self.modules():
            if isinstance(m, CrossScanSSM):
                nn.init.trunc_normal_(m.x_proj_weight, std=0.02)
                nn.init.trunc_normal_(m.dt_projs_weight, std=0.02)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The conv that sees the real-valued image."""
        stem = self.patch_embed
        return stem.conv1.module[0] if isinstance(stem, RealStem) else stem.conv1.conv

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last stage's (T, B, C, H', W') stream."""
        x = self.patch_embed(encode_direct(images, self.T))
        for layer in self.layers:
            x = layer(x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(0, 3, 4))  # over T, then space


@register_model
def svmamba_para133(num_classes: int = 1000, **overrides) -> SVMambaPara133:
    """The original SVMamba, 224 px: C 96, depths [1, 2, 4], T 4; 15,135,784 params at 1000 classes."""
    defaults = dict(num_classes=num_classes, img_size=224, patch_size=4, dims=96, depths=(1, 2, 4), T=4)
    return build(SVMambaPara133, defaults, overrides, "svmamba_para133")
