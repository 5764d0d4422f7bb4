"""``maskray serve``: open the data set and the model named at start, build the app, run it on uvicorn.

Safe by default: the page binds to 127.0.0.1. It has no authentication, so binding to any other address
prints a warning first.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from maskray.config import option
from maskray.data.masks import MaskSynthConfig
from maskray.errors import MaskrayError
from maskray.serve.downloads import OutputDataset
from maskray.serve.engine import Engine
from maskray.serve.service import Service
from maskray.serve.workspace import Workspace


@dataclass(frozen=True)
class ServeConfig:
    model: str = option("", help="stage-2 run folder (the --out of 'maskray train controlnet')")
    data: str = option("", help="data set whose cases the page offers (native layout)")
    host: str = option("127.0.0.1", help="address to bind; the page has no authentication, so keep it local")
    port: int = option(8000, help="TCP port")
    out: str | None = option(None, help="output data set (native layout) that the page can add pairs to")
    max_queue: int = option(2, help="generations that may wait while one runs; further requests are refused")
    border_margin_mm: float = option(MaskSynthConfig.border_margin_mm,
                                     help="least distance from a nodule's edge to the lung border")
    min_gap_mm: float = option(MaskSynthConfig.min_gap_mm, help="least distance between the edges of two nodules")
    spacing_mm: float | None = option(None, help="pixel spacing when the data set's dataset.json has none")
    check: str | None = option(None, help="checker folder (maskray train checker), or several separated by commas "
                                          "(a panel): score every image against its mask, show the verdict and "
                                          "refuse to add a failing image to the output data set")

    def validate(self) -> None:
        """Refuse missing folders and out-of-range numbers before anything is opened."""
        for name in ("model", "data"):
            if not getattr(self, name):
                raise MaskrayError(f"--{name} is required")
        if not 1 <= self.port <= 65535:
            raise MaskrayError(f"--port {self.port}: allowed 1..65535")
        if not 0 <= self.max_queue <= 100:
            raise MaskrayError(f"--max-queue {self.max_queue}: allowed 0..100")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_service(cfg: ServeConfig) -> Service:
    """Open the data set, the model and the output data set named in ``cfg``; nothing else is ever read."""
    cfg.validate()
    rules = MaskSynthConfig(border_margin_mm=cfg.border_margin_mm, min_gap_mm=cfg.min_gap_mm,
                            spacing_mm=cfg.spacing_mm)
    workspace = Workspace(cfg.data, rules)
    engine = Engine(cfg.model, workspace.dataset)
    if rules.nodule_label not in engine.labels:
        raise MaskrayError(f"{cfg.model}: the model was not trained with a '{rules.nodule_label}' label "
                           f"(its labels: {', '.join(engine.labels)}), so it cannot draw nodules")
    checker = None
    if cfg.check:
        from maskray.pipelines.checked import open_checker

        checker = open_checker(cfg.check, None, None, engine.image_size, workspace.dataset.info.labels)
    output = None
    if cfg.out:
        first = workspace.dataset.cases[workspace.ids[0]].label_path
        from maskray.data.io import read_label_file

        height = read_label_file(first).shape[0]
        output = OutputDataset(cfg.out, workspace.dataset.info.labels,
                               workspace.spacing_at(engine.image_size, height), engine.record, cfg)
    return Service(workspace, engine, output, max_waiting=cfg.max_queue, checker=checker)


def serve(cfg: ServeConfig) -> None:
    """Run the page until interrupted."""
    import uvicorn

    from maskray.serve.app import create_app

    cfg.validate()
    if not is_loopback(cfg.host):
        print(f"maskray serve: WARNING: binding to {cfg.host}: the page has no authentication; anyone who can "
              f"reach this address can read the served data set and run the model", file=sys.stderr)
    print(f"maskray serve: loading {Path(cfg.model)} and {Path(cfg.data)} ...", file=sys.stderr)
    service = open_service(cfg)
    print(f"maskray serve: open http://{cfg.host}:{cfg.port}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        uvicorn.run(create_app(service), host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        service.close()
