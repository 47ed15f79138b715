"""Importers against tiny fixtures in each dataset's real on-disk format."""
from __future__ import annotations

import logging

import pytest
from dataset_fixtures import write_dicom, write_image, write_text

from cxrkit.core.labels import LabelConfigError, load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.importers import get_importer
from cxrkit.data.importers.folders import load_covid_radiography, load_kermany
from cxrkit.data.importers.nih import load_nih
from cxrkit.data.importers.rsna import load_rsna
from cxrkit.data.importers.vinbig import load_vinbig


def by_id(images):
    return {image.original_id: image for image in images}


def assert_schema_names(images):
    schema = load_schema()
    for image in images:
        for box in image.boxes + image.raw_boxes:
            schema.check_finding(box.finding)
            schema.check_subtype(box.subtype)
        for finding in image.findings:
            schema.check_finding(finding)
        schema.check_subtype(image.subtype)
        assert image.impression is None or image.impression in schema.impressions


def test_registry_points_at_these_loaders():
    assert get_importer("rsna") is load_rsna
    assert get_importer("nih") is load_nih
    assert get_importer("vinbig") is load_vinbig
    assert get_importer("covid-radiography") is load_covid_radiography
    assert get_importer("kermany") is load_kermany


# --- RSNA --------------------------------------------------------------------

PNEU = "00436515-870c-4b36-a041-de91049b9ab4"
NORMAL = "003d8fa0-6bf1-40ed-b54c-ac657f8495c5"
OTHER = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
GONE = "00313ee0-9eaa-42f4-b0ab-c148ed3241cd"


def make_rsna(root, classes_extra=""):
    write_text(root / "stage_2_train_labels.csv",
               "patientId,x,y,width,height,Target\n"
               f"{OTHER},,,,,0\n"
               f"{NORMAL},,,,,0\n"
               f"{PNEU},264.0,152.0,213.0,379.0,1\n"
               f"{PNEU},562.0,152.0,256.0,453.0,1\n"
               f"{GONE},,,,,0\n")
    write_text(root / "stage_2_detailed_class_info.csv",
               "patientId,class\n"
               f"{OTHER},No Lung Opacity / Not Normal\n"
               f"{NORMAL},Normal\n"
               f"{PNEU},Lung Opacity\n"
               f"{PNEU},Lung Opacity\n"
               f"{GONE},Normal\n" + classes_extra)
    for pid in (PNEU, NORMAL, OTHER):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm")
    write_dicom(root / "stage_2_test_images" / "0000a175-0e68-4ca4-b1af-167204a7e0bc.dcm")


def test_rsna(tmp_path, caplog):
    make_rsna(tmp_path)
    with caplog.at_level(logging.WARNING):
        images = load_rsna(tmp_path)
    assert_schema_names(images)
    got = by_id(images)
    assert sorted(got) == sorted([PNEU, NORMAL, OTHER, "0000a175-0e68-4ca4-b1af-167204a7e0bc"])
    assert "1 images listed in stage_2_train_labels.csv are missing" in caplog.text

    pneu = got[PNEU]
    assert pneu.path == tmp_path / "stage_2_train_images" / f"{PNEU}.dcm"
    assert (pneu.source, pneu.patient_key, pneu.split, pneu.labeled) == ("rsna", PNEU, "train", True)
    assert pneu.boxes == [Box(264.0, 152.0, 213.0, 379.0, "Lung Opacity"),
                          Box(562.0, 152.0, 256.0, 453.0, "Lung Opacity")]
    assert (pneu.impression, pneu.subtype, pneu.findings) == ("Pneumonia", None, ["Lung Opacity"])
    assert pneu.metadata == {"has_boxes": True}

    assert (got[NORMAL].impression, got[NORMAL].boxes, got[NORMAL].findings) == ("Normal", [], [])
    assert (got[OTHER].impression, got[OTHER].boxes, got[OTHER].labeled) == ("Other abnormality", [], True)

    test = got["0000a175-0e68-4ca4-b1af-167204a7e0bc"]
    assert (test.split, test.labeled, test.impression, test.metadata) == ("unlabeled", False, None, {"has_boxes": False})


def test_rsna_unknown_class(tmp_path):
    make_rsna(tmp_path, classes_extra=f"{NORMAL},Pneumothorax\n")
    with pytest.raises(ValueError, match="unknown class 'Pneumothorax'"):
        load_rsna(tmp_path)


# --- NIH ChestX-ray14 --------------------------------------------------------

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def make_nih(root, extra_row=""):
    write_text(root / "Data_Entry_2017.csv", NIH_HEADER +
               "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
               "00000003_001.png,Effusion|Infiltration|Pneumonia,1,3,058Y,F,AP,2048,2500,0.168,0.168\n"
               "00000005_000.png,No Finding,0,5,414,F,PA,2500,2048,0.171,0.171,\n"
               "00000006_000.png,Hernia,0,6,81,M,PA,2992,2991,0.143,0.143,\n"
               "00000007_000.png,No Finding,0,7,30,M,PA,2500,2048,0.168,0.168,\n" + extra_row)
    write_text(root / "BBox_List_2017.csv",
               "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
               "00000003_001.png,Infiltrate,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,\n"
               "00000003_001.png,Pneumonia,686.101694915254,131.543152809853,185.491525423729,313.491525423729,,,\n")
    write_text(root / "train_val_list.txt", "00000001_000.png\n00000005_000.png\n")
    write_text(root / "test_list.txt", "00000003_001.png\n")
    # Two shards as Kaggle ships them; 00000007_000.png is listed but not downloaded.
    write_image(root / "images_001" / "images" / "00000001_000.png")
    write_image(root / "images_001" / "images" / "00000003_001.png")
    write_image(root / "images_002" / "images" / "00000005_000.png")
    write_image(root / "images_002" / "images" / "00000006_000.png")


def test_nih(tmp_path, caplog):
    make_nih(tmp_path)
    with caplog.at_level(logging.WARNING):
        images = load_nih(tmp_path)
    assert_schema_names(images)
    got = by_id(images)
    assert sorted(got) == ["00000001_000", "00000003_001", "00000005_000", "00000006_000"]
    assert "1 images listed in Data_Entry_2017.csv are missing" in caplog.text
    assert all(not image.labeled and image.metadata["has_boxes"] is False for image in images)

    first = got["00000001_000"]
    assert first.path == tmp_path / "images_001" / "images" / "00000001_000.png"
    assert (first.patient_key, first.split, first.boxes) == ("1", "train", [])
    assert (first.findings, first.impression) == (["Cardiomegaly"], "Other abnormality")
    assert first.metadata == {
        "has_boxes": False,
        "source_labels": ["Cardiomegaly", "Emphysema"],
        "age": 58,
        "sex": "M",
        "view": "PA",
        "pixel_spacing": [pytest.approx(0.143 * 2682 / 1024), pytest.approx(0.143 * 2749 / 1024)],
    }

    pneu = got["00000003_001"]
    assert (pneu.patient_key, pneu.split) == ("3", "test")
    assert pneu.findings == ["Infiltration", "Lung Opacity", "Pleural Effusion"]
    assert (pneu.impression, pneu.subtype) == ("Pneumonia", None)
    assert pneu.boxes == [
        Box(225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661, "Infiltration"),
        Box(686.101694915254, 131.543152809853, 185.491525423729, 313.491525423729, "Lung Opacity"),
    ]
    assert (pneu.metadata["age"], pneu.metadata["sex"], pneu.metadata["view"]) == (58, "F", "AP")
    assert pneu.metadata["source_labels"] == ["Effusion", "Infiltration", "Pneumonia"]

    normal = got["00000005_000"]
    assert (normal.impression, normal.findings, normal.split) == ("Normal", [], "train")
    assert "age" not in normal.metadata  # 414: a data-entry error, dropped

    hernia = got["00000006_000"]
    assert (hernia.findings, hernia.impression, hernia.split) == ([], "Other abnormality", "")
    assert hernia.metadata["source_labels"] == ["Hernia"]


def test_nih_unknown_label(tmp_path):
    make_nih(tmp_path, extra_row="00000001_001.png,Covid,1,1,59,M,PA,2682,2749,0.143,0.143,\n")
    write_image(tmp_path / "images_001" / "images" / "00000001_001.png")
    with pytest.raises(ValueError, match="unknown NIH label 'Covid'"):
        load_nih(tmp_path)


# --- VinBigData --------------------------------------------------------------

VB_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
FUSE = "9a5094b2563a1ef3ff50dc5c7ff71345"
CLEAR = "47ed17dcb2cbeec15182ed335a8b5a9e"
SPLIT = "7c1add6833d5f0102b0d3619a1682a64"
LOST = "0005e8e3701dfb1dd93d53e2ff537b6e"


def make_vinbig(root):
    write_text(root / "train.csv", VB_HEADER +
               # FUSE: three readers agree on the aorta; one nodule each from R8 and R9,
               # far apart; R10's "Other lesion" on the aorta is another class, so not fused.
               f"{FUSE},Aortic enlargement,0,R8,100,40,140,80\n"
               f"{FUSE},Aortic enlargement,0,R9,106,46,146,86\n"
               f"{FUSE},Aortic enlargement,0,R10,97,37,140,77\n"
               f"{FUSE},Nodule/Mass,8,R8,10,10,20,20\n"
               f"{FUSE},Nodule/Mass,8,R9,170,120,180,130\n"
               f"{FUSE},Other lesion,9,R10,100,40,140,80\n"
               f"{CLEAR},No finding,14,R1,,,,\n"
               f"{CLEAR},No finding,14,R2,,,,\n"
               f"{CLEAR},No finding,14,R3,,,,\n"
               f"{SPLIT},No finding,14,R1,,,,\n"
               f"{SPLIT},Cardiomegaly,3,R2,20,50,80,90\n"
               f"{SPLIT},Cardiomegaly,3,R3,22,52,82,88\n"
               f"{LOST},No finding,14,R1,,,,\n")
    write_dicom(root / "train" / f"{FUSE}.dicom", rows=160, columns=200)
    write_image(root / "train" / f"{CLEAR}.png", width=120, height=100)
    write_image(root / "train" / f"{SPLIT}.png", width=100, height=100)
    write_dicom(root / "test" / "002a34c58c5b758217ed1f584ccbcfe9.dicom")


def test_vinbig(tmp_path, caplog):
    make_vinbig(tmp_path)
    with caplog.at_level(logging.WARNING):
        images = load_vinbig(tmp_path)
    assert_schema_names(images)
    got = by_id(images)
    assert sorted(got) == sorted([FUSE, CLEAR, SPLIT, "002a34c58c5b758217ed1f584ccbcfe9"])
    assert "1 images listed in train.csv are missing" in caplog.text

    fuse = got[FUSE]
    assert fuse.path == tmp_path / "train" / f"{FUSE}.dicom"
    assert (fuse.split, fuse.labeled, fuse.patient_key, fuse.metadata) == ("train", True, None, {"has_boxes": True})
    assert (fuse.impression, fuse.subtype) == ("Other abnormality", None)
    assert fuse.findings == ["Aortic Enlargement", "Nodule/Mass", "Other Lesion"]
    # All scores are 1, so WBF's score-weighted mean is the plain mean of the three
    # readers' corners: x1 (100+106+97)/3 = 101, y1 41, x2 142, y2 81; all 3 of 3 readers -> 1.0.
    assert fuse.boxes == [
        Box(101.0, 41.0, 41.0, 40.0, "Aortic Enlargement", score=1.0),
        Box(10.0, 10.0, 10.0, 10.0, "Nodule/Mass", score=0.3333),
        Box(170.0, 120.0, 10.0, 10.0, "Nodule/Mass", score=0.3333),
        Box(100.0, 40.0, 40.0, 40.0, "Other Lesion", score=0.3333),
    ]
    assert fuse.raw_boxes == [
        Box(100.0, 40.0, 40.0, 40.0, "Aortic Enlargement", rad_id="R8"),
        Box(106.0, 46.0, 40.0, 40.0, "Aortic Enlargement", rad_id="R9"),
        Box(97.0, 37.0, 43.0, 40.0, "Aortic Enlargement", rad_id="R10"),
        Box(10.0, 10.0, 10.0, 10.0, "Nodule/Mass", rad_id="R8"),
        Box(170.0, 120.0, 10.0, 10.0, "Nodule/Mass", rad_id="R9"),
        Box(100.0, 40.0, 40.0, 40.0, "Other Lesion", rad_id="R10"),
    ]

    clear = got[CLEAR]
    assert (clear.impression, clear.boxes, clear.raw_boxes, clear.findings, clear.labeled) == ("Normal", [], [], [], True)

    # R1 said "No finding": the box two of three readers drew scores 2/3.
    split = got[SPLIT]
    assert split.impression == "Other abnormality"
    assert split.boxes == [Box(21.0, 51.0, 60.0, 38.0, "Cardiomegaly", score=0.6667)]
    assert [box.rad_id for box in split.raw_boxes] == ["R2", "R3"]

    test = got["002a34c58c5b758217ed1f584ccbcfe9"]
    assert (test.split, test.labeled, test.metadata) == ("unlabeled", False, {"has_boxes": False})


def test_vinbig_unknown_class(tmp_path):
    write_text(tmp_path / "train.csv", VB_HEADER + f"{SPLIT},Tuberculosis,15,R2,20,50,80,90\n")
    write_image(tmp_path / "train" / f"{SPLIT}.png", width=100, height=100)
    with pytest.raises(ValueError, match="unknown VinBigData class 'Tuberculosis'"):
        load_vinbig(tmp_path)


def test_vinbig_rejects_boxes_outside_a_downsized_png(tmp_path):
    write_text(tmp_path / "train.csv", VB_HEADER + f"{SPLIT},Cardiomegaly,3,R2,20,50,80,90\n")
    write_image(tmp_path / "train" / f"{SPLIT}.png", width=64, height=64)
    with pytest.raises(ValueError, match="full-resolution"):
        load_vinbig(tmp_path)


# --- Folder-per-class sets ---------------------------------------------------

def test_covid_radiography(tmp_path):
    dataset = tmp_path / "COVID-19_Radiography_Dataset"
    for name in ("COVID/images/COVID-1.png", "COVID/images/COVID-2.png", "Lung_Opacity/images/Lung_Opacity-1.png",
                 "Normal/images/Normal-1.png", "Viral Pneumonia/images/Viral Pneumonia-1.png"):
        write_image(dataset / name)
    write_image(dataset / "COVID" / "masks" / "COVID-1.png")  # segmentation masks are not images to label
    write_text(dataset / "COVID.metadata.xlsx", "")
    write_text(dataset / "Normal" / "images" / ".DS_Store", "")

    images = load_covid_radiography(tmp_path)
    assert_schema_names(images)
    got = {i.original_id: (i.path.relative_to(dataset).as_posix(), i.impression, i.subtype, i.findings)
           for i in images}
    assert got == {
        "COVID-1": ("COVID/images/COVID-1.png", "Pneumonia", "COVID-19", []),
        "COVID-2": ("COVID/images/COVID-2.png", "Pneumonia", "COVID-19", []),
        "Lung_Opacity-1": ("Lung_Opacity/images/Lung_Opacity-1.png", "Pneumonia", None, ["Lung Opacity"]),
        "Normal-1": ("Normal/images/Normal-1.png", "Normal", None, []),
        "Viral Pneumonia-1": ("Viral Pneumonia/images/Viral Pneumonia-1.png", "Pneumonia", "Viral", []),
    }
    for image in images:
        assert (image.source, image.split, image.labeled, image.patient_key, image.boxes) == (
            "covid-radiography", "", True, None, [])
        assert image.metadata == {"has_boxes": False}


def test_covid_radiography_old_layout_at_root(tmp_path):
    write_image(tmp_path / "COVID" / "COVID (1).png")
    write_image(tmp_path / "Normal" / "NORMAL (1).png")
    write_image(tmp_path / "Viral Pneumonia" / "Viral Pneumonia (1).png")
    got = {i.original_id: (i.impression, i.subtype) for i in load_covid_radiography(tmp_path)}
    assert got == {"COVID (1)": ("Pneumonia", "COVID-19"), "NORMAL (1)": ("Normal", None),
                   "Viral Pneumonia (1)": ("Pneumonia", "Viral")}


def test_covid_radiography_unknown_class_folder(tmp_path):
    write_image(tmp_path / "COVID" / "COVID-1.png")
    write_image(tmp_path / "Tuberculosis" / "Tuberculosis-1.png")
    with pytest.raises(ValueError, match="Tuberculosis: unknown class folder"):
        load_covid_radiography(tmp_path)


def make_kermany(root):
    top = root / "chest_xray"
    for name in ("train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-1427-0001.jpeg",
                 "train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_virus_6.jpeg",
                 "test/PNEUMONIA/person1000_virus_1681.jpeg", "val/NORMAL/IM-0115-0002.jpeg"):
        write_image(top / name)
    # Kaggle zip debris: a nested duplicate and macOS metadata, both ignored.
    write_image(top / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    write_image(top / "__MACOSX" / "train" / "NORMAL" / "._IM-0115-0001.jpeg")
    write_text(top / "train" / "NORMAL" / ".DS_Store", "")


def test_kermany(tmp_path):
    make_kermany(tmp_path)
    for root in (tmp_path, tmp_path / "chest_xray"):
        images = load_kermany(root)
        assert_schema_names(images)
        got = {i.original_id: (i.split, i.patient_key, i.impression, i.subtype) for i in images}
        assert got == {
            "train/NORMAL/IM-0115-0001": ("train", "IM-0115", "Normal", None),
            "train/NORMAL/NORMAL2-IM-1427-0001": ("train", "NORMAL2-IM-1427", "Normal", None),
            "train/PNEUMONIA/person1_bacteria_1": ("train", "person1", "Pneumonia", "Bacterial"),
            "train/PNEUMONIA/person1_virus_6": ("train", "person1", "Pneumonia", "Viral"),
            "test/PNEUMONIA/person1000_virus_1681": ("test", "person1000", "Pneumonia", "Viral"),
            "val/NORMAL/IM-0115-0002": ("val", "IM-0115", "Normal", None),
        }
        assert all(i.path.is_relative_to(tmp_path / "chest_xray" / i.split) for i in images)
        assert all(i.labeled and i.metadata == {"has_boxes": False} and not i.boxes for i in images)


def test_kermany_pneumonia_without_cause(tmp_path):
    write_image(tmp_path / "chest_xray" / "train" / "PNEUMONIA" / "person3_fungus_9.jpeg")
    with pytest.raises(ValueError, match="neither bacteria nor virus"):
        load_kermany(tmp_path)


# --- Names from the label config ---------------------------------------------

def test_role_names_follow_a_renamed_label_config(tmp_path, renamed_roles):
    """The opacity finding and the three impressions are the config's, by position, in every importer."""
    make_rsna(tmp_path / "rsna")
    rsna = by_id(load_rsna(tmp_path / "rsna"))
    assert (rsna[PNEU].impression, rsna[PNEU].findings) == ("Infection", ["Pneumonic Opacity"])
    assert {box.finding for box in rsna[PNEU].boxes} == {"Pneumonic Opacity"}
    assert (rsna[NORMAL].impression, rsna[OTHER].impression) == ("Unremarkable", "Something else")

    make_nih(tmp_path / "nih")
    nih = by_id(load_nih(tmp_path / "nih"))
    assert nih["00000003_001"].impression == "Infection"
    assert nih["00000003_001"].findings == ["Infiltration", "Pleural Effusion", "Pneumonic Opacity"]
    assert [box.finding for box in nih["00000003_001"].boxes] == ["Infiltration", "Pneumonic Opacity"]
    assert (nih["00000005_000"].impression, nih["00000001_000"].impression) == ("Unremarkable", "Something else")

    make_vinbig(tmp_path / "vinbig")
    with open(tmp_path / "vinbig" / "train.csv", "a") as fh:
        fh.write(f"{SPLIT},Lung Opacity,7,R3,10,10,30,30\n")
    vinbig = by_id(load_vinbig(tmp_path / "vinbig"))
    assert (vinbig[CLEAR].impression, vinbig[SPLIT].impression) == ("Unremarkable", "Something else")
    assert vinbig[SPLIT].findings == ["Cardiomegaly", "Pneumonic Opacity"]

    for name in ("COVID/COVID-1.png", "Lung_Opacity/Lung_Opacity-1.png", "Normal/Normal-1.png"):
        write_image(tmp_path / "covid" / name)
    covid = {i.original_id: (i.impression, i.findings) for i in load_covid_radiography(tmp_path / "covid")}
    assert covid == {"COVID-1": ("Infection", []), "Lung_Opacity-1": ("Infection", ["Pneumonic Opacity"]),
                     "Normal-1": ("Unremarkable", [])}

    make_kermany(tmp_path / "kermany")
    kermany = {i.original_id: i.impression for i in load_kermany(tmp_path / "kermany")}
    assert (kermany["train/NORMAL/IM-0115-0001"], kermany["train/PNEUMONIA/person1_virus_6"]) == (
        "Unremarkable", "Infection")
    for images in (rsna, nih, vinbig):
        assert_schema_names(images.values())


def test_a_mapping_target_missing_from_the_label_config_stops_the_import(tmp_path, label_config):
    """A finding or subtype renamed in the config but not in an importer's table: refused, naming both."""
    label_config({"Pleural Effusion": "Effusion", "Viral": "Viral pneumonia"})
    make_nih(tmp_path / "nih")
    make_vinbig(tmp_path / "vinbig")
    write_image(tmp_path / "covid" / "Normal" / "Normal-1.png")
    make_kermany(tmp_path / "kermany")
    for load, folder, table, name in (
        (load_nih, "nih", "nih importer's FINDINGS", "unknown finding 'Pleural Effusion'"),
        (load_vinbig, "vinbig", "vinbig importer's FINDINGS", "unknown finding 'Pleural Effusion'"),
        (load_covid_radiography, "covid", "covid-radiography importer's _covid_classes", "unknown subtype 'Viral'"),
        (load_kermany, "kermany", "kermany importer's KERMANY_SUBTYPES", "unknown subtype 'Viral'"),
    ):
        with pytest.raises(LabelConfigError, match=f"{table} .* lacks: {name}"):
            load(tmp_path / folder)
