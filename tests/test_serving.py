"""What is served, end to end: models.config, promote and rollback (the Evaluator's baseline
follows), the release note and TF Serving warm-up file of a pushed version, and no duplicate
version after a push killed between its rename and its record."""
import json
import os
import subprocess
import sys

import components  # noqa: F401  (legacy Keras before TensorFlow)
import pytest
import tensorflow as tf

from components import pusher
from components.errors import UserInputError
from conftest import IN_MEMORY, REPO, run_cli
from pipeline import metadata as meta
from test_push_and_score import NORMAL, questions_csv

# Another model on the same data (more filters): a new version, as good as the first.
WIDER = NORMAL.replace("num_filters = 8", "num_filters = 10")


def run_pipeline(tmp, data, serving, config_text, root="root", *extra):
    config = tmp / f"config-{abs(hash(config_text))}.toml"
    config.write_text(config_text)
    return run_cli("run", "--input", data, "--pipeline-root", str(tmp / root),
                   "--serving-dir", serving, "--config", str(config), *IN_MEMORY, *extra)


def models_config(serving):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(serving, pusher.MODELS_CONFIG)) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


def served_in_config(serving, name="textcnn"):
    [entry] = [c for c in models_config(serving).model_config_list.config if c.name == name]
    assert entry.version_labels[pusher.STABLE] == entry.model_version_policy.specific.versions[0]
    return list(entry.model_version_policy.specific.versions), entry.base_path


def summary(root, index=-1):
    runs = sorted(os.listdir(os.path.join(root, "runs")))
    with open(os.path.join(root, "runs", runs[index], "summary.json")) as f:
        return json.load(f)


def stage(s, name):
    return next(x for x in s["stages"] if x["name"] == name)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    data = questions_csv(tmp / "q.csv")
    serving = str(tmp / "serving")
    proc = run_pipeline(tmp, data, serving, NORMAL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [version] = pusher.versions(os.path.join(serving, "textcnn"))
    return tmp, data, serving, version


def test_a_push_names_its_version_in_models_config(pushed):
    tmp, _, serving, version = pushed
    base = os.path.join(serving, "textcnn")
    assert served_in_config(serving) == ([version], base)
    [decision] = pusher.serving_history(base)
    assert decision["version"] == version and decision["action"] == "pushed"
    assert decision["previous"] is None and decision["by"].startswith("run ")
    assert pusher.served_version(base) == version


def test_the_release_note_says_how_the_version_was_made(pushed):
    tmp, data, serving, version = pushed
    version_dir = os.path.join(serving, "textcnn", str(version))
    with open(os.path.join(version_dir, "RELEASE_NOTE.md")) as f:
        note = f.read()
    s = summary(str(tmp / "root"))
    evaluation = stage(s, "Evaluator")["details"]
    accuracy = evaluation["metrics"]["Overall"]["sparse_categorical_accuracy"]
    counts = stage(s, "ExampleGen")["details"]
    assert f"pushed by run {s['run_id']}" in note
    assert f"| accuracy | {accuracy:.4f} | - |" in note  # no baseline: the first version
    assert "Baseline: none" in note and "accuracy at least 0.6" in note
    assert f"`{data}` (sha256 " in note
    assert (f"rows: read {counts['read']} = used {counts['written']} (train "
            f"{counts['splits']['train']}, eval {counts['splits']['eval']}, test "
            f"{counts['splits']['test']}) + quarantined {counts['quarantined']}") in note
    assert "| num_filters | 8 | config |" in note and "| dropout_rate | 0.5 | default |" in note
    trainer = stage(s, "Trainer")["details"]
    assert f"{trainer['epochs_run']} epochs (best {trainer['best_epoch']}) in " in note
    assert "tensorflow 2.16.2" in note and "git commit: " in note
    assert "drift not measured (no earlier accepted data)" in note
    # lineage links it
    out = run_cli("lineage", version_dir)
    assert out.returncode == 0, out.stderr
    assert f"release note: {os.path.join(version_dir, 'RELEASE_NOTE.md')}" in out.stdout
    assert "served now: yes" in out.stdout


def test_the_warmup_requests_run_through_the_serving_signature(pushed):
    from tensorflow_serving.apis import prediction_log_pb2

    tmp, _, serving, version = pushed
    version_dir = os.path.join(serving, "textcnn", str(version))
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]
    # 120 rows: fewer than 100 in Split-eval, so every eval text, in the Examples' order.
    from conftest import read_split

    examples = stage(summary(str(tmp / "root")), "ExampleGen")["output"]
    eval_texts = [r["text"] for r in read_split(examples, "eval")]
    texts = [log.predict_log.request.inputs["text"].string_val[0].decode() for log in logs]
    assert 0 < len(texts) <= 100 and sorted(texts) == sorted(eval_texts[:100])
    model = tf.saved_model.load(version_dir)
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "textcnn"
        signature = model.signatures[request.model_spec.signature_name]
        outputs = signature(**{k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        assert outputs["probabilities"].shape == (1, 6)
        assert abs(float(tf.reduce_sum(outputs["probabilities"])) - 1.0) < 1e-5


def test_promote_then_rollback_and_the_evaluator_baseline_follows(pushed):
    tmp, data, serving, first = pushed
    base = os.path.join(serving, "textcnn")
    proc = run_pipeline(tmp, data, serving, WIDER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = pusher.versions(base)[-1]
    assert second > first and served_in_config(serving)[0] == [second]
    assert stage(summary(str(tmp / "root")), "Evaluator")["details"]["baseline"] == \
        os.path.join(base, str(first))

    # Back to the first: models.config names it, the decision is recorded.
    out = run_cli("rollback", base)
    assert out.returncode == 0, out.stderr
    assert f"rolled back version {first} (served before: {second})" in out.stdout
    assert served_in_config(serving)[0] == [first]
    runs = run_cli("runs", str(tmp / "root"))
    assert f"rolled back version {first} of {base} (served before: {second})" in runs.stdout
    store = meta.open_existing(str(tmp / "root"))
    [decision] = [e for r in store.runs() if r.get("kind") == meta.SERVING_RUN
                  for e in r["executions"]]
    [model] = decision.inputs["model"]
    assert model.type_name == meta.PUSHED_MODEL and model.uri == os.path.join(base, str(first))
    lineage = run_cli("lineage", os.path.join(base, str(second))).stdout
    assert "served now: no" in lineage and f"replaced by version {first} (rolled back)" in lineage

    # The next model is judged against the served version, not the newest push.
    third_config = NORMAL.replace("num_filters = 8", "num_filters = 12")
    proc = run_pipeline(tmp, data, serving, third_config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stage(summary(str(tmp / "root")), "Evaluator")["details"]["baseline"] == \
        os.path.join(base, str(first))
    third = pusher.versions(base)[-1]
    assert served_in_config(serving)[0] == [third]

    # promote names any complete version; promoting the served one, or a missing one, is refused.
    out = run_cli("promote", base, str(second))
    assert out.returncode == 0, out.stderr
    assert served_in_config(serving)[0] == [second]
    assert run_cli("promote", base, str(second)).returncode == 2
    missing = run_cli("promote", base, "12345")
    assert missing.returncode == 2 and "has no complete version 12345" in missing.stderr
    # rollback goes to the version served before (the third), not merely the previous number
    out = run_cli("rollback", base)
    assert out.returncode == 0 and served_in_config(serving)[0] == [third]
    history = [(d["action"], d["version"]) for d in pusher.serving_history(base)]
    assert history == [("pushed", first), ("pushed", second), ("rolled back", first),
                       ("pushed", third), ("promoted", second), ("rolled back", third)]


def test_a_push_killed_between_rename_and_record_pushes_nothing_new(tmp_path):
    data = questions_csv(tmp_path / "q.csv")
    serving = str(tmp_path / "serving")
    config = tmp_path / "c.toml"
    config.write_text(NORMAL)
    # The Pusher's process dies right after its version was renamed into place: before
    # models.config names it and before the store records the push.
    script = f"""
import os, runpy, sys
sys.path.insert(0, {REPO!r})
sys.argv = ["local_runner.py"] + sys.argv[1:]
import components.pusher as p
def die(*args, **kwargs):
    os._exit(9)
p.serve = die
runpy.run_path(os.path.join({REPO!r}, "local_runner.py"), run_name="__main__")
"""
    args = ["run", "--input", data, "--pipeline-root", str(tmp_path / "root"), "--serving-dir",
            serving, "--config", str(config), *IN_MEMORY]
    killed = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr[-3000:]
    base = os.path.join(serving, "textcnn")
    [version] = pusher.versions(base)
    assert not os.path.exists(os.path.join(serving, pusher.MODELS_CONFIG))

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pusher.versions(base) == [version]  # recognised, not pushed again
    assert f"version {version} already held this model" in proc.stderr
    assert served_in_config(serving)[0] == [version]
    s = summary(str(tmp_path / "root"))
    assert stage(s, "Pusher")["details"]["version"] == version
    assert stage(s, "Trainer")["status"] == "reused"
    store = meta.open_existing(str(tmp_path / "root"))
    assert [a.uri for a in store.pushed_models(base)] == [os.path.join(base, str(version))]
    # and the next run has nothing to do
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing new to do" in again.stderr
    assert pusher.versions(base) == [version]


# --- the serving history's rules, on small versions pushed directly --------------------------

@pytest.fixture
def tiny_model(tmp_path):
    from test_push_and_score import make_model

    return make_model(str(tmp_path / "model"))


def push_as(model, serving, fingerprint, keep_versions=0):
    settings = pusher.PusherSettings(serving_dir=serving, keep_versions=keep_versions)
    return pusher.push(model, {"model_fingerprint": fingerprint}, settings)["version"]


def test_rollback_follows_what_was_served_and_never_returns_to_a_model_rolled_back_from(
        tiny_model, tmp_path):
    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    v1, v2, v3 = (push_as(tiny_model, serving, f"m{i}") for i in (1, 2, 3))
    assert pusher.rollback_target(base) == v2
    pusher.serve(base, v2, pusher.ROLLED_BACK)  # v3 was bad
    # The next rollback goes on down the chain (v1), not back up to the model rolled back from.
    assert pusher.rollback_target(base) == v1
    pusher.serve(base, v1, pusher.ROLLED_BACK)  # v2 was bad too
    with pytest.raises(UserInputError, match="nothing to roll back to"):
        pusher.rollback_target(base)
    pusher.serve(base, v3, pusher.PROMOTED)  # v3 was fine after all: promoted, it is good again
    assert pusher.rollback_target(base) == v1


def test_a_history_ahead_of_models_config_is_not_followed(tiny_model, tmp_path, monkeypatch):
    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    v1 = push_as(tiny_model, serving, "m1")
    real = pusher.fileio.replace_text

    def dies_writing_models_config(path, text):  # after the history, before models.config
        if path.endswith(pusher.MODELS_CONFIG):
            raise KeyboardInterrupt("killed")
        real(path, text)

    monkeypatch.setattr(pusher.fileio, "replace_text", dies_writing_models_config)
    with pytest.raises(KeyboardInterrupt):
        push_as(tiny_model, serving, "m2")
    monkeypatch.setattr(pusher.fileio, "replace_text", real)
    v2 = pusher.versions(base)[-1]
    assert pusher.served_version(base) == v1 and pusher.serving_history(base)[-1]["version"] == v2
    # v2 was never served: rollback has nothing before v1 to go to, and never picks v2.
    with pytest.raises(UserInputError):
        pusher.rollback_target(base)
    # The push again (the same model): found, and the decision it died in is finished.
    again = pusher.push(tiny_model, {"model_fingerprint": "m2"},
                        pusher.PusherSettings(serving_dir=serving))
    assert again["already_pushed"] and again["served"] and again["version"] == v2
    assert pusher.served_version(base) == v2 and pusher.rollback_target(base) == v1


def test_pruning_keeps_the_served_version_and_the_rollback_target(tiny_model, tmp_path):
    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    v1 = push_as(tiny_model, serving, "m1")
    v2 = push_as(tiny_model, serving, "m2")
    pusher.serve(base, v1, pusher.ROLLED_BACK)  # v2 was bad
    v3 = push_as(tiny_model, serving, "m3", keep_versions=2)
    # v1 is older than the newest two, but rollback would go to it (not to v2, rolled back from)
    assert pusher.versions(base) == [v1, v2, v3] and pusher.rollback_target(base) == v1
    v4 = push_as(tiny_model, serving, "m4", keep_versions=2)
    assert pusher.versions(base) == [v3, v4]  # v1 and v2 no longer needed: v3 is v4's rollback


def test_a_version_found_after_a_later_decision_stays_unserved(tiny_model, tmp_path,
                                                               monkeypatch):
    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    v0 = push_as(tiny_model, serving, "m0")
    push_as(tiny_model, serving, "m1")
    monkeypatch.setattr(pusher, "serve", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt("killed after the rename")))
    with pytest.raises(KeyboardInterrupt):
        push_as(tiny_model, serving, "m2")
    monkeypatch.undo()
    v2 = pusher.versions(base)[-1]
    pusher.serve(base, v0, pusher.ROLLED_BACK)  # decided after v2 appeared
    again = pusher.push(tiny_model, {"model_fingerprint": "m2"},
                        pusher.PusherSettings(serving_dir=serving))
    assert again["already_pushed"] and again["version"] == v2 and not again["served"]
    assert pusher.served_version(base) == v0


def test_scoring_uses_the_served_version_by_default(tiny_model, tmp_path):
    from components.scorer import resolve_model

    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    v1, v2 = push_as(tiny_model, serving, "m1"), push_as(tiny_model, serving, "m2")
    assert resolve_model(base, None)[1] == str(v2)
    pusher.serve(base, v1, pusher.ROLLED_BACK)
    assert resolve_model(base, None)[1] == str(v1) and resolve_model(base, v2)[1] == str(v2)


def test_rollback_reaches_the_version_served_before_the_history_began(tiny_model, tmp_path):
    serving = str(tmp_path / "serving")
    base = os.path.join(serving, "textcnn")
    push_as(tiny_model, serving, "m1")
    v2 = push_as(tiny_model, serving, "m2")
    # A serving directory from before models.config and the history: TF Serving served v2.
    os.remove(os.path.join(serving, pusher.MODELS_CONFIG))
    os.remove(pusher.history_path(base))
    push_as(tiny_model, serving, "m3")
    assert pusher.serving_history(base)[0]["previous"] == v2
    assert pusher.rollback_target(base) == v2
