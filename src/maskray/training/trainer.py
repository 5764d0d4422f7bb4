"""One accelerate loop for every stage (improved-diffusion's TrainLoop split into setup, step and save).

The stage decides what is trained and how a batch becomes a condition (training/stages.py); the loop itself has
no stage branches. EMA of the trained weights (diffusers ``EMAModel``), mixed precision and gradient accumulation
(accelerate), tensor-only checkpoints (training/checkpoints.py) and an exact ``--resume``: every batch, noise draw
and timestep is a pure function of ``(seed, step)``, and the optimizer, LR schedule and EMA come back from the
checkpoint. ``log.csv`` is flushed per row and cut back to the resumed step.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.files import prepare_output_dir
from maskray.diffusion.fused import FUSED_KERNELS, PYTORCH_KERNELS, fuse_norm_silu, training_kernels
from maskray.diffusion.networks import count_parameters
from maskray.distributed import device, on_main, resolve_precision
from maskray.errors import MaskrayError
from maskray.memory import keep_freed_memory
from maskray.provenance import to_jsonable, write_run_info
from maskray.training.checkpoints import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from maskray.training.config import Stage, TrainConfig, validate
from maskray.training.data import load_arrays
from maskray.training.efficiency import Mfu, matmul_peak_flops, train_flops_per_image
from maskray.training.latent_cache import cached_latents
from maskray.training.stages import setup_stage
from maskray.training.validation import ValidationStrip
from maskray.files import atomic_path

LOG_COLUMNS = ["step", "loss", "lr", "images_per_s", "elapsed_s", "mfu"]


def step_generator(seed: int, micro: int) -> torch.Generator:
    """The generator of micro-batch ``micro``: timesteps, noise and condition dropout all come from it."""
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


def _prepare_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if cfg.resume:
        if not list_checkpoints(out):
            raise MaskrayError(f"{out}: no checkpoint to resume from")
    else:
        prepare_output_dir(out, overwrite=cfg.overwrite, hint="--resume (continue) or --overwrite (replace)")
    return out


def _train(cfg: TrainConfig, stage: Stage, progress: bool) -> Path:
    validate(cfg, stage)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device()))  # recorded resolved
    ds = Dataset(cfg.data)
    torch.manual_seed(cfg.seed)  # weight initialisation; the one global seed, set at the edge of the run
    setup = setup_stage(cfg, stage, ds)
    on_main(lambda: _prepare_out(cfg))  # under accelerate launch the main process alone creates or replaces it
    out = Path(cfg.out)
    accelerator = Accelerator(mixed_precision=cfg.precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard" if cfg.log == "tensorboard" else None, project_dir=str(out))
    arrays = load_arrays(ds, cfg.image_size, cfg.split, need_labels=setup.needs_labels, progress=progress)
    if setup.codec is not None:
        setup.codec.vae.to(accelerator.device)  # encode (and decode validation images) where the networks run
        base_cache = (Path(cfg.base) / "cache",) if cfg.base else ()  # stage 2: its base encoded the same images
        arrays.latents = cached_latents(arrays, setup.codec, out / "cache", progress=progress, also_read=base_cache)
    trainable = setup.trainable.train()
    kernels = training_kernels(accelerator.device, cfg.precision, cfg.fused_kernels)
    allocator = keep_freed_memory()
    if cfg.channels_last is None:  # resolved here, and recorded so: on where the fused kernel trains
        cfg = dataclasses.replace(cfg, channels_last=kernels == FUSED_KERNELS)
    if cfg.channels_last:
        for net in (trainable, setup.frozen):
            if net is not None:
                net.to(memory_format=torch.channels_last)
                if kernels == FUSED_KERNELS:
                    fuse_norm_silu(net)
    elif kernels == FUSED_KERNELS:
        kernels = f"{PYTORCH_KERNELS} (the fused kernel needs channels_last)"
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler(cfg.lr_schedule if cfg.lr_schedule != "constant" else "constant_with_warmup",
                             optimizer, num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
                             # accelerate steps a prepared schedule once per process per optimizer step
                             num_training_steps=cfg.steps * accelerator.num_processes)
    ema = EMAModel(trainable.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3) \
        if cfg.ema_decay > 0 else None
    wrapped, optimizer, lr_sched = accelerator.prepare(trainable, optimizer, lr_sched)
    # accelerate makes the prepared network return fp32; a ControlNet's fp32 residuals then turned the frozen base's
    # whole up path fp32 (no fused kernel, a cast at every block: 15% of a step). The loss casts to fp32 itself and
    # the step runs under the accelerator's autocast, so the wrapper goes (in place; DDP's wrapper stays).
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    if setup.frozen is not None:
        setup.frozen.to(accelerator.device)
    start = 0
    if cfg.resume:
        start = load_checkpoint(list_checkpoints(out)[-1], trainable, optimizer, lr_sched, ema)
        if ema is not None:
            ema.to(accelerator.device)
    if accelerator.is_main_process:
        write_run_info(out, f"train {stage}", cfg, seed=cfg.seed, checkpoint=cfg.base or cfg.model,
                       extra={"parameters": count_parameters(trainable), "dataset": str(ds.root),
                              "train_cases": len(arrays), "kernels": kernels,
                              "allocator": allocator})
    if cfg.log == "tensorboard":
        accelerator.init_trackers("maskray", config={k: str(v) for k, v in to_jsonable(cfg).items()})
    loop = _Loop(cfg, setup, accelerator, wrapped, trainable, optimizer, lr_sched, ema, arrays, out, progress)
    loop.run(start)
    accelerator.end_training()
    return out


class _Loop:
    """The steps of one run: forward/backward, optimize, log, validate, checkpoint, save."""

    def __init__(self, cfg, setup, accelerator, wrapped, trainable, optimizer, lr_sched, ema, arrays, out, progress):
        self.cfg, self.setup, self.acc = cfg, setup, accelerator
        self.wrapped, self.trainable, self.optimizer, self.lr_sched, self.ema = wrapped, trainable, optimizer, \
            lr_sched, ema
        self.arrays, self.out, self.progress = arrays, out, progress
        self.model = setup.model(wrapped)  # its training_loss: the stage's objective on the card's noise schedule
        self.sampling_model = setup.model(trainable)  # validation images
        self.strip = ValidationStrip(out / "validation", arrays, list(setup.labels.values()), cfg.validation_cases,
                                     cfg.seed, cfg.validation_sampler_steps, cfg.precision,
                                     condition=setup.maker.make, channels_last=cfg.channels_last)
        self.mfu = self.efficiency() if accelerator.is_main_process else None

    def efficiency(self) -> Mfu:
        """FLOPs of one image's training step (counted once, on the unwrapped model) and the measured peak."""
        idx = self.arrays.indices(0, 1, self.cfg.seed)
        x0, lab = self.arrays.batch(idx)
        cond = self.setup.condition(lab, step_generator(self.cfg.seed, 0), self.arrays.pixels(idx),
                                    [self.arrays.case_ids[i] for i in idx.tolist()])
        dev = self.acc.device
        with self.acc.autocast():
            flops = train_flops_per_image(self.sampling_model.net, x0.to(dev), None if cond is None else cond.to(dev))
        return Mfu(flops, matmul_peak_flops(self.cfg.precision, dev), self.acc.num_processes)

    def run(self, start: int) -> None:
        cfg, acc = self.cfg, self.acc
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
        validate_every = cfg.validate_every or max(1, math.ceil(cfg.steps / 8))
        log = _CsvLog(self.out / "log.csv", start) if acc.is_main_process else None
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {self.setup.stage}", unit="step",
                   disable=not self.progress or not acc.is_main_process, dynamic_ncols=True)
        t0, images = time.time(), 0
        for step in range(start, end):
            loss = sum(self.forward_backward(step, k) for k in range(cfg.grad_accum)) / cfg.grad_accum
            if self.ema is not None:
                self.ema.step(self.trainable.parameters())
            images += cfg.batch_size * cfg.grad_accum * acc.num_processes
            done, elapsed = step + 1, time.time() - t0
            rate = images / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
            lr = self.lr_sched.get_last_lr()[0]
            if log:
                log.write([done, f"{loss:.6f}", f"{lr:.3e}", f"{rate:.2f}", f"{elapsed:.1f}",
                           f"{self.mfu.fraction(rate):.4f}"])
            if cfg.log == "tensorboard":
                acc.log({"loss": loss, "lr": lr}, step=done)
            if done % validate_every == 0 or done == cfg.steps:
                self.validate(done)
            if done % cfg.checkpoint_every == 0 or done == end:
                self.checkpoint(done)
        bar.close()
        if log:
            log.close()
        acc.wait_for_everyone()
        if end == cfg.steps and acc.is_main_process:
            with self.ema_weights():
                self.setup.save(self.out / "model", self.trainable, cfg.steps)
            self.strip.save()

    def forward_backward(self, step: int, k: int) -> float:
        cfg, acc = self.cfg, self.acc
        micro = (step * cfg.grad_accum + k) * acc.num_processes + acc.process_index
        idx = self.arrays.indices(micro, cfg.batch_size, cfg.seed)
        x0, lab = self.arrays.batch(idx)
        gen = step_generator(cfg.seed, micro)
        x0 = x0.to(acc.device)
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        ids = [self.arrays.case_ids[i] for i in idx.tolist()]
        cond = self.setup.condition(lab, gen, self.arrays.pixels(idx), ids)  # edges come from pixels, not latents
        if cond is not None:  # in the memory format the networks train in, like x0
            cond = cond.to(acc.device, memory_format=torch.channels_last if cfg.channels_last
                           else torch.contiguous_format)

        with acc.accumulate(self.wrapped):
            loss = self.model.training_loss(x0, cond, gen, lab, conditioning_scale=cfg.conditioning_scale,
                                            autocast=acc.autocast)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.wrapped.parameters(), 1.0)
            self.optimizer.step()
            self.lr_sched.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @contextlib.contextmanager
    def ema_weights(self):
        """The trainable network holds its EMA weights inside the block and its raw weights after it."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.trainable.parameters())
        self.ema.copy_to(self.trainable.parameters())
        try:
            yield
        finally:
            self.ema.restore(self.trainable.parameters())

    def validate(self, step: int) -> None:
        if not self.acc.is_main_process:
            return
        with self.ema_weights():
            self.trainable.eval()
            self.strip.add(self.sampling_model, step,
                           conditional=self.setup.conditional, device=self.acc.device)
            self.trainable.train()

    def checkpoint(self, step: int) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            path = self.out / "checkpoints" / f"step-{step}"
            with self.ema_weights():
                self.setup.save(path / "model", self.trainable, step)
            save_checkpoint(path, step, self.trainable, self.optimizer, self.lr_sched, self.ema)
            prune_checkpoints(self.out, self.cfg.keep_checkpoints)


class _CsvLog:
    """``log.csv``, flushed per row; on resume, rows past the resumed step (written after the checkpoint that is
    resumed from) are cut so the log has each step once."""

    def __init__(self, path: Path, start: int):
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= start]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:  # a kill leaves the old log, never a cut one
            csv.writer(f).writerows([LOG_COLUMNS] + rows)
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)

    def write(self, row: list) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
