"""Write single-frame greyscale radiographs as real DICOM files.

Used by the synthetic generator and by tests: ingest must meet the transfer
syntaxes, bit depths and photometric interpretations that real archives send,
so this writes each of them through pydicom's own encoders (JPEG Baseline is the
exception: pydicom has no encoder for it, so Pillow encodes and we encapsulate).
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat

# Short names (used in configs and truth files) -> Transfer Syntax UID.
TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "rle": RLELossless,
}
LOSSLESS = frozenset(TRANSFER_SYNTAXES) - {"jpeg-baseline"}

SOP_CLASSES: dict[str, str] = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}


def _ds(value: float) -> DSfloat:
    # DS strings are at most 16 characters; auto_format rounds a float to fit.
    return DSfloat(value, auto_format=True)


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit",
    modality: str = "DX",
    view_position: str | None = None,
    pixel_spacing: float | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    header: dict[str, Any] | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Write `pixels` (2-D uint8/uint16 stored values) as a DICOM file.

    bits_stored: significant bits (8..16); every value must be < 2**bits_stored.
        Bits Allocated is 8 for bits_stored == 8, else 16.
    photometric: "MONOCHROME2" (high = bright) or "MONOCHROME1" (high = dark);
        the caller passes values already inverted for MONOCHROME1.
    transfer_syntax: a key of TRANSFER_SYNTAXES. "jpeg-baseline" is lossy and
        8-bit only; the others decode back to exactly `pixels`.
    modality: "CR" or "DX"; picks the SOP Class.
    view_position: e.g. "PA" / "AP"; pixel_spacing: mm per pixel (square pixels).
    window: (WindowCenter, WindowWidth) in output (rescaled) units.
    rescale: (RescaleSlope, RescaleIntercept).
    header: extra attributes by DICOM keyword (PatientName, PatientID, dates...);
        StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID given here are
        used, missing ones are generated.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; known: {', '.join(TRANSFER_SYNTAXES)}")
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(SOP_CLASSES)}, not {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    if int(pixels.max()) >= 1 << bits_stored:
        raise ValueError(f"pixel value {int(pixels.max())} does not fit in {bits_stored} bits")
    if transfer_syntax == "jpeg-baseline" and bits_stored != 8:
        raise ValueError("JPEG Baseline holds 8-bit images only")

    bits_allocated = 8 if bits_stored == 8 else 16
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8 if bits_allocated == 8 else np.uint16)
    header = dict(header or {})
    ts_uid = TRANSFER_SYNTAXES[transfer_syntax]
    sop_class = SOP_CLASSES[modality]
    sop_instance = header.pop("SOPInstanceUID", None) or generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ts_uid

    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = header.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = header.pop("SeriesInstanceUID", None) or generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    if view_position:
        ds.ViewPosition = view_position
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixel_spacing is not None:
        ds.PixelSpacing = [_ds(pixel_spacing), _ds(pixel_spacing)]
        ds.ImagerPixelSpacing = [_ds(pixel_spacing), _ds(pixel_spacing)]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale[0]), _ds(rescale[1])
        ds.RescaleType = "US"  # unspecified units: X-ray values have no physical unit like HU

    for keyword, value in header.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)

    if transfer_syntax == "jpeg-baseline":
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=jpeg_quality)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = _ds(pixels.nbytes / len(buf.getvalue()))
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif transfer_syntax in ("explicit", "implicit"):
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    else:
        ds.compress(ts_uid, pixels, generate_instance_uid=False)

    ds.save_as(path, enforce_file_format=True)
