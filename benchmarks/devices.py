"""What every benchmark needs of the device it times: a clock that counts queued CUDA work, and the device named
for the printed figures."""
from __future__ import annotations

import os
import platform

import torch

__all__ = ["sync", "device_name"]


def sync(device) -> None:
    """Wait for queued CUDA work so the clock read next counts it (no-op off CUDA)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    """``device`` with the GPU's name, or the CPU's and the number of cores."""
    if str(device).startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"
