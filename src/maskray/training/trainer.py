"""Stage 1 (base) and stage 2 (ControlNet) training on one accelerate loop.

Stage 1 teaches a UNet the look of radiographs from every image, masks not needed. Stage 2 freezes it and
trains a ControlNet (``ControlNetModel.from_unet``) on labelled pairs, with the mask dropped for a fraction of
steps so that mask guidance can be scaled at sampling time. Both stages: EMA of the trained weights
(diffusers ``EMAModel``), mixed precision and gradient accumulation (accelerate), checkpoints through
``Accelerator.save_state`` and an exact ``--resume``: every batch, noise draw and timestep is a pure function
of ``(seed, step)``, and the optimizer, LR schedule and EMA come back from the checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from maskray.config import option
from maskray.data.layout import Dataset, one_hot, prepare_output_dir
from maskray.errors import MaskrayError
from maskray.models.checkpoint import load_model, save_model
from maskray.models.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet, count_parameters
from maskray.provenance import atomic_write_text, to_jsonable, write_run_info
from maskray.training.data import load_arrays
from maskray.training.objective import DiffusionConfig, diffusion_loss, make_train_scheduler
from maskray.training.validation import ValidationStrip

Stage = Literal["base", "controlnet"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Defaults are the CPU-tuned ones (benchmarks/bench_learning.py)."""

    data: str = option("", help="dataset folder in the native layout")
    out: str = option("", help="run folder to write")
    base: str | None = option(None, help="stage-1 run folder (stage 2 only)")
    image_size: int = option(64, help="training resolution (64..512, divisible by 2**(levels-1))")
    split: str = option("train", help="split to train on")
    steps: int = option(800, help="optimizer steps")
    batch_size: int = option(32, help="images per step (per process)")
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    lr: float = option(2e-3, help="peak learning rate (AdamW)")
    warmup_steps: int = option(50, help="linear warm-up steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", help="decay after warm-up")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("bf16", help="autocast precision")
    channels_last: bool = option(False, help="NHWC memory format")
    ema_decay: float = option(0.999, help="EMA decay ceiling (warm-up ramps to it); 0 disables EMA")
    checkpoint_every: int = option(200, help="steps between checkpoints (accelerate save_state)")
    keep_checkpoints: int = option(2, help="checkpoints kept")
    validate_every: int = option(0, help="steps between validation images (0: 8 times per run)")
    validation_cases: int = option(4, help="masks (or noise seeds) in the validation strip")
    validation_sampler_steps: int = option(20, help="DDIM steps for validation images")
    cond_drop: float = option(0.1, help="fraction of steps with the mask dropped (stage 2)")
    conditioning_scale: float = option(1.0, help="ControlNet residual scale during training")
    seed: int = option(0, help="seed for weights, batches, noise")
    log: Literal["csv", "tensorboard"] = option("csv", help="log format (always CSV; tensorboard adds events)")
    resume: bool = option(False, help="continue from the latest checkpoint in --out")
    overwrite: bool = option(False, help="replace an existing --out")
    stop_after: int | None = option(None, help="stop (with a checkpoint) after this many steps in this invocation")
    # network (stage 1; stage 2 copies the base)
    block_out_channels: tuple[int, ...] = option((32, 64, 128), help="UNet channels per level")
    layers_per_block: int = option(1, help="ResNet blocks per UNet level")
    attention_levels: tuple[int, ...] = option((), help="UNet levels with self-attention (0 = full res)")
    norm_num_groups: int = option(8, help="GroupNorm groups")
    cond_embedding_channels: tuple[int, ...] = option((16,), help="ControlNet mask encoder channels; "
                                                      "len-1 = pixel space, len-4 = 8x latent")
    # diffusion (stage 1; stage 2 inherits target and schedule from its base)
    prediction_type: Literal["epsilon", "v_prediction"] = option("v_prediction", help="network target")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = option("squaredcos_cap_v2",
                                                                                      help="noise schedule")
    min_snr_gamma: float = option(5.0, help="min-SNR-gamma loss weighting (0 disables)")
    timestep_bias: float = option(0.0, help="draw t with density ~ t**bias")

    def unet_config(self) -> UNetConfig:
        return UNetConfig(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
                          attention_levels=self.attention_levels, norm_num_groups=self.norm_num_groups)

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(prediction_type=self.prediction_type, beta_schedule=self.beta_schedule,
                               min_snr_gamma=self.min_snr_gamma, timestep_bias=self.timestep_bias)


def _validate(cfg: TrainConfig, stage: Stage) -> None:
    if not cfg.data:
        raise MaskrayError("--data is required")
    if not cfg.out:
        raise MaskrayError("--out is required")
    if not 16 <= cfg.image_size <= 512:
        raise MaskrayError(f"--image-size {cfg.image_size} is outside 16..512")
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise MaskrayError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= cfg.cond_drop < 1:
        raise MaskrayError("--cond-drop must lie in [0, 1)")
    if cfg.log == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise MaskrayError("--log tensorboard needs the tensorboard package (pip install tensorboard); "
                               "the CSV log is always written")
    if stage == "controlnet" and not cfg.base:
        raise MaskrayError("stage 2 needs --base RUN (a finished 'maskray train base' run)")


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (those whose trainer_state.json was written last), oldest first."""
    done = [p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _step_generator(seed: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + micro * 7919 + 1) % (2**63))


def train(cfg: TrainConfig, stage: Stage, progress: bool = True) -> Path:
    """Run (or resume) one training stage; returns the run folder."""
    try:
        return _train(cfg, stage, progress)
    finally:
        # accelerate keeps its settings in process-wide singletons; clear them so that a later run in the
        # same process (the demo, the tests) may choose another precision
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _train(cfg: TrainConfig, stage: Stage, progress: bool) -> Path:
    _validate(cfg, stage)
    ds = Dataset(cfg.data)
    out = Path(cfg.out)
    if stage == "controlnet" and not ds.has_labels:
        raise MaskrayError(f"{ds.root}: has no label maps (or dataset.json names no foreground label); stage 2 "
                           f"learns from image/mask pairs")
    if cfg.resume:
        if not _checkpoints(out):
            raise MaskrayError(f"{out}: no checkpoint to resume from")
    else:
        prepare_output_dir(out, overwrite=cfg.overwrite, hint="--resume (continue) or --overwrite (replace)")

    torch.manual_seed(cfg.seed)  # weight initialisation; the one global seed, set at the edge of the run
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard" if cfg.log == "tensorboard" else None,
                              project_dir=str(out))
    meta: dict = {"stage": stage, "image_size": cfg.image_size, "dataset": str(ds.root)}

    if stage == "base":
        diff = cfg.diffusion_config()
        unet = build_unet(cfg.unet_config(), cfg.image_size)
        trainable: torch.nn.Module = unet
        controlnet = None
        labels: dict[str, int] = {}
    else:
        base_model, base_meta = load_model(cfg.base)
        if base_meta.get("stage") != "base":
            raise MaskrayError(f"{cfg.base}: is a '{base_meta.get('stage')}' run; --base needs a stage-1 run")
        if base_meta["image_size"] != cfg.image_size:
            raise MaskrayError(f"{cfg.base}: base was trained at {base_meta['image_size']} px but --image-size is "
                               f"{cfg.image_size}; use the base's size")
        d = base_meta["diffusion"]
        diff = DiffusionConfig(prediction_type=d["prediction_type"], beta_schedule=d["beta_schedule"],
                               num_train_timesteps=d["num_train_timesteps"], min_snr_gamma=cfg.min_snr_gamma,
                               timestep_bias=cfg.timestep_bias)
        unet = base_model.unet
        unet.requires_grad_(False).eval()
        labels = ds.info.foreground
        controlnet = build_controlnet(unet, len(labels), cfg.cond_embedding_channels)
        trainable = controlnet
        meta["base"] = {"path": str(Path(cfg.base).resolve()), "unet_sha256": base_meta.get("unet_sha256")}
        meta["unet_config"] = base_meta.get("unet_config")
    if stage == "base":
        meta["unet_config"] = to_jsonable(cfg.unet_config())
    meta["labels"] = labels  # condition channels, in this order
    meta["diffusion"] = to_jsonable(diff)
    noise_sched = make_train_scheduler(diff)
    meta["scheduler_config"] = dict(noise_sched.config)

    arrays = load_arrays(ds, cfg.image_size, cfg.split, need_labels=(stage == "controlnet"), progress=progress)
    label_values = list(labels.values())

    trainable.train()
    if cfg.channels_last:
        trainable.to(memory_format=torch.channels_last)
        unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler(cfg.lr_schedule if cfg.lr_schedule != "constant" else "constant_with_warmup",
                             optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    ema = None
    if cfg.ema_decay > 0:
        ema = EMAModel(trainable.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)
        accelerator.register_for_checkpointing(ema)
    trainable, optimizer, lr_sched = accelerator.prepare(trainable, optimizer, lr_sched)
    if stage == "controlnet":
        unet.to(accelerator.device)

    start = 0
    if cfg.resume:
        ckpt = _checkpoints(out)[-1]
        accelerator.load_state(str(ckpt))
        start = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        if ema is not None:
            ema.to(accelerator.device)

    if accelerator.is_main_process:
        write_run_info(out, f"train {stage}", cfg, seed=cfg.seed, checkpoint=cfg.base,
                       extra={"parameters": count_parameters(trainable), "dataset": str(ds.root),
                              "train_cases": len(arrays)})
    if cfg.log == "tensorboard":
        accelerator.init_trackers("maskray", config={k: str(v) for k, v in to_jsonable(cfg).items()})

    strip = ValidationStrip(out / "validation", arrays, label_values, cfg.validation_cases, cfg.seed,
                            cfg.validation_sampler_steps, noise_sched.config, cfg.mixed_precision)
    validate_every = cfg.validate_every or max(1, math.ceil(cfg.steps / 8))
    unwrapped = accelerator.unwrap_model(trainable)
    model_for_sampling = ControlledUNet(unwrapped, None) if stage == "base" else ControlledUNet(unet, unwrapped)

    def run_validation(step: int) -> None:
        if not accelerator.is_main_process:
            return
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        unwrapped.eval()
        strip.add(model_for_sampling, step, conditional=(stage == "controlnet"), device=accelerator.device)
        unwrapped.train()
        if ema is not None:
            ema.restore(unwrapped.parameters())

    log_path = out / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="") if accelerator.is_main_process else None
    writer = csv.writer(log_file) if log_file else None
    if writer and new_log:
        writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s"])

    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {stage}", unit="step", disable=not progress or
               not accelerator.is_main_process, dynamic_ncols=True)
    t0 = time.time()
    images = 0
    nproc, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device
    for step in range(start, end):
        loss_sum = 0.0
        for k in range(cfg.grad_accum):
            micro = (step * cfg.grad_accum + k) * nproc + rank
            idx = arrays.indices(micro, cfg.batch_size, cfg.seed)
            x0, lab = arrays.batch(idx)
            gen = _step_generator(cfg.seed, micro)
            x0 = x0.to(device)
            if cfg.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            if stage == "base":
                def model_fn(noisy, t):
                    return trainable(noisy, t.to(device), encoder_hidden_states=None, return_dict=False)[0]
            else:
                cond = one_hot(lab, label_values)
                drop = torch.rand(cond.shape[0], generator=gen) < cfg.cond_drop
                cond[drop] = 0.0
                cond = cond.to(device)

                def model_fn(noisy, t, cond=cond):
                    t = t.to(device)
                    down, mid = trainable(noisy, t, encoder_hidden_states=None, controlnet_cond=cond,
                                          conditioning_scale=cfg.conditioning_scale, return_dict=False)
                    with accelerator.autocast():
                        return unet(noisy, t, encoder_hidden_states=None, down_block_additional_residuals=down,
                                    mid_block_additional_residual=mid, return_dict=False)[0]
            with accelerator.accumulate(trainable):
                loss = diffusion_loss(model_fn, x0, noise_sched, diff, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable.parameters(), 1.0)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() / cfg.grad_accum
        if ema is not None:
            ema.step(unwrapped.parameters())
        images += cfg.batch_size * cfg.grad_accum * nproc
        done = step + 1
        rate = images / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_sum:.4f}", img_s=f"{rate:.1f}")
        bar.update(1)
        if writer:
            writer.writerow([done, f"{loss_sum:.6f}", f"{lr_sched.get_last_lr()[0]:.3e}", f"{rate:.2f}",
                             f"{time.time() - t0:.1f}"])
        if cfg.log == "tensorboard":
            accelerator.log({"loss": loss_sum, "lr": lr_sched.get_last_lr()[0]}, step=done)
        if done % validate_every == 0 or done == cfg.steps:
            run_validation(done)
        if done % cfg.checkpoint_every == 0 or done == end:
            _save_checkpoint(accelerator, out, done, cfg.keep_checkpoints)
    bar.close()
    if log_file:
        log_file.close()
    accelerator.wait_for_everyone()
    if end == cfg.steps and accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(unwrapped.parameters())
        meta.update(step=cfg.steps, train_config=to_jsonable(cfg))
        if stage == "base":
            save_model(out, unwrapped, meta)
        else:
            save_model(out, unet, meta, controlnet=unwrapped)
        strip.save()
    accelerator.end_training()
    return out


def _save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    path = out / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        atomic_write_text(path / "trainer_state.json", json.dumps({"step": step}))
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
