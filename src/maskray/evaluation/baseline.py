"""Real-only runs of ``maskray downstream`` kept for the next study: a baseline trained once.

Comparing several synthetic sets (checked, plain, inserted; one model against another) against the same real-only
segmenters trains those segmenters once per study instead of once per set. A real-only run depends only on the
real pairs, the test pairs, the working size, the segmenter's budget and its seed, never on the synthetic set, so
a run is reused only when all of those are the same: :func:`signature` hashes the real training and test tensors
(their pixels and labels, not their names) with the settings, and ``metrics.json`` records it beside the runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from maskray.errors import MaskrayError


def signature(data: dict[str, tuple[torch.Tensor, torch.Tensor]], settings: dict) -> str:
    """sha256 of the real training and test images and labels and of ``settings`` (steps, batch size, labels...)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part in ("real", "test"):
        for t in data[part]:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def reusable_runs(folder: Path, sig: str) -> dict[tuple[float, int], dict]:
    """The real-only runs of the downstream output ``folder`` by ``(fraction, seed)``; an error when the folder has
    no readable metrics.json or when its real pairs or settings differ from this study's (``sig``)."""
    path = Path(folder) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MaskrayError(f"{path}: cannot read the baseline's metrics ({e})") from e
    if metrics.get("baseline_signature") != sig:
        raise MaskrayError(f"{path}: its real-only runs were trained on other real pairs or settings (steps, batch "
                           "size, working size, labels or test split differ), so they cannot be reused")
    return {(r["fraction"], r["seed"]): r for r in metrics["runs"] if r["condition"] == "real"}
