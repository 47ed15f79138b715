"""Decode a chest radiograph (DICOM, or a PNG/JPEG from a public dataset) into an 8-bit image.

The order follows the DICOM display pipeline (PS3.3 C.11): stored values ->
Modality LUT (rescale slope/intercept or LUT) -> VOI LUT (window centre/width, or
a LUT sequence) -> Presentation (MONOCHROME1 is displayed inverted). When a file
carries no VOI, a robust percentile window stands in for the radiographer's one.

Only an allow-list of non-identifying header fields ever leaves this module
(`dicom_metadata`); every other tag, PHI included, is dropped with the dataset.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

# Modalities of a projection radiograph. CT, MR, US, ... are refused.
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "RF", "PX"}
# BodyPartExamined values meaning chest; an empty or absent tag is accepted (many files lack it).
CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "THORAX_CHEST", "CHEST_PA", "CHEST_AP"}
# HIPAA Safe Harbor: ages over 89 are aggregated into one bucket.
MAX_REPORTED_AGE = 90


class UnreadableImage(Exception):
    """The file can't become a training image; str(exc) is a one-line reason."""


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8, H x W, display orientation (bright = dense)
    metadata: dict  # non-identifying facts (see dicom_metadata)
    sop_instance_uid: str | None = None  # used only to derive the image pseudonym
    patient_id: str | None = None  # used only to derive the patient pseudonym
    spacing_scale: tuple[float, float] = (1.0, 1.0)  # (y, x) resampling applied for square pixels


@dataclass(frozen=True)
class WindowOptions:
    percentiles: tuple[float, float] = (0.5, 99.5)  # fallback window when the file has no VOI


def decode_dicom(data: bytes, options: WindowOptions = WindowOptions()) -> DecodedImage:
    """DICOM bytes -> 8-bit display image + allow-listed metadata. Raises UnreadableImage."""
    ds = _parse(data)
    _check_is_chest_radiograph(ds)
    stored = _stored_pixels(ds)
    lut, lowest = _display_lut(stored, ds, options)
    pixels = np.take(lut, stored if lowest == 0 else stored.astype(np.int32) - lowest)
    pixels, scale = _square_pixels(pixels, ds)
    return DecodedImage(
        pixels=pixels,
        metadata=dicom_metadata(ds),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
        patient_id=str(ds.get("PatientID", "")) or None,
        spacing_scale=scale,
    )


def decode_raster(data: bytes, options: WindowOptions = WindowOptions()) -> DecodedImage:
    """PNG/JPEG bytes (NIH, Kermany, COVID-19 Radiography) -> 8-bit grayscale image."""
    if not data:
        raise UnreadableImage("empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UnreadableImage("not a decodable PNG/JPEG image")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    if img.size == 0:
        raise UnreadableImage("zero-size image")
    if img.dtype != np.uint8:  # 16-bit PNGs carry raw detector values: window them
        values = img.astype(np.float32)
        img = _to_uint8(_percentile_window(values, values[::4, ::4], options.percentiles))
    return DecodedImage(pixels=img, metadata={})


def _parse(data: bytes) -> pydicom.Dataset:
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
        # A file cut short inside encapsulated (compressed) pixel data still parses, and a
        # JPEG decoder happily returns the top of the picture; pydicom only warns. Refuse it.
        for w in caught:
            if "End of file reached" in str(w.message):
                raise UnreadableImage("truncated file: pixel data ends early")
        return ds
    except UnreadableImage:
        raise
    except InvalidDicomError:
        pass  # maybe a valid dataset without the 128-byte preamble (older writers); check below
    except Exception as exc:  # truncated header, bad tag lengths, ...
        raise UnreadableImage(f"damaged DICOM header ({type(exc).__name__}: {exc})") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        raise UnreadableImage("not a DICOM file") from None
    if "PixelData" not in ds and "Rows" not in ds:
        raise UnreadableImage("not a DICOM file")
    return ds


def _check_is_chest_radiograph(ds: pydicom.Dataset) -> None:
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in XRAY_MODALITIES:
        raise UnreadableImage(f"modality {modality} is not a radiograph (expected one of {sorted(XRAY_MODALITIES)})")
    body_part = str(ds.get("BodyPartExamined", "")).upper().strip()
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise UnreadableImage(f"body part {body_part} is not the chest")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise UnreadableImage("burned-in annotation: the pixels may show patient identity")


def _stored_pixels(ds: pydicom.Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise UnreadableImage("no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows == 0 or cols == 0:
        raise UnreadableImage(f"zero-size image ({rows}x{cols})")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise UnreadableImage(f"unsupported transfer syntax {tsyntax.name} ({tsyntax})") from None
        if not decoder.is_available:
            raise UnreadableImage(f"no decoder installed for transfer syntax {tsyntax.name} ({tsyntax})")
    else:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        expected = rows * cols * frames * samples * int(ds.get("BitsAllocated", 16) or 16) // 8
        if len(ds.PixelData) < expected:
            raise UnreadableImage(f"truncated file: pixel data has {len(ds.PixelData)} of {expected} bytes")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # truncated or corrupt pixel data; message from the codec
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableImage(f"pixel data can't be decoded: {first_line}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]  # a radiograph is one frame; multi-frame writers repeat it
    if arr.ndim == 3:  # RGB secondary capture: pydicom already converted YBR to RGB
        arr = cv2.cvtColor(np.ascontiguousarray(arr).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if arr.size == 0:
        raise UnreadableImage("zero-size image")
    return arr


def _display_lut(stored: np.ndarray, ds: pydicom.Dataset, options: WindowOptions) -> tuple[np.ndarray, int]:
    """The whole display pipeline as one lookup table over the stored values present.

    Every step (Modality LUT, VOI, MONOCHROME1 inversion, rounding) is a function of
    the stored value alone, so it runs on at most 65,536 table entries instead of
    millions of pixels, and the image costs one gather. Returns (table, lowest stored value).
    """
    lowest = min(int(stored.min()), 0)
    domain = np.arange(lowest, int(stored.max()) + 1).astype(stored.dtype)
    values = apply_modality_lut(domain, ds).astype(np.float32, copy=False)
    # The fallback window's percentiles come from the image, not the table.
    sample = apply_modality_lut(stored[::4, ::4], ds).astype(np.float32, copy=False)
    display = _apply_voi(values, ds, options, sample)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        display = 1.0 - display
    return _to_uint8(display), lowest


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset, options: WindowOptions, sample: np.ndarray) -> np.ndarray:
    """Modality values -> [0, 1] display values; `sample`: the image's values, for the fallback window."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        # pydicom reads the LUT (US or OW data, descriptor quirks); its output has descriptor[2] bits.
        out_bits = int(voi_seq[0].LUTDescriptor[2])
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float32)
        return np.clip(mapped / float((1 << out_bits) - 1), 0.0, 1.0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        # PS3.3 C.11.2.1.2.1 linear window, mapped to [0, 1]
        return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return _percentile_window(values, sample, options.percentiles)


def _percentile_window(values: np.ndarray, sample: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the sample's robust range onto [0, 1]. Callers pass a 1-in-16 subsample of the
    image: the same window to within a grey level, ~15x cheaper than every pixel."""
    lo, hi = np.percentile(sample, percentiles)
    if hi <= lo:  # a flat image: keep it flat rather than divide by zero
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _to_uint8(display: np.ndarray) -> np.ndarray:
    return np.rint(display * 255.0).astype(np.uint8)


def _square_pixels(pixels: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample anisotropic pixels to square ones, so anatomy keeps its true aspect ratio."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing or len(spacing) != 2:
        return pixels, (1.0, 1.0)
    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    if row_mm <= 0 or col_mm <= 0 or abs(row_mm / col_mm - 1.0) < 0.01:
        return pixels, (1.0, 1.0)
    finest = min(row_mm, col_mm)
    sy, sx = row_mm / finest, col_mm / finest
    h, w = pixels.shape
    resized = cv2.resize(pixels, (round(w * sx), round(h * sy)), interpolation=cv2.INTER_LINEAR)
    return resized, (sy, sx)


def parse_age(value) -> float | None:
    """DICOM age string ('062Y', '006M', '012W', '030D') -> years; over 89 reported as 90."""
    text = str(value or "").strip().upper()
    if not text:
        return None
    unit = text[-1] if text[-1] in "YMWD" else "Y"
    digits = text[:-1] if text[-1] in "YMWD" else text
    try:
        number = float(digits)
    except ValueError:
        return None
    years = number / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[unit]
    return float(min(round(years, 1), MAX_REPORTED_AGE))


def dicom_metadata(ds: pydicom.Dataset) -> dict:
    """The allow-list: what models and analysis need, nothing that identifies a person."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    sex = str(ds.get("PatientSex", "")).upper().strip()
    view = str(ds.get("ViewPosition", "")).upper().strip()
    meta = {
        "age": parse_age(ds.get("PatientAge")),
        "sex": sex if sex in {"M", "F", "O"} else None,
        "view": {"LATERAL": "LL", "LAT": "LL"}.get(view, view) or None,
        "pixel_spacing": [float(spacing[0]), float(spacing[1])] if spacing and len(spacing) == 2 else None,
        "modality": str(ds.get("Modality", "")) or None,
        "body_part": str(ds.get("BodyPartExamined", "")).upper() or None,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0) or None,
        "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
        "transfer_syntax": tsyntax.name if tsyntax is not None else None,
    }
    return {k: v for k, v in meta.items() if v is not None}
