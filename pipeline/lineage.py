"""Questions answered from a root's ML Metadata store: which runs happened, how a version was made."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from components.errors import UserInputError
from components import features, fileio
from components.pusher import served_version, serving_history
from components.tuner import format_value
from pipeline import configs, results, windows
from pipeline import metadata as meta
from pipeline.release_note import NOTE_FILE, input_lines
from pipeline.garbage_collection import REMOVED_BY_GC


_METRICS = ((results.ACCURACY, "accuracy"), ("macro_f1", "macro-F1"),
            ("example_count", "examples"))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def _store(pipeline_root: str, metadata_dir: Optional[str] = None) -> meta.MetadataStore:
    directory = configs.metadata_dir_for(pipeline_root, metadata_dir)
    store = meta.open_existing(directory)
    if store is None:
        where = pipeline_root if directory == fileio.absolute(pipeline_root) else (
            f"{directory} (the metadata directory of {pipeline_root})")
        raise UserInputError(f"{where} has no metadata store ({meta.STORE_FILE}): no run "
                             "has been recorded there")
    return store


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One run a root's store records: when, how it ended, its stages executed and reused, and
    the version it pushed (or reused the push of)."""

    run_id: str
    started: Optional[str]
    status: Optional[str]
    exit_code: Optional[int]
    executed: int
    reused: int
    pushed_version: Optional[int]
    pushed_by: Optional[str]  # the run that pushed it, when this run reused that push
    kind: str = meta.PIPELINE_RUN  # or meta.SCORING_RUN, meta.SERVING_RUN
    scored: Optional[str] = None  # a scoring run's result or a serving decision, in words
    window: Optional[Dict[str, Any]] = None  # the dates a windowed run read (pipeline/windows.py)
    removed_by_gc: Optional[str] = None  # when retention removed its artifacts

    def pushed(self) -> str:
        if self.kind in (meta.SCORING_RUN, meta.SERVING_RUN):
            return self.scored or "-"
        gone = " [artifacts removed by gc]" if self.removed_by_gc else ""
        if self.pushed_version is None:
            return "-" + gone
        return f"version {self.pushed_version}" + (
            f" (pushed by {self.pushed_by})" if self.pushed_by else "") + gone


def list_runs(pipeline_root: str, metadata_dir: Optional[str] = None) -> List[RunInfo]:
    """The runs recorded in a root's metadata store, oldest first."""
    out = []
    for run in _store(pipeline_root, metadata_dir).runs():
        executions = run["executions"]
        pushed = next(((a.properties.get("version"),
                        e.properties.get("reused_from") if e.state == "CACHED" else None)
                       for e in executions for a in e.outputs.get("pushed_model", [])),
                      (None, None))
        out.append(RunInfo(
            run_id=run["run_id"], started=run.get("started"), status=run.get("status"),
            exit_code=run.get("exit_code"),
            executed=sum(1 for e in executions
                         if e.state in ("COMPLETE", "FAILED", "RUNNING", "CANCELED")),
            reused=sum(1 for e in executions if e.state == "CACHED"),
            pushed_version=pushed[0], pushed_by=pushed[1],
            kind=run.get("kind") or meta.PIPELINE_RUN, scored=_scored(run),
            window=windows.recorded(run.get("window")),
            removed_by_gc=run.get(REMOVED_BY_GC)))
    return out


def _scored(run: Dict[str, Any]) -> Optional[str]:
    """What a scoring run or a serving decision did, in words (None for a pipeline run)."""
    if run.get("kind") == meta.SERVING_RUN:
        return (f"{run.get('action')} version {run.get('version')} of {run.get('model')} "
                f"(served before: {run.get('previous')})")
    if run.get("kind") != meta.SCORING_RUN:
        return None
    done = [e for e in run["executions"] if e.state == "COMPLETE"]
    details = done[-1].properties.get("details") if done else None
    if not isinstance(details, dict):
        return f"scoring into {run.get('output')}"
    outcome = details.get("outcome")
    what = (f"scored {details.get('scored')} rows" if outcome == "scored" else
            f"{outcome} ({details.get('scored')} rows)")
    return f"{what} with version {details.get('version')} into {run.get('output')}"


def format_runs(runs: Sequence[RunInfo], pipeline_root: str) -> str:
    """One line per run: id, start, status, exit code, stages executed/reused, pushed version;
    and a windowed run's dates."""
    if not runs:
        return f"no runs recorded in {pipeline_root}"
    # Ids a caller gave (`run --run-id`, an Airflow DAG run's) may be longer than ours.
    width = max([24] + [len(run.run_id) for run in runs])
    lines = [f"{'run':<{width}} {'started':<25} {'status':<20} {'exit':>4}  "
             f"{'executed':>8} {'reused':>6}  pushed (pipeline runs), scored (scoring runs) or "
             "served (promote, rollback)"]
    for run in runs:
        lines.append(f"{run.run_id:<{width}} {run.started or '?':<25} {run.status or '?':<20} "
                     f"{'' if run.exit_code is None else run.exit_code:>4}  {run.executed:>8} "
                     f"{run.reused:>6}  {run.pushed()}"
                     + (f"  [window {_window_brief(run.window)}]" if run.window else ""))
    return "\n".join(lines)


def _window_brief(record: Dict[str, Any]) -> str:
    missing = record.get("dates_missing") or []
    return windows.describe(record) + (f", {len(missing)} missing" if missing else "")


def _recorded_root(version_dir: str) -> Tuple[str, Optional[str]]:
    """(pipeline root, metadata directory or None) that a complete pushed version records."""
    from components.pusher import METADATA_FILE, SAVED_MODEL_PB, is_complete_version

    path = fileio.join(version_dir, METADATA_FILE)
    if not (fileio.exists(path) and is_complete_version(version_dir)):
        raise UserInputError(f"{version_dir} is not a pushed version, or not a complete one "
                             f"(it lacks {METADATA_FILE} or {SAVED_MODEL_PB}); pass "
                             "SERVING_DIR/MODEL_NAME/VERSION")
    config = fileio.read_json(path)["config"]
    return config["pipeline_root"], config.get("metadata_dir")


@dataclasses.dataclass(frozen=True)
class Lineage:
    """What made a pushed version: its run, and per stage (as the store recorded it) what it
    read, did and produced. `text()` reads it out."""

    version: Optional[int]
    path: str
    root: str
    run_id: str
    run: Dict[str, Any]
    config: Optional[Dict[str, Any]]
    stages: Dict[str, Dict[str, Any]]
    served: bool = False  # whether TF Serving serves it now (models.config)
    decisions: Tuple[Dict[str, Any], ...] = ()  # the serving history's entries about it
    release_note: Optional[str] = None  # its RELEASE_NOTE.md

    def text(self) -> str:
        return format_lineage(self)


def lineage(version_dir: str, pipeline_root: Optional[str] = None,
            metadata_dir: Optional[str] = None) -> Lineage:
    """What made a pushed version: its run, and per stage what it read, did and produced.

    The root and its metadata directory default to those the version records."""
    version_dir = version_dir.rstrip("/")
    root = pipeline_root
    if root is None:
        root, recorded_metadata_dir = _recorded_root(version_dir)
        metadata_dir = metadata_dir or recorded_metadata_dir
    store = _store(root, metadata_dir)
    pushed = store.artifact_by_uri(version_dir, meta.PUSHED_MODEL)
    if pushed is None:
        raise UserInputError(f"{version_dir} was not pushed by a run recorded in {root}")
    pusher = store.producer(pushed.id)
    if pusher is None:
        raise UserInputError(f"{version_dir} was not pushed by a run recorded in {root}: the "
                             "store knows it only as a baseline an Evaluator compared with")
    run_id = pusher.run_id
    stages: Dict[str, Dict[str, Any]] = {}
    for e in store.run_executions(run_id):
        stages[e.stage] = {"state": e.state, "reused_from": e.properties.get("reused_from"),
                           "details": e.properties.get("details") or {},
                           "inputs": e.inputs, "outputs": e.outputs,
                           "output_dir": e.properties.get("output_dir")}
    run = store.run_properties(run_id)
    config = run.get("config")
    version = pushed.properties.get("version")
    base = fileio.dirname(version_dir)
    note = fileio.join(version_dir, NOTE_FILE)
    return Lineage(version=version, path=version_dir, root=root, run_id=run_id, run=run,
                   config=json.loads(config) if isinstance(config, str) else config,
                   stages=stages, served=served_version(base) == version,
                   decisions=tuple(d for d in serving_history(base)
                                   if version in (d.get("version"), d.get("previous"))),
                   release_note=note if fileio.exists(note) else None)


def format_lineage(info: Lineage) -> str:
    stages = info.stages
    run = info.run
    lines = [f"version {info.version} ({info.path}) was pushed by run {info.run_id}",
             f"  run started {run.get('started')}, {run.get('status')} (exit "
             f"{run.get('exit_code')}), git commit {run.get('git_commit') or 'unknown'}",
             f"  pipeline root {info.root}"]
    window = windows.recorded(run.get("window"))
    if window:
        lines.append(f"  {windows.summary_line(window)}")
    if run.get(REMOVED_BY_GC):
        lines.append(f"  its artifacts were removed by gc (retention) on {run[REMOVED_BY_GC]}; "
                     "what follows is the store's record of them")

    def how(stage: str) -> str:
        s = stages.get(stage, {})
        return (f"reused from run {s['reused_from']}" if s.get("reused_from")
                else {"COMPLETE": "executed"}.get(s.get("state"), str(s.get("state"))))

    eg = stages.get(configs.EXAMPLE_GEN, {})
    lines.append(f"inputs (ExampleGen {how(configs.EXAMPLE_GEN)}):")
    for item in input_lines(eg.get("inputs", {}).get("files", [])):
        lines.append(f"  {item['uri']}  {item['what']}")

    def typed(stage: str):
        details = stages.get(stage, {}).get("details")
        return results.result_of(stage, details) if details else None

    counts = typed(configs.EXAMPLE_GEN)
    if counts:
        splits = ", ".join(f"{s} {counts.splits[s]}" for s in features.SPLITS
                           if counts.splits.get(s))
        lines.append(f"rows: read {counts.read} = written {counts.written} ({splits}) + "
                     f"quarantined {counts.quarantined}")
    schema = typed(configs.SCHEMA_GEN)
    if schema:
        lines.append(f"schema: {schema.origin} ({schema.schema}), classes "
                     f"{', '.join(map(str, schema.classes))}")
    transform = typed(configs.TRANSFORM)
    if transform:
        lines.append(f"transform ({how(configs.TRANSFORM)}): vocabulary "
                     f"{transform.vocabulary_size} tokens, max_len {transform.max_len}")
    tuner = typed(configs.TUNER)
    if tuner:
        lines.append(f"tuner ({how(configs.TUNER)}): {tuner.algorithm} search, "
                     f"{tuner.trials_run} trials, best trial {tuner.best_trial} "
                     f"(eval accuracy {_number(tuner.best_eval_accuracy)})")
    trainer = typed(configs.TRAINER)
    if trainer:
        lines.append(f"model ({how(configs.TRAINER)}): {trainer.model}, {trainer.epochs_run} "
                     f"epochs (best {trainer.best_epoch})"
                     + (f", {trainer.workers} workers" if trainer.workers > 1 else ""))
        chosen = {k: c for k, c in trainer.hyperparameters.items()
                  if c.get("source") != "default"}
        if chosen:
            lines.append("  hyperparameters: " + ", ".join(
                f"{k} {format_value(c.get('value'))} ({c.get('source')})"
                for k, c in sorted(chosen.items())))
    evaluation = typed(configs.EVALUATOR)
    if evaluation:
        overall = evaluation.overall
        lines.append(f"evaluation ({how(configs.EVALUATOR)}) on Split-{evaluation.split}: "
                     + ", ".join(f"{name} {_number(overall[key])}" for key, name in _METRICS
                                 if isinstance(overall.get(key), (int, float)))
                     + (", BLESSED" if evaluation.blessed else ", NOT BLESSED"))
        if evaluation.baseline:
            acc = evaluation.baseline_overall.get(results.ACCURACY)
            lines.append(f"baseline it beat: {evaluation.baseline}"
                         + (f" (accuracy {acc:.4f})" if isinstance(acc, float) else ""))
        else:
            lines.append("baseline it beat: none (no earlier version to compare with)")
    lines.append(f"served now: {'yes' if info.served else 'no'} (models.config beside "
                 "the model's directory)")
    for d in info.decisions:
        what = (f"{d.get('action')}: served from then" if d.get("version") == info.version
                else f"replaced by version {d.get('version')} ({d.get('action')})")
        lines.append(f"  {d.get('time')}  {what}, by {d.get('by') or '?'}")
    if info.release_note:
        lines.append(f"release note: {info.release_note}")
    lines.append("config: " + json.dumps(info.config, sort_keys=True))
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ScoringLineage:
    """What made a published scoring output: its scoring run as the store recorded it, the
    model version (and the pipeline run that pushed it, when the store knows), the input files
    with their content ids, the counts. `text()` reads it out."""

    output: str
    run_id: str
    run: Dict[str, Any]
    store: str
    summary: Dict[str, Any]
    inputs: Dict[str, List[meta.Artifact]]
    pushed_by: Optional[str]

    def text(self) -> str:
        return format_scoring_lineage(self)


def is_scoring_output(path: str) -> bool:
    from components.scorer import SUMMARY_FILE, SUCCESS_FILE

    return (fileio.exists(fileio.join(path, SUCCESS_FILE))
            and fileio.exists(fileio.join(path, SUMMARY_FILE)))


def scoring_lineage(output: str, metadata_dir: Optional[str] = None) -> ScoringLineage:
    """The lineage of a published scoring output (`score --output`), from the store its
    summary names (or `metadata_dir`)."""
    from components.scorer import published_summary

    output = fileio.local_path(output).rstrip("/")
    summary = published_summary(output)
    if summary is None:
        raise UserInputError(f"{output} holds no published scoring result")
    directory = metadata_dir or summary.get("metadata_dir")
    store = meta.open_existing(directory) if directory else None
    if store is None:
        raise UserInputError(f"the scoring run of {output} was recorded in {directory}, which "
                             "has no metadata store; pass --metadata-dir")
    from pipeline.scoring import BULK_INFERRER

    run_id = summary["run_id"]
    executions = [e for e in store.run_executions(run_id) if e.state == "COMPLETE"]
    if not executions:
        # The run that staged it died before its record was complete; the run that published
        # it (resumed, or found it published) recorded the same request into this output.
        executions = [e for e in store.complete_executions(BULK_INFERRER)
                      if e.properties.get("request") == summary.get("request")
                      and e.properties.get("output") == output]
        if not executions:
            raise UserInputError(f"{directory} has no completed record of scoring run "
                                 f"{run_id}, nor of another run of the same request")
        run_id = executions[-1].run_id
    inputs = executions[-1].inputs
    pushed_by = None
    for model in inputs.get("model", []):
        if model.type_name == meta.PUSHED_MODEL and model.id is not None:
            producer = store.producer(model.id)
            pushed_by = producer.run_id if producer else None
    return ScoringLineage(output=output, run_id=run_id, run=store.run_properties(run_id),
                          store=directory, summary=summary, inputs=inputs, pushed_by=pushed_by)


def format_scoring_lineage(info: ScoringLineage) -> str:
    s, run = info.summary, info.run
    lines = [f"scoring output {info.output} was published by scoring run {info.run_id}",
             f"  run started {run.get('started')}, {run.get('status')} (exit "
             f"{run.get('exit_code')}); recorded in {info.store}"]
    if s.get("resumed_from"):
        lines.append(f"  (it published what run {s['resumed_from']} had staged before it "
                     "stopped)")
    lines.append(f"  model: version {s.get('version')} ({s.get('model')}), content "
                 f"{s.get('model_fingerprint')}")
    lines.append(f"    pushed by pipeline run {info.pushed_by}" if info.pushed_by else
                 "    (no pipeline run in this store pushed it)")
    schema = info.inputs.get("schema", [])
    if schema:
        lines.append(f"  schema: {schema[0].uri} (sha256 {schema[0].fingerprint})")
    files = info.inputs.get("examples", [])
    lines.append(f"  inputs: {len(files)} file{'s' if len(files) != 1 else ''}")
    lines += [f"    {a.uri}  {a.fingerprint}" for a in files]
    lines.append(f"  rows: read {s.get('read')} = scored {s.get('scored')} + quarantined "
                 f"{s.get('quarantined')}")
    for reason, n in sorted((s.get("quarantine_reasons") or {}).items()):
        lines.append(f"    quarantined {n}: {reason}")
    if s.get("labelled"):
        lines.append(f"  accuracy on the {s['labelled']} labelled rows: "
                     f"{_number(s['accuracy'])}")
    if not s.get("statistics", True):
        lines.append("  statistics: off (no validation, no skew check)")
    else:
        lines.append("  anomalies: " + ("; ".join(s.get("anomalies") or []) or "none"))
        skew = s.get("skew") or {}
        lines.append("  skew: " + (f"not checked ({skew['skipped']})" if skew.get("skipped")
                                   else "; ".join(skew.get("messages") or []) or
                                   "none beyond the thresholds"))
    lines.append(f"  output: {s.get('shards')} shard(s) of {', '.join(s.get('formats') or [])}"
                 f" in {info.output}/predictions/")
    return "\n".join(lines)
