"""An image's size from its header, and boxes checked against it (the importers).

Importers decode no pixels: PIL reads a PNG's or JPEG's size from its header, pydicom a
DICOM's from its tags. A box must lie inside its image; one that overhangs by a pixel or less
(rounding in a normalised format) is clipped, one that does more is an error, since it almost
always means the labels were drawn on another resolution of the film.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
from PIL import Image

from cxrkit.core.manifest import Box

TOLERANCE_PX = 1.0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG (header) or a DICOM (Columns, Rows)."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            return image.size
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return int(header.Columns), int(header.Rows)


def checked_boxes(boxes: list[Box], size: tuple[int, int], where: str) -> list[Box]:
    """`boxes` inside the (width, height) frame, clipped by up to TOLERANCE_PX; ValueError otherwise."""
    width, height = size
    out = []
    for box in boxes:
        x0, y0, x1, y1 = box.x, box.y, box.x + box.w, box.y + box.h
        if box.w <= 0 or box.h <= 0:
            raise ValueError(f"{where}: a {box.finding} box of size {box.w}x{box.h}")
        if x0 < -TOLERANCE_PX or y0 < -TOLERANCE_PX or x1 > width + TOLERANCE_PX or y1 > height + TOLERANCE_PX:
            raise ValueError(f"{where} is {width}x{height} but has a {box.finding} box at ({box.x}, {box.y}, "
                             f"{box.w}, {box.h}): were the labels drawn on another size of the film?")
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        out.append(replace(box, x=round(x0, 2), y=round(y0, 2), w=round(x1 - x0, 2), h=round(y1 - y0, 2)))
    return out
