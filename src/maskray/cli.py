"""maskray's command line: ``maskray COMMAND --help``."""

from __future__ import annotations

import argparse
import importlib
import sys

from maskray import __version__
from maskray.errors import MaskrayError

# Order is the order shown by ``maskray --help``.
COMMAND_MODULES = (
    "phantom", "data", "train", "generate", "masks", "export", "evaluate", "downstream", "demo",
    "serve",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``only`` that one (its module alone is imported: each pulls in torch
    and diffusers, so a command starts without loading the others)."""
    parser = argparse.ArgumentParser(
        prog="maskray",
        description="Learn from chest radiographs and their masks; generate new radiographs that follow a mask.",
    )
    parser.add_argument("--version", action="version", version=f"maskray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"maskray.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"maskray.commands.{name}":
                raise
            continue
        mod.register(sub)
    _add_device_option(parser)
    return parser


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` on every command (each leaf of the command tree), declared here once."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            _add_device_option(child)
    if not subs and parser.get_default("func") is not None:
        from maskray.distributed import DEVICE_HELP  # torch is loaded by the command modules already

        parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML config; flags override it")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """``--real``, ``--synthetic``, ``--out`` and ``--config``: the arguments of the commands that score a synthetic
    dataset against a real one (evaluate, downstream)."""
    parser.add_argument("--real", required=True, metavar="DATASET", help="real dataset (native layout, with a test "
                                                                         "split)")
    parser.add_argument("--synthetic", required=True, metavar="DATASET", help="synthetic dataset (native layout)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty unless "
                                                                   "--overwrite)")
    add_config_argument(parser)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMAND_MODULES else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        from maskray.distributed import choose_device

        choose_device(args.device)
        result = args.func(args)
    except MaskrayError as e:
        print(f"maskray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maskray: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
