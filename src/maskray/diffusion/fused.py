"""Fused GroupNorm + SiLU on the CPU, for sampling and training: maskray's one hand-written kernel, and why.

A denoising step of the default network spent about a quarter of its time in GroupNorm and SiLU (``python
benchmarks/bench_speed.py --profile``): PyTorch runs them as two kernels, four passes over the activations, and
its channels_last bf16 GroupNorm slows sharply when a group's channel count is not a multiple of the vector width
(12 channels per group: 5x slower than the fused kernel, in an isolated timing). ``kernels/group_norm_silu.cpp`` does
both in one read for the statistics and one read-write from cache, takes the ResNet block's time-embedding addition
into the norm, and writes the SiLU's arithmetic out in AVX-512 vectors where the CPU has them (a plain C++ path
elsewhere, built and tested here too: :func:`portable_kernel_ops`). It is built on first use with torch's C++
extension loader (about 10 s with g++; cached per machine and source) and used only where it applies: a bf16
channels_last tensor on the CPU, with its own backward pass under autograd (training). Anywhere else, and on a
machine where it cannot be built, the blocks run diffusers' own code; :func:`prepare_for_sampling` says which ran,
for the output's record. Figures: ``python benchmarks/bench_kernels.py`` and ``benchmarks/bench_fused_generate.py``
(docs/speed.md).

The fused ResNet block reproduces diffusers' ``ResnetBlock2D.forward`` for the configuration maskray builds (time
embedding added before the second norm, no resampling inside the block, dropout off in eval) and falls back to
it otherwise; the result differs from eager bf16 only by rounding (one bf16 rounding instead of two).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import sys
import types
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


KERNEL_SOURCE = Path(__file__).parent / "kernels" / "group_norm_silu.cpp"
PYTORCH_KERNELS = "pytorch"
FUSED_KERNELS = "fused group_norm_silu"


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor() + platform.machine()


def _build(portable: bool) -> None:
    """Build (or load from torch's extension cache) the kernel library; ``portable`` builds the plain-C++ path
    under its own operator namespace (``maskray_kernels_portable``), for tests on machines with AVX-512."""
    from torch.utils.cpp_extension import load
    flags = ["-DMASKRAY_PORTABLE_KERNEL", "-DMASKRAY_KERNEL_NAMESPACE=maskray_kernels_portable"] if portable else []
    digest = hashlib.sha256(KERNEL_SOURCE.read_bytes() + _cpu_signature().encode() + torch.__version__.encode()
                            + " ".join(flags).encode()).hexdigest()[:12]
    load(name=f"maskray_kernels_{digest}", sources=[str(KERNEL_SOURCE)],
         extra_cflags=["-O3", "-march=native", *flags], is_python_module=False, verbose=False)


@functools.cache
def kernel_problem() -> str | None:
    """``None`` once the fused kernel is loaded (built on first call), else one line saying why it cannot be."""
    if not sys.platform.startswith("linux"):
        return "the fused CPU kernel is built for Linux only"
    try:
        _build(portable=False)
        torch.ops.maskray_kernels.group_norm_silu  # noqa: B018 (registered by the library just loaded)
    except Exception as err:  # no compiler, no ninja, no headers: the eager path still works
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"could not build the fused CPU kernel ({type(err).__name__}: {first[:200]})"
    return None


@functools.cache
def portable_kernel_ops():
    """The kernel's plain-C++ path (``torch.ops.maskray_kernels_portable``), built on first call: what a CPU
    without AVX-512 runs, kept here so that both paths can be checked on one machine."""
    _build(portable=True)
    return torch.ops.maskray_kernels_portable


def _applies(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def _kernel_operands(x, weight, bias, add) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's fp32 ``(2, C)`` weight-and-bias and ``(N, C)`` added term (empty when there is none)."""
    extra = add.float().contiguous() if add is not None else x.new_empty(0, dtype=torch.float32)
    return torch.stack([weight.float(), bias.float()]), extra


class _GroupNormSiLU(torch.autograd.Function):
    """The fused kernel with its gradient (training): the backward pass recomputes the activation from the input
    and the saved per-group statistics instead of keeping the normalised tensor."""

    @staticmethod
    def forward(ctx, x, weight, bias, add, groups: int, eps: float, silu: bool):
        affine, extra = _kernel_operands(x, weight, bias, add)
        y, means, rstds = torch.ops.maskray_kernels.group_norm_silu(x, affine, extra, groups, eps, silu)
        ctx.save_for_backward(x, affine, extra, means, rstds)
        ctx.groups, ctx.silu, ctx.param_dtype = groups, silu, weight.dtype
        ctx.add_dtype = add.dtype if add is not None else None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, affine, extra, means, rstds = ctx.saved_tensors
        dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dx, dweight, dbias, dadd = torch.ops.maskray_kernels.group_norm_silu_backward(
            dy, x, affine, extra, means, rstds, ctx.groups, ctx.silu)
        return (dx, dweight.sum(0).to(ctx.param_dtype), dbias.sum(0).to(ctx.param_dtype),
                dadd.to(ctx.add_dtype) if ctx.add_dtype is not None else None, None, None, None)


def group_norm_silu(norm: nn.GroupNorm, x: torch.Tensor, add: torch.Tensor | None = None,
                    silu: bool = True) -> torch.Tensor:
    """``silu(norm(x + add[:, :, None, None]))`` (``silu=False``: the norm alone); ``x`` bf16 ``(N, C, H, W)``
    channels_last on the CPU, ``add`` ``(N, C)`` or ``None``. Fused when the kernel is loaded and applies, with
    its own gradient when autograd is on."""
    if _applies(x) and norm.affine and kernel_problem() is None:
        if torch.is_grad_enabled():
            return _GroupNormSiLU.apply(x, norm.weight, norm.bias, add, norm.num_groups, norm.eps, silu)
        affine, extra = _kernel_operands(x, norm.weight, norm.bias, add)
        return torch.ops.maskray_kernels.group_norm_silu(x, affine, extra, norm.num_groups, norm.eps, silu)[0]
    h = x + add[:, :, None, None] if add is not None else x
    h = norm(h)
    return nn.functional.silu(h) if silu else h


def _fusable(block: ResnetBlock2D) -> bool:
    # a VAE decoder's blocks say "group" but have no time embedding: diffusers then runs the "default" code
    plain_norm = block.time_embedding_norm == "default" or (block.time_embedding_norm != "scale_shift"
                                                            and block.time_emb_proj is None)
    return (plain_norm and block.upsample is None and block.downsample is None
            and isinstance(block.norm1, nn.GroupNorm) and isinstance(block.norm2, nn.GroupNorm)
            and isinstance(block.nonlinearity, nn.SiLU))


def _fused_resnet_forward(self: ResnetBlock2D, input_tensor: torch.Tensor, temb: torch.Tensor | None,
                          *args, **kwargs) -> torch.Tensor:
    if not _applies(input_tensor):
        return ResnetBlock2D.forward(self, input_tensor, temb, *args, **kwargs)
    h = self.conv1(group_norm_silu(self.norm1, input_tensor))
    add = None
    if self.time_emb_proj is not None and temb is not None:
        add = self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))
    h = self.conv2(self.dropout(group_norm_silu(self.norm2, h, add)))
    skip = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
    if self.output_scale_factor == 1.0:
        return h.add_(skip) if not torch.is_grad_enabled() else h + skip  # in place: h is this call's own output
    return (skip + h) / self.output_scale_factor


def _fused_norm_out(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return group_norm_silu(norm, x) if _applies(x) else nn.functional.silu(nn.GroupNorm.forward(norm, x))


def fuse_norm_silu(model: nn.Module) -> int:
    """Route every fusable GroupNorm + SiLU of ``model``'s diffusers ResNet blocks and UNet / VAE output heads
    through
    :func:`group_norm_silu` (instance-level forwards; weights and state-dict keys unchanged). Returns how many
    norms now run fused."""
    count = 0
    for module in model.modules():
        if isinstance(module, ResnetBlock2D) and _fusable(module):
            module.forward = types.MethodType(_fused_resnet_forward, module)
            count += 2
        elif (isinstance(module, (UNet2DConditionModel, Encoder, Decoder)) and isinstance(module.conv_norm_out, nn.GroupNorm)
              and isinstance(module.conv_act, nn.SiLU)):
            module.conv_norm_out.forward = types.MethodType(_fused_norm_out, module.conv_norm_out)
            module.conv_act = nn.Identity()  # the norm's forward now applies SiLU
            count += 1
    return count


def prepare_for_sampling(model: nn.Module, device: torch.device, precision: str, channels_last: bool,
                         fused: bool = True) -> str:
    """Ready a loaded model for sampling only (it is not trained afterwards): eval mode, no gradients, on
    ``device``, convolution and linear weights in bf16 when sampling in bf16 (autocast casts exactly these, at
    every call; cast once, the outputs are the same), channels_last when asked, and the fused kernel on the CPU when ``fused``. Returns which
    kernels run, for the output's record; a kernel that cannot be built is said once on stderr."""
    model.eval().requires_grad_(False).to(device)
    if precision == "bf16":  # what autocast would cast at every call, cast once; norms keep fp32 parameters
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.to(torch.bfloat16)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not (fused and device.type == "cpu" and precision == "bf16" and channels_last):
        return PYTORCH_KERNELS
    problem = kernel_problem()
    if problem is not None:
        _say_once(problem)
        return f"{PYTORCH_KERNELS} ({problem})"
    fuse_norm_silu(model)
    return FUSED_KERNELS


def training_kernels(device: torch.device, precision: str, fused: bool = True) -> str:
    """Which kernels a training run on ``device`` in ``precision`` can use: :data:`FUSED_KERNELS` (then train
    channels_last and route the networks through :func:`fuse_norm_silu`) or PyTorch's, with the reason when the
    kernel cannot be built (said once on stderr)."""
    if not (fused and device.type == "cpu" and precision == "bf16"):
        return PYTORCH_KERNELS
    problem = kernel_problem()
    if problem is not None:
        _say_once(problem)
        return f"{PYTORCH_KERNELS} ({problem})"
    return FUSED_KERNELS


@functools.cache
def _say_once(message: str) -> None:
    print(f"maskray: {message}; using PyTorch's kernels", file=sys.stderr)
