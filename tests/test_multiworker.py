"""Training on several workers: MultiWorkerMirroredStrategy from TF_CONFIG, two real worker
processes of `local_runner.py train` on this machine."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import components  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest

from components import export
from components import transform as tr
from components.errors import UserInputError
from components.model import model_inputs
from components.readers import COUNTS_FILE
from components.trainer import (DATA_SHARDING, FILE_SHARDING, Shard, choose_sharding,
                                parse_cluster, record_dataset, saved_variables_sha256)
from conftest import IN_MEMORY, REPO, write_examples

CLASSES = ["NUM", "HUM", "LOC"]
TEMPLATES = {"NUM": "how many {} are there ?", "HUM": "who is the {} ?",
             "LOC": "where is the {} ?"}
WORDS = ["moon", "river", "king", "city", "ocean", "author", "bridge", "planet", "tower", "lake"]
RECORDS_PER_SHARD = 5  # train: 46 records in 10 files, eval: 10 in 2, test: 4 in 1

TINY = """
[trainer]
epochs = 3
batch_size = 8
early_stopping_patience = 1

[trainer.model]
embedding_dim = 8
num_filters = 4
wide = true  # the wide tower trains on several workers too
"""
WORKER_TIMEOUT = 300  # seconds for both workers together (about 60 on two busy cores)


def texts_by_split():
    texts = {}
    for i in range(60):
        label = CLASSES[i % 3]
        text = TEMPLATES[label].format(WORDS[(i // 3) % len(WORDS)] + "s" * (i // 30))
        split = "eval" if i % 6 == 0 else "test" if i % 15 == 1 else "train"
        texts.setdefault(split, []).append((text, label))
    return texts


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """A Transform output whose splits have several files (ExampleGen's counts decide how
    many), as a pipeline run with a small `transform.records_per_shard` writes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    tmp = tmp_path_factory.mktemp("multiworker")
    texts = texts_by_split()
    examples = tmp / "ExampleGen"
    write_examples(examples, texts)
    (examples / COUNTS_FILE).write_text(json.dumps(
        {"splits": {split: len(rows) for split, rows in texts.items()}}))
    out = str(tmp / "Transform")
    tr.run_transform(str(examples), CLASSES, out,
                     tr.TransformSettings(records_per_shard=RECORDS_PER_SHARD, wide=True),
                     PipelineOptions(IN_MEMORY))
    return out, texts


def split_files(transform_dir, split):
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(tr.transformed_data_pattern(transform_dir, split)))


# --- the cluster description ------------------------------------------------------------------

def test_cluster_from_tf_config():
    workers = {"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker",
                                                                    "index": 0}}
    cluster = parse_cluster(workers)
    assert cluster.num_workers == 3 and cluster.is_chief and cluster.worker_index == 0
    assert cluster.rpc_layer == "grpc"
    workers["task"]["index"] = 2
    assert not parse_cluster(workers).is_chief and parse_cluster(workers).worker_index == 2

    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]},
                  "task": {"type": "worker", "index": 0}}
    cluster = parse_cluster(with_chief)
    assert cluster.num_workers == 3 and not cluster.is_chief and cluster.worker_index == 1
    with_chief["task"] = {"type": "chief", "index": 0}
    assert parse_cluster(with_chief).is_chief and parse_cluster(with_chief).worker_index == 0

    assert parse_cluster(None) is None and parse_cluster({}) is None


@pytest.mark.parametrize("spec, words", [
    ({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}},
     "ps"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}},
     "task.index"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}},
     "task.type 'chief'"),
    ({"cluster": {"worker": ["a:1", "b:1"]}}, "which task"),
    ({"task": {"type": "worker", "index": 0}}, "no `cluster`"),
    ({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}, "cluster.worker"),
    (["worker"], "JSON object"),
])
def test_bad_cluster_descriptions_are_named(spec, words):
    with pytest.raises(UserInputError, match="TF_CONFIG") as error:
        parse_cluster(spec)
    assert words in str(error.value)


def test_tf_config_that_is_not_json_exits_2(tmp_path):
    env = dict(os.environ, TF_CONFIG="{'cluster': oops}")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "local_runner.py"), "train",
                           "--transform-dir", str(tmp_path), "--output", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "TF_CONFIG is not valid JSON" in proc.stderr and "unset it" in proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_without_tf_config_the_default_strategy_on_cpu():
    import tensorflow as tf

    from components.trainer import choose_strategy

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the strategy is a GPU one")
    assert type(choose_strategy(None)).__name__ == "_DefaultDistributionStrategy"
    one_worker = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker",
                                                                  "index": 0}}
    assert type(choose_strategy(one_worker)).__name__ == "_DefaultDistributionStrategy"


def test_multi_worker_strategy_needs_a_fresh_process():
    """TensorFlow 2.16 configures collective ops only before its runtime starts: once this
    process has run an op, asking for several workers says so at once (no connection made)."""
    import tensorflow as tf

    from components.trainer import choose_strategy

    tf.constant(1.0) + 1.0
    two_workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                   "task": {"type": "worker", "index": 0}}
    with pytest.raises(RuntimeError, match="fresh process"):
        choose_strategy(two_workers)


# --- sharding ----------------------------------------------------------------------------------

def test_worker_shares_partition_each_split(transformed):
    transform_dir, texts = transformed
    for split, policy in (("train", FILE_SHARDING), ("eval", FILE_SHARDING),
                          ("test", DATA_SHARDING)):
        files = split_files(transform_dir, split)
        assert choose_sharding(files, 2)[0] == policy, (split, len(files))
        everything = sorted(r.numpy() for r in record_dataset(
            tr.transformed_data_pattern(transform_dir, split)))
        shares = [[r.numpy() for r in record_dataset(
            tr.transformed_data_pattern(transform_dir, split), Shard(i, 2, policy))]
            for i in range(2)]
        assert all(shares) and sorted(shares[0] + shares[1]) == everything
        assert len(everything) == len(texts[split])
    # Fewer files than workers, or a worker whose files are all empty: DATA.
    policy, why = choose_sharding(split_files(transform_dir, "eval"), 3)
    assert policy == DATA_SHARDING and "2 file(s) for 3 workers" in why


# --- two workers -------------------------------------------------------------------------------

def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(tasks, args, tmp_path, timeout=WORKER_TIMEOUT):
    """Starts `local_runner.py train ARGS` once per (type, index, TMPDIR) task on free local
    ports; waits for all (killing every one on a failure or the timeout). Returns [(exit code,
    console)]."""
    ports = free_ports(len(tasks))
    cluster = {}
    for (task_type, _, _), port in zip(tasks, ports):
        cluster.setdefault(task_type, []).append(f"127.0.0.1:{port}")
    procs = []
    try:
        for n, (task_type, index, tmpdir) in enumerate(tasks):
            os.makedirs(tmpdir, exist_ok=True)
            env = dict(os.environ, TMPDIR=str(tmpdir), TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": task_type, "index": index}}))
            log = open(tmp_path / f"console-{task_type}-{index}.txt", "w+")
            procs.append((subprocess.Popen(
                [sys.executable, os.path.join(REPO, "local_runner.py"), "train", *args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p, _ in procs):
            # A worker that failed leaves the others waiting on it: stop at once.
            if time.monotonic() > deadline or any(p.poll() for p, _ in procs):
                break
            time.sleep(0.5)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for p, log in procs:
        log.seek(0)
        results.append((p.returncode, log.read()))
        log.close()
    return results


def test_two_workers_train_one_model_and_only_the_chief_exports_it(transformed, tmp_path):
    import tensorflow as tf
    import tensorflow_transform as tft

    transform_dir, texts = transformed
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    output = tmp_path / "Trainer"  # the same path on every worker, as on shared storage
    args = ["--transform-dir", transform_dir, "--output", str(output), "--config", str(config)]
    tasks = [("chief", 0, tmp_path / "chief-tmp"), ("worker", 0, tmp_path / "worker-tmp")]
    start = time.monotonic()
    (chief_rc, chief_console), (worker_rc, worker_console) = run_workers(tasks, args, tmp_path)
    if "gRPC server" in chief_console + worker_console:  # a port taken meanwhile: once more
        (chief_rc, chief_console), (worker_rc, worker_console) = run_workers(
            tasks, args, tmp_path)
    print(f"two workers: {time.monotonic() - start:.0f}s")
    assert chief_rc == 0, chief_console[-4000:]
    assert worker_rc == 0, worker_console[-4000:]
    for console in (chief_console, worker_console):
        assert "Traceback" not in console
        assert "MultiWorkerMirroredStrategy, 2 replica(s), global batch 16" in console
        assert "Split-test is sharded by DATA" in console  # one file for two workers

    # Only the chief published the output; the other worker's copy is gone.
    with open(output / "history.json") as f:
        history = json.load(f)
    assert history["strategy"] == "MultiWorkerMirroredStrategy" and history["workers"] == 2
    assert (history["task_type"], history["task_id"], history["is_chief"]) == ("chief", 0, True)
    assert history["sharding"] == {"train": FILE_SHARDING, "eval": FILE_SHARDING,
                                   "test": DATA_SHARDING}
    assert history["replicas"] == 2 and history["global_batch_size"] == 16
    assert history["steps_per_epoch"] == -(-len(texts["train"]) // 16)  # ceil
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    assert "model: " + str(output / "model") in chief_console
    scratch = re.search(r"the model was also saved to (\S+) \(now removed", worker_console)
    assert scratch and scratch.group(1).startswith(str(tmp_path / "worker-tmp"))
    assert not os.path.exists(scratch.group(1))
    assert not [n for n in os.listdir(tmp_path / "worker-tmp") if n.startswith("textcnn-")]
    assert "model: " not in worker_console

    # One model: the worker's saved variables are the chief's, bit for bit.
    digest = saved_variables_sha256(str(output / "model"))
    assert history["weights_sha256"] == digest
    assert f"weights sha256: {digest}" in worker_console
    epochs = f"{history['epochs_run']} epochs, best {history['best_epoch']}"
    assert epochs in chief_console and epochs in worker_console
    assert len(history["history"]["val_accuracy"]) == history["epochs_run"]

    # The metrics, added up over the workers' shares, are those of the whole split.
    loaded = tf.saved_model.load(str(output / "model"))
    tft_output = tft.TFTransformOutput(transform_dir)
    spec = tft_output.transformed_feature_spec()
    max_len = tr.transformed_max_len(tft_output)
    for split in ("train", "eval", "test"):
        records = list(record_dataset(tr.transformed_data_pattern(transform_dir, split)))
        parsed = tf.io.parse_example(tf.stack(records), spec)
        probabilities = loaded(model_inputs(tr.dense_token_ids(parsed["text_xf"], max_len),
                                            *tr.dense_wide_features(parsed)),
                               training=False).numpy()
        labels = parsed["label_xf"].numpy()
        accuracy = np.mean(np.argmax(probabilities, axis=1) == labels)
        loss = np.mean(-np.log(np.clip(probabilities[np.arange(len(labels)), labels],
                                       1e-7, 1.0)))
        assert history["metrics"][f"{split}_accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert history["metrics"][f"{split}_loss"] == pytest.approx(loss, rel=1e-4)

    # The exported model serves raw strings.
    raw = [t for t, _ in texts["test"]]
    served = loaded.signatures[export.SERVING_DEFAULT](text=tf.constant(raw))
    assert served[export.PROBABILITIES].shape == (len(raw), len(CLASSES))
    np.testing.assert_allclose(served[export.PROBABILITIES].numpy().sum(axis=1), 1.0,
                               rtol=1e-5)
    assert set(served[export.PREDICTED_CLASS].numpy().tolist()) <= {c.encode() for c in CLASSES}


# --- `run` with [trainer] workers = N (pipeline/launcher.py) ----------------------------------

def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def _workers_config(tmp_path, extra="", epochs=2):
    from test_cli import TINY_TRAINER

    assert "epochs = 2\n" in TINY_TRAINER
    path = tmp_path / "workers.toml"
    path.write_text(TINY_TRAINER.replace("[trainer]\n", "[trainer]\nworkers = 2\n" + extra)
                    .replace("[trainer.model]\n", "[trainer.model]\nwide = true\n")
                    .replace("epochs = 2\n", f"epochs = {epochs}\n"))
    return str(path)


def _run_args(tmp_path, data, config):
    return [sys.executable, os.path.join(REPO, "local_runner.py"), "run", "--input", data,
            "--pipeline-root", str(tmp_path / "root"), "--serving-dir",
            str(tmp_path / "serving"), "--config", config, *IN_MEMORY]


def test_run_trains_on_two_worker_processes(tmp_path):
    from test_cli import summary_of, trec_like, write_csv

    data = write_csv(tmp_path / "q.csv", trec_like(120))
    proc = subprocess.run(_run_args(tmp_path, data, _workers_config(tmp_path)), cwd=REPO,
                          capture_output=True, text=True, timeout=WORKER_TIMEOUT * 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(str(tmp_path / "root"))
    stages = {s["name"]: s for s in summary["stages"]}
    trainer = stages["Trainer"]["details"]
    assert (trainer["workers"], trainer["replicas"], trainer["strategy"]) == (
        2, 2, "MultiWorkerMirroredStrategy")
    assert trainer["is_chief"] and trainer["task_id"] == 0
    assert trainer["settings"]["workers"] == 2
    assert "replica(s) of 2 workers" in proc.stdout
    # The chief's model is the stage's output, and the one evaluated and pushed.
    model = os.path.join(stages["Trainer"]["output"], "model")
    assert trainer["model"] == model and os.path.isfile(os.path.join(model, "saved_model.pb"))
    assert stages["Evaluator"]["status"] == stages["Pusher"]["status"] == "ok"
    pushed = stages["Pusher"]["details"]["path"]
    with open(os.path.join(pushed, "metadata.json")) as f:
        assert json.load(f)["hyperparameters"] is not None
    assert sorted(os.listdir(os.path.join(pushed, "variables"))) == sorted(
        os.listdir(os.path.join(model, "variables")))
    # Each worker's log is kept with the run's record; no worker is left running.
    logs = os.path.join(str(tmp_path / "root"), "runs", summary["run_id"], "trainer-workers")
    for i in range(2):
        with open(os.path.join(logs, f"worker-{i}.log")) as f:
            assert "epoch 2/2" in f.read()
    with open(os.path.join(logs, "workers.json")) as f:
        assert not any(_alive(pid) for pid in json.load(f))
    assert any("sharded by DATA" in w for w in summary.get("warnings", []))


def test_a_killed_worker_fails_the_stage_in_bounded_time_leaving_no_process(tmp_path):
    from test_cli import summary_of, trec_like, write_csv

    data = write_csv(tmp_path / "q.csv", trec_like(120))
    # Long enough to be killed in the middle: many epochs, no early stopping.
    config = _workers_config(tmp_path, "early_stopping_patience = 0\n", epochs=500)
    run = subprocess.Popen(_run_args(tmp_path, data, config), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        pattern = os.path.join(str(tmp_path / "root"), "runs", "*", "trainer-workers")
        log_dir, pids = None, None
        while time.monotonic() < deadline and run.poll() is None:
            found = glob.glob(pattern)
            if found and os.path.exists(os.path.join(found[0], "workers.json")):
                log_dir = found[0]
                with open(os.path.join(log_dir, "workers.json")) as f:
                    pids = json.load(f)
                with open(os.path.join(log_dir, "worker-1.log")) as f:
                    if "epoch 3/500" in f.read():
                        break
            time.sleep(0.2)
        assert pids and run.poll() is None, "training never got going"
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = run.communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, stderr[-3000:]
    assert waited < 60, waited  # noticed at once, not after the collective ops' timeouts
    assert "Trainer worker 1 of 2 was killed by signal 9" in stderr
    assert os.path.join(log_dir, "worker-1.log") in stderr
    summary = summary_of(str(tmp_path / "root"))
    assert [(s["name"], s["status"]) for s in summary["stages"]][-1] == ("Trainer", "failed")
    assert summary["exit_code"] == 1
    assert not any(_alive(pid) for pid in pids)
    assert not glob.glob(os.path.join(str(tmp_path / "root"), "Trainer", "2*"))  # unpublished
