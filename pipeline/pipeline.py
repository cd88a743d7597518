"""A run of the pipeline: its Beam flags, its record (summary.json) and the loop over the declared
stages (`pipeline.stages`), each of which gets its input artifact directories and its own
settings, nothing else."""
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import secrets
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from components import PROGRESS_LOGGER, features, fileio
from components.errors import UserInputError
from components.schema_gen import check_schema_path
from components.tuner import format_value, resolve_space
from pipeline import configs, results
from pipeline import metadata as meta
from pipeline.metadata import MetadataStore
from pipeline.orchestrator import Orchestrator, StageResult, recorded_value
from pipeline.stages import Run, git_commit, run_stages  # noqa: F401  (git_commit: the CLI's)


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


def input_bytes(inputs: Sequence[str], settings) -> Optional[int]:
    """The size of the input files (which sets the DirectRunner's default mode), or None when
    they cannot be listed: the stage that reads them then says what is wrong."""
    from components.readers import plan_units, total_bytes

    try:
        return total_bytes(plan_units(inputs, settings))
    except (UserInputError, OSError):
        return None


def progress(message: str) -> None:
    """A line for the person watching the run (stage starts and ends)."""
    logging.getLogger(PROGRESS_LOGGER).info("%s", message)


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """A run id a caller gives (`--run-id`): it names directories (`<root>/<stage>/<run id>`),
    so letters, digits, `.`, `_` and `-` only, starting with a letter or digit."""
    if not _RUN_ID.fullmatch(run_id):
        raise UserInputError(
            f"--run-id {run_id!r} is not a safe directory name: use letters, digits, '.', '_' "
            "and '-' (at most 128), starting with a letter or digit")
    return run_id


def partial_status(until: str) -> str:
    """The status of a run made stage by stage between its parts: not running (no dead-run
    check touches it), to be continued by the next `run --run-id` with the same id."""
    return f"partial (up to {until})"


def begin_run(store: MetadataStore, config: configs.PipelineConfig, run_id: str,
              beam_args: Sequence[str], use_cache: bool,
              window: Optional[Dict[str, Any]] = None
              ) -> Tuple["RunRecorder", Dict[str, StageResult]]:
    """Records the start of run `run_id` (call with the root's lock held): a new run, or, when
    the store already records a pipeline run of that name (a run made stage by stage, one
    invocation per part, as an Airflow DAG runs it), that run continued. Returns its recorder
    and the stages its earlier invocations completed or reused, which are kept as they are:
    no new execution, no second entry in its summary.json. A failed stage is not kept (it runs
    again); its earlier entry moves to the summary's `earlier_attempts`. `window`: the dates
    the run reads (`pipeline.windows.Window.record`), recorded in its summary and properties.
    """
    recorder = RunRecorder(config, run_id, beam_args)
    if window is not None:
        recorder.summary["window"] = window
    properties = {"config": configs.to_dict(config), "beam_args": recorder.summary["beam_args"],
                  "git_commit": git_commit(), "use_cache": use_cache, "summary": recorder.path,
                  "window": window}
    recorded = store.run_properties(run_id)
    if not recorded:
        store.start_run(configs.PIPELINE_NAME, run_id, properties)
        return recorder, {}
    _check_continuable(run_id, recorded, config, window)
    store.continue_run(configs.PIPELINE_NAME, run_id, properties)
    previous = {}
    if fileio.exists(recorder.path):  # not there when the last invocation was killed
        previous = json.loads(fileio.read_text(recorder.path))
    taken = taken_stages(store, run_id, previous.get("stages") or [])
    recorder.carry_over(previous, taken)
    # A stage of this run that is not kept runs again into the same directory: one its
    # earlier try published and never recorded complete (killed while its outputs were
    # fingerprinted, or failing after publishing) is no one's artifact and would block it.
    for stage in configs.STAGES:
        leftover = fileio.join(config.pipeline_root, stage, run_id)
        if stage not in taken and fileio.exists(leftover):
            fileio.rmtree(leftover)
    return recorder, taken


def _check_continuable(run_id: str, recorded: Dict[str, Any], config: configs.PipelineConfig,
                       window: Optional[Dict[str, Any]] = None) -> None:
    """A run is continued only as a pipeline run, with the config it started with (but for
    `until`): its kept stages were made with that config. A run over a date window is
    compared by its input patterns, not by the dates' paths they expanded to: a partition
    landing late (with `allow_missing`) does not change the run."""
    kind = recorded.get("kind") or meta.PIPELINE_RUN
    if kind != meta.PIPELINE_RUN:
        raise UserInputError(f"run {run_id} in this root's store is a {kind} run, not a "
                             "pipeline run: give the pipeline run another --run-id")
    def without_until(values: Dict[str, Any]) -> Dict[str, Any]:
        values = dict(values, until=None)
        values[configs.GIVEN_KEYS] = [k for k in values.get(configs.GIVEN_KEYS) or []
                                      if k != "until"]
        return values

    def as_patterns(values: Dict[str, Any], record: Any) -> Dict[str, Any]:
        record = recorded_value(record) if isinstance(record, str) else record
        if isinstance(record, dict) and record.get("patterns"):
            values["inputs"] = list(record["patterns"])
        return values

    before = as_patterns(without_until(recorded_value(recorded.get("config")) or {}),
                         recorded.get("window"))
    # As the store holds it (JSON: tuples become lists).
    now = as_patterns(without_until(json.loads(json.dumps(configs.to_dict(config),
                                                          sort_keys=True, default=str))),
                      window)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise UserInputError(
            f"run {run_id} was started with another configuration (it differs in "
            f"{', '.join(changed)}): continue it with the flags and config it started with, "
            "or give a new --run-id")


def taken_stages(store: MetadataStore, run_id: str, entries: Sequence[Dict[str, Any]]
                 ) -> Dict[str, StageResult]:
    """The stages the earlier invocations of run `run_id` completed (COMPLETE) or reused
    (CACHED), by name, as the run's later stages read them. Their details come from the run's
    summary (what `after` added included) when it has them, else from the store."""
    recorded = {e["name"]: e for e in entries if e.get("status") in ("ok", "reused")}
    taken = {}
    for execution in store.run_executions(run_id):
        if execution.state not in ("COMPLETE", "CACHED"):
            continue
        entry = recorded.get(execution.stage)
        props = execution.properties
        reused_from = props.get("reused_from") if execution.state == "CACHED" else None
        if entry is not None:
            details, output_dir = entry.get("details") or {}, entry["output"]
        else:
            details = props.get("details") or {}
            source = (store.execution_by_id(props["reused_execution"]) if reused_from
                      else execution)
            output_dir = source.properties.get("output_dir") if source else None
        taken[execution.stage] = StageResult(details, output_dir, execution.outputs,
                                             reused_from, execution.inputs, taken=True)
    return taken


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
        """A warning for the summary (once: a stage kept from an earlier invocation of the run
        says its warnings again) and the report, and the console."""
        warnings = self.summary.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
        logging.getLogger(PROGRESS_LOGGER).warning("warning: %s", message)

    def carry_over(self, previous: Dict[str, Any], taken: Mapping[str, StageResult]) -> None:
        """Continues the record of a run made stage by stage: its start, warnings and the
        entries of the `taken` stages (one per stage, in stage order; a stage the record
        lacks, completed by an invocation killed before it wrote the record, gets one)."""
        self.summary["started"] = previous.get("started") or self.summary["started"]
        if previous.get("warnings"):
            self.summary["warnings"] = list(previous["warnings"])
        entries = {e["name"]: e for e in previous.get("stages") or []
                   if e["name"] in taken and e.get("status") in ("ok", "reused")}
        for name, result in taken.items():
            if name not in entries:
                entries[name] = {"name": name, "output": result.output_dir,
                                 "details": result.details, "seconds": 0.0,
                                 "status": "reused" if result.reused_from else "ok"}
                if result.reused_from:
                    entries[name]["reused_from"] = result.reused_from
        self.summary["stages"] = sorted(entries.values(),
                                        key=lambda e: configs.STAGES.index(e["name"]))
        earlier = list(previous.get("earlier_attempts") or []) + [
            e for e in previous.get("stages") or [] if e["name"] not in entries
            or e is not entries[e["name"]]]
        if earlier:
            self.summary["earlier_attempts"] = earlier
        for entry in self.summary["stages"]:  # done by an earlier invocation of the run
            entry["kept"] = True

    def finish(self, status: str, exit_code: int) -> None:
        self.summary["status"] = status
        self.summary["exit_code"] = exit_code
        self.summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        fileio.replace_text(self.path, json.dumps(self.summary, indent=2, sort_keys=True,
                                                  default=str))


def run_pipeline(config: configs.PipelineConfig, beam_args: Sequence[str],
                 recorder: RunRecorder, store: MetadataStore, use_cache: bool = True,
                 launcher=None, taken: Optional[Mapping[str, StageResult]] = None) -> None:
    """Runs the stages (`pipeline.stages.STAGE_SPECS`) in order up to `config.until`; raises on a
    failed stage.

    Each stage gets the artifact directories of the stages before it (this run's, or an
    earlier run's when the stage was reused) and its own settings; the orchestrator decides
    whether it executes and records the lineage. `beam_args`: every Beam flag of the run
    (`full_beam_args`). `launcher` starts the Trainer's workers when `trainer.workers` > 1
    (default: `pipeline.launcher.LocalLauncher`). `taken`: the stages an earlier invocation of
    this run completed (`begin_run`), kept as they are.
    """
    orchestrator = Orchestrator(store, recorder, use_cache)
    recorder.summary["code_version"] = orchestrator.code
    # What would fail a later stage fails now, before the first one runs.
    check_schema_path(config.schema_path)
    embeddings = config.trainer.model.embeddings
    if embeddings and (not fileio.exists(embeddings) or fileio.isdir(embeddings)):
        raise UserInputError(f"embeddings file {embeddings} does not exist")
    if config.tuner.enabled:
        resolve_space(config.tuner, config.trainer, configs.given_hyperparameters(config))
    run = Run(config, PipelineOptions(list(beam_args)), recorder, store, orchestrator, progress,
              launcher, taken)
    run_stages(run, config.until)


def format_summary(summary: Dict[str, Any]) -> str:
    """A short human summary: stages, durations, counts (from the stages' typed results)."""
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    if summary.get("warnings"):
        lines.append(f"  {len(summary['warnings'])} warning(s), listed in the summary and report")
    for stage in summary["stages"]:
        lines.append(f"  {stage['name']:<17} {stage.get('status', '?'):<7} "
                     f"{stage.get('seconds', 0):>7.1f}s  {stage['output']}")
        if stage.get("details"):
            lines += [f"      {line}" for line in _detail_lines(
                stage["name"], results.result_of(stage["name"], stage["details"]))]
    return "\n".join(lines)


def _detail_lines(name: str, r: results.StageDetails) -> List[str]:
    lines: List[str] = []
    if isinstance(r, results.ExampleGenResult):
        splits = ", ".join(f"{s} {r.splits[s]}" for s in features.SPLITS if r.splits.get(s))
        lines.append(f"rows read {r.read} = written {r.written} ({splits}) + quarantined "
                     f"{r.quarantined}")
        lines += [f"quarantined {n}: {reason}"
                  for reason, n in sorted(r.quarantine_reasons.items())]
        if r.units_parsed is not None:
            lines.append(f"input files parsed {r.units_parsed}, reused {r.units_reused} "
                         "(parsed before, same content)")
    elif isinstance(r, results.SchemaGenResult):
        lines.append(f"schema {r.origin}: {r.schema}")
    elif isinstance(r, results.ExampleValidatorResult):
        lines.append(f"anomalies: {r.count}" + (" (allowed)" if r.allowed else "")
                     + (f", drift checked against {r.drift['previous_statistics']}"
                        if r.drift else ""))
    elif isinstance(r, results.TransformResult):
        share = r.train_truncated_share
        truncated = (f", {share:.1%} of training documents truncated" if share is not None
                     else "")
        lines.append(f"vocabulary {r.vocabulary_size} tokens, max_len {r.max_len} "
                     f"({r.max_len_source}{truncated}), {len(r.classes)} classes")
    elif isinstance(r, results.TunerResult):
        lines.append(f"{r.trials_run} trials ({r.algorithm}, seed {r.seed}"
                     + (", stopped by tuner.max_seconds" if r.stopped_by_time else "")
                     + (f", {r.trials_failed} failed" if r.trials_failed else "")
                     + f"): best trial {r.best_trial}, eval accuracy "
                     f"{r.best_eval_accuracy:.3f}")
        lines.append("best: " + ", ".join(f"{k} {format_value(v)}" for k, v in r.values.items()))
        if r.held:
            lines.append("held at the config's value: " + ", ".join(
                f"{k} {format_value(v)}" for k, v in r.held.items()))
    elif isinstance(r, results.TrainerResult):
        chosen = {k: c for k, c in r.hyperparameters.items() if c["source"] != "default"}
        if chosen:
            lines.append("hyperparameters: " + ", ".join(
                f"{k} {format_value(c['value'])} ({c['source']})" for k, c in chosen.items())
                + "; the rest default")
        scores = ", ".join(f"{split} {v:.3f}" for split, v in r.accuracies.items())
        lines.append(f"{r.epochs_run} epochs (best {r.best_epoch}), {r.train_seconds}s on "
                     f"{r.replicas} replica(s)"
                     + (f" of {r.workers} workers" if r.workers > 1 else "")
                     + f"; accuracy {scores}")
        if r.towers:
            lines.append(f"towers: {r.towers_text()}")
        lines.append(f"model: {r.model}")
    elif isinstance(r, results.EvaluatorResult):
        acc, f1 = (r.overall.get(k) or float("nan") for k in (results.ACCURACY, "macro_f1"))
        lines.append(f"{'BLESSED' if r.blessed else 'NOT BLESSED'} on Split-{r.split}: "
                     f"accuracy {acc:.3f}, macro-F1 {f1:.3f}"
                     + (f" (baseline {r.baseline})" if r.baseline else " (no baseline)"))
        lines += [f"failed: {failure}" for failure in r.failures]
    elif isinstance(r, results.PusherResult):
        lines.append(f"pushed version {r.version}: {r.path}" if r.pushed
                     else "not pushed: the model was not blessed")
    return lines
