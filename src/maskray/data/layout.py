"""The native dataset layout: nnU-Net v2's raw format, plus a maskray split file.

::

    Dataset/
      dataset.json        {"channel_names": {"0": "CR"}, "labels": {"background": 0, "lung": 1, ...},
                           "numTraining": N, "file_ending": ".png", "spacing": [sy, sx] (mm), ...}
      imagesTr/CASE_0000.png   8- or 16-bit grayscale
      labelsTr/CASE.png        integer label map, values from dataset.json
      imagesTs/, labelsTs/     optional held-out cases
      splits.json         {"train": [...], "val": [...], "test": [...], "patients": {case: patient}}

The data contract, written once here: an image is float32 ``(1, H, W)`` in ``[-1, 1]``; a label map is
int64 ``(H, W)``. Label names come from ``dataset.json``, never from code. Images and label maps are
paired by case identifier, never by listing order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskray.errors import MaskrayError
from maskray.provenance import atomic_write_text

CHANNEL_SUFFIX = "_0000"
SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Case:
    """One case: identifier, image file, label file (None when unlabelled) and the subset it lies in."""

    case_id: str
    image_path: Path | None  # None only in a mask-only dataset (labels{subset}/ without images{subset}/)
    label_path: Path | None
    subset: str  # "Tr" or "Ts"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says. ``labels`` maps name to integer value and includes background."""

    labels: dict[str, int]
    file_ending: str = ".png"
    channel_names: dict[str, str] = field(default_factory=lambda: {"0": "CR"})
    spacing: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def foreground(self) -> dict[str, int]:
        """Labels other than background (value 0), in increasing value order."""
        return {k: v for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0}


def read_dataset_info(root: str | os.PathLike) -> DatasetInfo:
    """Read and validate ``dataset.json``; raises :class:`MaskrayError` naming the file and the problem."""
    path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise MaskrayError(f"{root}: not a folder (expected a dataset in nnU-Net v2 raw layout)")
    if not path.is_file():
        raise MaskrayError(f"{path}: missing (a dataset needs dataset.json with 'labels' and 'file_ending')")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MaskrayError(f"{path}: not valid JSON ({e})") from None
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MaskrayError(f"{path}: 'labels' must be a non-empty mapping of name to integer value")
    clean: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise MaskrayError(f"{path}: label '{name}' is a region (list of values); only plain integer labels are supported")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise MaskrayError(f"{path}: label '{name}' has value {value!r}; values must be integers 0..255")
        clean[str(name)] = value
    if 0 not in clean.values():
        raise MaskrayError(f"{path}: no label has value 0 (background is required)")
    if len(set(clean.values())) != len(clean):
        raise MaskrayError(f"{path}: two labels share a value")
    ending = meta.get("file_ending", ".png")
    spacing = meta.get("spacing")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)[:2]
    known = {"labels", "file_ending", "channel_names", "spacing"}
    return DatasetInfo(labels=clean, file_ending=ending, channel_names=meta.get("channel_names", {"0": "CR"}),
                       spacing=spacing, extra={k: v for k, v in meta.items() if k not in known})


def write_dataset_info(root: str | os.PathLike, info: DatasetInfo, num_training: int) -> Path:
    """Write ``dataset.json`` in nnU-Net v2's format, with maskray's extra keys kept."""
    meta = {
        "channel_names": info.channel_names,
        "labels": dict(sorted(info.labels.items(), key=lambda kv: kv[1])),
        "numTraining": int(num_training),
        "file_ending": info.file_ending,
    }
    if info.spacing is not None:
        meta["spacing"] = list(info.spacing)
    meta.update(info.extra)
    path = Path(root) / "dataset.json"
    atomic_write_text(path, json.dumps(meta, indent=2))
    return path


# ---------------------------------------------------------------------------------------------- file I/O
def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D grayscale image file of the native layout to float32 ``(H, W)`` in ``[0, 1]``.

    8-bit files are divided by 255 and 16-bit files by 65535 (the full range of the type, so that
    values written by :func:`write_image_file` read back exactly).
    """
    path = Path(path)
    if path.suffix.lower() in (".nii", ".gz"):
        import nibabel as nib

        try:
            arr = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
        except Exception as e:  # nibabel raises many types for broken files
            raise MaskrayError(f"{path}: unreadable NIfTI ({e.__class__.__name__}: {e})") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise MaskrayError(f"{path}: expected a 2D image, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise MaskrayError(f"{path}: holds NaN or infinite values")
        return np.clip(arr.T, 0.0, 1.0)  # NIfTI stores (x, y); the contract is (row, column)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise MaskrayError(f"{path}: file not found") from None
    except Exception as e:
        raise MaskrayError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    if arr.ndim != 2:
        raise MaskrayError(f"{path}: expected a grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16, np.uint32):
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    raise MaskrayError(f"{path}: unsupported pixel type {arr.dtype}")


def read_label_file(path: str | os.PathLike) -> np.ndarray:
    """Read an integer label map to int64 ``(H, W)``; never decodes from normalised floats."""
    path = Path(path)
    if path.suffix.lower() in (".nii", ".gz"):
        import nibabel as nib

        try:
            arr = np.asarray(nib.load(str(path)).dataobj)
        except Exception as e:
            raise MaskrayError(f"{path}: unreadable NIfTI ({e.__class__.__name__}: {e})") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise MaskrayError(f"{path}: expected a 2D label map, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise MaskrayError(f"{path}: label values must be integers")
        return arr.T.astype(np.int64)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise MaskrayError(f"{path}: file not found") from None
    except Exception as e:
        raise MaskrayError(f"{path}: unreadable label map ({e.__class__.__name__}: {e})") from None
    if arr.ndim != 2:
        raise MaskrayError(f"{path}: expected a single-channel label map, got shape {arr.shape}")
    return arr.astype(np.int64)


def _atomic_save_png(path: Path, arr: np.ndarray, text: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def write_image_file(path: str | os.PathLike, image01: np.ndarray, bit_depth: int = 8,
                     text: dict[str, str] | None = None) -> None:
    """Write a float ``(H, W)`` image in ``[0, 1]`` as an 8- or 16-bit PNG, atomically; ``text`` becomes
    PNG text chunks (maskray marks synthetic images there)."""
    if bit_depth not in (8, 16):
        raise MaskrayError(f"bit depth {bit_depth} is not supported (allowed: 8, 16)")
    x = np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0)
    arr = np.round(x * 255.0).astype(np.uint8) if bit_depth == 8 else np.round(x * 65535.0).astype(np.uint16)
    _atomic_save_png(Path(path), arr, text)


def write_label_file(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an integer ``(H, W)`` label map as an 8-bit PNG, atomically."""
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise MaskrayError(f"{path}: label values must lie in 0..255")
    _atomic_save_png(Path(path), label.astype(np.uint8))


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


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, hint: str = "--overwrite") -> Path:
    """Create an output folder; refuse one that already holds files unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaskrayError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise MaskrayError(f"{path}: folder already holds files; choose another or pass {hint}")
        import shutil

        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- dataset
class Dataset:
    """A dataset in the native layout. Cheap to open: files are read on access."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
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
                try:
                    raw = json.loads(path.read_text())
                except json.JSONDecodeError as e:
                    raise MaskrayError(f"{path}: not valid JSON ({e})") from None
                splits = {k: list(raw.get(k, [])) for k in SPLIT_NAMES}
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
        x = read_image_file(self.cases[case_id].image_path)
        return torch.from_numpy(x * 2.0 - 1.0).unsqueeze(0)

    def label(self, case_id: str) -> torch.Tensor:
        """int64 ``(H, W)``; raises if the case has no label map or holds values ``dataset.json`` lacks."""
        case = self.cases[case_id]
        if case.label_path is None:
            raise MaskrayError(f"{self.root}: case {case_id} has no label map")
        lab = read_label_file(case.label_path)
        bad = set(np.unique(lab).tolist()) - set(self.labels.values())
        if bad:
            raise MaskrayError(f"{case.label_path}: label values {sorted(bad)} are not in dataset.json "
                               f"(known: {self.labels})")
        return torch.from_numpy(lab)

    def __len__(self) -> int:
        return len(self.cases)


def write_splits(root: str | os.PathLike, splits: dict[str, list[str]], patients: dict[str, str] | None = None,
                 seed: int | None = None) -> Path:
    """Write ``splits.json``; refuses a case listed in two splits."""
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for c in splits.get(name, []):
            if c in seen:
                raise MaskrayError(f"case {c} is in both '{seen[c]}' and '{name}' splits")
            seen[c] = name
    data = {k: sorted(splits.get(k, [])) for k in SPLIT_NAMES}
    data["seed"] = seed
    if patients:
        data["patients"] = patients
    path = Path(root) / SPLITS_FILE
    atomic_write_text(path, json.dumps(data, indent=2))
    return path


def one_hot(label: torch.Tensor, values: list[int]) -> torch.Tensor:
    """int64 ``(..., H, W)`` label map -> float32 ``(..., C, H, W)`` with one channel per value in ``values``."""
    vals = torch.as_tensor(values, dtype=label.dtype, device=label.device)
    oh = label.unsqueeze(-3) == vals.view(-1, 1, 1)
    return oh.to(torch.float32)
