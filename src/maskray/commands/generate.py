"""``maskray generate``: parse, build a GenerateConfig, call the pipeline."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.pipelines.generate import GenerateConfig, generate


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images for label maps (a new dataset in the native layout)",
                       description="Generate images that follow each label map of --masks with a stage-2 model.")
    add_config_argument(p)
    add_arguments(p, GenerateConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    out = generate(from_args(GenerateConfig, args))
    print(f"wrote {out}")
    return 0
