"""DICOM export: one Secondary Capture image per case, flagged synthetic, with no attribute from any source.

Each case becomes ``images/ID.dcm`` (``ID`` the export's opaque case id): SOP Class Secondary Capture Image
Storage (1.2.840.10008.5.1.4.1.1.7), Study, Series and SOP Instance UIDs derived from the exported case and
the export's salt (:class:`maskray.export.common.Anonymiser`), no date or time, Synthetic Data (0008,001C)
``YES`` when the images are synthetic, Conversion Type ``SYN`` (synthetic image), MONOCHROME2 at the stored bit depth (8 or 16), Pixel Spacing and Nominal Scanned Pixel Spacing from
``dataset.json`` ``spacing``. The patient module holds no person: Patient's Name ``SYNTHETIC^ID`` (or
``ANONYMOUS^ID`` for real images), Patient ID the exported case id, birth date and sex empty.

Burned In Annotation ``NO`` is asserted only for fully generated images, where maskray made every pixel.
Real images and region-preserving images (``generate --inpaint-from``, ``manifest.json`` ``mode``
``region-preserving``; serve's ``inpaint``) keep real pixels that maskray cannot vouch for, so the attribute
is left out. A region-preserving image stays Synthetic Data ``YES`` (its edited region is generated) and its
Derivation Description begins by saying that it keeps real pixels outside an edited region.

Source DICOMs (``source_dicom_dir``) are read with ``specific_tags`` limited to geometry (Rows, Columns,
Pixel Spacing, Imager Pixel Spacing), so patient, study and institution data are never even loaded. The
label map goes alongside as ``labels/ID.nii.gz`` (same geometry), with ``dataset.json`` naming its values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from maskray import __version__
from maskray.data.dataset import Dataset
from maskray.data.io import io_for, read_label_file
from maskray.errors import MaskrayError
from maskray.export.common import Anonymiser, read_raw_image, source_cases
from maskray.export.native import NIFTI_ENDING, save_nifti

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GEOMETRY_TAGS = ("Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing")
REGION_PRESERVING = "region-preserving: real image pixels kept outside an edited, generated region"

if TYPE_CHECKING:  # pydicom is imported where it is used, so importing this module stays cheap
    import pydicom


def source_spacing(path: Path, shape: tuple[int, int]) -> tuple[float, float] | None:
    """Pixel spacing (mm) of a source DICOM, rescaled to ``shape``; reads geometry tags only."""
    import pydicom

    try:
        src = pydicom.dcmread(str(path), specific_tags=list(GEOMETRY_TAGS), stop_before_pixels=True)
    except Exception as e:
        raise MaskrayError(f"{path}: unreadable DICOM ({e.__class__.__name__})") from None
    ps = src.get("PixelSpacing") or src.get("ImagerPixelSpacing")
    rows, cols = src.get("Rows"), src.get("Columns")
    if not ps or len(ps) < 2:
        return None
    sy, sx = float(ps[0]), float(ps[1])
    if rows and cols:  # the dataset may be resized from the source
        sy, sx = sy * int(rows) / shape[0], sx * int(cols) / shape[1]
    return (sy, sx)


def build_dataset(pixels: np.ndarray, spacing: tuple[float, float] | None, case_id: str, synthetic: bool,
                  derivation: str, uid=None, region_preserving: bool = False) -> "pydicom.Dataset":
    """A Secondary Capture dataset for uint8/uint16 ``(H, W)`` pixels; ``uid(role)`` gives each UID
    (``role`` is "sop", "study" or "series"; default: a new random UID each). ``region_preserving``: a
    generated image that keeps a real image's pixels outside an edited region."""
    from pydicom.dataset import Dataset as DicomDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = uid or (lambda role: generate_uid())
    sop_uid = uid("sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_and_study(ds, case_id, synthetic, uid)
    _equipment(ds, case_id, synthetic, derivation, region_preserving)
    _image(ds, pixels, spacing)
    return ds


def _patient_and_study(ds, case_id: str, synthetic: bool, uid) -> None:
    """Patient: nobody. Study and series: one each per case; dates and times are type 2 and left empty."""
    ds.PatientName = f"{'SYNTHETIC' if synthetic else 'ANONYMOUS'}^{case_id}"
    ds.PatientID = case_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "maskray: nothing copied from sources; salted ids; no dates"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyDate, ds.StudyTime = "", ""
    ds.ContentDate, ds.ContentTime = "", ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = "maskray synthetic" if synthetic else "maskray export"
    ds.PatientOrientation = ""


def _equipment(ds, case_id: str, synthetic: bool, derivation: str, region_preserving: bool = False) -> None:
    """What made the image: maskray, a synthetic flag, the derivation (no path, no source id). Burned In
    Annotation NO only where maskray made every pixel (see the module docstring)."""
    ds.ConversionType = "SYN" if synthetic else "WSD"
    ds.Manufacturer = "maskray"
    ds.SoftwareVersions = __version__
    ds.SyntheticData = "YES" if synthetic else "NO"
    if synthetic and not region_preserving:
        ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if region_preserving:
        derivation = f"{REGION_PRESERVING}; {derivation}"
    ds.DerivationDescription = derivation[:1024]
    ds.ImageComments = f"maskray case {case_id}"


def _image(ds, pixels: np.ndarray, spacing: tuple[float, float] | None) -> None:
    """MONOCHROME2 pixels at their stored depth (8 or 16 bits), with the pixel spacing when known."""
    bits = 8 if pixels.dtype == np.uint8 else 16
    if spacing is not None:
        ps = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
        ds.PixelSpacing = ps
        ds.NominalScannedPixelSpacing = ps
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u1" if bits == 8 else "<u2")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"


def write_dicom(path: Path, dataset) -> None:
    """Write a pydicom dataset atomically (the I/O registry's DICOM writer)."""
    io_for(path).write(Path(path), dataset=dataset)


def export_dicom(ds: Dataset, out: Path, synthetic: bool, ids: dict[str, str], anon: Anonymiser,
                 source_dicom_dir: Path | None = None, weights: str | None = None) -> None:
    """Write ``images/ID.dcm`` and ``labels/ID.nii.gz`` for every case of ``ids`` with an image.

    Derivation Description: what made the image, the salted reference of the mask's source case and the
    hash of the weights (``weights``); never a path or a source id.
    """
    if not ds.has_images:
        raise MaskrayError(f"{ds.root}: a mask-only dataset has no images for DICOM (run maskray generate first)")
    if source_dicom_dir is not None and not Path(source_dicom_dir).is_dir():
        raise MaskrayError(f"option --source-dicom-dir: {source_dicom_dir} is not a folder")
    per_case = source_cases(ds.root)
    for new_id, cid in tqdm(sorted(ids.items()), desc="export dicom", unit="case", disable=None):
        case = ds.cases[cid]
        if case.image_path is None:
            continue
        pixels = read_raw_image(case.image_path)
        spacing = ds.info.spacing
        rec = per_case.get(cid, {})
        if source_dicom_dir is not None:
            for name in (cid, rec.get("source_case")):
                p = Path(source_dicom_dir) / f"{name}.dcm" if name else None
                if p is not None and p.is_file():
                    spacing = source_spacing(p, pixels.shape) or spacing
                    break
        region = synthetic and rec.get("mode") == "region-preserving"  # as generate's manifest.json records it
        parts = ["maskray synthetic image" if synthetic else "maskray export",
                 f"source ref {anon.ref(str(rec.get('source_case', cid)))}"]
        if weights:
            parts.append(f"weights sha256 {weights[:16]}")
        dataset = build_dataset(pixels, spacing, new_id, synthetic, "; ".join(parts),
                                lambda role, _id=new_id: anon.uid(_id, role), region_preserving=region)
        write_dicom(out / "images" / f"{new_id}.dcm", dataset)
        if case.label_path is not None:
            save_nifti(out / "labels" / f"{new_id}{NIFTI_ENDING}", read_label_file(case.label_path).astype(np.uint8),
                       spacing, "maskray label map")
