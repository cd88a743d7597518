"""Wires the stages: each gets its input artifact directories and its own settings, nothing else."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import secrets
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from components import PROGRESS_LOGGER, features, fileio
from components.artifacts import artifact_dir, file_sha256, fingerprint_dir
from components.drift import DRIFT_ANOMALIES_FILE, train_statistics_files
from components.errors import BlockingAnomaliesError, UserInputError
from components.evaluator import run_evaluator
from components.example_gen import forget_unit, plan_units, run_example_gen, unit_fingerprint
from components.example_validator import (ANOMALIES_FILE, rare_class_warnings,
                                          run_example_validator)
from components.schema_gen import (INFER, SCHEMA_FILE, check_schema_path, label_classes, load_schema,
                                   run_schema_gen)
from components.statistics_gen import (available_splits, load_statistics, run_statistics_gen,
                                       value_counts)
from components.pusher import ModelNotBlessedError, latest_version_dir, run_pusher
from components.trainer import MODEL_DIR, run_trainer
from components.transform import run_transform
from components.tuner import (apply_hyperparameters, format_value, load_best, resolve_space,
                              run_tuner)
from pipeline import configs
from pipeline import metadata as meta
from pipeline.metadata import Artifact, MetadataStore
from pipeline.orchestrator import (PACKAGES, SAVED_MODEL_GRAPH, Orchestrator, cache_key,
                                   dir_artifact)

DRIFT_SELF = "itself"  # the drift reference is the data itself: it was accepted before
UNITS_DIR = ".units"  # ExampleGen's parsed input units, keyed by content, settings and code


# Up to this much input data the DirectRunner runs a pipeline in the driver process
# (in_memory); above it, in one worker process per core (multi_processing). Measured on 2
# cores (bench/speed.py, README "Speed"): starting the worker processes, each importing
# TensorFlow, and shipping the data to them costs more than two cores gain on small data.
IN_MEMORY_MAX_BYTES = 64 << 20
_RUNNING_MODE_FLAG = "--direct_running_mode"


def _flag_value(beam_args: Sequence[str], flag: str) -> Optional[str]:
    """The value of `flag` in `beam_args` (the last one wins, as in Beam's parser), or None."""
    value = None
    for i, arg in enumerate(beam_args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(beam_args):
            value = beam_args[i + 1]
    return value


def default_beam_args(data_bytes: Optional[int] = None,
                      beam_args: Sequence[str] = ()) -> List[str]:
    """The DirectRunner flags put before the user's (`beam_args`, which win when they repeat
    one): `in_memory` when the input data (`data_bytes`) is at most IN_MEMORY_MAX_BYTES, else
    `multi_processing` with one worker per core; a running mode the user names gets its
    worker count (1 in memory, one per core otherwise) unless the user gives that too.

    Workers import `components.worker_setup` first (a Beam plugin), whatever the runner.
    """
    mode = _flag_value(beam_args, _RUNNING_MODE_FLAG) or (
        "in_memory" if data_bytes is not None and data_bytes <= IN_MEMORY_MAX_BYTES
        else "multi_processing")
    workers = 1 if mode == "in_memory" else (os.cpu_count() or 1)
    return ["--runner=DirectRunner", f"{_RUNNING_MODE_FLAG}={mode}",
            f"--direct_num_workers={workers}", "--beam_plugin=components.worker_setup"]


def full_beam_args(beam_args: Sequence[str], data_bytes: Optional[int] = None) -> List[str]:
    # Later flags win in Beam's parser, so the user's flags go after the defaults.
    return default_beam_args(data_bytes, beam_args) + list(beam_args)


def beam_options(beam_args: Sequence[str], data_bytes: Optional[int] = None) -> PipelineOptions:
    return PipelineOptions(full_beam_args(beam_args, data_bytes))


def progress(message: str) -> None:
    """A line for the person watching the run (stage starts and ends)."""
    logging.getLogger(PROGRESS_LOGGER).info("%s", message)


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


class RunRecorder:
    """Times stages and writes `<root>/runs/<run_id>/summary.json` however the run ends."""

    def __init__(self, config: configs.PipelineConfig, run_id: str, beam_args: Sequence[str]):
        """`beam_args`: every Beam flag of the run (`full_beam_args`)."""
        self.summary: Dict[str, Any] = {
            "run_id": run_id,
            "pipeline": configs.PIPELINE_NAME,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "status": "running",
            "config": configs.to_dict(config),
            "beam_args": list(beam_args),
            "stages": [],
        }
        self.path = fileio.join(config.pipeline_root, "runs", run_id, "summary.json")

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

    def reused(self, name: str, output_dir: str, details: Dict[str, Any], run_id: str) -> None:
        """A stage not executed: an earlier execution with the same cache key is reused."""
        self.summary["stages"].append({"name": name, "output": output_dir, "details": details,
                                       "status": "reused", "reused_from": run_id,
                                       "seconds": 0.0})
        progress(f"{name}: reused from run {run_id} (same inputs, settings and code)")

    def warn(self, message: str) -> None:
        """A warning for the summary and the report, and the console."""
        self.summary.setdefault("warnings", []).append(message)
        logging.getLogger(PROGRESS_LOGGER).warning("warning: %s", message)

    def finish(self, status: str, exit_code: int) -> None:
        self.summary["status"] = status
        self.summary["exit_code"] = exit_code
        self.summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        fileio.replace_text(self.path, json.dumps(self.summary, indent=2, sort_keys=True,
                                                  default=str))


def run_pipeline(config: configs.PipelineConfig, beam_args: Sequence[str],
                 recorder: RunRecorder, store: MetadataStore, use_cache: bool = True) -> None:
    """Runs the stages in order up to `config.until`; raises on a failed stage.

    Each stage gets the artifact directories of the stages before it (this run's, or an
    earlier run's when the stage was reused) and its own settings; the orchestrator decides
    whether it executes and records the lineage. `beam_args`: every Beam flag of the run
    (`full_beam_args`).
    """
    options = PipelineOptions(list(beam_args))
    run_id = recorder.summary["run_id"]
    root = config.pipeline_root
    orchestrator = Orchestrator(store, recorder, use_cache)
    recorder.summary["code_version"] = orchestrator.code
    fresh = {stage: artifact_dir(root, stage, run_id) for stage in configs.STAGES}
    last = configs.STAGES.index(config.until)
    model_base = fileio.join(config.pusher.serving_dir, config.pusher.model_name)
    check_schema_path(config.schema_path)  # a typo fails now, not after the first stages
    embeddings = config.trainer.model.embeddings
    if embeddings and (not fileio.exists(embeddings) or fileio.isdir(embeddings)):
        raise UserInputError(f"embeddings file {embeddings} does not exist")
    given = configs.given_hyperparameters(config)  # explicit trainer settings: they win
    if config.tuner.enabled:
        resolve_space(config.tuner, config.trainer, given)  # a bad space fails now

    # ExampleGen: each input unit (file, or folder of .txt files) is fingerprinted by content;
    # a unit parsed before under the same settings and code is not parsed again. The settings
    # are what the records depend on (in_process_max_bytes only says where parsing runs).
    eg_settings = {k: v for k, v in dataclasses.asdict(config.example_gen).items()
                   if k != "in_process_max_bytes"}
    units = plan_units(config.inputs, config.example_gen)
    files = []
    for u in units:
        hashes = [file_sha256(path) for path, _ in u.items]
        properties = {"files": len(u.items)}
        if len(u.items) == 1:
            properties["sha256"] = hashes[0]
        files.append(orchestrator.known(Artifact(meta.EXTERNAL, u.name,
                                                 unit_fingerprint(u, hashes), properties)))
    unit_dirs = {u.name: fileio.join(root, configs.EXAMPLE_GEN, UNITS_DIR, cache_key(
        "ExampleGenUnit", orchestrator.code, eg_settings, {"unit": [f]})[:32])
        for u, f in zip(units, files)}
    if not use_cache:  # parse every file again (artifacts made from them keep their hard links)
        for unit_dir in unit_dirs.values():
            forget_unit(unit_dir)

    examples = orchestrator.run(
        configs.EXAMPLE_GEN, fresh[configs.EXAMPLE_GEN],
        lambda: run_example_gen(config.inputs, fresh[configs.EXAMPLE_GEN], config.example_gen,
                                options, unit_dirs),
        {"files": files}, {"settings": eg_settings},
        lambda d, details: {"examples": [dir_artifact(meta.EXAMPLES, d,
                                                      splits=details["splits"])]})
    examples_dir = examples.output_dir
    if last >= configs.STAGES.index(configs.TRANSFORM):
        check_training_splits(examples.details, config.example_gen.eval_ratio)
    if last < configs.STAGES.index(configs.STATISTICS_GEN):
        return

    def statistics_gen():
        paths = run_statistics_gen(examples_dir, fresh[configs.STATISTICS_GEN], options)
        return {"splits": paths,
                "label_counts": {s: value_counts(load_statistics(
                    fresh[configs.STATISTICS_GEN], s), features.LABEL) for s in paths}}

    stats = orchestrator.run(
        configs.STATISTICS_GEN, fresh[configs.STATISTICS_GEN], statistics_gen,
        {"examples": examples.outputs["examples"]}, {},
        lambda d, _: {"statistics": [dir_artifact(meta.STATISTICS, d)]})
    stats_dir = stats.output_dir
    if last < configs.STAGES.index(configs.SCHEMA_GEN):
        return

    def schema_gen():
        out = fresh[configs.SCHEMA_GEN]
        path, origin = run_schema_gen(stats_dir, available_splits(examples_dir), out,
                                      config.schema_path)
        if origin == "inferred":
            _print_curation_hint(path, config.inputs, run_id)
        return {"schema": path, "origin": origin, "classes": label_classes(load_schema(out))}

    schema_params = {"schema_path": config.schema_path, "schema_sha256": None
                     if config.schema_path == INFER else file_sha256(config.schema_path)}
    schema = orchestrator.run(
        configs.SCHEMA_GEN, fresh[configs.SCHEMA_GEN], schema_gen,
        {"statistics": stats.outputs["statistics"], "examples": examples.outputs["examples"]},
        schema_params, lambda d, _: {"schema": [dir_artifact(meta.SCHEMA, d)]})
    schema_dir = schema.output_dir
    classes = schema.details["classes"]
    if last < configs.STAGES.index(configs.EXAMPLE_VALIDATOR):
        return

    [statistics] = stats.outputs["statistics"]
    previous = previous_statistics(store, statistics)
    if previous is not None and not fileio.is_published(previous.uri):
        recorder.warn(f"the drift reference {previous.uri} (the last accepted training "
                      "statistics) no longer exists, or not whole: drift is not checked in this "
                      "run")
        previous = None

    def validate():
        schema_proto, splits = load_schema(schema_dir), available_splits(examples_dir)
        result = run_example_validator(stats_dir, schema_proto, splits,
                                       fresh[configs.EXAMPLE_VALIDATOR],
                                       previous.uri if previous else None,
                                       config.example_validator)
        messages = [m for r in result["splits"].values() for m in r["messages"]]
        drift = result["drift"] or {}
        reported = messages + drift.get("messages", [])
        warnings = (rare_class_warnings(stats_dir, classes, config.example_validator)
                    if features.TRAIN in splits else [])
        blocking = [m for r in result["splits"].values() if r["blocking"] for m in r["messages"]]
        if drift.get("blocking"):
            blocking += drift["messages"]
        found = {"anomalies": {s: r["messages"] for s, r in result["splits"].items()},
                 "drift": dict(drift, previous_statistics=previous.uri) if previous else None}
        if blocking and not config.allow_anomalies:
            where = fresh[configs.EXAMPLE_VALIDATOR]
            files = ([f"{where}/Split-*/{ANOMALIES_FILE}"] if messages else []) + (
                [f"{where}/{DRIFT_ANOMALIES_FILE}"] if drift.get("blocking") else [])
            raise BlockingAnomaliesError(
                f"data validation found blocking anomalies (see {', '.join(files)}):\n  "
                + "\n  ".join(reported) + "\n"
                + _how_to_go_on(messages, config.schema_path, bool(drift.get("blocking"))),
                details=dict(found, allowed=False))
        return dict(found, allowed=bool(blocking) and config.allow_anomalies,
                    warnings=warnings + [f"anomaly: {m}" for m in reported])

    # Data accepted before is its own reference (MLMD records an artifact once per execution).
    itself = previous is not None and previous.fingerprint == statistics.fingerprint
    validation = orchestrator.run(
        configs.EXAMPLE_VALIDATOR, fresh[configs.EXAMPLE_VALIDATOR], validate,
        {"statistics": [statistics], "schema": schema.outputs["schema"],
         "previous_statistics": [] if itself else [previous]},
        {"settings": dataclasses.asdict(config.example_validator),
         "allow_anomalies": config.allow_anomalies,
         "drift_reference": DRIFT_SELF if itself else None},
        lambda d, _: {"anomalies": [dir_artifact(meta.ANOMALIES, d)]})
    for w in validation.details.get("warnings", []):  # said again when the stage is reused
        recorder.warn(w)
    if last < configs.STAGES.index(configs.TRANSFORM):
        return

    def transform():
        info = run_transform(examples_dir, classes, fresh[configs.TRANSFORM], config.transform,
                             options)
        check_token_counts(info, examples.details)
        return info

    transformed = orchestrator.run(
        configs.TRANSFORM, fresh[configs.TRANSFORM], transform,
        {"examples": examples.outputs["examples"], "schema": schema.outputs["schema"]},
        {"settings": dataclasses.asdict(config.transform)},
        lambda d, _: {"transform_graph": [dir_artifact(meta.TRANSFORM_GRAPH, d,
                                                       SAVED_MODEL_GRAPH)]})
    if last < configs.STAGES.index(configs.TUNER):
        return

    embeddings_sha256 = file_sha256(embeddings) if embeddings else None
    best, hyperparameters = {}, []
    if config.tuner.enabled:
        # The search runs around the Trainer's settings; how long the Trainer trains is not
        # part of it.
        around = {k: v for k, v in dataclasses.asdict(config.trainer).items()
                  if k not in ("epochs", "early_stopping_patience")}
        tuned = orchestrator.run(
            configs.TUNER, fresh[configs.TUNER],
            lambda: run_tuner(transformed.output_dir, fresh[configs.TUNER], config.trainer,
                              config.tuner, given),
            {"transform_graph": transformed.outputs["transform_graph"]},
            {"settings": dataclasses.asdict(config.tuner), "trainer": around, "held": given,
             "embeddings_sha256": embeddings_sha256},
            lambda d, _: {"hyperparameters": [dir_artifact(meta.HYPERPARAMETERS, d)]})
        for message in tuned.details.get("warnings") or []:  # said again when reused
            recorder.warn(f"Tuner: {message}")
        best = load_best(tuned.output_dir)
        hyperparameters = tuned.outputs["hyperparameters"]
    trainer_settings, sources = apply_hyperparameters(config.trainer, best, given)
    if last < configs.STAGES.index(configs.TRAINER):
        return

    trainer = orchestrator.run(
        configs.TRAINER, fresh[configs.TRAINER],
        lambda: dict(run_trainer(transformed.output_dir, fresh[configs.TRAINER],
                                 trainer_settings), hyperparameters=sources),
        {"transform_graph": transformed.outputs["transform_graph"],
         "hyperparameters": hyperparameters},
        {"settings": dataclasses.asdict(trainer_settings),
         "embeddings_sha256": embeddings_sha256},
        lambda d, _: {"model": [dir_artifact(meta.MODEL, fileio.join(d, MODEL_DIR),
                                             SAVED_MODEL_GRAPH)]})
    # Where each value came from is this run's config's doing: a reused training may have been
    # configured otherwise (the same value given explicitly then, say), so it is said anew.
    trainer.details["hyperparameters"] = sources
    model_dir = fileio.join(trainer.output_dir, MODEL_DIR)
    [model] = trainer.outputs["model"]
    if last < configs.STAGES.index(configs.EVALUATOR):
        return

    baseline = resolve_baseline(store, model_base, model, orchestrator)
    evaluation = orchestrator.run(
        configs.EVALUATOR, fresh[configs.EVALUATOR],
        lambda: run_evaluator(examples_dir, model_dir, classes,
                              baseline.uri if baseline else None, fresh[configs.EVALUATOR],
                              config.evaluator, options),
        {"examples": examples.outputs["examples"], "model": [model],
         "schema": schema.outputs["schema"], "baseline_model": [baseline]},
        {"settings": dataclasses.asdict(config.evaluator)},
        lambda d, details: {"evaluation": [dir_artifact(meta.EVALUATION, d)],
                            "blessing": [dir_artifact(meta.BLESSING, d,
                                                      blessed=bool(details["blessed"]))]})
    if last < configs.STAGES.index(configs.PUSHER):
        return

    def pusher():
        dirs = {configs.EXAMPLE_GEN: examples_dir}
        try:
            return run_pusher(evaluation.output_dir, model_dir,
                              push_metadata(config, recorder, dirs), config.pusher,
                              fresh[configs.PUSHER],
                              dict(train_statistics_files(stats_dir),
                                   **{SCHEMA_FILE: fileio.join(schema_dir, SCHEMA_FILE)}))
        except ModelNotBlessedError as e:  # a decision, recorded like any other outcome
            return {"pushed": False, "not_blessed": str(e)}

    push = orchestrator.run(
        configs.PUSHER, fresh[configs.PUSHER], pusher,
        {"model": [model], "blessing": evaluation.outputs["blessing"],
         "schema": schema.outputs["schema"], "statistics": stats.outputs["statistics"]},
        {"settings": dataclasses.asdict(config.pusher)},
        lambda d, details: {"pushed_model": [dir_artifact(
            meta.PUSHED_MODEL, details["path"], SAVED_MODEL_GRAPH, version=details["version"],
            model_fingerprint=model.fingerprint)]} if details.get("pushed", True) else {})
    if push.reused_from:
        recorder.summary["nothing_new"] = True
        what = (f"version {push.details['version']} was pushed by run {push.reused_from}"
                if push.details.get("pushed", True) else
                f"this model was judged not blessed by run {push.reused_from}")
        progress(f"nothing new to do: {what}")
    elif not push.details.get("pushed", True):
        raise ModelNotBlessedError(push.details["not_blessed"])


def previous_statistics(store: MetadataStore, current: Artifact) -> Optional[Artifact]:
    """The training statistics to compare the new data with for drift.

    Those of the newest data the ExampleValidator accepted. When that is the current data
    itself (a rerun): the data it was compared with then, so the rerun has the same inputs and is
    reused; or, if it was accepted with --allow-anomalies, itself (its drift was accepted).
    """
    accepted = store.latest_complete(configs.EXAMPLE_VALIDATOR)
    if accepted is None:
        return None
    [statistics] = accepted.inputs["statistics"]
    params = accepted.properties.get("params")
    params = json.loads(params) if isinstance(params, str) else {}
    if (statistics.fingerprint != current.fingerprint or params.get("allow_anomalies")
            or params.get("drift_reference") == DRIFT_SELF):
        return statistics
    return (accepted.inputs.get("previous_statistics") or [None])[0]


def resolve_baseline(store: MetadataStore, model_base: str, candidate: Artifact,
                     orchestrator: Orchestrator) -> Optional[Artifact]:
    """The model to beat: the newest version this root pushed that is not the candidate itself.

    From the store; a root whose store has recorded no push under `model_base` (a root made
    before lineage existed, or a new root sharing a serving directory) falls back to the newest
    version in the serving directory.
    """
    pushed = store.pushed_models(model_base)
    if pushed:
        others = [a for a in pushed
                  if a.properties.get("model_fingerprint") != candidate.fingerprint]
        return others[0] if others else None
    latest = latest_version_dir(model_base)
    return (orchestrator.known(dir_artifact(meta.PUSHED_MODEL, latest, SAVED_MODEL_GRAPH))
            if latest else None)


def _print_curation_hint(path: str, inputs: Sequence[str], run_id: str) -> None:
    curated = os.path.join(configs.PROJECT_ROOT, "schemas", f"{dataset_name(inputs)}.pbtxt")
    if os.path.exists(curated):  # never suggest overwriting a curated schema
        curated = curated[:-len(".pbtxt")] + f"-{run_id}.pbtxt"
    if not os.path.relpath(curated).startswith(".."):
        curated = os.path.relpath(curated)
    progress(f"SchemaGen: inferred the schema; to curate it (then pass --schema "
             f"{curated}):\n    cp {path} {curated}")


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


def check_token_counts(info: Dict[str, Any], counts: Dict[str, Any]) -> None:
    """The Transform's per-split document counts equal the rows ExampleGen wrote."""
    written = counts["splits"]
    transformed = {s: t["documents"] for s, t in info["token_lengths"].items()}
    if transformed != {s: n for s, n in written.items() if n}:
        raise RuntimeError(f"Transform counts do not reconcile with ExampleGen's: transformed "
                           f"{transformed}, written {written}")


def dataset_name(inputs: Sequence[str]) -> str:
    """A name for the data from its first input: data/news.csv.gz -> news."""
    base = fileio.basename(inputs[0]) if inputs else "data"
    name = base.split(".")[0].strip("*?[]") if not base.startswith(".") else ""
    return name or "data"


def _how_to_go_on(messages: Sequence[str], schema_path: str, drift: bool = False) -> str:
    hints = []
    if drift:
        hints.append("The training data drifted from the data of the last accepted run "
                     "(thresholds: example_validator.drift_label_linf / drift_text_length_jsd). "
                     "If the change is expected, pass --allow-anomalies once: this run's data "
                     "then becomes the reference.")
    if schema_path != INFER and any(f"feature {features.LABEL!r}" in m for m in messages):
        hints.append(
            f"The labels do not match the schema {schema_path}. If this is a new dataset, "
            f"run with `--schema {INFER}` to infer a schema from it (then curate it), or "
            "pass --schema with a schema that lists its classes. If the data is wrong, fix "
            "it; or pass --allow-anomalies to proceed knowingly.")
    elif messages or not drift:
        hints.append("Fix the data or the schema, or pass --allow-anomalies to proceed knowingly.")
    return " ".join(hints)


def git_commit() -> Optional[str]:
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
        "data_fingerprints": {s: fingerprint_dir(fileio.join(examples,
                                                             features.split_dir_name(s)))
                              for s in available_splits(examples)},
        "vocabulary_size": transform.get("vocabulary_size"),
        "classes": transform.get("classes"),
        # What the model was trained with, and whence (the Tuner, the config or a default):
        # `config` holds the trainer table as given.
        "hyperparameters": stages.get(configs.TRAINER, {}).get("hyperparameters"),
        "config": configs.to_dict(config),
        "packages": {p: importlib_metadata.version(p) for p in PACKAGES},
        "git_commit": git_commit(),
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
            splits = ", ".join(f"{s} {details['splits'][s]}" for s in features.SPLITS
                               if details["splits"].get(s))
            lines.append(f"      rows read {details['read']} = written {details['written']} "
                         f"({splits}) + quarantined {details['quarantined']}")
            for reason, n in sorted(details["quarantine_reasons"].items()):
                lines.append(f"      quarantined {n}: {reason}")
            if details.get("units_parsed") is not None:
                lines.append(f"      input files parsed {details['units_parsed']}, reused "
                             f"{details['units_reused']} (parsed before, same content)")
        if stage["name"] == configs.SCHEMA_GEN and details:
            lines.append(f"      schema {details['origin']}: {details['schema']}")
        if stage["name"] == configs.EXAMPLE_VALIDATOR and details:
            n = sum(len(v) for v in details.get("anomalies", {}).values())
            drift = details.get("drift") or {}
            n += len(drift.get("messages", []))
            lines.append(f"      anomalies: {n}" + (" (allowed)" if details.get("allowed") else "")
                         + (f", drift checked against {drift['previous_statistics']}"
                            if drift else ""))
        if stage["name"] == configs.TRANSFORM and details:
            train = (details.get("token_lengths") or {}).get(features.TRAIN) or {}
            truncated = (f", {train['truncated'] / train['documents']:.1%} of training "
                         "documents truncated" if train.get("documents") else "")
            lines.append(f"      vocabulary {details['vocabulary_size']} tokens, max_len "
                         f"{details['max_len']} ({details.get('max_len_source', 'fixed')}"
                         f"{truncated}), {len(details['classes'])} classes")
        if stage["name"] == configs.TUNER and details:
            lines.append(f"      {details['trials_run']} trials ({details['algorithm']}, seed "
                         f"{details['seed']}"
                         + (", stopped by tuner.max_seconds" if details.get("stopped_by_time")
                            else "")
                         + (f", {details['trials_failed']} failed" if details.get("trials_failed")
                            else "")
                         + f"): best trial {details['best_trial']}, eval accuracy "
                         f"{details['best_eval_accuracy']:.3f}")
            lines.append("      best: " + ", ".join(f"{k} {format_value(v)}"
                                                    for k, v in details["values"].items()))
            if details.get("held"):
                lines.append("      held at the config's value: " + ", ".join(
                    f"{k} {format_value(v)}" for k, v in details["held"].items()))
        if stage["name"] == configs.TRAINER and details:
            chosen = details.get("hyperparameters") or {}
            if any(c["source"] != "default" for c in chosen.values()):
                lines.append("      hyperparameters: " + ", ".join(
                    f"{k} {format_value(c['value'])} ({c['source']})"
                    for k, c in chosen.items() if c["source"] != "default")
                    + "; the rest default")
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
            if details.get("pushed", True):
                lines.append(f"      pushed version {details['version']}: {details['path']}")
            else:
                lines.append("      not pushed: the model was not blessed")
    return "\n".join(lines)
