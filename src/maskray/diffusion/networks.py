"""Networks: a diffusers ``UNet2DConditionModel`` as the frozen base and a diffusers ``ControlNetModel``
built from it (Zhang, Rao & Agrawala, ICCV 2023).

maskray's own base has no cross-attention (it conditions on masks, not text), so its
``encoder_hidden_states`` is ``None``; a Stable Diffusion base (diffusion/pretrained.py) reads a prompt
embedding there instead (the same for every sample, or with each sample's attributes). The ControlNet is a trainable copy of the base's encoder whose
outputs join the base through zero-initialised 1x1 convolutions, so a fresh ControlNet leaves the base's
output unchanged. Its conditioning embedding downsamples the mask by ``2 ** (len(cond_channels) - 1)``:
one entry for a pixel-space backbone (mask and sample at one resolution). On a latent backbone the mask stays at
image resolution, ``factor`` times the latent's side; what the embedding does not downsample by convolution is folded
into channels first (``pixel_unshuffle``, lossless: a 4x4 patch of the one-hot mask becomes 16 x K channels of one
latent cell), so a 4x latent model with a one-entry embedding reads its 256 px mask at the cost of a 64 px one
(:func:`mask_fold`); Stable Diffusion's own design, four entries for its 8x VAE, folds nothing.
:class:`ControlledUNet` is the one place where the base and its ControlNet(s) are joined: training, validation,
generation and region-preserving generation all call it. Several conditions (mask, edges) are one ControlNet each
(:class:`ControlNetSet`), their residuals summed with a scale each; patient attributes enter base and ControlNets
as an embedding added to the time embedding (``class_labels``). Nothing here knows about noise or pixel space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from maskray.config import option
from maskray.diffusion.conditioning import as_conditions
from maskray.errors import MaskrayError


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the base UNet. The defaults are the CPU-sized network chosen from benchmarks/bench_speed.py."""

    block_out_channels: tuple[int, ...] = option((32, 64, 128), help="channels per resolution level")
    layers_per_block: int = option(1, help="ResNet blocks per level")
    attention_levels: tuple[int, ...] = option((), help="levels (0 = full resolution) that get self-attention")
    norm_num_groups: int = option(8, help="GroupNorm groups")
    in_channels: int = option(1, help="image channels (1 for radiographs; 4 for an SD latent)")


def build_unet(cfg: UNetConfig, sample_size: int, attribute_dim: int = 0) -> UNet2DConditionModel:
    """A base UNet for ``(N, in_channels, sample_size, sample_size)`` samples.

    ``attribute_dim > 0``: the UNet takes ``class_labels`` float ``(N, attribute_dim)`` (the patient-attribute
    vector), projected by an MLP and added to the time embedding (diffusers' ``class_embed_type="projection"``)."""
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
        **attribute_embedding(attribute_dim),
    )


def attribute_embedding(attribute_dim: int) -> dict:
    """UNet constructor arguments for an attribute vector of ``attribute_dim`` entries (none for 0)."""
    if attribute_dim <= 0:
        return {}
    return {"class_embed_type": "projection", "projection_class_embeddings_input_dim": attribute_dim}


def build_controlnet(unet: UNet2DConditionModel, conditioning_channels: int,
                     cond_embedding_channels: tuple[int, ...] = (16,), factor: int = 1) -> ControlNetModel:
    """A ControlNet copied from ``unet``'s encoder, with zero-initialised joins.

    ``conditioning_channels``: one per foreground label (the one-hot mask, background excluded) or per map of
    another condition, at image resolution; ``factor``: image pixels per sample element (the autoencoder's factor
    for a latent base). The ControlNet takes ``conditioning_channels * mask_fold(...) ** 2`` channels.
    """
    if conditioning_channels < 1:
        raise MaskrayError("a ControlNet needs at least one conditioning channel (one foreground label)")
    fold = mask_fold(factor, cond_embedding_channels)
    return ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels * fold * fold,
                                     conditioning_embedding_out_channels=tuple(cond_embedding_channels))


def mask_fold(factor: int, cond_embedding_channels: tuple[int, ...]) -> int:
    """How many image pixels per side are folded into channels before the conditioning embedding: the part of
    ``factor`` its convolutions (``2 ** (len - 1)``) do not downsample."""
    down = 2 ** (len(cond_embedding_channels) - 1)
    if factor % down:
        raise MaskrayError(f"a conditioning embedding of {len(cond_embedding_channels)} entries downsamples by "
                           f"{down}, more than the model's factor {factor}")
    return factor // down


def controlnet_residuals(net: ControlNetModel, sample, timesteps, cond: torch.Tensor, scale: float, class_labels,
                         context):
    """One ControlNet's ``(down residuals, mid residual)``; a condition map larger than the sample is folded into
    channels by whatever the ControlNet's embedding does not downsample (see :func:`mask_fold`)."""
    ratio = cond.shape[-1] // sample.shape[-1]
    fold = mask_fold(ratio, tuple(net.config.conditioning_embedding_out_channels))
    if fold > 1:
        cond = nn.functional.pixel_unshuffle(cond, fold)
    return net(sample, timesteps, encoder_hidden_states=context, controlnet_cond=cond, conditioning_scale=scale,
               class_labels=class_labels, return_dict=False)


class ControlNetSet(nn.Module):
    """Named ControlNets, one per condition, whose residuals add (what diffusers' ``MultiControlNetModel`` does,
    keyed by name, and skipping a condition that is left out or scaled to 0, so that it costs nothing).

    ``forward(sample, t, maps, scales, class_labels, context) -> (down residuals, mid residual)``, or
    ``(None, None)`` when every condition is left out."""

    def __init__(self, nets: dict[str, ControlNetModel]):
        super().__init__()
        self.nets = nn.ModuleDict(nets)

    def forward(self, sample, timesteps, maps: dict, scales: dict, class_labels=None, context=None):
        down = mid = None
        for name, net in self.nets.items():
            cond, scale = maps.get(name), float(scales.get(name, 1.0))
            if cond is None or scale == 0.0:
                continue
            d, m = controlnet_residuals(net, sample, timesteps, cond, scale, class_labels, context)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return down, mid


class ControlledUNet(nn.Module):
    """The frozen base plus optional ControlNet(s): ``forward(sample, t, cond) -> model output``.

    ``sample``: float ``(N, C, H, W)``; ``timesteps``: ``(N,)``; ``cond``: float ``(N, K, H, W)`` one-hot mask, a
    :class:`~maskray.diffusion.conditioning.Conditions` (named maps and the attribute vector), or ``None`` (the
    base alone). ``controlnet``: one ``ControlNetModel`` (the mask), a :class:`ControlNetSet`, or ``None``.
    ``conditioning_scale``: a number for every ControlNet, or ``{condition: scale}``. A base with an attribute
    embedding gets an all-zero attribute vector ("not given") when ``cond`` carries none.
    ``prompts``: a Stable Diffusion base's cross-attention context, ``prompts(attributes, n) -> (n, L, D)``: each
    sample's encoded prompt (the base prompt, followed by its attributes when the model was trained with them: such
    a base has no class embedding, so attributes reach it as text); ``None`` for a base without cross-attention.
    """

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel | ControlNetSet | None = None,
                 prompts: Callable[[torch.Tensor | None, int], torch.Tensor] | None = None):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.prompts = prompts

    def encoder_states(self, sample: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor | None:
        """The context for a batch like ``sample``: ``(N, L, D)`` on its device, or ``None``."""
        if self.prompts is None:
            return None
        return self.prompts(attributes, sample.shape[0]).to(sample.device)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond=None,
                conditioning_scale: float | dict[str, float] = 1.0) -> torch.Tensor:
        conds = as_conditions(cond)
        labels = self.class_labels(None if self.prompts is not None else conds.attributes, sample)
        context = self.encoder_states(sample, conds.attributes)
        down = mid = None
        if isinstance(self.controlnet, ControlNetSet):
            scales = conditioning_scale if isinstance(conditioning_scale, dict) else \
                {k: conditioning_scale for k in self.controlnet.nets}
            down, mid = self.controlnet(sample, timesteps, conds.maps, scales, labels, context)
        elif self.controlnet is not None and conds.maps:
            (name, cmap), = conds.maps.items()
            scale = conditioning_scale.get(name, 1.0) if isinstance(conditioning_scale, dict) else conditioning_scale
            if cmap is not None and scale != 0.0:
                down, mid = controlnet_residuals(self.controlnet, sample, timesteps, cmap, float(scale), labels,
                                                 context)
        return self.unet(sample, timesteps, encoder_hidden_states=context, class_labels=labels,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         return_dict=False)[0]

    def class_labels(self, attributes: torch.Tensor | None, sample: torch.Tensor) -> torch.Tensor | None:
        """The attribute vector for the UNet's class embedding (zeros when none is given), or ``None`` for a
        UNet without one."""
        config = getattr(self.unet, "module", self.unet).config  # the UNet may be wrapped (DistributedDataParallel)
        dim = config.get("projection_class_embeddings_input_dim") if \
            config.get("class_embed_type") == "projection" else None
        if not dim:
            if attributes is not None and attributes.shape[-1]:
                raise MaskrayError("attributes were given but this model was trained without attributes")
            return None
        if attributes is None:
            return torch.zeros(sample.shape[0], dim, device=sample.device, dtype=sample.dtype)
        return attributes.to(sample.device, sample.dtype)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
