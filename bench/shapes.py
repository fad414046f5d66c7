"""The problem sizes the GPU gate and the static compile check share (pytest-benchmark's files keep
their own, smaller smoke shapes).

Kept in one place so that a compile-check figure and a measured time talk about the same launch.
"""

from __future__ import annotations

# LIF: (T, N): T time steps of N neurons (N = 2^24: a batch of feature maps at the targets' size).
LIF_SHAPES = {"T4_N16M": (4, 2**24), "T8_N16M": (8, 2**24), "T16_N16M": (16, 2**24)}
LIF_SMOKE = {"T4_N1k": (4, 1000)}

# SS2D: (batch, D, H, W, N, R).
SS2D_SHAPES = {
    "vmamba_t_stage1": (128, 96, 56, 56, 1, 6),  # VMamba-T stage 1 training batch
    "n16": (32, 96, 28, 28, 16, 6),  # d_state 16 (mamba's default)
}
SS2D_SMOKE = {"smoke": (1, 4, 3, 5, 1, 2)}
# The later stages of the CIFAR-10 model (cifar10_svmamba.yaml: 64 images x T = 4, R = D / 16) and
# VMamba-T's wide-rank stages (ImageNet, batch 128): larger ranks on short maps, compiled by the
# static check (bf16 low rank; not timed by the gate)
SS2D_LATER_STAGES = {
    "cifar_stage2": (256, 192, 8, 8, 1, 12),
    "cifar_stage3": (256, 384, 4, 4, 1, 24),
    "vmamba_t_stage3": (128, 384, 14, 14, 1, 24),
    "vmamba_t_stage4": (128, 768, 7, 7, 1, 48),
}

# Correctness at real shapes on CUDA (the list), plus small shapes that force the
# kernels' multi-chunk / multi-block / many-warp paths when their launchers expose overrides.
SS2D_CHECK_SHAPES = {"stage1_b2": (2, 96, 56, 56, 1, 6), "n16_b1": (1, 32, 28, 28, 16, 6)}
# The later stages' launch policy on a GPU (larger ranks, short maps: bench/NOTES.md, SS2D v2.9),
# checked in bf16 low rank, what the models run
SS2D_LATER_CHECK_SHAPES = {k + "_b2": (2, *shape[1:]) for k, shape in SS2D_LATER_STAGES.items()}
# Maps of one row and one column (issue 10's 1 x 1000 and 1000 x 1): Triton compiles a row length
# of 1 as a constant, which the interpreter never does (they failed to compile before v2.10)
SS2D_EDGE_CHECK_SHAPES = {"row_1x1000": (1, 16, 1, 1000, 1, 2), "column_1000x1": (1, 16, 1000, 1, 1, 2)}
LIF_CHECK_SHAPES = {"T4_N16M": (4, 2**24), "T8_N16M": (8, 2**24)}
