"""VMamba (v2), the non-spiking baseline: ``vmamba_t`` is the published VMamba-T "s1l8".

VMamba-T[s1l8] (VMamba v2 README, config ``vmambav2v_tiny_224.yaml``): dims 96, depths
[2, 2, 8, 2], d_state 1, ssm_ratio 1.0, dt_rank "auto", mlp_ratio 4, forward type "v05_noz"
(no z gate), channels-first LayerNorm everywhere (the whole network runs in NCHW), 3x3
depthwise conv without bias, patch embedding "v2" and downsampling "v3", drop path 0.2.
30,249,064 parameters at 1000 classes.

The selective scan is svm_kernels' fused low-rank four-direction scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import VisionModel, make_classifier
from .layers import (
    CrossScanSSM,
    DropPath,
    LayerNorm2d,
    Linear2d,
    init_linears_trunc_normal,
    resolve_dt_rank,
    stem_strides,
)
from .registry import build, register_model


class PatchEmbedV2(nn.Sequential):
    """Two overlapping 3x3 convs (with bias), LN2d and GELU between them: image -> C at 1/patch."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        s1, s2 = stem_strides(patch_size)
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, 3, s1, 1),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, s2, 1),
            LayerNorm2d(dim),
        )


class DownsampleV3(nn.Sequential):
    """3x3 stride-2 conv (with bias) C -> C', then LN2d."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(nn.Conv2d(dim, out_dim, 3, 2, 1), LayerNorm2d(out_dim))


class SS2D(nn.Module):
    """VMamba's SS2D, forward type "v05_noz": in_proj -> DWConv3x3 -> SiLU -> scan -> LN -> out_proj."""

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank="auto",
        d_conv: int = 3,
        backend: str = "auto",
    ):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False
        )
        self.act = nn.SiLU()
        self.ssm = CrossScanSSM(d_inner, d_state, resolve_dt_rank(dt_rank, dim), backend=backend)
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.act(self.conv2d(self.in_proj(x)))
        y = self.ssm(u)  # fp32 for half u (VMamba's "oflex"): normalise before casting back
        return self.out_proj(self.out_norm(y).to(u.dtype))


class Mlp(nn.Sequential):
    """fc1 (C -> hC) -> GELU -> fc2 (hC -> C), position-wise, with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)


class VSSBlock(nn.Module):
    """Pre-norm residual block: x + drop_path(SS2D(LN(x))), then x + drop_path(MLP(LN(x)))."""

    def __init__(self, dim: int, drop_path: float, mlp_ratio: float, **ss2d_kwargs):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VMamba(VisionModel):
    """VMamba v2 (channels-first): patch embed, stages of VSS blocks with downsampling, LN head."""

    T = 1
    spiking = False
    classifier_name = "classifier.head"

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 4,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 8, 2),
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank="auto",
        d_conv: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        backend: str = "auto",
    ):
        super().__init__()
        self.check_sizes(in_chans, mlp_ratio=mlp_ratio, ssm_ratio=ssm_ratio)
        depths, dims = self.check_stages(depths, dims)
        self.num_classes, self.img_size, self.patch_size = num_classes, img_size, patch_size
        self.dims, self.depths, self.backend = dims, depths, backend
        self.patch_embed = PatchEmbedV2(in_chans, dims[0], patch_size)
        if not 0.0 <= drop_path_rate <= 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1], got {drop_path_rate!r}")
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth rule
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = nn.Sequential(
                *[
                    VSSBlock(
                        dims[i],
                        dpr[sum(depths[:i]) + j],
                        mlp_ratio,
                        d_state=d_state,
                        ssm_ratio=ssm_ratio,
                        dt_rank=dt_rank,
                        d_conv=d_conv,
                        backend=backend,
                    )
                    for j in range(depth)
                ]
            )
            downsample = DownsampleV3(dims[i], dims[i + 1]) if i + 1 < len(depths) else nn.Identity()
            self.layers.append(nn.Sequential(blocks, downsample))
        self.num_features = dims[-1]
        self.classifier = nn.Sequential()
        self.classifier.norm = LayerNorm2d(dims[-1])
        self.classifier.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier.flatten = nn.Flatten(1)
        self.classifier.head = make_classifier(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # VMamba: linears (1x1 Linear2d included) trunc_normal(0.02); LayerNorms keep PyTorch's
        # (1, 0), which is what VMamba sets; convs and the scan parameters keep their own init
        # (CrossScanSSM already did VMamba's).
        init_linears_trunc_normal(self)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The conv that sees the real-valued image."""
        return self.patch_embed[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, or (B, T, C, H, W) event frames, which are averaged over T first
        (one pass over the mean frame: the ANN baseline's cost stays that of one image)."""
        if x.dim() == 5:
            x = x.mean(dim=1)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier.flatten(self.classifier.avgpool(self.classifier.norm(features)))


@register_model
def vmamba_t(num_classes: int = 1000, **overrides) -> VMamba:
    """VMamba-T[s1l8], 224 px: 30,249,064 parameters, 4.9 GFLOPs (published)."""
    defaults = dict(
        num_classes=num_classes,
        img_size=224,
        patch_size=4,
        dims=96,
        depths=(2, 2, 8, 2),
        d_state=1,
        ssm_ratio=1.0,
        mlp_ratio=4.0,
        drop_path_rate=0.2,
    )
    return build(VMamba, defaults, overrides, "vmamba_t")


@register_model
def vmamba_cifar(num_classes: int = 1000, **overrides) -> VMamba:
    """A small 32 px VMamba with SVMamba-CIFAR's layout (patch 2, widths 96/192/384, depths 1/2/4)."""
    defaults = dict(
        num_classes=num_classes,
        img_size=32,
        patch_size=2,
        dims=96,
        depths=(1, 2, 4),
        d_state=1,
        ssm_ratio=1.0,
        mlp_ratio=4.0,
        drop_path_rate=0.1,
    )
    return build(VMamba, defaults, overrides, "vmamba_cifar")
