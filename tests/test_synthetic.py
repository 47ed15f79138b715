"""Synthetic radiographs, the DICOM writer and the synthetic importer, on real bytes."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from cxrkit.core.labels import load_schema
from cxrkit.data.dicom_write import LOSSLESS, TRANSFER_SYNTAXES, write_dicom
from cxrkit.data.importers.synthetic import load_synthetic, read_truth
from cxrkit.data.synthetic import (
    FAKE_PHI_MARKERS,
    generate_case,
    generate_study,
    phi_strings,
)

SCHEMA = load_schema()


def _pixels(bits: int, shape=(96, 80)) -> np.ndarray:
    """A smooth gradient with noise that reaches the top of the bit range."""
    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    ramp = np.linspace(0, 1, shape[0] * shape[1]).reshape(shape)
    img = np.clip(ramp * top + rng.normal(0, top * 0.01, shape), 0, top).round()
    img.flat[-1] = top
    return img.astype(np.uint8 if bits == 8 else np.uint16)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(
    "syntax,bits",
    [(s, b) for s in TRANSFER_SYNTAXES for b in (8, 12, 16) if s != "jpeg-baseline" or b == 8],
)
def test_write_dicom_round_trips(tmp_path, syntax, bits, photometric):
    pixels = _pixels(bits)
    path = tmp_path / "x.dcm"
    write_dicom(path, pixels, bits_stored=bits, photometric=photometric, transfer_syntax=syntax,
                modality="CR", view_position="PA", pixel_spacing=0.139, window=(1000.5, 2000),
                rescale=(1.0, -10.0), header={"PatientID": "PHI-PID-000001"})
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsStored, ds.BitsAllocated, ds.HighBit) == (bits, 8 if bits == 8 else 16, bits - 1)
    assert (ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.PatientID) == ("CR", "PA", "CHEST", "PHI-PID-000001")
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert float(ds.WindowWidth) == 2000 and float(ds.RescaleIntercept) == -10
    decoded = ds.pixel_array.astype(int)
    assert decoded.shape == pixels.shape
    if syntax in LOSSLESS:
        np.testing.assert_array_equal(decoded, pixels)
    else:
        err = np.abs(decoded - pixels)
        assert err.max() <= 12 and err.mean() < 1.5


def test_write_dicom_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="8-bit"):
        write_dicom(tmp_path / "a.dcm", _pixels(12), bits_stored=12, transfer_syntax="jpeg-baseline")
    with pytest.raises(ValueError, match="does not fit"):
        write_dicom(tmp_path / "a.dcm", _pixels(16), bits_stored=12)
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_dicom(tmp_path / "a.dcm", _pixels(8), bits_stored=8, header={"PatientNmae": "X"})


def test_generate_case_is_deterministic():
    a, b, c = generate_case(7, 256), generate_case(7, 256), generate_case(8, 256)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.boxes == b.boxes and a.phi == b.phi
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (256, 256) and a.image.dtype == np.float32
    assert 0 <= a.image.min() and a.image.max() <= 1


@pytest.mark.parametrize("subtype", SCHEMA.subtypes)
def test_boxes_mark_real_opacity(subtype):
    for seed in range(3):
        case = generate_case(seed, 256, subtype=subtype, difficulty=0.5)
        clean = generate_case(seed, 256, subtype=subtype, difficulty=0.5, render_opacities=False)
        assert case.impression == "Pneumonia" and case.subtype == subtype
        assert case.boxes and not clean.boxes
        diff = case.image - clean.image  # opacities only brighten
        inside = np.zeros(diff.shape, bool)
        for box in case.boxes:
            assert box.finding == SCHEMA.opacity and box.subtype == subtype
            assert 0 <= box.x and 0 <= box.y and box.w >= 2 and box.h >= 2
            assert box.x + box.w <= 256 and box.y + box.h <= 256
            x, y, w, h = (int(v) for v in (box.x, box.y, box.w, box.h))
            region = diff[y : y + h, x : x + w]
            # Each box holds signal: a visible share of its pixels changed.
            assert (region > 0.01).mean() > 0.2, (seed, box)
            inside[y : y + h, x : x + w] = True
        # Outside the boxes only the faint fringe (under the boxes' 20%-of-peak cut) remains.
        assert diff[~inside].max() < 0.3 * diff[inside].max()


def test_normal_cases_have_no_boxes():
    case = generate_case(3, 256, positive=False)
    assert case.impression == "Normal" and case.subtype is None and case.boxes == []


def test_names_follow_a_renamed_label_config(label_config):
    """Impressions and the opacity finding come by position; a subtype without a pattern of its
    own is drawn with the generic patchy one (as Other/Unknown is)."""
    schema = label_config({"Lung Opacity": "Pneumonic Opacity", "Normal": "Unremarkable", "Pneumonia": "Infection",
                           "Other abnormality": "Something else", "Bacterial": "Mycoplasma"})
    assert generate_case(3, 256, positive=False, schema=schema).impression == "Unremarkable"
    case = generate_case(3, 256, subtype="Mycoplasma", schema=schema)
    assert case.impression == "Infection" and case.boxes
    assert {(box.finding, box.subtype) for box in case.boxes} == {("Pneumonic Opacity", "Mycoplasma")}
    other = generate_case(3, 256, subtype="Other/Unknown", schema=schema)
    assert [(b.x, b.y, b.w, b.h) for b in case.boxes] == [(b.x, b.y, b.w, b.h) for b in other.boxes]


def test_difficulty_makes_opacities_fainter():
    def signal(d):
        total = 0.0
        for seed in range(4):
            a = generate_case(seed, 256, subtype="Bacterial", difficulty=d)
            b = generate_case(seed, 256, subtype="Bacterial", difficulty=d, render_opacities=False)
            total += float(np.abs(a.image - b.image).sum())
        return total

    assert signal(0.0) > 1.5 * signal(1.0)


def test_fake_phi_is_marked_and_shared_by_a_patient():
    a = generate_case(1, 128, patient_number=42)
    b = generate_case(2, 128, patient_number=42)
    assert a.phi["PatientID"] == b.phi["PatientID"] == "PHI-PID-000042"
    assert a.phi["PatientName"] == b.phi["PatientName"] and a.phi["AccessionNumber"] != b.phi["AccessionNumber"]
    for key in ("PatientName", "PatientAddress", "InstitutionName", "ReferringPhysicianName", "AccessionNumber",
                "OtherPatientIDs", "ImageComments", "AdditionalPatientHistory", "StationName"):
        assert any(m in a.phi[key] for m in FAKE_PHI_MARKERS), key
    family = a.phi["PatientName"].split("^")[0]
    assert family in a.phi["AdditionalPatientHistory"]  # free text that names the patient
    strings = phi_strings(a)
    assert a.phi["PatientBirthDate"] in strings and a.phi["StudyInstanceUID"] in strings and family in strings


def test_generate_study_and_importer(tmp_path):
    n = 14
    root = generate_study(tmp_path / "study", n, seed=3, size=128, repeat_patient_fraction=0.4,
                          monochrome1_fraction=0.5, labeled_fraction=0.5)
    files = sorted(p.name for p in root.glob("*.dcm"))
    assert files == [f"img_{i:05d}.dcm" for i in range(n)]
    truth = read_truth(root)
    assert [t["file"] for t in truth] == files

    patients, syntaxes, photometrics = [], set(), set()
    for row in truth:
        ds = pydicom.dcmread(root / row["file"])
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[row["transfer_syntax"]]
        assert ds.pixel_array.shape == (128, 128) and ds.BitsStored == row["bits_stored"]
        assert ds.PhotometricInterpretation == row["photometric"]
        assert str(ds.PatientID).startswith("PHI-PID-") and "PHI" in str(ds.PatientName)
        assert "PHI" in ds.InstitutionName and ds.PatientBirthDate and ds.StudyDate
        assert not any(m in row["file"] for m in FAKE_PHI_MARKERS)
        assert not any(m in json.dumps(row, default=str) for m in FAKE_PHI_MARKERS)  # truth carries no PHI
        patients.append(str(ds.PatientID))
        syntaxes.add(row["transfer_syntax"])
        photometrics.add(row["photometric"])
        assert (row["impression"] == "Pneumonia") == bool(row["boxes"])  # "not normal" films have no boxes, as in RSNA
    assert len(set(patients)) < n  # some patients have several images
    assert len(syntaxes) >= 3 and photometrics == {"MONOCHROME1", "MONOCHROME2"}
    # A patient never spans splits.
    split_of = {}
    for pid, row in zip(patients, truth):
        assert split_of.setdefault(pid, row["split"]) == row["split"]

    images = load_synthetic(root)
    assert len(images) == n
    for img, row in zip(images, truth):
        assert img.path == root / row["file"] and img.source == "synthetic" and img.patient_key is None
        assert img.original_id == row["file"][:-4] and img.split == row["split"] and img.labeled == row["labeled"]
        if row["labeled"]:
            assert img.boxes == row["boxes"] and img.subtype == row["subtype"] and img.impression == row["impression"]
        else:
            assert img.boxes == [] and img.impression is None
    assert any(not i.labeled for i in images) and any(i.labeled for i in images)

    again = generate_study(tmp_path / "again", n, seed=3, size=128, repeat_patient_fraction=0.4,
                           monochrome1_fraction=0.5, labeled_fraction=0.5)
    assert (again / "truth.jsonl").read_text() == (root / "truth.jsonl").read_text()
    np.testing.assert_array_equal(pydicom.dcmread(again / files[0]).pixel_array, pydicom.dcmread(root / files[0]).pixel_array)


def test_default_population_follows_the_published_shares(tmp_path):
    """RSNA's three classes (22.5 % opacity, 44.3 % not normal, 33.2 % normal), skewed subtypes,
    difficulty per film, label noise in the training split only (cxrkit.data.synthetic.PUBLISHED)."""
    n = 240
    truth = read_truth(generate_study(tmp_path / "study", n, seed=4, size=128, workers=2))
    share = {k: sum(t["impression"] == k for t in truth) / n for k in ("Pneumonia", "Other abnormality", "Normal")}
    # Binomial sd at n = 240 is at most 0.032: 3.5 sd around each published share.
    for impression, expected in (("Pneumonia", 0.225), ("Other abnormality", 0.443), ("Normal", 0.332)):
        assert abs(share[impression] - expected) < 0.11, (impression, share)
    pneumonia = [t for t in truth if t["impression"] == "Pneumonia"]
    assert all(t["boxes"] and t["subtype"] for t in pneumonia)
    others = [t for t in truth if t["impression"] == "Other abnormality"]
    assert all(not t["boxes"] and t["subtype"] is None and t["mimics"] for t in others)
    assert all(not t["mimics"] for t in truth if t["impression"] != "Other abnormality")
    clean = [t for t in pneumonia if not t["label_noise"]]
    subtypes = [t["subtype"] for t in clean]
    assert subtypes.count("COVID-19") > subtypes.count("Viral")  # 3,616 : 1,345 in the published sets
    assert "Other/Unknown" not in subtypes  # a reader's answer, never drawn
    difficulty = [t["difficulty"] for t in truth]
    assert 0.4 < np.mean(difficulty) < 0.6 and np.std(difficulty) > 0.1  # Beta(2, 2): mean 0.5, sd 0.22
    assert all(t["split"] == "train" for t in truth if t["label_noise"])

    # A two-class study (positive_fraction) keeps the draws of earlier versions: no third class, no noise.
    two = read_truth(generate_study(tmp_path / "two", 20, seed=4, size=128, positive_fraction=0.5, difficulty=0.3))
    assert {t["impression"] for t in two} == {"Pneumonia", "Normal"}
    assert all(t["difficulty"] == 0.3 and t["label_noise"] is None for t in two)


def test_other_abnormality_films_mimic_without_boxes():
    case = generate_case(5, 256, other_abnormality=True)
    plain = generate_case(5, 256, positive=False)
    assert case.impression == SCHEMA.other_abnormality and case.boxes == [] and case.mimics
    assert np.abs(case.image - plain.image).max() > 0.05  # the finding is drawn
    with pytest.raises(ValueError, match="either pneumonia"):
        generate_case(5, 256, subtype="Viral", other_abnormality=True)


def test_generate_study_in_parallel_matches_serial(tmp_path):
    progress = []
    serial = generate_study(tmp_path / "s", 4, seed=5, size=128)
    parallel = generate_study(tmp_path / "p", 4, seed=5, size=128, workers=2, progress=progress.append)
    assert progress == [1, 1, 1, 1]  # one call per image: advances a progress bar
    assert (serial / "truth.jsonl").read_text() == (parallel / "truth.jsonl").read_text()


def test_importer_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth.jsonl"):
        load_synthetic(tmp_path)
    (tmp_path / "truth.jsonl").write_text(
        json.dumps({"file": "a.dcm", "labeled": True, "split": "train", "impression": "Normal", "subtype": None, "boxes": []})
        + "\n{not json\n"
    )
    with pytest.raises(ValueError, match=r"truth.jsonl:2"):
        load_synthetic(tmp_path)
    (tmp_path / "truth.jsonl").write_text(json.dumps({"file": "a.dcm"}) + "\n")
    with pytest.raises(ValueError, match=r"truth.jsonl:1.*missing labeled"):
        load_synthetic(tmp_path)
