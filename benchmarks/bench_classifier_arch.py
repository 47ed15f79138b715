"""Subtype classifier architectures on one synthetic study: seconds per epoch and AUROC.

    python benchmarks/bench_classifier_arch.py [--n 160] [--size 96] [--epochs 4] [--archs resnet18 ...]

Data: a synthetic study (256 px, 85 % pneumonia, difficulty 0.1) ingested into a temporary
workspace; train/val/test are the generator's patient-level splits. Each architecture is
trained from scratch with the same `classifier:` params (arch, input size and epochs
overridden) on whatever device is there. Printed per arch: parameters, median seconds per
epoch, best validation macro AUROC, and test macro AUROC (whole images, crops, all).
CPU timings are sensitive to other load on the machine: the CPU load average is printed.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import torch  # noqa: E402

from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.models.classifier import (  # noqa: E402
    ARCHS,
    evaluate_classifier,
    load_classifier,
    train_classifier,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--size", type=int, default=96, help="classifier input size")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--data", type=Path, help="reuse this folder for the study and workspace")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = args.data or Path(tempfile.mkdtemp(prefix="cxr-bench-clf-"))
    ws = Workspace(root / "ws")
    if not ws.manifest_path.exists():
        generate_study(root / "study", args.n, seed=0, size=256, positive_fraction=0.85, difficulty=0.1, workers=1)
        os.environ.setdefault("CXR_DEID_SALT", "bench-salt-0123456789abcdef")
        ingest(load_synthetic(root / "study"), ws, IngestOptions(workers=1))
    records = read_manifest(ws.manifest_path)
    split = {s: [r for r in records if r.split == s] for s in ("train", "val", "test")}
    base = load_params()["classifier"]

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device}; n {len(records)} (train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])}); input {args.size} px; {args.epochs} epochs")
    rows = []
    for arch in args.archs:
        params = base | {"arch": arch, "input_size": args.size, "epochs": args.epochs, "patience": 0}
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        ckpt = train_classifier(split["train"], ws.data_dir, root / f"out-{arch}", params, split["val"])
        total = time.perf_counter() - t0
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        model = load_classifier(ckpt)
        test = evaluate_classifier(model, split["test"], ws.data_dir, params)
        rows.append((
            arch,
            sum(p.numel() for p in model.parameters()) / 1e6,
            statistics.median(h["seconds"] for h in saved["history"][1:] or saved["history"]),
            total,
            max(h["val_macro_auroc"] for h in saved["history"]),
            test["image"]["macro_auroc"], test["crop"]["macro_auroc"], test["all"]["macro_auroc"],
            (load0 + os.getloadavg()[0]) / 2,
        ))
        print(f"  {arch} done in {total:.0f} s", flush=True)

    head = ("arch", "params M", "s/epoch", "total s", "val AUROC", "test img", "test crop", "test all", "load avg")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} | {r[8]:.1f} |")


if __name__ == "__main__":
    main()
