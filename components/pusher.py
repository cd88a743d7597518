"""Pusher: a blessed model becomes `<serving_dir>/<model_name>/<version>/`, the layout TF Serving polls.

`saved_model.pb` is always copied last: TF Serving takes it as the sign that a version is
complete, and so does `versions()`. On a local disk a version is assembled in a hidden
temporary directory beside the versions (same filesystem), then renamed into place in one step:
a crash leaves at most a hidden `.tmp-*` directory. On object storage (gs://, s3://), which has
no atomic rename, it is written in place: a crash leaves a numbered directory without
`saved_model.pb`, which nothing loads and the next push removes. Never a loadable partial version.
Versions are integers that only increase (UNIX seconds, bumped past the newest number used, a
partial version's included).

What is served is named by `<serving_dir>/models.config`, the model config file TF Serving
reads with `--model_config_file` (and re-reads with `--model_config_file_poll_wait_seconds`):
one entry per model, `model_version_policy { specific { versions: N } }` and the label
`stable`. A push names its new version there; `serve` names an older one again (promote,
rollback). `<serving_dir>/<model_name>.serving_history.json` lists each decision, newest last,
so that a rollback knows the version served before. Both files are beside the models'
directories, which hold only versions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from components import fileio
from components.artifacts import staged_output
from components.errors import UserInputError

SAVED_MODEL_PB = "saved_model.pb"
METADATA_FILE = "metadata.json"
PUSHED_FILE = "pushed.json"
MODELS_CONFIG = "models.config"  # in the serving directory: TF Serving's --model_config_file
HISTORY_SUFFIX = ".serving_history.json"  # <serving_dir>/<model_name> + this: what was served when
STABLE = "stable"  # the version label models.config gives the served version
PUSHED, PROMOTED, ROLLED_BACK = "pushed", "promoted", "rolled back"  # a decision's action
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"  # where TF Serving looks for warm-up
WARMUP_REQUESTS = 100  # texts of the eval split replayed as warm-up (TF Serving reads <= 1000)


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


# --- what is served: models.config and the serving history ------------------------------

def _split_base(model_base: str):
    model_base = model_base.rstrip("/")
    return fileio.dirname(model_base), fileio.basename(model_base)


def _read_models_config(serving_dir: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    path = fileio.join(serving_dir, MODELS_CONFIG)
    if fileio.exists(path):
        try:
            text_format.Parse(fileio.read_text(path), config)
        except text_format.ParseError as e:
            raise UserInputError(f"{path} is not a TF Serving model config file ({e}); fix or "
                                 "remove it")
    return config


def _entry(config, model_name: str):
    return next((c for c in config.model_config_list.config if c.name == model_name), None)


def served_version(model_base: str) -> Optional[int]:
    """The version TF Serving serves: the one `models.config` names for this model; without
    an entry there, the newest complete version (TF Serving's default policy, `latest`)."""
    named = _named_version(model_base)
    if named is not None:
        return named
    found = versions(model_base)
    return found[-1] if found else None


def served_version_dir(model_base: str) -> Optional[str]:
    """The served version's directory when it is a complete version (models.config may name
    one removed by hand, or by another root sharing the serving directory)."""
    served = served_version(model_base)
    if served is None:
        return None
    version_dir = fileio.join(model_base, str(served))
    return version_dir if is_complete_version(version_dir) else None


def _named_version(model_base: str) -> Optional[int]:
    serving_dir, name = _split_base(model_base)
    entry = _entry(_read_models_config(serving_dir), name)
    if entry is not None and entry.model_version_policy.specific.versions:
        return max(entry.model_version_policy.specific.versions)
    return None


def history_path(model_base: str) -> str:
    return model_base.rstrip("/") + HISTORY_SUFFIX


def serving_history(model_base: str) -> List[Dict[str, Any]]:
    """Each decision about what is served (`pushed`, `promoted`, `rolled back`), oldest first:
    {version, previous, action, time, by}."""
    path = history_path(model_base)
    if not fileio.exists(path):
        return []
    try:
        return list(fileio.read_json(path).get("decisions", []))
    except ValueError:  # cut short by a crash: the decisions before it are lost, not the model
        return []


def serve(model_base: str, version: int, action: str, by: Optional[str] = None) -> Dict[str, Any]:
    """Names `version` in `models.config` as the one TF Serving serves (other models' entries
    are kept), after recording the decision in the serving history; returns the decision.

    The history is written first and `models.config` last, each whole: a crash between them
    leaves the history one decision ahead of what is served, which `rollback_target` allows
    for (it goes by what `models.config` serves)."""
    with _ServingDirLock(_split_base(model_base)[0]):
        return _serve(model_base, version, action, by)


class _ServingDirLock:
    """One writer of `models.config` at a time: two pipelines (two roots, two models) may
    share a serving directory, and each rewrites the whole file. An exclusive flock on
    `<serving_dir>/.models.config.lock` on a local disk (released by the kernel however the
    holder dies); on object storage there is no lock (one root per serving directory there)."""

    def __init__(self, serving_dir: str):
        self.path = (os.path.join(fileio.local_path(serving_dir), ".models.config.lock")
                     if fileio.is_local(serving_dir) else None)
        self._fd: Optional[int] = None

    def __enter__(self):
        if self.path:
            import fcntl

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits: a rewrite takes milliseconds
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _serve(model_base: str, version: int, action: str, by: Optional[str]) -> Dict[str, Any]:
    serving_dir, name = _split_base(model_base)
    check_version(model_base, version)
    # Served before: the version models.config names; without one, TF Serving's default
    # (the newest) as it was before `version` appeared.
    previous = _named_version(model_base)
    if previous is None:
        previous = max((v for v in versions(model_base) if v != version), default=None)
    decision = {"version": version, "previous": previous, "action": action,
                "time": _now(), "by": by}
    history = serving_history(model_base) + [decision]
    fileio.replace_text(history_path(model_base),
                        json.dumps({"decisions": history}, indent=2) + "\n")
    config = _read_models_config(serving_dir)
    entry = _entry(config, name)
    if entry is None:
        entry = config.model_config_list.config.add()
        entry.name = name
    # TF Serving resolves a relative base_path against its own working directory: absolute.
    entry.base_path = fileio.absolute(model_base.rstrip("/"))
    entry.model_platform = "tensorflow"
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.append(version)
    entry.version_labels.clear()
    entry.version_labels[STABLE] = version
    from google.protobuf import text_format

    fileio.replace_text(fileio.join(serving_dir, MODELS_CONFIG),
                        text_format.MessageToString(config))
    return decision


def check_version(model_base: str, version: int) -> None:
    """A UserInputError unless `version` is a complete version of `model_base`."""
    found = versions(model_base)
    if version not in found:
        raise UserInputError(f"{model_base} has no complete version {version}; it has: "
                             f"{', '.join(map(str, found)) or 'none'}")


def rollback_target(model_base: str) -> int:
    """The newest version served before the one served now that is still complete and was not
    rolled back from (unless promoted since); a UserInputError when there is none.

    The history says what each decision made served, in order, up to the decision that made
    the current version served (decisions after it were written but never reached
    models.config: a crash between the two files). Without a history naming the current
    version, the newest complete version before it."""
    current = served_version(model_base)
    history = serving_history(model_base)
    complete = set(versions(model_base))
    last = next((i for i in range(len(history) - 1, -1, -1)
                 if history[i].get("version") == current), None)
    if last is None:
        older = [v for v in complete if current is not None and v < current]
        if older:
            return max(older)
    decisions = history[:last + 1] if last is not None else []
    rolled_back_from = set()
    for d in decisions:
        if d.get("action") == ROLLED_BACK:
            rolled_back_from.add(d.get("previous"))
        elif d.get("action") == PROMOTED:
            rolled_back_from.discard(d.get("version"))
    # What each decision made served, newest first; then what was served before the history
    # began (a serving directory from before it, where TF Serving served the newest).
    served_before = [d.get("version") for d in reversed(decisions)]
    if decisions:
        served_before.append(decisions[0].get("previous"))
    for version in served_before:
        if version != current and version in complete and version not in rolled_back_from:
            return version
    raise UserInputError(f"{model_base}: no version was served before {current} that is still "
                         "in the serving directory (and was not rolled back from), so there is "
                         "nothing to roll back to")


def version_fingerprint(version_dir: str) -> Optional[str]:
    """The fingerprint of the model a pushed version holds (as its metadata.json records it;
    None for a version pushed before it was recorded)."""
    path = fileio.join(version_dir, METADATA_FILE)
    if not fileio.exists(path):
        return None
    try:
        return fileio.read_json(path).get("model_fingerprint")
    except ValueError:
        return None


def pushed_version_of(model_base: str, model_fingerprint: Optional[str]) -> Optional[int]:
    """The complete version that already holds the model with this fingerprint, if any (the
    newest): a push killed after its version appeared but before it was recorded left it."""
    if not model_fingerprint:
        return None
    for v in reversed(versions(model_base)):
        if version_fingerprint(fileio.join(model_base, str(v))) == model_fingerprint:
            return v
    return None


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
         extra_files: Optional[Dict[str, str]] = None, texts: Optional[Dict[str, str]] = None,
         warmup_texts: Sequence[str] = (), by: Optional[str] = None) -> Dict[str, Any]:
    """Pushes `model_dir` as a new version and serves it; returns {"version", "path",
    "removed", "already_pushed", "served"}.

    `extra_files` ({name: source path}) are copied beside the model, e.g. the schema that the
    model's inputs were validated against, for scoring to validate against; `texts` ({name:
    text}) are written beside it, e.g. the release note. `warmup_texts` become TF Serving's
    warm-up requests (`WARMUP_FILE`). `by` (say, the run id) is recorded with the decision.

    A complete version already holding a model of the same fingerprint
    (`metadata["model_fingerprint"]`) is not pushed again: a push killed after its version
    appeared and before it was recorded is recognised, and served if nothing was decided
    since.
    """
    base = fileio.join(settings.serving_dir, settings.model_name)
    fileio.makedirs(base)
    for name in fileio.listdir(base):  # leftovers of interrupted pushes on a local disk
        if name.startswith(".tmp-"):
            fileio.rmtree(fileio.join(base, name))
    found = pushed_version_of(base, metadata.get("model_fingerprint"))
    if found is not None:
        return {"version": found, "path": fileio.join(base, str(found)), "removed": [],
                "already_pushed": True, "served": _serve_found(base, found, by)}
    version = next_version(base)
    final = fileio.join(base, str(version))
    # A local disk renames a directory atomically: the version is assembled in a hidden
    # sibling and appears whole. Object storage has no such rename: the version is written in
    # place, saved_model.pb last, so until then neither TF Serving nor `versions()` takes it.
    atomic = fileio.rename_is_atomic(base)
    work = fileio.join(base, f".tmp-{version}-{os.getpid()}") if atomic else final
    try:
        fileio.makedirs(work)
        fileio.write_json(fileio.join(work, METADATA_FILE),
                          dict(metadata, version=version, pushed_at=_now()),
                          indent=2, sort_keys=True, default=str)
        for name, source in (extra_files or {}).items():
            _copy_file(source, fileio.join(work, name))
        for name, text in (texts or {}).items():
            fileio.write_text(fileio.join(work, name), text)
        if warmup_texts:
            write_warmup_requests(fileio.join(work, WARMUP_FILE), warmup_texts,
                                  settings.model_name)
        _copy_model(model_dir, work)
        if atomic:
            fileio.rename(work, final)
    except BaseException:
        if atomic:
            fileio.rmtree(work)
        # In place, the partial version stays (without saved_model.pb: never loaded) until a
        # later push completes: removing it now would free its number for reuse.
        raise
    serve(base, version, PUSHED, by)
    removed = []
    # Partial versions (numbered, without saved_model.pb), all older than this one: pushes
    # that died on object storage, removals of old versions cut short anywhere. Removed only
    # now that a newer number exists, so the highest number ever used stays listed and
    # `next_version` never hands it out again. This assumes one push at a time per serving
    # directory (the root lock gives that to one root): another pipeline's push still in
    # progress on object storage would look partial too.
    complete = set(versions(base))
    for old in _numbered(base):
        if old < version and old not in complete:
            fileio.rmtree(fileio.join(base, str(old)))
    if settings.keep_versions:
        removed = prune_versions(base, settings.keep_versions)
    return {"version": version, "path": final, "removed": removed, "already_pushed": False,
            "served": True}


def _serve_found(base: str, found: int, by: Optional[str]) -> bool:
    """Whether the version a push found already holding its model is served (now): it is
    served again only when nothing was decided since it appeared (the push died before
    naming it in models.config); one rolled back or replaced since stays as decided."""
    if _named_version(base) == found:
        return True
    history = serving_history(base)
    if history and history[-1].get("version") == found:  # died between the history and the
        serve(base, found, PUSHED, by)                   # config: finish that decision
        return True
    # A decision made at or after the version appeared (a promote, a rollback, another push)
    # stands: the version stays as decided.
    appeared = _pushed_at(fileio.join(base, str(found)), found)
    since = [d for d in history if str(d.get("time") or "~") >= appeared
             or d.get("version") == found]
    if not since and found == versions(base)[-1]:
        serve(base, found, PUSHED, by)
        return True
    return False


_TIME = "%Y-%m-%dT%H:%M:%SZ"  # decisions' times and versions' pushed_at, UTC


def _now() -> str:
    return time.strftime(_TIME, time.gmtime())


def _pushed_at(version_dir: str, version: int) -> str:
    """When a version was pushed (its metadata.json; else its number, the UNIX second its
    push started, bumped past older numbers), as decisions' times are written."""
    try:
        recorded = fileio.read_json(fileio.join(version_dir, METADATA_FILE)).get("pushed_at")
    except (ValueError, OSError):
        recorded = None
    return recorded or time.strftime(_TIME, time.gmtime(version))


def prunable_versions(model_base: str, keep: int, protect: Sequence[int] = ()) -> List[int]:
    """The complete versions beyond the newest `keep`, less the served one and `protect`."""
    spared = {served_version(model_base), *protect}
    return [old for old in versions(model_base)[:-keep] if old not in spared]


def prune_versions(model_base: str, keep: int) -> List[int]:
    """Removes all but the newest `keep` complete versions, never the served one nor the one
    `rollback` would serve; returns the versions removed."""
    try:
        protect = [rollback_target(model_base)]
    except UserInputError:
        protect = []
    removed = prunable_versions(model_base, keep, protect)
    for old in removed:
        remove_version(fileio.join(model_base, str(old)))
    return removed


def remove_version(version_dir: str) -> None:
    """Removes a pushed version, `saved_model.pb` first: cut short, what is left is no longer
    a complete version (nothing loads or lists it), never one missing its other files."""
    pb = fileio.join(version_dir, SAVED_MODEL_PB)
    if fileio.exists(pb):
        fileio.remove(pb)
    fileio.rmtree(version_dir)


def write_warmup_requests(path: str, texts: Sequence[str], model_name: str) -> int:
    """TF Serving's warm-up file: one `PredictionLog` per text, a request of the raw-string
    signature (`serving_default`, input `text`, a batch of one) that the server replays when
    it loads the version, before it answers real requests. Returns how many were written."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from components import features
    from components.export import SERVING_DEFAULT

    fileio.makedirs(fileio.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for text in texts:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SERVING_DEFAULT
            request.inputs[features.TEXT].CopyFrom(tf.make_tensor_proto([text], tf.string))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return len(texts)


def sample_texts(examples_dir: str, split: str, limit: int) -> List[str]:
    """The first `limit` texts of a split of an Examples artifact (its shards in name order):
    the same texts for the same data."""
    import tensorflow as tf

    from components import features

    pattern = fileio.join(examples_dir, features.split_dir_name(split), "*")
    out: List[str] = []
    for path in sorted(fileio.glob(pattern)):
        if len(out) >= limit:
            break
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(
                limit - len(out)):
            example = tf.train.Example.FromString(record.numpy())
            out.append(example.features.feature[features.TEXT].bytes_list.value[0].decode())
    return out


def run_pusher(evaluator_dir: str, model_dir: str, metadata: Dict[str, Any],
               settings: PusherSettings, output_dir: str,
               extra_files: Optional[Dict[str, str]] = None,
               texts: Optional[Dict[str, str]] = None, warmup_texts: Sequence[str] = (),
               by: Optional[str] = None) -> Dict[str, Any]:
    """Pushes the candidate only when the Evaluator wrote BLESSED; else ModelNotBlessedError.

    `output_dir` (the Pusher's artifact) records where the version went, in `pushed.json`.
    The other arguments are `push`'s.
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
        pushed = push(model_dir, metadata, settings, extra_files, texts, warmup_texts, by)
        fileio.write_json(fileio.join(tmp, PUSHED_FILE), pushed, indent=2)
    return pushed
