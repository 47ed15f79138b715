"""A Pascal VOC set: `cxr ingest ROOT --dataset voc`.

    root/Annotations/a.xml         <annotation><filename>a.png</filename>
                                     <size><width>1024</width><height>1024</height></size>
                                     <object><name>Lung Opacity</name>
                                       <bndbox><xmin>101</xmin><ymin>201</ymin><xmax>300</xmax><ymax>400</ymax></bndbox>
                                     </object> ...
    root/JPEGImages/a.png          the film `filename` names (PNG or JPEG)

VOC's coordinates are 1-based pixel indices, both ends inclusive: a box covers pixels xmin..xmax,
so in the workbench's 0-based, end-exclusive frame it starts at xmin - 1 and is xmax - xmin + 1
wide. Object names map onto the label config's findings by name
(cxrkit.data.importers.class_names). Every annotated film counts as labeled for boxes
(`has_boxes`); the impression is left to the radiologists. A film the XML names but that is
missing is skipped with a warning; an XML that does not parse, a size that differs from the
file's or a box outside it is an error naming the file. The XML is parsed by the standard
library's expat (2.4.1 and newer refuse entity-expansion bombs) and never resolves external
entities.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.importers.class_names import finding_table
from cxrkit.data.importers.image_size import checked_boxes, image_size
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "voc"


def load_voc(root: Path) -> list[SourceImage]:
    root = Path(root)
    folder = root / "Annotations"
    if not folder.is_dir():
        raise FileNotFoundError(f"no Pascal VOC Annotations/ folder in {root}")
    schema = load_schema()
    parsed = [(path, _parse(path)) for path in sorted(folder.glob("*.xml"))]
    names = sorted({obj.findtext("name", "").strip() for _, tree in parsed for obj in tree.iter("object")})
    table = finding_table(names, schema, str(folder))

    images, missing = [], []
    for path, tree in parsed:
        file_name = tree.findtext("filename", "").strip()
        film = root / "JPEGImages" / file_name
        if not file_name or not film.is_file():
            missing.append(file_name or path.name)
            continue
        size = image_size(film)
        declared = (_int(tree, "size/width", path), _int(tree, "size/height", path))
        if declared != size:
            raise ValueError(f"{path}: {file_name} is {size[0]}x{size[1]} on disk, {declared[0]}x{declared[1]} in the XML")
        boxes = []
        for obj in tree.iter("object"):
            xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{k}", path)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append(Box(x=xmin - 1, y=ymin - 1, w=xmax - xmin + 1, h=ymax - ymin + 1,
                             finding=table[obj.findtext("name", "").strip()]))
        boxes = checked_boxes(boxes, size, f"{path}: {file_name}")
        images.append(SourceImage(path=film, source=SOURCE, original_id=file_name, split="train", labeled=True,
                                  boxes=boxes, findings=sorted({b.finding for b in boxes}), metadata={"has_boxes": True}))
    if missing:
        log.warning("voc: %d annotated films are missing from JPEGImages/, skipped (e.g. %s)", len(missing),
                    ", ".join(missing[:3]))
    return images


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not a Pascal VOC XML file ({exc})") from None


def _text(element: ET.Element, tag: str, path: Path) -> str:
    value = element.findtext(tag)
    if value is None or not value.strip():
        raise ValueError(f"{path}: <{tag}> is missing")
    return value.strip()


def _int(element: ET.Element, tag: str, path: Path) -> int:
    return int(float(_text(element, tag, path)))
