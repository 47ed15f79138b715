"""Tiny files in the public datasets' formats, for importer tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def write_text(path: Path, text: str) -> Path:
    """Write `text` as-is (the datasets' CSVs have odd headers worth reproducing byte for byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_dicom(path: Path, rows: int = 64, columns: int = 64) -> Path:
    """A minimal uint16 MONOCHROME2 DICOM, Explicit VR Little Endian, of rows x columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((rows, columns), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_image(path: Path, width: int = 32, height: int = 32) -> Path:
    """A black 8-bit grayscale PNG or JPEG (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height)).save(path)
    return path
