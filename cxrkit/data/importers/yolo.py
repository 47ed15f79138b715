"""A YOLO detection set (ultralytics layout): `cxr ingest ROOT --dataset yolo`.

    root/data.yaml                 names: [Lung Opacity, ...]   (or {0: Lung Opacity, ...})
                                   train: images/train   val: images/val   test: images/test
    root/images/train/a.png        the films of each split listed in data.yaml
    root/labels/train/a.txt        one line a box: `class x_center y_center width height`,
                                   normalised to [0, 1] by the image's width and height

A label file sits where its image does with `images` replaced by `labels` and the suffix by
`.txt` (ultralytics' rule). An image without one has no box: YOLO sets mark background films
that way, so every image counts as labeled for boxes (`has_boxes`); the impression is left to
the radiologists. Class ids index data.yaml's `names`, mapped onto the label config's findings by
name (cxrkit.data.importers.class_names). A line that is not five numbers (a segmentation
polygon, say), a class id outside `names` or a box outside the image is an error naming the file
and line. `path:` in data.yaml is ignored: the folder given on the command line is the root.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.importers.class_names import finding_table
from cxrkit.data.importers.image_size import checked_boxes, image_size
from cxrkit.data.sources import SourceImage

SOURCE = "yolo"
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_yolo(root: Path) -> list[SourceImage]:
    root = Path(root)
    config_path = root / "data.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"no YOLO data.yaml in {root}")
    config = yaml.safe_load(config_path.read_text()) or {}
    names = config.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        raise ValueError(f"{config_path}: no class `names`")
    table = finding_table(list(names), load_schema(), str(config_path))
    findings = [table[name] for name in names]

    images: list[SourceImage] = []
    for split in SPLITS:
        if not config.get(split):
            continue
        folders = config[split] if isinstance(config[split], list) else [config[split]]
        for folder in folders:
            image_dir = root / folder
            if not image_dir.is_dir():
                raise FileNotFoundError(f"{config_path}: {split} folder {image_dir} does not exist")
            for path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                size = image_size(path)
                boxes = checked_boxes(_read_labels(label_path(path), findings, size), size, str(path))
                images.append(SourceImage(path=path, source=SOURCE, original_id=str(path.relative_to(root)),
                                          split=split, labeled=True, boxes=boxes,
                                          findings=sorted({b.finding for b in boxes}), metadata={"has_boxes": True}))
    return images


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_labels(path: Path, findings: list[str], size: tuple[int, int]) -> list[Box]:
    if not path.is_file():
        return []
    width, height = size
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields")
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: expected `class x_center y_center width height` ({exc})") from None
        if not 0 <= cls < len(findings):
            raise ValueError(f"{path}:{number}: class {cls} is not in data.yaml's names (0-{len(findings) - 1})")
        boxes.append(Box(x=(cx - w / 2) * width, y=(cy - h / 2) * height, w=w * width, h=h * height,
                         finding=findings[cls]))
    return boxes
