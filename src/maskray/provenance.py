"""Every output records how it was made: resolved config, seeds, package versions, source checkpoint."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from maskray.files import atomic_write

_PACKAGES = ("maskray", "torch", "diffusers", "accelerate", "monai", "numpy", "scipy", "pillow", "pydicom", "nibabel")


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape maskray's outputs."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_run_info(out_dir: str | os.PathLike, command: str, config: Any, seed: int | None = None,
                   checkpoint: str | None = None, extra: dict | None = None) -> Path:
    """Write ``run.json`` (command, resolved config, seed, versions, checkpoint, time) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "command": command,
        "argv": sys.argv,
        "config": to_jsonable(config),
        "seed": seed,
        "checkpoint": checkpoint,
        "versions": versions(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        info.update(to_jsonable(extra))
    path = out / "run.json"
    atomic_write(path, json.dumps(info, indent=2))
    return path
