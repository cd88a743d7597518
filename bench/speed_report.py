"""speed.md from speed.json: a table per part of bench/speed.py, each target marked met or not.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_spread, mib

from speed_run import FAST_FLAG, MODE_NAMES, SCALE_MODES, TARGETS  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Report.


def met(ok: Optional[bool]) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def _median(s: Optional[Dict[str, Any]]) -> Optional[float]:
    return None if not s else s.get("median")


def markdown(results: Dict[str, Any]) -> str:
    meta = results["meta"]
    mach = meta["machine"]
    parts = results["parts"]
    lines = [
        "# Speed: the pipeline against plain baselines",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (finished {meta.get('finished', 'not yet')})",
        f"- machine: {mach['cpu_model']}, {mach['cpus']} CPUs ({mach['usable_cpus']} usable), "
        f"{mach['ram_gib']} GiB RAM, {mach['platform']}, Python {mach['python']}",
        f"- commit: {meta['commit']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- load average (1, 5, 15 min) at the start: {meta['load_average_start']}, at the end: "
        f"{meta.get('load_average_end')}; wall times are only comparable on a quiet machine",
        f"- repetitions: {meta['reps']} per figure; cells are median (min-max); RSS is summed "
        f"over the process tree, sampled every {meta['poll_s']} s ({meta['rss_source']})",
        "",
    ]
    p1 = parts.get("pipeline_vs_plain")
    if p1 and "summary" in p1:
        s = p1["summary"]
        pp, pl, pf = s["pipeline"], s["plain"], s["plain_fast"]
        r1 = _median(s["ratio1"])
        lines += [
            "## 1. Whole pipeline vs a plain in-memory Keras script (TREC)",
            "",
            f"Pipeline: `local_runner.py run --input data/trec.csv --pipeline-root NEW "
            f"--serving-dir NEW/serving` (every stage, default Beam flags), max_len "
            f"{s['pipeline_max_len']}. Plain: "
            f"`{' '.join(['bench/plain_textcnn.py'] + meta['plain_args'])}`, max_len "
            f"{s['plain_max_len']}. "
            f"Training examples: {s['train_examples']} (plain: {s['plain_train_examples']}). "
            f"The third column is the plain script with `{FAST_FLAG}`: AutoGraph told not to "
            "convert tf_keras' own code, as the Trainer does (a TensorFlow-private setting a "
            "plain script would not know; without it tf_keras' first epoch converts Keras' "
            "source). Ratios against both are given.",
            "",
            "| | pipeline | plain script | plain script, AutoGraph fix |",
            "|---|---:|---:|---:|",
            f"| wall (s) | {fmt_spread(pp['wall_s'], 1)} | {fmt_spread(pl['wall_s'], 1)} | {fmt_spread(pf['wall_s'], 1)} |",
            f"| test accuracy | {fmt_spread(pp['test_accuracy'], 4)} | "
            f"{fmt_spread(pl['test_accuracy'], 4)} | {fmt_spread(pf['test_accuracy'], 4)} |",
            f"| eval accuracy | {fmt_spread(pp['eval_accuracy'], 4)} | "
            f"{fmt_spread(pl['eval_accuracy'], 4)} | {fmt_spread(pf['eval_accuracy'], 4)} |",
            f"| epochs run | {fmt_spread(pp['epochs_run'], 0)} | "
            f"{fmt_spread(pl['epochs_run'], 0)} | {fmt_spread(pf['epochs_run'], 0)} |",
            f"| training seconds (model.fit) | {fmt_spread(pp['train_seconds'], 1)} | "
            f"{fmt_spread(pl['fit_seconds'], 1)} | {fmt_spread(pf['fit_seconds'], 1)} |",
            f"| first epoch (s; tracing, AutoGraph, caches) | "
            f"{fmt_spread(pp['first_epoch_seconds'], 1)} | "
            f"{fmt_spread(pl['first_epoch_seconds'], 1)} | {fmt_spread(pf['first_epoch_seconds'], 1)} |",
            f"| training examples/s (all epochs) | "
            f"{fmt_spread(pp['train_examples_per_second'], 0)} | "
            f"{fmt_spread(pl['examples_per_second'], 0)} | {fmt_spread(pf['examples_per_second'], 0)} |",
            f"| training examples/s (epochs 2..) | "
            f"{fmt_spread(pp['steady_examples_per_second'], 0)} | "
            f"{fmt_spread(pl['steady_examples_per_second'], 0)} | {fmt_spread(pf['steady_examples_per_second'], 0)} |",
            f"| peak RSS (MiB) | {fmt_mib(pp['peak_rss_bytes'])} | "
            f"{fmt_mib(pl['peak_rss_bytes'])} | {fmt_mib(pf['peak_rss_bytes'])} |",
            "",
            "| ratio | value | target | |",
            "|---|---:|---|---|",
            f"| 1. pipeline wall / plain wall | {fmt_spread(s['ratio1'])} | <= 1.0 (floor 1.5) "
            f"| {met(None if r1 is None else r1 <= TARGETS['ratio1'])}"
            f"{'' if r1 is None or r1 <= TARGETS['ratio1'] else ', floor ' + met(r1 <= TARGETS['ratio1_floor'])} |",
            f"| test accuracy difference | {fmt_spread(s['accuracy_difference'], 4)} | <= 0.01 "
            f"| {met(not s['accuracy_flag'])} |",
            f"| 1'. pipeline wall / plain wall with the AutoGraph fix | "
            f"{fmt_spread(s['ratio1_fast'])} | <= 1.0 (floor 1.5) | |",
            f"| test accuracy difference (AutoGraph fix) | "
            f"{fmt_spread(s['accuracy_difference_fast'], 4)} | <= 0.01 | |",
            "",
        ]
        if s["accuracy_flag"]:
            lines += ["**Flag: the test accuracies differ by more than 0.01 in at least one "
                      "repetition (or in the medians).**", ""]
        r5 = _median(s["ratio5"])
        lines += [
            "## 5. Training throughput: the Trainer against the plain script",
            "",
            "Examples/s = training examples x epochs run / model.fit seconds (per-epoch "
            "validation and the first epoch's tracing included on both sides), from the runs of "
            "part 1, whose test accuracies are above.",
            "",
            "| ratio | value | target | |",
            "|---|---:|---|---|",
            f"| 5. Trainer examples/s / plain examples/s | {fmt_spread(s['ratio5'])} | >= 3 "
            f"| {met(None if r5 is None else r5 >= TARGETS['ratio5'])} |",
            f"| (extra) the same over epochs 2.. (first epoch excluded on both sides; the "
            f"pipeline's from its progress lines) | {fmt_spread(s['ratio5_steady'])} | | |",
            f"| 5'. against the plain script with the AutoGraph fix | "
            f"{fmt_spread(s['ratio5_fast'])} | >= 3 | |",
            "",
            "## 6. Stage breakdown and peak memory",
            "",
            "| stage | seconds |",
            "|---|---:|",
        ]
        for stage, sp in s["stage_seconds"].items():
            lines.append(f"| {stage} | {fmt_spread(sp, 1)} |")
        lines += [
            f"| (all stages) | {fmt_spread(pp['stages_total_seconds'], 1)} |",
            f"| (outside the stages: start-up, hashing, report) | "
            f"{fmt_spread(pp['unstaged_seconds'], 1)} |",
            f"| whole run (wall) | {fmt_spread(pp['wall_s'], 1)} |",
            "",
            f"Peak RSS of a full TREC run: {fmt_mib(pp['peak_rss_bytes'])} MiB.",
            "",
        ]
    large = parts.get("large_run")
    if large and "summary" in large:
        errors = [r["error"] for r in large["reps"] if r.get("error")]
        peak = None if errors else _median(large["summary"]["peak_rss_bytes"])
        if not (p1 and "summary" in p1):
            lines += ["## 6. Peak memory", ""]
        lines += [
            f"Full run (every stage, default flags) on TREC x {large['scale']} "
            f"({large['rows']} rows), {len(large['reps'])} run(s):",
            "",
            "| figure | value | target | |",
            "|---|---:|---|---|",
            f"| peak RSS (MiB) | {fmt_mib(large['summary']['peak_rss_bytes'])} | < 4096 | "
            f"{'run failed' if errors else met(None if peak is None else peak < TARGETS['peak_16x_bytes'])} |",
            f"| wall (s) | {fmt_spread(large['summary']['wall_s'], 1)} | | |",
        ]
        for stage, sp in large["summary"]["stage_seconds"].items():
            lines.append(f"| {stage} (s) | {fmt_spread(sp, 1)} | | |")
        lines.append("")
        for e in errors:
            lines += ["A full run failed (its peak is only up to the failure):", "", "```",
                      e[:1500].rstrip(), "```", ""]
    p2 = parts.get("trainer")
    if p2 and "summary" in p2:
        s = p2["summary"]
        r2 = _median(s["ratio2"])
        lines += [
            "## 2. Trainer input: transformed TFRecords (tf.data) vs numpy arrays",
            "",
            f"One process; the default TextCNN fitted {p2['epochs']} epochs on "
            f"{p2['train_examples']} examples (max_len {p2['max_len']}, batch "
            f"{p2['batch_size']}); examples/s over epochs {p2['timed_epochs']}.",
            "",
            "| input | examples/s | first epoch (s) |",
            "|---|---:|---:|",
            f"| (a) make_dataset over Split-train TFRecords"
            f"{' (bucket_by_length off)' if p2['has_bucket_by_length'] else ''} | "
            f"{fmt_spread(s['tfdata'], 0)} | {fmt_spread(s['tfdata_first_epoch_s'], 1)} |",
            f"| (b) numpy arrays, model.fit(x, y, batch_size=64, shuffle=True) | "
            f"{fmt_spread(s['numpy'], 0)} | {fmt_spread(s['numpy_first_epoch_s'], 1)} |",
        ]
        if "tfdata_bucketed" in s:
            lines.append(f"| (a) with bucket_by_length on (extra) | "
                         f"{fmt_spread(s['tfdata_bucketed'], 0)} | |")
        lines += [
            "",
            "| ratio | value | target | |",
            "|---|---:|---|---|",
            f"| 2. (a) / (b) | {fmt_spread(s['ratio2'], 3)} | >= 0.95 | "
            f"{met(None if r2 is None else r2 >= TARGETS['ratio2'])} |",
            "",
        ]
        for e in s.get("tfdata_bucketed_errors") or []:
            lines += [f"bucket_by_length on failed: `{e[:300]}`", ""]
    p3 = parts.get("score")
    if p3 and p3.get("sizes"):
        lines += [
            "## 3. Bulk scoring: `local_runner.py score` vs the signature called directly",
            "",
            f"Input: the TREC test questions ({p3['base_rows']}) repeated, JSONL with ids. "
            "CLI: default Beam flags. Direct: `bench/direct_score.py`, batches of 256, one "
            "process, predictions written. Both timed as whole processes (start-up included); "
            "direct load/score are its own in-process timings.",
            "",
            "| documents | CLI wall (s) | CLI docs/s | direct wall (s) | direct docs/s | "
            "direct load / score (s) | CLI / direct peak RSS (MiB) | ratio 3 | target | |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for size in p3["sizes"]:
            s = size["summary"]
            r3 = _median(s["ratio3"])
            lines.append(
                f"| {size['documents']} | {fmt_spread(s['cli_wall_s'], 1)} | "
                f"{fmt_spread(s['cli_documents_per_second'], 0)} | "
                f"{fmt_spread(s['direct_wall_s'], 1)} | "
                f"{fmt_spread(s['direct_documents_per_second'], 0)} | "
                f"{fmt_spread(s['direct_load_seconds'], 2)} / "
                f"{fmt_spread(s['direct_score_seconds'], 2)} | "
                f"{fmt_mib(s['cli_peak_rss_bytes'])} / {fmt_mib(s['direct_peak_rss_bytes'])} | "
                f"{fmt_spread(s['ratio3'], 3)} | >= 0.8 | "
                f"{met(None if r3 is None else r3 >= TARGETS['ratio3'])} |")
        first = p3["sizes"][0]["summary"]
        lines += ["", f"Accuracy on the labelled rows: CLI {fmt_num(first['cli_accuracy'])}, "
                      f"direct {fmt_num(first['direct_accuracy'])}.", ""]
    p4 = parts.get("scale")
    if p4 and p4.get("scales"):
        lines += [
            "## 4. Scale-out on one machine: StatisticsGen + Transform",
            "",
            "`local_runner.py run --input TREC-xN.csv --pipeline-root NEW --until Transform` "
            "with each mode's Beam flags; seconds = StatisticsGen + Transform (summary.json). "
            "Growth: the median at Nx / the median at "
            f"{p4['scales'][0]['scale']}x. Targets: 1 worker / 2 workers >= 1.7; growth of the "
            "2-worker mode <= N + 1 (16x data in <= 17x time).",
            "",
            "| scale | rows | mode | StatisticsGen + Transform (s) | StatisticsGen (s) | "
            "Transform (s) | wall (s) | peak RSS (MiB) | growth | target | |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for entry in p4["scales"]:
            s = entry["summary"]
            for mode in SCALE_MODES:
                g = s["growth"][mode]
                target = ""
                ok = None
                if mode == "mp2" and entry["scale"] > p4["scales"][0]["scale"] and g is not None:
                    limit = entry["scale"] / p4["scales"][0]["scale"] + 1
                    target, ok = f"<= {limit:g}", g <= limit
                lines.append(
                    f"| {entry['scale']}x | {entry['rows']} | {MODE_NAMES[mode]} | "
                    f"{fmt_spread(s['stats_transform_s'][mode], 1)} | "
                    f"{fmt_spread(s['statistics_gen_s'][mode], 1)} | "
                    f"{fmt_spread(s['transform_s'][mode], 1)} | "
                    f"{fmt_spread(s['wall_s'][mode], 1)} | "
                    f"{fmt_mib(s['peak_rss_bytes'][mode])} | {fmt_num(g, 2)} | {target} | "
                    f"{met(ok) if target else ''} |")
        lines += [
            "",
            "| scale | 1 worker / 2 workers | target | | in_memory / 2 workers |",
            "|---:|---:|---|---|---:|",
        ]
        for entry in p4["scales"]:
            s = entry["summary"]
            r = _median(s["ratio_mp1_mp2"])
            lines.append(f"| {entry['scale']}x | {fmt_spread(s['ratio_mp1_mp2'])} | >= 1.7 | "
                         f"{met(None if r is None else r >= TARGETS['ratio4_workers'])} | "
                         f"{fmt_spread(s['ratio_in_memory_mp2'])} |")
        lines.append("")
    for name, part in parts.items():
        if isinstance(part, dict) and part.get("error"):
            lines += [f"**{name} failed:**", "", "```", part["error"][:1500].rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def fmt_mib(s: Optional[Dict[str, Any]]) -> str:
    if not s or s.get("median") is None:
        return "-"
    return fmt_spread({k: (mib(v) if k in ("median", "min", "max") else v)
                       for k, v in s.items()}, 0)


def fmt_num(v: Optional[float], digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_results(results: Dict[str, Any], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "speed.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(out_dir, "speed.md"), "w") as f:
        f.write(markdown(results))
