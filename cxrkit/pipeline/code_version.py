"""Stage `code_version`: what code each stage of the pipeline runs, as a file DVC can compare.

    python -m cxrkit.pipeline.code_version --out pipeline/code_version

A model is made of data, knobs and code. DVC sees the first two (`deps: data`, `params:`); this
stage shows it the third. It runs on every `dvc repro` (always_changed in dvc.yaml) and writes
one file per stage, `<stage>.txt`, listing the sha256 of

- every cxrkit module the stage runs: its own module and, transitively, every cxrkit module
  those import (found by reading their import statements, so nothing is imported here);
- requirements.lock, the locked third-party versions (torch, ultralytics, ...); without a lock
  file (an install without the checkout), the installed versions of what the modules import;
- the label config in effect (cxrkit.core.labels): its names are the classes the models learn.

The training stages depend on their file, and a file changes only when one of those does: a
fix in cxrkit/models/classifier.py retrains the classifier and leaves the detector as it is,
while a change to the CLI retrains nothing. The retrain flow puts the fingerprint of all the
files (`code_version()`) into the model version id (cxrkit.models.registry.make_version_id), so
a model trained by new code is a new version, not one "already registered".
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import sys
import time
from pathlib import Path

import cxrkit
from cxrkit.core.atomic import write_atomic
from cxrkit.core.hashing import file_sha256
from cxrkit.core.imports import import_statements
from cxrkit.core.labels import config_path
from cxrkit.pipeline import STAGES, record_timing

PACKAGE = "cxrkit"
PACKAGE_DIR = Path(cxrkit.__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent  # the checkout (or site-packages): where `cxrkit/...` paths start
LOCK_FILE = SOURCE_ROOT / "requirements.lock"
# The stages whose code is fingerprinted: every stage of dvc.yaml but this one.
FINGERPRINTED = tuple(s for s in STAGES if s != "code_version")


def _module_file(name: str) -> Path | None:
    """cxrkit.models.detector -> .../cxrkit/models/detector.py (or a package's __init__.py)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SOURCE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module (`from cxrkit.core.labels import load_schema`)


def stage_modules(stage: str) -> tuple[dict[str, Path], set[str]]:
    """The cxrkit modules stage `stage` runs (name -> file), and the top-level names of the other
    packages they import."""
    found: dict[str, Path] = {}
    others: set[str] = set()
    todo = [f"{PACKAGE}.pipeline.{stage}"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)))  # importing a.b.c runs a and a.b
        for target, names in import_statements(path, name):
            if target.split(".")[0] == PACKAGE:
                todo.append(target)
                todo.extend(f"{target}.{n}" for n in names)  # `from a.b import c`: c may be a module
            elif target:
                others.add(target.split(".")[0])
    return found, others


def _environment_lines(others: set[str]) -> list[str]:
    if LOCK_FILE.is_file():
        return [f"{file_sha256(LOCK_FILE)}  {LOCK_FILE.name}"]
    distributions = importlib.metadata.packages_distributions()
    versions = sorted({f"{dist}=={importlib.metadata.version(dist)}"
                       for top in others for dist in distributions.get(top, [])})
    digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()
    return [f"{digest}  installed: {' '.join(versions)}"]


def stage_fingerprint(stage: str) -> str:
    """The text of `<stage>.txt`: one `<sha256>  <file>` line per input, sorted by file."""
    modules, others = stage_modules(stage)
    files = sorted(path.relative_to(SOURCE_ROOT).as_posix() for path in modules.values())
    label_config = config_path()
    lines = ([f"{file_sha256(SOURCE_ROOT / name)}  {name}" for name in files] + _environment_lines(others)
             + [f"{file_sha256(label_config)}  {label_config.name}"])
    return f"# the code stage {stage} runs (cxrkit/pipeline/code_version.py)\n" + "\n".join(lines) + "\n"


def code_version() -> str:
    """The fingerprint of the whole pipeline's code: sha256 of every stage's file."""
    digest = hashlib.sha256()
    for stage in FINGERPRINTED:
        digest.update(stage_fingerprint(stage).encode())
    return digest.hexdigest()


def run(out: str | Path) -> dict[str, str]:
    """Write `<stage>.txt` for every stage (only when its text changed); returns stage -> text."""
    out = Path(out)
    texts = {stage: stage_fingerprint(stage) for stage in FINGERPRINTED}
    for stage, text in texts.items():
        path = out / f"{stage}.txt"
        if not path.is_file() or path.read_text() != text:
            write_atomic(path, text)
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrkit.pipeline.code_version", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder of the <stage>.txt files (pipeline/code_version)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run(args.out)
    record_timing("code_version", time.perf_counter() - start)


if __name__ == "__main__":
    main(sys.argv[1:])
