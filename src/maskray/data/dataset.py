"""A dataset in the native layout: its cases, paired by identifier, and the data contract.

An image is float32 ``(1, H, W)`` in ``[-1, 1]``; a label map is int64 ``(H, W)``. Label names come from
``dataset.json``, never from code. Images and label maps are paired by case identifier, never by listing
order. Files are read through the I/O registry (:mod:`maskray.data.io`), JSON through :mod:`maskray.data.schema`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskray.data.io import read_image_file, read_label_file, write_image_file, write_label_file
from maskray.data.schema import CHANNEL_SUFFIX, SPLIT_NAMES, SPLITS_FILE, read_dataset_info, read_splits_file
from maskray.errors import MaskrayError


@dataclass(frozen=True)
class Case:
    """One case: identifier, image file, label file (None when unlabelled) and the subset it lies in."""

    case_id: str
    image_path: Path | None  # None only in a mask-only dataset (labels{subset}/ without images{subset}/)
    label_path: Path | None
    subset: str  # "Tr" or "Ts"


def image_path(root: str | os.PathLike, case_id: str, subset: str = "Tr", ending: str = ".png") -> Path:
    return Path(root) / f"images{subset}" / f"{case_id}{CHANNEL_SUFFIX}{ending}"


def label_path(root: str | os.PathLike, case_id: str, subset: str = "Tr", ending: str = ".png") -> Path:
    return Path(root) / f"labels{subset}" / f"{case_id}{ending}"


def write_case(root: str | os.PathLike, case_id: str, image01: np.ndarray, label: np.ndarray | None,
               subset: str = "Tr", bit_depth: int = 8) -> None:
    """Write one case's image (and label map, if given) into the native layout."""
    write_image_file(image_path(root, case_id, subset), image01, bit_depth)
    if label is not None:
        write_label_file(label_path(root, case_id, subset), label)


class Dataset:
    """A dataset in the native layout. Cheap to open: files are read on access."""

    def __init__(self, root: str | os.PathLike, max_pixels: int | None = None):
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.info = read_dataset_info(self.root)
        self.cases: dict[str, Case] = {}
        ending = self.info.file_ending
        for subset in ("Tr", "Ts"):
            img_dir = self.root / f"images{subset}"
            if not img_dir.is_dir():
                self._add_mask_only_cases(subset, ending)
                continue
            for p in sorted(img_dir.iterdir()):
                name = p.name
                if name.startswith(".") or not name.endswith(CHANNEL_SUFFIX + ending):
                    continue
                cid = name[: -len(CHANNEL_SUFFIX + ending)]
                lab = label_path(self.root, cid, subset, ending)
                self.cases[cid] = Case(cid, p, lab if lab.is_file() else None, subset)
        if not self.cases:
            raise MaskrayError(f"{self.root}: no images found (expected imagesTr/CASE{CHANNEL_SUFFIX}{ending}, "
                               f"or labelsTr/CASE{ending} for a mask-only dataset)")
        self._splits: dict[str, list[str]] | None = None

    def _add_mask_only_cases(self, subset: str, ending: str) -> None:
        """A subset with label maps but no image folder (``maskray masks`` output): cases with ``image_path=None``."""
        lab_dir = self.root / f"labels{subset}"
        if not lab_dir.is_dir():
            return
        for p in sorted(lab_dir.iterdir()):
            if p.name.startswith(".") or not p.name.endswith(ending):
                continue
            cid = p.name[: -len(ending)]
            self.cases[cid] = Case(cid, None, p, subset)

    @property
    def has_images(self) -> bool:
        """False for a mask-only dataset (label maps only, e.g. written by ``maskray masks``)."""
        return any(c.image_path is not None for c in self.cases.values())

    # --- labels
    @property
    def labels(self) -> dict[str, int]:
        return self.info.labels

    @property
    def has_labels(self) -> bool:
        return any(c.label_path is not None for c in self.cases.values()) and bool(self.info.foreground)

    # --- splits
    @property
    def splits(self) -> dict[str, list[str]]:
        """``{"train", "val", "test"}`` case lists: from ``splits.json`` when present, else Tr/Ts folders."""
        if self._splits is None:
            path = self.root / SPLITS_FILE
            if path.is_file():
                raw = read_splits_file(path)
                splits = {k: list(raw[k]) for k in SPLIT_NAMES}
                unknown = [c for k in SPLIT_NAMES for c in splits[k] if c not in self.cases]
                if unknown:
                    raise MaskrayError(f"{path}: names cases that are not in the dataset, e.g. {unknown[:3]}")
            else:
                splits = {
                    "train": [c.case_id for c in self.cases.values() if c.subset == "Tr"],
                    "val": [],
                    "test": [c.case_id for c in self.cases.values() if c.subset == "Ts"],
                }
            self._splits = splits
        return self._splits

    def case_ids(self, split: str | None = None, labelled: bool = False) -> list[str]:
        """Case identifiers, sorted; of one split when ``split`` is given; only labelled ones if asked."""
        ids = sorted(self.cases) if split is None else list(self.splits[split])
        if labelled:
            ids = [c for c in ids if self.cases[c].label_path is not None]
        return ids

    # --- data contract
    def image(self, case_id: str) -> torch.Tensor:
        """float32 ``(1, H, W)`` in ``[-1, 1]``."""
        if self.cases[case_id].image_path is None:
            raise MaskrayError(f"{self.root}: case {case_id} has no image (mask-only dataset)")
        x = read_image_file(self.cases[case_id].image_path, self.max_pixels)
        return torch.from_numpy(x * 2.0 - 1.0).unsqueeze(0)

    def label(self, case_id: str) -> torch.Tensor:
        """int64 ``(H, W)``; raises if the case has no label map or holds values ``dataset.json`` lacks."""
        case = self.cases[case_id]
        if case.label_path is None:
            raise MaskrayError(f"{self.root}: case {case_id} has no label map")
        lab = read_label_file(case.label_path, self.max_pixels)
        bad = set(np.unique(lab).tolist()) - set(self.labels.values())
        if bad:
            raise MaskrayError(f"{case.label_path}: label values {sorted(bad)} are not in dataset.json "
                               f"(known: {self.labels})")
        return torch.from_numpy(lab)

    def __len__(self) -> int:
        return len(self.cases)
