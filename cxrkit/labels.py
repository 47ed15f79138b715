"""The label vocabulary, read from `label_config.xml`.

Every finding, subtype and impression name in the project comes from the label
config, so a radiologist-facing rename happens in one file. Importers map each
dataset's own strings onto these names; the generator draws from them.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "label_config.xml"


class LabelConfigError(ValueError):
    """The label config lacks a tag the workbench needs, or is not valid XML."""


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

    def check_finding(self, name: str) -> str:
        if name not in self.findings:
            raise ValueError(f"unknown finding {name!r}; label_config.xml has {list(self.findings)}")
        return name

    def check_subtype(self, name: str | None) -> str | None:
        if name is not None and name not in self.subtypes:
            raise ValueError(f"unknown subtype {name!r}; label_config.xml has {list(self.subtypes)}")
        return name


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

    return LabelSchema(
        image_tag=images[0].get("name"),
        finding_tag=rects[0].get("name"),
        subtype_tag=per_region[0].get("name"),
        impression_tag=whole_image[0].get("name"),
        findings=values(rects[0], "Label"),
        subtypes=values(per_region[0], "Choice"),
        impressions=values(whole_image[0], "Choice"),
    )


@lru_cache(maxsize=4)
def _load(path: str) -> LabelSchema:
    return parse_label_config(Path(path).read_text())


def load_schema(path: str | os.PathLike | None = None) -> LabelSchema:
    """The schema of `path`, else of $CXR_LABEL_CONFIG, else the repo's label_config.xml."""
    chosen = path or os.environ.get("CXR_LABEL_CONFIG") or DEFAULT_CONFIG
    return _load(str(Path(chosen).resolve()))
