"""COCO detection JSON with its films: `cxr ingest ROOT --dataset coco`.

    root/annotations.json         (else the one *.json in root/annotations/ or in root)
    root/<file_name>              each image's `file_name`, or root/images/<file_name>

    {"images":      [{"id": 1, "file_name": "a.png", "width": 1024, "height": 1024}, ...],
     "annotations": [{"image_id": 1, "category_id": 3, "bbox": [x, y, w, h],
                      "attributes": {"subtype": "Viral"}}, ...],      # attributes: optional
     "categories":  [{"id": 3, "name": "Lung Opacity"}, ...]}

Boxes are `[x, y, width, height]` in pixels from the top-left corner, as COCO defines them;
categories map onto the label config's findings by name (cxrkit.data.importers.class_names),
and a subtype attribute (what `cxr export --format coco` writes) must be one of the config's
subtypes. Every listed image counts as labeled for boxes (`has_boxes`: an image without
annotations has none); the impression is left to the radiologists. An image listed but missing
on disk is skipped with a warning; a box outside its image, a size that differs from the
file's, an annotation of an unknown image or category is an error naming it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.importers.class_names import finding_table
from cxrkit.data.importers.image_size import checked_boxes, image_size
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "coco"


def load_coco(root: Path) -> list[SourceImage]:
    root = Path(root)
    path = annotation_file(root)
    try:
        coco = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a COCO JSON file ({exc})") from None
    schema = load_schema()
    categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
    findings = finding_table(list(categories.values()), schema, str(path))
    boxes_by_image: dict[object, list[Box]] = {}
    images_by_id = {image["id"]: image for image in coco.get("images", [])}
    for n, ann in enumerate(coco.get("annotations", [])):
        where = f"{path}: annotation {ann.get('id', n)}"
        if ann.get("image_id") not in images_by_id:
            raise ValueError(f"{where} refers to image {ann.get('image_id')!r}, which `images` does not list")
        if ann.get("category_id") not in categories:
            raise ValueError(f"{where} refers to category {ann.get('category_id')!r}, which `categories` does not list")
        x, y, w, h = (float(v) for v in ann["bbox"])
        subtype = schema.check_subtype((ann.get("attributes") or {}).get("subtype"))
        boxes_by_image.setdefault(ann["image_id"], []).append(
            Box(x=x, y=y, w=w, h=h, finding=findings[categories[ann["category_id"]]], subtype=subtype))

    images, missing = [], []
    for image_id, image in images_by_id.items():
        file = _find(root, image["file_name"])
        if file is None:
            missing.append(image["file_name"])
            continue
        size = image_size(file)
        if (image.get("width"), image.get("height")) not in ((None, None), size):
            raise ValueError(f"{path}: {image['file_name']} is {size[0]}x{size[1]} on disk, "
                             f"{image.get('width')}x{image.get('height')} in the JSON")
        boxes = checked_boxes(boxes_by_image.get(image_id, []), size, f"{path}: {image['file_name']}")
        images.append(SourceImage(path=file, source=SOURCE, original_id=image["file_name"], split="train",
                                  labeled=True, boxes=boxes, findings=sorted({b.finding for b in boxes}),
                                  metadata={"has_boxes": True}))
    if missing:
        log.warning("coco: %d images listed in %s are missing, skipped (e.g. %s)", len(missing), path.name,
                    ", ".join(missing[:3]))
    return images


def annotation_file(root: Path) -> Path:
    """root/annotations.json, else the one JSON file in root/annotations/ or root."""
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    for folder in (root / "annotations", root):
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"{folder} holds {len(found)} JSON files; name the COCO file annotations.json")
    raise FileNotFoundError(f"no COCO annotations in {root}: expected {root / 'annotations.json'}")


def _find(root: Path, file_name: str) -> Path | None:
    for candidate in (root / file_name, root / "images" / file_name):
        if candidate.is_file() and root.resolve() in candidate.resolve().parents:
            return candidate
    return None
