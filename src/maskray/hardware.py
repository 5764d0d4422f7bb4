"""The machine's measured matrix-multiply peak, so that times can be read against it.

Times are machine-specific: the same demo took 12 minutes on one 2-core machine and 22 on another of the same
kind whose bf16 peak was 2.5 times lower. Every timing maskray reports sits beside this measurement, so a user
can scale it to their own machine (time x peak here / peak there, for compute-bound work).
"""

from __future__ import annotations

import platform
import time

import torch

from maskray.distributed import cpu_has_fast_bf16


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``n x n`` matrix products in ``dtype`` on the CPU, with torch's
    current thread count (two warm-up products first)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def measure_peaks(n: int = 2048, repeats: int = 5) -> dict:
    """fp32 and bf16 matmul peaks with what they were measured on: ``{"fp32_gflops", "bf16_gflops",
    "threads", "matrix_side", "bf16_matrix_side", "native_bf16", "processor", "machine"}``. Where the CPU
    emulates bf16 (``--precision auto`` then trains in fp32) its peak is taken on a 512 side: a 2048 product
    took 19 s there, and 7 of them made the measurement longer than a quick demo's training."""
    native = cpu_has_fast_bf16()
    bf16_side = n if native else min(n, 512)
    return {"fp32_gflops": round(matmul_peak_gflops(torch.float32, n, repeats), 1),
            "bf16_gflops": round(matmul_peak_gflops(torch.bfloat16, bf16_side, repeats), 1),
            "threads": torch.get_num_threads(), "matrix_side": n, "bf16_matrix_side": bf16_side,
            "native_bf16": native, "processor": platform.processor() or platform.machine(),
            "machine": platform.machine()}
