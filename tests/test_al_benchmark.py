"""The active-learning benchmark: a micro run over real training, and its bookkeeping."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrkit.selection.al_benchmark import (
    BenchmarkError,
    benchmark_arms,
    label_savings,
    labels_to_reach,
    run_benchmark,
    split_for_benchmark,
)


def test_labels_to_reach_and_savings():
    assert labels_to_reach([20, 40, 60], [0.1, 0.3, 0.5], 0.4) == pytest.approx(50.0)
    assert labels_to_reach([20, 40, 60], [0.5, 0.6, 0.7], 0.4) == 20.0
    assert labels_to_reach([20, 40, 60], [0.1, 0.2, 0.3], 0.4) is None
    summary = [{"strategy": s, "labels": x, "rsna": y} for s, pts in
               {"random": [(20, 0.1), (40, 0.2), (60, 0.4)], "hybrid": [(20, 0.1), (40, 0.4), (60, 0.5)],
                "coreset": [(20, 0.1), (40, 0.15), (60, 0.3)]}.items() for x, y in pts]
    out = label_savings(summary, "rsna")
    assert out["random"]["fraction"] == pytest.approx(1.0)
    assert out["hybrid"]["fraction"] == pytest.approx(40 / 60) and out["hybrid"]["target"] == 0.4
    assert out["coreset"]["fraction"] is None  # never reaches random's final quality
    flat = [dict(e, rsna=0.0) for e in summary]
    assert all(v["fraction"] is None and v["note"] for v in label_savings(flat, "rsna").values())


def test_arms_random_first_and_self_training_by_name():
    assert benchmark_arms(["hybrid"], False) == [("random", "random", False), ("hybrid", "hybrid", False)]
    assert benchmark_arms(["random", "hybrid"], True) == [
        ("random", "random", False), ("hybrid", "hybrid", False),
        ("random+st", "random", True), ("hybrid+st", "hybrid", True)]
    # "+st" by name: that strategy with self-training only, beside random's plain arm (the yardstick)
    assert benchmark_arms(["hybrid+st"], False) == [("random", "random", False), ("hybrid+st", "hybrid", True)]
    assert benchmark_arms(["hybrid+st", "hybrid"], True) == [
        ("random", "random", False), ("hybrid", "hybrid", False),
        ("random+st", "random", True), ("hybrid+st", "hybrid", True)]


def test_micro_benchmark_with_a_pretrained_detector(trained_models, tmp_path):
    """--pretrain-epochs: the detector is pretrained once on the pool's films, every arm's seed detector
    starts from it, the arms are named "+pt" and random+pt is their baseline; a second run reuses it."""
    import yaml

    from cxrkit.cli import app

    out = tmp_path / "al"
    args = ["al-benchmark", "--workspace", str(trained_models.data_dir.parent), "--out", str(out), "--strategies",
            "hybrid", "--seed-size", "6", "--rounds", "1", "--batch", "4", "--repeats", "1", "--detector-epochs", "1",
            "--detector-imgsz", "64", "--finetune-epochs", "1", "--classifier-epochs", "1", "--classifier-size", "32",
            "--pretrain-epochs", "1", "--bootstrap", "20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert {e["strategy"] for e in data["summary"]} == {"random+pt", "hybrid+pt"}
    assert data["settings"]["pretrain"] == {"epochs": 1}
    assert set(data["savings"]["map50"]) == {"random+pt"}
    pretrained = out / "pretrained" / "detector.pt"
    seed = yaml.safe_load((out / "runs/repeat0/seed-random/detector/train/args.yaml").read_text())
    assert seed["model"] == str(pretrained) and seed["epochs"] == 1
    made = pretrained.stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert pretrained.stat().st_mtime_ns == made  # same settings and pool: not pretrained again


def test_operating_rsna_reads_the_test_at_the_threshold_the_validation_chooses(trained_models):
    """rsna_operating: the RSNA metric on the test images with the boxes at or above the threshold the
    validation images choose for that detector (evaluate's operating_conf), here read again through
    evaluate_detector's own rsna_conf. The session's tiny detector scores above 0 there."""
    from cxrkit.models.detector import evaluate_detector, load_detector
    from cxrkit.selection.al_benchmark import operating_rsna

    _, val, test = split_for_benchmark(trained_models.records)
    data, det = trained_models.data_dir, {**trained_models.params["detector"], "conf": 0.01, "rsna_conf": 0.1}
    detector = load_detector(trained_models.detector_weights)
    on_test = evaluate_detector(detector, test, data, 128, 0.01, 0.1, keep_images=True)
    chosen = evaluate_detector(detector, val, data, 128, 0.01)["operating_conf"]
    assert chosen is not None
    expected = evaluate_detector(detector, test, data, 128, 0.01, rsna_conf=chosen)["rsna"]
    assert expected > 0
    assert operating_rsna(detector, on_test, val, data, det) == pytest.approx(expected)


def test_bad_settings_fail_before_training(trained_models, tmp_path):
    records = trained_models.records
    pool, val, test = split_for_benchmark(records)
    assert not {r.image_id for r in pool} & {r.image_id for r in test + val}
    with pytest.raises(BenchmarkError, match="but the pool has only"):
        run_benchmark(records, trained_models.data_dir, tmp_path, trained_models.params,
                      {"seed_size": len(pool), "rounds": 1, "batch": 1}, ["random"])
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        run_benchmark(records, trained_models.data_dir, tmp_path, trained_models.params, {}, ["nope"])
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        run_benchmark(records, trained_models.data_dir, tmp_path, trained_models.params, {}, ["nope+st"])
    with pytest.raises(BenchmarkError, match="no oracle"):
        run_benchmark([], trained_models.data_dir, tmp_path, trained_models.params, {}, ["random"])


def test_strategy_settings_on_the_command_line_are_checked(tmp_path):
    """--strategy-setting NAME.KEY=VALUE: a malformed one or an unknown strategy is refused by name
    before anything is generated or trained."""
    from cxrkit.cli import app

    for bad, reason in [("hybrid_random=8", "give NAME.KEY=VALUE"), ("hybrid_randon.candidates_factor=8",
                                                                      "no strategy 'hybrid_randon'")]:
        result = CliRunner().invoke(app, ["al-benchmark", "--out", str(tmp_path / "al"), "--strategy-setting", bad])
        assert result.exit_code == 2, result.output
        assert reason in " ".join(result.output.replace("│", " ").split())  # typer boxes and wraps the message
    assert not (tmp_path / "al").exists()


def test_micro_benchmark_via_cli(trained_models, tmp_path):
    """2 rounds of 4 on the trained_models workspace, random vs hybrid and likely_positive with a
    typiclust cold start, each with and without self-training, one repeat, real training."""
    from cxrkit.cli import app

    out = tmp_path / "al"
    workspace = trained_models.data_dir.parent
    args = ["al-benchmark", "--workspace", str(workspace), "--out", str(out), "--strategies", "hybrid,likely_positive",
            "--seed-size", "6", "--rounds", "2", "--batch", "4", "--repeats", "1", "--detector-epochs", "2",
            "--detector-imgsz", "64", "--finetune-epochs", "1", "--classifier-epochs", "1", "--classifier-size", "32",
            "--cold-start", "typiclust", "--semi-supervised", "--bootstrap", "50", "--effort",
            "--strategy-setting", "likely_positive.candidates_factor=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "labels needed to reach the baseline's final quality" in result.output

    data = json.loads((out / "result.json").read_text())
    # --strategy-setting: that strategy's setting over params.yaml's, the others as there.
    strategies = data["settings"]["strategies"]
    assert strategies["likely_positive"] == {**trained_models.params["select"]["strategies"]["likely_positive"],
                                             "candidates_factor": 3}
    assert strategies["hybrid"] == trained_models.params["select"]["strategies"]["hybrid"]
    rows = (out / "rows.csv").read_text().splitlines()
    arms = ("random", "hybrid", "likely_positive", "random+st", "hybrid+st", "likely_positive+st")
    assert len(rows) == 1 + 6 * 3  # header + 6 arms x (seed + 2 rounds)
    labels = {(e["strategy"], e["round"]): e["labels"] for e in data["summary"]}
    assert labels == {(s, r): 6 + 4 * r for s in arms for r in range(3)}
    assert "pseudo" in rows[0] and "pseudo_right" in rows[0]
    # Each row counts the films with an opacity box it labeled (the seed's, then each batch's).
    from cxrkit.core.labels import load_schema

    opacity = load_schema().opacity
    truth = {r.image_id: any(b.finding == opacity for b in r.boxes) for r in trained_models.records}
    by_row = {(r["strategy"], int(r["round"])): int(r["positives"])
              for r in csv.DictReader((out / "rows.csv").open())}
    for name in arms:
        rounds = data["selected"][f"{name}/0"]
        assert [by_row[name, k] for k in range(3)] == [sum(truth[i] for i in ids) for ids in rounds]
    # --effort: each row counts its batch's edits; the seed's were made with nothing shown.
    table = list(csv.DictReader((out / "rows.csv").open()))
    assert all(float(r["shown_edits"]) >= 0 and float(r["scratch_edits"]) > 0 for r in table)
    assert all(r["shown_edits"] == r["scratch_edits"] for r in table if r["round"] == "0")
    assert data["savings"]["time"]["model"] == {"look_seconds": 8.9, "edit_seconds": 13.8}
    assert "radiologist time to reach random's final quality" in (out / "table.txt").read_text()

    records = trained_models.records
    pool, val, test = split_for_benchmark(records)
    pool_ids = {r.image_id for r in pool}
    held_out = {r.image_id for r in val + test}
    seeds = {}
    for name in arms:
        rounds = data["selected"][f"{name}/0"]
        assert [len(r) for r in rounds] == [6, 4, 4]
        seen: set = set()
        for picked in rounds:
            assert len(set(picked)) == len(picked) and not seen & set(picked)  # B new, distinct images
            assert set(picked) <= pool_ids and not held_out & set(picked)  # never a val or test image
            seen |= set(picked)
        seeds[name] = rounds[0]
    # Random order starts from a random seed; the workbench's arms from typiclust's cold start on
    # thumbnails (the same with and without self-training).
    from cxrkit.selection.al_benchmark import cold_start_seed

    cold = cold_start_seed(pool, trained_models.data_dir, "typiclust", 6, {}, np.random.default_rng([0, 0, 7]))
    assert seeds["hybrid"] == seeds["hybrid+st"] == [pool[i].image_id for i in cold] != seeds["random"]
    assert seeds["likely_positive"] == seeds["hybrid"]
    assert seeds["random+st"] == seeds["random"]
    assert set(data["savings"]) == {"rsna", "rsna_operating", "map50", "subtype_auroc", "aulc", "time"}
    for metric in ("rsna", "rsna_operating", "map50", "subtype_auroc"):
        assert set(data["savings"][metric]) == {"random", "random+st"}  # both baselines
        per = data["savings"][metric]["random"]  # random reaches its own final quality by its last round at the latest
        assert per["random"]["fraction"] is None or per["random"]["fraction"] <= 1.0
        assert set(data["savings"]["aulc"][metric]) == set(arms)
    assert data["settings"]["pool"] == len(pool) and data["settings"]["test"] == len(test)
    # The ingest's stamp: a digest of the split's image ids (salted per ingest), 16 hex digits.
    from cxrkit.selection.al_benchmark import ingest_stamp

    assert data["settings"]["ingest"] == ingest_stamp(pool + val + test) != ingest_stamp(pool)
    assert len(data["settings"]["ingest"]) == 16

    # Warm start: the last round's detector fine-tuned round 1's weights for --finetune-epochs; the
    # seed model trained from the architecture for --detector-epochs.
    import yaml

    last = yaml.safe_load((out / "runs/repeat0/hybrid/round2/detector/train/args.yaml").read_text())
    assert Path(last["model"]).parts[-6:-3] == ("hybrid", "round1", "detector") and last["epochs"] == 1
    seed = yaml.safe_load((out / "runs/repeat0/seed-random/detector/train/args.yaml").read_text())
    assert seed["model"].endswith(".yaml") and seed["epochs"] == 2

    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 200_000
    assert "hybrid" in (out / "table.txt").read_text()
    tables = (out / "tables.md").read_text().splitlines()
    # in the order the arms ran
    assert tables[2] == "| labels | random | hybrid | likely_positive | random+st | hybrid+st | likely_positive+st |"
    assert [line.split(" | ")[0] for line in tables[4:7]] == ["| 6", "| 10", "| 14"]
    boxed = tables.index("Films with an opacity box among the labels so far, mean over the repeats:")
    # 6, 10, 14 labels; each cell the arm's running count of boxed films
    assert tables[boxed + 6] == "| 14 | " + " | ".join(f"{sum(by_row[a, k] for k in range(3)):.1f}" for a in arms) + " |"


def test_outputs_and_merge_of_split_repeats(tmp_path):
    from cxrkit.selection.al_benchmark import (
        BenchmarkResult,
        all_savings,
        merge_outputs,
        summarise,
        write_outputs,
    )

    def result(repeat: int, base: float, settings: dict,
               arms=(("random", 0.1), ("hybrid", 0.2)), seconds: float = 1.0) -> BenchmarkResult:
        rows = [{"strategy": s, "repeat": repeat, "round": r, "labels": 20 + 20 * r, "rsna": base + gain * r,
                 "map50": base + gain * r, "subtype_auroc": 0.5, "seconds": seconds}
                for s, gain in arms for r in range(3)]
        return BenchmarkResult(rows, summarise(rows), all_savings(rows, 50), {**settings, "repeats": 1, "first_repeat": repeat},
                               {f"random/{repeat}": [["a"]]})

    settings = {"seed_size": 20, "batch": 20}
    write_outputs(result(0, 0.1, settings), tmp_path / "r0")
    write_outputs(result(1, 0.3, settings), tmp_path / "r1")
    merged = merge_outputs([tmp_path / "r0", tmp_path / "r1"])
    final = {(e["strategy"], e["round"]): e for e in merged.summary}
    assert final[("random", 2)]["n"] == 2 and final[("random", 2)]["rsna"] == pytest.approx(0.4)
    assert final[("random", 2)]["rsna_std"] == pytest.approx(0.1)
    # hybrid's mean curve (0.2, 0.4, 0.6) reaches random's final 0.4 at 40 of random's 60 labels
    assert merged.savings["rsna"]["random"]["hybrid"]["fraction"] == pytest.approx(40 / 60)
    assert merged.settings["repeats"] == 2 and set(merged.selected) == {"random/0", "random/1"}
    paths = write_outputs(merged, tmp_path / "merged", "merged")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and "hybrid" in paths["table"].read_text()
    with pytest.raises(BenchmarkError, match="share a repeat"):
        merge_outputs([tmp_path / "r0", tmp_path / "r0"])
    write_outputs(result(2, 0.3, {"seed_size": 10, "batch": 20}), tmp_path / "r2")
    with pytest.raises(BenchmarkError, match="other settings"):
        merge_outputs([tmp_path / "r0", tmp_path / "r2"])
    # A part run before the effort setting existed merges with one that ran with it off (and only off).
    write_outputs(result(3, 0.3, {**settings, "effort": False}), tmp_path / "r3")
    assert merge_outputs([tmp_path / "r0", tmp_path / "r3"]).settings["repeats"] == 2
    write_outputs(result(4, 0.3, {**settings, "effort": True}), tmp_path / "r4")
    with pytest.raises(BenchmarkError, match="other settings"):
        merge_outputs([tmp_path / "r0", tmp_path / "r4"])
    # Likewise a self-training rule from before normal_ratio existed is the one without that cap.
    old_rule, cap = {"precision": 0.8, "max_ratio": 1.0}, {"precision": 0.8, "max_ratio": 1.0, "normal_ratio": None}
    write_outputs(result(6, 0.3, {**settings, "self_training": old_rule}), tmp_path / "r6")
    write_outputs(result(7, 0.3, {**settings, "self_training": cap}), tmp_path / "r7")
    assert merge_outputs([tmp_path / "r6", tmp_path / "r7"]).settings["repeats"] == 2
    write_outputs(result(8, 0.3, {**settings, "self_training": {**cap, "normal_ratio": 0.0}}), tmp_path / "r8")
    with pytest.raises(BenchmarkError, match="other settings"):
        merge_outputs([tmp_path / "r6", tmp_path / "r8"])
    # A part that counted each batch's boxed films merges with one run before that column existed;
    # the merged rows.csv leaves the cell empty where nothing was counted, and reads back.
    counted = result(5, 0.3, settings)
    for row in counted.rows:
        row["positives"] = 3
    write_outputs(BenchmarkResult(counted.rows, summarise(counted.rows), counted.savings, counted.settings,
                                  counted.selected), tmp_path / "r5")
    assert "Films with an opacity box" in (tmp_path / "r5" / "tables.md").read_text()
    mixed = merge_outputs([tmp_path / "r0", tmp_path / "r5"])
    assert {r.get("positives") for r in mixed.rows} == {None, 3}
    write_outputs(mixed, tmp_path / "mixed")
    assert "Films with an opacity box" not in (tmp_path / "mixed" / "tables.md").read_text()
    reread = merge_outputs([tmp_path / "mixed"])
    assert {r.get("positives") for r in reread.rows} == {None, 3} and reread.settings["repeats"] == 2
    # A later run adds an arm (random + self-training) to repeats 0 and 1: its random rows equal the
    # earlier run's but for the seconds (load moves them), and are kept once; the new arm becomes the
    # second baseline of the savings.
    st_arms = (("random", 0.1), ("random+st", 0.15))
    write_outputs(result(0, 0.1, {**settings, "semi_supervised": True}, st_arms, seconds=2.0), tmp_path / "st0")
    write_outputs(result(1, 0.3, {**settings, "semi_supervised": True}, st_arms, seconds=2.0), tmp_path / "st1")
    added = merge_outputs([tmp_path / "r0", tmp_path / "r1", tmp_path / "st0", tmp_path / "st1"])
    assert sorted((r["strategy"], r["repeat"]) for r in added.rows if r["round"] == 0) == [
        ("hybrid", 0), ("hybrid", 1), ("random", 0), ("random", 1), ("random+st", 0), ("random+st", 1)]
    assert {r["seconds"] for r in added.rows if r["strategy"] == "random"} == {1.0}  # the first folder's
    assert added.settings["repeats"] == 2 and added.settings["semi_supervised"] is True
    # random+st's mean curve (0.2, 0.35, 0.5): hybrid (0.2, 0.4, 0.6) reaches its final 0.5 at 50 of 60 labels
    assert added.savings["map50"]["random+st"]["hybrid"]["fraction"] == pytest.approx(50 / 60)
    assert added.savings["map50"]["random"]["hybrid"]["fraction"] == pytest.approx(40 / 60)
    # Arms over other repeats are refused, naming what is missing: an arm averaged over fewer repeats
    # would be read as paired with the others (the partner part of a repeat not recorded yet).
    with pytest.raises(BenchmarkError, match="same repeats: random\\+st has no repeat 1 .*merge once"):
        merge_outputs([tmp_path / "r0", tmp_path / "r1", tmp_path / "st0"])
    # ...and a random arm measured otherwise (another code, study or thread count) is refused.
    write_outputs(result(0, 0.2, {**settings, "semi_supervised": True}, st_arms), tmp_path / "st-other")
    with pytest.raises(BenchmarkError, match="measured otherwise"):
        merge_outputs([tmp_path / "r0", tmp_path / "st-other"])
    # Strategy settings: a part run after a strategy was added to params.yaml names one more; that
    # merges (the union is kept), but a strategy both name with other settings is refused.
    hybrid = {"hybrid": {"candidates_factor": 4.0}}
    write_outputs(result(0, 0.1, {**settings, "strategies": hybrid}), tmp_path / "s0")
    write_outputs(result(1, 0.3, {**settings, "strategies": {**hybrid, "detector_uncertainty": {"depth": 9}}}),
                  tmp_path / "s1")
    assert merge_outputs([tmp_path / "s0", tmp_path / "s1"]).settings["strategies"] == {
        **hybrid, "detector_uncertainty": {"depth": 9}}
    write_outputs(result(1, 0.3, {**settings, "strategies": {"hybrid": {"candidates_factor": 3.0}}}), tmp_path / "s2")
    with pytest.raises(BenchmarkError, match="strategy 'hybrid' has other settings"):
        merge_outputs([tmp_path / "s0", tmp_path / "s2"])
    # A run with a pretrained detector ("+pt" arms, a pretrain setting) merges with a plain run of the
    # same repeats; random+pt becomes a baseline beside random. Two pretraining settings do not merge.
    pt_arms = (("random+pt", 0.15), ("hybrid+pt", 0.2))
    write_outputs(result(0, 0.1, {**settings, "pretrain": {"epochs": 20}}, pt_arms), tmp_path / "pt0")
    both = merge_outputs([tmp_path / "r0", tmp_path / "pt0"])
    assert both.settings["pretrain"] == {"epochs": 20} and set(both.savings["map50"]) == {"random", "random+pt"}
    # random's final 0.3 (0.1, 0.2, 0.3): hybrid+pt (0.1, 0.3, 0.5) reaches it at 40 of 60 labels
    assert both.savings["map50"]["random"]["hybrid+pt"]["fraction"] == pytest.approx(40 / 60)
    write_outputs(result(1, 0.1, {**settings, "pretrain": {"epochs": 5}}, pt_arms), tmp_path / "pt1")
    with pytest.raises(BenchmarkError, match="their \\+pt arms would share a name"):
        merge_outputs([tmp_path / "pt0", tmp_path / "pt1"])
    # Parts of another ingest (image ids are salted per ingest) are refused: random order's seed films
    # of the same repeat differ.
    other_ingest = result(0, 0.1, {**settings, "pretrain": {"epochs": 20}}, pt_arms)
    write_outputs(BenchmarkResult(other_ingest.rows, other_ingest.summary, other_ingest.savings,
                                  other_ingest.settings, {"random+pt/0": [["b"]]}), tmp_path / "pt-other")
    with pytest.raises(BenchmarkError, match="random\\+pt's seed films of repeat 0 are not those of .*different ingests"):
        merge_outputs([tmp_path / "r0", tmp_path / "pt-other"])
    # Parts that stamp their ingest: those of other repeats on one ingest merge, and the merge keeps the
    # stamp (a part recorded before the stamp existed merges beside them); another ingest's stamp is
    # refused even where no repeat is shared, so the seed films cannot tell.
    write_outputs(result(1, 0.3, {**settings, "ingest": "a" * 16}), tmp_path / "i1")
    write_outputs(result(2, 0.3, {**settings, "ingest": "a" * 16}), tmp_path / "i2")
    stamped = merge_outputs([tmp_path / "r0", tmp_path / "i1", tmp_path / "i2"])
    assert stamped.settings["ingest"] == "a" * 16 and stamped.settings["repeats"] == 3
    assert "ingest" not in merge_outputs([tmp_path / "r0", tmp_path / "r1"]).settings
    write_outputs(result(3, 0.3, {**settings, "ingest": "b" * 16}), tmp_path / "i3")
    with pytest.raises(BenchmarkError, match="i3: ran on ingest b{16}, .*i1 on ingest a{16}: .*different ingests"):
        merge_outputs([tmp_path / "i1", tmp_path / "r0", tmp_path / "i3"])


def test_savings_intervals_resample_paired_repeats():
    """Five repeats where hybrid reaches random's final quality with 40 of 60 labels in four of them
    and never in the fifth: the point estimate, the interval and the share of resamples that reach."""
    from cxrkit.selection.al_benchmark import _saving, aulc_intervals, savings_intervals

    rows = []
    for repeat in range(5):
        hybrid_gain = 0.0 if repeat == 4 else 0.2
        for strategy, gain in (("random", 0.1), ("hybrid", hybrid_gain), ("flat", 0.0)):
            rows += [{"strategy": strategy, "repeat": repeat, "round": r, "labels": 20 + 20 * r,
                      "rsna": 0.2 + gain * r, "map50": 0.2, "subtype_auroc": 0.5} for r in range(3)]
    out = savings_intervals(rows, "rsna", "random", resamples=400)
    hybrid = out["hybrid"]
    # mean hybrid curve 0.2, 0.36, 0.52 reaches random's 0.4 at 40 + 20 * 0.04 / 0.16 = 45 labels of 60
    assert hybrid["fraction"] == pytest.approx(45 / 60)
    lo, hi = hybrid["interval"]
    assert 40 / 60 - 1e-9 <= lo < hybrid["fraction"] and (hi is None or hi > hybrid["fraction"])
    assert 0.5 < hybrid["reached"] < 1.0  # a draw of mostly the fifth repeat does not reach it
    assert out["random"]["fraction"] == pytest.approx(1.0) and out["random"]["interval"] == [1.0, 1.0]
    # never reached in any draw: both ends say so (no stand-in number leaks into the table)
    assert out["flat"]["fraction"] is None and out["flat"]["interval"] == [None, None] and out["flat"]["reached"] == 0
    assert _saving(out["flat"]) == "not reached [not reached, not reached], reached in 0%"
    area = aulc_intervals(rows, "rsna", resamples=200)
    assert area["random"]["aulc"] == pytest.approx(0.3) and area["hybrid"]["aulc"] == pytest.approx(0.36)
    assert area["hybrid"]["interval"][0] < 0.36 < area["hybrid"]["interval"][1]


def test_radiologist_time_adds_up_each_batch_by_the_effort_model():
    """Two rounds of 20; look 10 s + 10 s an edit. Random, from scratch: 20 x (10 + 20) twice = 1,200 s;
    hybrid reaches random's final mAP (0.3) within its first round, on pre-annotations needing
    0.5 edits a film: 600 s + 2/3 of 20 x 15 s = 800 s, 67 % of random's time."""
    from cxrkit.evaluation.effort import EffortModel
    from cxrkit.selection.al_benchmark import time_savings, with_radiologist_time

    def row(strategy, rnd, labels, map50, shown, scratch):
        return {"strategy": strategy, "repeat": 0, "round": rnd, "labels": labels, "rsna": map50, "map50": map50,
                "subtype_auroc": map50, "shown_edits": shown, "scratch_edits": scratch}

    rows = [row("random", 0, 20, 0.1, 2.0, 2.0), row("random", 1, 40, 0.3, 1.0, 2.0),
            row("hybrid", 1, 40, 0.4, 0.5, 2.0), row("hybrid", 0, 20, 0.1, 2.0, 2.0)]
    timed = {(r["strategy"], r["round"]): r for r in with_radiologist_time(rows, EffortModel(10, 10))}
    assert (timed["random", 0]["time_scratch"], timed["random", 1]["time_scratch"]) == (600, 1200)
    assert (timed["random", 1]["time_shown"], timed["hybrid", 1]["time_shown"]) == (1000, 900)
    out = time_savings(rows, EffortModel(10, 10), resamples=20)
    assert out["model"] == {"look_seconds": 10, "edit_seconds": 10}
    assert out["map50"]["hybrid"]["time_shown"] == pytest.approx(800)
    assert out["map50"]["hybrid"]["fraction"] == pytest.approx(800 / 1200)
    assert out["map50"]["random"]["fraction"] == pytest.approx(1000 / 1200)  # pre-annotations alone
    # One repeat: every resample is that repeat.
    assert out["map50"]["hybrid"]["interval"] == [pytest.approx(800 / 1200)] * 2


def test_the_same_study_ingests_to_the_same_ids_in_any_scratch_folder(tmp_path):
    """A run's sittings on new scratch folders (a reboot clears /tmp) continue it only on the same
    ingest: the benchmark's workspace is salted by the study's seed, not at random."""
    from cxrkit.core.workspace import read_env_file
    from cxrkit.data.pseudonym import SALT_ENV
    from cxrkit.selection.al_benchmark import ingest_stamp, synthetic_records

    stamps = []
    for folder in ("first", "second"):
        _, records = synthetic_records(tmp_path / folder, n=12, size=64, seed=3)
        stamps.append(ingest_stamp(records))
    assert stamps[0] == stamps[1]
    _, other_seed = synthetic_records(tmp_path / "other", n=12, size=64, seed=4)
    assert ingest_stamp(other_seed) != stamps[0]
    # A workspace that has a salt keeps it: its ids are those of the ingest it already holds.
    kept = tmp_path / "kept" / "workspace"
    kept.mkdir(parents=True)
    (kept / ".env").write_text(f"{SALT_ENV}=a-salt-of-an-older-run-0123456789\n")
    _, older = synthetic_records(tmp_path / "kept", n=12, size=64, seed=3)
    assert ingest_stamp(older) != stamps[0]
    assert read_env_file(kept / ".env")[SALT_ENV] == "a-salt-of-an-older-run-0123456789"
