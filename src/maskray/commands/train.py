"""``maskray train STAGE``: one sub-command per entry of ``training/stages.STAGES`` (autoencoder, base, controlnet,
distil, checker): parse, build the stage's config, run it (the shared loop, or the stage's own); ``maskray train
join``: join separately trained ControlNets of one base into one model."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.diffusion.join import join_models, parse_sources
from maskray.training.stages import STAGES
from maskray.training.trainer import train


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model's stages (autoencoder, base, controlnet, distil) or the checker")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, entry in STAGES.items():
        sp = stages.add_parser(stage, help=entry.help, description=f"{entry.help}. Trains {entry.trains}; frozen: "
                               f"{entry.frozen}; writes {', '.join('OUT/' + p for p in entry.saves)}.")
        add_config_argument(sp)
        add_arguments(sp, entry.config)
        sp.set_defaults(func=_run, stage=stage)
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


def _join(args) -> int:
    out = join_models(parse_sources(args.controlnet), args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _run(args) -> int:
    entry = STAGES[args.stage]
    cfg = from_args(entry.config, args)
    out = entry.run(cfg) if entry.run is not None else train(cfg, args.stage)
    print(f"wrote {out}")
    return 0
