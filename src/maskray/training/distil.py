"""``maskray train distil --model RUN``: a few-step student of a trained base + ControlNet.

The student starts as a copy of the teacher (both the UNet and the ControlNet train: a few-step sampler changes
what the unconditional path must do as well) and learns the one-round progressive-distillation target of
``diffusion/distillation.py``: each of its ``--student-steps`` DDIM steps lands where ``--teacher-steps /
--student-steps`` DDIM steps of the frozen teacher land. The mask is dropped for ``--cond-drop`` of the samples,
for the teacher and the student alike, so guidance keeps working. The result is an ordinary base + ControlNet
model folder whose card records the sampler it was trained for (``sampling``: DDIM, trailing spacing,
``--student-steps``), which ``generate`` uses when no ``--scheduler``/``--steps`` is given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from maskray.data.dataset import Dataset
from maskray.diffusion.card import ModelCard
from maskray.diffusion.distillation import STUDENT_SPACING, distillation_loss, student_grid
from maskray.diffusion.networks import ControlledUNet
from maskray.diffusion.objective import DiffusionConfig
from maskray.diffusion.model import MaskModel
from maskray.distributed import autocast_dtype
from maskray.errors import MaskrayError
from maskray.training.batch_conditions import ConditionMaker
from maskray.training.config import TrainConfig
from maskray.training.stage_setup import StageSetup, make_card


def _teacher(cfg: TrainConfig, ds: Dataset) -> tuple[MaskModel, ModelCard, list[int]]:
    teacher = MaskModel.load(cfg.model, need_controlnet=True)
    card = teacher.card
    if card.image_size != cfg.image_size:
        raise MaskrayError(f"{cfg.model}: was trained at {card.image_size} px but --image-size is {cfg.image_size}; "
                           f"use the teacher's size")
    missing = [n for n in card.labels if n not in ds.info.labels]
    if missing:
        raise MaskrayError(f"{ds.root}/dataset.json: lacks the teacher's condition labels {missing}")
    return teacher, card, [ds.info.labels[n] for n in card.labels]


def setup_distil(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    teacher, tcard, values = _teacher(cfg, ds)
    student = MaskModel.load(cfg.model, need_controlnet=True).net
    student.requires_grad_(True).train()
    codec = teacher.codec
    diff = DiffusionConfig(**tcard.diffusion)
    grid = student_grid(tcard.scheduler_config, cfg.student_steps)
    substeps = cfg.teacher_steps // cfg.student_steps
    dtype = autocast_dtype(cfg.precision)

    def objective(model_fn, x0, cond, noise_scheduler, generator, labels):
        def teacher_fn(z, t):
            with torch.autocast(z.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return teacher.net(z, t, cond)

        return distillation_loss(model_fn, teacher_fn, x0, grid, substeps, noise_scheduler.alphas_cumprod,
                                 diff.prediction_type, generator)

    def saver(folder: Path, trained: ControlledUNet, card: ModelCard) -> Path:
        return MaskModel(trained, card, codec).save(folder)

    sched_cfg = {**tcard.scheduler_config, "timestep_spacing": STUDENT_SPACING, "set_alpha_to_one": True}
    card = dataclasses.replace(
        make_card(cfg, "controlnet", diff, tcard.labels, tcard.unet_config, base_unet_sha256=tcard.base_unet_sha256,
              cond_embedding_channels=tcard.cond_embedding_channels, latent=tcard.latent),
        scheduler_config=sched_cfg, sampling={"scheduler": "ddim", "steps": cfg.student_steps},
        distilled_from=tcard.controlnet_sha256)
    return StageSetup(stage="distil", trainable=student, frozen=teacher.net, labels=dict(tcard.labels),
                      joined=lambda trained: trained, maker=ConditionMaker(("mask",), values, None, {}, {}),
                      cond_drop=cfg.cond_drop, card=card, codec=codec,
                      objective=objective, saver=saver)
