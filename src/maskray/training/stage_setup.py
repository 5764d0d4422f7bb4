"""The contract between a stage's setup and the training loop: :class:`StageSetup` (what the loop needs to train one
stage) and :func:`make_card` (the model card a stage starts from). Every stage's setup builds these: the usual
stages in training/stages.py, distillation in training/distil.py; the loop (trainer.py) reads only this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from maskray.diffusion import pretrained as sd
from maskray.diffusion.autoencoder import LatentCodec
from maskray.diffusion.card import ModelCard
from maskray.diffusion.networks import ControlledUNet
from maskray.diffusion.model import MaskModel, Objective
from maskray.diffusion.objective import DiffusionConfig, make_train_scheduler
from maskray.diffusion.store import save_model
from maskray.provenance import to_jsonable
from maskray.training.batch_conditions import ConditionMaker
from maskray.training.config import PATH_FIELDS, Stage, TrainConfig


@dataclass
class StageSetup:
    """What the loop needs to train one stage.

    ``joined(trainable)`` puts the (possibly accelerate-wrapped) trainable network into the ``ControlledUNet``
    that is called as ``model(noisy, t, cond)``; ``condition(labels, generator, images, case_ids)`` turns a batch
    (int64 label maps ``(B, S, S)``, images ``(B, 1, S, S)``, its case ids) into the condition with dropout (or
    ``None``), ``maker.make`` into the whole condition (validation); ``model(net)`` is the
    :class:`MaskModel` whose ``training_loss`` the loop calls; ``save(folder, trainable)`` writes a loadable model
    folder.
    """

    stage: Stage
    trainable: nn.Module
    frozen: nn.Module | None
    labels: dict[str, int]
    joined: Callable[[nn.Module], ControlledUNet]
    maker: ConditionMaker
    cond_drop: float
    card: ModelCard  # hashes and step are filled in at each save
    codec: LatentCodec | sd.RGBLatentCodec | None = None  # latent models: the frozen autoencoder
    # writes the model folder (the base; a ControlNet on a Stable Diffusion folder; a distilled student); None: the
    # frozen base and the trained ControlNet
    saver: Callable[[Path, nn.Module, ModelCard], Path] | None = None
    # a stage's own loss, ``objective(model_fn, x0, cond, noise_schedule, generator, labels)`` (stage 2's mask terms,
    # distillation); None: the denoising loss of the card's diffusion config (MaskModel.training_loss)
    objective: Objective | None = None

    @property
    def needs_labels(self) -> bool:
        return "mask" in self.maker.names

    @property
    def conditional(self) -> bool:
        """Whether the model reads a condition (maps or attributes) at all."""
        return bool(self.maker.names or self.maker.vocab)

    def condition(self, labels: torch.Tensor | None, generator: torch.Generator, images: torch.Tensor | None = None,
                  case_ids: list[str] | None = None):
        return self.maker.drop(self.maker.make(labels, images, case_ids), self.cond_drop, generator)

    def model(self, net: nn.Module) -> MaskModel:
        """The model being trained, around ``net`` (the trainable network, accelerate-wrapped for the loss or
        not for validation images)."""
        return MaskModel(self.joined(net), self.card, self.codec, objective=self.objective)

    def save(self, folder: Path, trainable: nn.Module, step: int) -> Path:
        card = dataclasses.replace(self.card, step=step)
        if self.saver is not None:
            return self.saver(folder, trainable, card)
        return save_model(folder, self.frozen, card, controlnet=trainable, codec=self.codec)  # a ControlNet stage



def make_card(cfg: TrainConfig, stage: Stage, diff: DiffusionConfig, labels: dict[str, int], unet_config: dict,
          **extra) -> ModelCard:
    return ModelCard(stage=stage, image_size=cfg.image_size, labels=dict(labels), unet_config=unet_config,
                     diffusion=to_jsonable(diff), scheduler_config=dict(make_train_scheduler(diff).config),
                     step=0, unet_sha256="", training={k: v for k, v in to_jsonable(cfg).items()
                                                       if k not in PATH_FIELDS},
                     maskray_version=metadata.version("maskray"), **extra)
