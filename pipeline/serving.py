"""What TF Serving serves: `promote` names a pushed version, `rollback` the one served before.

Each decision rewrites `models.config` (see components/pusher.py) under the lock of the root
that pushed the version, so that it never interleaves with that root's runs (whose Pusher
writes the same file), and is recorded in that root's ML Metadata store as a run (kind
"serving") with one ServingDecision execution whose input is the version's PushedModel
artifact. `runs` lists the decisions; `lineage VERSION` shows when the version was served.
The Evaluator's baseline follows: it is the served version (pipeline/stages.py).
"""
from __future__ import annotations

import getpass
import socket
from typing import Any, Dict, Optional

from components import fileio, pusher
from components.errors import UserInputError
from pipeline import metadata as meta
from pipeline.lock import RootLock

SERVING_PIPELINE = "textcnn-serving"  # the parent context of serving decisions
SERVING_DECISION = "ServingDecision"
PROMOTED, ROLLED_BACK = pusher.PROMOTED, pusher.ROLLED_BACK


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def promote(model_base: str, version: int, metadata_dir: Optional[str] = None,
            pipeline_root: Optional[str] = None) -> Dict[str, Any]:
    """Serves `version` of `model_base` (SERVING_DIR/MODEL_NAME); returns the decision
    ({version, previous, action, time, by, run_id, metadata_dir})."""
    return _decide(model_base, lambda base: version, PROMOTED, metadata_dir, pipeline_root)


def rollback(model_base: str, metadata_dir: Optional[str] = None,
             pipeline_root: Optional[str] = None) -> Dict[str, Any]:
    """Serves again the version served before the current one (still in the serving
    directory); returns the decision."""
    return _decide(model_base, pusher.rollback_target, ROLLED_BACK, metadata_dir, pipeline_root)


def _decide(model_base: str, target, action: str, metadata_dir: Optional[str],
            pipeline_root: Optional[str]) -> Dict[str, Any]:
    from pipeline.pipeline import new_run_id
    from pipeline.scoring import store_dir_for

    base = fileio.absolute(model_base).rstrip("/")
    if not pusher.versions(base):
        raise UserInputError(f"{model_base} holds no complete pushed version (pass "
                             "SERVING_DIR/MODEL_NAME)")
    run_id = new_run_id()
    # The store (and the lock) of the root that pushed the served version; a version whose
    # root is not on this machine is recorded beside the versions (<model>/.metadata).
    anchor = fileio.join(base, str(pusher.served_version(base)))
    store_dir = store_dir_for(anchor, base, metadata_dir, pipeline_root)
    with RootLock(store_dir, run_id, kind="pipeline root (it pushes to this serving directory)"):
        version = target(base)
        pusher.check_version(base, version)
        current = pusher.served_version(base)
        if version == current:
            raise UserInputError(f"version {version} of {model_base} is already served")
        store = meta.MetadataStore(store_dir)
        store.mark_dead_runs(meta.SERVING_RUN)
        store.start_run(SERVING_PIPELINE, run_id, {
            "kind": meta.SERVING_RUN, "model": base, "action": action, "version": version,
            "previous": current})
        version_dir = fileio.join(base, str(version))
        model = store.artifact_by_uri(version_dir, meta.PUSHED_MODEL) or meta.Artifact(
            meta.EXTERNAL, version_dir, pusher.version_fingerprint(version_dir) or "",
            {"role": "model", "version": version})
        execution = store.start_execution(SERVING_DECISION, {"action": action},
                                          {"model": [model]})
        try:
            decision = pusher.serve(base, version, action, by=f"{_who()} (run {run_id})")
        except BaseException as e:
            store.fail_execution(execution, SERVING_DECISION, str(e))
            store.finish_run(run_id, "failed", getattr(e, "exit_code", 1))
            raise
        store.complete_execution(execution, SERVING_DECISION, decision, {})
        store.finish_run(run_id, "succeeded", 0)
    return dict(decision, run_id=run_id, metadata_dir=store_dir)
