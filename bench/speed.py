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
import csv
import dataclasses
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ENV, REPO, TREC, cli, fmt_spread, git_commit,  # noqa: E402
                    load_average, log_tail, machine, mib, package_versions, psutil,
                    run_measured, spread, write_copies)
from pipeline import configs, results  # noqa: E402  (the stages and their typed results)

BENCH = os.path.dirname(os.path.abspath(__file__))
PLAIN = os.path.join(BENCH, "plain_textcnn.py")
DIRECT = os.path.join(BENCH, "direct_score.py")
STAGES = configs.STAGES  # a stage a run did not run (the Tuner, off) reads as "-"
SCALE_MODES = {
    "mp1": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "mp2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
}
MODE_NAMES = {"mp1": "multi_processing, 1 worker", "mp2": "multi_processing, 2 workers",
              "in_memory": "in_memory"}
GIB = 1 << 30
SIDES = ("pipeline", "plain", "plain_fast")  # part 1's three processes
FAST_FLAG = "--skip-autograph-keras"
TARGETS = {"ratio1": 1.0, "ratio1_floor": 1.5, "ratio2": 0.95, "ratio3": 0.8,
           "ratio4_workers": 1.7, "peak_16x_bytes": 4 * GIB, "ratio5": 3.0,
           "accuracy_tolerance": 0.01}


class BenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Running things.


class Runner:
    def __init__(self, work_dir: str, poll: float, timeout: float):
        self.work_dir = work_dir
        self.poll = poll
        self.timeout = timeout
        self.logs = os.path.join(work_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self._n = 0

    def run(self, name: str, cmd: List[str], check: bool = True) -> Dict[str, Any]:
        self._n += 1
        log = os.path.join(self.logs, f"{self._n:03d}-{name}.log")
        print(f"  [{time.strftime('%H:%M:%S')}] {name}: {' '.join(shlex.quote(c) for c in cmd)}",
              flush=True)
        measured = run_measured(cmd, self.poll, log, timeout=self.timeout)
        measured["log"] = log
        print(f"    exit {measured['returncode']}, {measured['wall_s']:.1f} s, peak "
              f"{mib(measured['peak_rss_bytes'])} MiB", flush=True)
        if check and measured["returncode"] != 0:
            raise BenchError(f"{name} failed (exit {measured['returncode']}; log {log}):\n"
                             f"{error_lines(log)}")
        return measured


def last_json_line(path: str) -> Dict[str, Any]:
    with open(path, errors="replace") as f:
        for line in reversed(f.read().splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                return json.loads(line)
    raise BenchError(f"no JSON result line in {path}:\n{log_tail(path)}")


def read_summary(root: str) -> Dict[str, Any]:
    found = sorted(glob.glob(os.path.join(root, "runs", "*", "summary.json")))
    if not found:
        raise BenchError(f"no runs/*/summary.json under {root}")
    with open(found[-1]) as f:
        return json.load(f)


def run_facts(summary: Dict[str, Any]) -> Dict[str, Any]:
    """Stage seconds, accuracy, epochs, training documents of a run's summary.json."""
    stages = {s["name"]: s for s in summary.get("stages", [])}
    facts: Dict[str, Any] = {
        "run_id": summary.get("run_id"), "status": summary.get("status"),
        "exit_code": summary.get("exit_code"),
        "stage_seconds": {name: s.get("seconds") for name, s in stages.items()},
        "stage_status": {name: s.get("status") for name, s in stages.items()},
    }
    typed = results.stage_results(summary)
    eg = typed.get("ExampleGen") or results.ExampleGenResult()
    facts["split_rows"] = eg.splits or None
    transform = typed.get("Transform") or results.TransformResult()
    train_lengths = transform.token_lengths.get("train") or {}
    facts["train_examples"] = train_lengths.get("documents") or eg.splits.get("train")
    facts["max_len"] = transform.max_len
    facts["vocabulary_size"] = transform.vocabulary_size
    trainer = typed.get("Trainer")
    if trainer is not None:
        facts.update({
            "test_accuracy": trainer.metrics.get("test_accuracy"),
            "eval_accuracy": trainer.metrics.get("eval_accuracy"),
            "epochs_run": trainer.epochs_run, "best_epoch": trainer.best_epoch,
            "train_seconds": trainer.train_seconds,
        })
        if facts["train_examples"] and trainer.train_seconds:
            facts["train_examples_per_second"] = (facts["train_examples"] * trainer.epochs_run
                                                  / trainer.train_seconds)
    evaluator = typed.get("Evaluator") or results.EvaluatorResult()
    facts["evaluator_accuracy"] = evaluator.accuracy
    pusher = typed.get("Pusher") or results.PusherResult()
    facts["pushed_version"] = pusher.version
    facts["stages_total_seconds"] = sum(v for v in facts["stage_seconds"].values() if v)
    return facts


EPOCH_LINE = re.compile(r"^\s*epoch (\d+)/\d+: .*, ([\d.]+)s$")


def epoch_seconds_from_log(path: str) -> List[float]:
    """Per-epoch seconds of the Trainer's progress lines (`  epoch 3/50: ..., 2.4s`)."""
    seconds: List[float] = []
    with open(path, errors="replace") as f:
        for line in f:
            match = EPOCH_LINE.match(line.rstrip())
            if match:
                seconds.append(float(match.group(2)))
    return seconds


def steady_rate(examples: Optional[int], epoch_seconds: Sequence[float]) -> Optional[float]:
    """Examples/s over epochs 2.. (the first traces the step and fills the caches)."""
    if not examples or len(epoch_seconds) < 2 or not sum(epoch_seconds[1:]):
        return None
    return examples * (len(epoch_seconds) - 1) / sum(epoch_seconds[1:])


def error_lines(path: str) -> str:
    """The `error: ...` lines of a log (and what follows them), else its tail."""
    text = log_tail(path, 200_000)
    at = text.find("\nerror: ")
    return text[at + 1:at + 1500] if at >= 0 else text[-1500:]


def trec_rows() -> List[Dict[str, str]]:
    with open(TREC, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ensure_trec(runner: Runner) -> None:
    if not os.path.exists(TREC):
        print(f"{TREC} is missing: fetching it", flush=True)
        runner.run("data-trec", cli("data", "trec", "--out", os.path.join(REPO, "data")))


def pipeline_cmd(inputs: str, root: str, *extra: str) -> List[str]:
    return cli("run", "--input", inputs, "--pipeline-root", root, *extra)


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------------------------
# Parts 1, 5, 6: the whole pipeline against the plain script.


def part_pipeline_vs_plain(runner: Runner, reps: int, plain_args: Sequence[str],
                           state: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"reps": []}
    try:
        pipeline_vs_plain_reps(runner, reps, plain_args, state, out)
    except BenchError as e:
        if not out["reps"]:
            raise
        out["error"] = f"after {len(out['reps'])} repetition(s): {e}"
    return summarize_part1(out)


def pipeline_vs_plain_reps(runner: Runner, reps: int, plain_args: Sequence[str],
                           state: Dict[str, Any], out: Dict[str, Any]) -> None:
    for rep in range(reps):
        root = os.path.join(runner.work_dir, f"part1-root-{rep}")
        remove(root)
        record: Dict[str, Any] = {"rep": rep}
        order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
        record["order"] = list(order)
        for side in order:
            if side == "pipeline":
                m = runner.run(f"part1-pipeline-{rep}", pipeline_cmd(
                    TREC, root, "--serving-dir", os.path.join(root, "serving")))
                facts = run_facts(read_summary(root))
                epochs = epoch_seconds_from_log(m["log"])
                facts.update(epoch_seconds=epochs, first_epoch_seconds=epochs[0] if epochs
                             else None,
                             steady_examples_per_second=steady_rate(facts["train_examples"],
                                                                    epochs))
                record["pipeline"] = dict(m, **facts)
            else:
                extra = ([FAST_FLAG] if side == "plain_fast" and FAST_FLAG not in plain_args
                         else [])
                m = runner.run(f"part1-{side}-{rep}", [sys.executable, PLAIN, *plain_args,
                                                       *extra])
                plain = last_json_line(m["log"])
                plain["steady_examples_per_second"] = steady_rate(plain["train_examples"],
                                                                  plain["epoch_seconds"])
                record[side] = dict(m, **plain)
        p, q, f = record["pipeline"], record["plain"], record["plain_fast"]
        record["ratio1_fast"] = p["wall_s"] / f["wall_s"]
        record["ratio5_fast"] = ratio(p.get("train_examples_per_second"),
                                      f["examples_per_second"])
        record["accuracy_difference_fast"] = abs(p["test_accuracy"] - f["test_accuracy"])
        record["ratio1"] = p["wall_s"] / q["wall_s"]
        record["ratio5"] = ratio(p.get("train_examples_per_second"), q["examples_per_second"])
        record["ratio5_steady"] = ratio(p.get("steady_examples_per_second"),
                                        q.get("steady_examples_per_second"))
        record["accuracy_difference"] = abs(p["test_accuracy"] - q["test_accuracy"])
        record["pipeline"]["unstaged_seconds"] = p["wall_s"] - p["stages_total_seconds"]
        print(f"    rep {rep}: ratio1 {record['ratio1']:.2f}, ratio5 "
              f"{record['ratio5'] or float('nan'):.2f}, test accuracy pipeline "
              f"{p['test_accuracy']:.4f} / plain {q['test_accuracy']:.4f}", flush=True)
        out["reps"].append(record)
        previous = state.get("part1_root")
        if previous and previous != root:
            remove(previous)
        state["part1_root"] = root


def summarize_part1(out: Dict[str, Any]) -> Dict[str, Any]:
    reps = out["reps"]

    def over(side: str, key: str) -> Dict[str, Any]:
        return spread(r[side].get(key) for r in reps)

    out["summary"] = {
        "ratio1": spread(r["ratio1"] for r in reps),
        "ratio5": spread(r["ratio5"] for r in reps),
        "ratio5_steady": spread(r.get("ratio5_steady") for r in reps),
        "ratio1_fast": spread(r.get("ratio1_fast") for r in reps),
        "ratio5_fast": spread(r.get("ratio5_fast") for r in reps),
        "accuracy_difference_fast": spread(r.get("accuracy_difference_fast") for r in reps),
        "pipeline": {k: over("pipeline", k) for k in (
            "wall_s", "test_accuracy", "evaluator_accuracy", "eval_accuracy", "epochs_run",
            "train_seconds", "first_epoch_seconds", "train_examples_per_second",
            "steady_examples_per_second", "peak_rss_bytes", "unstaged_seconds",
            "stages_total_seconds")},
        **{side: {k: over(side, k) for k in (
            "wall_s", "test_accuracy", "eval_accuracy", "epochs_run", "fit_seconds",
            "first_epoch_seconds", "examples_per_second", "steady_examples_per_second",
            "peak_rss_bytes")} for side in ("plain", "plain_fast")},
        "stage_seconds": {s: spread(r["pipeline"]["stage_seconds"].get(s) for r in reps)
                          for s in STAGES},
        "train_examples": reps[0]["pipeline"].get("train_examples"),
        "pipeline_max_len": reps[0]["pipeline"].get("max_len"),
        "plain_max_len": reps[0]["plain"].get("max_len"),
        "plain_train_examples": reps[0]["plain"].get("train_examples"),
        "accuracy_difference": spread(r["accuracy_difference"] for r in reps),
    }
    s = out["summary"]
    s["accuracy_flag"] = (
        any(r["accuracy_difference"] > TARGETS["accuracy_tolerance"] for r in reps)
        or abs(s["pipeline"]["test_accuracy"]["median"] - s["plain"]["test_accuracy"]["median"])
        > TARGETS["accuracy_tolerance"])
    return out


# ----------------------------------------------------------------------------------------------
# Part 2: the Trainer's input pipeline against numpy arrays, in one process.


def find_transform_dir(root: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(root, "Transform", "*", "transform_info.json")))
    return os.path.dirname(found[-1]) if found else None


def part_trainer(runner: Runner, reps: int, epochs: int, args, state: Dict[str, Any]
                 ) -> Dict[str, Any]:
    transform_dir = args.transform_dir or (
        find_transform_dir(state["part1_root"]) if state.get("part1_root") else None)
    if transform_dir is None:
        root = os.path.join(runner.work_dir, "part2-root")
        remove(root)
        runner.run("part2-transform", pipeline_cmd(TREC, root, "--until", "Transform"))
        transform_dir = find_transform_dir(root)
    result_path = os.path.join(runner.work_dir, "part2-result.json")
    m = runner.run("part2-trainer", [sys.executable, os.path.abspath(__file__),
                                     "--trainer-worker", transform_dir, "--reps", str(reps),
                                     "--trainer-epochs", str(epochs),
                                     "--worker-out", result_path])
    with open(result_path) as f:
        out = json.load(f)
    out.update(transform_dir=transform_dir, process_wall_s=m["wall_s"],
               process_peak_rss_bytes=m["peak_rss_bytes"])
    reps_ = out["reps"]
    out["summary"] = {
        "ratio2": spread(r["ratio2"] for r in reps_),
        "tfdata": spread(r["tfdata"]["examples_per_second"] for r in reps_),
        "numpy": spread(r["numpy"]["examples_per_second"] for r in reps_),
        "tfdata_first_epoch_s": spread(r["tfdata"]["epoch_seconds"][0] for r in reps_),
        "numpy_first_epoch_s": spread(r["numpy"]["epoch_seconds"][0] for r in reps_),
    }
    if any("tfdata_bucketed" in r for r in reps_):
        bucketed = [r["tfdata_bucketed"] for r in reps_ if "tfdata_bucketed" in r]
        out["summary"]["tfdata_bucketed"] = spread(b.get("examples_per_second")
                                                   for b in bucketed)
        out["summary"]["tfdata_bucketed_errors"] = [b["error"] for b in bucketed
                                                    if b.get("error")]
    return out


def trainer_worker(transform_dir: str, reps: int, epochs: int, out_path: str) -> int:
    """Runs in its own process (started by part 2): fits (a) and (b), prints the results."""
    os.environ.update(ENV)
    sys.path.insert(0, REPO)
    import numpy as np

    from components import features  # first: legacy Keras before TensorFlow
    from components import trainer as T
    from components.model import build_textcnn

    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    if epochs < 2:
        raise SystemExit("--trainer-epochs must be at least 2 (the first is not timed)")
    info = T.read_transform_info(transform_dir)
    feature_spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    max_len, num_classes = info["max_len"], len(info["classes"])
    settings = T.TrainerSettings()
    fields = {f.name for f in dataclasses.fields(T.TrainerSettings)}
    has_bucketing = "bucket_by_length" in fields
    base = dataclasses.replace(settings, bucket_by_length=False) if has_bucketing else settings
    T.skip_autograph_for_tf_keras()
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    pattern = T.transformed_data_pattern(transform_dir, features.TRAIN)
    n = T.split_records(transform_dir, info, features.TRAIN)

    # (b)'s arrays: the same transformed examples, padded to max_len, read once.
    xs, ys = [], []
    for x, y in T.make_dataset(pattern, feature_spec, max_len, num_classes, 1024, False, base):
        xs.append(x.numpy())
        ys.append(y.numpy())
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if len(x_all) != n:
        raise SystemExit(f"read {len(x_all)} training examples, expected {n}")

    def fit(kind: str, trainer_settings) -> Dict[str, Any]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(trainer_settings.seed)
        model = build_textcnn(info["input_dim"], max_len, num_classes, trainer_settings.model)
        model.compile(loss="categorical_crossentropy",
                      optimizer=keras.optimizers.Adam(trainer_settings.learning_rate),
                      metrics=["accuracy"])
        seconds: List[float] = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda e, logs: seconds.append(-time.monotonic()),
            on_epoch_end=lambda e, logs: seconds.__setitem__(-1, seconds[-1] + time.monotonic()))
        if kind == "numpy":
            history = model.fit(x_all, y_all, batch_size=trainer_settings.batch_size,
                                epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
        else:
            data = T.make_dataset(pattern, feature_spec, max_len, num_classes,
                                  trainer_settings.batch_size, True, trainer_settings)
            history = model.fit(data, epochs=epochs, verbose=0, callbacks=[timer])
        timed = sum(seconds[1:])
        result = {"epoch_seconds": [round(s, 3) for s in seconds],
                  "examples_per_second": n * (epochs - 1) / timed,
                  "final_train_accuracy": float(history.history["accuracy"][-1])}
        print(f"  {kind}: {result['examples_per_second']:.0f} examples/s over epochs 2..{epochs} "
              f"(epoch seconds {result['epoch_seconds']})", flush=True)
        return result

    out: Dict[str, Any] = {"train_examples": n, "max_len": max_len, "epochs": epochs,
                           "timed_epochs": f"2..{epochs}", "batch_size": base.batch_size,
                           "has_bucket_by_length": has_bucketing, "reps": []}
    for rep in range(reps):
        record: Dict[str, Any] = {"rep": rep}
        order = ("tfdata", "numpy") if rep % 2 == 0 else ("numpy", "tfdata")
        record["order"] = list(order)
        for kind in order:
            record[kind] = fit(kind, base)
        if has_bucketing:
            try:
                record["tfdata_bucketed"] = fit(
                    "tfdata_bucketed", dataclasses.replace(settings, bucket_by_length=True))
            except Exception as e:  # extra information only
                record["tfdata_bucketed"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        record["ratio2"] = (record["tfdata"]["examples_per_second"]
                            / record["numpy"]["examples_per_second"])
        out["reps"].append(record)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    return 0


# ----------------------------------------------------------------------------------------------
# Part 3: bulk scoring against calling the signature directly.


def part_score(runner: Runner, reps: int, copies_list: Sequence[int], args,
               state: Dict[str, Any]) -> Dict[str, Any]:
    model = args.model
    if model is None and state.get("part1_root"):
        model = os.path.join(state["part1_root"], "serving", "textcnn")
    if model is None or not glob.glob(os.path.join(model, "*", "saved_model.pb")):
        root = os.path.join(runner.work_dir, "part3-root")
        remove(root)
        runner.run("part3-train", pipeline_cmd(TREC, root, "--serving-dir",
                                               os.path.join(root, "serving")))
        model = os.path.join(root, "serving", "textcnn")
    test = [r for r in trec_rows() if r.get("split") == "test"]
    out: Dict[str, Any] = {"model": model, "base_rows": len(test), "sizes": []}
    for copies in copies_list:
        data = os.path.join(runner.work_dir, f"score-input-{copies}x.jsonl")
        documents = write_copies(data, test, copies)
        size: Dict[str, Any] = {"copies": copies, "documents": documents, "reps": []}
        for rep in range(reps):
            record: Dict[str, Any] = {"rep": rep}
            order = ("cli", "direct") if rep % 2 == 0 else ("direct", "cli")
            record["order"] = list(order)
            for side in order:
                target = os.path.join(runner.work_dir, f"scored-{side}-{copies}x")
                remove(target)
                if side == "cli":
                    m = runner.run(f"part3-cli-{copies}x-{rep}", cli(
                        "score", "--model", model, "--input", data, "--output", target))
                    with open(os.path.join(target, "summary.json")) as f:
                        summary = json.load(f)
                    if summary["scored"] != documents:
                        raise BenchError(f"the CLI scored {summary['scored']} of {documents}")
                    record["cli"] = dict(m, scored=summary["scored"],
                                         accuracy=summary.get("accuracy"),
                                         documents_per_second=documents / m["wall_s"])
                else:
                    os.makedirs(target)
                    m = runner.run(f"part3-direct-{copies}x-{rep}", [
                        sys.executable, DIRECT, "--model", model, "--input", data,
                        "--output", os.path.join(target, "predictions.jsonl")])
                    result = last_json_line(m["log"])
                    if result["documents"] != documents:
                        raise BenchError(f"direct scoring read {result['documents']} of "
                                         f"{documents}")
                    record["direct"] = dict(m, **result,
                                            documents_per_second=documents / m["wall_s"])
                remove(target)
            record["ratio3"] = (record["cli"]["documents_per_second"]
                                / record["direct"]["documents_per_second"])
            print(f"    {copies}x rep {rep}: ratio3 {record['ratio3']:.3f}", flush=True)
            size["reps"].append(record)
        r = size["reps"]
        size["summary"] = {
            "ratio3": spread(x["ratio3"] for x in r),
            "cli_wall_s": spread(x["cli"]["wall_s"] for x in r),
            "direct_wall_s": spread(x["direct"]["wall_s"] for x in r),
            "cli_documents_per_second": spread(x["cli"]["documents_per_second"] for x in r),
            "direct_documents_per_second": spread(x["direct"]["documents_per_second"]
                                                  for x in r),
            "direct_load_seconds": spread(x["direct"]["load_seconds"] for x in r),
            "direct_score_seconds": spread(x["direct"]["score_seconds"] for x in r),
            "cli_peak_rss_bytes": spread(x["cli"]["peak_rss_bytes"] for x in r),
            "direct_peak_rss_bytes": spread(x["direct"]["peak_rss_bytes"] for x in r),
            "cli_accuracy": r[0]["cli"].get("accuracy"),
            "direct_accuracy": r[0]["direct"].get("accuracy"),
        }
        out["sizes"].append(size)
    return out


# ----------------------------------------------------------------------------------------------
# Part 4 (and 6's large run): TREC replicated.


def write_scaled(path: str, rows: List[Dict[str, str]], copies: int) -> int:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split"])
        for c in range(copies):
            for i, r in enumerate(rows):
                w.writerow([f"c{c}-{i}", r["text"], r["label"], r.get("split", "")])
    return copies * len(rows)


def scaled_input(runner: Runner, scale: int) -> str:
    path = os.path.join(runner.work_dir, f"trec-{scale}x.csv")
    if not os.path.exists(path):
        write_scaled(path, trec_rows(), scale)
    return path


def part_scale(runner: Runner, reps: int, scales: Sequence[int]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"modes": {m: SCALE_MODES[m] for m in SCALE_MODES}, "scales": []}
    modes = list(SCALE_MODES)
    for scale in scales:
        data = scaled_input(runner, scale)
        entry: Dict[str, Any] = {"scale": scale, "rows": scale * len(trec_rows()), "reps": []}
        for rep in range(reps):
            record: Dict[str, Any] = {"rep": rep}
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            record["order"] = order
            for mode in order:
                root = os.path.join(runner.work_dir, f"part4-{scale}x-{mode}-{rep}")
                remove(root)
                m = runner.run(f"part4-{scale}x-{mode}-{rep}", pipeline_cmd(
                    data, root, "--until", "Transform", *SCALE_MODES[mode]))
                facts = run_facts(read_summary(root))
                st = facts["stage_seconds"]
                record[mode] = dict(m, **facts, stats_transform_s=(
                    (st.get("StatisticsGen") or 0) + (st.get("Transform") or 0)))
                remove(root)
            record["ratio_mp1_mp2"] = ratio(record["mp1"]["stats_transform_s"],
                                            record["mp2"]["stats_transform_s"])
            record["ratio_in_memory_mp2"] = ratio(record["in_memory"]["stats_transform_s"],
                                                  record["mp2"]["stats_transform_s"])
            entry["reps"].append(record)
        r = entry["reps"]
        entry["summary"] = {
            "stats_transform_s": {m: spread(x[m]["stats_transform_s"] for x in r)
                                  for m in modes},
            "statistics_gen_s": {m: spread(x[m]["stage_seconds"].get("StatisticsGen")
                                           for x in r) for m in modes},
            "transform_s": {m: spread(x[m]["stage_seconds"].get("Transform") for x in r)
                            for m in modes},
            "example_gen_s": {m: spread(x[m]["stage_seconds"].get("ExampleGen") for x in r)
                              for m in modes},
            "wall_s": {m: spread(x[m]["wall_s"] for x in r) for m in modes},
            "peak_rss_bytes": {m: spread(x[m]["peak_rss_bytes"] for x in r) for m in modes},
            "ratio_mp1_mp2": spread(x["ratio_mp1_mp2"] for x in r),
            "ratio_in_memory_mp2": spread(x["ratio_in_memory_mp2"] for x in r),
        }
        out["scales"].append(entry)
    base = out["scales"][0]
    for entry in out["scales"]:
        entry["summary"]["growth"] = {
            m: ratio(entry["summary"]["stats_transform_s"][m]["median"],
                     base["summary"]["stats_transform_s"][m]["median"]) for m in modes}
        entry["summary"]["wall_growth"] = {
            m: ratio(entry["summary"]["wall_s"][m]["median"],
                     base["summary"]["wall_s"][m]["median"]) for m in modes}
        entry["summary"]["growth_relative_to"] = base["scale"]
    return out


def part_large_run(runner: Runner, reps: int, scale: int) -> Dict[str, Any]:
    data = scaled_input(runner, scale)
    out: Dict[str, Any] = {"scale": scale, "rows": scale * len(trec_rows()), "reps": []}
    for rep in range(reps):
        root = os.path.join(runner.work_dir, f"part6-{scale}x-{rep}")
        remove(root)
        m = runner.run(f"part6-full-{scale}x-{rep}", pipeline_cmd(
            data, root, "--serving-dir", os.path.join(root, "serving")), check=False)
        try:
            facts = run_facts(read_summary(root))
        except BenchError as e:
            facts = {"error": str(e)}
        if m["returncode"] != 0:
            facts["error"] = f"exit {m['returncode']}: {error_lines(m['log'])}"
        out["reps"].append(dict(m, **facts))
        remove(root)
    out["summary"] = {"peak_rss_bytes": spread(r["peak_rss_bytes"] for r in out["reps"]),
                      "wall_s": spread(r["wall_s"] for r in out["reps"]),
                      "stage_seconds": {s: spread(r.get("stage_seconds", {}).get(s)
                                                  for r in out["reps"]) for s in STAGES}}
    return out


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
