"""Real DICOM bytes in every transfer syntax and photometric interpretation decode to the expected pixels."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from cxrkit.data.dicom_read import (
    UnreadableImage,
    decode_dicom,
    decode_raster,
    parse_age,
)
from cxrkit.data.dicom_write import write_dicom

LOSSLESS = ["explicit", "implicit", "jpeg2000", "jpegls", "rle"]


def stored_image(bits: int, shape=(96, 128), seed=0) -> np.ndarray:
    """A chest-like test image spanning the full stored range: a gradient plus texture."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    ramp = np.linspace(0, 1, shape[1])[None, :] * np.linspace(0.3, 1, shape[0])[:, None]
    values = np.clip(ramp + rng.normal(0, 0.02, shape), 0, 1) * top
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.rint(values).astype(dtype)


def dicom_bytes(tmp_path, pixels, **kwargs) -> bytes:
    path = tmp_path / "x.dcm"
    write_dicom(path, pixels, **kwargs)
    return path.read_bytes()


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written out independently of the code under test."""
    y = np.clip((values.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.rint(y * 255).astype(np.uint8)


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossless_syntaxes_decode_exactly(tmp_path, syntax, bits, photometric):
    shown = stored_image(bits)  # what the radiologist should see (high = bright)
    top = (1 << bits) - 1
    # MONOCHROME1 stores the same picture inverted; the display must come out identical.
    stored = shown if photometric == "MONOCHROME2" else (top - shown.astype(np.int64)).astype(shown.dtype)
    center, width = (top + 1) / 2, top + 1
    if photometric == "MONOCHROME1":
        # The window applies to stored values; invert it too so both files mean the same display.
        center = top + 1 - center
    data = dicom_bytes(
        tmp_path, stored, bits_stored=bits, photometric=photometric, transfer_syntax=syntax, window=(center, width)
    )
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.is_compressed == (
        syntax not in ("explicit", "implicit")
    )
    decoded = decode_dicom(data)
    expected = linear_window(shown, (top + 1) / 2, top + 1)
    if photometric == "MONOCHROME1":
        expected = 255 - linear_window(stored, center, width)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == shown.shape


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_jpeg_baseline_like_rsna(tmp_path, photometric):
    shown = stored_image(8, shape=(128, 128))
    stored = shown if photometric == "MONOCHROME2" else 255 - shown
    data = dicom_bytes(
        tmp_path, stored, bits_stored=8, photometric=photometric, transfer_syntax="jpeg-baseline", window=(128, 256)
    )
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    decoded = decode_dicom(data).pixels.astype(int)
    expected = linear_window(shown, 128, 256).astype(int)
    # JPEG is lossy: the picture must match to within compression noise, not bit-exactly.
    assert np.abs(decoded - expected).mean() < 2.0
    assert np.abs(decoded - expected).max() <= 16


def test_rescale_then_window(tmp_path):
    stored = stored_image(12)
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 6000.0
    data = dicom_bytes(tmp_path, stored, bits_stored=12, rescale=(slope, intercept), window=(center, width))
    expected = linear_window(stored * slope + intercept, center, width)
    np.testing.assert_array_equal(decode_dicom(data).pixels, expected)


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = stored_image(12)
    path = tmp_path / "lut.dcm"
    write_dicom(path, stored, bits_stored=12)
    ds = pydicom.dcmread(path)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    # A square-root LUT, the kind of non-linear tone curve a vendor ships.
    lut.LUTData = np.rint(np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16).tobytes()
    lut["LUTData"].VR = "OW"
    ds.VOILUTSequence = [lut]
    ds.save_as(path)
    expected = np.rint(np.sqrt(stored / 4095) * 4095 / 4095 * 255).astype(np.uint8)
    got = decode_dicom(path.read_bytes()).pixels
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_percentile_window_when_no_voi(tmp_path):
    stored = stored_image(16)
    stored[0, 0] = 65535  # one hot pixel must not squash the window
    decoded = decode_dicom(dicom_bytes(tmp_path, stored, bits_stored=16)).pixels
    assert decoded.min() == 0 and decoded.max() == 255
    # Robust window: the middle of the image uses most of the grey range.
    assert np.percentile(decoded, 95) - np.percentile(decoded, 5) > 150
    # Monotone: a brighter stored value never displays darker.
    order = np.argsort(stored.ravel(), kind="stable")
    assert (np.diff(decoded.ravel()[order].astype(int)) >= 0).all()


def test_monochrome1_without_window_is_inverted(tmp_path):
    shown = stored_image(12)
    mono1 = (4095 - shown).astype(np.uint16)
    a = decode_dicom(dicom_bytes(tmp_path, shown, bits_stored=12)).pixels.astype(int)
    b = decode_dicom(dicom_bytes(tmp_path, mono1, bits_stored=12, photometric="MONOCHROME1")).pixels.astype(int)
    assert np.abs(a - b).max() <= 1  # percentile windows of mirrored data agree to rounding


def test_anisotropic_pixels_are_made_square(tmp_path):
    path = tmp_path / "aniso.dcm"
    write_dicom(path, stored_image(12, shape=(100, 100)), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.2, 0.1]  # rows twice as tall as columns are wide
    ds.save_as(path)
    decoded = decode_dicom(path.read_bytes())
    assert decoded.pixels.shape == (200, 100)
    assert decoded.spacing_scale == (2.0, 1.0)


def test_metadata_is_allow_listed(tmp_path):
    header = {
        "PatientName": "DOE^JANE",
        "PatientID": "PID-123",
        "PatientBirthDate": "19600101",
        "PatientAge": "062Y",
        "PatientSex": "F",
        "InstitutionName": "General Hospital",
        "StudyDate": "20240101",
        "AccessionNumber": "ACC99",
        "ImageComments": "seen by Dr Who",
    }
    data = dicom_bytes(
        tmp_path, stored_image(12), bits_stored=12, view_position="AP", pixel_spacing=0.139, modality="CR", header=header
    )
    decoded = decode_dicom(data)
    assert decoded.metadata == {
        "age": 62.0,
        "sex": "F",
        "view": "AP",
        "pixel_spacing": [0.139, 0.139],
        "modality": "CR",
        "body_part": "CHEST",
        "rows": 96,
        "columns": 128,
        "bits_stored": 12,
        "photometric": "MONOCHROME2",
        "transfer_syntax": "Explicit VR Little Endian",
    }
    assert decoded.patient_id == "PID-123"  # handed to the pseudonymiser, never stored
    text = repr(decoded.metadata)
    for phi in header.values():
        if phi not in ("062Y", "F"):
            assert phi not in text


@pytest.mark.parametrize(
    "raw, years", [("062Y", 62.0), ("006M", 0.5), ("104W", 2.0), ("030D", 0.1), ("095Y", 90.0), ("", None), ("abcY", None)]
)
def test_parse_age(raw, years):
    assert parse_age(raw) == years


# ---- bad input: each kind gets its own one-line reason ----


def _bad(tmp_path, mutate) -> str:
    path = tmp_path / "bad.dcm"
    write_dicom(path, stored_image(12), bits_stored=12, transfer_syntax="rle")
    ds = pydicom.dcmread(path)
    mutate(ds)
    ds.save_as(path)
    with pytest.raises(UnreadableImage) as err:
        decode_dicom(path.read_bytes())
    return str(err.value)


def test_truncated_file(tmp_path):
    data = dicom_bytes(tmp_path, stored_image(12), bits_stored=12, transfer_syntax="explicit")
    with pytest.raises(UnreadableImage, match=r"^truncated file: pixel data has \d+ of 24576 bytes$"):
        decode_dicom(data[: len(data) // 2])


def test_truncated_compressed_file(tmp_path):
    data = dicom_bytes(tmp_path, stored_image(8), bits_stored=8, transfer_syntax="jpeg-baseline")
    with pytest.raises(UnreadableImage, match="^truncated file: pixel data ends early$"):
        decode_dicom(data[: len(data) - 400])


def test_not_dicom():
    with pytest.raises(UnreadableImage, match="^not a DICOM file$"):
        decode_dicom(b"Patient list\nJane Doe, 1960\n" * 20)
    with pytest.raises(UnreadableImage, match="empty file"):
        decode_dicom(b"")


def test_missing_pixel_data(tmp_path):
    assert _bad(tmp_path, lambda ds: delattr(ds, "PixelData")) == "no pixel data"


def test_unsupported_transfer_syntax(tmp_path):
    def to_mpeg(ds):
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])

    reason = _bad(tmp_path, to_mpeg)
    assert reason.startswith("unsupported transfer syntax MPEG2 Main Profile")


def test_non_xray_modality(tmp_path):
    assert _bad(tmp_path, lambda ds: setattr(ds, "Modality", "CT")).startswith("modality CT is not a radiograph")


def test_non_chest_body_part(tmp_path):
    assert _bad(tmp_path, lambda ds: setattr(ds, "BodyPartExamined", "KNEE")) == "body part KNEE is not the chest"


def test_zero_size_image(tmp_path):
    def zero(ds):
        ds.Rows = 0

    assert _bad(tmp_path, zero).startswith("zero-size image")


def test_burned_in_annotation_refused(tmp_path):
    reason = _bad(tmp_path, lambda ds: setattr(ds, "BurnedInAnnotation", "YES"))
    assert reason.startswith("burned-in annotation")


def test_raster_inputs():
    gray = stored_image(8, shape=(40, 50))
    ok, png = cv2.imencode(".png", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    np.testing.assert_array_equal(decode_raster(png.tobytes()).pixels, gray)
    ok, png16 = cv2.imencode(".png", stored_image(16, shape=(40, 50)))
    out16 = decode_raster(png16.tobytes()).pixels
    assert out16.dtype == np.uint8 and out16.max() == 255
    with pytest.raises(UnreadableImage, match="not a decodable PNG/JPEG image"):
        decode_raster(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
