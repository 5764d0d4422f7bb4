"""Loading real and synthetic datasets for evaluation, and pairing synthetic cases with their real source.

A synthetic dataset is a native-layout dataset whose images were generated for masks. Its ``manifest.json``
maps each synthetic case id to ``{"source_case": real case id, "mask_case": the mask it was drawn for, "seed":
int, "sample": k, "mode": "full" | "region-preserving"}`` (``k`` numbers the samples drawn for one mask; a
missing ``mask_case`` is the source case, a missing ``mode`` is ``full``); the mapping may also sit under a
top-level ``"cases"`` key. Without a manifest, a synthetic case is paired with the real case of the same
identifier (sample 0). Samples are grouped by the mask they were drawn for, not by their source: several edited
masks of one real case (``maskray masks``) are several groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maskray.data.dataset import Dataset
from maskray.data.resize import resize_image, resize_label
from maskray.errors import MaskrayError
from maskray.files import read_json
from maskray.provenance import file_sha256

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SyntheticCase:
    case_id: str
    source_case: str | None  # None when the source is unknown (no manifest, no real case of that id)
    sample: int
    seed: int | None
    mask_case: str = ""  # the mask the image was drawn for ("" = the source case, or the case itself)
    mode: str = "full"  # "region-preserving": real pixels outside an edited region

    @property
    def mask(self) -> str:
        return self.mask_case or self.source_case or self.case_id


def read_manifest(syn: Dataset, real: Dataset | None = None) -> dict[str, SyntheticCase]:
    """Every synthetic case with its source case, sample index and seed (see the module docstring)."""
    path = syn.root / MANIFEST
    entries: dict = {}
    if path.is_file():
        raw = read_json(path, what="manifest")
        entries = raw.get("cases", raw)
        if not isinstance(entries, dict):
            raise MaskrayError(f"{path}: must map synthetic case id to {{'source_case', 'seed', 'sample'}}")
    out: dict[str, SyntheticCase] = {}
    for cid in syn.case_ids():
        e = entries.get(cid)
        if e is None:
            src = cid if (real is None or cid in real.cases) else None
            out[cid] = SyntheticCase(cid, src, 0, None)
            continue
        if not isinstance(e, dict):
            raise MaskrayError(f"{path}: case {cid}: expected an object with 'source_case', 'seed', 'sample'")
        src, mask, mode = e.get("source_case"), e.get("mask_case"), e.get("mode", "full")
        if not all(v is None or isinstance(v, str) for v in (src, mask)) or mode not in ("full",
                                                                                          "region-preserving"):
            raise MaskrayError(f"{path}: case {cid}: 'source_case' and 'mask_case' must be strings and 'mode' "
                               "'full' or 'region-preserving'")
        try:
            sample = int(e.get("sample", 0) or 0)
            seed = None if e.get("seed") is None else int(e["seed"])
        except (TypeError, ValueError):
            raise MaskrayError(f"{path}: case {cid} has a non-integer 'sample' or 'seed'") from None
        out[cid] = SyntheticCase(cid, src, sample, seed, mask or "", mode)
    if real is not None:
        missing = sorted({c.source_case for c in out.values() if c.source_case and c.source_case not in real.cases})
        if missing:
            raise MaskrayError(f"{path}: source cases {missing[:3]} are not in the real dataset {real.root}")
    return out


def groups_by_mask(cases: dict[str, SyntheticCase]) -> dict[str, list[str]]:
    """The mask each image was drawn for -> its synthetic case ids, ordered by sample index."""
    groups: dict[str, list[SyntheticCase]] = {}
    for c in cases.values():
        groups.setdefault(c.mask, []).append(c)
    return {m: [c.case_id for c in sorted(v, key=lambda c: (c.sample, c.case_id))] for m, v in sorted(groups.items())}


def open_pair(real: Path, synthetic: Path) -> tuple[Dataset, Dataset]:
    """Open the real and synthetic datasets; refuse differing labels or a synthetic set without images."""
    real_ds, syn_ds = Dataset(real), Dataset(synthetic)
    check_same_labels(real_ds, syn_ds)
    if not syn_ds.has_images:
        raise MaskrayError(f"{synthetic}: holds label maps only; generate images for them first (maskray generate)")
    return real_ds, syn_ds


def check_same_labels(real: Dataset, syn: Dataset) -> None:
    if real.labels != syn.labels:
        raise MaskrayError(f"{syn.root}/dataset.json: labels {syn.labels} differ from the real dataset's "
                           f"{real.labels}; both must use the same label names and values")


def load_images(ds: Dataset, ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """float32 ``(N, 1, *size)`` in ``[-1, 1]``."""
    if not ids:
        return torch.empty(0, 1, *size)
    return torch.cat([resize_image(ds.image(c).unsqueeze(0), size) for c in ids])


def load_labels(ds: Dataset, ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """int64 ``(N, *size)``."""
    if not ids:
        return torch.empty(0, *size, dtype=torch.int64)
    return torch.cat([resize_label(ds.label(c).unsqueeze(0), size) for c in ids])


def working_size(syn: Dataset, size: int) -> tuple[int, int]:
    """The resolution metrics and networks work at: ``(size, size)``, or the synthetic images' own size."""
    if size:
        hw = (int(size), int(size))
    else:
        first = next(iter(syn.cases))
        hw = tuple(syn.image(first).shape[-2:])
    if hw[0] % 16 or hw[1] % 16 or min(hw) < 16:
        raise MaskrayError(f"--image-size: working size {hw[0]}x{hw[1]} must be a multiple of 16 (at least 16); "
                           "pass --image-size, e.g. --image-size 64")
    return hw


def test_split(real: Dataset) -> list[str]:
    ids = real.case_ids("test", labelled=True)
    if not ids:
        raise MaskrayError(f"{real.root}: the real dataset has no labelled test cases; run `maskray data split` "
                           "on it first (or give it imagesTs/labelsTs)")
    return ids


def recorded_provenance(syn: Dataset) -> dict:
    """What the synthetic dataset records about itself (its run.json as written, the manifest's hash). Paths
    it names, such as the checkpoint, are reported and never opened."""
    prov: dict = {"synthetic_root": str(syn.root)}
    run = syn.root / "run.json"
    if run.is_file():
        info = read_json(run, what="run.json")
        prov["synthetic_run"] = info
        if info.get("checkpoint"):
            prov["checkpoint"] = str(info["checkpoint"])
            prov["checkpoint_note"] = "as recorded by the synthetic set's run.json; not opened or verified"
    manifest = syn.root / "manifest.json"
    if manifest.is_file():
        prov["manifest_sha256"] = file_sha256(manifest)
    return prov
