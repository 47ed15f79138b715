"""Manifest record -> Label Studio task data.

One pure function, shared by the importer (client.import_tasks), the ML backend and the tests,
so the fields a task carries are defined once. Only de-identified fields go in: the keyed image
id, the PNG's path under the data folder, and the allow-listed age/sex/view.

    image          URL Label Studio serves the PNG under (local-files serving; see server.py)
    image_id       the record's pseudonym: how we find a task again (re-import, predictions)
    patient_info   the text shown beside the image (`$patient_info` in label_config.xml)
    age, sex, view the same facts as separate columns, for Data Manager filters
    source         the dataset the image came from
    width, height  stored image size in pixels: converts our pixel boxes to Label Studio's percent
    heatmap        URL of the image's heatmap overlay, heatmaps/<image id>.png under the data folder
                   (`$heatmap` in label_config.xml, a collapsed panel beside the film): the select
                   flow writes it for the first tasks of the queue once a model serves; until then
                   the URL finds no file. Every task carries it because Label Studio refuses to
                   import a task that lacks a `$variable` of the config. It never changes, so a
                   new overlay needs no task update.
"""
from __future__ import annotations

import re
from urllib.parse import quote

from cxrkit.core.manifest import Record

LOCAL_FILES_URL = "/data/local-files/?d="
HEATMAP_DIR = "heatmaps"  # the heatmap overlays, under the workspace data folder (flows/select.py writes them)
HEATMAP_FIELD = "heatmap"  # the task data key `$heatmap` of label_config.xml


def image_url(path: str) -> str:
    """The URL of a PNG given by its path relative to the workspace data folder (e.g. images/ab12.png)."""
    return LOCAL_FILES_URL + quote(path, safe="/")


def heatmap_path(image_id: str) -> str:
    """The heatmap overlay's path relative to the workspace data folder: heatmaps/<image id>.png."""
    return f"{HEATMAP_DIR}/{image_id}.png"


def patient_info(metadata: dict) -> str:
    """e.g. "62 y · F · PA"; what is unknown is left out."""
    parts = []
    if metadata.get("age") is not None:
        parts.append(f"{metadata['age']} y")
    for key in ("sex", "view"):
        if metadata.get(key):
            parts.append(str(metadata[key]))
    return " · ".join(parts) or "age, sex and view unknown"


def task_data(rec: Record) -> dict:
    meta = rec.metadata
    return {
        "image": image_url(rec.path),
        "image_id": rec.image_id,
        "patient_info": patient_info(meta),
        "age": meta.get("age"),
        "sex": meta.get("sex"),
        "view": meta.get("view"),
        "source": rec.source,
        "width": rec.width,
        "height": rec.height,
        HEATMAP_FIELD: image_url(heatmap_path(rec.image_id)),
    }


# --- reading tasks back (the API's task JSON) --------------------------------

def submitted_annotations(task: dict) -> int:
    """The task's submitted (not skipped) annotations."""
    return int(task.get("total_annotations") or 0) - int(task.get("cancelled_annotations") or 0)


def is_annotated(task: dict) -> bool:
    """A task with a submitted (not skipped) annotation is labeled, even before the next retrain exports it."""
    return submitted_annotations(task) > 0


# --- publications of the queue (cxrkit.labelstudio.publish) -------------------

COLD_START = "cold-start"  # the model version of a queue published before any model: empty results
_PUBLICATION = re.compile(r"^(?P<version>.+)@[0-9a-f]{8}$")


def publication_label(model_version: str, digest: str) -> str:
    """The model_version label of one publication of the queue: `<model version>@<8 hex digits>`."""
    return f"{model_version}@{digest[:8]}"


def is_publication(label: str | None) -> bool:
    return bool(label) and _PUBLICATION.match(label) is not None


def model_version_of(label: str | None) -> str | None:
    """The model version a prediction's label names: a publication's label without its `@digest`."""
    if not label:
        return label
    found = _PUBLICATION.match(label)
    return found["version"] if found else label


def has_prediction(task: dict, model_version: str | None) -> bool:
    """Whether the task (listed with its predictions) carries one of `model_version`, under its own
    label or a publication's (None: never)."""
    return model_version is not None and any(
        isinstance(p, dict) and model_version_of(p.get("model_version")) == model_version
        for p in task.get("predictions") or [])
