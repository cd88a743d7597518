"""Speed of the pipeline against plain baselines: six ratios, each of two things measured in one run.

    .venv/bin/python bench/speed.py [--parts 1,2,3,4,5,6] [--reps 3] [--scales 1,4,16]
                                    [--score-copies 10,40] [--work-dir DIR] [--out bench/results]
                                    [--full-reps 1] [--trainer-epochs 4] [--plain-args "..."]
                                    [--model SERVING_DIR/MODEL_NAME] [--transform-dir DIR]

Every figure is a ratio of two measurements taken in the same invocation, on the same data
(TREC, data/trec.csv; fetched with `local_runner.py data trec --out data` when missing) and the
same hyperparameters, repeated `--reps` times (at least 3 for a result to quote); each table
gives the median and the min-max spread over the repetitions, the two sides alternating in
order from one repetition to the next so that a drift in the machine's load hits both. Wall
times are of whole processes, measured from here (Python and TensorFlow start-up included on
both sides); peak memory is the RSS summed over the process and all its descendants (Beam's
worker processes included), sampled every `--poll` seconds (bench/common.py).

1. Whole pipeline vs a plain script. Per repetition: `local_runner.py run --input
   data/trec.csv --pipeline-root NEW --serving-dir NEW/serving` (every stage, default flags: the
   DirectRunner's mode follows the input size, in memory for TREC), `bench/plain_textcnn.py`
   (reads the CSV, tokenises with `re`, pads to 64, fits the same TextCNN with the same
   early-stopping rule on the same train/eval/test rows, in memory), and the same plain script
   with `--skip-autograph-keras` (AutoGraph left off tf_keras' code, as the Trainer does), in an
   order that alternates from one repetition to the next. Ratio = pipeline wall / plain wall (target
   <= 1.0, floor 1.5). Both test accuracies are reported; a difference over 0.01 is flagged.
5. Training throughput from those runs: the Trainer's examples/s (Split-train documents x
   epochs run / its `train_seconds`, from the run's summary.json) / the plain script's (train
   rows x epochs / model.fit seconds), at equal accuracy (target >= 3: the pipeline pads to
   the 95th percentile of the lengths, 18 tokens for TREC, not 64, and with the Trainer's
   `bucket_by_length` each batch only to its longest sequence). As extra information, the
   same ratio over epochs 2.. (the first epoch's tracing excluded; the plain script's first
   epoch also pays AutoGraph converting tf_keras, which the Trainer switches off -- see
   `--plain-args=--skip-autograph-keras`).
6. Stage breakdown of those runs (median seconds per stage, and the wall time not spent in
   any stage) and their peak RSS; plus the peak RSS of one full run (every stage, default
   flags) on TREC x the largest `--scales` (target < 4 GiB at 16x), run `--full-reps` times
   (1 by default: one run of several minutes).
2. Trainer input pipeline: in one process (a worker started by this script), the default
   TextCNN is fitted for `--trainer-epochs` epochs without early stopping, (a) on
   `components.trainer.make_dataset` over the Transform output's Split-train (the Trainer's
   tf.data: gzip TFRecords, cache, shuffle, batch, parse) and (b) on numpy arrays holding the
   same transformed examples padded to max_len (read once from the TFRecords),
   `model.fit(x, y, batch_size=64, shuffle=True)`; both with the Trainer's settings (AutoGraph
   off for tf_keras, deterministic ops, seed). Examples/s over epochs 2.. (the first epoch
   traces the step and fills the cache); (a) and (b) alternate. Ratio = a / b (target >= 0.95).
   When TrainerSettings has `bucket_by_length`, (a) runs with it off for the ratio (the same
   padding on both sides) and once more with it on, as extra information. The Transform
   output is the last part-1 run's, `--transform-dir`, or one made here (`run --until
   Transform`).
3. Bulk scoring: the TREC test questions (500) repeated `--score-copies` times as JSONL with an
   id per copy, scored by `local_runner.py score --model M --input F --output NEW` (default
   flags) and by `bench/direct_score.py` (the SavedModel's serving_default signature on batches
   of 256 in one process, predictions written as JSONL); both timed as whole processes.
   Ratio = CLI documents/s / direct documents/s (target >= 0.8). The model is the one the last
   part-1 run pushed, `--model`, or one trained here (a default `run`).
4. Scale-out on one machine: TREC x each of `--scales` (every row copied with an id column
   `c<copy>-<row>`; the texts, labels and splits are the same, so the test split stays the test
   questions and a text's copies all land in its split), `run --until Transform` on a new root
   in three Beam modes: multi_processing with 1 worker, with 2 workers, and in_memory. The
   time is StatisticsGen + Transform (from summary.json; the wall time is reported too).
   Ratios: 1 worker / 2 workers (target >= 1.7), in_memory / 2 workers, and per mode the time
   at Nx / the time at 1x (target for the default 2-worker mode: <= N + 1, i.e. 16x data in
   <= 17x time).

Writes OUT/speed.json (machine, versions, every repetition, the summaries) and OUT/speed.md
(a table per part, each target marked met / not met), after each part, so an interrupted run
keeps what it measured. The work directory (`--work-dir`, kept; default a temporary one,
removed) holds the pipeline roots (each removed once read, except the last part-1 root, which
parts 2 and 3 reuse) and every subprocess's log. On a shared machine the wall times are only
as good as the machine is quiet: the load average at the start and end is recorded.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import git_commit, load_average, machine, package_versions, psutil

from speed_parts import (part_large_run, part_pipeline_vs_plain, part_scale, part_score,
                         part_trainer, trainer_worker)
from speed_report import markdown, write_results  # noqa: E402
from speed_run import BENCH, TARGETS, BenchError, Runner, ensure_trec, remove  # noqa: E402


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="1,2,3,4,5,6")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every figure")
    parser.add_argument("--scales", default="1,4,16", help="copies of TREC for part 4 (and "
                        "part 6's large run: the largest)")
    parser.add_argument("--score-copies", default="10,40",
                        help="copies of the TREC test set scored in part 3")
    parser.add_argument("--full-reps", type=int, default=1,
                        help="runs of part 6's full pipeline on the largest scale")
    parser.add_argument("--trainer-epochs", type=int, default=4, help="epochs of part 2's fits")
    parser.add_argument("--plain-args", default="",
                        help="extra arguments of bench/plain_textcnn.py, with '=': "
                             "--plain-args=--skip-autograph-keras")
    parser.add_argument("--model", help="part 3's model, SERVING_DIR/MODEL_NAME (default: the "
                        "last part-1 run's, or one trained here)")
    parser.add_argument("--transform-dir", help="part 2's Transform output (default: the last "
                        "part-1 run's, or one made here)")
    parser.add_argument("--work-dir", help="kept; default: a temporary directory, removed")
    parser.add_argument("--out", default=os.path.join(BENCH, "results"))
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument("--timeout", type=float, default=3 * 3600,
                        help="seconds after which a subprocess is killed")
    # Internal: part 2's worker process.
    parser.add_argument("--trainer-worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.trainer_worker:
        return trainer_worker(args.trainer_worker, args.reps, args.trainer_epochs,
                              args.worker_out)

    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    if not parts <= set(range(1, 7)):
        parser.error("--parts takes numbers 1 to 6")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    scales = sorted({int(s) for s in args.scales.split(",")})
    copies = [int(c) for c in args.score_copies.split(",")]
    plain_args = shlex.split(args.plain_args)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still clean up
    work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="speed-"))
    os.makedirs(work_dir, exist_ok=True)
    runner = Runner(work_dir, args.poll, args.timeout)
    results: Dict[str, Any] = {
        "meta": {
            "command": " ".join([".venv/bin/python bench/speed.py"]
                                + [shlex.quote(a) for a in (argv if argv is not None
                                                            else sys.argv[1:])]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(), "versions": package_versions(), "commit": git_commit(),
            "load_average_start": load_average(), "parts": sorted(parts), "reps": args.reps,
            "scales": scales, "score_copies": copies, "full_reps": args.full_reps,
            "trainer_epochs": args.trainer_epochs, "plain_args": plain_args,
            "poll_s": args.poll, "rss_source": "psutil" if psutil is not None else "/proc",
            "work_dir": work_dir, "targets": TARGETS,
        },
        "parts": {},
    }
    state: Dict[str, Any] = {}
    started = time.monotonic()

    def attempt(name: str, fn) -> None:
        print(f"== {name}", flush=True)
        try:
            results["parts"][name] = fn()
        except BenchError as e:
            print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            results["parts"][name] = {"error": str(e)}
        write_results(results, args.out)

    try:
        ensure_trec(runner)
        if parts & {1, 5, 6}:
            attempt("pipeline_vs_plain",
                    lambda: part_pipeline_vs_plain(runner, args.reps, plain_args, state))
        if 2 in parts:
            attempt("trainer", lambda: part_trainer(runner, args.reps, args.trainer_epochs,
                                                    args, state))
        if 3 in parts:
            attempt("score", lambda: part_score(runner, args.reps, copies, args, state))
        if 4 in parts:
            attempt("scale", lambda: part_scale(runner, args.reps, scales))
        if 6 in parts:
            attempt("large_run", lambda: part_large_run(runner, args.full_reps, max(scales)))
    finally:
        results["meta"]["load_average_end"] = load_average()
        results["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(
            timespec="seconds")
        results["meta"]["seconds"] = round(time.monotonic() - started, 1)
        write_results(results, args.out)
        if not args.work_dir:
            remove(work_dir)
    print(markdown(results))
    print(f"wrote {os.path.join(args.out, 'speed.json')} and speed.md")
    return 1 if any(isinstance(p, dict) and p.get("error")
                    for p in results["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
