"""``maskray train base|controlnet|distil``: parse, build a TrainConfig, call the trainer."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.commands.train_autoencoder import register_stage as register_autoencoder
from maskray.config import add_arguments, from_args
from maskray.training.trainer import TrainConfig, train


def register(sub) -> None:
    p = sub.add_parser("train", help="train stage 1 (base) or stage 2 (ControlNet)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, help_ in (("base", "stage 1: a diffusion UNet learns the look of radiographs (masks not needed)"),
                         ("controlnet", "stage 2: a ControlNet on the frozen base learns to follow the masks"),
                         ("distil", "a few-step student of a trained base + ControlNet (--model RUN); "
                                    "generate uses its own steps")):
        sp = stages.add_parser(stage, help=help_, description=help_)
        add_config_argument(sp)
        add_arguments(sp, TrainConfig)
        sp.set_defaults(func=_run, stage=stage)
    register_autoencoder(stages)


def _run(args) -> int:
    cfg = from_args(TrainConfig, args)
    out = train(cfg, args.stage)
    print(f"wrote {out}")
    return 0
