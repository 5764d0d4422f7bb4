"""Independent training jobs of one study, in this process or across forked worker processes.

A study trains many small segmenters that share nothing but their (read-only) data, so ``N`` single-threaded
processes can run ``N`` of them at once, where one process with ``N`` threads splits every small convolution
``N`` ways (the nodule-utility study's results file records its wall and CPU seconds). The workers are forked,
so they read the parent's tensors without copying or pickling them; every job is seeded on its own, so a run's
result does not depend on the worker count or on which worker ran it.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from maskray.errors import MaskrayError

J = TypeVar("J")
R = TypeVar("R")
_WORK: tuple[Callable, Sequence] | None = None  # (fn, jobs) of the pool being run; inherited by the fork


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run(i: int):
    fn, jobs = _WORK
    return fn(jobs[i])


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int = 1, threads: int = 1,
             desc: str = "jobs") -> list[R]:
    """``[fn(job) for job in jobs]`` in order, with a progress bar (in a log file too: a study runs for hours);
    across ``workers`` forked processes of ``threads`` threads each when ``workers > 1``."""
    global _WORK
    if workers < 1:
        raise MaskrayError(f"--workers {workers}: must be at least 1")
    if workers == 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=False)]
    if "fork" not in multiprocessing.get_all_start_methods():
        raise MaskrayError(f"--workers {workers}: needs the fork start method (Linux); use --workers 1 here")
    _WORK = (fn, jobs)
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _start_worker, (threads,)) as pool:
            return list(tqdm(pool.imap(_run, range(len(jobs))), total=len(jobs), desc=desc, disable=False))
    finally:
        _WORK = None
