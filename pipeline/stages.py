"""The stages, declared once: what each reads, its settings, the code it runs, what it writes.

`STAGE_SPECS` is the pipeline: one `StageSpec` per stage, in order, and `run_stages` is the one
loop that runs them (cache look-up, execution or reuse, lineage records, `--until`, progress
lines and timings are the orchestrator's and the recorder's, the same for every stage). Adding a
stage is adding a spec: its functions get the `Run` (the config, the Beam options, the results of
the stages before it) and never see the store, the cache or the command line.

A spec's `modules` are the modules of `components/` whose code its execution runs: its code
version, part of its cache key, hashes them and the project modules they import, so an edit to
`components/scorer.py` re-executes nothing and an edit to `components/transform.py` re-executes
the Transform and what follows it. This file is each stage's wiring and is hashed whole.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from components import features, fileio
from components.artifacts import file_digests, file_sha256, fingerprint_dir, fingerprint_of
from components.drift import DRIFT_ANOMALIES_FILE, train_statistics_files
from components.errors import BlockingAnomaliesError, UserInputError
from components.evaluator import run_evaluator
from components.example_gen import forget_unit, run_example_gen, unit_fingerprint
from components.readers import plan_units
from components.example_validator import (ANOMALIES_FILE, rare_class_warnings,
                                          run_example_validator)
from components.pusher import (WARMUP_REQUESTS, ModelNotBlessedError, run_pusher, sample_texts,
                               history_path, served_version, served_version_dir,
                               version_fingerprint)
from components.schema_gen import (INFER, SCHEMA_FILE, label_classes, load_schema,
                                   run_schema_gen)
from components.statistics_gen import (available_splits, load_statistics, run_statistics_gen,
                                       value_counts)
from components.trainer import MODEL_DIR, run_trainer
from components.transform import run_transform
from components.tuner import apply_hyperparameters, load_best, run_tuner
from pipeline import configs, process_state, results
from pipeline import metadata as meta
from pipeline.launcher import Launcher, LocalLauncher
from pipeline.metadata import Artifact, MetadataStore
from pipeline.release_note import NOTE_FILE, input_lines, release_note
from pipeline.orchestrator import (PACKAGES, SAVED_MODEL_GRAPH, Orchestrator, StageResult,
                                   cache_key, dir_artifact, input_properties, recorded_value)

DRIFT_SELF = "itself"  # the drift reference is the data itself: it was accepted before
UNITS_DIR = ".units"  # ExampleGen's parsed input units, keyed by content, settings and code
WIRING = ("pipeline.stages", "pipeline.process_state")
# Beam stages' workers import this first (a Beam plugin): part of what they run.
_BEAM = ("components.worker_setup",)

Artifacts = Dict[str, List[Optional[Artifact]]]


class Run:
    """What the stages of one run share: the config, the Beam options, where each stage writes
    when it executes, and the results of the stages run so far."""

    def __init__(self, config: configs.PipelineConfig, options, recorder, store: MetadataStore,
                 orchestrator: Orchestrator, progress: Callable[[str], None],
                 launcher: Optional[Launcher] = None,
                 taken: Optional[Dict[str, StageResult]] = None):
        """`taken`: the stages an earlier invocation of this run completed (or reused), by name:
        kept as they are (see `pipeline.pipeline.begin_run`)."""
        self.config = config
        self.launcher = launcher or LocalLauncher()
        self.options = options
        self.recorder = recorder
        self.store = store
        self.orchestrator = orchestrator
        self.progress = progress
        self.run_id = recorder.summary["run_id"]
        self.fresh = {stage: fileio.join(config.pipeline_root, stage, self.run_id)
                      for stage in configs.STAGES}
        self.results: Dict[str, StageResult] = {}
        self.taken = dict(taken or {})
        # Explicit trainer settings win over the Tuner's values, and are held in its search.
        self.given = configs.given_hyperparameters(config)
        self.scratch: Dict[str, Any] = {}  # what a stage's `prepare` found, for its other parts

    def output(self, stage: str) -> str:
        """The artifact directory of an earlier stage of this run (its own or the reused one)."""
        return self.results[stage].output_dir

    def result(self, stage: str):
        """An earlier stage's details, typed (`pipeline.results`)."""
        return results.result_of(stage, self.results[stage].details)

    def artifacts(self, stage: str, name: str) -> List[Artifact]:
        return self.results[stage].outputs[name]

    def local_record_dir(self, name: str) -> str:
        """`runs/<run_id>/<name>` on a local disk (the root, or its metadata directory when the
        root is on object storage): for what local processes write, such as worker logs."""
        local = configs.metadata_dir_for(self.config.pipeline_root, self.config.metadata_dir)
        return os.path.join(local, "runs", self.run_id, name)

    @functools.cached_property
    def embeddings_sha256(self) -> Optional[str]:
        """The pretrained vectors' file, by content (read once, when a stage first needs it)."""
        embeddings = self.config.trainer.model.embeddings
        return file_sha256(embeddings) if embeddings else None

    @property
    def model_base(self) -> str:
        return fileio.join(self.config.pusher.serving_dir, self.config.pusher.model_name)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `execute(run, output_dir)` runs it into `output_dir` and returns its details;
    `inputs(run)` and `params(run)` make its cache key with its code version; `outputs(run,
    output_dir, details)` describes the artifacts it wrote. `prepare(run)` runs first, executed
    or reused (it may resolve an input, e.g. the baseline model), not when an earlier invocation
    of the run completed the stage (its inputs were resolved then); `after(run, result)` runs
    last, executed, reused or kept (what it says is said again on reuse)."""

    name: str
    modules: Tuple[str, ...]
    inputs: Callable[[Run], Artifacts]
    params: Callable[[Run], Dict[str, Any]]
    execute: Callable[[Run, str], Dict[str, Any]]
    outputs: Callable[[Run, str, Dict[str, Any]], Dict[str, List[Artifact]]]
    enabled: Callable[[configs.PipelineConfig], bool] = lambda config: True
    prepare: Optional[Callable[[Run], None]] = None
    after: Optional[Callable[[Run, StageResult], None]] = None


def run_stages(run: Run, until: str, specs: Sequence[StageSpec] = None) -> None:
    """Runs the enabled stages in order up to `until`: each reused or executed by the
    orchestrator, with the code version of its own modules."""
    specs = STAGE_SPECS if specs is None else specs
    last = configs.STAGES.index(until)
    for spec in specs:
        if configs.STAGES.index(spec.name) > last:
            return
        if not spec.enabled(run.config):
            continue
        if spec.name in run.taken:  # no new execution, no second entry in the summary
            result = run.results[spec.name] = run.taken[spec.name]
            run.progress(f"{spec.name}: completed earlier in this run (kept)")
            if spec.after is not None:  # what it says or decides, as on reuse
                spec.after(run, result)
            continue
        if spec.prepare is not None:
            spec.prepare(run)
        out = run.fresh[spec.name]

        def execute():
            with process_state.contained():  # what the stage sets for the process, it unsets
                return spec.execute(run, out)

        result = run.orchestrator.run(
            spec.name, out, execute, spec.inputs(run), spec.params(run),
            lambda d, details: spec.outputs(run, d, details),
            code=run.orchestrator.code_for(spec.modules, WIRING))
        run.results[spec.name] = result
        if spec.after is not None:
            spec.after(run, result)


# --- ExampleGen ---------------------------------------------------------------------------

def _example_gen_settings(run: Run) -> Dict[str, Any]:
    # What the records depend on (in_process_max_bytes only says where parsing runs).
    return {k: v for k, v in dataclasses.asdict(run.config.example_gen).items()
            if k != "in_process_max_bytes"}


def _prepare_example_gen(run: Run) -> None:
    """Each input unit (file, or folder of .txt files) is fingerprinted by content; a unit parsed
    before under the same settings and code is not parsed again."""
    config, orchestrator = run.config, run.orchestrator
    units = plan_units(config.inputs, config.example_gen)
    files = []
    for u in units:
        # Read again only what changed: a local file with the size and time recorded for it
        # keeps its recorded sha256; object storage gives its own checksums.
        recorded = (run.store.artifact_by_uri(u.name, meta.EXTERNAL) if orchestrator.use_cache
                    else None)
        identity = input_properties([path for path, _ in u.items],
                                    recorded.properties if recorded else None)
        ids = identity["content_ids"]
        properties = dict(identity, files=len(u.items))
        if len(u.items) == 1:
            properties["sha256" if fileio.is_local(u.items[0][0]) else "checksum"] = ids[0]
        artifact = Artifact(meta.EXTERNAL, u.name, unit_fingerprint(u, ids), properties)
        known = orchestrator.known(artifact)
        # A record made before stats were kept is superseded, so that the next run has them.
        files.append(known if recorded_value(known.properties.get("stat")) == identity["stat"]
                     else artifact)
    code = orchestrator.code_for(EXAMPLE_GEN_MODULES, WIRING)
    unit_dirs = {u.name: unit_dir(config.pipeline_root, code, _example_gen_settings(run), f)
                 for u, f in zip(units, files)}
    if not orchestrator.use_cache:  # parse every file again (artifacts keep their hard links)
        for directory in unit_dirs.values():
            forget_unit(directory)
    run.scratch["files"], run.scratch["unit_dirs"] = files, unit_dirs


def unit_dir(pipeline_root: str, code: str, settings: Dict[str, Any], unit: Artifact) -> str:
    """Where an input unit (its ExternalArtifact) is parsed to under ExampleGen's code version
    `code` and `settings`: `<root>/ExampleGen/.units/<key>` (pieces of a large unit beside it,
    `<key>-NNNNN-of-NNNNN`). Retention finds the units a run's ExampleGen read by it too."""
    return fileio.join(pipeline_root, configs.EXAMPLE_GEN, UNITS_DIR,
                       cache_key("ExampleGenUnit", code, settings, {"unit": [unit]})[:32])


def _examples_artifact(d: str, details: Dict[str, Any]) -> Artifact:
    """The Examples artifact, fingerprinted once, as a whole and per split (what a pushed
    version records of its data: the Pusher reads these instead of the files)."""
    digests = file_digests(d)
    counts = results.ExampleGenResult.from_details(details)
    splits = {s: fingerprint_of(digests, features.split_dir_name(s))
              for s, n in counts.splits.items() if n}
    return Artifact(meta.EXAMPLES, d, fingerprint_of(digests),
                    {"splits": counts.splits, "split_fingerprints": splits})


def _after_example_gen(run: Run, result: StageResult) -> None:
    if configs.STAGES.index(run.config.until) >= configs.STAGES.index(configs.TRANSFORM):
        check_training_splits(result.details, run.config.example_gen.eval_ratio)


EXAMPLE_GEN_MODULES = ("components.example_gen",) + _BEAM
EXAMPLE_GEN = StageSpec(
    configs.EXAMPLE_GEN, EXAMPLE_GEN_MODULES,
    inputs=lambda run: {"files": run.scratch["files"]},
    params=lambda run: {"settings": _example_gen_settings(run)},
    execute=lambda run, out: run_example_gen(run.config.inputs, out, run.config.example_gen,
                                             run.options, run.scratch["unit_dirs"]),
    outputs=lambda run, d, details: {"examples": [_examples_artifact(d, details)]},
    prepare=_prepare_example_gen, after=_after_example_gen)


# --- StatisticsGen ------------------------------------------------------------------------

def _statistics_gen(run: Run, out: str) -> Dict[str, Any]:
    paths = run_statistics_gen(run.output(configs.EXAMPLE_GEN), out, run.options)
    return {"splits": paths,
            "label_counts": {s: value_counts(load_statistics(out, s), features.LABEL)
                             for s in paths}}


STATISTICS_GEN = StageSpec(
    configs.STATISTICS_GEN, ("components.statistics_gen",) + _BEAM,
    inputs=lambda run: {"examples": run.artifacts(configs.EXAMPLE_GEN, "examples")},
    params=lambda run: {},
    execute=_statistics_gen,
    outputs=lambda run, d, _: {"statistics": [dir_artifact(meta.STATISTICS, d)]})


# --- SchemaGen ----------------------------------------------------------------------------

def _schema_gen(run: Run, out: str) -> Dict[str, Any]:
    path, origin = run_schema_gen(run.output(configs.STATISTICS_GEN),
                                  available_splits(run.output(configs.EXAMPLE_GEN)), out,
                                  run.config.schema_path)
    if origin == "inferred":
        run.progress(curation_hint(path, run.config.inputs, run.run_id))
    return {"schema": path, "origin": origin, "classes": label_classes(load_schema(out))}


SCHEMA_GEN = StageSpec(
    configs.SCHEMA_GEN, ("components.schema_gen",),
    inputs=lambda run: {"statistics": run.artifacts(configs.STATISTICS_GEN, "statistics"),
                        "examples": run.artifacts(configs.EXAMPLE_GEN, "examples")},
    params=lambda run: {"schema_path": run.config.schema_path,
                        "schema_sha256": None if run.config.schema_path == INFER
                        else file_sha256(run.config.schema_path)},
    execute=_schema_gen,
    outputs=lambda run, d, _: {"schema": [dir_artifact(meta.SCHEMA, d)]})


# --- ExampleValidator ---------------------------------------------------------------------

def _prepare_example_validator(run: Run) -> None:
    [statistics] = run.artifacts(configs.STATISTICS_GEN, "statistics")
    previous = previous_statistics(run.store, statistics)
    if previous is not None and not fileio.is_published(previous.uri):
        run.recorder.warn(f"the drift reference {previous.uri} (the last accepted training "
                          "statistics) no longer exists, or not whole: drift is not checked in "
                          "this run")
        previous = None
    run.scratch["previous_statistics"] = previous
    # Data accepted before is its own reference (MLMD records an artifact once per execution).
    run.scratch["drift_itself"] = (previous is not None
                                   and previous.fingerprint == statistics.fingerprint)


def _example_validator(run: Run, out: str) -> Dict[str, Any]:
    config, previous = run.config, run.scratch["previous_statistics"]
    stats_dir, examples_dir = run.output(configs.STATISTICS_GEN), run.output(configs.EXAMPLE_GEN)
    schema_proto, splits = load_schema(run.output(configs.SCHEMA_GEN)), available_splits(
        examples_dir)
    result = run_example_validator(stats_dir, schema_proto, splits, out,
                                   previous.uri if previous else None, config.example_validator)
    messages = [m for r in result["splits"].values() for m in r["messages"]]
    drift = result["drift"] or {}
    reported = messages + drift.get("messages", [])
    classes = run.result(configs.SCHEMA_GEN).classes
    warnings = (rare_class_warnings(stats_dir, classes, config.example_validator)
                if features.TRAIN in splits else [])
    blocking = [m for r in result["splits"].values() if r["blocking"] for m in r["messages"]]
    if drift.get("blocking"):
        blocking += drift["messages"]
    found = {"anomalies": {s: r["messages"] for s, r in result["splits"].items()},
             "drift": dict(drift, previous_statistics=previous.uri) if previous else None}
    if blocking and not config.allow_anomalies:
        files = ([f"{out}/Split-*/{ANOMALIES_FILE}"] if messages else []) + (
            [f"{out}/{DRIFT_ANOMALIES_FILE}"] if drift.get("blocking") else [])
        raise BlockingAnomaliesError(
            f"data validation found blocking anomalies (see {', '.join(files)}):\n  "
            + "\n  ".join(reported) + "\n"
            + _how_to_go_on(messages, config.schema_path, bool(drift.get("blocking"))),
            details=dict(found, allowed=False))
    return dict(found, allowed=bool(blocking) and config.allow_anomalies,
                warnings=warnings + [f"anomaly: {m}" for m in reported])


def _warn_again(run: Run, result: StageResult, prefix: str = "") -> None:
    """A stage's warnings go to this run's record, said again when the stage is reused."""
    for message in result.details.get("warnings") or []:
        run.recorder.warn(f"{prefix}{message}")


EXAMPLE_VALIDATOR = StageSpec(
    configs.EXAMPLE_VALIDATOR, ("components.example_validator",),
    inputs=lambda run: {
        "statistics": run.artifacts(configs.STATISTICS_GEN, "statistics"),
        "schema": run.artifacts(configs.SCHEMA_GEN, "schema"),
        "previous_statistics": [] if run.scratch["drift_itself"]
        else [run.scratch["previous_statistics"]]},
    params=lambda run: {"settings": dataclasses.asdict(run.config.example_validator),
                        "allow_anomalies": run.config.allow_anomalies,
                        "drift_reference": DRIFT_SELF if run.scratch["drift_itself"] else None},
    execute=_example_validator,
    outputs=lambda run, d, _: {"anomalies": [dir_artifact(meta.ANOMALIES, d)]},
    prepare=_prepare_example_validator, after=_warn_again)


# --- Transform ----------------------------------------------------------------------------

def _transform(run: Run, out: str) -> Dict[str, Any]:
    info = run_transform(run.output(configs.EXAMPLE_GEN),
                         run.result(configs.SCHEMA_GEN).classes, out, run.config.transform,
                         run.options)
    check_token_counts(info, run.result(configs.EXAMPLE_GEN))
    return info


TRANSFORM = StageSpec(
    configs.TRANSFORM, ("components.transform",) + _BEAM,
    inputs=lambda run: {"examples": run.artifacts(configs.EXAMPLE_GEN, "examples"),
                        "schema": run.artifacts(configs.SCHEMA_GEN, "schema")},
    params=lambda run: {"settings": dataclasses.asdict(run.config.transform)},
    execute=_transform,
    outputs=lambda run, d, _: {"transform_graph": [dir_artifact(meta.TRANSFORM_GRAPH, d,
                                                                SAVED_MODEL_GRAPH)]},
    after=_warn_again)


# --- Tuner (off unless enabled) -----------------------------------------------------------

def _tuner_params(run: Run) -> Dict[str, Any]:
    # The search runs around the Trainer's settings; how long the Trainer trains is not part of
    # it.
    around = _without(dataclasses.asdict(run.config.trainer), "epochs",
                      "early_stopping_patience", "workers", "worker_timeout_seconds")
    return {"settings": dataclasses.asdict(run.config.tuner), "trainer": around,
            "held": run.given, "embeddings_sha256": run.embeddings_sha256}


TUNER = StageSpec(
    configs.TUNER, ("components.tuner",),
    inputs=lambda run: {"transform_graph": run.artifacts(configs.TRANSFORM, "transform_graph")},
    params=_tuner_params,
    execute=lambda run, out: run_tuner(run.output(configs.TRANSFORM), out, run.config.trainer,
                                       run.config.tuner, run.given),
    outputs=lambda run, d, _: {"hyperparameters": [dir_artifact(meta.HYPERPARAMETERS, d)]},
    enabled=lambda config: config.tuner.enabled,
    after=lambda run, result: _warn_again(run, result, "Tuner: "))


# --- Trainer ------------------------------------------------------------------------------

def _prepare_trainer(run: Run) -> None:
    tuned = run.results.get(configs.TUNER)
    best = load_best(tuned.output_dir) if tuned else {}
    run.scratch["trainer_settings"], run.scratch["hyperparameters"] = apply_hyperparameters(
        run.config.trainer, best, run.given)


def _trainer(run: Run, out: str) -> Dict[str, Any]:
    settings = run.scratch["trainer_settings"]
    if settings.workers > 1:  # worker processes, started by the launcher; the chief writes out
        result = run.launcher.train(run.output(configs.TRANSFORM), out, settings,
                                    run.local_record_dir("trainer-workers"))
    else:
        result = run_trainer(run.output(configs.TRANSFORM), out, settings)
    return dict(result, hyperparameters=run.scratch["hyperparameters"])


def _without(settings: Dict[str, Any], *names: str) -> Dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in names}


def _after_trainer(run: Run, result: StageResult) -> None:
    # Where each value came from is this run's config's doing: a reused training may have been
    # configured otherwise (the same value given explicitly then, say), so it is said anew
    # (a training kept from an earlier invocation of this run says what it said then).
    if not result.taken:
        result.details["hyperparameters"] = run.scratch["hyperparameters"]
    _warn_again(run, result, "Trainer: ")  # e.g. how the workers shared the data


TRAINER = StageSpec(
    configs.TRAINER, ("components.trainer", "components.tuner", "pipeline.launcher"),
    inputs=lambda run: {
        "transform_graph": run.artifacts(configs.TRANSFORM, "transform_graph"),
        "hyperparameters": (run.artifacts(configs.TUNER, "hyperparameters")
                            if configs.TUNER in run.results else [])},
    params=lambda run: {"settings": _without(dataclasses.asdict(
                            run.scratch["trainer_settings"]), "worker_timeout_seconds"),
                        "embeddings_sha256": run.embeddings_sha256},
    execute=_trainer,
    outputs=lambda run, d, _: {"model": [dir_artifact(meta.MODEL, fileio.join(d, MODEL_DIR),
                                                      SAVED_MODEL_GRAPH)]},
    prepare=_prepare_trainer, after=_after_trainer)


def model_dir(run: Run) -> str:
    return fileio.join(run.output(configs.TRAINER), MODEL_DIR)


# --- Evaluator ----------------------------------------------------------------------------

def _prepare_evaluator(run: Run) -> None:
    [model] = run.artifacts(configs.TRAINER, "model")
    run.scratch["baseline"] = resolve_baseline(run.store, run.model_base, model,
                                               run.orchestrator, run.recorder.warn)


def _evaluator(run: Run, out: str) -> Dict[str, Any]:
    baseline = run.scratch["baseline"]
    return run_evaluator(run.output(configs.EXAMPLE_GEN), model_dir(run),
                         run.result(configs.SCHEMA_GEN).classes,
                         baseline.uri if baseline else None, out, run.config.evaluator,
                         run.options)


EVALUATOR = StageSpec(
    configs.EVALUATOR, ("components.evaluator",) + _BEAM,
    inputs=lambda run: {"examples": run.artifacts(configs.EXAMPLE_GEN, "examples"),
                        "model": run.artifacts(configs.TRAINER, "model"),
                        "schema": run.artifacts(configs.SCHEMA_GEN, "schema"),
                        "baseline_model": [run.scratch["baseline"]]},
    params=lambda run: {"settings": dataclasses.asdict(run.config.evaluator)},
    execute=_evaluator,
    outputs=lambda run, d, details: {
        "evaluation": [dir_artifact(meta.EVALUATION, d)],
        "blessing": [dir_artifact(meta.BLESSING, d, blessed=bool(
            results.EvaluatorResult.from_details(details).blessed))]},
    prepare=_prepare_evaluator)


# --- Pusher -------------------------------------------------------------------------------

def _pusher(run: Run, out: str) -> Dict[str, Any]:
    stats_dir, schema_dir = run.output(configs.STATISTICS_GEN), run.output(configs.SCHEMA_GEN)
    metadata = push_metadata(run)
    stages = results.stage_results(run.recorder.summary)
    trainer = next((s for s in run.recorder.summary["stages"] if s["name"] == configs.TRAINER),
                   {})
    note = release_note(run.config.pusher.model_name, metadata, stages,
                        input_lines(run.results[configs.EXAMPLE_GEN].inputs["files"]),
                        trainer.get("seconds"),
                        {name: r.reused_from for name, r in run.results.items() if r.reused_from})
    try:
        return run_pusher(run.output(configs.EVALUATOR), model_dir(run), metadata,
                          run.config.pusher, out,
                          dict(train_statistics_files(stats_dir),
                               **{SCHEMA_FILE: fileio.join(schema_dir, SCHEMA_FILE)}),
                          texts={NOTE_FILE: note},
                          warmup_texts=sample_texts(run.output(configs.EXAMPLE_GEN),
                                                    features.EVAL, WARMUP_REQUESTS),
                          by=f"run {run.run_id}")
    except ModelNotBlessedError as e:  # a decision, recorded like any other outcome
        return {"pushed": False, "not_blessed": str(e)}


def _pushed_outputs(run: Run, d: str, details: Dict[str, Any]) -> Dict[str, List[Artifact]]:
    push = results.PusherResult.from_details(details)
    if not push.pushed:
        return {}
    [model] = run.artifacts(configs.TRAINER, "model")
    return {"pushed_model": [run.orchestrator.known(dir_artifact(
        meta.PUSHED_MODEL, push.path, SAVED_MODEL_GRAPH, version=push.version,
        model_fingerprint=model.fingerprint))]}


def _after_pusher(run: Run, result: StageResult) -> None:
    push = results.PusherResult.from_details(result.details)
    if result.reused_from:
        run.recorder.summary["nothing_new"] = True
        what = (f"version {push.version} was pushed by run {result.reused_from}" if push.pushed
                else f"this model was judged not blessed by run {result.reused_from}")
        served = served_version(run.model_base) if push.pushed else None
        if push.pushed and served != push.version:  # rolled back or replaced since
            what += f"; it is not served now (models.config names version {served})"
        run.progress(f"nothing new to do: {what}")
    elif not push.pushed:
        raise ModelNotBlessedError(push.not_blessed)
    elif push.already_pushed:
        run.recorder.warn(
            f"version {push.version} already held this model (the same fingerprint: pushed "
            "by a run that stopped before recording it, or trained again bit for bit): "
            "recorded as this run's push, not pushed again" + (
                "" if push.served else "; it stays unserved, as decided since it was pushed "
                f"(see {history_path(run.model_base)})"))


PUSHER = StageSpec(
    configs.PUSHER, ("components.pusher", "components.drift", "components.statistics_gen"),
    inputs=lambda run: {"model": run.artifacts(configs.TRAINER, "model"),
                        "blessing": run.artifacts(configs.EVALUATOR, "blessing"),
                        "schema": run.artifacts(configs.SCHEMA_GEN, "schema"),
                        "statistics": run.artifacts(configs.STATISTICS_GEN, "statistics")},
    params=lambda run: {"settings": dataclasses.asdict(run.config.pusher)},
    execute=_pusher, outputs=_pushed_outputs, after=_after_pusher)


STAGE_SPECS: Tuple[StageSpec, ...] = (EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR,
                                      TRANSFORM, TUNER, TRAINER, EVALUATOR, PUSHER)
assert tuple(s.name for s in STAGE_SPECS) == configs.STAGES


# --- what the stages' wiring decides --------------------------------------------------------

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
                     orchestrator: Orchestrator,
                     warn: Callable[[str], None] = lambda message: None
                     ) -> Optional[Artifact]:
    """The model to beat: the version TF Serving serves (the one `models.config` names, after
    a promote or a rollback too; the newest version when it names none), unless that holds the
    candidate itself: then the newest other version this root pushed (from the store).

    A served version the store has no record of (pushed by another root, or before lineage
    existed) is known by its directory.
    """
    served_dir = served_version_dir(model_base)
    pushed = store.pushed_models(model_base)
    if served_dir is None and served_version(model_base) is not None:
        warn(f"models.config names version {served_version(model_base)} of {model_base}, "
             "which is not a complete version (TF Serving cannot serve it): the baseline is "
             "the newest version this root pushed")
    if served_dir is not None:
        artifact = next((a for a in pushed if a.uri == served_dir), None) or \
            orchestrator.known(dir_artifact(meta.PUSHED_MODEL, served_dir, SAVED_MODEL_GRAPH))
        held = (version_fingerprint(served_dir)  # older versions: as the store recorded it
                or artifact.properties.get("model_fingerprint"))
        if held != candidate.fingerprint:
            return artifact
    others = [a for a in pushed if a.properties.get("model_fingerprint") != candidate.fingerprint]
    return others[0] if others else None


def curation_hint(path: str, inputs: Sequence[str], run_id: str) -> str:
    curated = os.path.join(configs.PROJECT_ROOT, "schemas", f"{dataset_name(inputs)}.pbtxt")
    if os.path.exists(curated):  # never suggest overwriting a curated schema
        curated = curated[:-len(".pbtxt")] + f"-{run_id}.pbtxt"
    if not os.path.relpath(curated).startswith(".."):
        curated = os.path.relpath(curated)
    return (f"SchemaGen: inferred the schema; to curate it (then pass --schema "
            f"{curated}):\n    cp {path} {curated}")


def check_training_splits(details: Dict[str, Any], eval_ratio: float) -> None:
    """Training needs rows in Split-train, and in Split-eval for early stopping: ExampleGen's
    `details` (kept as the failed stage's details)."""
    counts = results.ExampleGenResult.from_details(details)
    splits = counts.splits
    if not splits.get(features.TRAIN):
        raise UserInputError(
            f"no row went to Split-train: of {counts.written} usable rows, "
            + ", ".join(f"{n} {s}" for s, n in splits.items() if n)
            + "; leave rows unmarked (or marked train) to train on them", details=details)
    if not splits.get(features.EVAL):
        raise UserInputError(
            f"no row went to Split-eval (early stopping needs it): the hash split sends "
            f"{eval_ratio:.0%} of unmarked rows there and picked none of "
            f"{splits.get(features.TRAIN)}; mark some rows `eval` or raise "
            "example_gen.eval_ratio", details=details)


def check_token_counts(info: Dict[str, Any], counts: results.ExampleGenResult) -> None:
    """The Transform's per-split document counts equal the rows ExampleGen wrote."""
    written = counts.splits
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


def push_metadata(run: Run) -> Dict[str, Any]:
    """What a pushed version records about how it was made."""
    from importlib import metadata as importlib_metadata

    stages = results.stage_results(run.recorder.summary)
    transform = stages.get(configs.TRANSFORM) or results.TransformResult()
    evaluation = stages.get(configs.EVALUATOR) or results.EvaluatorResult()
    examples = run.output(configs.EXAMPLE_GEN)
    [artifact] = run.artifacts(configs.EXAMPLE_GEN, "examples")
    recorded = recorded_value(artifact.properties.get("split_fingerprints"))
    [model] = run.artifacts(configs.TRAINER, "model")
    return {
        "run_id": run.run_id,
        # A version already holding this model is recognised by it (no duplicate push).
        "model_fingerprint": model.fingerprint,
        "metrics": evaluation.metrics.get(results.OVERALL),
        "evaluated_on": evaluation.split,
        # Recorded when ExampleGen published them (computed here for an older record).
        "data_fingerprints": recorded or {
            s: fingerprint_dir(fileio.join(examples, features.split_dir_name(s)))
            for s in available_splits(examples)},
        "vocabulary_size": transform.vocabulary_size,
        "classes": transform.classes or None,
        # What the model was trained with, and whence (the Tuner, the config or a default):
        # `config` holds the trainer table as given.
        "hyperparameters": (stages.get(configs.TRAINER)
                            or results.TrainerResult()).hyperparameters or None,
        "config": configs.to_dict(run.config),
        "window": run.recorder.summary.get("window"),  # the dates read (pipeline/windows.py)
        "packages": {p: importlib_metadata.version(p) for p in PACKAGES},
        "git_commit": git_commit(),
    }
