"""What one training run needs: a typed, frozen config (defaults live here and nowhere else)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from maskray.config import (Precision, data_option, fused_kernels_option, option, option_like, overwrite_option,
                            precision_option, resume_option, run_folder_option, stop_after_option, train_split_option)
from maskray.diffusion.edges import EdgeConfig
from maskray.diffusion.networks import UNetConfig
from maskray.diffusion.objective import LATENT_SNR_SHIFT, DiffusionConfig
from maskray.errors import MaskrayError

Stage = Literal["base", "controlnet", "distil"]
# kept out of the model card, which travels with exported data
PATH_FIELDS = ("data", "out", "base", "autoencoder", "pretrained", "model", "consistency_checker")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Defaults are the CPU-tuned ones (benchmarks/bench_learning.py)."""

    data: str = data_option()
    out: str = run_folder_option()
    base: str | None = option(None, help="stage-1 run folder (stage 2 only)")
    model: str | None = option(None, help="trained base + ControlNet run to distil (distil only)")
    student_steps: int = option(4, help="sampler steps of the distilled student (distil only)")
    teacher_steps: int = option(16, help="teacher DDIM steps over the whole trajectory that the student's steps "
                                         "are trained to match (distil only; a multiple of --student-steps)")
    autoencoder: str | None = option(None, help="'maskray train autoencoder' run: stage 1 learns in its latent "
                                     "space (stage 2 takes its base's autoencoder)")
    pretrained: str | None = option(None, help="Stable Diffusion folder in diffusers layout (vae, unet, text_encoder, "
                                    "tokenizer, scheduler) as the frozen base (stage 2 only; docs/stable_diffusion.md)")
    prompt: str | None = option(None, help="Stable Diffusion mode: the prompt the base is conditioned on "
                                "(default 'a chest radiograph')")
    image_size: int = option(64, help="training resolution (64..512, divisible by 2**(levels-1))")
    split: str = train_split_option()
    steps: int = option(800, help="optimizer steps")
    batch_size: int = option(32, help="images per step (per process)")
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    lr: float = option(2e-3, help="peak learning rate (AdamW)")
    warmup_steps: int = option(50, help="linear warm-up steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", help="decay after warm-up")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    precision: Precision = precision_option()
    channels_last: bool | None = option(None, help="NHWC memory format (default: on where the fused GroupNorm + "
                                                   "SiLU kernel trains, bf16 on a CPU; else off)")
    fused_kernels: bool = fused_kernels_option("1.1-1.5x faster training, benchmarks/bench_kernels.py")
    ema_decay: float = option(0.999, help="EMA decay ceiling (warm-up ramps to it); 0 disables EMA")
    checkpoint_every: int = option(200, help="steps between checkpoints (accelerate save_state)")
    keep_checkpoints: int = option(2, help="checkpoints kept")
    validate_every: int = option(0, help="steps between validation images (0: 8 times per run)")
    validation_cases: int = option(4, help="masks (or noise seeds) in the validation strip")
    validation_sampler_steps: int = option(20, help="DDIM steps for validation images")
    cond_drop: float = option(0.1, help="fraction of steps with the mask dropped (stage 2)")
    conditioning_scale: float = option(1.0, help="ControlNet residual scale during training")
    conditions: tuple[str, ...] = option(("mask",), help="stage 2: conditions, one ControlNet each (mask, edges)")
    edge_sigma: float = option(1.0, help="Canny edge maps: Gaussian sigma in pixels at the training size")
    edge_low_threshold: float = option(0.75, help="Canny low threshold (a quantile of the gradient magnitude)")
    edge_high_threshold: float = option(0.9, help="Canny high threshold (a quantile of the gradient magnitude)")
    attributes: tuple[str, ...] = option((), help="stage 1: patient attributes from cases.json to condition on, "
                                         "e.g. sex,age (stage 2 takes its base's; with --pretrained they join "
                                         "the prompt)")
    seed: int = option(0, help="seed for weights, batches, noise")
    log: Literal["csv", "tensorboard"] = option("csv", help="log format (always CSV; tensorboard adds events)")
    resume: bool = resume_option()
    overwrite: bool = overwrite_option()
    stop_after: int | None = stop_after_option()
    # stage 2: terms that make the ControlNet follow the mask where it says "no nodule" (training/mask_terms.py)
    region_weight: float = option(0.0, help="stage 2: extra weight of the denoising loss on lesion pixels and their "
                                            "ring (0: off)")
    region_ring: int = option(4, help="stage 2: ring around each lesion, in pixels, that --region-weight covers")
    consistency_weight: float = option(0.0, help="stage 2: weight of the mask-consistency term (a frozen checker "
                                                 "segments the one-step clean estimate; 0: off)")
    consistency_checker: str | None = option(None, help="stage 2: checker folder (maskray train checker) for "
                                                        "--consistency-weight")
    consistency_max_t: int = option(200, help="stage 2: the consistency term applies at timesteps below this")
    consistency_batch: int = option(4, help="stage 2: at most this many samples a step are scored for consistency")
    lesion_label: str = option("nodule", help="stage 2: the label that --region-weight weights")
    # network (stage 1; stage 2 copies the base)
    block_out_channels: tuple[int, ...] = option((32, 64, 128), help="UNet channels per level")
    layers_per_block: int = option(1, help="ResNet blocks per UNet level")
    attention_levels: tuple[int, ...] = option((), help="UNet levels with self-attention (0 = full res)")
    norm_num_groups: int = option_like(UNetConfig, "norm_num_groups")
    cond_embedding_channels: tuple[int, ...] = option((16,), help="ControlNet mask encoder channels; it "
                                                      "downsamples by 2**(len-1) with strided convolutions; on a "
                                                      "latent base the rest of the factor is folded into channels "
                                                      "(a Stable Diffusion base widens a len-1 value to its "
                                                      "factor instead)")
    # diffusion (stage 1; stage 2 inherits target and schedule from its base)
    prediction_type: Literal["epsilon", "v_prediction"] = option_like(DiffusionConfig, "prediction_type")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = option_like(DiffusionConfig,
                                                                                         "beta_schedule")
    min_snr_gamma: float = option(5.0, help="min-SNR-gamma loss weighting (0 disables)")
    timestep_bias: float = option(0.0, help="draw t with density ~ t**bias")
    snr_shift: float | None = option(None, help="divide each noise level's signal-to-noise ratio by this squared: "
                                               "> 1 trains more at the noise levels where layout forms (stage 1; "
                                               "default 4 on latents, 1 in pixels; stage 2 takes its base's)")

    def unet_config(self) -> UNetConfig:
        return UNetConfig(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
                          attention_levels=self.attention_levels, norm_num_groups=self.norm_num_groups)

    def edge_config(self) -> EdgeConfig:
        return EdgeConfig(sigma=self.edge_sigma, low_threshold=self.edge_low_threshold,
                          high_threshold=self.edge_high_threshold, use_quantiles=True)

    def diffusion_config(self, latent: bool = False) -> DiffusionConfig:
        """Stage 1's objective; ``latent``: the model learns on an autoencoder's latents (its own schedule shift)."""
        shift = self.snr_shift if self.snr_shift is not None else (LATENT_SNR_SHIFT if latent else 1.0)
        return DiffusionConfig(prediction_type=self.prediction_type, beta_schedule=self.beta_schedule,
                               min_snr_gamma=self.min_snr_gamma, timestep_bias=self.timestep_bias,
                               snr_shift=shift)


def validate(cfg: TrainConfig, stage: Stage) -> None:
    if not cfg.data:
        raise MaskrayError("--data is required")
    if not cfg.out:
        raise MaskrayError("--out is required")
    if not 16 <= cfg.image_size <= 512:
        raise MaskrayError(f"--image-size {cfg.image_size} is outside 16..512")
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise MaskrayError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.snr_shift is not None and not 0 < cfg.snr_shift <= 64:
        raise MaskrayError(f"--snr-shift {cfg.snr_shift} must lie in (0, 64]")
    if not 0 <= cfg.cond_drop < 1:
        raise MaskrayError("--cond-drop must lie in [0, 1)")
    if cfg.log == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise MaskrayError("--log tensorboard needs the tensorboard package (pip install tensorboard); "
                               "the CSV log is always written")
    if stage == "distil" and (not cfg.model or cfg.student_steps < 1 or cfg.teacher_steps % cfg.student_steps):
        raise MaskrayError("distil needs --model RUN (a trained base + ControlNet), --student-steps >= 1 and "
                           "--teacher-steps a multiple of --student-steps")
    if stage != "controlnet" and (cfg.region_weight or cfg.consistency_weight):
        raise MaskrayError("--region-weight and --consistency-weight are stage-2 (controlnet) terms")
    if stage == "controlnet" and not cfg.base and not cfg.pretrained:
        raise MaskrayError("stage 2 needs --base RUN (a finished 'maskray train base' run) or --pretrained DIR "
                           "(a Stable Diffusion folder)")
    _validate_pretrained(cfg, stage)


def _validate_pretrained(cfg: TrainConfig, stage: Stage) -> None:
    """--pretrained replaces stage 1 and the autoencoder; --prompt belongs to it."""
    if cfg.prompt is not None and not cfg.pretrained:
        raise MaskrayError("--prompt needs --pretrained DIR (maskray's own models take no text)")
    if not cfg.pretrained:
        return
    if stage != "controlnet":
        raise MaskrayError("--pretrained DIR is the frozen base itself: train only 'controlnet' on it")
    if cfg.base or cfg.autoencoder:
        raise MaskrayError("--pretrained DIR brings its own base and VAE; leave out --base and --autoencoder")
    if cfg.snr_shift is not None:
        raise MaskrayError("--pretrained DIR brings its own noise schedule; leave out --snr-shift")
