"""Content-keyed caching, lineage and resume around the stages (which know nothing of them).

A stage's cache key is a sha256 over its name, its code version (a hash of the sources of the
project modules it runs, followed through their imports, of the wiring, and of the versions of
the pinned libraries they import: `code_version`), its parameters and the content fingerprints
of its input artifacts: never paths or run ids. When an earlier COMPLETE execution in the root's ML
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

import ast
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from components import fileio
from components.artifacts import content_id, fingerprint_dir, local_stat
from components.pusher import is_complete_version
from pipeline import configs
from pipeline import metadata as meta
from pipeline.metadata import Artifact, Execution, MetadataStore

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-data-validation",
            "tensorflow-model-analysis", "tfx-bsl", "tensorflow-metadata", "apache-beam",
            "keras-tuner", "scikit-learn")
# The import names of the pinned libraries. KerasTuner's Bayesian search runs scikit-learn.
_IMPORTS = {"tensorflow": ("tensorflow",), "tf_keras": ("tf-keras",),
            "tensorflow_transform": ("tensorflow-transform",),
            "tensorflow_data_validation": ("tensorflow-data-validation",),
            "tensorflow_model_analysis": ("tensorflow-model-analysis",), "tfx_bsl": ("tfx-bsl",),
            "tensorflow_metadata": ("tensorflow-metadata",), "apache_beam": ("apache-beam",),
            "keras_tuner": ("keras-tuner", "scikit-learn"), "sklearn": ("scikit-learn",)}
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_PACKAGES = ("components", "pipeline")


def _module_path(module: str) -> Optional[str]:
    """The source file of a project module (`components.transform`), or None when the name is
    not a module of the project (a library, or a name imported from a package)."""
    if module.split(".")[0] not in _PROJECT_PACKAGES:
        return None
    base = os.path.join(_PROJECT_ROOT, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imported_names(path: str, module: str = "") -> List[str]:
    """Every module name a source file (of `module`) imports, at the top or inside a function;
    relative imports resolved against its package. Parsed once per version of the file: every
    stage's code version walks the same modules."""
    st = os.stat(path)
    return list(_parsed_imports(path, module, st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=None)
def _parsed_imports(path: str, module: str, mtime_ns: int, size: int) -> Tuple[str, ...]:
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from .fileio import x`, `from . import fileio`
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            if base:
                # `from components import fileio` imports the module components.fileio.
                names += [base] + [f"{base}.{a.name}" for a in node.names]
    return tuple(names)


def module_closure(modules: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """({module: source path}, [pinned distributions]) for `modules` and every project module
    they import, followed transitively (packages' `__init__` included: importing a module runs
    them). Lazy imports inside functions count too: what a stage may run is what it imports."""
    found: Dict[str, str] = {}
    libraries = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = _module_path(module)
        if path is None:
            continue
        found[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
        for name in _imported_names(path, module):
            top = name.split(".")[0]
            if top in _PROJECT_PACKAGES:
                todo.append(name)
            libraries.update(_IMPORTS.get(top, ()))
    return found, sorted(libraries)


def code_version(modules: Sequence[str] = (), wiring: Sequence[str] = ()) -> str:
    """sha256 of the source of `modules` and of the project modules they import (transitively),
    the source of the `wiring` modules (not followed: they call every stage), and the versions
    of the pinned libraries those modules import. With no modules: every stage's and the
    wiring's, the version of the pipeline as a whole.

    A content hash rather than a git commit: an uncommitted edit changes it, and a commit that
    touches only docs, the CLI, the report or the scorer does not. An edit to a stage's module
    changes the version of that stage and of every stage that imports it, no other.
    """
    from importlib import metadata as importlib_metadata

    if not modules:
        from pipeline.stages import STAGE_SPECS, WIRING

        modules = sorted({m for spec in STAGE_SPECS for m in spec.modules})
        wiring = WIRING
    found, libraries = module_closure(modules)
    for module in wiring:
        found[module] = _module_path(module)
    h = hashlib.sha256()
    for module in sorted(found):
        h.update(module.encode() + b"\0")
        with open(found[module], "rb") as f:
            h.update(f.read())
    for package in libraries:
        h.update(f"{package}=={importlib_metadata.version(package)}\0".encode())
    return h.hexdigest()


def input_properties(paths: Sequence[str], recorded: Optional[Mapping[str, object]] = None
                     ) -> Dict[str, object]:
    """{"content_ids": [content_id per path], "stat": [local_stat per path] or None, "paths":
    paths}: the properties an input artifact records. `recorded`: the properties of the same
    input's last record; a local file whose path and stat are those recorded keeps its recorded
    content id without being read (so a folder where one file changed reads that file only)."""
    stats = [local_stat(p) for p in paths]
    known = {}
    if recorded:
        old_paths, old_stats, old_ids = (recorded_value(recorded.get(k))
                                         for k in ("paths", "stat", "content_ids"))
        if (isinstance(old_paths, list) and isinstance(old_stats, list)
                and isinstance(old_ids, list) and len(old_paths) == len(old_stats) == len(old_ids)):
            known = {(p, s): i for p, s, i in zip(old_paths, old_stats, old_ids) if s}
    ids = [known.get((p, s)) if s else None for p, s in zip(paths, stats)]
    ids = [i if i is not None else content_id(p) for p, i in zip(paths, ids)]
    return {"content_ids": ids, "stat": stats if all(stats) else None, "paths": list(paths)}


def recorded_value(value):
    """A property as the metadata store gives it back: lists come back as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


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
    inputs: Dict[str, List[Artifact]] = dataclasses.field(default_factory=dict)
    # Done by an earlier invocation of this same run (a run made stage by stage), kept as it is.
    taken: bool = False


class Orchestrator:
    """Runs one stage at a time: cache look-up, execution, lineage records."""

    def __init__(self, store: MetadataStore, recorder, use_cache: bool = True):
        self.store = store
        self.recorder = recorder
        self.use_cache = use_cache
        self.code = code_version()  # the whole pipeline's, for the run record
        self._stage_code: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], str] = {}

    def code_for(self, modules: Sequence[str], wiring: Sequence[str] = ()) -> str:
        """The code version of a stage that runs `modules` (see `code_version`)."""
        key = (tuple(modules), tuple(wiring))
        if key not in self._stage_code:
            self._stage_code[key] = code_version(modules, wiring)
        return self._stage_code[key]

    def known(self, artifact: Artifact) -> Artifact:
        """The stored artifact with the same type, URI and fingerprint, if any (else `artifact`)."""
        stored = self.store.artifact_by_uri(artifact.uri, artifact.type_name)
        if stored is not None and stored.fingerprint == artifact.fingerprint:
            return stored
        return artifact

    def run(self, stage: str, output_dir: str, fn: Callable[[], Dict[str, Any]],
            inputs: Dict[str, List[Artifact]], params: Dict[str, Any],
            outputs: Callable[[str, Dict[str, Any]], Dict[str, List[Artifact]]],
            code: Optional[str] = None) -> StageResult:
        """Reuses an earlier execution with the same key, or executes `fn` into `output_dir`.

        `outputs(output_dir, details)` describes the artifacts an execution produced; `code` is
        the stage's code version (default: the whole pipeline's).
        """
        inputs = {k: [a for a in v if a is not None] for k, v in inputs.items()}
        code = code or self.code
        key = cache_key(stage, code, params, inputs)
        properties = {"cache_key": key, "code_version": code, "params": params,
                      "output_dir": output_dir}
        cached = self.store.find_cached(stage, key, outputs_live) if self.use_cache else None
        if cached is not None:
            details = cached.properties.get("details") or {}
            directory = cached.properties.get("output_dir") or output_dir
            self.store.cached_execution(stage, properties, inputs, cached)
            self.recorder.reused(stage, directory, details, cached.run_id)
            return StageResult(details, directory, cached.outputs, cached.run_id, inputs)
        execution_id = self.store.start_execution(stage, properties, inputs)
        try:
            details = self.recorder.stage(stage, output_dir, fn)
            produced = outputs(output_dir, details)
        except BaseException as e:
            self.store.fail_execution(execution_id, stage, str(e) or type(e).__name__,
                                      getattr(e, "details", None))
            raise
        self.store.complete_execution(execution_id, stage, details, produced)
        return StageResult(details, output_dir, produced, inputs=inputs)


def outputs_live(execution: Execution) -> bool:
    """Whether an execution's outputs are all still there, whole: its artifact directory is
    published, and a pushed version is complete (`saved_model.pb`, copied last, is there).

    An execution without outputs (a Pusher that judged the model not blessed) wrote no
    directory: its decision, in the store, is all there is to reuse. An output that retention
    (`gc`) removed, or is removing, is not there whatever the disk says: the store marks it
    before the first file goes (a deletion cut short leaves a directory that looks whole).
    """
    if any(a.state in meta.REMOVED_STATES for items in execution.outputs.values() for a in items):
        return False
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
