"""The I/O registry: every image or label map maskray reads or writes goes through here.

:func:`io_for` picks the format (:mod:`maskray.data.formats`) by file ending: one reader and one writer per
format, used by import, check, the dataset, generation and export alike (nnU-Net's
``reader_writer_registry`` is the model). Every read checks the pixel count from the header first
(``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`); every write is atomic.

Two views of the same readers:

- *source* reads (:func:`read_source_image`, :func:`read_source_mask`): the raw values of the formats users
  arrive with, for the importers;
- *native* reads (:func:`read_image_file`, :func:`read_label_file`): the data contract of the native layout,
  an image float32 ``(H, W)`` in ``[0, 1]`` (8-bit files / 255, 16-bit / 65535, float files clipped) and a
  label map int64 ``(H, W)`` (never decoded from normalised floats).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskray.data.formats import (ALL_SUFFIXES, FORMATS, ImageFormat, SourceImage, check_pixels, is_supported,
                                  stem_of, suffix_of)
from maskray.errors import MaskrayError

__all__ = ["DEFAULT_MAX_PIXELS", "SourceImage", "check_pixels", "io_for", "is_supported", "read_image_file",
           "read_label_file", "read_source_image", "read_source_mask", "stem_of", "suffix_of", "write_image_file",
           "write_label_file", "write_png"]

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: ten times a large detector; --max-pixels raises it


def io_for(path: str | os.PathLike) -> ImageFormat:
    """The format that owns ``path``'s file ending; a one-line error naming the allowed endings otherwise."""
    suf = suffix_of(path)
    for fmt in FORMATS:
        if suf in fmt.suffixes:
            return fmt
    raise MaskrayError(f"{path}: unsupported file type '{suf}' (allowed: {', '.join(ALL_SUFFIXES)})")


def _limit(max_pixels: int | None) -> int:
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise MaskrayError(f"--max-pixels {max_pixels!r}: must be a positive whole number")
    return max_pixels


# ---------------------------------------------------------------------------------------------- source
def read_source_image(path: str | os.PathLike, max_pixels: int | None = None) -> SourceImage:
    """Read a source image to float32 ``(H, W)`` (raw values, or ``[0, 1]`` when a DICOM window applied)."""
    path = Path(path)
    src = io_for(path).read(path, "image", _limit(max_pixels))
    src.pixels = src.pixels.astype(np.float32, copy=False)
    return src


def read_source_mask(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a source mask to its raw ``(H, W)`` values (integer or float dtype) and any warnings."""
    path = Path(path)
    src = io_for(path).read(path, "mask", _limit(max_pixels))
    return src.pixels, src.warnings


# ---------------------------------------------------------------------------------------------- native
def read_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """A native-layout image as float32 ``(H, W)`` in ``[0, 1]``.

    8-bit files are divided by 255 and 16-bit files by 65535 (the full range of the type, so that values
    written by :func:`write_image_file` read back exactly); float files (NIfTI) are clipped to ``[0, 1]``.
    """
    path = Path(path)
    src = io_for(path).read(path, "image", _limit(max_pixels))
    if src.warnings:
        raise MaskrayError(f"{path}: expected a single-channel grayscale image ({src.warnings[0].split(': ')[-1]})")
    x = src.pixels.astype(np.float32, copy=False)
    if src.windowed:
        return x
    if src.dtype_max:
        return np.clip(x / np.float32(src.dtype_max), 0.0, 1.0)
    if suffix_of(path) in (".nii", ".nii.gz", ".mha", ".mhd", ".tif", ".tiff"):
        return np.clip(x, 0.0, 1.0)
    raise MaskrayError(f"{path}: unsupported pixel type for a native-layout image")


def read_label_file(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """A label map as int64 ``(H, W)``; float files must hold whole numbers."""
    path = Path(path)
    arr, _ = read_source_mask(path, max_pixels)
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool:
            return arr.astype(np.int64)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise MaskrayError(f"{path}: label values must be integers")
    return arr.astype(np.int64)


def write_png(path: str | os.PathLike, arr: np.ndarray, text=None) -> None:
    """uint8/uint16 ``(H, W)`` as a grayscale PNG with text chunks (a dict or a ``PngInfo``), atomically."""
    io_for("x.png").write(Path(path), arr, text=text)


def write_image_file(path: str | os.PathLike, image01: np.ndarray, bit_depth: int = 8,
                     text: dict[str, str] | None = None) -> None:
    """Write a float ``(H, W)`` image in ``[0, 1]`` as an 8- or 16-bit PNG, atomically; ``text`` becomes
    PNG text chunks (maskray marks synthetic images there)."""
    if bit_depth not in (8, 16):
        raise MaskrayError(f"bit depth {bit_depth} is not supported (allowed: 8, 16)")
    x = np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0)
    arr = np.round(x * 255.0).astype(np.uint8) if bit_depth == 8 else np.round(x * 65535.0).astype(np.uint16)
    write_png(path, arr, text)


def write_label_file(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an integer ``(H, W)`` label map as an 8-bit PNG, atomically."""
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise MaskrayError(f"{path}: label values must lie in 0..255")
    write_png(path, label.astype(np.uint8))
