"""Networks: a diffusers ``UNet2DConditionModel`` as the frozen base and a diffusers ``ControlNetModel``
built from it (Zhang, Rao & Agrawala, ICCV 2023).

maskray's own base has no cross-attention (it conditions on masks, not text), so its
``encoder_hidden_states`` is ``None``; a Stable Diffusion base (diffusion/pretrained.py) reads a fixed prompt
embedding there instead, the same for every sample. The ControlNet is a trainable copy of the base's encoder whose
outputs join the base through zero-initialised 1x1 convolutions, so a fresh ControlNet leaves the base's
output unchanged. Its conditioning embedding downsamples the mask by ``2 ** (len(cond_channels) - 1)``:
one entry for a pixel-space backbone (mask and sample at one resolution), four for an 8x latent backbone.
:class:`ControlledUNet` is the one place where the base and a ControlNet are joined: training, validation,
generation and region-preserving generation all call it. Nothing here knows about noise or pixel space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from maskray.config import option
from maskray.errors import MaskrayError


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the base UNet. The defaults are the CPU-sized network chosen from benchmarks/bench_speed.py."""

    block_out_channels: tuple[int, ...] = option((32, 64, 128), help="channels per resolution level")
    layers_per_block: int = option(1, help="ResNet blocks per level")
    attention_levels: tuple[int, ...] = option((), help="levels (0 = full resolution) that get self-attention")
    norm_num_groups: int = option(8, help="GroupNorm groups")
    in_channels: int = option(1, help="image channels (1 for radiographs; 4 for an SD latent)")


def build_unet(cfg: UNetConfig, sample_size: int) -> UNet2DConditionModel:
    """A base UNet for ``(N, in_channels, sample_size, sample_size)`` samples."""
    levels = len(cfg.block_out_channels)
    if sample_size % (2 ** (levels - 1)):
        raise MaskrayError(f"image size {sample_size} is not divisible by {2 ** (levels - 1)}, which a UNet with "
                           f"{levels} levels needs")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise MaskrayError(f"block_out_channels {cfg.block_out_channels} must be multiples of norm_num_groups "
                           f"{cfg.norm_num_groups}")
    bad = [lv for lv in cfg.attention_levels if not 0 <= lv < levels]
    if bad:
        raise MaskrayError(f"attention_levels {bad} outside 0..{levels - 1}")
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if (levels - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2D",
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=8,
        cross_attention_dim=8,  # unused: no cross-attention blocks
    )


def build_controlnet(unet: UNet2DConditionModel, conditioning_channels: int,
                     cond_embedding_channels: tuple[int, ...] = (16,)) -> ControlNetModel:
    """A ControlNet copied from ``unet``'s encoder, with zero-initialised joins.

    ``conditioning_channels``: one per foreground label (the one-hot mask, background excluded).
    """
    if conditioning_channels < 1:
        raise MaskrayError("a ControlNet needs at least one conditioning channel (one foreground label)")
    return ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                     conditioning_embedding_out_channels=tuple(cond_embedding_channels))


class ControlledUNet(nn.Module):
    """The frozen base plus an optional ControlNet: ``forward(sample, t, cond) -> model output``.

    ``sample``: float ``(N, C, H, W)``; ``timesteps``: ``(N,)``; ``cond``: float ``(N, K, H, W)`` one-hot mask
    or ``None`` (then the base alone runs). ``conditioning_scale`` multiplies the ControlNet residuals.
    ``context``: float ``(1, L, D)`` fixed cross-attention context (a Stable Diffusion base's encoded prompt),
    expanded to the batch; ``None`` for a base without cross-attention.
    """

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel | None = None,
                 context: torch.Tensor | None = None):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.context = context

    def encoder_states(self, sample: torch.Tensor) -> torch.Tensor | None:
        """The context for a batch like ``sample``: ``(N, L, D)`` on its device, or ``None``."""
        if self.context is None:
            return None
        return self.context.to(sample.device).expand(sample.shape[0], -1, -1)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None = None,
                conditioning_scale: float = 1.0) -> torch.Tensor:
        down = mid = None
        context = self.encoder_states(sample)
        if self.controlnet is not None and cond is not None:
            down, mid = self.controlnet(sample, timesteps, encoder_hidden_states=context, controlnet_cond=cond,
                                        conditioning_scale=conditioning_scale, return_dict=False)
        return self.unet(sample, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
