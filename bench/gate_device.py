"""The device's copy bandwidth (read + write bytes / time of ``copy_``), the yardstick for gbps."""

from __future__ import annotations

import torch
from gate import DEVICE, SMOKE, Case, provider, timed_row


def copy_case(n: int) -> dict:
    x = torch.empty(n, device=DEVICE, dtype=torch.float32)
    y = torch.empty_like(x)
    return timed_row(lambda: y.copy_(x), 2 * x.numel() * x.element_size())


@provider("device")
def device_cases(smoke: bool):
    n = 2**16 if SMOKE else 2**28  # 1 GiB
    yield Case(
        "device",
        "torch_copy",
        "check",
        dict(shape=f"{n}", dims=[n], dtype="fp32", mode="copy"),
        lambda: copy_case(n),
        30,
        priority=0,  # the copy bandwidth every target's bytes are read against
    )
