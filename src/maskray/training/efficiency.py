"""Model FLOPs utilisation (MFU) during training: achieved FLOP/s over the measured matrix-multiply peak.

After nanoGPT's ``estimate_mfu``, with the FLOPs counted instead of estimated: once at the start of a run, one
training step of one image (forward through base and ControlNet, loss, backward) runs under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matmul and convolution FLOPs that step actually does
(a frozen base is back-propagated through but gets no weight gradients, and the count knows that). The peak is a
measured ``n x n`` matrix product in the run's precision (``maskray.hardware`` on the CPU; the same measurement on
a GPU). ``MFU = images/s x FLOPs per image / (peak x processes)``; the log writes it as the column ``mfu``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskray.hardware import matmul_peak_gflops

PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_flops_per_image(model: nn.Module, x0: torch.Tensor, cond: torch.Tensor | None) -> float:
    """FLOPs of one training step for one image: ``model(noisy, t, cond)`` forward, a squared-error loss, and the
    backward pass, with ``x0`` float ``(1, C, H, W)`` and ``cond`` ``(1, K, H, W)`` or ``None``. Gradients the
    count leaves behind are cleared (it runs before the first optimizer step)."""
    t = torch.full((x0.shape[0],), 500, dtype=torch.long, device=x0.device)
    with FlopCounterMode(display=False) as counter:
        out = model(x0, t, cond)
        out.float().pow(2).mean().backward()
    for p in model.parameters():
        p.grad = None
    return counter.get_total_flops() / x0.shape[0]


def matmul_peak_flops(precision: str, device: torch.device) -> float:
    """Measured matrix-multiply FLOP/s in the run's precision on ``device`` (one process's share)."""
    dtype = PRECISION_DTYPES[precision]
    if device.type != "cuda":
        return matmul_peak_gflops(dtype, n=1024, repeats=3) * 1e9
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


@dataclass(frozen=True)
class Mfu:
    """``fraction(images_per_s)``: the fraction of ``processes`` x peak that ``images_per_s`` achieves."""

    flops_per_image: float
    peak_flops: float
    processes: int = 1

    def fraction(self, images_per_s: float) -> float:
        return images_per_s * self.flops_per_image / (self.peak_flops * self.processes)
