"""QKFormer, the spiking-transformer baseline (hierarchical spiking transformer, HST).

Three stages at widths E/4, E/2, E: SPEDS patch embeddings (conv-BN-LIF units with a 1x1 conv
"deformed shortcut"), Q-K token attention (QKTA) blocks in stages 1 and 2, spiking
self-attention (SSA) blocks in stage 3, SEW residuals (spikes added to spikes), head = mean
over space and T -> Linear. LIF: tau 2, hard reset to 0, detach_reset, sigmoid surrogate
(alpha 4); the attention LIFs fire at 0.5.

Layouts: "cifar" (HST-4-384: depths 1/1/2, 8 heads, stages at 32/16/8 px for 32 px input) and
"imagenet" (HST-10-*: depths 1/2/7, max-pooled patch embeddings, stages at 1/4, 1/8, 1/16).

Spike inputs: the convs after a LIF (SPEDS main paths, the attention projections, fc2) receive
spikes; q/k/v, fc1 and the stage entries read the SEW stream (spike counts) and take the plain
path. ``memory_efficient=True`` (default) saves the former as bits for the backward and
recomputes every BN input (:mod:`svm_models.spike_layers`); results are unchanged.

Difference from the original code, on purpose: the original SSA runs its last LIF on the
(T*B)-flattened tensor, so membrane potential flows from one sample to the next; here every LIF
integrates over T only, and each forward starts from v = 0. Parameter counts are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from svm_kernels.utils import is_int

from .base import VisionModel, make_classifier
from .layers import SeqConvBN, encode_direct, init_linears_trunc_normal, make_lif
from .registry import build, register_model
from .spike_layers import set_memory_efficient, spike_mul

LAYOUTS = ("cifar", "imagenet")
LIFFactory = Callable[[], nn.Module]


class ConvBNLIF(nn.Module):
    """Conv (-> BN -> optional MaxPool) on the folded batch, then a LIF over T."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        lif: LIFFactory,
        stride: int = 1,
        bias: bool = False,
        pool: bool = False,
        spike_input: bool = False,
    ):
        super().__init__()
        self.conv_bn = SeqConvBN(
            in_ch, out_ch, kernel_size, stride, bias=bias, pool=pool, spike_input=spike_input
        )
        self.lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.conv_bn(x))


class PatchEmbedInit(nn.Module):
    """SPEDS stem, image -> E (all convs without bias); main path + 1x1-conv shortcut, added."""

    def __init__(self, in_chans: int, dim: int, layout: str, lif: LIFFactory):
        super().__init__()
        imagenet = layout == "imagenet"
        self.proj = ConvBNLIF(in_chans, dim // 2, 3, lif, pool=imagenet)
        self.proj1 = ConvBNLIF(dim // 2, dim, 3, lif, pool=imagenet, spike_input=True)
        # ImageNet adds a third conv at the reduced (1/4) resolution.
        self.proj2 = ConvBNLIF(dim, dim, 3, lif, spike_input=True) if imagenet else nn.Identity()
        self.shortcut = ConvBNLIF(dim // 2, dim, 1, lif, stride=2 if imagenet else 1, spike_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.proj(x)
        return self.proj2(self.proj1(a)) + self.shortcut(a)


class PatchEmbedStage(nn.Module):
    """SPEDS between stages, E/2 -> E at half the resolution; main path + strided 1x1 shortcut."""

    def __init__(self, in_dim: int, dim: int, layout: str, lif: LIFFactory):
        super().__init__()
        imagenet = layout == "imagenet"
        # Both layouts pool once on the main path: after the first conv (ImageNet) or the second (CIFAR).
        self.proj3 = ConvBNLIF(in_dim, dim, 3, lif, pool=imagenet)
        self.proj4 = ConvBNLIF(dim, dim, 3, lif, pool=not imagenet, spike_input=True)
        self.shortcut = ConvBNLIF(in_dim, dim, 1, lif, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj4(self.proj3(x)) + self.shortcut(x)


class TokenQKAttention(nn.Module):
    """QKTA: a binary per-head token mask from Q (summed over the head's channels) selects K."""

    def __init__(self, dim: int, num_heads: int, lif: LIFFactory, attn_lif: LIFFactory):
        super().__init__()
        self.num_heads = num_heads
        self.q = ConvBNLIF(dim, dim, 1, lif)
        self.k = ConvBNLIF(dim, dim, 1, lif)
        self.attn_lif = attn_lif()
        self.proj = ConvBNLIF(dim, dim, 1, lif, bias=True, spike_input=True)
        self.memory_efficient = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, x.shape[2] // self.num_heads)
        q = self.q(x).unflatten(2, heads)  # (T, B, h, C/h, H, W)
        k = self.k(x).unflatten(2, heads)
        token_mask = self.attn_lif(q.sum(dim=3, keepdim=True))  # (T, B, h, 1, H, W)
        return self.proj(spike_mul(token_mask, k, self.memory_efficient).flatten(2, 3))


class SpikingSelfAttention(nn.Module):
    """SSA (Spikformer): Q (K^T V) * 0.125 over binary Q, K, V, no softmax, then a LIF."""

    scale = 0.125  # fixed in the original, whatever the head width

    def __init__(self, dim: int, num_heads: int, lif: LIFFactory, attn_lif: LIFFactory):
        super().__init__()
        self.num_heads = num_heads
        self.q = ConvBNLIF(dim, dim, 1, lif)
        self.k = ConvBNLIF(dim, dim, 1, lif)
        self.v = ConvBNLIF(dim, dim, 1, lif)
        self.attn_lif = attn_lif()
        self.proj = ConvBNLIF(dim, dim, 1, lif, bias=True, spike_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        heads = (self.num_heads, shape[2] // self.num_heads)
        # (T, B, h, C/h, N): the transposes of the usual (N, C/h) per-head Q, K, V.
        q, k, v = (f(x).flatten(3).unflatten(2, heads) for f in (self.q, self.k, self.v))
        kv = k @ v.transpose(-1, -2)  # K^T V, (C/h, C/h) per head: linear in the token count
        y = (kv.transpose(-1, -2) @ q) * self.scale  # (Q K^T V)^T, (C/h, N)
        return self.proj(self.attn_lif(y.reshape(shape)))


class SpikingMLP(nn.Module):
    """Conv1x1 (C -> hC, bias) -> BN -> LIF -> Conv1x1 (hC -> C, bias) -> BN -> LIF."""

    def __init__(self, dim: int, hidden: int, lif: LIFFactory):
        super().__init__()
        self.fc1 = ConvBNLIF(dim, hidden, 1, lif, bias=True)
        self.fc2 = ConvBNLIF(hidden, dim, 1, lif, bias=True, spike_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class SpikingTransformerBlock(nn.Module):
    """SEW residual block: x = x + Attention(x); x = x + MLP(x)."""

    def __init__(self, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class QKFormer(VisionModel):
    """Hierarchical spiking transformer: QKTA stages 1-2, SSA stage 3, SPEDS patch embeddings."""

    spiking = True

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        embed_dim: int = 768,
        depths: Sequence[int] = (1, 2, 7),
        num_heads: int = 12,
        T: int = 4,
        layout: str = "imagenet",
        mlp_ratio: float = 4.0,
        tau: float = 2.0,
        backend: str = "auto",
        memory_efficient: bool = True,
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        T = self.check_time_steps(T)
        self.check_sizes(in_chans, mlp_ratio=mlp_ratio)
        depths, _ = self.check_stages(depths, num_stages=3)
        dims = [embed_dim // 4, embed_dim // 2, embed_dim]
        if not is_int(num_heads) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if embed_dim % 8 or any(d % num_heads for d in dims):
            raise ValueError(
                f"num_heads={num_heads} must divide every stage width {dims} (embed_dim / 4 even)"
            )
        self.num_classes, self.img_size, self.layout = num_classes, img_size, layout
        self.dims, self.depths, self.T, self.backend = dims, depths, T, backend
        lif = partial(make_lif, backend=backend, tau=tau, detach_reset=True)
        attn_lif = partial(make_lif, backend=backend, tau=tau, v_threshold=0.5, detach_reset=True)

        def blocks(attn_cls, dim, depth):
            def block():
                return SpikingTransformerBlock(
                    attn_cls(dim, num_heads, lif, attn_lif), SpikingMLP(dim, int(dim * mlp_ratio), lif)
                )

            return nn.Sequential(*[block() for _ in range(depth)])

        self.patch_embed1 = PatchEmbedInit(in_chans, dims[0], layout, lif)
        self.stage1 = blocks(TokenQKAttention, dims[0], depths[0])
        self.patch_embed2 = PatchEmbedStage(dims[0], dims[1], layout, lif)
        self.stage2 = blocks(TokenQKAttention, dims[1], depths[1])
        self.patch_embed3 = PatchEmbedStage(dims[1], dims[2], layout, lif)
        self.stage3 = blocks(SpikingSelfAttention, dims[2], depths[2])
        self.num_features = embed_dim
        self.head = make_classifier(embed_dim, num_classes)
        init_linears_trunc_normal(self)  # only the head: convs and BNs keep PyTorch's defaults
        self.memory_efficient = memory_efficient
        set_memory_efficient(self, memory_efficient)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The conv that sees the real-valued image."""
        return self.patch_embed1.proj.conv_bn.conv

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> stage 3's (T, B, E, H', W') spike counts."""
        x = encode_direct(images, self.T)
        for name in ("patch_embed1", "stage1", "patch_embed2", "stage2", "patch_embed3", "stage3"):
            x = getattr(self, name)(x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        # over T and space: the logits are the mean over T of the per-step logits (a linear head)
        return features.mean(dim=(0, 3, 4))


def _qkformer(name: str, defaults: dict, num_classes: int, overrides: dict) -> QKFormer:
    return build(QKFormer, {**defaults, "num_classes": num_classes}, overrides, name)


@register_model
def qkformer_cifar(num_classes: int = 1000, **overrides) -> QKFormer:
    """HST-4-384 for 32 px CIFAR: 6,740,884 params at 100 classes, 6,706,234 at 10 (published)."""
    defaults = dict(img_size=32, embed_dim=384, depths=(1, 1, 2), num_heads=8, T=4, layout="cifar")
    return _qkformer("qkformer_cifar", defaults, num_classes, overrides)


@register_model
def qkformer_10_384(num_classes: int = 1000, **overrides) -> QKFormer:
    """HST-10-384 (ImageNet, 224 px): 16,473,688 params (published 16.47M)."""
    defaults = dict(img_size=224, embed_dim=384, depths=(1, 2, 7), num_heads=6, T=4, layout="imagenet")
    return _qkformer("qkformer_10_384", defaults, num_classes, overrides)


@register_model
def qkformer_10_512(num_classes: int = 1000, **overrides) -> QKFormer:
    """HST-10-512 (ImageNet, 224 px): 29,079,336 params (published 29.08M)."""
    defaults = dict(img_size=224, embed_dim=512, depths=(1, 2, 7), num_heads=8, T=4, layout="imagenet")
    return _qkformer("qkformer_10_512", defaults, num_classes, overrides)


@register_model
def qkformer_10_768(num_classes: int = 1000, **overrides) -> QKFormer:
    """HST-10-768 (ImageNet, 224 px): 64,962,760 params (published 64.96M)."""
    defaults = dict(img_size=224, embed_dim=768, depths=(1, 2, 7), num_heads=12, T=4, layout="imagenet")
    return _qkformer("qkformer_10_768", defaults, num_classes, overrides)
