"""Content-keyed caching, lineage and resume around the stages (which know nothing of them).

A stage's cache key is a sha256 over its name, the code version (a hash of the `components`
sources and the pinned libraries' versions), its parameters and the content fingerprints of its
input artifacts: never paths or run ids. When an earlier COMPLETE execution in the root's ML
Metadata store has the same key and its outputs still exist, the stage is not executed: the run
records a CACHED execution pointing at those outputs and goes on with them. Otherwise the stage
executes into a fresh artifact directory (published atomically by the stage) and the execution
is recorded RUNNING, then COMPLETE with its outputs' fingerprints, or FAILED.

Resume falls out of this: a killed run's completed stages are COMPLETE executions, so the same
command reuses them and executes the rest. What a killed stage left behind (a hidden temporary
directory) is never at an artifact path, and is removed when the next run takes the root.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence

from components.artifacts import fingerprint_dir
from pipeline.metadata import Artifact, MetadataStore

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-data-validation",
            "tensorflow-model-analysis", "tfx-bsl", "tensorflow-metadata", "apache-beam")
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
        cached = self.store.find_cached(stage, key) if self.use_cache else None
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


def clean_stale_temporaries(pipeline_root: str) -> List[str]:
    """Removes what killed runs left: hidden temporaries beside artifacts and parsed units.

    Call with the root's lock held: no live run owns any of them then.
    """
    patterns = [os.path.join(pipeline_root, "*", ".tmp-*"),
                os.path.join(pipeline_root, "*", "*.units"),
                os.path.join(pipeline_root, "*", ".units", "*.tmp-*")]
    removed = []
    for pattern in patterns:
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
