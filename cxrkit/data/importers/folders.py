"""Folder-per-class classification sets: the class is the folder an image sits in.

These sets label whole images and draw no boxes. Their images get labeled=True
(the impression and subtype are the curators' ground truth) and
metadata["has_boxes"]=False, which every importer sets: only where has_boxes is
True does an empty box list mean "nothing there", so a detector trainer must not
use these images as box negatives. Neither set publishes patient ids except
Kermany's file names; elsewhere patient_key is None and ingest falls back to the
image id (each image its own patient).

An unknown class folder is an error; hidden folders and `__MACOSX` (zip debris)
are skipped, as are the COVID set's masks/ folders.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.data.sources import SourceImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

KERMANY_SPLITS = ("train", "val", "test")
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
KERMANY_SUBTYPES = {"bacteria": "Bacterial", "virus": "Viral"}
PERSON = re.compile(r"(person\d+)_(bacteria|virus)_\d+")  # person1000_virus_1681
NORMAL_IMAGE = re.compile(r"(.+)-\d+")  # IM-0115-0001, NORMAL2-IM-1427-0001: drop the image number


def _covid_classes(schema: LabelSchema) -> dict[str, tuple[str, str | None, list[str]]]:
    """COVID-19 Radiography Database folder -> (impression, subtype, findings), checked against the label config.

    Lung_Opacity is the dataset's "non-COVID lung infection" class, taken from
    RSNA's Lung Opacity images, which load_rsna calls pneumonia: the same images
    get the same impression whichever dataset they arrive through. The cause is
    unstated, so no subtype; the opacity is recorded as an image-level finding.
    "COVID-19" and "NORMAL" are the first release's folder names.
    """
    classes = {
        "COVID": (schema.pneumonia, "COVID-19", []),
        "COVID-19": (schema.pneumonia, "COVID-19", []),
        "Viral Pneumonia": (schema.pneumonia, "Viral", []),
        "Lung_Opacity": (schema.pneumonia, None, [schema.opacity]),
        "Normal": (schema.normal, None, []),
        "NORMAL": (schema.normal, None, []),
    }
    schema.check_table("the covid-radiography importer's _covid_classes (cxrkit/data/importers/folders.py)",
                       subtypes=[subtype for _, subtype, _ in classes.values()])
    return classes


def load_covid_radiography(root: Path) -> list[SourceImage]:
    """COVID-19 Radiography Database; `root` is the dataset folder or the folder holding it."""
    classes = _covid_classes(load_schema())
    dataset = _covid_folder(Path(root), classes)
    images: list[SourceImage] = []
    for class_dir in _class_dirs(dataset, classes):
        impression, subtype, findings = classes[class_dir.name]
        # Newer releases put images in <class>/images next to <class>/masks.
        image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
        for path in _image_files(image_dir):
            images.append(
                SourceImage(path=path, source="covid-radiography", original_id=path.stem, labeled=True,
                            findings=list(findings), impression=impression,
                            subtype=subtype, metadata={"has_boxes": False})
            )
    return images


def load_kermany(root: Path) -> list[SourceImage]:
    """Kermany et al. pediatric pneumonia set (Kaggle chest_xray); `root` is chest_xray or its parent.

    Only chest_xray/{train,val,test} is read: the Kaggle zip also holds a nested
    chest_xray/chest_xray copy and __MACOSX, both ignored.
    """
    schema = load_schema()
    schema.check_table("the kermany importer's KERMANY_SUBTYPES (cxrkit/data/importers/folders.py)",
                       subtypes=KERMANY_SUBTYPES.values())
    dataset = _kermany_folder(Path(root))
    images: list[SourceImage] = []
    for split in KERMANY_SPLITS:
        if not (dataset / split).is_dir():
            continue
        for class_dir in _class_dirs(dataset / split, KERMANY_CLASSES):
            for path in _image_files(class_dir):
                patient_key, subtype = _kermany_patient_and_subtype(path, class_dir.name)
                images.append(
                    SourceImage(
                        path=path,
                        source="kermany",
                        # File names are only unique within a split's class folder.
                        original_id=f"{split}/{class_dir.name}/{path.stem}",
                        patient_key=patient_key,
                        split=split,
                        labeled=True,
                        impression=schema.pneumonia if class_dir.name == "PNEUMONIA" else schema.normal,
                        subtype=subtype,
                        metadata={"has_boxes": False},
                    )
                )
    return images


def _kermany_patient_and_subtype(path: Path, class_name: str) -> tuple[str, str | None]:
    """PNEUMONIA/person12_virus_34 -> ("person12", "Viral"); NORMAL/IM-0115-0001 -> ("IM-0115", None).

    Normal file names carry no person number; IM-<n>-<k> looks like study n, image k,
    so the key drops the image number and images of one study group together.
    """
    person = PERSON.fullmatch(path.stem)
    if class_name == "PNEUMONIA":
        if not person:
            raise ValueError(f"{path}: pneumonia file name says neither bacteria nor virus")
        return person.group(1), KERMANY_SUBTYPES[person.group(2)]
    if person:
        return person.group(1), None
    normal = NORMAL_IMAGE.fullmatch(path.stem)
    return (normal.group(1) if normal else path.stem), None


def _covid_folder(root: Path, classes: Iterable[str]) -> Path:
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if any((candidate / name).is_dir() for name in classes):
            return candidate
    raise FileNotFoundError(f"no COVID-19 Radiography class folders ({', '.join(classes)}) in {root}")


def _kermany_folder(root: Path) -> Path:
    for candidate in (root, root / "chest_xray"):
        if any((candidate / split).is_dir() for split in KERMANY_SPLITS):
            return candidate
    raise FileNotFoundError(f"no chest_xray/{{train,val,test}} folders in {root}")


def _class_dirs(folder: Path, known: Iterable[str]) -> list[Path]:
    dirs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not _ignored(p)]
    for d in dirs:
        if d.name not in known:
            raise ValueError(f"{d}: unknown class folder; expected one of {list(known)}")
    return dirs


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _ignored(p)]


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"
