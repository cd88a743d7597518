"""Content-keyed caching, lineage and resume around the stages (which know nothing of them).

A stage's cache key is a sha256 over its name, the code version (a hash of the `components`
sources and the pinned libraries' versions), its parameters and the content fingerprints of its
input artifacts: never paths or run ids. When an earlier COMPLETE execution in the root's ML
Metadata store has the same key and its outputs are still there, published (the stage's
directory has its marker, see `components.fileio.publishing`), the stage is not executed: the
run records a CACHED execution pointing at those outputs and goes on with them. Otherwise the
stage executes into a fresh artifact directory (published by the stage when complete) and the
execution is recorded RUNNING, then COMPLETE with its outputs' fingerprints, or FAILED.

Resume falls out of this: a killed run's completed stages are COMPLETE executions, so the same
command reuses them and executes the rest. What a killed stage left behind (a hidden temporary
directory on a local disk; on object storage an artifact directory without its marker, which
no reader takes for an artifact) is removed when the next run takes the root.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from components import fileio
from components.artifacts import fingerprint_dir
from components.pusher import is_complete_version
from pipeline import configs
from pipeline import metadata as meta
from pipeline.metadata import Artifact, Execution, MetadataStore

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-data-validation",
            "tensorflow-model-analysis", "tfx-bsl", "tensorflow-metadata", "apache-beam",
            "keras-tuner", "scikit-learn")
_COMPONENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "components")
# The wiring decides too (what blocks, which checks run): its source is part of the version.
_WIRING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py")


def code_version() -> str:
    """sha256 of the stages' source files, the wiring's, and the libraries' versions.

    A content hash rather than a git commit: an uncommitted edit changes it, and a commit that
    touches only docs or the CLI does not.
    """
    from importlib import metadata as importlib_metadata

    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(_COMPONENTS_DIR, "*.py"))) + [_WIRING]:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    for package in PACKAGES:
        h.update(f"{package}=={importlib_metadata.version(package)}\0".encode())
    return h.hexdigest()


def cache_key(stage: str, code: str, params: Dict[str, Any],
              inputs: Dict[str, List[Artifact]]) -> str:
    payload = {"stage": stage, "code": code, "params": params,
               "inputs": {name: [a.fingerprint for a in items] for name, items in inputs.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# A SavedModel's graph embeds the temporary paths it was built in (tf.Transform's temp_dir, the
# asset paths), so it differs between executions on the same inputs. What it computes is fixed
# by the code and settings, which are in the cache key; its variables, assets and data are not
# ignored.
SAVED_MODEL_GRAPH = ("saved_model.pb", "fingerprint.pb")


def dir_artifact(type_name: str, uri: str, ignore: Sequence[str] = (), **properties) -> Artifact:
    return Artifact(type_name, uri, fingerprint_dir(uri, ignore), properties)


@dataclasses.dataclass
class StageResult:
    details: Dict[str, Any]
    output_dir: str
    outputs: Dict[str, List[Artifact]]
    reused_from: Optional[str] = None  # the run whose execution was reused


class Orchestrator:
    """Runs one stage at a time: cache look-up, execution, lineage records."""

    def __init__(self, store: MetadataStore, recorder, use_cache: bool = True):
        self.store = store
        self.recorder = recorder
        self.use_cache = use_cache
        self.code = code_version()

    def known(self, artifact: Artifact) -> Artifact:
        """The stored artifact with the same type, URI and fingerprint, if any (else `artifact`)."""
        stored = self.store.artifact_by_uri(artifact.uri, artifact.type_name)
        if stored is not None and stored.fingerprint == artifact.fingerprint:
            return stored
        return artifact

    def run(self, stage: str, output_dir: str, fn: Callable[[], Dict[str, Any]],
            inputs: Dict[str, List[Artifact]], params: Dict[str, Any],
            outputs: Callable[[str, Dict[str, Any]], Dict[str, List[Artifact]]]) -> StageResult:
        """Reuses an earlier execution with the same key, or executes `fn` into `output_dir`.

        `outputs(output_dir, details)` describes the artifacts an execution produced.
        """
        inputs = {k: [a for a in v if a is not None] for k, v in inputs.items()}
        key = cache_key(stage, self.code, params, inputs)
        properties = {"cache_key": key, "code_version": self.code, "params": params,
                      "output_dir": output_dir}
        cached = self.store.find_cached(stage, key, outputs_live) if self.use_cache else None
        if cached is not None:
            details = cached.properties.get("details") or {}
            directory = cached.properties.get("output_dir") or output_dir
            self.store.cached_execution(stage, properties, inputs, cached)
            self.recorder.reused(stage, directory, details, cached.run_id)
            return StageResult(details, directory, cached.outputs, cached.run_id)
        execution_id = self.store.start_execution(stage, properties, inputs)
        try:
            details = self.recorder.stage(stage, output_dir, fn)
            produced = outputs(output_dir, details)
        except BaseException as e:
            self.store.fail_execution(execution_id, stage, str(e) or type(e).__name__,
                                      getattr(e, "details", None))
            raise
        self.store.complete_execution(execution_id, stage, details, produced)
        return StageResult(details, output_dir, produced)


def outputs_live(execution: Execution) -> bool:
    """Whether an execution's outputs are all still there, whole: its artifact directory is
    published, and a pushed version is complete (`saved_model.pb`, copied last, is there).

    An execution without outputs (a Pusher that judged the model not blessed) wrote no
    directory: its decision, in the store, is all there is to reuse.
    """
    output_dir = execution.properties.get("output_dir")
    has_outputs = any(execution.outputs.values())
    if has_outputs and output_dir and not fileio.is_published(output_dir):
        return False
    for items in execution.outputs.values():
        for a in items:
            whole = (is_complete_version(a.uri) if a.type_name == meta.PUSHED_MODEL
                     else fileio.exists(a.uri))
            if not whole:
                return False
    return True


def clean_stale_temporaries(pipeline_root: str, keep: Sequence[str] = (),
                            stages: Sequence[str] = configs.STAGES) -> List[str]:
    """Removes what killed runs left: hidden temporaries beside artifacts and parsed units, and
    artifact directories `<root>/<stage>/<run id>` never published (object storage, where
    stages write in place); returns the paths removed.

    Published artifacts, the parsed units under `<stage>/.units` (which `is_parsed` guards
    itself) and the run records under `runs/` are never touched, nor the directories in `keep`
    (those of executions the store records COMPLETE: artifacts written before stages wrote a
    marker). Call with the root's lock held: no live run owns any of them then.
    """
    patterns = [fileio.join(pipeline_root, "*", ".tmp-*"),
                fileio.join(pipeline_root, "*", "*.units"),  # a run's own units: <run id>.units
                fileio.join(pipeline_root, "*", ".units", "*.tmp-*")]
    removed = []
    for pattern in patterns:
        for path in fileio.glob(pattern):
            if fileio.basename(path) == ".units":  # gfile's `*` matches hidden names too
                continue
            fileio.rmtree(path)
            removed.append(path)
    kept = {fileio.absolute(d).rstrip("/") for d in keep}
    for stage in stages:
        stage_dir = fileio.join(pipeline_root, stage)
        for name in fileio.listdir(stage_dir):
            path = fileio.join(stage_dir, name)
            # Cheapest checks first: on object storage each of the last two is a request.
            if (name.startswith(".") or name.endswith(".units") or path in removed
                    or fileio.absolute(path) in kept or not fileio.isdir(path)
                    or fileio.is_published(path)):
                continue
            fileio.rmtree(path)
            removed.append(path)
    return removed
