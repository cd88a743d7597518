"""Garbage collection (`gc`): the removal of what a pipeline root's retention does not keep.

Every run that changes anything adds artifact directories (`<root>/<Stage>/<run_id>/`), parsed
input units (`<root>/ExampleGen/.units/<key>/`) and a run directory (`<root>/runs/<run_id>/`);
TFX removes none of them (tensorflow/tfx#2484, google/ml-metadata#69). `collect` removes what
no kept run needs (the runs `pipeline.retention.RetentionSettings` keeps), decided by lineage
in the root's ML Metadata store:

- Kept runs: those the settings keep (pipeline/retention.py); always the newest run (the
  next run's cache reads it) and the run in progress (`after_run`).
- What a kept run needs: the inputs and outputs of each of its executions (a CACHED one points
  at the artifacts it reused from an older run, and at that run's directory), its own
  artifact directories, and the parsed units its ExampleGen read (found by the same key
  `stages.unit_dir` parses them to). Also the drift reference the next run compares with (the
  inputs of the newest ExampleValidator that executed).
- Pushed versions beyond `pusher.keep_versions` (when set) go too, never the served one nor
  the one `rollback` would serve.

The store and every run's record in it stay. Each artifact removed is marked in the store,
MARKED_FOR_DELETION before its first file goes and DELETED after its last (as TFX's garbage
collection marks them; a version the Pusher's own `keep_versions` removed is marked DELETED
too), so the cache never reuses it (`orchestrator.outputs_live`), even when a deletion was cut
short; a run whose artifacts went is marked `removed_by_gc`. The file that
makes a directory whole (the publication marker, a unit's counts, a version's
`saved_model.pb`) is removed first, so a cut-short deletion never leaves one that passes for
whole. Call `collect` with the root's lock held (`api.gc` takes it; `api.run` holds it).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from components import fileio
from components.errors import UserInputError
from pipeline.retention import RetentionSettings

# What gc removes, by kind (the order it reports them in).
ARTIFACTS, UNITS, RUN_DIRS, VERSIONS = ("artifact directories", "parsed input units",
                                        "run directories", "pushed versions")
KINDS = (ARTIFACTS, UNITS, RUN_DIRS, VERSIONS)
REMOVED_BY_GC = "removed_by_gc"  # the run property: when gc removed the run's artifacts


@dataclasses.dataclass(frozen=True)
class GcResult:
    """What gc removed (or, in a dry run, would remove): the paths by kind (`KINDS`), the bytes
    that frees (file sizes; a hard-linked file counts once all its links go), the runs kept
    and why, the runs whose artifacts went this time, and the artifacts marked in the store."""

    pipeline_root: str
    dry_run: bool
    deleted: Dict[str, Tuple[str, ...]]
    bytes_freed: int
    kept_runs: Dict[str, str]
    removed_runs: Tuple[str, ...]
    marked_deleted: int

    def count(self, kind: str) -> int:
        return len(self.deleted.get(kind, ()))

    def summary(self) -> Dict[str, Any]:
        """What a run's summary.json records of the gc at its end."""
        return {"removed": {kind: self.count(kind) for kind in KINDS},
                "bytes_freed": self.bytes_freed, "kept_runs": sorted(self.kept_runs),
                "removed_runs": list(self.removed_runs),
                "artifacts_marked_deleted": self.marked_deleted}


@dataclasses.dataclass
class _Plan:
    kept: Dict[str, str]
    removed_runs: List[str]
    paths: Dict[str, List[str]]
    artifact_ids: List[int]


def collect(store, pipeline_root: str, settings: RetentionSettings, metadata_dir: str,
            keep_versions: int = 0, dry_run: bool = False, current_run: Optional[str] = None,
            now: Optional[datetime.datetime] = None) -> GcResult:
    """Removes what no kept run needs from `pipeline_root` (and pushed versions beyond
    `keep_versions`), or only says what, with `dry_run`. Call with the root's lock held.

    `store`: the root's `MetadataStore`, in the local `metadata_dir`. `current_run`: the run
    in progress that calls it (kept, and left "running"); without one, runs still "running"
    died (the lock is held) and are marked so, as `run` marks them.
    """
    from pipeline import metadata as meta

    root = fileio.absolute(pipeline_root).rstrip("/")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    plan = _plan(store, root, settings, metadata_dir, keep_versions, current_run, now)
    paths = [p for kind in KINDS for p in plan.paths[kind]]
    freed = _bytes(paths)
    if not dry_run:
        if current_run is None:
            store.mark_dead_runs()
        store.set_artifact_state(plan.artifact_ids, meta.MARKED_FOR_DELETION)
        stamp = now.isoformat(timespec="seconds")
        for run_id in plan.removed_runs:
            store.set_run_properties(run_id, {REMOVED_BY_GC: stamp})
        for kind in KINDS:
            for path in plan.paths[kind]:
                _remove(kind, path)
        store.set_artifact_state(sorted(set(plan.artifact_ids) | set(_marked_and_gone(store))),
                                 meta.DELETED)
    return GcResult(pipeline_root=root, dry_run=dry_run,
                    deleted={kind: tuple(plan.paths[kind]) for kind in KINDS},
                    bytes_freed=freed, kept_runs=plan.kept,
                    removed_runs=tuple(plan.removed_runs),
                    marked_deleted=len(plan.artifact_ids))


def _plan(store, root: str, settings: RetentionSettings, metadata_dir: str, keep_versions: int,
          current_run: Optional[str], now: datetime.datetime) -> _Plan:
    from components.pusher import is_complete_version
    from pipeline import configs
    from pipeline import metadata as meta
    from pipeline.stages import UNITS_DIR

    runs = [r for r in store.runs() if (r.get("kind") or meta.PIPELINE_RUN) == meta.PIPELINE_RUN]
    versions = _versions_to_remove(runs, keep_versions)
    kept = _kept_runs(runs, settings, current_run, now, set(versions))
    executions = {e.id: e for run in runs for e in run["executions"]}
    needed = set()
    for run in runs:
        if run["run_id"] in kept:
            needed |= _needed_dirs(run["executions"], executions, root)
    drift_reference = store.latest_complete(configs.EXAMPLE_VALIDATOR)
    if drift_reference is not None:  # what the next run's ExampleValidator compares with
        needed |= _needed_dirs([drift_reference], executions, root)
    units = needed_units(root, [e for run in runs if run["run_id"] in kept
                                for e in run["executions"]])

    others = {r["run_id"] for r in runs} - set(kept)
    paths: Dict[str, List[str]] = {kind: [] for kind in KINDS}
    for stage in configs.STAGES:
        stage_dir = fileio.join(root, stage)
        paths[ARTIFACTS] += [fileio.join(stage_dir, name) for name in fileio.listdir(stage_dir)
                             if name in others
                             and fileio.join(stage_dir, name) not in needed]
    units_dir = fileio.join(root, configs.EXAMPLE_GEN, UNITS_DIR)
    paths[UNITS] = [fileio.join(units_dir, name) for name in fileio.listdir(units_dir)
                    if ".tmp-" not in name and not _is_needed_unit(name, units)]
    for base in dict.fromkeys([root, metadata_dir]):  # worker logs go to the local one
        runs_dir = fileio.join(base, "runs")
        paths[RUN_DIRS] += [fileio.join(runs_dir, name) for name in fileio.listdir(runs_dir)
                            if name in others]
    paths[VERSIONS] = sorted(versions)

    gone = {fileio.absolute(p).rstrip("/") for p in paths[ARTIFACTS] + paths[VERSIONS]}
    stored = [a for a in store.all_artifacts()
              if a.type_name != meta.EXTERNAL and a.state not in meta.REMOVED_STATES]
    artifact_ids = [a.id for a in stored if _artifact_dir(a.uri, root) in gone
                    or fileio.absolute(a.uri).rstrip("/") in gone]
    # Versions the Pusher's keep_versions removed when it pushed are marked too.
    artifact_ids += [a.id for a in stored if a.type_name == meta.PUSHED_MODEL
                     and a.id not in artifact_ids and not is_complete_version(a.uri)]
    removed = [r["run_id"] for r in runs
               if r["run_id"] in others and not r.get(REMOVED_BY_GC)]
    return _Plan(kept, removed, paths, artifact_ids)


def _kept_runs(runs: Sequence[Dict[str, Any]], settings: RetentionSettings,
               current_run: Optional[str], now: datetime.datetime,
               removed_versions: Set[str]) -> Dict[str, str]:
    """{run id: why it is kept}, newest first."""
    kept: Dict[str, str] = {}
    if current_run:
        kept[current_run] = "this run"
    if runs:
        kept.setdefault(runs[-1]["run_id"], "the newest run")
    newest = {r["run_id"] for r in runs[-settings.keep_runs:]} if settings.keep_runs else set()
    # Partial runs newer than the newest run that ended are still being made; older ones were
    # abandoned (a DAG run given up), and go by the rules like any other.
    ended = [i for i, r in enumerate(runs)
             if not str(r.get("status") or "").startswith("partial")]
    in_progress = {r["run_id"] for r in runs[(ended[-1] + 1 if ended else 0):]}
    for run in reversed(runs):
        run_id = run["run_id"]
        if not settings.limited:
            kept.setdefault(run_id, "no limit set")
        if run_id in newest:
            kept.setdefault(run_id, f"one of the newest {settings.keep_runs}")
        if run_id in in_progress:  # made stage by stage (Airflow): its next part continues it
            kept.setdefault(run_id, "partial: its next part continues it")
        if settings.keep_days and _started_within(run.get("started"), settings.keep_days, now):
            kept.setdefault(run_id, f"started within {settings.keep_days} days")
        if settings.keep_pushed_lineage:
            version = _pushed_version_still_there(run["executions"], removed_versions)
            if version:
                kept.setdefault(run_id, f"pushed {version}, still in the serving directory")
    return kept


def _started_within(started: Optional[str], days: int, now: datetime.datetime) -> bool:
    try:
        when = datetime.datetime.fromisoformat(started)
    except (TypeError, ValueError):
        return True  # a run that does not say when it started is kept
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when >= now - datetime.timedelta(days=days)


def _pushed_version_still_there(executions, removed_versions: Set[str]) -> Optional[str]:
    """The version a run's Pusher executed to push (not a reused push) when it is still a
    complete version in the serving directory and gc keeps it."""
    from components.pusher import is_complete_version
    from pipeline import configs

    for e in executions:
        if e.stage != configs.PUSHER or e.state != "COMPLETE":
            continue
        for a in e.outputs.get("pushed_model", []):
            uri = a.uri.rstrip("/")
            if uri not in removed_versions and is_complete_version(uri):
                return uri
    return None


def _versions_to_remove(runs: Sequence[Dict[str, Any]], keep_versions: int) -> List[str]:
    """The version directories beyond `keep_versions` in each model directory this root
    pushed to, less the served one and the one `rollback` would serve."""
    from components.pusher import prunable_versions, rollback_target
    from pipeline import configs

    if not keep_versions:
        return []
    bases = sorted({fileio.dirname(a.uri.rstrip("/")) for run in runs for e in run["executions"]
                    if e.stage == configs.PUSHER for a in e.outputs.get("pushed_model", [])})
    out = []
    for base in bases:
        try:
            protect = [rollback_target(base)]
        except UserInputError:  # nothing to roll back to
            protect = []
        out += [fileio.join(base, str(v)) for v in prunable_versions(base, keep_versions,
                                                                     protect)]
    return out


def _needed_dirs(executions, by_id: Dict[int, Any], root: str) -> Set[str]:
    """The artifact directories under `root` that these executions read or wrote: their input
    and output artifacts (a reused execution's point at the older run's), their own output
    directory, and the output directory of the execution a CACHED one reused."""
    paths = [a.uri for e in executions
             for items in list(e.inputs.values()) + list(e.outputs.values()) for a in items]
    for e in executions:
        source = by_id.get(e.properties.get("reused_execution")) if e.state == "CACHED" else e
        if source is not None and source.properties.get("output_dir"):
            paths.append(source.properties["output_dir"])
    return {d for d in (_artifact_dir(p, root) for p in paths) if d}


def needed_units(root: str, executions) -> Set[str]:
    """The names (keys) of the parsed units under `<root>/ExampleGen/.units` that these
    executions' ExampleGen read: each input unit's key under the execution's code version and
    settings, as `stages.unit_dir` made it when it parsed them."""
    from pipeline import configs
    from pipeline.orchestrator import recorded_value
    from pipeline.stages import unit_dir

    keys = set()
    for e in executions:
        if e.stage != configs.EXAMPLE_GEN:
            continue
        params = recorded_value(e.properties.get("params")) or {}
        code = e.properties.get("code_version")
        for unit in e.inputs.get("files", []):
            keys.add(fileio.basename(unit_dir(root, code, params.get("settings"), unit)))
    return keys


def _is_needed_unit(name: str, keys: Set[str]) -> bool:
    # A large unit is parsed in pieces beside its directory: <key>-00000-of-00004.
    return name in keys or name.split("-", 1)[0] in keys


def _artifact_dir(path: str, root: str) -> Optional[str]:
    """The directory gc removes whole that `path` lies in: `<root>/<Stage>/<name>`, or a unit
    `<root>/ExampleGen/.units/<key>`; None outside the root's stage directories."""
    from pipeline import configs
    from pipeline.stages import UNITS_DIR

    path = fileio.absolute(path).rstrip("/")
    if not path.startswith(root + "/"):
        return None
    parts = path[len(root) + 1:].split("/")
    if len(parts) < 2 or parts[0] not in configs.STAGES:
        return None
    if parts[1] == UNITS_DIR:
        return fileio.join(root, *parts[:3]) if len(parts) >= 3 else None
    return fileio.join(root, parts[0], parts[1])


def _marked_and_gone(store) -> List[int]:
    """Artifacts marked for deletion by a gc that stopped before marking them deleted, whose
    files are gone now."""
    from pipeline import metadata as meta

    return [a.id for a in store.all_artifacts()
            if a.state == meta.MARKED_FOR_DELETION and not fileio.exists(a.uri)]


def _remove(kind: str, path: str) -> None:
    """Removes a directory, first the file that makes it whole (see the module docstring)."""
    from components.pusher import remove_version
    from components.readers import COUNTS_FILE

    if kind == VERSIONS:  # saved_model.pb first: the Pusher's own pruning, one rule
        remove_version(path)
        return
    first = {ARTIFACTS: fileio.MARKER, UNITS: COUNTS_FILE}.get(kind)
    if first:
        fileio.rmtree(fileio.join(path, first))
    fileio.rmtree(path)


def _bytes(paths: Iterable[str]) -> int:
    """The bytes removing `paths` frees: the sizes of their files, a local file with hard links
    counted only when every link is among them (ExampleGen links its split files to the
    parsed units)."""
    total = 0
    links: Dict[Tuple[int, int], List[int]] = {}  # (device, inode) -> [size, nlink, seen]
    for path in paths:
        if fileio.is_local(path):
            for parent, _, files in os.walk(fileio.local_path(path)):
                for name in files:
                    st = os.lstat(os.path.join(parent, name))
                    seen = links.setdefault((st.st_dev, st.st_ino), [st.st_size, st.st_nlink, 0])
                    seen[2] += 1
        else:
            import tensorflow as tf

            for parent, _, files in fileio.walk(path):
                total += sum(tf.io.gfile.stat(fileio.join(parent, name)).length
                             for name in files)
    return total + sum(size for size, nlink, seen in links.values() if seen >= nlink)


def removed_at(store, run_id: str) -> Optional[str]:
    """When gc removed a run's artifacts (None: it did not)."""
    return store.run_properties(run_id).get(REMOVED_BY_GC)


def format_gc(result: GcResult, verbose: bool = False) -> str:
    """gc's answer as the CLI prints it: a line per kind (each path too, `verbose` or in a dry
    run), the runs kept and why, the bytes freed."""
    dry = result.dry_run
    lines = [f"gc{' --dry-run' if dry else ''} {result.pipeline_root}: "
             f"{'would remove' if dry else 'removed'} the artifacts of "
             f"{len(result.removed_runs)} run(s); kept {len(result.kept_runs)} run(s):"]
    lines += [f"  {run_id}  {why}" for run_id, why in result.kept_runs.items()]
    for kind in KINDS:
        lines.append(f"{kind}: {result.count(kind)} {'to remove' if dry else 'removed'}")
        if verbose or dry:
            lines += [f"  {path}" for path in result.deleted[kind]]
    size = _size(result.bytes_freed)
    if not size.endswith(" bytes"):
        size += f" ({result.bytes_freed} bytes)"
    lines.append(f"{'would free' if dry else 'freed'} {size}; {result.marked_deleted} "
                 f"artifact(s) {'to mark' if dry else 'marked'} DELETED in ML Metadata")
    return "\n".join(lines)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KB"
    for bigger in ("MB", "GB"):
        if value >= 1024:
            value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
