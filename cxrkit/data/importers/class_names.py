"""Class names that users' label files carry -> the label config's findings (COCO, YOLO, VOC).

A name matches a finding when both read the same ignoring case, spaces, `_` and `-`
("lung_opacity" is "Lung Opacity", "PLEURAL-EFFUSION" is "Pleural Effusion"); a few names that
detection sets use for the pneumonia box ("opacity", "pneumonia") mean the config's opacity
finding. Anything else is an error that names the file, the class and the findings the config
has: a box under a wrong name would teach the detector the wrong thing, so nothing guesses.
"""
from __future__ import annotations

import re

from cxrkit.core.labels import LabelSchema

# Names for the pneumonia box (RSNA's "Lung Opacity" is matched by the rule above).
OPACITY_ALIASES = ("opacity", "pneumonia")


class UnknownClassName(ValueError):
    """A class name of the user's file that is no finding of the label config."""


def key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


def finding_table(names: list[str], schema: LabelSchema, where: str) -> dict[str, str]:
    """Each class name of `where` (a file) -> its finding; UnknownClassName for the first that has none."""
    by_key = {key(f): f for f in schema.findings} | {key(a): schema.opacity for a in OPACITY_ALIASES}
    table = {}
    for name in names:
        finding = by_key.get(key(name))
        if finding is None:
            raise UnknownClassName(f"{where}: class {name!r} is not a finding of the label config "
                                   f"({', '.join(schema.findings)}); rename it in the file, or add it to "
                                   "label_config.xml")
        table[name] = finding
    return table
