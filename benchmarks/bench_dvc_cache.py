"""DVC's cache link type: disk used and `dvc add data` time, copies against hard links.

    .venv/bin/python benchmarks/bench_dvc_cache.py [--n 2000] [--size 512] [--new 200]

For each cache type (`copy`, DVC's default on a file system without reflinks such as ext4, and
`hardlink,copy`, which the workspace sets: cxrkit/pipeline/project_repo.py), a fresh workspace
gets `--n` PNGs of `--size` px (noise, which PNG cannot shrink, so each weighs about size^2
bytes, like a film) and a manifest, made a git + DVC repository, and `dvc add data` runs: the
first round. Then `--new` images are added and `dvc add data` runs again: a later round. The
disk used by the workspace and its cache is measured with one `du` over both (a hard-linked file
counts once). Run it alone on a quiet machine.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

from cxrkit.pipeline import project_repo  # noqa: E402


def write_images(folder: Path, start: int, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        cv2.imwrite(str(folder / f"img{i:06d}.png"), rng.integers(0, 255, (size, size), dtype=np.uint8))
    with open(folder.parent / "manifest.jsonl", "a") as out:
        out.writelines(f'{{"image_id": "img{i:06d}"}}\n' for i in range(start, start + count))


def disk_mb(root: Path) -> float:
    out = subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def measure(root: Path, cache_type: str, n: int, size: int, new: int) -> dict:
    ws = root / cache_type.replace(",", "-")
    write_images(ws / "data" / "images", 0, n, size)
    images_mb = disk_mb(ws / "data")
    project_repo.init(ws, remote=str(root / f"remote-{ws.name}"))
    project_repo.dvc(ws, "config", "cache.type", cache_type)  # init sets hardlink,copy; copy is DVC's default
    start = time.perf_counter()
    project_repo.dvc(ws, "add", "--quiet", "data")
    first = time.perf_counter() - start
    after_first = disk_mb(ws)
    write_images(ws / "data" / "images", n, new, size)
    start = time.perf_counter()
    project_repo.dvc(ws, "add", "--quiet", "data")
    second = time.perf_counter() - start
    links = (ws / "data" / "images" / "img000000.png").stat().st_nlink
    return {"type": cache_type, "images_mb": images_mb, "first_add_s": first, "disk_mb": after_first,
            "later_add_s": second, "disk_after_mb": disk_mb(ws), "links": links}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--new", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dvc-cache-"))
    try:
        rows = [measure(root, t, args.n, args.size, args.new) for t in ("copy", project_repo.CACHE_TYPE)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.n} + {args.new} PNGs of {args.size} px; {platform.platform()}; {time.strftime('%Y-%m-%d')}")
    print("| cache.type | images (MB) | first `dvc add` (s) | workspace + cache (MB) | later `dvc add` (s) "
          "| after it (MB) | links per image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['images_mb']:.0f} | {r['first_add_s']:.1f} | {r['disk_mb']:.0f} | "
              f"{r['later_add_s']:.1f} | {r['disk_after_mb']:.0f} | {r['links']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
