"""Exports of a native-layout dataset: PNG (native), NIfTI, DICOM Secondary Capture, nnU-Net v2 raw."""

from maskray.export.api import FORMATS, export_dataset
from maskray.export.common import ExportConfig

__all__ = ["FORMATS", "ExportConfig", "export_dataset"]
