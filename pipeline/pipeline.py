"""Wires the stages: each gets its input artifact directories and its own settings, nothing else."""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from components import PROGRESS_LOGGER, features
from components.artifacts import artifact_dir, fingerprint_dir
from components.errors import BlockingAnomaliesError, UserInputError
from components.evaluator import run_evaluator
from components.example_gen import run_example_gen
from components.example_validator import rare_class_warnings, run_example_validator
from components.schema_gen import (INFER, SCHEMA_FILE, check_schema_path, label_classes, load_schema,
                                   run_schema_gen)
from components.statistics_gen import (available_splits, load_statistics, run_statistics_gen,
                                       value_counts)
from components.pusher import latest_version_dir, run_pusher
from components.trainer import MODEL_DIR, run_trainer
from components.transform import run_transform
from pipeline import configs


def default_beam_args() -> List[str]:
    """DirectRunner, multi-processing, one worker per core; any of these can be overridden.

    Workers import `components.worker_setup` first (a Beam plugin), whatever the runner.
    """
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}",
            "--beam_plugin=components.worker_setup"]


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    # Later flags win in Beam's parser, so the user's flags go after the defaults.
    return PipelineOptions(default_beam_args() + list(beam_args))


def progress(message: str) -> None:
    """A line for the person watching the run (stage starts and ends)."""
    logging.getLogger(PROGRESS_LOGGER).info("%s", message)


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


class RunRecorder:
    """Times stages and writes `<root>/runs/<run_id>/summary.json` however the run ends."""

    def __init__(self, config: configs.PipelineConfig, run_id: str, beam_args: Sequence[str]):
        self.summary: Dict[str, Any] = {
            "run_id": run_id,
            "pipeline": configs.PIPELINE_NAME,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "status": "running",
            "config": configs.to_dict(config),
            "beam_args": default_beam_args() + list(beam_args),
            "stages": [],
        }
        self.path = os.path.join(config.pipeline_root, "runs", run_id, "summary.json")

    def stage(self, name: str, output_dir: str, fn: Callable[[], Dict[str, Any]]):
        progress(f"{name}: started")
        start = time.monotonic()
        entry = {"name": name, "output": output_dir}
        self.summary["stages"].append(entry)
        try:
            entry["details"] = fn()
            entry["status"] = "ok"
            return entry["details"]
        except BaseException as e:
            entry["status"] = "failed"
            entry["error"] = str(e)
            if getattr(e, "details", None) is not None:  # what the stage found before stopping
                entry["details"] = e.details
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - start, 2)
            progress(f"{name}: {entry['status']} in {entry['seconds']:.1f}s")

    def warn(self, message: str) -> None:
        """A warning for the summary and the report, and the console."""
        self.summary.setdefault("warnings", []).append(message)
        logging.getLogger(PROGRESS_LOGGER).warning("warning: %s", message)

    def finish(self, status: str, exit_code: int) -> None:
        self.summary["status"] = status
        self.summary["exit_code"] = exit_code
        self.summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.summary, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, self.path)


def run_pipeline(config: configs.PipelineConfig, beam_args: Sequence[str],
                 recorder: RunRecorder) -> None:
    """Runs the stages in order up to `config.until`; raises on a failed stage.

    Each stage gets the artifact directories of the stages before it and its own settings.
    """
    options = beam_options(beam_args)
    dirs = {stage: artifact_dir(config.pipeline_root, stage, recorder.summary["run_id"])
            for stage in configs.STAGES}
    examples, stats, schema_dir = (dirs[configs.EXAMPLE_GEN], dirs[configs.STATISTICS_GEN],
                                   dirs[configs.SCHEMA_GEN])

    def example_gen():
        counts = run_example_gen(config.inputs, examples, config.example_gen, options)
        if configs.STAGES.index(config.until) >= configs.STAGES.index(configs.TRANSFORM):
            check_training_splits(counts, config.example_gen.eval_ratio)
        return counts

    def statistics_gen():
        paths = run_statistics_gen(examples, stats, options)
        return {"splits": paths,
                "label_counts": {s: value_counts(load_statistics(stats, s), features.LABEL)
                                 for s in paths}}

    def schema_gen():
        path, origin = run_schema_gen(stats, available_splits(examples), schema_dir,
                                      config.schema_path)
        if origin == "inferred":
            curated = os.path.join(configs.PROJECT_ROOT, "schemas",
                                   f"{dataset_name(config.inputs)}.pbtxt")
            if os.path.exists(curated):  # never suggest overwriting a curated schema
                curated = curated[:-len(".pbtxt")] + f"-{recorder.summary['run_id']}.pbtxt"
            if not os.path.relpath(curated).startswith(".."):
                curated = os.path.relpath(curated)
            progress(f"SchemaGen: inferred the schema; to curate it (then pass --schema "
                     f"{curated}):\n    cp {path} {curated}")
        return {"schema": path, "origin": origin,
                "classes": label_classes(load_schema(schema_dir))}

    def transform():
        info = run_transform(examples, label_classes(load_schema(schema_dir)),
                             dirs[configs.TRANSFORM], config.transform, options)
        check_token_counts(info, recorder.summary)
        return info

    def validate():
        schema, splits = load_schema(schema_dir), available_splits(examples)
        result = run_example_validator(stats, schema, splits, dirs[configs.EXAMPLE_VALIDATOR])
        messages = [m for r in result.values() for m in r["messages"]]
        warnings = (rare_class_warnings(stats, label_classes(schema), config.example_validator)
                    if features.TRAIN in splits else [])
        for w in warnings:
            recorder.warn(w)
        if any(r["blocking"] for r in result.values()) and not config.allow_anomalies:
            raise BlockingAnomaliesError(
                "data validation found blocking anomalies (see "
                f"{dirs[configs.EXAMPLE_VALIDATOR]}/Split-*/anomalies.pbtxt):\n  "
                + "\n  ".join(messages) + "\n" + _how_to_go_on(messages, config.schema_path))
        for m in messages:  # not blocking, or allowed: said once here
            recorder.warn(f"anomaly: {m}")
        return {"anomalies": {s: r["messages"] for s, r in result.items()},
                "allowed": bool(messages) and config.allow_anomalies, "warnings": warnings}

    steps = {
        configs.EXAMPLE_GEN: example_gen,
        configs.STATISTICS_GEN: statistics_gen,
        configs.SCHEMA_GEN: schema_gen,
        configs.EXAMPLE_VALIDATOR: validate,
        configs.TRANSFORM: transform,
        configs.TRAINER: lambda: run_trainer(dirs[configs.TRANSFORM], dirs[configs.TRAINER],
                                             config.trainer),
        configs.EVALUATOR: lambda: run_evaluator(
            examples, os.path.join(dirs[configs.TRAINER], MODEL_DIR),
            label_classes(load_schema(schema_dir)), latest_version_dir(model_base),
            dirs[configs.EVALUATOR], config.evaluator, options),
        configs.PUSHER: lambda: run_pusher(
            dirs[configs.EVALUATOR], os.path.join(dirs[configs.TRAINER], MODEL_DIR),
            push_metadata(config, recorder, dirs), config.pusher, dirs[configs.PUSHER],
            {SCHEMA_FILE: os.path.join(schema_dir, SCHEMA_FILE)}),
    }
    model_base = os.path.join(config.pusher.serving_dir, config.pusher.model_name)
    check_schema_path(config.schema_path)  # a typo fails now, not after the first stages
    for stage in configs.STAGES[:configs.STAGES.index(config.until) + 1]:
        recorder.stage(stage, dirs[stage], steps[stage])


def check_training_splits(counts: Dict[str, Any], eval_ratio: float) -> None:
    """Training needs rows in Split-train, and in Split-eval for early stopping."""
    splits = counts["splits"]
    if not splits[features.TRAIN]:
        raise UserInputError(
            f"no row went to Split-train: of {counts['written']} usable rows, "
            + ", ".join(f"{n} {s}" for s, n in splits.items() if n)
            + "; leave rows unmarked (or marked train) to train on them", details=counts)
    if not splits[features.EVAL]:
        raise UserInputError(
            f"no row went to Split-eval (early stopping needs it): the hash split sends "
            f"{eval_ratio:.0%} of unmarked rows there and picked none of {splits[features.TRAIN]}; "
            "mark some rows `eval` or raise example_gen.eval_ratio", details=counts)


def check_token_counts(info: Dict[str, Any], summary: Dict[str, Any]) -> None:
    """The Transform's per-split document counts equal the rows ExampleGen wrote."""
    written = next(s["details"]["splits"] for s in summary["stages"]
                   if s["name"] == configs.EXAMPLE_GEN)
    transformed = {s: t["documents"] for s, t in info["token_lengths"].items()}
    if transformed != {s: n for s, n in written.items() if n}:
        raise RuntimeError(f"Transform counts do not reconcile with ExampleGen's: transformed "
                           f"{transformed}, written {written}")


def dataset_name(inputs: Sequence[str]) -> str:
    """A name for the data from its first input: data/news.csv.gz -> news."""
    base = os.path.basename(inputs[0].rstrip("/")) if inputs else "data"
    name = base.split(".")[0].strip("*?[]") if not base.startswith(".") else ""
    return name or "data"


def _how_to_go_on(messages: Sequence[str], schema_path: str) -> str:
    if schema_path != INFER and any(f"feature {features.LABEL!r}" in m for m in messages):
        return (f"The labels do not match the schema {schema_path}. If this is a new dataset, "
                f"run with `--schema {INFER}` to infer a schema from it (then curate it), or "
                "pass --schema with a schema that lists its classes. If the data is wrong, fix "
                "it; or pass --allow-anomalies to proceed knowingly.")
    return "Fix the data or the schema, or pass --allow-anomalies to proceed knowingly."


PACKAGES = ("tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-data-validation",
            "tensorflow-model-analysis", "tfx-bsl", "tensorflow-metadata", "apache-beam")


def _git_commit() -> Optional[str]:
    import subprocess

    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=configs.PROJECT_ROOT,
                              capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def push_metadata(config: configs.PipelineConfig, recorder: RunRecorder,
                  dirs: Dict[str, str]) -> Dict[str, Any]:
    """What a pushed version records about how it was made."""
    from importlib import metadata as importlib_metadata

    stages = {s["name"]: s.get("details") or {} for s in recorder.summary["stages"]}
    transform = stages.get(configs.TRANSFORM, {})
    evaluation = stages.get(configs.EVALUATOR, {})
    examples = dirs[configs.EXAMPLE_GEN]
    return {
        "run_id": recorder.summary["run_id"],
        "metrics": (evaluation.get("metrics") or {}).get("Overall"),
        "evaluated_on": evaluation.get("split"),
        "data_fingerprints": {s: fingerprint_dir(os.path.join(examples,
                                                              features.split_dir_name(s)))
                              for s in available_splits(examples)},
        "vocabulary_size": transform.get("vocabulary_size"),
        "classes": transform.get("classes"),
        "config": configs.to_dict(config),
        "packages": {p: importlib_metadata.version(p) for p in PACKAGES},
        "git_commit": _git_commit(),
    }


def format_summary(summary: Dict[str, Any]) -> str:
    """A short human summary: stages, durations, counts."""
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if summary.get("warnings"):
        lines.append(f"  {len(summary['warnings'])} warning(s), listed in the summary and report")
    for stage in summary["stages"]:
        lines.append(f"  {stage['name']:<17} {stage.get('status', '?'):<7} "
                     f"{stage.get('seconds', 0):>7.1f}s  {stage['output']}")
        details = stage.get("details") or {}
        if stage["name"] == configs.EXAMPLE_GEN and details:
            splits = ", ".join(f"{k} {v}" for k, v in details["splits"].items() if v)
            lines.append(f"      rows read {details['read']} = written {details['written']} "
                         f"({splits}) + quarantined {details['quarantined']}")
            for reason, n in sorted(details["quarantine_reasons"].items()):
                lines.append(f"      quarantined {n}: {reason}")
        if stage["name"] == configs.SCHEMA_GEN and details:
            lines.append(f"      schema {details['origin']}: {details['schema']}")
        if stage["name"] == configs.EXAMPLE_VALIDATOR and details:
            n = sum(len(v) for v in details["anomalies"].values())
            lines.append(f"      anomalies: {n}" + (" (allowed)" if details["allowed"] else ""))
        if stage["name"] == configs.TRANSFORM and details:
            train = (details.get("token_lengths") or {}).get(features.TRAIN) or {}
            truncated = (f", {train['truncated'] / train['documents']:.1%} of training "
                         "documents truncated" if train.get("documents") else "")
            lines.append(f"      vocabulary {details['vocabulary_size']} tokens, max_len "
                         f"{details['max_len']} ({details.get('max_len_source', 'fixed')}"
                         f"{truncated}), {len(details['classes'])} classes")
        if stage["name"] == configs.TRAINER and details:
            m = details["metrics"]
            scores = ", ".join(f"{k.replace('_accuracy', '')} {v:.3f}"
                               for k, v in m.items() if k.endswith("_accuracy"))
            lines.append(f"      {details['epochs_run']} epochs (best {details['best_epoch']}), "
                         f"{details['train_seconds']}s on {details['replicas']} replica(s); "
                         f"accuracy {scores}")
            lines.append(f"      model: {details['model']}")
        if stage["name"] == configs.EVALUATOR and details:
            overall = details["metrics"].get("Overall", {})
            acc, f1 = (overall.get(k) or float("nan") for k in ("sparse_categorical_accuracy",
                                                                 "macro_f1"))
            lines.append(f"      {'BLESSED' if details['blessed'] else 'NOT BLESSED'} on "
                         f"Split-{details['split']}: accuracy {acc:.3f}, macro-F1 {f1:.3f}"
                         + (f" (baseline {details['baseline']})" if details["baseline"] else
                            " (no baseline)"))
            for failure in details["failures"]:
                lines.append(f"      failed: {failure}")
        if stage["name"] == configs.PUSHER and details:
            lines.append(f"      pushed version {details['version']}: {details['path']}")
    return "\n".join(lines)
