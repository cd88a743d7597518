"""Pusher: a blessed model becomes `<serving_dir>/<model_name>/<version>/`, the layout TF Serving polls.

A version is assembled in a hidden temporary directory beside the versions (same filesystem),
`saved_model.pb` copied last, then renamed into place in one step: a crash leaves at most a
hidden `.tmp-*` directory without `saved_model.pb`, never a loadable partial version.
Versions are integers that only increase (UNIX seconds, bumped past the newest existing one).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional

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


def versions(model_base: str) -> List[int]:
    """Complete versions under `<serving_dir>/<model_name>`, oldest first."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(n) for n in os.listdir(model_base)
                  if n.isdigit() and os.path.exists(os.path.join(model_base, n, SAVED_MODEL_PB)))


def latest_version_dir(model_base: str) -> Optional[str]:
    found = versions(model_base)
    return os.path.join(model_base, str(found[-1])) if found else None


def next_version(model_base: str) -> int:
    existing = [int(n) for n in os.listdir(model_base) if n.isdigit()] if os.path.isdir(
        model_base) else []
    return max([int(time.time())] + [v + 1 for v in existing])


def _copy_model(src: str, dst: str) -> None:
    """Copies a SavedModel directory, `saved_model.pb` last (TF Serving's sign of completeness)."""
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in files:
            if rel == "." and name == SAVED_MODEL_PB:
                continue
            shutil.copy2(os.path.join(root, name), os.path.join(dst, rel, name))
    shutil.copy2(os.path.join(src, SAVED_MODEL_PB), os.path.join(dst, SAVED_MODEL_PB))


def push(model_dir: str, metadata: Dict[str, Any], settings: PusherSettings,
         extra_files: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Pushes `model_dir` as a new version; returns {"version", "path", "removed"}.

    `extra_files` ({name: source path}) are copied beside the model, e.g. the schema that the
    model's inputs were validated against, for scoring to validate against.
    """
    base = os.path.join(settings.serving_dir, settings.model_name)
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):  # leftovers of interrupted pushes
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    version = next_version(base)
    tmp = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(dict(metadata, version=version), f, indent=2, sort_keys=True, default=str)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, os.path.join(tmp, name))
        _copy_model(model_dir, tmp)
        final = os.path.join(base, str(version))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    removed = []
    if settings.keep_versions:
        for old in versions(base)[:-settings.keep_versions]:
            if old != version:
                shutil.rmtree(os.path.join(base, str(old)))
                removed.append(old)
    return {"version": version, "path": final, "removed": removed}


def run_pusher(evaluator_dir: str, model_dir: str, metadata: Dict[str, Any],
               settings: PusherSettings, output_dir: str,
               extra_files: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Pushes the candidate only when the Evaluator wrote BLESSED; else ModelNotBlessedError.

    `output_dir` (the Pusher's artifact) records where the version went, in `pushed.json`.
    """
    from components.evaluator import BLESSED, RESULT_FILE

    if not os.path.exists(os.path.join(evaluator_dir, BLESSED)):
        failures = []
        result_path = os.path.join(evaluator_dir, RESULT_FILE)
        if os.path.exists(result_path):
            with open(result_path) as f:
                failures = json.load(f).get("failures", [])
        raise ModelNotBlessedError(
            "the model was not blessed, so it was not pushed:\n  "
            + "\n  ".join(failures or ["(the Evaluator gave no reason)"])
            + f"\nSee {evaluator_dir}/{RESULT_FILE}.")
    with staged_output(output_dir) as tmp:
        pushed = push(model_dir, metadata, settings, extra_files)
        with open(os.path.join(tmp, PUSHED_FILE), "w") as f:
            json.dump(pushed, f, indent=2)
    return pushed
