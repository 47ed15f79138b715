"""The label formats users bring (COCO, YOLO, Pascal VOC, a CSV of image-level labels), each read
from files written in the real format, and a plain folder's films named by their kind."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from cxrkit.core.manifest import Box, read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.importers import get_importer
from cxrkit.data.importers.class_names import UnknownClassName
from cxrkit.data.ingest import IngestOptions, ingest, sources_from_folder

W, H = 200, 100  # every film here: 200 px wide, 100 high


def film(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (H, W), dtype=np.uint8))
    return path


def coco_set(root, category="Lung Opacity"):
    film(root / "images" / "a.png", 1)
    film(root / "images" / "b.png", 2)
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H},
                   {"id": 3, "file_name": "gone.png", "width": W, "height": H}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [20, 10, 50, 40],
                         "attributes": {"subtype": "Viral"}},
                        {"id": 11, "image_id": 1, "category_id": 8, "bbox": [120, 50, 30, 20]}],
        "categories": [{"id": 7, "name": category}, {"id": 8, "name": "pleural_effusion"}],
    }))
    return root


def test_coco_boxes_categories_and_subtypes(tmp_path):
    images = {i.original_id: i for i in get_importer("coco")(coco_set(tmp_path))}
    assert set(images) == {"a.png", "b.png"}  # gone.png: listed, missing, skipped
    assert images["a.png"].boxes == [Box(x=20, y=10, w=50, h=40, finding="Lung Opacity", subtype="Viral"),
                                     Box(x=120, y=50, w=30, h=20, finding="Pleural Effusion")]
    assert images["b.png"].boxes == [] and images["b.png"].labeled and images["b.png"].metadata["has_boxes"]
    assert images["a.png"].source == "coco" and images["a.png"].impression is None


def test_an_unknown_class_name_is_an_error_naming_file_and_class(tmp_path):
    with pytest.raises(UnknownClassName, match=r"annotations.json: class 'Tumour' is not a finding"):
        get_importer("coco")(coco_set(tmp_path, category="Tumour"))


def test_yolo_normalised_boxes_with_data_yaml_names(tmp_path):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": "/elsewhere", "train": "images/train",
                                                        "val": "images/val", "names": {0: "opacity", 1: "Nodule/Mass"}}))
    film(tmp_path / "images" / "train" / "a.png")
    film(tmp_path / "images" / "val" / "b.jpg")  # no label file: a background film
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.25 0.5 0.2 0.4\n1 0.9 0.1 0.2 0.2\n")
    images = {i.original_id: i for i in get_importer("yolo")(tmp_path)}
    a, b = images["images/train/a.png"], images["images/val/b.jpg"]
    assert a.boxes == [Box(x=30, y=30, w=40, h=40, finding="Lung Opacity"),
                       Box(x=160, y=0, w=40, h=20, finding="Nodule/Mass")]
    assert (a.split, b.split, b.boxes, b.labeled) == ("train", "val", [], True)

    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.3 0.3\n")  # a segmentation polygon
    with pytest.raises(ValueError, match=r"a.txt:1: expected `class x_center y_center width height`"):
        get_importer("yolo")(tmp_path)
    (tmp_path / "labels" / "train" / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"a.txt:1: class 2 is not in data.yaml's names"):
        get_importer("yolo")(tmp_path)


VOC = """<annotation><filename>a.png</filename><size><width>{w}</width><height>{h}</height><depth>1</depth></size>
<object><name>Lung Opacity</name><difficult>0</difficult>
<bndbox><xmin>21</xmin><ymin>11</ymin><xmax>70</xmax><ymax>50</ymax></bndbox></object></annotation>"""


def test_voc_one_based_inclusive_boxes(tmp_path):
    film(tmp_path / "JPEGImages" / "a.png")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(VOC.format(w=W, h=H))
    (image,) = get_importer("voc")(tmp_path)
    assert image.boxes == [Box(x=20, y=10, w=50, h=40, finding="Lung Opacity")]  # pixels 21..70 are 50 wide
    (tmp_path / "Annotations" / "a.xml").write_text(VOC.format(w=2 * W, h=2 * H))
    with pytest.raises(ValueError, match=r"a.png is 200x100 on disk, 400x200 in the XML"):
        get_importer("voc")(tmp_path)
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><filename>a.png")
    with pytest.raises(ValueError, match="not a Pascal VOC XML file"):
        get_importer("voc")(tmp_path)


def test_a_box_outside_its_film_is_an_error(tmp_path):
    root = coco_set(tmp_path)
    coco = json.loads((root / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [180, 10, 50, 40]  # 30 px past the right edge
    (root / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"a.png is 200x100 but has a Lung Opacity box"):
        get_importer("coco")(root)


def test_csv_labels_a_folder_and_leaves_the_rest_unlabeled(tmp_path):
    film(tmp_path / "a.png")
    film(tmp_path / "sub" / "b.png", 1)
    film(tmp_path / "c.png", 2)
    (tmp_path / "labels.csv").write_text("image,impression,subtype\na.png,pneumonia,viral\n./sub/b.png,Normal,\n")
    images = {i.original_id: i for i in get_importer("csv")(tmp_path)}
    assert (images["a.png"].impression, images["a.png"].subtype) == ("Pneumonia", "Viral")
    assert (images["sub/b.png"].impression, images["sub/b.png"].labeled) == ("Normal", True)
    assert images["c.png"].labeled is False  # not listed: the pool
    assert all(i.metadata["has_boxes"] is False and i.source == "csv" for i in images.values())

    (tmp_path / "labels.csv").write_text("image,impression,subtype\na.png,Normal,Viral\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: a subtype \(Viral\) needs the impression Pneumonia"):
        get_importer("csv")(tmp_path)
    (tmp_path / "labels.csv").write_text("image,impression\na.png,Sick\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: impression 'Sick' is not one of"):
        get_importer("csv")(tmp_path)


def test_coco_films_ingest_with_their_boxes_and_a_plain_folder_says_what_it_holds(tmp_path):
    ws = Workspace(tmp_path / "ws").create()
    report = ingest(get_importer("coco")(coco_set(tmp_path / "coco")), ws, IngestOptions(workers=1, max_side=100))
    assert report.ingested == 2 and not report.failed
    records = {len(r.boxes): r for r in read_manifest(ws.manifest_path)}
    labeled = records[2]  # a.png, scaled to 100 px wide with its boxes
    assert labeled.source == "coco" and labeled.labeled and (labeled.width, labeled.height) == (100, 50)
    assert labeled.boxes[0] == Box(x=10, y=5, w=25, h=20, finding="Lung Opacity", subtype="Viral")

    plain = tmp_path / "plain"
    film(plain / "x.png")
    film(plain / "y.jpeg", 3)
    assert [s.source for s in sources_from_folder(plain)] == ["png", "jpeg"]


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_the_labeled_set_exported_reads_back_the_same(tmp_path, fmt):
    """`cxr export OUT --format coco|yolo` of a workspace (boxes with subtypes, a Label Studio label
    over an ingested one, a film labeled at the image level only, an unlabeled film): importing
    OUT in that format gives the same boxes, and labels.csv the same impressions and subtypes."""
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.core.labels import load_schema
    from cxrkit.labelstudio.export import LabeledImage
    from cxrkit.pipeline.labels import write_labels

    ws = Workspace(tmp_path / "ws").create()
    ingest(get_importer("coco")(coco_set(tmp_path / "coco")), ws, IngestOptions(workers=1))
    folder = tmp_path / "csv"
    film(folder / "c.png", 5)
    film(folder / "d.png", 6)
    (folder / "labels.csv").write_text("image,impression,subtype\nc.png,Pneumonia,COVID-19\n")
    ingest(get_importer("csv")(folder), ws, IngestOptions(workers=1))
    records = {r.source + str(len(r.boxes)) + str(r.labeled): r for r in read_manifest(ws.manifest_path)}
    relabeled = records["coco0True"]  # b.png: a radiologist drew a box on it in Label Studio
    box = Box(x=5, y=6, w=30, h=20, finding=load_schema().opacity, subtype="Bacterial")
    write_labels([LabeledImage(image_id=relabeled.image_id, boxes=[box], impression="Pneumonia", comment=None,
                               annotation_id=1, updated_at="2026-12-03T06:00:00Z")],
                 ws.data_dir / "labels.jsonl")

    result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--format", fmt, "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "2 films with 3 boxes, 1 labeled at the image level only" in result.output
    back = {i.path.stem: i for i in get_importer(fmt)(tmp_path / "out")}
    assert set(back) == {records["coco2True"].image_id, relabeled.image_id}
    assert [(b.finding, b.x, b.y, b.w, b.h) for b in back[relabeled.image_id].boxes] == [("Lung Opacity", 5, 6, 30, 20)]
    if fmt == "coco":
        assert back[relabeled.image_id].boxes[0].subtype == "Bacterial"
    assert len(back[records["coco2True"].image_id].boxes) == 2
    image_level = {i.path.stem: i for i in get_importer("csv")(tmp_path / "out") if i.labeled}
    assert image_level[records["csv0True"].image_id].subtype == "COVID-19"
    assert image_level[relabeled.image_id].impression == "Pneumonia"
    assert records["csv0False"].image_id not in image_level  # unlabeled films are not exported
