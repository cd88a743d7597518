"""The parts of bench/speed.py, each measuring its two sides in the same invocation (see its
docstring for what each part measures and why).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ENV, REPO, TREC, cli, spread, write_copies

from speed_run import (BENCH, BenchError, DIRECT, FAST_FLAG, PLAIN, Runner,
                       SCALE_MODES, SIDES, STAGES, TARGETS, epoch_seconds_from_log,
                       error_lines, last_json_line, pipeline_cmd, ratio,
                       read_summary, remove, run_facts, steady_rate, trec_rows)  # noqa: E402


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
    m = runner.run("part2-trainer", [sys.executable, os.path.join(BENCH, "speed.py"),
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
