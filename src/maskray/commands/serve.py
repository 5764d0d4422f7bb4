"""``maskray serve``: parse, build a ServeConfig, run the page."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.serve.server import ServeConfig, serve


def register(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: place nodules on a mask, generate, compare, download",
                       description="Serve a page on this machine (127.0.0.1 by default; it has no authentication) "
                                   "to pick a case of --data, place nodules inside its lung fields, generate with "
                                   "--model, compare with the real image and download the pair (PNG, NIfTI, "
                                   "DICOM marked synthetic) or add it to --out.")
    add_config_argument(p)
    add_arguments(p, ServeConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    serve(from_args(ServeConfig, args))
    return 0
