"""A folder of films with a CSV of image-level labels: `cxr ingest ROOT --dataset csv`.

    root/labels.csv        image,impression,subtype
                           a.png,Pneumonia,Viral
                           sub/b.dcm,Normal,
    root/a.png, root/sub/b.dcm, ...    the films: PNG, JPEG or DICOM, in any sub-folder

`image` is the film's path relative to root. `impression` and `subtype` are the label config's
names, matched ignoring case (a subtype only with the pneumonia impression; empty for none).
Listed films are labeled at the image level and draw no boxes (`has_boxes` False: the detector
does not take them as box negatives); every other film in the folder comes in unlabeled, the pool
the workbench ranks for the radiologists. A row with an unknown name, a subtype without
pneumonia or a film listed twice is an error naming the row; a listed film that is missing is
skipped with a warning.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "csv"
LABELS = "labels.csv"
FILM_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def load_csv_labels(root: Path) -> list[SourceImage]:
    root = Path(root)
    table = root / LABELS
    if not table.is_file():
        raise FileNotFoundError(f"no {LABELS} in {root} (columns image, impression, subtype)")
    schema = load_schema()
    labels = _read(table, schema)
    films = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FILM_SUFFIXES)
    images = []
    for film in films:
        rel = film.relative_to(root).as_posix()
        impression, subtype = labels.pop(rel, (None, None))
        images.append(SourceImage(path=film, source=SOURCE, original_id=rel, split="train", labeled=impression is not None,
                                  impression=impression, subtype=subtype, metadata={"has_boxes": False}))
    if labels:
        log.warning("csv: %d films listed in %s are missing, skipped (e.g. %s)", len(labels), LABELS,
                    ", ".join(list(labels)[:3]))
    return images


def _read(table: Path, schema: LabelSchema) -> dict[str, tuple[str, str | None]]:
    impressions = {name.casefold(): name for name in schema.impressions}
    subtypes = {name.casefold(): name for name in schema.subtypes}
    labels: dict[str, tuple[str, str | None]] = {}
    with table.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "impression"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{table}: no column {', '.join(sorted(missing))} (columns: image, impression, subtype)")
        for number, row in enumerate(reader, 2):
            where = f"{table}:{number}"
            image = (row.get("image") or "").strip().removeprefix("./")
            impression = impressions.get((row.get("impression") or "").strip().casefold())
            subtype_name = (row.get("subtype") or "").strip()
            subtype = subtypes.get(subtype_name.casefold()) if subtype_name else None
            if not image:
                raise ValueError(f"{where}: no image")
            if impression is None:
                raise ValueError(f"{where}: impression {row.get('impression')!r} is not one of {', '.join(schema.impressions)}")
            if subtype_name and subtype is None:
                raise ValueError(f"{where}: subtype {subtype_name!r} is not one of {', '.join(schema.subtypes)}")
            if subtype is not None and impression != schema.pneumonia:
                raise ValueError(f"{where}: a subtype ({subtype}) needs the impression {schema.pneumonia}, not {impression}")
            if image in labels:
                raise ValueError(f"{where}: {image} is listed twice")
            labels[image] = (impression, subtype)
    return labels
