"""Importers: one module per public dataset layout or label format users bring, each a
`load(root) -> list[SourceImage]`.

Adding a dataset or a format is adding a module here and a line in IMPORTERS.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from cxrkit.data.sources import SourceImage

# name -> "module:function"; imported lazily so one dataset's parser never slows another's.
IMPORTERS: dict[str, str] = {
    "synthetic": "cxrkit.data.importers.synthetic:load_synthetic",
    "rsna": "cxrkit.data.importers.rsna:load_rsna",
    "nih": "cxrkit.data.importers.nih:load_nih",
    "vinbig": "cxrkit.data.importers.vinbig:load_vinbig",
    "covid-radiography": "cxrkit.data.importers.folders:load_covid_radiography",
    "kermany": "cxrkit.data.importers.folders:load_kermany",
    # Label formats: boxes from other tools, image-level labels for a folder of films.
    "coco": "cxrkit.data.importers.coco:load_coco",
    "yolo": "cxrkit.data.importers.yolo:load_yolo",
    "voc": "cxrkit.data.importers.voc:load_voc",
    "csv": "cxrkit.data.importers.csv_labels:load_csv_labels",
}


def get_importer(name: str) -> Callable[[Path], list[SourceImage]]:
    try:
        module_name, func = IMPORTERS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(IMPORTERS)}") from None
    return getattr(importlib.import_module(module_name), func)
