"""Trainer: fits the TextCNN on the transformed splits and exports a SavedModel for raw text.

On one machine it uses the local devices (see `choose_strategy`). Given a cluster description
with several workers (the parsed TF_CONFIG of a Kubernetes TFJob or Vertex AI job; the caller
reads it, this module never looks at the environment), every worker runs `run_trainer` with the
same inputs and MultiWorkerMirroredStrategy keeps the replicas in sync: each worker reads its
share of the transformed files, and only the chief publishes the output directory.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import logging
import math
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from components import PROGRESS_LOGGER, features
from components import fileio
from components.artifacts import staged_output
from components.errors import UserInputError
from components.model import (ModelSettings, build_textcnn, check_wide_features,
                              length_free, load_embedding_matrix, model_inputs, resolve_wide)
from components.transform import (TRANSFORM_INFO_FILE, VOCAB_NAME, dense_token_ids,
                                  dense_wide_features, transformed_data_pattern)

MODEL_DIR = "model"
LOGS_DIR = "logs"
HISTORY_FILE = "history.json"
INTERLEAVE_CYCLE = 4  # files read at once: fixed, so the record order is the same on any machine
LENGTH_BUCKETS = 8  # at most this many length buckets (`bucket_boundaries`)
PARSE_BATCH = 256  # records parsed at once before they are grouped by length
# Training steps per call into the compiled train function: the same steps, with less Python
# between them (Keras' `steps_per_execution`; progress and early stopping are per epoch).
STEPS_PER_EXECUTION = 16


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """Fitting: the seed's batch size and epochs, Adam, early stopping on Split-eval."""

    model: ModelSettings = ModelSettings()
    batch_size: int = 64  # per replica; the global batch scales with the number of replicas
    epochs: int = 50
    early_stopping_patience: int = 5  # epochs without a better eval accuracy; 0: no early stop
    learning_rate: float = 0.001  # Adam's default
    seed: int = 42
    deterministic: bool = True  # deterministic TF ops: a CPU run is repeatable
    mixed_precision: bool = False  # float16 compute on accelerators that support it
    cache: bool = True  # cache the (serialized) datasets in memory after the first epoch
    shuffle_buffer: int = 10_000
    # Batches of sequences of similar length, each padded only to its longest sequence, so
    # that the convolutions do no work on padding. Applies to a model whose output does not
    # depend on padding (`model.length_free`: mask_zero with max_over_time pooling); any
    # other is fed sequences padded to max_len.
    bucket_by_length: bool = True
    # Processes the Trainer stage of `run` trains on, one model under MultiWorkerMirroredStrategy
    # (pipeline/launcher.py starts them); `batch_size` is per worker then. The `train` command
    # is one worker and takes its cluster from TF_CONFIG instead.
    workers: int = 1
    # A training on several workers that has not finished by then is stopped and fails.
    worker_timeout_seconds: float = 6 * 3600

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1:
            raise UserInputError("trainer.batch_size and trainer.epochs must be at least 1")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or \
                self.workers < 1:
            raise UserInputError(f"trainer.workers must be an integer of at least 1; got "
                                 f"{self.workers!r}")
        if not self.worker_timeout_seconds > 0:
            raise UserInputError("trainer.worker_timeout_seconds must be above 0")
        if not self.learning_rate > 0:
            raise UserInputError(f"trainer.learning_rate must be above 0; got "
                                 f"{self.learning_rate}")


# Task types of a MultiWorkerMirroredStrategy cluster (TF_CONFIG's convention): an optional
# `chief` (task 0 of its own job) and `worker`s.
CHIEF = "chief"
WORKER = "worker"
MWMS_NAME = "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a training cluster, from a TF_CONFIG-style dict."""

    jobs: Dict[str, List[str]]  # job name -> task addresses ("host:port")
    task_type: str
    task_id: int
    rpc_layer: str = "grpc"

    @property
    def num_workers(self) -> int:
        """Workers that train: the chief (when there is one) and every `worker`."""
        return len(self.jobs.get(CHIEF, ())) + len(self.jobs.get(WORKER, ()))

    @property
    def is_chief(self) -> bool:
        """The `chief` task, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
        if CHIEF in self.jobs:
            return self.task_type == CHIEF
        return self.task_type == WORKER and self.task_id == 0

    @property
    def worker_index(self) -> int:
        """0..num_workers-1: the chief first, then the workers (TensorFlow's order)."""
        if self.task_type == CHIEF:
            return 0
        return self.task_id + (1 if CHIEF in self.jobs else 0)


def parse_cluster(cluster_spec: Optional[Mapping[str, Any]]) -> Optional[Cluster]:
    """The cluster described by a parsed TF_CONFIG dict ({"cluster": {job: [addresses]},
    "task": {"type": ..., "index": ...}, "rpc_layer": optional}); None for no cluster (None or
    an empty dict). Errors say what is wrong with it."""
    if not cluster_spec:
        return None
    what = "the cluster description (TF_CONFIG)"
    if not isinstance(cluster_spec, Mapping):
        raise UserInputError(f"{what} must be a JSON object with `cluster` and `task`; got "
                             f"{cluster_spec!r}")
    jobs = cluster_spec.get("cluster")
    task = cluster_spec.get("task")
    if not isinstance(jobs, Mapping) or not jobs:
        raise UserInputError(f"{what} has no `cluster` object (e.g. \"cluster\": {{\"worker\": "
                             f"[\"host1:2222\", \"host2:2222\"]}}); unset TF_CONFIG to train on "
                             f"this machine alone")
    for job, addresses in jobs.items():
        if (not isinstance(addresses, (list, tuple)) or not addresses
                or not all(isinstance(a, str) and a for a in addresses)):
            raise UserInputError(f"{what}: cluster.{job} must be a list of \"host:port\" "
                                 f"addresses; got {addresses!r}")
    unsupported = sorted(set(jobs) - {CHIEF, WORKER})
    if unsupported:
        raise UserInputError(
            f"{what} names the job(s) {', '.join(unsupported)}: the Trainer trains with "
            f"MultiWorkerMirroredStrategy, whose cluster has only `{CHIEF}` (at most one) and "
            f"`{WORKER}` tasks (no parameter servers or side-car evaluator; it evaluates on "
            f"Split-eval itself). Remove them from TF_CONFIG's cluster")
    if len(jobs.get(CHIEF, ())) > 1:
        raise UserInputError(f"{what}: cluster.{CHIEF} must list one address; got "
                             f"{list(jobs[CHIEF])}")
    if not isinstance(task, Mapping) or "type" not in task or "index" not in task:
        raise UserInputError(f"{what} must say which task this process is: \"task\": "
                             f"{{\"type\": \"worker\", \"index\": 0}}; got task {task!r}")
    task_type, task_id = task["type"], task["index"]
    if task_type not in jobs:
        raise UserInputError(f"{what}: task.type {task_type!r} is not a job of its cluster "
                             f"({', '.join(sorted(jobs))})")
    if (isinstance(task_id, bool) or not isinstance(task_id, int)
            or not 0 <= task_id < len(jobs[task_type])):
        raise UserInputError(f"{what}: task.index must be 0..{len(jobs[task_type]) - 1} for "
                             f"the {len(jobs[task_type])} {task_type} address(es); got "
                             f"{task_id!r}")
    rpc_layer = cluster_spec.get("rpc_layer") or "grpc"
    if not isinstance(rpc_layer, str):
        raise UserInputError(f"{what}: rpc_layer must be a string such as \"grpc\"; got "
                             f"{rpc_layer!r}")
    return Cluster({job: list(addresses) for job, addresses in jobs.items()}, task_type,
                   task_id, rpc_layer)


def choose_strategy(cluster_spec: Optional[Mapping[str, Any]] = None):
    """MultiWorkerMirroredStrategy when `cluster_spec` (a parsed TF_CONFIG dict, or None) names
    several workers; otherwise MirroredStrategy for several local GPUs, OneDeviceStrategy for
    one, the default strategy on CPU.

    MultiWorkerMirroredStrategy configures the collective ops, which TensorFlow 2.16 allows
    only before its runtime is initialized (nothing may have touched devices or run an op in
    this process yet): `run_trainer` therefore creates the strategy before anything else.
    """
    import tensorflow as tf

    cluster = parse_cluster(cluster_spec)
    if cluster is not None and cluster.num_workers > 1:
        return _multi_worker_strategy(cluster)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def _multi_worker_strategy(cluster: Cluster):
    """MultiWorkerMirroredStrategy over `cluster`, from the description given (a resolver built
    from it, not TensorFlow's own reading of the environment); this worker's local GPUs are its
    replicas (the CPU when it has none)."""
    import tensorflow as tf

    # Physical devices are listed without initializing the runtime (logical ones would).
    gpus = len(tf.config.list_physical_devices("GPU"))
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs), task_type=cluster.task_type,
        task_id=cluster.task_id, num_accelerators={"GPU": gpus} if gpus else None,
        rpc_layer=cluster.rpc_layer)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before TensorFlow runs anything in "
            "the process (TensorFlow 2.16), and this process has already used TensorFlow: "
            "run each worker's Trainer in a fresh process (`local_runner.py train`)") from e


def skip_autograph_for_tf_keras() -> None:
    """Tells AutoGraph not to convert tf_keras' own code, as TensorFlow's rules already say for
    the `keras` package (tf_keras is that code under another name, written to run in graphs
    as it is). Without it, tracing the train step converts all of Keras' Python source: the
    first epoch of a tiny model took 37 s instead of 2 s on CPU, more under a distribution
    strategy, with bit-identical weights either way. The rule list is TensorFlow's own
    (private) setting; if it moves in another version, nothing changes but the speed."""
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:
        return
    rules = getattr(config, "CONVERSION_RULES", None)
    if not isinstance(rules, tuple) or not hasattr(config, "DoNotConvert"):
        return
    if not any(isinstance(r, config.DoNotConvert) and r.matches("tf_keras") for r in rules):
        config.CONVERSION_RULES = rules + (config.DoNotConvert("tf_keras"),)


FILE_SHARDING = "FILE"  # each worker reads its own files
DATA_SHARDING = "DATA"  # each worker reads every file and keeps one record in num_workers


@dataclasses.dataclass(frozen=True)
class Shard:
    """Worker `index` of `count` reads its share of a split, by FILE or by DATA."""

    index: int
    count: int
    policy: str = FILE_SHARDING


def choose_sharding(files: List[str], num_workers: int) -> Tuple[str, Optional[str]]:
    """(policy, why not FILE) for a split's files among `num_workers` workers: FILE sharding
    (worker i reads the sorted files i, i + n, ...) when every worker's files hold records,
    else DATA sharding. Looks at most at the first record of each worker's files, and gives
    the same answer on every worker (they must agree: they run collective ops together)."""
    import tensorflow as tf

    files = sorted(files)
    if len(files) < num_workers:
        return DATA_SHARDING, f"{len(files)} file(s) for {num_workers} workers"
    for index in range(num_workers):
        own = files[index::num_workers]
        if not any(True for _ in tf.data.TFRecordDataset(own, "GZIP").take(1)):
            return DATA_SHARDING, f"worker {index}'s files ({len(own)}) hold no record"
    return FILE_SHARDING, None


def bucket_boundaries(max_len: int, buckets: int = LENGTH_BUCKETS) -> List[int]:
    """Length-bucket boundaries for sequences of 0..max_len tokens: equal widths, at most
    `buckets` buckets (a bucket holds the lengths from its lower boundary up to, not
    including, the next one). A batch's padding is then less than one width per sequence."""
    width = max(1, math.ceil(max_len / buckets))
    return list(range(width + 1, max_len + 1, width))


def uses_length_buckets(settings: TrainerSettings) -> bool:
    return settings.bucket_by_length and length_free(settings.model)


def batches_per_pass(info: Dict[str, Any], split: str, batch_size: int,
                     settings: TrainerSettings) -> Optional[int]:
    """The batches of one pass of `make_dataset` over a whole split (one worker, no repeat),
    from the Transform's token-length histogram (`transform_info.json`); None when unknown.
    With length buckets a pass ends with one partial batch per bucket."""
    stats = info.get("token_lengths", {}).get(split, {})
    if not uses_length_buckets(settings):
        documents = stats.get("documents")
        return math.ceil(documents / batch_size) if isinstance(documents, int) else None
    histogram = stats.get("histogram")
    if not isinstance(histogram, list):
        return None
    max_len = info["max_len"]
    boundaries = bucket_boundaries(max_len)
    per_bucket: Dict[int, int] = {}
    for length, documents in histogram:
        bucket = bisect.bisect_right(boundaries, min(int(length), max_len))
        per_bucket[bucket] = per_bucket.get(bucket, 0) + int(documents)
    return sum(math.ceil(n / batch_size) for n in per_bucket.values())


def make_dataset(file_pattern: str, feature_spec: Dict[str, Any], max_len: int,
                 num_classes: int, batch_size: int, training: bool, settings: TrainerSettings,
                 shard: Optional[Shard] = None, repeat: bool = False,
                 batches: Optional[int] = None):
    """(ids, one-hot label) batches streamed from gzip TFRecords; never loaded into numpy.

    The records reach the seeded shuffle in an order fixed by the files alone (`record_dataset`),
    so the same files train the same weights on any machine. `shard` keeps this worker's share
    of the records (see `record_dataset`); tf.data's own auto-sharding is then turned off.
    `repeat` repeats the records without end (reshuffled each time), so that every batch is
    full: the caller gives the steps. `batches` (see `batches_per_pass`) is the number of
    batches a pass yields: Keras then knows it, and a different number fails the pass.

    With length buckets (`uses_length_buckets`), a batch holds sequences of one bucket
    (`bucket_boundaries`) and is padded to its longest one; otherwise every batch is
    [batch_size, max_len]. A batch is full, but for the last one of each bucket in a pass.
    """
    import tensorflow as tf

    text_key = features.transformed_name(features.TEXT)
    label_key = features.transformed_name(features.LABEL)
    ds = record_dataset(file_pattern, shard)
    if shard is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)  # sharded here already
        ds = ds.with_options(options)
    if settings.cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(settings.shuffle_buffer, seed=settings.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    wide = settings.model.wide
    if wide:
        check_wide_features(features.WIDE_IDS in feature_spec)
    keys = (text_key, label_key) + ((features.WIDE_IDS, features.WIDE_WEIGHTS) if wide else ())
    missing = [k for k in keys if k not in feature_spec]
    if missing:
        raise UserInputError(f"the Transform output has no {', '.join(missing)}: it is not "
                             "this pipeline's Transform output")
    spec = {k: feature_spec[k] for k in keys}

    if not uses_length_buckets(settings):
        def parse(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            ids = dense_token_ids(parsed[text_key], max_len)
            return (model_inputs(ids, *dense_wide_features(parsed)) if wide else ids,
                    tf.one_hot(parsed[label_key], num_classes))

        ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = _length_bucketed(ds, spec, max_len, num_classes, batch_size, wide)
    if batches is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)


def split_datasets(transform_dir: str, info: Dict[str, Any], feature_spec: Dict[str, Any],
                   splits, global_batch: int, settings: TrainerSettings):
    """One machine's datasets of the transformed `splits` (Split-train shuffled) and their
    batches per pass (`batches_per_pass`, None when unknown): ({split: dataset},
    {split: batches})."""
    batches = {split: batches_per_pass(info, split, global_batch, settings) for split in splits}
    datasets = {split: make_dataset(transformed_data_pattern(transform_dir, split), feature_spec,
                                    info["max_len"], len(info["classes"]), global_batch,
                                    split == features.TRAIN, settings, batches=batches[split])
                for split in splits}
    return datasets, batches


def compile_textcnn(model, settings: TrainerSettings, steps_known: bool) -> None:
    """Categorical cross-entropy, Adam at the settings' rate, accuracy; several steps per call
    when the steps of a pass are known (`STEPS_PER_EXECUTION`), else one."""
    import tf_keras as keras

    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(settings.learning_rate),
                  metrics=["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION if steps_known else 1)


def load_vocabulary_vectors(tft_output, info: Dict[str, Any], model: ModelSettings, seed: int
                            ) -> Tuple[Any, int]:
    """The embedding matrix of `model.embeddings` in the Transform's vocabulary order, and the
    number of vocabulary tokens the file has (`load_embedding_matrix`)."""
    vocabulary = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t
                  for t in tft_output.vocabulary_by_name(VOCAB_NAME)]
    return load_embedding_matrix(model.embeddings, vocabulary, info["input_dim"], seed,
                                 model.unknown_vectors)


def _row_lengths(sparse, rows):
    """Entries per row of a [rows, n] SparseTensor (int32)."""
    import tensorflow as tf

    return tf.math.bincount(tf.cast(sparse.indices[:, 0], tf.int32), minlength=rows,
                            maxlength=rows, dtype=tf.int32)


def _length_bucketed(ds, spec: Dict[str, Any], max_len: int, num_classes: int,
                     batch_size: int, wide: bool = False):
    """Serialized records -> (ids, one-hot label) batches of one length bucket each, padded to
    their longest sequence (and, with the wide tower, to their largest bag of n-grams)."""
    import tensorflow as tf

    text_key = features.transformed_name(features.TEXT)
    label_key = features.transformed_name(features.LABEL)

    def parse_with_lengths(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        ids = parsed[text_key]
        rows = tf.shape(serialized)[0]
        out = (dense_token_ids(ids, max_len), _row_lengths(ids, rows), parsed[label_key])
        if wide:
            out += dense_wide_features(parsed) + (_row_lengths(parsed[features.WIDE_IDS],
                                                               rows),)
        return out

    def own_bag(ids, length, label, wide_ids, wide_weights, bag):  # one record's bag only
        return ids, length, label, wide_ids[:bag], wide_weights[:bag]

    def trim(ids, lengths, label, *wide_features):  # padded to its longest sequence only
        ids = ids[:, :tf.reduce_max(lengths)]
        return (model_inputs(ids, *wide_features) if wide else ids,
                tf.one_hot(label, num_classes))

    boundaries = bucket_boundaries(max_len)
    ds = (ds.batch(PARSE_BATCH).map(parse_with_lengths, num_parallel_calls=tf.data.AUTOTUNE)
          .unbatch())
    if wide:
        ds = ds.map(own_bag, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.bucket_by_sequence_length(lambda ids, length, *rest: length, boundaries,
                                      [batch_size] * (len(boundaries) + 1))
    return ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


def record_dataset(file_pattern: str, shard: Optional[Shard] = None):
    """The serialized records of the gzip TFRecord files matching `file_pattern`, in an order
    that depends only on the files' names and contents: the files sorted by name, interleaved
    with a fixed cycle length (AUTOTUNE would follow the machine's cores).

    With `shard`, worker `shard.index` of `shard.count` reads only its share: every count-th
    file of the sorted list (FILE), or every count-th record of them all (DATA).
    """
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no files match {file_pattern}")
    if shard is not None and shard.policy == FILE_SHARDING:
        files = files[shard.index::shard.count]
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), INTERLEAVE_CYCLE), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if shard is not None and shard.policy == DATA_SHARDING:
        ds = ds.shard(shard.count, shard.index)
    return ds


def count_records(file_pattern: str) -> int:
    """Records in the gzip TFRecord files matching `file_pattern` (reads them once)."""
    import tensorflow as tf

    return int(record_dataset(file_pattern).reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def read_transform_info(transform_dir: str) -> Dict[str, Any]:
    path = fileio.join(transform_dir, TRANSFORM_INFO_FILE)
    if not fileio.exists(path):
        raise UserInputError(f"{transform_dir} is not a Transform output (it has no "
                             f"{TRANSFORM_INFO_FILE}): pass a directory "
                             f"<pipeline-root>/Transform/<run_id>")
    return fileio.read_json(path)


def saved_variables_sha256(saved_model_dir: str) -> str:
    """sha256 over every variable a SavedModel holds (name, dtype, shape, values; in name
    order): equal digests mean equal weights (and optimizer state)."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(fileio.join(saved_model_dir, "variables", "variables"))
    h = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":  # the object graph, not a value
            continue
        value = np.asarray(reader.get_tensor(name))
        h.update(f"{name}\0{value.dtype}\0{value.shape}\0".encode())
        h.update(value.tobytes() if value.dtype != object else repr(value.tolist()).encode())
    return h.hexdigest()


def split_records(transform_dir: str, info: Dict[str, Any], split: str) -> int:
    """Records of a transformed split: from `transform_info.json`, else counted."""
    documents = info.get("token_lengths", {}).get(split, {}).get("documents")
    if isinstance(documents, int):
        return documents
    return count_records(transformed_data_pattern(transform_dir, split))


def _sum_over_workers(strategy, num_workers: int, local):
    """The sum over all workers of each worker's `local` tensor (one all-reduce; every worker
    must call it, and gets the same result)."""
    import tensorflow as tf

    devices = strategy.extended.worker_devices  # this worker's replicas
    local_replicas = strategy.num_replicas_in_sync // num_workers

    def value(ctx):  # the worker's value on its first replica, zeros on any other
        index = ctx.replica_id_in_sync_group % local_replicas
        with tf.device(devices[index]):
            return tf.identity(local) if index == 0 else tf.zeros_like(local)

    return strategy.reduce(tf.distribute.ReduceOp.SUM,
                           strategy.experimental_distribute_values_from_function(value),
                           axis=None)


class _ShardedEvaluation:
    """Loss and accuracy of a model on a split sharded among the workers of a
    MultiWorkerMirroredStrategy: each worker sums over its share with its copy of the weights
    (no collective op, any number of batches, none empty), then one all-reduce adds the sums,
    so every worker gets the same exact numbers (the Keras metrics' definitions: mean
    categorical cross-entropy, argmax hits)."""

    def __init__(self, model, strategy, num_workers: int):
        import tensorflow as tf
        import tf_keras as keras

        self._strategy = strategy
        self._num_workers = num_workers

        def batch_sums(x, y):
            p = tf.cast(model(x, training=False), tf.float32)
            loss = keras.losses.categorical_crossentropy(y, p)
            hits = tf.cast(tf.equal(tf.argmax(y, axis=1), tf.argmax(p, axis=1)), tf.float64)
            return tf.stack([tf.reduce_sum(tf.cast(loss, tf.float64)), tf.reduce_sum(hits),
                             tf.cast(tf.shape(y)[0], tf.float64)])

        self._local_sums = tf.function(lambda ds: ds.reduce(
            tf.zeros([3], tf.float64), lambda acc, batch: acc + batch_sums(*batch)))

    def __call__(self, dataset) -> Dict[str, float]:
        loss, hits, count = _sum_over_workers(self._strategy, self._num_workers,
                                              self._local_sums(dataset)).numpy().tolist()
        if not count:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": loss / count, "accuracy": hits / count}


@contextlib.contextmanager
def _scratch_dir(cluster: Cluster, parent: Optional[str]) -> Iterator[str]:
    """A worker's throwaway directory (its logs and its copy of the model), removed at the end
    whatever happens."""
    path = tempfile.mkdtemp(prefix=f"textcnn-trainer-{cluster.task_type}-{cluster.task_id}-",
                            dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _EpochProgress:
    """Keras callback: one progress line per epoch (loss, accuracies, seconds)."""

    def __init__(self, epochs: int):
        import tf_keras as keras

        self.epochs = epochs
        self.callback = keras.callbacks.LambdaCallback(on_epoch_begin=self._begin,
                                                       on_epoch_end=self._end)
        self._start = 0.0

    def _begin(self, epoch: int, logs=None) -> None:
        self._start = time.monotonic()

    def _end(self, epoch: int, logs: Optional[Dict[str, float]]) -> None:
        logs = logs or {}
        logging.getLogger(PROGRESS_LOGGER).info(
            "  epoch %d/%d: loss %.4f, accuracy %.4f, eval accuracy %.4f, %.1fs", epoch + 1,
            self.epochs, logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
            logs.get("val_accuracy", float("nan")), time.monotonic() - self._start)


def run_trainer(transform_dir: str, output_dir: str, settings: TrainerSettings,
                cluster_spec: Optional[Mapping[str, Any]] = None,
                scratch_parent: Optional[str] = None) -> Dict[str, Any]:
    """Trains, evaluates on eval (and test when present), exports `model/`; returns metrics.

    `cluster_spec` is a parsed TF_CONFIG dict (or None): when it names several workers, every
    worker calls this with the same transform_dir (shared storage) and settings; they train
    one model with MultiWorkerMirroredStrategy. The chief writes `output_dir`; any other worker
    does the same work (saving involves collective ops, so every worker must save) into a
    scratch directory under `scratch_parent` (default: the system's temporary directory) that
    it removes before returning, and never writes `output_dir`.
    """
    cluster = parse_cluster(cluster_spec)
    info = read_transform_info(transform_dir)  # plain file reads: TensorFlow not used yet
    settings = dataclasses.replace(settings, model=resolve_wide(settings.model, info))
    if features.EVAL not in info["splits"]:
        raise UserInputError("the Transform output has no Split-eval for early stopping")
    multi_worker = cluster is not None and cluster.num_workers > 1
    is_chief = cluster is None or cluster.is_chief

    # First TensorFlow call: MultiWorkerMirroredStrategy must come before the runtime starts.
    # It connects the workers: a worker that fails after this point makes the others fail
    # too (their next collective op), whereas one that fails before it leaves them waiting
    # for it to register (TensorFlow's cluster registration timeout).
    strategy = choose_strategy(cluster_spec)

    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    from components.export import export_serving_model

    tft_output = tft.TFTransformOutput(transform_dir)
    classes = info["classes"]
    num_classes = len(classes)
    feature_spec = tft_output.transformed_feature_spec()

    skip_autograph_for_tf_keras()
    keras.utils.set_random_seed(settings.seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    if settings.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.batch_size * replicas
    num_workers = cluster.num_workers if cluster else 1

    embedding_matrix, embeddings_found = None, None
    if settings.model.embeddings:
        embedding_matrix, embeddings_found = load_vocabulary_vectors(tft_output, info,
                                                                     settings.model, settings.seed)

    if multi_worker and settings.model.wide and uses_length_buckets(settings):
        # Batches of one shape on every worker: with the wide tower, length-bucketed batches
        # (a shape per bucket, differing between the workers) made TensorFlow 2.16's all-gather
        # of the embedding's sparse gradient fail ("Shape mismatch in the collective
        # instance"), which batches padded to max_len never do.
        settings = dataclasses.replace(settings, bucket_by_length=False)
        logging.getLogger(PROGRESS_LOGGER).info(
            "  the wide tower on several workers: batches padded to max_len (no length buckets)")
    if multi_worker:
        # Each worker reads its own share of every split: its own files when there are
        # enough (`transform.records_per_shard` sets how many the Transform writes), else one
        # record in num_workers of them all.
        shards: Dict[str, Shard] = {}
        warnings: List[str] = []
        for split in info["splits"]:
            policy, why = choose_sharding(
                tf.io.gfile.glob(transformed_data_pattern(transform_dir, split)), num_workers)
            shards[split] = Shard(cluster.worker_index, num_workers, policy)
            if why:
                warnings.append(
                    f"Split-{split} is sharded by DATA among the workers ({why}): every worker "
                    f"reads all of it and keeps one record in {num_workers}. For FILE sharding "
                    f"let the Transform write more files (lower transform.records_per_shard)")
        for message in warnings:
            logging.getLogger(PROGRESS_LOGGER).warning("warning: %s", message)
        train_records = split_records(transform_dir, info, features.TRAIN)
        if train_records < num_workers:
            raise UserInputError(f"Split-train has {train_records} record(s) for {num_workers} "
                                 "workers: train with fewer workers")
        # Collective ops need every worker to run the same steps, and a replica must never get
        # an empty batch (a Conv1D on zero rows fails on CPU): training repeats each worker's
        # share and runs a fixed number of full steps per epoch, about one pass over the data.
        train_data = make_dataset(
            transformed_data_pattern(transform_dir, features.TRAIN), feature_spec,
            info["max_len"], num_classes, global_batch, True, settings,
            shards[features.TRAIN], repeat=True)
        fit_args = {"steps_per_epoch": max(1, math.ceil(train_records / global_batch))}
        batches = {}  # evaluation is not Keras': no pass counts needed
        # Evaluation is exact instead: each worker sums loss and hits over its share with the
        # (identical) weights and one all-reduce adds the sums, so all get the same numbers.
        local_batch = global_batch // num_workers
        shares = {split: make_dataset(transformed_data_pattern(transform_dir, split),
                                      feature_spec, info["max_len"], num_classes, local_batch,
                                      False, settings, shards[split])
                  for split in info["splits"]}
    else:
        datasets, batches = split_datasets(transform_dir, info, feature_spec, info["splits"],
                                           global_batch, settings)
        train_data = datasets[features.TRAIN]
        fit_args = {"validation_data": datasets[features.EVAL]}
    # Several steps per call need the steps of a pass known: given with several workers,
    # else from the Transform's statistics (an output without them trains a step per call).
    steps_known = multi_worker or None not in batches.values()

    # The chief stages the real output; another worker works in a scratch directory.
    output = (staged_output(output_dir) if is_chief
              else _scratch_dir(cluster, scratch_parent))
    with output as tmp:
        with strategy.scope():
            model = build_textcnn(info["input_dim"], info["max_len"], num_classes,
                                  settings.model, embedding_matrix, info.get("wide_input_dim"))
            compile_textcnn(model, settings, steps_known)
        callbacks = [keras.callbacks.TensorBoard(fileio.join(tmp, LOGS_DIR)),
                     _EpochProgress(settings.epochs).callback]
        if multi_worker:
            evaluate = _ShardedEvaluation(model, strategy, num_workers)
            # First, so that TensorBoard, the progress line and early stopping see val_*.
            callbacks.insert(0, keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: (logs if logs is not None else {}).update(
                    {f"val_{k}": v for k, v in evaluate(shares[features.EVAL]).items()})))
        if settings.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=settings.early_stopping_patience,
                restore_best_weights=True))
        start = time.monotonic()
        history = model.fit(train_data, epochs=settings.epochs, callbacks=callbacks, verbose=0,
                            **fit_args)
        seconds = time.monotonic() - start
        if multi_worker:
            metrics = {f"{split}_{name}": value for split, ds in shares.items()
                       for name, value in evaluate(ds).items()}
        else:
            metrics = {f"{split}_{name}": float(value)
                       for split, ds in datasets.items()
                       for name, value in zip(model.metrics_names,
                                              model.evaluate(ds, verbose=0))}
        # Every worker saves (saving a distributed model runs collective ops); only the
        # chief's copy is kept.
        export_serving_model(model, tft_output, classes, info["max_len"],
                             fileio.join(tmp, MODEL_DIR))
        weights_sha256 = saved_variables_sha256(fileio.join(tmp, MODEL_DIR))
        epochs_run = len(history.history["loss"])
        result = {
            "metrics": metrics,
            "epochs_run": epochs_run,
            "best_epoch": (int(max(range(epochs_run),
                                   key=lambda i: history.history["val_accuracy"][i])) + 1),
            "train_seconds": round(seconds, 1),
            "replicas": replicas,
            "strategy": MWMS_NAME if multi_worker else type(strategy).__name__,
            "workers": num_workers,
            "task_type": cluster.task_type if cluster else None,
            "task_id": cluster.task_id if cluster else None,
            "is_chief": is_chief,
            "weights_sha256": weights_sha256,
            "global_batch_size": global_batch,
            **({"sharding": {split: shard.policy for split, shard in shards.items()},
                "steps_per_epoch": fit_args["steps_per_epoch"]}
               if multi_worker else {}),
            "parameters": int(model.count_params()),
            "towers": model_towers(model, settings.model, info),
            "input_dim": info["input_dim"],
            "max_len": info["max_len"],
            "classes": classes,
            "embeddings_found": embeddings_found,
            "settings": dataclasses.asdict(settings),
        }
        if multi_worker and warnings:
            result["warnings"] = warnings
        fileio.write_json(fileio.join(tmp, HISTORY_FILE),
                          {"history": {k: [float(v) for v in vs]
                                       for k, vs in history.history.items()}, **result},
                          indent=2, sort_keys=True)
    if multi_worker:
        # Leave together, the chief's output published: a worker whose run ends while
        # another still talks to it (the chief leads the coordination service) would fail.
        _sum_over_workers(strategy, num_workers, tf.zeros([1]))
    if settings.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    if is_chief:
        result["model"] = fileio.join(output_dir, MODEL_DIR)
    else:
        result["model"] = None
        result["scratch_dir"] = tmp  # removed by now
    return result


def model_towers(model, settings: ModelSettings, info: Dict[str, Any]) -> Dict[str, Any]:
    """What each tower of a trained model is, for summaries and reports: the CNN's kernels and
    filters, the wide tower's n-grams; with the parameters of each."""
    wide = 0
    if settings.wide:
        wide = int(model.get_layer("wide_weights").count_params())
    towers = {"cnn": {"filter_sizes": [int(k) for k in settings.filter_sizes],
                      "num_filters": settings.num_filters,
                      "parameters": int(model.count_params()) - wide}}
    if settings.wide:
        transform = info.get("settings") or {}
        towers["wide"] = {"ngrams": info["wide_input_dim"],
                          "ngram_max": transform.get("wide_ngrams"),
                          "parameters": wide}
    return towers


def load_history(trainer_dir: str) -> Optional[Dict[str, Any]]:
    path = fileio.join(trainer_dir, HISTORY_FILE)
    return fileio.read_json(path) if fileio.exists(path) else None
