"""Peak memory, wall time and throughput of bulk scoring, against the number of documents.

    .venv/bin/python bench/score_memory.py [--scales 1,20] [--modes default,in_memory]
                                           [--repeat 1] [--model SERVING_DIR/MODEL_NAME]
                                           [--work-dir DIR] [--out bench/results]

Scoring should hold no more in memory for many documents than for few: the rows stream
through the two Beam jobs of `local_runner.py score` (components/scorer.py). This measures it.

Model: `--model`, or else a tiny one trained here first (`local_runner.py run` on
data/trec.csv with a two-epoch, 4-filter TextCNN; about a minute) into the work directory.

Inputs: the TREC test set (the 500 rows of data/trec.csv with split == "test"), repeated
1x, 20x, ... (`--scales`) as JSONL with an id per copy (`r<copy>-<row>`) and the label.

Each (mode, scale) runs `local_runner.py score --input FILE --output DIR` as a subprocess:
`default` with `--direct_running_mode=multi_processing` (a worker process per core: the default
Beam options when this was measured; since then the default for inputs up to 64 MiB is
in_memory, see pipeline/pipeline.py `default_beam_args`),
`in_memory` with `--direct_running_mode=in_memory --direct_num_workers=1`. While it runs,
the RSS of the process and all its descendants (Beam's worker processes included) is summed
every `--poll` seconds (psutil when installed, else /proc); the peak of that sum is reported
with the wall time and documents/s, the largest single process's peak, the scored count and
the number of prediction shards. With `--repeat N` each is run N times and the medians are
reported (the runs are in the JSON): the summed peak varies by a few hundred MiB from run to
run when the DirectRunner briefly holds an extra worker process. The ratio column is the
median peak against the mode's smallest scale: flat memory keeps it near 1.

Writes OUT/score_memory.json and OUT/score_memory.md (a markdown table). Not part of the
test suite.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"default": ["--direct_running_mode=multi_processing"],
         "in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"]}
TINY_TRAINER = """
[transform]
max_len = 12

[trainer]
epochs = 2
batch_size = 16

[trainer.model]
embedding_dim = 8
num_filters = 4

[evaluator]
min_accuracy = 0.0
"""
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ENV, TREC, cli, mib, psutil, run_measured,  # noqa: E402  (bench/common.py)
                    write_copies)


def train_tiny_model(work_dir: str) -> str:
    serving = os.path.join(work_dir, "serving")
    base = os.path.join(serving, "textcnn")
    if glob.glob(os.path.join(base, "*", "saved_model.pb")):
        return base
    if not os.path.exists(TREC):
        subprocess.run(cli("data", "trec", "--out", os.path.join(REPO, "data")), cwd=REPO,
                       env=dict(os.environ, **ENV), check=True)
    config = os.path.join(work_dir, "tiny.toml")
    with open(config, "w") as f:
        f.write(TINY_TRAINER)
    print(f"training a tiny model into {serving} ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        cli("run", "--input", TREC, "--pipeline-root", os.path.join(work_dir, "root"),
            "--serving-dir", serving, "--config", config, *MODES["in_memory"]),
        cwd=REPO, env=dict(os.environ, **ENV), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  trained in {time.monotonic() - started:.0f} s", flush=True)
    return base


def test_rows() -> List[Dict[str, str]]:
    with open(TREC, newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)
                if r.get("split") == "test"]


def markdown(results: List[Dict], meta: Dict) -> str:
    lines = [
        "# Bulk scoring: memory against the number of documents",
        "",
        f"`{meta['command']}` on {meta['machine']} ({meta['cpus']} CPUs), {meta['date']}.",
        f"Inputs: the TREC test set ({meta['base_rows']} rows) repeated; peak RSS summed over "
        "the scoring process and its descendants (polled every "
        f"{meta['poll_s']} s), the median of the runs; ratio: that against the mode's smallest "
        f"scale. Load average at the start: {meta['load_average']} (wall times are only "
        "comparable on an otherwise idle machine).",
        "",
        "| mode | scale | documents | runs | peak RSS (MiB) | peak range (MiB) | ratio | "
        "largest process (MiB) | processes | wall (s) | documents/s | shards |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        peaks = [run["peak_rss_bytes"] for run in r["runs"]]
        lines.append(
            f"| {r['mode']} | {r['scale']}x | {r['documents']} | {len(peaks)} | "
            f"{mib(r['peak_rss_bytes'])} | {mib(min(peaks))}-{mib(max(peaks))} | "
            f"{r['peak_ratio']:.2f} | {mib(r['peak_single_process_rss_bytes'])} | "
            f"{r['max_processes']} | {r['wall_s']:.1f} | {r['documents_per_s']:.0f} | "
            f"{r['shards']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,20", help="copies of the TREC test set")
    parser.add_argument("--modes", default="default,in_memory",
                        help=f"Beam option sets: {', '.join(MODES)}")
    parser.add_argument("--model", help="SERVING_DIR/MODEL_NAME (default: train a tiny one)")
    parser.add_argument("--work-dir", help="kept; default: a temporary directory, removed")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode and scale "
                        "(medians reported)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between RSS samples")
    args = parser.parse_args(argv)
    scales = sorted(int(s) for s in args.scales.split(","))
    modes = args.modes.split(",")
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m}; known: {', '.join(MODES)}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the work dir
    load_average = round(os.getloadavg()[0], 1)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="score_memory-")
    os.makedirs(work_dir, exist_ok=True)
    try:
        model = args.model or train_tiny_model(work_dir)
        rows = test_rows()
        results = []
        for mode in modes:
            for scale in scales:
                data = os.path.join(work_dir, f"input-{scale}x.jsonl")
                documents = write_copies(data, rows, scale)
                out = os.path.join(work_dir, f"scored-{mode}-{scale}x")
                shutil.rmtree(out, ignore_errors=True)
                cmd = cli("score", "--model", model, "--input", data, "--output", out,
                          *MODES[mode])
                print(f"{mode} {scale}x ({documents} documents) ...", flush=True)
                runs = []
                for run in range(args.repeat):
                    shutil.rmtree(out, ignore_errors=True)
                    log = os.path.join(work_dir, f"score-{mode}-{scale}x-{run}.log")
                    measured = run_measured(cmd, args.poll, log)
                    if measured["returncode"] != 0:
                        with open(log) as f:
                            sys.exit(f"scoring failed ({measured['returncode']}):\n"
                                     f"{f.read()[-3000:]}")
                    with open(os.path.join(out, "summary.json")) as f:
                        summary = json.load(f)
                    if summary["scored"] != documents:
                        sys.exit(f"scored {summary['scored']} of {documents} documents")
                    measured["shards"] = len(glob.glob(os.path.join(out, "predictions",
                                                                    "*.jsonl")))
                    runs.append(measured)
                medians = {k: statistics.median(r[k] for r in runs)
                           for k in ("wall_s", "peak_rss_bytes",
                                     "peak_single_process_rss_bytes")}
                shards = runs[0]["shards"]
                result = {"mode": mode, "beam_args": MODES[mode], "scale": scale,
                          "documents": documents, "shards": shards,
                          "documents_per_s": documents / medians["wall_s"], **medians,
                          "max_processes": max(r["max_processes"] for r in runs),
                          "runs": runs}
                base = next((r for r in results if r["mode"] == mode), result)
                result["peak_ratio"] = result["peak_rss_bytes"] / base["peak_rss_bytes"]
                results.append(result)
                print(f"  peak {mib(result['peak_rss_bytes'])} MiB "
                      f"(x{result['peak_ratio']:.2f}), {result['wall_s']:.1f} s, "
                      f"{result['documents_per_s']:.0f} documents/s, {shards} shard(s)",
                      flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    meta = {"command": "local_runner.py score", "machine": platform.platform(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "python": platform.python_version(), "base_rows": len(rows), "poll_s": args.poll,
            "repeat": args.repeat, "load_average": load_average,
            "rss_source": "psutil" if psutil is not None else "/proc",
            "model": args.model or "a tiny TextCNN trained here (TINY_TRAINER) on data/trec.csv"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "score_memory.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    table = markdown(results, meta)
    with open(os.path.join(args.out, "score_memory.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
