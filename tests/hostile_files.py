"""Crafted hostile files for the tests: tiny files whose headers claim huge images (decompression bombs)."""

import struct
import zlib
from pathlib import Path

import numpy as np


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header claims ``side x side`` pixels (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bomb_nifti(path: Path, side: int = 16000) -> Path:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((side, side))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return path


def bomb_dicom(path: Path, side: int = 20000) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = b"\0" * 64
    ds.save_as(path, enforce_file_format=True)
    return path


def bomb_mha(path: Path, side: int = 20000) -> Path:
    path.write_bytes(f"ObjectType = Image\nNDims = 2\nDimSize = {side} {side}\nElementType = MET_UCHAR\n"
                     f"ElementDataFile = LOCAL\n".encode() + b"\0" * 64)
    return path
