"""Every stage of ``maskray train``, registered in ``STAGES`` (what each trains, keeps frozen and writes, and how it
runs), and the setups of the stages the shared loop trains: what is trained, what stays frozen, how a batch becomes
the network's condition, and the model card of the result. The training loop (trainer.py) is the same for every
such stage.

- ``base`` (stage 1): a fresh UNet learns the look of radiographs; no condition.
- ``controlnet`` (stage 2): the base is loaded and frozen; a ControlNet copied from it (zero-initialised joins)
  learns to follow the one-hot mask, which is dropped for ``cond_drop`` of the samples (guidance).
  ``--conditions mask,edges``: one ControlNet per condition, trained jointly (their residuals add, as at
  generation), each condition dropped independently (training/batch_conditions.py).
- ``--attributes sex,age`` (stage 1; stage 2 inherits the base's): the patient attributes enter the UNet (and the
  ControlNets copied from it) as an embedding added to the time embedding, dropped like the conditions.

With an autoencoder (``--autoencoder RUN``) both stages learn on its latents (Rombach et al. 2022): the UNet
denoises ``(latent_channels, S/f, S/f)`` samples, and the mask still enters the ControlNet at image resolution
through a conditioning embedding that downsamples by the factor ``f``.

With a Stable Diffusion folder (``--pretrained DIR``, stage 2 only) its UNet is the frozen base, its RGB VAE the
codec and its encoded prompt the cross-attention context; with ``--attributes`` each case's attributes join the
prompt ("a chest radiograph of a female patient, age 60-70") and are dropped with the attribute dropout. The run's
model folder stores the ControlNet and the card, and names the folder instead of copying it (diffusion/pretrained.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maskray.data.attributes import read_case_attributes
from maskray.data.dataset import Dataset
from maskray.diffusion import pretrained as sd
from maskray.diffusion.autoencoder import LatentCodec
from maskray.diffusion.card import ModelCard
from maskray.diffusion.attributes import vector_size, vocabulary_of
from maskray.diffusion.networks import ControlledUNet, ControlNetSet, build_controlnet, build_unet, mask_fold
from maskray.diffusion.objective import DiffusionConfig
from maskray.diffusion.model import MaskModel, Objective
from maskray.diffusion.store import save_model, save_pretrained_model
from maskray.errors import MaskrayError
from maskray.provenance import to_jsonable
from maskray.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
from maskray.training.batch_conditions import ConditionMaker, check_condition_names
from maskray.training.checker import CheckerConfig, train_checker
from maskray.training.config import Stage, TrainConfig
from maskray.training.distil import setup_distil
from maskray.training.mask_terms import MaskTerms, MaskTermsConfig
from maskray.training.stage_setup import StageSetup, make_card

def setup_stage(cfg: TrainConfig, stage: Stage, ds: Dataset) -> StageSetup:
    """The setup of ``stage`` for the shared loop (``STAGES``)."""
    entry = STAGES.get(stage)
    if entry is None or entry.setup is None:
        raise MaskrayError(f"'{stage}' is not a stage of the shared training loop (allowed: "
                           f"{', '.join(k for k, e in STAGES.items() if e.setup)})")
    return entry.setup(cfg, ds)


# A latent ControlNet on the mask alone samples with mask guidance 1.5 unless asked otherwise: on cxr-lungs it raised
# lung Dice from 0.957 to 0.976 (benchmarks/results/latent_guidance_cxr.json), on the 256 px phantom it found 81% of
# nodules against 79% at 1 (real 88%) with better realism (nodule_guidance.json; 75% against 89% on the plain-
# schedule model). Pixel models and other conditions keep 1.
LATENT_MASK_GUIDANCE = "1.5"


def _own_sampling(cfg: TrainConfig, base_card: ModelCard) -> dict:
    """What the model card asks of `generate` by default: mask guidance for a latent mask model trained for it."""
    if base_card.latent is not None and tuple(cfg.conditions) == ("mask",) and cfg.cond_drop > 0:
        return {"guidance_scale": LATENT_MASK_GUIDANCE}
    return {}


def _open_codec(cfg: TrainConfig) -> LatentCodec:
    path = Path(cfg.autoencoder)
    codec = LatentCodec.load(path / "autoencoder" if (path / "autoencoder").is_dir() else path)
    if cfg.image_size % codec.factor:
        raise MaskrayError(f"--image-size {cfg.image_size} is not divisible by the autoencoder's factor {codec.factor}")
    return codec


def _latent_card(codec: LatentCodec | None) -> dict | None:
    if codec is None:
        return None
    return {"factor": codec.factor, "latent_channels": codec.config.latent_channels,
            "scaling_factor": codec.scaling_factor, "autoencoder_sha256": codec.weights_hash()}


def _setup_base(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    codec = _open_codec(cfg) if cfg.autoencoder else None
    diff = cfg.diffusion_config(latent=codec is not None)
    unet_cfg = cfg.unet_config()
    if codec is not None:
        unet_cfg = dataclasses.replace(unet_cfg, in_channels=codec.config.latent_channels)
    case_attrs, vocab = _attribute_vocabulary(cfg, ds)
    unet = build_unet(unet_cfg, cfg.image_size // (codec.factor if codec else 1), attribute_dim=vector_size(vocab))
    maker = ConditionMaker((), [], None, vocab, case_attrs)
    return StageSetup(stage="base", trainable=unet, frozen=None, labels={},
                      joined=lambda trained: ControlledUNet(trained, None), maker=maker, cond_drop=cfg.cond_drop,
                      saver=lambda folder, trained, card: save_model(folder, trained, card, codec=codec),
                      codec=codec, card=make_card(cfg, "base", diff, {}, to_jsonable(unet_cfg), latent=_latent_card(codec),
                                              attributes={k: list(v) for k, v in vocab.items()}))


def _attribute_vocabulary(cfg: TrainConfig, ds: Dataset) -> tuple[dict, dict]:
    """The dataset's per-case attributes and the vocabulary of ``--attributes`` over the training split."""
    if not cfg.attributes:
        return {}, {}
    case_attrs = read_case_attributes(ds.root)
    train = set(ds.case_ids(cfg.split))
    return case_attrs, vocabulary_of({c: a for c, a in case_attrs.items() if c in train}, cfg.attributes)


def embedding_channels(requested: tuple[int, ...], factor: int, widen: bool = False) -> tuple[int, ...]:
    """ControlNet conditioning-embedding channels for a model of ``factor``. maskray's latent models keep a
    one-entry embedding and fold the mask into channels (networks.mask_fold); ``widen`` (a Stable Diffusion base,
    the reference design) turns a one-entry request into the strided convolutions that downsample by ``factor``."""
    if len(requested) == 1 and factor > 1 and widen:
        widths = {4: (16, 32, 64), 8: (16, 32, 96, 256)}
        return widths[factor]
    mask_fold(factor, requested)  # refuses an embedding that downsamples by more than the factor
    return tuple(requested)


def _need_labels(ds: Dataset) -> None:
    if not ds.has_labels:
        raise MaskrayError(f"{ds.root}: has no label maps (or dataset.json names no foreground label); stage 2 "
                           f"learns from image/mask pairs")


def _setup_controlnet(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    check_condition_names(cfg.conditions)
    if "mask" in cfg.conditions:
        _need_labels(ds)
    base = MaskModel.load(cfg.base)
    base_card = base.card
    if base_card.stage != "base":
        raise MaskrayError(f"{cfg.base}: is a '{base_card.stage}' run; --base needs a stage-1 run")
    if base_card.image_size != cfg.image_size:
        raise MaskrayError(f"{cfg.base}: base was trained at {base_card.image_size} px but --image-size is "
                           f"{cfg.image_size}; use the base's size")
    vocab = base_card.vocabulary
    if cfg.attributes and tuple(cfg.attributes) != tuple(vocab):
        raise MaskrayError(f"--attributes {','.join(cfg.attributes)}: stage 2 takes the attributes of its base "
                           f"({', '.join(vocab) or 'none'}); leave --attributes out")
    # target and schedule come from the base; the loss weighting is this stage's own
    diff = dataclasses.replace(DiffusionConfig(**base_card.diffusion), min_snr_gamma=cfg.min_snr_gamma,
                               timestep_bias=cfg.timestep_bias)
    if cfg.snr_shift is not None and cfg.snr_shift != diff.snr_shift:
        raise MaskrayError(f"--snr-shift {cfg.snr_shift}: stage 2 takes its base's noise schedule (shift "
                           f"{diff.snr_shift}); leave --snr-shift out")
    codec = base.codec
    if cfg.autoencoder and (codec is None or _open_codec(cfg).weights_hash() != codec.weights_hash()):
        raise MaskrayError(f"{cfg.autoencoder}: is not the autoencoder of the base {cfg.base}; stage 2 uses its "
                           f"base's (leave --autoencoder out)")
    unet = base.net.unet
    unet.requires_grad_(False).eval()
    labels = ds.info.foreground if "mask" in cfg.conditions else {}
    maker = ConditionMaker(tuple(cfg.conditions), list(labels.values()), cfg.edge_config(), vocab,
                           read_case_attributes(ds.root) if vocab else {})
    emb = embedding_channels(tuple(cfg.cond_embedding_channels), base_card.factor)
    nets = {n: build_controlnet(unet, maker.channels(n), emb, base_card.factor) for n in maker.names}
    controlnet = nets["mask"] if maker.card_conditions() == {} else ControlNetSet(nets)
    card = make_card(cfg, "controlnet", diff, labels, base_card.unet_config, base_unet_sha256=base_card.unet_sha256,
                 cond_embedding_channels=emb, latent=base_card.latent, conditions=maker.card_conditions(),
                 attributes=dict(base_card.attributes), sampling=_own_sampling(cfg, base_card))
    return StageSetup(stage="controlnet", trainable=controlnet, frozen=unet, labels=labels,
                      joined=lambda trained: ControlledUNet(unet, trained), maker=maker, cond_drop=cfg.cond_drop,
                      card=card, codec=codec, objective=_mask_terms(cfg, labels, codec, base_card.factor, diff))


def _mask_terms(cfg: TrainConfig, labels: dict[str, int], codec, factor: int, diff: DiffusionConfig
                ) -> Objective | None:
    """Stage 2's region weighting and mask consistency as the stage's objective (None: the denoising loss)."""
    terms = MaskTermsConfig(region_weight=cfg.region_weight, region_ring=cfg.region_ring,
                            consistency_weight=cfg.consistency_weight, consistency_max_t=cfg.consistency_max_t,
                            consistency_batch=cfg.consistency_batch, consistency_checker=cfg.consistency_checker,
                            lesion_label=cfg.lesion_label)
    if not terms.active:
        return None
    if "mask" not in cfg.conditions:
        raise MaskrayError("--region-weight and --consistency-weight need the mask condition")
    if codec is not None:
        codec.vae.requires_grad_(False).eval()
    mask_terms = MaskTerms(terms, labels, codec, factor, diff.prediction_type)

    def objective(model_fn, x0, cond, noise_schedule, generator, lab):
        mask = cond.maps.get("mask") if hasattr(cond, "maps") else cond
        return mask_terms.loss(model_fn, x0, mask, lab, noise_schedule, diff, generator)

    return objective


def _setup_pretrained_controlnet(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    """Stage 2 on a Stable Diffusion folder: its UNet frozen, its VAE as the codec, its prompt encoded once."""
    _need_labels(ds)
    if tuple(cfg.conditions) != ("mask",):
        raise MaskrayError("--pretrained (Stable Diffusion) trains a mask ControlNet only; --conditions are for "
                           "maskray's own bases")
    root = sd.check_folder(cfg.pretrained)
    hashes = sd.parts_sha256(root)
    scheduler_config, diff = sd.read_scheduler(root)
    diff = dataclasses.replace(diff, min_snr_gamma=cfg.min_snr_gamma, timestep_bias=cfg.timestep_bias)
    codec = sd.RGBLatentCodec.load(root, hashes["vae"])
    if cfg.image_size % codec.factor:
        raise MaskrayError(f"--image-size {cfg.image_size} is not divisible by the VAE's factor {codec.factor}")
    unet = sd.load_unet(root)
    if unet.config.in_channels != codec.latent_channels:
        raise MaskrayError(f"{root / 'unet'}: takes {unet.config.in_channels} channels but the VAE makes "
                           f"{codec.latent_channels}")
    prompt = sd.DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt
    case_attrs, vocab = _attribute_vocabulary(cfg, ds)
    prompts = sd.AttributePrompts(sd.PromptEncoder(root), prompt, vocab)  # attributes, when given, join the prompt
    labels = ds.info.foreground
    values = list(labels.values())
    emb = embedding_channels(tuple(cfg.cond_embedding_channels), codec.factor, widen=True)
    controlnet = build_controlnet(unet, len(labels), emb, codec.factor)
    summary = {k: to_jsonable(unet.config[k]) for k in ("in_channels", "block_out_channels", "cross_attention_dim",
                                                        "sample_size")}
    card = dataclasses.replace(
        make_card(cfg, "controlnet", diff, labels, summary, base_unet_sha256=hashes["unet"], cond_embedding_channels=emb,
                  latent=codec.latent_card(), pretrained={"prompt": prompt, "parts_sha256": hashes},
                  attributes={k: list(v) for k, v in vocab.items()}),
        unet_sha256=hashes["unet"], scheduler_config=scheduler_config)
    return StageSetup(stage="controlnet", trainable=controlnet, frozen=unet, labels=labels,
                      joined=lambda trained: ControlledUNet(unet, trained, prompts=prompts), card=card, codec=codec,
                      maker=ConditionMaker(("mask",), values, None, vocab, case_attrs), cond_drop=cfg.cond_drop,
                      saver=lambda folder, trained, c: save_pretrained_model(folder, trained, c, root))


def _setup_controlnet_or_pretrained(cfg: TrainConfig, ds: Dataset) -> StageSetup:
    """Stage 2 on maskray's own base, or on a Stable Diffusion folder when ``--pretrained`` is given."""
    return _setup_pretrained_controlnet(cfg, ds) if cfg.pretrained else _setup_controlnet(cfg, ds)


@dataclass(frozen=True)
class StageEntry:
    """One stage of ``maskray train``: its help, its config class, what it trains, keeps frozen and saves (paths
    under the run folder, checked by the tests on tiny runs), and how it runs: ``setup`` (a :class:`StageSetup`
    for the shared loop of trainer.py) or ``run`` (a stage with a loop of its own, ``run(cfg, progress)``)."""

    help: str
    config: type
    trains: str
    frozen: str
    saves: tuple[str, ...]
    setup: Callable[[TrainConfig, Dataset], StageSetup] | None = None
    run: Callable[..., Path] | None = None


_MODEL = ("model/maskray.json", "model/unet", "run.json", "log.csv")

# Every stage `maskray train` knows, registered here (commands/train.py makes one sub-command of each). A stage of
# the shared loop builds a StageSetup whose ``trainable`` and ``frozen`` are the parts named below and whose saver
# writes the folders named (none: the frozen base beside the trained ControlNet); the loop (trainer.py) never asks
# which stage it runs. The autoencoder (a generator and a discriminator, two optimisers) and the checker (a
# segmenter) have loops of their own.
STAGES = {
    "autoencoder": StageEntry(
        "the latent path's autoencoder (AutoencoderKL; L1, KL, perceptual, feature-matching, adversarial terms)",
        AutoencoderTrainConfig, trains="the encoder, the decoder and the patch discriminator (--decoder-only: the "
        "decoder and the discriminator)", frozen="the feature net; --decoder-only: the encoder; --segmenter: the "
        "checker", saves=("autoencoder", "report.json", "reconstructions.png", "run.json", "log.csv"),
        run=train_autoencoder),
    "base": StageEntry(
        "stage 1: a diffusion UNet learns the look of radiographs (masks not needed)", TrainConfig,
        trains="a fresh UNet (with --attributes, its attribute embedding too)", frozen="--autoencoder: the codec",
        saves=_MODEL, setup=_setup_base),
    "controlnet": StageEntry(
        "stage 2: a ControlNet on the frozen base learns to follow the masks", TrainConfig,
        trains="one ControlNet per condition, copied from the base through zero-initialised convolutions",
        frozen="the base UNet and the codec (--pretrained: the Stable Diffusion UNet, VAE and text encoder)",
        saves=("model/maskray.json", "model/controlnet", "run.json", "log.csv"), setup=_setup_controlnet_or_pretrained),
    "distil": StageEntry(
        "a few-step student of a trained base + ControlNet (--model RUN); generate uses its own steps", TrainConfig,
        trains="the student: a copy of the teacher's UNet and ControlNet", frozen="the teacher (--model RUN)",
        saves=(*_MODEL, "model/controlnet"), setup=setup_distil),
    "checker": StageEntry(
        "the segmenter that generate --check scores every generated image with (trained on real pairs)",
        CheckerConfig, trains="a segmenter on the real training pairs", frozen="nothing",
        saves=("checker.json", "checker.safetensors", "report.json", "run.json"), run=train_checker),
}
