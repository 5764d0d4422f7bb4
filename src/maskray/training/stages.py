"""One setup per stage: what is trained, what stays frozen, how a batch becomes the network's condition, and the
model card of the result. The training loop (trainer.py) is the same for every stage.

- ``base`` (stage 1): a fresh UNet learns the look of radiographs; no condition.
- ``controlnet`` (stage 2): the base is loaded and frozen; a ControlNet copied from it (zero-initialised joins)
  learns to follow the one-hot mask, which is dropped for ``cond_drop`` of the samples (guidance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from maskray.data.layout import Dataset
from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import drop_conditions, one_hot
from maskray.diffusion.networks import ControlledUNet, build_controlnet, build_unet
from maskray.diffusion.objective import DiffusionConfig, make_train_scheduler
from maskray.diffusion.store import load_model, save_model
from maskray.errors import MaskrayError
from maskray.provenance import to_jsonable
from maskray.training.config import PATH_FIELDS, Stage, TrainConfig


@dataclass
class StageSetup:
    """What the loop needs to train one stage.

    ``joined(trainable)`` puts the (possibly accelerate-wrapped) trainable network into the ``ControlledUNet``
    that is called as ``model(noisy, t, cond)``; ``condition(labels, generator)`` turns a batch's int64 label maps
    ``(B, S, S)`` into the condition (or ``None``); ``save(folder, trainable)`` writes a loadable model folder.
    """

    stage: Stage
    trainable: nn.Module
    frozen: nn.Module | None
    diffusion: DiffusionConfig
    labels: dict[str, int]
    joined: Callable[[nn.Module], ControlledUNet]
    condition: Callable[[torch.Tensor | None, torch.Generator], torch.Tensor | None]
    card: ModelCard  # hashes and step are filled in at each save

    @property
    def needs_labels(self) -> bool:
        return bool(self.labels)

    def save(self, folder: Path, trainable: nn.Module, step: int) -> Path:
        card = dataclasses.replace(self.card, step=step)
        if self.stage == "base":
            return save_model(folder, trainable, card)
        return save_model(folder, self.frozen, card, controlnet=trainable)


def setup_stage(cfg: TrainConfig, stage: Stage, ds: Dataset) -> StageSetup:
    return _setup_base(cfg) if stage == "base" else _setup_controlnet(cfg, ds)


def _card(cfg: TrainConfig, stage: Stage, diff: DiffusionConfig, labels: dict[str, int], unet_config: dict,
          **extra) -> ModelCard:
    return ModelCard(stage=stage, image_size=cfg.image_size, labels=dict(labels), unet_config=unet_config,
                     diffusion=to_jsonable(diff), scheduler_config=dict(make_train_scheduler(diff).config),
                     step=0, unet_sha256="", training={k: v for k, v in to_jsonable(cfg).items()
                                                       if k not in PATH_FIELDS},
                     maskray_version=metadata.version("maskray"), **extra)


def _setup_base(cfg: TrainConfig) -> StageSetup:
    diff = cfg.diffusion_config()
    unet = build_unet(cfg.unet_config(), cfg.image_size)
    return StageSetup(stage="base", trainable=unet, frozen=None, diffusion=diff, labels={},
                      joined=lambda trained: ControlledUNet(trained, None),
                      condition=lambda labels, generator: None,
                      card=_card(cfg, "base", diff, {}, to_jsonable(cfg.unet_config())))


def _setup_controlnet(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    if not ds.has_labels:
        raise MaskrayError(f"{ds.root}: has no label maps (or dataset.json names no foreground label); stage 2 "
                           f"learns from image/mask pairs")
    base_model, base_card = load_model(cfg.base)
    if base_card.stage != "base":
        raise MaskrayError(f"{cfg.base}: is a '{base_card.stage}' run; --base needs a stage-1 run")
    if base_card.image_size != cfg.image_size:
        raise MaskrayError(f"{cfg.base}: base was trained at {base_card.image_size} px but --image-size is "
                           f"{cfg.image_size}; use the base's size")
    # target and schedule come from the base; the loss weighting is this stage's own
    diff = dataclasses.replace(DiffusionConfig(**base_card.diffusion), min_snr_gamma=cfg.min_snr_gamma,
                               timestep_bias=cfg.timestep_bias)
    unet = base_model.unet
    unet.requires_grad_(False).eval()
    labels = ds.info.foreground
    values = list(labels.values())
    controlnet = build_controlnet(unet, len(labels), cfg.cond_embedding_channels)

    def condition(lab: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return drop_conditions(one_hot(lab, values), cfg.cond_drop, generator)

    card = _card(cfg, "controlnet", diff, labels, base_card.unet_config, base_unet_sha256=base_card.unet_sha256,
                 cond_embedding_channels=tuple(cfg.cond_embedding_channels))
    return StageSetup(stage="controlnet", trainable=controlnet, frozen=unet, diffusion=diff, labels=labels,
                      joined=lambda trained: ControlledUNet(unet, trained), condition=condition, card=card)
