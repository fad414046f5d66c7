"""Helpers shared by the tests (imported as ``from helpers import ...``): comparisons, and one table
of tiny versions of every registered model with the inputs to feed them."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """The bench/ script ``name`` (no .py) as a module: bench/ is no package. Registered in
    sys.modules, as dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative error in the max norm, computed in float64 (fla's convention)."""
    a, e = actual.double(), expected.double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()


def assert_close_rel(actual, expected, tol, name=""):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values (an element left unwritten?)"
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# Tiny versions of every registered model: (img_size, overrides). A test fails until a newly
# registered model has its row (tests/test_models.py).
SMALL = {
    "svmamba_t": (32, dict(dims=8, depths=(1, 1, 1), T=2)),
    "svmamba_cifar": (16, dict(dims=8, depths=(1, 1, 1), T=2, d_state=2)),
    "svmamba_para133": (32, dict(dims=8, depths=(1, 1), T=2, v_threshold=0.02)),  # fires at its init
    # 64 px: the last stage must be larger than 1x1, or A (which acts from the 2nd position on) gets no gradient.
    "vmamba_t": (64, dict(dims=8, depths=(1, 1, 1, 1), drop_path_rate=0.0)),
    "vmamba_cifar": (16, dict(dims=8, depths=(1, 1, 1), d_state=2, drop_path_rate=0.0)),
    # QKFormer's SSA fires only when Q K^T V * 0.125 reaches 0.5: tiny widths need enough tokens
    # (stage 3 at 8x8) and wide heads, or the attention LIF stays silent at init.
    "qkformer_cifar": (32, dict(embed_dim=32, num_heads=1, depths=(1, 1, 1), T=2)),
    "qkformer_10_384": (128, dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), T=2)),
    "qkformer_10_512": (128, dict(embed_dim=48, num_heads=3, depths=(1, 1, 1), T=2)),
    "qkformer_10_768": (128, dict(embed_dim=32, num_heads=2, depths=(1, 0, 1), T=3)),
}


def tiny_model(name: str, num_classes: int = 5, backend: str = "torch", **extra):
    """(model, img_size): the SMALL version of a registered model."""
    import svm_models

    img, overrides = SMALL[name]
    model = svm_models.create_model(
        name, num_classes=num_classes, img_size=img, backend=backend, **{**overrides, **extra}
    )
    return model, img


def images(batch: int, img: int, seed: int = 1, chans: int = 3) -> torch.Tensor:
    """A reproducible batch of random images."""
    return torch.randn(batch, chans, img, img, generator=torch.Generator().manual_seed(seed))
