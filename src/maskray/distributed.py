"""Several processes (``accelerate launch --num_processes N``): which process this is, and how the processes agree.

One process, launched plainly, is a world of one: every helper here then does what a single run would do. Under
``accelerate launch`` (one process per GPU, or ``--cpu`` processes on the gloo backend) accelerate's
``PartialState`` holds the rank, the world size and the device; the helpers below add the two things maskray's
commands need on top of it: work that only the main process may do (creating or replacing an output folder) with
its error reaching every process instead of leaving the others waiting at a barrier, and a barrier.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env

from maskray.errors import MaskrayError

T = TypeVar("T")


def state() -> PartialState:
    """The process's accelerate state (starts the process group on the first call under ``accelerate launch``).

    Without a GPU (or with ``ACCELERATE_USE_CPU=1``) several processes join on the CPU's gloo backend: accelerate's
    ``AcceleratorState`` reads that flag but its ``PartialState`` does not, and without it a torchrun-started CPU
    process would take itself for a world of one."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def world() -> tuple[int, int]:
    """``(rank, number of processes)``."""
    st = state()
    return st.process_index, st.num_processes


def device() -> torch.device:
    """This process's device: its own GPU under a multi-GPU launch, else CUDA if visible, else the CPU."""
    return state().device


def barrier() -> None:
    state().wait_for_everyone()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process only, then wait for it on every process.

    A ``MaskrayError`` raised by ``fn`` is raised on every process (with the same message), so a refused output
    folder stops the whole launch with one line instead of leaving the other processes at the barrier. Returns
    ``fn``'s result on the main process and ``None`` on the others."""
    st = state()
    if st.num_processes == 1:
        return fn()
    result, message = None, [None]
    if st.is_main_process:
        try:
            result = fn()
        except MaskrayError as e:
            message = [str(e)]
    broadcast_object_list(message, from_process=0)
    if message[0] is not None:
        raise MaskrayError(message[0])
    return result
