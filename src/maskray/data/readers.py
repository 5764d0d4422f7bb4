"""Readers for source images and masks in the formats users arrive with.

Every reader returns a 2D ``(H, W)`` array in (row, column) order and raises :class:`MaskrayError` with a
one-line message naming the file for anything it cannot read. Supported:

- PNG, JPEG, TIFF, BMP (8 or 16 bit, or 32-bit float TIFF) through Pillow;
- DICOM through pydicom: the Modality LUT (Rescale Slope / Intercept) is applied by pydicom, then the
  first Window Center / Width (DICOM PS3.3 C.11.2.1.2, linear function) maps to ``[0, 1]``; Photometric
  Interpretation MONOCHROME1 is inverted so that bright always means dense;
- NIfTI (``.nii``, ``.nii.gz``) through nibabel; MetaImage (``.mha``, ``.mhd``) through SimpleITK when it
  is installed, else a clear error naming the package.

RGB(A) images are converted to grey (ITU-R 601 luma, as Pillow's ``convert("L")``) with a warning; RGB masks
are refused unless the three channels are equal (then the first channel is used, with a warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from maskray.errors import MaskrayError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MHA_SUFFIXES = (".mha", ".mhd")
ALL_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + MHA_SUFFIXES

# Compressed DICOM transfer syntaxes and the packages that decode them (pydicom's own pixel handlers).
_CODEC_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg and pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg and pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg and pylibjpeg-openjpeg",
}


@dataclass
class SourceImage:
    """A source image as read: ``pixels`` float32 ``(H, W)``; ``windowed`` when already mapped to [0, 1]."""

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None  # (row, column) in mm
    windowed: bool = False
    dtype_max: float | None = None  # 255 / 65535 for integer files: the full range of the type
    warnings: list[str] = field(default_factory=list)


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | os.PathLike) -> str:
    """File name without its (possibly double) suffix: ``a.nii.gz`` -> ``a``."""
    name = Path(path).name
    suf = suffix_of(path)
    return name[: len(name) - len(suf)] if suf else name


def is_supported(path: str | os.PathLike) -> bool:
    return suffix_of(path) in ALL_SUFFIXES


# ---------------------------------------------------------------------------------------------- raw reads
def _to_2d(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise MaskrayError(f"{path}: a {arr.ndim}D volume of shape {tuple(arr.shape)}, but a 2D {what} is expected "
                           f"(give one slice per file)")
    return arr


def _read_pil(path: Path, what: str, warnings: list[str]) -> tuple[np.ndarray, float | None]:
    try:
        with Image.open(path) as im:
            im.load()
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                raise MaskrayError(f"{path}: holds {n_frames} frames, but a 2D {what} is expected")
            mode = im.mode
            if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                if what == "mask":
                    arr = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                        raise MaskrayError(f"{path}: colour (RGB) mask refused; masks must be single-channel "
                                           f"integer label maps")
                    warnings.append(f"{path}: RGB mask with equal channels; using its first channel")
                    return arr[..., 0], 255.0
                warnings.append(f"{path}: {mode} image converted to grey (luma)")
                return np.asarray(im.convert("L")), 255.0
            arr = np.asarray(im)
    except MaskrayError:
        raise
    except FileNotFoundError:
        raise MaskrayError(f"{path}: file not found") from None
    except Exception as e:  # Pillow raises many types for corrupt or truncated files
        raise MaskrayError(f"{path}: corrupt or unreadable image ({e.__class__.__name__}: {e})") from None
    if arr.dtype == bool:
        return arr.astype(np.uint8), 1.0
    if arr.dtype == np.uint8:
        return arr, 255.0
    if arr.dtype in (np.uint16, np.int16) or (arr.dtype == np.int32 and mode.startswith("I")):
        return arr, 65535.0
    return arr, None


def _read_dicom(path: Path, what: str, warnings: list[str]) -> SourceImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(str(path))
    except FileNotFoundError:
        raise MaskrayError(f"{path}: file not found") from None
    except Exception as e:
        raise MaskrayError(f"{path}: not a readable DICOM file ({e.__class__.__name__}: {e})") from None
    if "PixelData" not in ds:
        raise MaskrayError(f"{path}: DICOM without pixel data (truncated file, or not an image)")
    tsuid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        raw = ds.pixel_array
    except Exception as e:
        msg = f"{e.__class__.__name__}: {e}".splitlines()[0]
        if tsuid in _CODEC_HINTS and ("plugin" in msg.lower() or "decompress" in msg.lower()
                                     or "missing" in msg.lower() or "decod" in msg.lower()):
            raise MaskrayError(f"{path}: DICOM compressed with transfer syntax {tsuid} and no codec is installed; "
                               f"install {_CODEC_HINTS[tsuid]}") from None
        raise MaskrayError(f"{path}: truncated or corrupt DICOM pixel data ({msg})") from None
    if raw.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 3:
        if what == "mask":
            raise MaskrayError(f"{path}: colour (RGB) DICOM mask refused; masks must be single-channel")
        warnings.append(f"{path}: RGB DICOM converted to grey (luma)")
        raw = raw.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    raw = _to_2d(path, np.asarray(raw), what)
    if what == "mask":
        return SourceImage(raw, _dicom_spacing(ds))
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    windowed = False
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width >= 1:
        # DICOM PS3.3 C.11.2.1.2.1, linear window, output range [0, 1].
        values = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) if width > 1 \
            else (values > center - 0.5).astype(np.float32)
        windowed = True
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        if windowed:
            values = 1.0 - values
        else:
            values = values.max() + values.min() - values
    return SourceImage(values.astype(np.float32), _dicom_spacing(ds), windowed=windowed)


def _first(v) -> float | None:
    """First value of a possibly multi-valued DICOM number (Window Center may hold several)."""
    if v is None:
        return None
    try:
        try:
            return float(v[0])
        except (TypeError, IndexError, KeyError):
            return float(v)
    except (TypeError, ValueError):
        return None


def _dicom_spacing(ds) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = getattr(ds, key, None)
        if v is not None and len(v) == 2:
            try:
                return float(v[0]), float(v[1])
            except (TypeError, ValueError):
                return None
    return None


def _read_nifti(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
        zooms = img.header.get_zooms()
    except FileNotFoundError:
        raise MaskrayError(f"{path}: file not found") from None
    except Exception as e:  # nibabel raises many types for broken files
        raise MaskrayError(f"{path}: corrupt or truncated NIfTI ({e.__class__.__name__}: {e})") from None
    arr = _to_2d(path, arr, what)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise MaskrayError(f"{path}: holds NaN or infinite values")
    # NIfTI stores (x, y); the contract is (row, column) = (y, x).
    spacing = (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None
    return arr.T, spacing


def _read_mha(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise MaskrayError(f"{path}: reading MetaImage (.mha/.mhd) needs SimpleITK; install it with "
                           f"'pip install SimpleITK', or convert the file to NIfTI") from None
    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)  # (rows, columns) already
        sp = img.GetSpacing()
    except Exception as e:
        raise MaskrayError(f"{path}: corrupt or unreadable MetaImage ({e.__class__.__name__}: {e})") from None
    arr = _to_2d(path, arr, what)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise MaskrayError(f"{path}: holds NaN or infinite values")
    return arr, ((float(sp[1]), float(sp[0])) if len(sp) >= 2 else None)


# ---------------------------------------------------------------------------------------------- public
def read_source_image(path: str | os.PathLike) -> SourceImage:
    """Read a source image to float32 ``(H, W)`` (raw values, or ``[0, 1]`` when a DICOM window applied)."""
    path = Path(path)
    suf = suffix_of(path)
    warnings: list[str] = []
    if suf in DICOM_SUFFIXES:
        src = _read_dicom(path, "image", warnings)
        src.warnings = warnings
        return src
    if suf in NIFTI_SUFFIXES:
        arr, spacing = _read_nifti(path, "image")
        return SourceImage(arr.astype(np.float32), spacing)
    if suf in MHA_SUFFIXES:
        arr, spacing = _read_mha(path, "image")
        return SourceImage(arr.astype(np.float32), spacing)
    if suf in PIL_SUFFIXES:
        arr, dmax = _read_pil(path, "image", warnings)
        arr = _to_2d(path, arr, "image")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise MaskrayError(f"{path}: holds NaN or infinite values")
        return SourceImage(arr, None, dtype_max=dmax, warnings=warnings)
    raise MaskrayError(f"{path}: unsupported file type '{suf}' (allowed: {', '.join(ALL_SUFFIXES)})")


def read_source_mask(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read a source mask to its raw ``(H, W)`` values (integer or float dtype) and any warnings."""
    path = Path(path)
    suf = suffix_of(path)
    warnings: list[str] = []
    if suf in DICOM_SUFFIXES:
        return _read_dicom(path, "mask", warnings).pixels, warnings
    if suf in NIFTI_SUFFIXES:
        return _read_nifti(path, "mask")[0], warnings
    if suf in MHA_SUFFIXES:
        return _read_mha(path, "mask")[0], warnings
    if suf in PIL_SUFFIXES:
        arr, _ = _read_pil(path, "mask", warnings)
        return _to_2d(path, arr, "mask"), warnings
    raise MaskrayError(f"{path}: unsupported file type '{suf}' (allowed: {', '.join(ALL_SUFFIXES)})")
