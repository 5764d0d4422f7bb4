"""Where a run computes: the device (``--device``, every command), its precision, and several processes
(``accelerate launch --num_processes N``): which process this is, and how the processes agree.

``--device auto`` (the default) is the process's own GPU under a multi-GPU launch, else CUDA when visible, else
the CPU (Apple's MPS only when asked for; untested here); ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` ask for one,
and asking for one that is not there is a one-line error. ``--precision auto`` resolves per device
(:func:`resolve_precision`).

One process, launched plainly, is a world of one: every helper here then does what a single run would do. Under
``accelerate launch`` (one process per GPU, or ``--cpu`` processes on the gloo backend) accelerate's
``PartialState`` holds the rank, the world size and the device; the helpers below add the two things maskray's
commands need on top of it: work that only the main process may do (creating or replacing an output folder) with
its error reaching every process instead of leaving the others waiting at a barrier, and a barrier.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env

from maskray.errors import MaskrayError

T = TypeVar("T")

DEVICE_HELP = "where to compute: auto (a visible GPU, else the CPU), cpu, cuda, cuda:N or mps"
_chosen = {"device": "auto"}


def choose_device(name: str) -> None:
    """Set this process's device from ``--device`` before anything computes (the CLI calls it once)."""
    name = name.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise MaskrayError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise MaskrayError(f"--device {name}: no CUDA GPU is visible (torch {torch.__version__} is {build})")
        if index:
            if int(index) >= torch.cuda.device_count():
                raise MaskrayError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
            torch.cuda.set_device(int(index))
    if kind == "mps" and not torch.backends.mps.is_available():
        raise MaskrayError(f"--device {name}: MPS is not available on this machine")
    if kind == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # read by accelerate's Accelerator and by state() below
    _chosen["device"] = kind


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (oneDNN's own test: AVX-512 or AMX on x86, BF16 on Arm).

    Without it torch emulates bf16 and autocast is slower, not faster: measured on a 2-core AMD EPYC with AVX2
    only, one thread, a 512 x 512 matmul took 204 ms in bf16 against 5.4 ms in fp32 and a 3 x 3 convolution 559 ms
    against 19 ms (results/cpu_precision.json has whole steps); on the machine with native bf16 behind the
    project's other figures the segmenter ran 1.2x faster in bf16 than in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> the precision this device trains and samples in; any other value is kept."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "no"
    return "bf16" if cpu_has_fast_bf16() else "no"


def bf16_autocast_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is faster than fp32 on ``device`` (a CUDA GPU with bf16, Ampere and later; a CPU
    with native bf16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (``None``: full precision)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def state() -> PartialState:
    """The process's accelerate state (starts the process group on the first call under ``accelerate launch``).

    Without a GPU (or with ``ACCELERATE_USE_CPU=1``) several processes join on the CPU's gloo backend: accelerate's
    ``AcceleratorState`` reads that flag but its ``PartialState`` does not, and without it a torchrun-started CPU
    process would take itself for a world of one."""
    cpu = _chosen["device"] == "cpu" or (_chosen["device"] == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or cpu)


def world() -> tuple[int, int]:
    """``(rank, number of processes)``."""
    st = state()
    return st.process_index, st.num_processes


def device() -> torch.device:
    """This process's device (:func:`choose_device`): its own GPU under a multi-GPU launch, else CUDA if visible,
    else the CPU."""
    if _chosen["device"] == "cpu":
        return torch.device("cpu")
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
