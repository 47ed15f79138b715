"""Active-learning benchmark: the workbench's strategies against random sampling, with and without
self-training, on the synthetic generator's published population (issue 16's settings).

    .venv/bin/python benchmarks/bench_active_learning.py [--run NAME] [--first-repeat 0] [--count 5]
        [--processes 2] [--threads T] [--work DIR] [--merge-only]

Run it alone on a quiet machine: a few hours on 2 CPU cores (nothing else training or testing).

Runs the recorded settings of BENCHMARKS.md with `cxr al-benchmark` (cxrkit/selection/al_benchmark.py has
the method) in a scratch folder: generates and ingests the synthetic study once (seed 0: the same
films on every machine and in every session, and, under a salt fixed by the seed, the same image ids,
so a sitting in a new scratch folder continues a run; the runs recorded before 2026-12-07 ingested
under random salts, so each of their ingests was gone with its folder), runs repeats first-repeat ..
first-repeat + count - 1 in `--processes` processes side by side (one torch thread each: on 2 cores that
beats one process with 2 threads for models this small) and keeps each process's rows.csv and result.json under
benchmarks/results/active_learning_population/parts/repeats-<first>-<last>/. Then it merges every
part there (each repeat and arm once) into table.txt, summary.csv, rows.csv, result.json and
learning_curve.png beside them and prints the table. So the five repeats can run in several
sittings (e.g. `--first-repeat 0 --count 2`, then `--first-repeat 2 --count 3`); result.json says
how many repeats the merged figures rest on. `--merge-only` merges the parts already there.

`--run likely-positive` runs the same study and training for random, hybrid and likely_positive (the
films most likely to show an opacity first, spread out; no self-training), into
benchmarks/results/active_learning_likely_positive/: the three arms in one sitting, paired on the
same code. `--run random-seed` runs the same three arms with every arm's seed drawn at random
(no typiclust cold start), into benchmarks/results/active_learning_random_seed/: the selection
alone, from the seed random order has. `--run larger-budget` runs random against hybrid from a random
seed over 300 labels (7 rounds of 40) into benchmarks/results/active_learning_larger_budget/;
`--run larger-budget-st` then adds random with self-training to the same repeats there (its parts
named random-st-repeats-*), and the merge reads hybrid against both baselines. `--run longer-finetune`
runs that budget's random and hybrid again with 20 fine-tuning epochs a round instead of 10, into
benchmarks/results/active_learning_longer_finetune/. `--run larger-budget-detector` adds
detector_uncertainty (hybrid's selection on the detector's doubt alone) to the larger budget's
repeats there (parts named detector-uncertainty-repeats-*); `--run larger-budget-hybrid-st` adds
hybrid with self-training (parts hybrid-st-repeats-*). `--run pneumonia-side` runs random against
hybrid with self-training's Pneumonia side alone (no Normal pseudo-labels) over the same repeats, into
benchmarks/results/active_learning_pneumonia_side/; `--run normal-half` the same with at most half a
Normal pseudo-label per labeled film, into benchmarks/results/active_learning_normal_half/.
`--run coreset` runs random against coreset (greedy k-center alone) over that budget, into
benchmarks/results/active_learning_coreset/. `--run pretrained` runs random and hybrid over that budget
with the detector pretrained on the pool's films without labels (`--pretrain-epochs 20`; arms
random+pt and hybrid+pt), into benchmarks/results/active_learning_pretrained/, and merges the core-set
run's parts beside them (their random arm is the plain baseline on the same ingest; run it with
`--work` holding that run's synthetic/: the merge refuses parts of another ingest). `--run pretrained-hybrid`
adds plain hybrid (no pretraining) to the same repeats there (parts hybrid-repeats-*), with the same `--work`;
`--run pretrained-hybrid-st` adds hybrid with self-training and pretraining (arm hybrid+st+pt, parts
hybrid-st-repeats-*), its random + pretraining arm run again and checked against the first run's;
`--run pretrained-hybrid-random` adds hybrid_random with pretraining (half of each batch hybrid's, half
random: arm hybrid_random+pt, parts hybrid-random-repeats-*), its random + pretraining arm checked the same way.
`--run hybrid-random-wide` runs random, hybrid and hybrid_random, all with pretraining, with hybrid_random's
half choosing among as many candidates as hybrid's whole batch (candidates_factor 8), on a new ingest of the
same study, into benchmarks/results/active_learning_hybrid_random_wide/. `--run from-scratch` runs random and
hybrid with pretraining under the retrain flow's rule instead of a warm start: every round's detector trains
afresh from the pretrained weights (20 epochs a round, the seed's too), on a new ingest, into
benchmarks/results/active_learning_from_scratch/; `--run from-scratch-warm-random`, with the same `--work`, runs
random + pretraining warm-started as above on that ingest, into its warm_random/ folder; `--run from-scratch-40`,
with the same `--work`, runs random and hybrid afresh again with 40 epochs a round, into its epochs_40/ folder;
`--run from-scratch-40-st`, with the same `--work`, random with self-training under that rule (arms random+pt and
random+st+pt), into its epochs_40_st/ folder. `--run afresh-40` and `--run afresh-40-st` run those two again,
repeat for repeat, on the study's seed-salted ingest (the one any scratch folder gets), into one folder,
benchmarks/results/active_learning_afresh_40/: all three arms on one ingest over five repeats, in sittings;
`--run afresh-40-hybrid-st` adds hybrid with self-training under that rule (arms random+pt and hybrid+st+pt) on
the same ingest, into its hybrid_st/ folder, read against the three with bench_read_together.py.
`--run operating-point`, with the same `--work`, runs the pretrained run's random and hybrid (both with pretraining,
warm-started) on that ingest, counting the RSNA metric also at the threshold each detector's validation images
choose, into benchmarks/results/active_learning_operating_point/.

`--run radiologist-time` runs issue 17's measurement instead, into
benchmarks/results/radiologist_time/: the same study and training, random against hybrid only (no
self-training), with `--effort`: each batch's edits over the previous round's pre-annotations (the
workbench's display) and from scratch, turned into radiologist time by the stated effort model
(cxrkit.evaluation.effort.EffortModel).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The run issue 16 asks for (BENCHMARKS.md, "Active learning on the published population"): 2,200
# synthetic images at 256 px with the published population (about 1,540 pool, 330 fixed validation,
# 330 fixed test images, split by patient), 20 seed labels (random for random order, typiclust's cold
# start for the others), 6 rounds of 20, 5 repeats with paired seed sets; random, uncertainty, hybrid
# and class_balanced, each also with self-training (+st). The seed detector (yolo11n, 128 px) trains 40
# epochs from scratch; each round fine-tunes the previous round's detector for 10 epochs; the
# classifier (resnet18, 64 px, 6 epochs) trains from scratch every round.
STUDY = {"n": 2200, "size": 256, "seed": 0}
REPEATS = 5
ARGS = ["--seed-size", "20", "--rounds", "6", "--batch", "20", "--detector-epochs", "40", "--detector-imgsz", "128",
        "--warm-start", "--finetune-epochs", "10", "--classifier-epochs", "6", "--classifier-size", "64",
        "--strategies", "random,uncertainty,hybrid,class_balanced", "--cold-start", "typiclust", "--semi-supervised"]
TIME_ARGS = [*ARGS[:ARGS.index("--strategies")], "--strategies", "hybrid", "--cold-start", "typiclust", "--effort"]
LIKELY_POSITIVE_ARGS = [*ARGS[:ARGS.index("--strategies")], "--strategies", "hybrid,likely_positive", "--cold-start",
                        "typiclust"]


def with_values(args: list[str], **values: str) -> list[str]:
    """A copy of args with the value after each given option replaced (rounds="7" sets --rounds 7)."""
    out = list(args)
    for name, value in values.items():
        out[out.index("--" + name.replace("_", "-")) + 1] = value
    return out


RANDOM_SEED_ARGS = with_values(LIKELY_POSITIVE_ARGS, cold_start="random")
# A team labels more than 140 films: 20 random seed labels, then 7 rounds of 40 (300 labels, a fifth of
# the pool), random against the default strategy, to see whether the savings grow once random's curve
# flattens. Batches of 40 keep it to one sitting of two processes (about 45 minutes).
LARGER_BUDGET_ARGS = with_values(RANDOM_SEED_ARGS, rounds="7", batch="40", strategies="hybrid")
# The honest baseline of that budget, run afterwards into the same folder: random and random +
# self-training (the recorded rule, precision target 0.8). Its random arm repeats the first run's
# to the last digit on the same ingest and thread count; the merge checks that and keeps it once.
LARGER_BUDGET_ST_ARGS = [*with_values(LARGER_BUDGET_ARGS, strategies="random"), "--semi-supervised"]
# The same budget with twice the training per round (20 fine-tuning epochs, not 10): at 140 labels random
# reached mAP@0.5 0.55 in 6 rounds of 20 and 0.41 in 3 rounds of 40 (as many random labels, fewer
# fine-tuning passes), so the detector looked short of training, not only of labels; this run
# measures whether a detector that learns more from each film changes the savings, random against
# hybrid on the same seed sets (it raises both curves and leaves the savings where they were:
# BENCHMARKS.md "Twice the training per round").
LONGER_FINETUNE_ARGS = with_values(LARGER_BUDGET_ARGS, finetune_epochs="20")
# That budget's random and detector_uncertainty (hybrid on the detector's doubt alone), run into the
# larger budget's folder beside hybrid and random + self-training on the same seed sets: whether the
# detector's own doubt picks films worth more than the combined uncertainty's (the merge checks that
# its random arm equals the first run's, as for the self-training run).
DETECTOR_UNCERTAINTY_ARGS = with_values(LARGER_BUDGET_ARGS, strategies="detector_uncertainty")
# That budget's hybrid with self-training (the recorded rule, as random + self-training ran it), run into
# the larger budget's folder: hybrid + self-training against random + self-training is the honest
# baseline's paired comparison (Lüth et al.), and against random whether the two levers add up. Its
# random arm is run again and checked against the first run's, as above.
LARGER_BUDGET_HYBRID_ST_ARGS = with_values(LARGER_BUDGET_ARGS, strategies="hybrid+st")
# Hybrid with self-training's Pneumonia side alone (no Normal pseudo-labels: --st-normal-ratio 0), which
# of the two sides cost hybrid's mAP@0.5 and which raised its RSNA metric. Its own folder: its arm has
# the name of the recorded rule's (hybrid+st) and other settings; its random arm equals the larger budget's.
PNEUMONIA_SIDE_ARGS = [*LARGER_BUDGET_HYBRID_ST_ARGS, "--st-normal-ratio", "0"]
# Between the two sides: at most half a Normal pseudo-label per labeled film (--st-normal-ratio 0.5), whether
# a capped Normal side keeps some of the RSNA gain both sides bought and less of the mAP@0.5 they cost.
# Its own folder for the same reason; its random arm equals the larger budget's.
NORMAL_HALF_ARGS = [*LARGER_BUDGET_HYBRID_ST_ARGS, "--st-normal-ratio", "0.5"]
# Core-set alone (greedy k-center on the classifier's embeddings, no uncertainty) over the same budget:
# whether spreading the batch over the pool, which hybrid does among its most uncertain candidates,
# saves labels without the uncertainty. Its own folder, beside its own random arm: the larger budget's
# ingest is gone (a new ingest salts other file names, and ultralytics orders batches by name), so
# its random arm is the paired baseline.
CORESET_ARGS = with_values(LARGER_BUDGET_ARGS, strategies="coreset")
# The same budget with the detector pretrained on the pool's films before any label (masked image modelling,
# 20 epochs, cxrkit.models.detector_pretrain): random + pretraining and hybrid + pretraining ("+pt"), whether
# a detector that has seen the unlabeled films learns more from each labeled one (at 20 and 100 random labels
# a probe on this ingest gave mAP@0.5 0.26 and 0.46 against 0.12 and 0.37 from scratch). Its own folder on
# the core-set run's ingest (its synthetic/ linked into the work folder), so that run's random arm is the
# plain baseline on the same films and training order.
PRETRAINED_ARGS = [*LARGER_BUDGET_ARGS, "--pretrain-epochs", "20"]
# Both levers on the unlabeled pool at once: hybrid with self-training (the recorded rule) and its seed detector
# pretrained, into the pretrained run's folder on the same ingest (its random + pretraining arm is run again
# and checked against that run's): whether self-training's Normal pseudo-labels, which raised hybrid's RSNA
# metric from scratch, add to what pretraining gave.
PRETRAINED_HYBRID_ST_ARGS = [*LARGER_BUDGET_HYBRID_ST_ARGS, "--pretrain-epochs", "20"]
# Half of each batch hybrid's, half drawn at random (hybrid_random, random_share 0.5), with pretraining, into the
# pretrained run's folder on the same ingest: hybrid's boxed films are the plainer ones and teach the detector less
# each, and the faint opacities and the negatives that random finds are what no model signal ranks high
# (BENCHMARKS.md "What the detector learns from the chosen films"); whether keeping the pool's spread in half of
# each batch keeps hybrid's extra positives and what random's films teach. Its random + pretraining arm runs again
# and is checked against that run's.
PRETRAINED_HYBRID_RANDOM_ARGS = with_values(PRETRAINED_ARGS, strategies="hybrid_random")
# hybrid_random's hybrid half drew its candidates from 4 x its own 20 films, and took films as plain as hybrid's
# (BENCHMARKS.md "Half of each batch at random"); with candidates_factor 8 the half chooses among as many as hybrid's
# batch of 40 does (160), to see whether a half less plain, beside random's, teaches the warm-started detector more
# (measured: the half stayed as plain, BENCHMARKS.md "From hybrid's candidates"). Hybrid + pretraining runs beside
# it, paired: the earlier runs' ingest is gone (a new ingest salts other file names), so this run has its own.
HYBRID_RANDOM_WIDE_ARGS = [*with_values(PRETRAINED_ARGS, strategies="hybrid,hybrid_random"),
                           "--strategy-setting", "hybrid_random.candidates_factor=8"]
# Every run above fine-tunes the previous round's detector (warm start); the retrain flow does not: each of its
# model versions trains afresh from params.yaml's weights, here the pretrained ones. Random and hybrid, both with
# pretraining, under that rule: every round's detector trains from the pretrained weights on the round's labels
# alone, so a point on the curve is a function of its labeled set, not of the path of models before it (warm-started
# networks can generalise worse, Ash & Adams, NeurIPS 2020). 20 epochs a round, seed included, instead of the seed's
# 40 and the rounds' 10: 40 afresh every round would not fit a sitting on 2 cores. Its own ingest, as above.
FROM_SCRATCH_ARGS = [("--from-scratch" if a == "--warm-start" else a)
                     for a in with_values(PRETRAINED_ARGS, detector_epochs="20")]
# The same ingest's random + pretraining under the warm start of the runs above (its seed 40 epochs, rounds 10), in
# a folder of its own (the merge refuses parts of other settings): the from-scratch arms read against the best
# random measured, not only against random under their own rule.
FROM_SCRATCH_WARM_RANDOM_ARGS = with_values(PRETRAINED_ARGS, strategies="random")
# The retrain flow's rule with the seed's full training every round: 40 epochs from the pretrained weights, as the
# warm-started runs give their seed. At 20 a round random fell far below random warm-started (BENCHMARKS.md "Every
# round's detector trained afresh"), a weak yardstick; whether it still does at 40, and what hybrid saves against
# it. Twice that run's time (about 60 minutes a repeat and process), so run in sittings of a few repeats
# (`--first-repeat`, `--count`), on its ingest, into a folder of its own.
FROM_SCRATCH_40_ARGS = with_values(FROM_SCRATCH_ARGS, detector_epochs="40")
# The honest baseline under that rule (Lüth et al.): random + pretraining with self-training (the recorded rule,
# precision target 0.8), every round's detector trained afresh at 40 epochs on the labels and the round's
# pseudo-labels. A folder of its own, so that a sitting of fewer repeats than epochs_40/'s five is read against
# it with bench_read_together.py --repeats; its random + pretraining arm runs again and must equal epochs_40/'s
# on the same repeats and thread count. About 95 minutes a repeat and process (self-training doubles an arm's
# training; 5,748 s for repeats 0-1).
FROM_SCRATCH_40_ST_ARGS = with_values(FROM_SCRATCH_40_ARGS, strategies="random+st")
# Both levers on the unlabeled pool under that rule: hybrid + pretraining with self-training (the recorded rule),
# every round's detector afresh at 40 epochs on the labels and the round's pseudo-labels. Afresh, self-training
# lowered random's mAP@0.5 in three repeats of five and its RSNA metric in four, and raised its subtype classifier
# in all five (BENCHMARKS.md "The afresh runs again"); whether it does the same to hybrid, whose batches hold more
# films with a box, or adds to the RSNA metric, where hybrid falls furthest short of half of random's labels.
# A folder of its own (merged alone, read
# against afresh-40's arms with bench_read_together.py); its random + pretraining arm runs again and must equal
# afresh-40's on the same repeats (one torch thread a process). About 100 minutes a repeat and process.
AFRESH_40_HYBRID_ST_ARGS = with_values(FROM_SCRATCH_40_ARGS, strategies="hybrid+st")
# The RSNA metric at a threshold each detector's validation images choose (rsna_operating, beside the fixed
# detector.rsna_conf 0.1 of every run above): on the final models of the from-scratch runs hybrid's scored
# 0.04-0.10 higher at the threshold its validation images chose (0.2-0.3), random's within 0.05 of its score
# at 0.1: the fixed threshold counted hybrid's boxes between 0.1 and its own threshold as guesses, mostly
# wrong. The pretrained run's arms (random and hybrid, both with pretraining, warm-started) again with both
# metrics, on the from-scratch runs' ingest, into a folder of its own.
OPERATING_POINT_ARGS = PRETRAINED_ARGS
# name -> (arguments, results folder, prefix of its parts' folders: two runs sharing a folder each keep theirs)
RESULTS = ROOT / "benchmarks" / "results"
RUNS = {"population": (ARGS, RESULTS / "active_learning_population", ""),
        "radiologist-time": (TIME_ARGS, RESULTS / "radiologist_time", ""),
        "likely-positive": (LIKELY_POSITIVE_ARGS, RESULTS / "active_learning_likely_positive", ""),
        "random-seed": (RANDOM_SEED_ARGS, RESULTS / "active_learning_random_seed", ""),
        "larger-budget": (LARGER_BUDGET_ARGS, RESULTS / "active_learning_larger_budget", ""),
        "larger-budget-st": (LARGER_BUDGET_ST_ARGS, RESULTS / "active_learning_larger_budget", "random-st-"),
        "longer-finetune": (LONGER_FINETUNE_ARGS, RESULTS / "active_learning_longer_finetune", ""),
        "larger-budget-detector": (DETECTOR_UNCERTAINTY_ARGS, RESULTS / "active_learning_larger_budget",
                                   "detector-uncertainty-"),
        "larger-budget-hybrid-st": (LARGER_BUDGET_HYBRID_ST_ARGS, RESULTS / "active_learning_larger_budget",
                                    "hybrid-st-"),
        "pneumonia-side": (PNEUMONIA_SIDE_ARGS, RESULTS / "active_learning_pneumonia_side", ""),
        "normal-half": (NORMAL_HALF_ARGS, RESULTS / "active_learning_normal_half", ""),
        "coreset": (CORESET_ARGS, RESULTS / "active_learning_coreset", ""),
        "pretrained": (PRETRAINED_ARGS, RESULTS / "active_learning_pretrained", ""),
        # That budget's plain hybrid (no pretraining) into the pretrained run's folder: hybrid with and without
        # pretraining paired on the same ingest, seed sets and training order (the larger budget's hybrid ran
        # on another ingest). Its random arm runs again; the merge checks it against the core-set run's.
        "pretrained-hybrid": (LARGER_BUDGET_ARGS, RESULTS / "active_learning_pretrained", "hybrid-"),
        "pretrained-hybrid-st": (PRETRAINED_HYBRID_ST_ARGS, RESULTS / "active_learning_pretrained", "hybrid-st-"),
        "pretrained-hybrid-random": (PRETRAINED_HYBRID_RANDOM_ARGS, RESULTS / "active_learning_pretrained",
                                     "hybrid-random-"),
        "hybrid-random-wide": (HYBRID_RANDOM_WIDE_ARGS, RESULTS / "active_learning_hybrid_random_wide", ""),
        "from-scratch": (FROM_SCRATCH_ARGS, RESULTS / "active_learning_from_scratch", ""),
        "from-scratch-warm-random": (FROM_SCRATCH_WARM_RANDOM_ARGS,
                                     RESULTS / "active_learning_from_scratch" / "warm_random", ""),
        "from-scratch-40": (FROM_SCRATCH_40_ARGS, RESULTS / "active_learning_from_scratch" / "epochs_40", ""),
        "from-scratch-40-st": (FROM_SCRATCH_40_ST_ARGS, RESULTS / "active_learning_from_scratch" / "epochs_40_st", ""),
        # The from-scratch-40 runs' ingest was lost with its scratch folder (a reboot cleared /tmp) before the honest
        # baseline had more than two repeats, and a new ingest trains other models. So both runs again, on the ingest
        # every scratch folder now gets (synthetic_records salts it by the study's seed), into one folder: random +
        # pretraining, hybrid + pretraining and random + self-training + pretraining, five repeats, every round's
        # detector afresh at 40 epochs. The two runs share the random + pretraining arm, which the merge checks value
        # for value; run every sitting with one torch thread a process (deterministic for one thread count). A repeat
        # is about 60 minutes for afresh-40 and 95 for afresh-40-st on one core, so a sitting runs one repeat of
        # each side by side, as two commands with a --work each (each ingests the study: the same ids).
        "afresh-40": (FROM_SCRATCH_40_ARGS, RESULTS / "active_learning_afresh_40", ""),
        "afresh-40-st": (FROM_SCRATCH_40_ST_ARGS, RESULTS / "active_learning_afresh_40", "random-st-"),
        "afresh-40-hybrid-st": (AFRESH_40_HYBRID_ST_ARGS, RESULTS / "active_learning_afresh_40" / "hybrid_st", ""),
        "operating-point": (OPERATING_POINT_ARGS, RESULTS / "active_learning_operating_point", "")}
# Parts of other runs merged into a results folder's, read against its arms: the pretrained runs' arms
# against the core-set run's plain random (same ingest, repeats and seed sets; the merge refuses parts of
# another ingest).
MERGED_WITH = {RESULTS / "active_learning_pretrained": [RESULTS / "active_learning_coreset" / "parts"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--processes", type=int, default=2, help="processes the repeats are split over")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: 1 with several processes, else torch's own; "
                             "1 for a sitting beside another on a 2-core machine)")
    parser.add_argument("--first-repeat", type=int, default=0, help="the first repeat this sitting runs")
    parser.add_argument("--count", type=int, default=None, help=f"repeats this sitting runs (default: up to {REPEATS})")
    parser.add_argument("--merge-only", action="store_true", help="only merge the parts already recorded")
    parser.add_argument("--run", choices=sorted(RUNS), default="population", help="which recorded run")
    args = parser.parse_args()
    run_args, results, prefix = RUNS[args.run]
    work = (args.work or Path(tempfile.mkdtemp(prefix="cxr-al-bench-"))).resolve()
    started = time.perf_counter()
    cxr = [sys.executable, "-m", "cxrkit.cli"]
    if not args.merge_only:
        count = REPEATS - args.first_repeat if args.count is None else args.count
        if count < 1 or args.first_repeat < 0:
            parser.error("nothing to run: give --first-repeat >= 0 and --count >= 1")
        threads = args.threads if args.threads is not None else 1 if args.processes > 1 else 0
        status = run_repeats(cxr, work, args.first_repeat, count, args.processes, threads, run_args,
                             results / "parts", prefix)
        if status:
            return status
    parts = sorted(p for folder in [results / "parts", *MERGED_WITH.get(results, [])]
                   for p in folder.glob("*repeats-*") if (p / "result.json").is_file())
    if not parts:
        print(f"no parts under {results / 'parts'} to merge", file=sys.stderr)
        return 1
    argv = [*cxr, "al-benchmark", "--out", str(results)] + [a for p in parts for a in ("--merge", str(p))]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    print(result.stdout, result.stderr, sep="\n")
    if result.returncode != 0:
        sharing = {name: pre for name, (_, folder, pre) in RUNS.items() if folder == results}
        missing = parts_missing(results / "parts", sharing)
        if missing and not args.merge_only:
            # Runs sharing a folder, in sittings: the first to finish has no partner part of its repeats yet.
            print(f"this sitting's part is kept under {results / 'parts'}; the merge needs every arm of each "
                  f"repeat, and {'; '.join(missing)}. Once they are recorded, `--run {args.run} --merge-only` "
                  "merges them (the last of them to finish merges by itself)", file=sys.stderr)
        return result.returncode
    print(f"{time.perf_counter() - started:.0f} s; merged {len(parts)} parts into {results}")
    return 0


def parts_missing(parts: Path, prefixes: dict[str, str]) -> list[str]:
    """For runs that share a results folder (run name -> prefix of its parts' folders), which run has
    not recorded which repeats another has: ["repeat 3 has no part of afresh-40-st yet", ...]."""
    covered = {}
    for name, prefix in prefixes.items():
        covered[name] = set()
        for part in parts.glob(f"{prefix}repeats-*"):
            first, _, last = part.name[len(prefix) + len("repeats-"):].partition("-")
            if first.isdigit() and last.isdigit() and (part / "result.json").is_file():
                covered[name].update(range(int(first), int(last) + 1))
    every = set().union(*covered.values())
    return [f"repeat {r} has no part of {name} yet" for r in sorted(every) for name in sorted(covered)
            if r not in covered[name]]


def run_repeats(cxr: list[str], work: Path, first_repeat: int, count: int, processes: int, threads: int,
                run_args: list[str], parts: Path, prefix: str) -> int:
    """Repeats first_repeat .. first_repeat + count - 1 over `processes` processes of `threads` torch
    threads (0: torch's default); each process's rows.csv and result.json kept under
    parts/<prefix>repeats-<first>-<last>. 0, or 1 when a process failed."""
    from cxrkit.selection.al_benchmark import synthetic_records

    synthetic_records(work / "synthetic", **STUDY)
    shares = [count // processes + (k < count % processes) for k in range(processes)]
    runs, first = [], first_repeat
    for k, repeats in enumerate(s for s in shares if s):
        out = work / f"part{k}"
        argv = [*cxr, "al-benchmark", "--out", str(out), "--workspace", str(work / "synthetic" / "workspace"),
                *run_args, "--seed", str(STUDY["seed"]), "--first-repeat", str(first), "--repeats", str(repeats),
                "--threads", str(threads)]
        print(" ".join(argv[2:]), flush=True)
        with (work / f"part{k}.log").open("w") as log:  # the child keeps its own copy of the handle
            runs.append((out, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                         (first, first + repeats - 1)))
        first += repeats
    failed = [out for out, proc, _ in runs if proc.wait() != 0]
    if failed:
        print(f"failed: {', '.join(str(out) for out in failed)} (see the .log beside each)", file=sys.stderr)
        return 1
    for out, _, (a, b) in runs:
        keep = parts / f"{prefix}repeats-{a}-{b}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("rows.csv", "result.json"):
            shutil.copyfile(out / name, keep / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
