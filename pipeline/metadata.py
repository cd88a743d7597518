"""Lineage in ML Metadata: every stage execution of every run, in `<metadata_dir>/metadata.sqlite`.

The store is a SQLite file, so it lives on a local (POSIX) file system: in the pipeline root
when that is local, else in the directory the config names (`metadata_dir`, see
`configs.metadata_dir_for`). Artifact URIs may be anywhere (gs://...).

Artifacts carry TFX's type names and a content fingerprint; executions carry the stage's
parameters, its cache key, the code version, its state and what it reported; each run is a
context (and the whole root one `pipeline` context). Only MLMD's own API is used.

States: RUNNING while a stage executes, COMPLETE when its artifacts are published, FAILED when
it raised, CACHED when a run reused an earlier execution's outputs (its output events point at
those artifacts), CANCELED when its run died (killed) before the stage ended.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Callable, Dict, List, Optional

from components import fileio

STORE_FILE = "metadata.sqlite"
PIPELINE_CONTEXT = "pipeline"
RUN_CONTEXT = "pipeline_run"

# TFX's artifact type names; ExternalArtifact is an input file (or folder) of ExampleGen.
EXTERNAL = "ExternalArtifact"
EXAMPLES = "Examples"
STATISTICS = "ExampleStatistics"
SCHEMA = "Schema"
ANOMALIES = "ExampleAnomalies"
TRANSFORM_GRAPH = "TransformGraph"
HYPERPARAMETERS = "HyperParameters"
MODEL = "Model"
EVALUATION = "ModelEvaluation"
BLESSING = "ModelBlessing"
PUSHED_MODEL = "PushedModel"
INFERENCE_RESULT = "InferenceResult"  # a bulk scoring run's output (TFX's BulkInferrer's)
ARTIFACT_TYPES = (EXTERNAL, EXAMPLES, STATISTICS, SCHEMA, ANOMALIES, TRANSFORM_GRAPH,
                  HYPERPARAMETERS, MODEL, EVALUATION, BLESSING, PUSHED_MODEL, INFERENCE_RESULT)
# MLMD's states of an artifact that retention (`gc`) removes: marked before the first file
# goes, deleted after the last. Neither is ever reused.
MARKED_FOR_DELETION, DELETED = "MARKED_FOR_DELETION", "DELETED"
REMOVED_STATES = (MARKED_FOR_DELETION, DELETED)
# A run's `kind` property: a pipeline run (no property: runs recorded before scoring runs were)
# or a bulk scoring run, which holds its output's lock, not the root's.
PIPELINE_RUN, SCORING_RUN, SERVING_RUN = "pipeline", "scoring", "serving"


@dataclasses.dataclass
class Artifact:
    """An artifact as the orchestration sees it: type, where it is, what its content hashes to."""

    type_name: str
    uri: str
    fingerprint: str
    properties: Dict[str, Any] = dataclasses.field(default_factory=dict)
    id: Optional[int] = None
    # MLMD's state name as stored: LIVE; MARKED_FOR_DELETION, then DELETED, once retention
    # (pipeline/garbage_collection.py) removes it. None for an artifact not stored yet.
    state: Optional[str] = None


@dataclasses.dataclass
class Execution:
    id: int
    stage: str
    state: str
    run_id: str
    properties: Dict[str, Any]
    inputs: Dict[str, List[Artifact]]
    outputs: Dict[str, List[Artifact]]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _set(props, values: Dict[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            props[key].int_value = int(value)
        elif isinstance(value, int):
            props[key].int_value = value
        elif isinstance(value, float):
            props[key].double_value = value
        elif isinstance(value, str):
            props[key].string_value = value
        else:
            props[key].string_value = json.dumps(value, sort_keys=True, default=str)


def _get(props) -> Dict[str, Any]:
    out = {}
    for key, value in props.items():
        kind = value.WhichOneof("value")
        out[key] = getattr(value, kind) if kind else None
    return out


class MetadataStore:
    """A root's MLMD store (SQLite) in the local directory `directory`, created on first use."""

    def __init__(self, directory: str):
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2 as pb

        self._pb = pb
        self.path = os.path.join(directory, STORE_FILE)
        self.existed = os.path.exists(self.path)
        os.makedirs(directory, exist_ok=True)
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = self.path
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)
        self._artifact_types = {name: _put_type(self.store.put_artifact_type,
                                                pb.ArtifactType(name=name))
                                for name in ARTIFACT_TYPES}
        self._type_names = {v: k for k, v in self._artifact_types.items()}
        self._context_types = {name: _put_type(self.store.put_context_type,
                                               pb.ContextType(name=name))
                               for name in (PIPELINE_CONTEXT, RUN_CONTEXT)}
        self._execution_types: Dict[str, int] = {}

    # ------------------------------------------------------------------------------ runs

    def _pipeline(self, pipeline_name: str):
        """The pipeline's context, created on first use."""
        pb = self._pb
        from ml_metadata import errors

        pipeline = self.store.get_context_by_type_and_name(PIPELINE_CONTEXT, pipeline_name)
        if pipeline is None:
            pipeline = pb.Context(type_id=self._context_types[PIPELINE_CONTEXT],
                                  name=pipeline_name)
            try:
                [pipeline.id] = self.store.put_contexts([pipeline])
            except errors.AlreadyExistsError:  # made by another process meanwhile (see _put_type)
                pipeline = self.store.get_context_by_type_and_name(PIPELINE_CONTEXT,
                                                                   pipeline_name)
        return pipeline

    def start_run(self, pipeline_name: str, run_id: str, properties: Dict[str, Any]) -> None:
        pb = self._pb
        pipeline = self._pipeline(pipeline_name)
        run = pb.Context(type_id=self._context_types[RUN_CONTEXT], name=run_id)
        _set(run.custom_properties, dict(properties, status="running", started=_now()))
        [run.id] = self.store.put_contexts([run])
        self.store.put_parent_contexts([pb.ParentContext(child_id=run.id, parent_id=pipeline.id)])
        self._pipeline_context, self._run_context = pipeline, run

    def continue_run(self, pipeline_name: str, run_id: str, properties: Dict[str, Any]) -> None:
        """Opens again a run the store records (a run made stage by stage, one invocation per
        part): its executions so far stay in its context, the next ones join them."""
        run = self.store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
        _set(run.custom_properties, dict(properties, status="running", continued=_now()))
        self.store.put_contexts([run])
        self._pipeline_context, self._run_context = self._pipeline(pipeline_name), run

    def finish_run(self, run_id: str, status: str, exit_code: int) -> None:
        self.set_run_properties(run_id, {"status": status, "exit_code": exit_code,
                                         "finished": _now()})

    def mark_dead_runs(self, kind: str = PIPELINE_RUN, output: Optional[str] = None
                       ) -> List[str]:
        """Runs still "running" while their lock is free died: mark them and their stages.

        Call with the lock held (so no live run of it is "running"): the root's for pipeline
        runs; an output's for the scoring runs into `output` (kind SCORING_RUN).
        """
        pb = self._pb
        dead = []
        for run in self.store.get_contexts_by_type(RUN_CONTEXT):
            props = _get(run.custom_properties)
            if props.get("status") != "running" or (props.get("kind") or PIPELINE_RUN) != kind:
                continue
            if kind == SCORING_RUN and props.get("output") != output:
                continue
            _set(run.custom_properties, {"status": "died", "exit_code": -9})
            self.store.put_contexts([run])
            executions = [e for e in self.store.get_executions_by_context(run.id)
                          if e.last_known_state == pb.Execution.RUNNING]
            for e in executions:
                e.last_known_state = pb.Execution.CANCELED
            if executions:
                self.store.put_executions(executions)
            dead.append(run.name)
        return dead

    def set_run_properties(self, run_id: str, properties: Dict[str, Any]) -> None:
        """Adds (or replaces) properties of a recorded run."""
        run = self.store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
        _set(run.custom_properties, properties)
        self.store.put_contexts([run])

    def runs(self) -> List[Dict[str, Any]]:
        """Every run, oldest first: its properties and its executions by stage."""
        out = []
        for run in sorted(self.store.get_contexts_by_type(RUN_CONTEXT), key=lambda c: c.id):
            executions = [self._execution(e) for e in sorted(
                self.store.get_executions_by_context(run.id), key=lambda e: e.id)]
            out.append(dict(_get(run.custom_properties), run_id=run.name,
                            executions=executions))
        return out

    # ------------------------------------------------------------------------------ executions

    def _execution_type(self, stage: str) -> int:
        if stage not in self._execution_types:
            self._execution_types[stage] = _put_type(self.store.put_execution_type,
                                                     self._pb.ExecutionType(name=stage))
        return self._execution_types[stage]

    def _put_artifact(self, artifact: Artifact, run_id: str) -> int:
        if artifact.id is not None:
            return artifact.id
        pb = self._pb
        a = pb.Artifact(type_id=self._artifact_types[artifact.type_name], uri=artifact.uri,
                        state=pb.Artifact.LIVE)
        _set(a.custom_properties, dict(artifact.properties, fingerprint=artifact.fingerprint,
                                       run_id=run_id))
        [artifact.id] = self.store.put_artifacts([a])
        return artifact.id

    def _put(self, stage: str, state: int, properties: Dict[str, Any],
             inputs: Dict[str, List[Artifact]], outputs: Dict[str, List[Artifact]],
             execution_id: Optional[int] = None) -> int:
        pb = self._pb
        run_id = self._run_context.name
        e = pb.Execution(type_id=self._execution_type(stage), last_known_state=state)
        if execution_id is not None:
            e.id = execution_id
            [old] = self.store.get_executions_by_id([execution_id])
            e.custom_properties.MergeFrom(old.custom_properties)
        _set(e.custom_properties, dict(properties, run_id=run_id))
        pairs = []
        for kind, artifacts in ((pb.Event.INPUT, inputs), (pb.Event.OUTPUT, outputs)):
            for name, items in artifacts.items():
                for index, artifact in enumerate(items):
                    self._put_artifact(artifact, run_id)
                    event = pb.Event(type=kind)
                    event.path.steps.add().key = name
                    event.path.steps.add().index = index
                    pairs.append((pb.Artifact(id=artifact.id), event))
        # Artifacts already stored are only referenced: put_execution must not rewrite them.
        stored = {a.id: a for a in self.store.get_artifacts_by_id([p[0].id for p in pairs])}
        pairs = [(stored[a.id], ev) for a, ev in pairs]
        execution_id, _, _ = self.store.put_execution(
            e, pairs, [self._pipeline_context, self._run_context],
            reuse_context_if_already_exist=True)
        return execution_id

    def start_execution(self, stage: str, properties: Dict[str, Any],
                        inputs: Dict[str, List[Artifact]]) -> int:
        return self._put(stage, self._pb.Execution.RUNNING, dict(properties, started=_now()),
                         inputs, {})

    def complete_execution(self, execution_id: int, stage: str, details: Any,
                           outputs: Dict[str, List[Artifact]]) -> None:
        self._put(stage, self._pb.Execution.COMPLETE, {"details": details, "finished": _now()},
                  {}, outputs, execution_id)

    def fail_execution(self, execution_id: int, stage: str, error: str,
                       details: Any = None) -> None:
        self._put(stage, self._pb.Execution.FAILED,
                  {"error": error, "details": details, "finished": _now()}, {}, {},
                  execution_id)

    def cached_execution(self, stage: str, properties: Dict[str, Any],
                         inputs: Dict[str, List[Artifact]], source: Execution) -> int:
        """Records that this run reused `source`'s outputs."""
        return self._put(stage, self._pb.Execution.CACHED, dict(
            properties, reused_from=source.run_id, reused_execution=source.id,
            details=source.properties.get("details"), started=_now(), finished=_now()),
            inputs, source.outputs)

    def find_cached(self, stage: str, cache_key: str,
                    is_live: Callable[[Execution], bool]) -> Optional[Execution]:
        """The newest COMPLETE execution of `stage` with `cache_key` whose outputs `is_live`
        says are still there, whole."""
        pb = self._pb
        candidates = [e for e in self.store.get_executions_by_type(stage)
                      if e.last_known_state == pb.Execution.COMPLETE
                      and e.custom_properties["cache_key"].string_value == cache_key]
        for e in sorted(candidates, key=lambda e: -e.id):
            execution = self._execution(e)
            if is_live(execution):
                return execution
        return None

    def complete_output_dirs(self) -> List[str]:
        """The output directories of every execution recorded COMPLETE."""
        pb = self._pb
        return [e.custom_properties["output_dir"].string_value
                for e in self.store.get_executions()
                if e.last_known_state == pb.Execution.COMPLETE
                and "output_dir" in e.custom_properties]

    def _execution(self, e) -> Execution:
        pb = self._pb
        inputs: Dict[str, List[Artifact]] = {}
        outputs: Dict[str, List[Artifact]] = {}
        events = self.store.get_events_by_execution_ids([e.id])
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id(
            [ev.artifact_id for ev in events])}
        for ev in sorted(events, key=lambda ev: [s.index for s in ev.path.steps
                                                 if s.HasField("index")]):
            target = inputs if ev.type == pb.Event.INPUT else outputs
            name = next(s.key for s in ev.path.steps if s.HasField("key"))
            target.setdefault(name, []).append(self._artifact(artifacts[ev.artifact_id]))
        props = _get(e.custom_properties)
        if isinstance(props.get("details"), str):
            props["details"] = json.loads(props["details"])
        [type_] = self.store.get_execution_types_by_id([e.type_id])
        return Execution(e.id, type_.name, pb.Execution.State.Name(e.last_known_state),
                         props.get("run_id"), props, inputs, outputs)

    def _artifact(self, a) -> Artifact:
        props = _get(a.custom_properties)
        return Artifact(self._type_names.get(a.type_id, "?"), a.uri,
                        props.pop("fingerprint", ""), props, a.id,
                        self._pb.Artifact.State.Name(a.state))

    # ------------------------------------------------------------------------------ queries

    def pushed_models(self, model_base: str) -> List[Artifact]:
        """PushedModel artifacts under `model_base` that are still complete versions (their
        `saved_model.pb`, copied last, is there), newest first."""
        from components.pusher import is_complete_version

        base = fileio.absolute(model_base).rstrip("/") + "/"
        found = [self._artifact(a) for a in self.store.get_artifacts_by_type(PUSHED_MODEL)
                 if fileio.absolute(a.uri).startswith(base)]
        return sorted((a for a in found if is_complete_version(a.uri)), key=lambda a: -a.id)

    def complete_executions(self, stage: str) -> List[Execution]:
        """Every execution of `stage` that ran to completion, oldest first."""
        return [self._execution(e) for e in sorted(self.store.get_executions_by_type(stage),
                                                   key=lambda e: e.id)
                if e.last_known_state == self._pb.Execution.COMPLETE]

    def latest_complete(self, stage: str) -> Optional[Execution]:
        """The newest execution of `stage` that ran to completion (not a reuse)."""
        done = [e for e in self.store.get_executions_by_type(stage)
                if e.last_known_state == self._pb.Execution.COMPLETE]
        return self._execution(max(done, key=lambda e: e.id)) if done else None

    def producer(self, artifact_id: int) -> Optional[Execution]:
        """The execution that first output the artifact (not a later CACHED reference)."""
        pb = self._pb
        events = [ev for ev in self.store.get_events_by_artifact_ids([artifact_id])
                  if ev.type == pb.Event.OUTPUT]
        executions = [self._execution(e) for e in self.store.get_executions_by_id(
            [ev.execution_id for ev in events])]
        original = [e for e in executions if e.state != "CACHED"] or executions
        return min(original, key=lambda e: e.id) if original else None

    def all_artifacts(self) -> List[Artifact]:
        return [self._artifact(a) for a in self.store.get_artifacts()]

    def set_artifact_state(self, artifact_ids: List[int], state: str) -> None:
        """Sets MLMD's state (a name: "MARKED_FOR_DELETION", "DELETED") of stored artifacts."""
        if not artifact_ids:
            return
        artifacts = self.store.get_artifacts_by_id(list(artifact_ids))
        for a in artifacts:
            a.state = self._pb.Artifact.State.Value(state)
        self.store.put_artifacts(artifacts)

    def artifact_by_uri(self, uri: str, type_name: str) -> Optional[Artifact]:
        matches = [a for a in self.store.get_artifacts_by_uri(uri)
                   if self._type_names.get(a.type_id) == type_name]
        if not matches:  # the same directory spelled differently (relative, trailing slash)
            target = fileio.absolute(uri).rstrip("/")
            matches = [a for a in self.store.get_artifacts_by_type(type_name)
                       if fileio.absolute(a.uri).rstrip("/") == target]
        return self._artifact(max(matches, key=lambda a: a.id)) if matches else None

    def run_executions(self, run_id: str) -> List[Execution]:
        run = self.store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
        if run is None:
            return []
        return [self._execution(e) for e in sorted(self.store.get_executions_by_context(run.id),
                                                   key=lambda e: e.id)]

    def execution_by_id(self, execution_id: int) -> Optional[Execution]:
        found = self.store.get_executions_by_id([execution_id])
        return self._execution(found[0]) if found else None

    def run_properties(self, run_id: str) -> Dict[str, Any]:
        run = self.store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
        return _get(run.custom_properties) if run is not None else {}


def _put_type(put: Callable[[Any], int], type_proto) -> int:
    """MLMD's put_*_type, safe when another process puts the same new type at the same moment:
    processes that share a store without sharing a lock (scoring runs into different outputs,
    beside a pipeline run) may both insert it; the second insert is refused, and putting the
    type again returns the one stored."""
    from ml_metadata import errors

    try:
        return put(type_proto)
    except errors.AlreadyExistsError:
        return put(type_proto)


def open_existing(directory: str) -> Optional[MetadataStore]:
    """The store in the local directory `directory`, or None when it has none (never creates
    one)."""
    if not os.path.exists(os.path.join(directory, STORE_FILE)):
        return None
    return MetadataStore(directory)

