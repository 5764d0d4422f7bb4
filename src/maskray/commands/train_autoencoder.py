"""``maskray train autoencoder``: parse, build an AutoencoderTrainConfig, call the trainer."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

HELP = "the latent path's autoencoder (AutoencoderKL; L1, KL, perceptual, feature-matching, adversarial terms)"


def register_stage(stages) -> None:
    """Add the ``autoencoder`` stage to ``maskray train``'s sub-commands."""
    sp = stages.add_parser("autoencoder", help=HELP, description=HELP)
    add_config_argument(sp)
    add_arguments(sp, AutoencoderTrainConfig)
    sp.set_defaults(func=_run, stage="autoencoder")


def _run(args) -> int:
    cfg = from_args(AutoencoderTrainConfig, args)
    out = train_autoencoder(cfg)
    print(f"wrote {out}")
    return 0
