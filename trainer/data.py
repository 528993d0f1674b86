"""The stream's batches as torch tensors on the training device (the client itself needs no torch)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from synth_server.protocol import INT16_SCALE


def stems_to_torch(stems: np.ndarray, device="cpu") -> torch.Tensor:
    """Wire stems ``(batch, stems, window)`` -> float32 torch tensor on ``device``.

    The wire array travels in its wire dtype (half the bytes for float16/int16) and is cast on
    the device; on CUDA it is staged in pinned memory and copied without blocking.
    """
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only buffers are never written
        raw = torch.from_numpy(stems)
    if device.type == "cuda":
        raw = raw.pin_memory().to(device, non_blocking=True)
    else:
        raw = raw.to(device, copy=True)
    if raw.dtype == torch.int16:
        return raw.float().mul_(1.0 / INT16_SCALE)
    return raw.float()
