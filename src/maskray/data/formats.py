"""One reader and one writer per file format, found by file ending (nnU-Net's reader/writer registry is the
model): :func:`maskray.data.io.io_for` picks the class, every command reads and writes through it.

Every reader checks the image's size from the file's header before decoding any pixel (a pixel-count
limit, :data:`maskray.data.io.DEFAULT_MAX_PIXELS`, guards against decompression bombs), returns a 2D
``(H, W)`` array in (row, column) order and raises :class:`MaskrayError` with a one-line message naming the
file for anything it cannot read. Supported:

- PNG, JPEG, TIFF, BMP (8 or 16 bit, or 32-bit float TIFF) through Pillow;
- DICOM through pydicom: the Modality LUT (Rescale Slope / Intercept) is applied by pydicom, then the
  first Window Center / Width (DICOM PS3.3 C.11.2.1.2, linear function) maps to ``[0, 1]``; Photometric
  Interpretation MONOCHROME1 is inverted so that bright always means dense;
- NIfTI (``.nii``, ``.nii.gz``) through nibabel; MetaImage (``.mha``, ``.mhd``) through SimpleITK when it
  is installed, else a clear error naming the package.

Writers write atomically (:func:`maskray.files.atomic_path`). RGB(A) images are converted to grey (ITU-R 601
luma, as Pillow's ``convert("L")``) with a warning; RGB masks are refused unless the three channels are equal
(then the first channel is used, with a warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from maskray.errors import MaskrayError
from maskray.files import atomic_path

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



# ---------------------------------------------------------------------------------------------- formats
def _to_2d(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise MaskrayError(f"{path}: a {arr.ndim}D volume of shape {tuple(arr.shape)}, but a 2D {what} is expected "
                           f"(give one slice per file)")
    return arr


def check_pixels(path: Path, shape, max_pixels: int) -> None:
    """Refuse an image whose header promises more than ``max_pixels`` pixels, before any decoding."""
    n = 1
    for s in shape:
        n *= max(int(s), 1)
    if n > max_pixels:
        dims = " x ".join(str(int(s)) for s in shape)
        raise MaskrayError(f"{path}: {dims} = {n / 1e6:.1f} megapixels exceeds the limit of {max_pixels / 1e6:g} "
                           f"megapixels (a decompression bomb?); raise it with --max-pixels if the file is genuine")


def _finite(path: Path, arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise MaskrayError(f"{path}: holds NaN or infinite values")
    return arr


class ImageFormat:
    """A file format: the file endings it owns, a header-only shape, one reader and one writer."""

    name = ""
    suffixes: tuple[str, ...] = ()

    def read(self, path: Path, what: str, max_pixels: int) -> SourceImage:
        """Raw values of a 2D image (``what`` = "image") or mask ("mask"); checks the size first."""
        raise NotImplementedError

    def write(self, path: Path, arr: np.ndarray, **meta) -> None:
        raise MaskrayError(f"{path}: maskray does not write {self.name} files")


class PillowFormat(ImageFormat):
    """PNG, JPEG, TIFF, BMP through Pillow; writes PNG (8 or 16 bit grayscale) with text chunks."""

    name = "PNG/JPEG/TIFF/BMP"
    suffixes = PIL_SUFFIXES

    def read(self, path: Path, what: str, max_pixels: int) -> SourceImage:
        warnings: list[str] = []
        pillow_limit = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None  # our limit, checked just below, replaces Pillow's fixed one
            with Image.open(path) as im:  # lazy: only the header is parsed here
                Image.MAX_IMAGE_PIXELS = pillow_limit
                check_pixels(path, (im.size[1], im.size[0], getattr(im, "n_frames", 1)), max_pixels)
                arr, dmax = self._decode(path, im, what, warnings)
        except MaskrayError:
            raise
        except FileNotFoundError:
            raise MaskrayError(f"{path}: file not found") from None
        except Exception as e:  # Pillow raises many types for corrupt or truncated files
            raise MaskrayError(f"{path}: corrupt or unreadable image ({e.__class__.__name__}: {e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
        arr = _to_2d(path, arr, what)
        if what == "image":
            arr = _finite(path, arr.astype(np.float32))
        return SourceImage(arr, None, dtype_max=dmax, warnings=warnings)

    @staticmethod
    def _decode(path: Path, im, what: str, warnings: list[str]) -> tuple[np.ndarray, float | None]:
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
        if arr.dtype == bool:
            return arr.astype(np.uint8), 1.0
        if arr.dtype == np.uint8:
            return arr, 255.0
        if arr.dtype in (np.uint16, np.int16) or (arr.dtype == np.int32 and mode.startswith("I")):
            return arr, 65535.0
        return arr, None

    def write(self, path: Path, arr: np.ndarray, text=None, **meta) -> None:
        """uint8/uint16 ``(H, W)`` as grayscale PNG; ``text``: a dict or ``PngInfo`` of text chunks."""
        from PIL.PngImagePlugin import PngInfo

        info = text
        if isinstance(text, dict):
            info = PngInfo()
            for k, v in text.items():
                info.add_text(k, v)
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)


class DicomFormat(ImageFormat):
    """DICOM through pydicom. The writer takes a ready ``pydicom.Dataset`` (built by the DICOM export)."""

    name = "DICOM"
    suffixes = DICOM_SUFFIXES

    def read(self, path: Path, what: str, max_pixels: int) -> SourceImage:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        warnings: list[str] = []
        try:
            ds = pydicom.dcmread(str(path))
        except FileNotFoundError:
            raise MaskrayError(f"{path}: file not found") from None
        except Exception as e:
            raise MaskrayError(f"{path}: not a readable DICOM file ({e.__class__.__name__}: {e})") from None
        if "PixelData" not in ds:
            raise MaskrayError(f"{path}: DICOM without pixel data (truncated file, or not an image)")
        try:
            dims = (int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1),
                    int(getattr(ds, "SamplesPerPixel", 1) or 1))
        except (AttributeError, TypeError, ValueError):
            raise MaskrayError(f"{path}: DICOM without valid Rows / Columns") from None
        check_pixels(path, dims[:3], max_pixels)
        raw = self._pixels(path, ds)
        if raw.ndim == 3 and dims[3] == 3:
            if what == "mask":
                raise MaskrayError(f"{path}: colour (RGB) DICOM mask refused; masks must be single-channel")
            warnings.append(f"{path}: RGB DICOM converted to grey (luma)")
            raw = raw.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        raw = _to_2d(path, np.asarray(raw), what)
        if what == "mask":
            return SourceImage(raw, _dicom_spacing(ds), warnings=warnings)
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        values, windowed = _window(values, ds)
        return SourceImage(values.astype(np.float32), _dicom_spacing(ds), windowed=windowed, warnings=warnings)

    @staticmethod
    def _pixels(path: Path, ds) -> np.ndarray:
        tsuid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        try:
            return ds.pixel_array
        except Exception as e:
            msg = f"{e.__class__.__name__}: {e}".splitlines()[0]
            if tsuid in _CODEC_HINTS and any(w in msg.lower() for w in ("plugin", "decompress", "missing", "decod")):
                raise MaskrayError(f"{path}: DICOM compressed with transfer syntax {tsuid} and no codec is "
                                   f"installed; install {_CODEC_HINTS[tsuid]}") from None
            raise MaskrayError(f"{path}: truncated or corrupt DICOM pixel data ({msg})") from None

    def write(self, path: Path, arr=None, dataset=None, **meta) -> None:
        """Write the pydicom ``dataset`` (its pixels already set) as a DICOM Part 10 file."""
        with atomic_path(path) as tmp:
            dataset.save_as(str(tmp), enforce_file_format=True)


def _window(values: np.ndarray, ds) -> tuple[np.ndarray, bool]:
    """DICOM PS3.3 C.11.2.1.2.1 linear window to ``[0, 1]``; MONOCHROME1 inverted so bright means dense."""
    windowed = False
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width >= 1:
        values = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) if width > 1 \
            else (values > center - 0.5).astype(np.float32)
        windowed = True
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        values = 1.0 - values if windowed else values.max() + values.min() - values
    return values, windowed


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
                sp = float(v[0]), float(v[1])
            except (TypeError, ValueError):
                return None
            return sp if all(np.isfinite(sp)) and min(sp) > 0 else None
    return None


class NiftiFormat(ImageFormat):
    """NIfTI-1/2 through nibabel; ``(x, y)`` on disk is ``(column, row)``: arrays are transposed both ways."""

    name = "NIfTI"
    suffixes = NIFTI_SUFFIXES

    def read(self, path: Path, what: str, max_pixels: int) -> SourceImage:
        import nibabel as nib

        try:
            img = nib.load(str(path))  # header only; the data stay on disk until asked for
            check_pixels(path, img.header.get_data_shape(), max_pixels)
            arr = np.asarray(img.dataobj)
            zooms = img.header.get_zooms()
        except MaskrayError:
            raise
        except FileNotFoundError:
            raise MaskrayError(f"{path}: file not found") from None
        except Exception as e:  # nibabel raises many types for broken files
            raise MaskrayError(f"{path}: corrupt or truncated NIfTI ({e.__class__.__name__}: {e})") from None
        arr = _finite(path, _to_2d(path, arr, what))
        spacing = (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None
        if spacing is not None and not (all(np.isfinite(spacing)) and min(spacing) > 0):
            spacing = None
        return SourceImage(arr.T, spacing)

    def write(self, path: Path, arr: np.ndarray, spacing: tuple[float, float] | None = None, descrip: str = "",
              **meta) -> None:
        """``(H, W)`` as ``(W, H, 1)`` with affine ``diag(sx, sy, 1)`` in mm; gzip header without name or time."""
        import nibabel as nib

        sy, sx = spacing if spacing is not None else (1.0, 1.0)
        img = nib.Nifti1Image(np.ascontiguousarray(arr.T[:, :, None]), np.diag([float(sx), float(sy), 1.0, 1.0]))
        img.header["descrip"] = descrip[:79].encode()
        img.header.set_xyzt_units("mm")
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))


class MetaImageFormat(ImageFormat):
    """MetaImage (``.mha``, ``.mhd``) through SimpleITK; the header is read before the pixels."""

    name = "MetaImage"
    suffixes = MHA_SUFFIXES

    def read(self, path: Path, what: str, max_pixels: int) -> SourceImage:
        sitk = _sitk(path)
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            check_pixels(path, reader.GetSize(), max_pixels)
            img = reader.Execute()
            arr = sitk.GetArrayFromImage(img)  # (rows, columns) already
            sp = img.GetSpacing()
        except MaskrayError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise MaskrayError(f"{path}: corrupt or unreadable MetaImage ({e.__class__.__name__}: {msg})") from None
        arr = _finite(path, _to_2d(path, arr, what))
        return SourceImage(arr, (float(sp[1]), float(sp[0])) if len(sp) >= 2 else None)

    def write(self, path: Path, arr: np.ndarray, spacing: tuple[float, float] | None = None, **meta) -> None:
        sitk = _sitk(path)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        if spacing is not None:
            img.SetSpacing((float(spacing[1]), float(spacing[0])))
        with atomic_path(path) as tmp:
            sitk.WriteImage(img, str(tmp))


def _sitk(path: Path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise MaskrayError(f"{path}: MetaImage (.mha/.mhd) needs SimpleITK; install it with 'pip install "
                           f"SimpleITK', or convert the file to NIfTI") from None
    return sitk


FORMATS: tuple[ImageFormat, ...] = (PillowFormat(), DicomFormat(), NiftiFormat(), MetaImageFormat())
