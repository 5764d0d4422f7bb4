"""``maskray train base|controlnet|distil``: parse, build a TrainConfig, call the trainer; ``maskray train join``:
join separately trained ControlNets of one base into one model; ``maskray train checker``: the segmenter of
``generate --check``."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.commands.train_autoencoder import register_stage as register_autoencoder
from maskray.config import add_arguments, from_args
from maskray.diffusion.join import join_models, parse_sources
from maskray.training.checker import CheckerConfig, train_checker
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
    _register_checker(stages)
    _register_join(stages)


def _register_join(stages) -> None:
    help_ = "join ControlNets trained separately on one base (one stage-2 run per condition) into one model"
    sp = stages.add_parser("join", help=help_, description=help_ + "; generate --model OUT then uses them together, "
                           "with --conditioning-scale and --guidance-scale per condition")
    sp.add_argument("--controlnet", action="append", required=True, metavar="CONDITION=RUN",
                    help="a condition and the stage-2 run whose ControlNet follows it; once per condition "
                         "(e.g. --controlnet mask=runs/cn-mask --controlnet edges=runs/cn-edges)")
    sp.add_argument("--out", required=True, help="run folder of the joined model (written to OUT/model)")
    sp.add_argument("--overwrite", action="store_true", help="replace OUT if it holds files")
    sp.set_defaults(func=_join)


def _register_checker(stages) -> None:
    help_ = "the segmenter that generate --check scores every generated image with (trained on real pairs)"
    sp = stages.add_parser("checker", help=help_, description=help_ + "; writes OUT/checker.json, "
                           "OUT/checker.safetensors and OUT/report.json (the check on real held-out images)")
    add_config_argument(sp)
    add_arguments(sp, CheckerConfig)
    sp.set_defaults(func=_checker, stage="checker")


def _checker(args) -> int:
    out = train_checker(from_args(CheckerConfig, args))
    print(f"wrote {out}")
    return 0


def _join(args) -> int:
    out = join_models(parse_sources(args.controlnet), args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _run(args) -> int:
    cfg = from_args(TrainConfig, args)
    out = train(cfg, args.stage)
    print(f"wrote {out}")
    return 0
