"""``maskray train autoencoder``: the KL autoencoder of the latent path, trained on the training split.

Random crops of the training images (the network is convolutional, so it reconstructs full images after
training on crops), the objective of :mod:`maskray.diffusion.autoencoder_losses`, AdamW for the autoencoder and
for the discriminator. Every batch, crop and posterior sample is a pure function of ``(seed, step)``, so
``--resume`` continues exactly. Checkpoints hold tensors only (``torch.save`` of state dicts, read back with
``weights_only=True``). At the end the latent scaling factor is measured on training images, the codec is
saved to ``RUN/autoencoder/`` and held-out images are scored into ``RUN/report.json`` and
``RUN/reconstructions.png``.

``--init-from`` starts from an existing autoencoder or latent model; ``--decoder-only`` then trains the decoder
alone (training/autoencoder_start.py), so a model's base and ControlNet keep their latents, and from a model the
run writes ``RUN/model``: that model with the new decoder. ``--segmenter CK --segmentation-weight W`` adds the
lesion-aware term: a frozen checker's DiceCE on the reconstructions against their masks (lungs, heart, nodules,
and the background where the mask has none), so the decoder learns not to draw a nodule the latent does not hold
(the nodule-utility issue: reconstructions alone showed 1.0 false nodules per image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from maskray.config import (Precision, data_option, fused_kernels_option, option, overwrite_option, precision_option,
                            resume_option, run_folder_option, stop_after_option, train_split_option)
from maskray.data.dataset import Dataset
from maskray.files import prepare_output_dir
from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
from maskray.diffusion.autoencoder_losses import AutoencoderLoss, LossWeights
from maskray.diffusion.fused import FUSED_KERNELS, fuse_norm_silu, training_kernels
from maskray.distributed import autocast_dtype, device, resolve_precision
from maskray.errors import MaskrayError
from maskray.files import atomic_path, atomic_write, read_json
from maskray.measures.features import FeatureNet, train_feature_net
from maskray.memory import keep_freed_memory
from maskray.provenance import to_jsonable, write_run_info
from maskray.diffusion.store import save_with_codec
from maskray.training.autoencoder_report import reconstruction_picture, reconstruction_report
from maskray.training.autoencoder_start import encoder_hash, freeze_encoder, open_start
from maskray.training.data import TrainingArrays, crop_pairs, crops, load_arrays
from maskray.training.decoder_samples import sampled_latents
from maskray.training.mask_terms import CheckerLoss

CHECKPOINT = "checkpoint.pt"
LOG_FIELDS = ("step", "loss", "l1", "kl", "perceptual", "feature_matching", "adversarial", "adversarial_weight",
              "segmentation", "segmentation_sampled", "disc", "lr", "images_per_s", "elapsed_s")


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """One autoencoder run. The loss-weight defaults are :class:`LossWeights`' (docs/latent.md says why)."""

    data: str = data_option()
    out: str = run_folder_option()
    image_size: int = option(256, help="resolution the images are resized to")
    crop_size: int = option(128, help="training crop side (0: whole images)")
    factor: int = option(4, help="spatial downsampling, 4 or 8 (4: 256 px -> 64 x 64 latent)")
    latent_channels: int = option(4, help="latent channels")
    block_out_channels: tuple[int, ...] = option((32, 64, 64), help="channels per level, finest first")
    split: str = train_split_option()
    eval_split: str = option("val", help="held-out split for the report (falls back to test)")
    eval_cases: int = option(16, help="held-out images scored in the report")
    steps: int = option(1000, help="optimizer steps")
    batch_size: int = option(8, help="crops per step")
    lr: float = option(1e-3, help="AdamW learning rate (autoencoder and discriminator)")
    warmup_steps: int = option(50, help="linear learning-rate warm-up")
    l1_weight: float = option(LossWeights.l1, help="weight of the L1 reconstruction loss")
    kl_weight: float = option(LossWeights.kl, help="weight of the KL term (per image pixel)")
    perceptual_weight: float = option(LossWeights.perceptual, help="weight of the perceptual loss (0: off)")
    feature_matching_weight: float = option(LossWeights.feature_matching,
                                            help="weight of discriminator feature matching (0: off)")
    adversarial_weight: float = option(LossWeights.adversarial, help="weight of the hinge adversarial loss (0: off)")
    disc_start: int = option(0, help="steps before the discriminator and its terms switch on (0: half the run)")
    adaptive_weight: bool = option(LossWeights.adaptive, help="scale the adversarial weight by latent diffusion's "
                                                              "adaptive weight (off: measured better, docs/latent.md)")
    feature_net: str | None = option(None, help="a trained feature network folder (else one is trained)")
    feature_steps: int = option(300, help="steps of self-supervised feature-network training")
    scale_cases: int = option(64, help="training images used to measure the latent scaling factor")
    init_from: str | None = option(None, help="start from this autoencoder (a run or its autoencoder/ folder) or "
                                              "latent model (run or model folder); its shape replaces --factor, "
                                              "--latent-channels and --block-out-channels")
    decoder_only: bool = option(False, help="train the decoder alone (needs --init-from): the encoder and scaling "
                                            "factor, so a model's latents, stay as they are; from a model the run "
                                            "writes RUN/model, that model with the new decoder")
    segmenter: str | None = option(None, help="a checker folder (maskray train checker on the real pairs) for the "
                                              "lesion-aware term")
    segmentation_weight: float = option(0.0, help="weight of the checker's DiceCE on the reconstructions against "
                                                  "their masks (0: off; needs --segmenter)")
    sampled_batch: int = option(0, help="latents the --init-from model draws for training masks, decoded each step "
                                        "and scored by the --segmenter term (training/decoder_samples.py)")
    precision: Precision = precision_option()
    fused_kernels: bool = fused_kernels_option("1.2x faster encode-decode steps, benchmarks/bench_kernels.py --autoencoder")
    checkpoint_every: int = option(250, help="steps between checkpoints")
    seed: int = option(0, help="seed for weights, batches, crops, noise")
    resume: bool = resume_option()
    overwrite: bool = overwrite_option()
    stop_after: int | None = stop_after_option()

    def autoencoder_config(self) -> AutoencoderConfig:
        return AutoencoderConfig(factor=self.factor, latent_channels=self.latent_channels,
                                 block_out_channels=self.block_out_channels)

    def loss_weights(self) -> LossWeights:
        start = self.disc_start or self.steps // 2
        return LossWeights(l1=self.l1_weight, kl=self.kl_weight, perceptual=self.perceptual_weight,
                           feature_matching=self.feature_matching_weight, adversarial=self.adversarial_weight,
                           disc_start=start, adaptive=self.adaptive_weight)


def _validate(cfg: AutoencoderTrainConfig) -> None:
    if not cfg.data or not cfg.out:
        raise MaskrayError("--data and --out are required")
    cfg.autoencoder_config()  # raises on a bad factor or channel list
    for name in ("steps", "batch_size", "checkpoint_every", "eval_cases", "scale_cases"):
        if getattr(cfg, name) < 1:
            raise MaskrayError(f"--{name.replace('_', '-')} must be at least 1")
    side = cfg.crop_size or cfg.image_size
    if side > cfg.image_size or side % 16 or cfg.image_size % 16:
        raise MaskrayError(f"--image-size {cfg.image_size} and --crop-size {cfg.crop_size} must be multiples of 16 "
                           f"with the crop no larger than the image")
    for name in ("l1_weight", "kl_weight", "perceptual_weight", "feature_matching_weight", "adversarial_weight",
                 "segmentation_weight"):
        if getattr(cfg, name) < 0:
            raise MaskrayError(f"--{name.replace('_', '-')} must not be negative")
    if cfg.decoder_only and not cfg.init_from:
        raise MaskrayError("--decoder-only needs --init-from (the autoencoder or latent model whose encoder it keeps)")
    if cfg.sampled_batch and not (cfg.decoder_only and cfg.segmentation_weight > 0 and cfg.crop_size in (0, cfg.image_size)):
        raise MaskrayError("--sampled-batch needs --decoder-only, --segmenter with a weight, and whole images "
                           "(--crop-size 0)")
    if (cfg.segmentation_weight > 0) != bool(cfg.segmenter):
        raise MaskrayError("--segmentation-weight and --segmenter go together (a weight above 0 and a checker folder)")


def _feature_net(cfg: AutoencoderTrainConfig, arrays: TrainingArrays, out: Path, progress: bool) -> FeatureNet | None:
    if cfg.perceptual_weight <= 0:
        return None
    if cfg.feature_net:
        return FeatureNet.load(cfg.feature_net)
    if (out / "feature_net").is_dir():  # resumed run: the network it trained
        return FeatureNet.load(out / "feature_net")
    side = cfg.crop_size or cfg.image_size
    images = torch.cat([crops(arrays, k, 16, side, cfg.seed + 1) for k in range(max(1, len(arrays) // 16))])
    net = train_feature_net(images, steps=cfg.feature_steps, seed=cfg.seed, progress=progress)
    net.save(out / "feature_net")
    return net


def train_autoencoder(cfg: AutoencoderTrainConfig, progress: bool = True) -> Path:
    """Run (or resume) autoencoder training; returns the run folder."""
    _validate(cfg)
    dev = device()
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, dev))  # recorded resolved
    ds = Dataset(cfg.data)
    out = Path(cfg.out)
    if cfg.resume:
        if not (out / CHECKPOINT).is_file():
            raise MaskrayError(f"{out}: no {CHECKPOINT} to resume from")
    else:
        prepare_output_dir(out, overwrite=cfg.overwrite, hint="--resume (continue) or --overwrite (replace)")
    seg = CheckerLoss(cfg.segmenter, ds.labels) if cfg.segmentation_weight > 0 else None
    arrays = load_arrays(ds, cfg.image_size, cfg.split, need_labels=seg is not None, progress=progress)
    weights = cfg.loss_weights()
    torch.manual_seed(cfg.seed)  # initial weights: the one global seed, set at the edge of the run
    codec, source_model = open_start(cfg.init_from) if cfg.init_from else (LatentCodec.new(cfg.autoencoder_config()),
                                                                          None)
    if cfg.sampled_batch and source_model is None:
        raise MaskrayError(f"{cfg.init_from}: --sampled-batch needs a model to draw latents (this is an autoencoder)")
    sampled = sampled_latents(source_model, arrays, ds.labels, out, cfg.seed, progress=progress) \
        if cfg.sampled_batch else None
    start_state = ({"autoencoder_sha256": codec.weights_hash(), "encoder_sha256": encoder_hash(codec.vae)}
                   if cfg.init_from else None)
    loss_fn = AutoencoderLoss(weights, _feature_net(cfg, arrays, out, progress)).to(dev)
    vae = codec.vae.to(dev).train()
    if cfg.decoder_only:
        freeze_encoder(vae)
    kernels = training_kernels(dev, cfg.precision, cfg.fused_kernels)
    allocator = keep_freed_memory()
    if kernels == FUSED_KERNELS:  # the kernel trains channels_last tensors
        vae.to(memory_format=torch.channels_last)
        fuse_norm_silu(vae)
    opt_g = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) \
        if loss_fn.discriminator is not None else None
    start = _load_checkpoint(out, vae, loss_fn, opt_g, opt_d) if cfg.resume else 0
    _cut_log(out / "log.csv", start)
    write_run_info(out, "train autoencoder", cfg, seed=cfg.seed, checkpoint=cfg.init_from or cfg.feature_net,
                   extra={"train_cases": len(arrays), "dataset": str(ds.root), "loss_weights": weights,
                          "parameters": sum(p.numel() for p in vae.parameters()),
                          "trained_parameters": sum(p.numel() for p in vae.parameters() if p.requires_grad),
                          "kernels": kernels, "allocator": allocator,
                          "init_from": start_state})
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    seconds = _loop(cfg, arrays, vae, (loss_fn, seg, sampled), opt_g, opt_d, out, start, end, progress,
                    channels_last=kernels == FUSED_KERNELS)
    if end < cfg.steps:
        return out
    _finish(cfg, ds, arrays, codec, out, seconds, progress)
    if cfg.decoder_only:
        if encoder_hash(codec.vae) != start_state["encoder_sha256"]:
            raise MaskrayError(f"{out}: the encoder changed in a --decoder-only run (a bug; the model is not written)")
        if source_model is not None:
            save_with_codec(source_model, codec, out / "model",
                            {"from_autoencoder_sha256": start_state["autoencoder_sha256"], "steps": cfg.steps,
                             "segmentation_weight": cfg.segmentation_weight, "sampled_batch": cfg.sampled_batch,
                             "l1_weight": cfg.l1_weight,
                             "perceptual_weight": cfg.perceptual_weight, "adversarial_weight": cfg.adversarial_weight})
    return out


def _autocast(cfg: AutoencoderTrainConfig, dev: torch.device):
    dtype = autocast_dtype(cfg.precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(dev.type, dtype=dtype)


def _update(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One optimiser step; in fp16 through the gradient scaler (a no-op when it is disabled)."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _loop(cfg, arrays, vae, losses, opt_g, opt_d, out: Path, start: int, end: int, progress: bool,
          channels_last: bool = False) -> float:
    """Steps ``start .. end - 1``: one ``log.csv`` row each (flushed), checkpoints; returns training seconds."""
    dev = next(vae.parameters()).device
    scalers = tuple(torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16") for _ in range(2))
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    t0, seconds0 = time.time(), _elapsed(out)
    with open(log_path, "a", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS, restval="")
        if new_log:
            writer.writeheader()
        bar = tqdm(total=cfg.steps, initial=start, desc="train autoencoder", unit="step", disable=not progress,
                   dynamic_ncols=True)
        for step in range(start, end):
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            parts = _step(cfg, arrays, vae, losses, opt_g, opt_d, step, lr, channels_last, scalers)
            done, elapsed = step + 1, seconds0 + time.time() - t0
            writer.writerow({"step": done, "lr": f"{lr:.3e}", "elapsed_s": f"{elapsed:.1f}",
                             "images_per_s": f"{(done - start) * cfg.batch_size / (time.time() - t0):.2f}",
                             **{k: f"{v:.6g}" for k, v in parts.items()}})
            f.flush()
            bar.set_postfix(loss=f"{parts['loss']:.4f}", l1=f"{parts['l1']:.4f}")
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == end:
                _save_checkpoint(out, vae, losses[0], opt_g, opt_d, done, elapsed)
        bar.close()
    return seconds0 + time.time() - t0


def _step(cfg, arrays, vae, losses, opt_g, opt_d, step: int, lr: float, channels_last: bool,
          scalers: tuple) -> dict[str, float]:
    """One autoencoder update, then (after the warm-up) one discriminator update; returns the loss parts.
    ``losses``: the autoencoder loss, the lesion-aware checker term (or ``None``) and the model's sampled
    latents with their masks (or ``None``). ``scalers``: the
    autoencoder's and the discriminator's fp16 gradient scalers (disabled in other precisions; not checkpointed:
    a resumed fp16 run starts its scale afresh)."""
    loss_fn, seg, sampled = losses
    for opt in (opt_g, opt_d):
        for group in (opt.param_groups if opt is not None else ()):
            group["lr"] = lr
    dev = next(vae.parameters()).device
    x, lab = crop_pairs(arrays, step, cfg.batch_size, cfg.crop_size or cfg.image_size, cfg.seed)
    x = x.to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 17)
    with _autocast(cfg, dev):
        with torch.no_grad() if cfg.decoder_only else contextlib.nullcontext():
            post = vae.encode(x).latent_dist
        xrec = vae.decode(post.sample(generator=gen)).sample.float()
        loss, parts = loss_fn.generator_loss(x, xrec, post, step, vae.decoder.conv_out.weight)
        if seg is not None:
            term = seg(xrec, lab)
            loss = loss + cfg.segmentation_weight * term
            parts["segmentation"] = float(term.detach())
        if sampled is not None:  # the model's own latents for training masks: the checker's term alone
            pick = arrays.indices(step, cfg.sampled_batch, cfg.seed + 1)
            z = sampled[0][pick].to(dev)
            z = z.contiguous(memory_format=torch.channels_last) if channels_last else z
            term = seg(vae.decode(z).sample.float(), sampled[1][pick])
            loss = loss + cfg.segmentation_weight * term
            parts["segmentation_sampled"] = float(term.detach())
    _update(loss, opt_g, scalers[0])
    parts["loss"] = float(loss.detach())
    if opt_d is not None and loss_fn.disc_active(step):
        with _autocast(cfg, dev):
            d_loss, d_parts = loss_fn.discriminator_loss(x, xrec, step)
        _update(d_loss, opt_d, scalers[1])
        parts["disc"] = d_parts["disc"]
    return parts


def _cut_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written after the last checkpoint of an interrupted run)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    if len(keep) != len(lines):
        atomic_write(path, "".join(keep))


def _elapsed(out: Path) -> float:
    path = out / "trainer_state.json"
    return float(read_json(path, what="trainer state").get("train_seconds", 0.0)) if path.is_file() else 0.0


def _save_checkpoint(out: Path, vae, loss_fn, opt_g, opt_d, step: int, seconds: float) -> None:
    """Tensors and plain containers only, written under a temporary name and renamed."""
    state = {"step": step, "vae": vae.state_dict(), "opt_g": opt_g.state_dict()}
    if opt_d is not None:
        state.update(disc=loss_fn.discriminator.state_dict(), opt_d=opt_d.state_dict())
    with atomic_path(out / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    atomic_write(out / "trainer_state.json", json.dumps({"step": step, "train_seconds": seconds}))


def _load_checkpoint(out: Path, vae, loss_fn, opt_g, opt_d) -> int:
    path = out / CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        vae.load_state_dict(state["vae"])
        opt_g.load_state_dict(state["opt_g"])
        if opt_d is not None:
            loss_fn.discriminator.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        return int(state["step"])
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        raise MaskrayError(f"{path}: cannot resume ({str(e).splitlines()[0]}); was the run started with other "
                           f"settings?") from None


def _held_out(ds: Dataset, cfg: AutoencoderTrainConfig) -> tuple[str, list[str]]:
    tried = list(dict.fromkeys((cfg.eval_split, "val", "test")))
    for split in tried:
        ids = ds.case_ids(split) if split in ds.splits else []
        if ids:
            return split, ids[: cfg.eval_cases]
    raise MaskrayError(f"{ds.root}: no held-out images (splits {', '.join(tried)} are empty); "
                       f"the report scores images the autoencoder did not train on")


@torch.no_grad()
def _finish(cfg, ds: Dataset, arrays: TrainingArrays, codec: LatentCodec, out: Path, seconds: float,
            progress: bool) -> Path:
    codec.vae.eval()
    if not cfg.decoder_only:  # a kept encoder keeps its scaling factor: the latents must not change
        scale_images = arrays.pixels(torch.arange(min(cfg.scale_cases, len(arrays))))
        codec.measure_scaling_factor(scale_images, batch_size=4)
    split, ids = _held_out(ds, cfg)
    labelled = all(ds.cases[c].label_path is not None for c in ids) and ds.has_labels
    held = load_arrays(ds, cfg.image_size, split, need_labels=labelled, progress=progress)
    keep = torch.tensor([held.case_ids.index(c) for c in ids])
    real = held.pixels(keep)
    labels = held.labels[keep].long() if held.labels is not None else None
    recon = torch.cat([codec.decode(codec.encode(real[i:i + 4])).cpu() for i in
                       tqdm(range(0, len(real), 4), desc="scoring held-out", disable=not progress, leave=False)])
    report = reconstruction_report(real, recon, labels, ds.labels)
    report.update(split=split, cases=ids, image_size=cfg.image_size, train_seconds=round(seconds, 1),
                  steps=cfg.steps, scaling_factor=codec.scaling_factor, loss_weights=to_jsonable(cfg.loss_weights()),
                  autoencoder=to_jsonable(codec.config))
    codec.summary = {"steps": cfg.steps, "train_seconds": round(seconds, 1), "dataset": str(ds.root),
                     "psnr_db": report["psnr_db"]["mean"], "ssim": report["ssim"]["mean"],
                     "loss_weights": to_jsonable(cfg.loss_weights())}
    codec.save(out / "autoencoder")
    report["weights_sha256"] = codec.weights_hash()
    reconstruction_picture(real, recon, out / "reconstructions.png")
    atomic_write(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    return out
