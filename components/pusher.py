"""Pusher: a blessed model becomes `<serving_dir>/<model_name>/<version>/`, the layout TF Serving polls.

`saved_model.pb` is always copied last: TF Serving takes it as the sign that a version is
complete, and so does `versions()`. On a local disk a version is assembled in a hidden
temporary directory beside the versions (same filesystem), then renamed into place in one step:
a crash leaves at most a hidden `.tmp-*` directory. On object storage (gs://, s3://), which has
no atomic rename, it is written in place: a crash leaves a numbered directory without
`saved_model.pb`, which nothing loads and the next push removes. Never a loadable partial version.
Versions are integers that only increase (UNIX seconds, bumped past the newest number used, a
partial version's included).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Dict, List, Optional

from components import fileio
from components.artifacts import staged_output
from components.errors import UserInputError

SAVED_MODEL_PB = "saved_model.pb"
METADATA_FILE = "metadata.json"
PUSHED_FILE = "pushed.json"


class ModelNotBlessedError(Exception):
    """The Evaluator did not bless the candidate: nothing is pushed (exit code 4)."""

    exit_code = 4


@dataclasses.dataclass(frozen=True)
class PusherSettings:
    serving_dir: str = "serving"
    model_name: str = "textcnn"
    keep_versions: int = 0  # keep the newest N versions after a push; 0 keeps all

    def __post_init__(self):
        if self.keep_versions < 0:
            raise UserInputError("pusher.keep_versions must be >= 0")
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise UserInputError(f"pusher.model_name {self.model_name!r} is not a directory name")


def is_complete_version(version_dir: str) -> bool:
    """Whether a pushed version is whole: its `saved_model.pb`, always copied last, is there
    (TF Serving's sign too)."""
    return fileio.exists(fileio.join(version_dir, SAVED_MODEL_PB))


def versions(model_base: str) -> List[int]:
    """Complete versions under `<serving_dir>/<model_name>`, oldest first."""
    return sorted(int(n) for n in fileio.listdir(model_base)
                  if n.isdigit() and is_complete_version(fileio.join(model_base, n)))


def latest_version_dir(model_base: str) -> Optional[str]:
    found = versions(model_base)
    return fileio.join(model_base, str(found[-1])) if found else None


def _numbered(model_base: str) -> List[int]:
    """Every numbered directory, complete or not."""
    return [int(n) for n in fileio.listdir(model_base) if n.isdigit()]


def next_version(model_base: str) -> int:
    # Partial versions count too: on object storage TF Serving may have listed one, tried to
    # load it and given up on that number, so a number once used is never used again.
    return max([int(time.time())] + [v + 1 for v in _numbered(model_base)])


def _copy_file(source: str, target: str) -> None:
    if "://" not in source + target:  # two local paths
        shutil.copy2(source, target)  # keeps the files' times, as `cp -p` would
    else:
        fileio.copy(source, target, overwrite=True)


def _copy_model(src: str, dst: str) -> None:
    """Copies a SavedModel directory, `saved_model.pb` last (TF Serving's sign of completeness)."""
    src = src.rstrip("/")
    for root, _, files in fileio.walk(src):
        rel = root[len(src):].lstrip("/")
        target_dir = fileio.join(dst, rel) if rel else dst
        fileio.makedirs(target_dir)
        for name in files:
            if not rel and name == SAVED_MODEL_PB:
                continue
            _copy_file(fileio.join(root, name), fileio.join(target_dir, name))
    _copy_file(fileio.join(src, SAVED_MODEL_PB), fileio.join(dst, SAVED_MODEL_PB))


def push(model_dir: str, metadata: Dict[str, Any], settings: PusherSettings,
         extra_files: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Pushes `model_dir` as a new version; returns {"version", "path", "removed"}.

    `extra_files` ({name: source path}) are copied beside the model, e.g. the schema that the
    model's inputs were validated against, for scoring to validate against.
    """
    base = fileio.join(settings.serving_dir, settings.model_name)
    fileio.makedirs(base)
    for name in fileio.listdir(base):  # leftovers of interrupted pushes on a local disk
        if name.startswith(".tmp-"):
            fileio.rmtree(fileio.join(base, name))
    version = next_version(base)
    final = fileio.join(base, str(version))
    # A local disk renames a directory atomically: the version is assembled in a hidden
    # sibling and appears whole. Object storage has no such rename: the version is written in
    # place, saved_model.pb last, so until then neither TF Serving nor `versions()` takes it.
    atomic = fileio.rename_is_atomic(base)
    work = fileio.join(base, f".tmp-{version}-{os.getpid()}") if atomic else final
    try:
        fileio.makedirs(work)
        fileio.write_json(fileio.join(work, METADATA_FILE), dict(metadata, version=version),
                          indent=2, sort_keys=True, default=str)
        for name, source in (extra_files or {}).items():
            _copy_file(source, fileio.join(work, name))
        _copy_model(model_dir, work)
        if atomic:
            fileio.rename(work, final)
    except BaseException:
        if atomic:
            fileio.rmtree(work)
        # In place, the partial version stays (without saved_model.pb: never loaded) until a
        # later push completes: removing it now would free its number for reuse.
        raise
    removed = []
    if not atomic:
        # Partial versions of pushes that died (numbered, without saved_model.pb), all older
        # than this one. Removed only now that a newer number exists, so the highest number
        # ever used stays listed and `next_version` never hands it out again. This assumes
        # one push at a time per serving directory (the root lock gives that to one root):
        # another pipeline's push still in progress would look partial too.
        complete = set(versions(base))
        for old in _numbered(base):
            if old < version and old not in complete:
                fileio.rmtree(fileio.join(base, str(old)))
    if settings.keep_versions:
        for old in versions(base)[:-settings.keep_versions]:
            if old != version:
                fileio.rmtree(fileio.join(base, str(old)))
                removed.append(old)
    return {"version": version, "path": final, "removed": removed}


def run_pusher(evaluator_dir: str, model_dir: str, metadata: Dict[str, Any],
               settings: PusherSettings, output_dir: str,
               extra_files: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Pushes the candidate only when the Evaluator wrote BLESSED; else ModelNotBlessedError.

    `output_dir` (the Pusher's artifact) records where the version went, in `pushed.json`.
    """
    from components.evaluator import BLESSED, RESULT_FILE

    blessed = fileio.exists(fileio.join(evaluator_dir, BLESSED))
    if not (blessed and fileio.is_published(evaluator_dir)):
        failures = []
        result_path = fileio.join(evaluator_dir, RESULT_FILE)
        if blessed:  # a BLESSED file in an Evaluator output that never completed
            failures = [f"the Evaluator's output {evaluator_dir} is incomplete (no "
                        f"{fileio.MARKER}): run the pipeline again"]
        elif fileio.exists(result_path):
            failures = fileio.read_json(result_path).get("failures", [])
        raise ModelNotBlessedError(
            "the model was not blessed, so it was not pushed:\n  "
            + "\n  ".join(failures or ["(the Evaluator gave no reason)"])
            + f"\nSee {evaluator_dir}/{RESULT_FILE}.")
    with staged_output(output_dir) as tmp:
        pushed = push(model_dir, metadata, settings, extra_files)
        fileio.write_json(fileio.join(tmp, PUSHED_FILE), pushed, indent=2)
    return pushed
