"""The label vocabulary, read from `label_config.xml`.

Every finding, subtype and impression name in the project comes from the label
config, so a radiologist-facing rename happens in one file. Importers map each
dataset's own strings onto these names; the generator draws from them.

Names the code must tell apart are found by position, never by spelling:
  - `opacity`: the first RectangleLabels value, the pneumonia finding;
  - the image-level impression Choices are exactly three, in this order:
    `normal`, `pneumonia`, `other_abnormality`.
Other names have no role: importers' mapping tables name them, and
`check_table` refuses a table whose target the config lacks.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cxrkit.core.checkout import CODE_ROOT

DEFAULT_CONFIG = CODE_ROOT / "label_config.xml"
IMPRESSION_ROLES = ("normal", "pneumonia", "other abnormality")  # the impression Choices, in order


class LabelConfigError(ValueError):
    """The label config is not valid XML, or lacks a tag, an impression or a name the workbench needs."""


@dataclass(frozen=True)
class LabelSchema:
    image_tag: str  # <Image name=...>
    finding_tag: str  # <RectangleLabels name=...>
    subtype_tag: str  # per-region <Choices name=...>
    impression_tag: str  # image-level <Choices name=...>
    findings: tuple[str, ...]
    subtypes: tuple[str, ...]
    impressions: tuple[str, ...]

    @property
    def opacity(self) -> str:
        """The pneumonia finding: the first RectangleLabels value."""
        return self.findings[0]

    @property
    def normal(self) -> str:
        """The no-finding impression: the first impression Choice."""
        return self.impressions[0]

    @property
    def pneumonia(self) -> str:
        """The pneumonia impression: the second impression Choice."""
        return self.impressions[1]

    @property
    def other_abnormality(self) -> str:
        """The impression of a film with findings but no pneumonia: the third impression Choice."""
        return self.impressions[2]

    def check_finding(self, name: str) -> str:
        if name not in self.findings:
            raise ValueError(f"unknown finding {name!r}; label_config.xml has {list(self.findings)}")
        return name

    def check_subtype(self, name: str | None) -> str | None:
        if name is not None and name not in self.subtypes:
            raise ValueError(f"unknown subtype {name!r}; label_config.xml has {list(self.subtypes)}")
        return name

    def check_table(self, table: str, findings: Iterable[str | None] = (),
                    subtypes: Iterable[str | None] = ()) -> None:
        """Every target name of a dataset-to-vocabulary mapping table (None: no target) is in the config.

        Importers call it before reading any image, so a rename in label_config.xml
        fails at once, naming the table and the missing name.
        """
        try:
            for name in findings:
                if name is not None:
                    self.check_finding(name)
            for name in subtypes:
                self.check_subtype(name)
        except ValueError as exc:
            raise LabelConfigError(f"{table} maps onto a name the label config lacks: {exc}; "
                                   "rename the target in the table or add the name to the config") from None


def parse_label_config(xml_text: str) -> LabelSchema:
    """Find the image, box, per-region subtype and impression tags in a config."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from exc

    images = [el for el in root.iter("Image")]
    rects = [el for el in root.iter("RectangleLabels")]
    choices = [el for el in root.iter("Choices")]
    per_region = [el for el in choices if el.get("perRegion", "").lower() == "true"]
    whole_image = [el for el in choices if el.get("perRegion", "").lower() != "true"]
    missing = [
        what
        for what, found in (
            ("<Image>", images),
            ("<RectangleLabels>", rects),
            ('<Choices perRegion="true"> (subtype)', per_region),
            ("image-level <Choices> (impression)", whole_image),
        )
        if not found
    ]
    if missing:
        raise LabelConfigError("label config lacks " + ", ".join(missing))

    def values(el: ET.Element, child: str) -> tuple[str, ...]:
        return tuple(c.get("value") for c in el.iter(child) if c.get("value"))

    impressions = values(whole_image[0], "Choice")
    if len(impressions) != len(IMPRESSION_ROLES):
        raise LabelConfigError(
            f"the impression <Choices name={whole_image[0].get('name')!r}> has {len(impressions)} choices "
            f"{list(impressions)}; the workbench needs exactly {len(IMPRESSION_ROLES)}, read by position: "
            + ", ".join(IMPRESSION_ROLES))
    return LabelSchema(
        image_tag=images[0].get("name"),
        finding_tag=rects[0].get("name"),
        subtype_tag=per_region[0].get("name"),
        impression_tag=whole_image[0].get("name"),
        findings=values(rects[0], "Label"),
        subtypes=values(per_region[0], "Choice"),
        impressions=impressions,
    )


@lru_cache(maxsize=4)
def _load(path: str) -> LabelSchema:
    return parse_label_config(Path(path).read_text())


def config_path(path: str | os.PathLike | None = None) -> Path:
    """The label config in effect: `path`, else $CXR_LABEL_CONFIG, else the repo's label_config.xml."""
    return Path(path or os.environ.get("CXR_LABEL_CONFIG") or DEFAULT_CONFIG).resolve()


def load_schema(path: str | os.PathLike | None = None) -> LabelSchema:
    """The schema of config_path(path)."""
    return _load(str(config_path(path)))
