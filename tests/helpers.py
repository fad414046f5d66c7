"""Comparison helpers shared by the tests (imported as ``from helpers import ...``)."""

import torch


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
