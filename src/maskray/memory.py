"""Keep freed memory in the process, so that each step's tensors do not come back as fresh pages.

PyTorch's CPU tensors come from glibc's ``malloc``, which serves every block over its mmap threshold (at most
32 MiB, 128 KiB at start) with fresh pages from the kernel, returns them on ``free``, and trims the heap's free top.
A training or sampling step allocates the same large activations again and again, so every step pays the kernel
to find and zero each 4 KiB page anew: about 56,000 page faults per stage-2 training step at 64 px (batch 32) and
600,000 at 128 px, which cost 14 to 27% of the step (``python benchmarks/bench_speed.py --allocator``,
docs/speed.md). Two ``mallopt`` settings turn that off: ``M_MMAP_MAX = 0`` serves every block from the heap and
``M_TRIM_THRESHOLD`` at its largest keeps freed heap memory for the next step. The cost: the process keeps its
peak memory until it exits, and fragmentation raises the peak by a few percent (measured 5 to 20%).

Applied by training, generation and ``serve`` (each records what it did in ``run.json``); the environment variable
``MASKRAY_MALLOC=system`` leaves glibc's defaults. On a C library other than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

from maskray.errors import MaskrayError

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KEPT = "glibc heap, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"


@functools.cache
def keep_freed_memory() -> str:
    """Set glibc's allocator to keep freed memory (once per process); returns what the allocator now does, for
    the output's record. ``MASKRAY_MALLOC`` other than unset, empty or ``system`` is an error."""
    choice = os.environ.get("MASKRAY_MALLOC", "").strip().lower()
    if choice == "system":
        return "system defaults (MASKRAY_MALLOC=system)"
    if choice:
        raise MaskrayError(f"MASKRAY_MALLOC={choice!r}: set it to 'system' (glibc's defaults) or leave it unset")
    if not sys.platform.startswith("linux"):
        return "system defaults (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return "system defaults (not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) != 1:
        return "system defaults (mallopt refused)"
    gnu.restype = ctypes.c_char_p
    return f"{KEPT}, glibc {gnu().decode()}"
