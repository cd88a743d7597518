"""A bulk scoring run's life: its output's lock, its record in ML Metadata, the scorer.

One scoring run per output at a time. On a local disk the lock is `OUTPUT/.lock` (flock, as
the pipeline root's: released by the kernel however the holder dies). Object storage has no
locks, so an output there is locked in the store's directory (`scoring-locks/<hash of the
output URL>/.lock`): that guards it only among runs that share that directory.

Each run is recorded in ML Metadata as a run (kind "scoring") with one BulkInferrer execution
(TFX's name for the stage): its inputs are the model version (the Pusher's PushedModel
artifact when the store holds it) and the input files with their content ids; its output an
InferenceResult artifact (the output directory, fingerprinted by the request). Which store:
`metadata_dir`, else that of `pipeline_root`, else that of the pipeline that pushed the
version (its metadata.json names it) when it is on this machine, else `OUTPUT/.metadata/`
(a local output). `runs` lists scoring runs beside pipeline runs; `lineage OUTPUT` reads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Dict, Optional, Sequence

from components import fileio
from components.errors import UserInputError
from pipeline import configs
from pipeline import metadata as meta
from pipeline.lock import LOCK_FILE, RootLock

SCORING_PIPELINE = "textcnn-scoring"  # the parent context of scoring runs
BULK_INFERRER = "BulkInferrer"
LOCAL_STORE_DIR = ".metadata"  # in a local output, when no other store is named or found
LOCKS_DIR = "scoring-locks"


def store_dir_for(model_dir: str, output: str, metadata_dir: Optional[str] = None,
                  pipeline_root: Optional[str] = None) -> str:
    """The local directory of the ML Metadata store that records a scoring run (see above)."""
    from components.pusher import METADATA_FILE

    if metadata_dir or pipeline_root:
        return configs.metadata_dir_for(pipeline_root or "", metadata_dir)
    try:
        recorded = fileio.read_json(fileio.join(model_dir, METADATA_FILE)).get("config") or {}
        pushed_by = configs.metadata_dir_for(recorded["pipeline_root"],
                                             recorded.get("metadata_dir"))
        if os.path.exists(os.path.join(pushed_by, meta.STORE_FILE)):
            return pushed_by
    except (KeyError, TypeError, ValueError, OSError, UserInputError):
        pass  # a version copied from elsewhere, or pushed before versions named their root
    if fileio.is_local(output):
        return os.path.join(fileio.local_path(output), LOCAL_STORE_DIR)
    raise UserInputError(
        f"the output {output} is not on this machine and no ML Metadata store was found for "
        "the scoring run (the pipeline that pushed the model is not on this machine): pass "
        "--metadata-dir DIR (or --pipeline-root ROOT) to record it there")


def lock_dir_for(output: str, store_dir: str) -> str:
    if fileio.is_local(output):
        return fileio.local_path(output)
    return os.path.join(store_dir, LOCKS_DIR,
                        hashlib.sha256(output.encode("utf-8")).hexdigest()[:24])


def _artifacts(store: meta.MetadataStore, request) -> Dict[str, list]:
    """The execution's inputs: the model version and the input files."""
    model = store.artifact_by_uri(request.model_dir, meta.PUSHED_MODEL) or meta.Artifact(
        meta.EXTERNAL, request.model_dir, request.model_fingerprint,
        {"role": "model", "version": request.version})
    return {"model": [model],
            "examples": [meta.Artifact(meta.EXTERNAL, path, content)
                         for path, content in request.inputs],
            "schema": [meta.Artifact(meta.EXTERNAL, request.schema_path, request.schema_sha256,
                                     {"role": "schema"})]}


_DETAILS = ("outcome", "version", "model_fingerprint", "read", "scored", "quarantined",
            "quarantine_reasons", "labelled", "accuracy", "anomalies", "skew", "shards",
            "formats", "statistics", "run_id", "request")


def score(model: str, version: Optional[int], inputs: Sequence[str], output: str,
          schema: Optional[str], config: configs.PipelineConfig, settings, beam_options,
          overwrite: bool = False, metadata_dir: Optional[str] = None,
          pipeline_root: Optional[str] = None, run_id: Optional[str] = None,
          beam_args: Sequence[str] = ()) -> Dict[str, Any]:
    """Runs `components.scorer.run_score` under the output's lock and records it; returns the
    summary (with the store's directory, the run id and the outcome)."""
    from components.errors import BlockingAnomaliesError
    from components.scorer import resolve_model, run_score
    from pipeline.pipeline import new_run_id

    output = fileio.local_path(output).rstrip("/")
    model_dir, _ = resolve_model(fileio.absolute(model), version)  # as run_score resolves it
    store_dir = store_dir_for(model_dir, output, metadata_dir, pipeline_root)
    run_id = run_id or new_run_id()
    with RootLock(lock_dir_for(output, store_dir), run_id, root=output, kind="scoring output"):
        store = meta.MetadataStore(store_dir)
        store.mark_dead_runs(meta.SCORING_RUN, output)
        store.start_run(SCORING_PIPELINE, run_id, {
            "kind": meta.SCORING_RUN, "model": model_dir, "output": output,
            "inputs": list(inputs), "settings": dataclasses.asdict(settings),
            "beam_args": list(beam_args)})
        execution: Dict[str, Any] = {}

        def started(request) -> None:
            execution["id"] = store.start_execution(
                BULK_INFERRER, {"request": request.fingerprint, "output": output},
                _artifacts(store, request))

        try:
            summary = run_score(model, version, inputs, output, schema, config.schema_path,
                                config.example_gen, settings, beam_options,
                                overwrite=overwrite,
                                run={"run_id": run_id, "metadata_dir": store_dir},
                                keep=(LOCK_FILE, LOCAL_STORE_DIR), on_request=started)
        except BaseException as e:
            code = getattr(e, "exit_code", 1)
            if "id" in execution:
                store.fail_execution(execution["id"], BULK_INFERRER, str(e))
            status = ("blocked by anomalies" if isinstance(e, BlockingAnomaliesError)
                      else "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            store.finish_run(run_id, status, code if isinstance(code, int) else 1)
            raise
        details = {k: summary.get(k) for k in _DETAILS}
        store.complete_execution(execution["id"], BULK_INFERRER, details, {
            "inference_result": [meta.Artifact(meta.INFERENCE_RESULT, output, summary["request"],
                                               {"version": summary["version"],
                                                "rows": summary["scored"]})]})
        store.finish_run(run_id, "succeeded", 0)
    return dict(summary, metadata_dir=store_dir, this_run=run_id)
