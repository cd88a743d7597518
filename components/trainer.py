"""Trainer: fits the TextCNN on the transformed splits and exports a SavedModel for raw text."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, Optional

from components import PROGRESS_LOGGER, features
from components.artifacts import staged_output
from components.errors import UserInputError
from components.model import ModelSettings, build_textcnn, load_embedding_matrix
from components.transform import (TRANSFORM_INFO_FILE, VOCAB_NAME, dense_token_ids,
                                  transformed_data_pattern)

MODEL_DIR = "model"
LOGS_DIR = "logs"
HISTORY_FILE = "history.json"
INTERLEAVE_CYCLE = 4  # files read at once: fixed, so the record order is the same on any machine


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

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1:
            raise UserInputError("trainer.batch_size and trainer.epochs must be at least 1")


def choose_strategy():
    """MirroredStrategy for several GPUs, OneDeviceStrategy for one, the default on CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def make_dataset(file_pattern: str, feature_spec: Dict[str, Any], max_len: int,
                 num_classes: int, batch_size: int, training: bool, settings: TrainerSettings):
    """(ids, one-hot label) batches streamed from gzip TFRecords; never loaded into numpy.

    The records reach the seeded shuffle in an order fixed by the files alone (`record_dataset`),
    so the same files train the same weights on any machine.
    """
    import tensorflow as tf

    text_key = features.transformed_name(features.TEXT)
    label_key = features.transformed_name(features.LABEL)
    ds = record_dataset(file_pattern)
    if settings.cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(settings.shuffle_buffer, seed=settings.seed, reshuffle_each_iteration=True)

    spec = {k: feature_spec[k] for k in (text_key, label_key)}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return (dense_token_ids(parsed[text_key], max_len),
                tf.one_hot(parsed[label_key], num_classes))

    return (ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def record_dataset(file_pattern: str):
    """The serialized records of the gzip TFRecord files matching `file_pattern`, in an order
    that depends only on the files' names and contents: the files sorted by name, interleaved
    with a fixed cycle length (AUTOTUNE would follow the machine's cores)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no files match {file_pattern}")
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), INTERLEAVE_CYCLE), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)


def read_transform_info(transform_dir: str) -> Dict[str, Any]:
    with open(os.path.join(transform_dir, TRANSFORM_INFO_FILE)) as f:
        return json.load(f)


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


def run_trainer(transform_dir: str, output_dir: str, settings: TrainerSettings
                ) -> Dict[str, Any]:
    """Trains, evaluates on eval (and test when present), exports `model/`; returns metrics."""
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    from components.export import export_serving_model

    info = read_transform_info(transform_dir)
    tft_output = tft.TFTransformOutput(transform_dir)
    classes = info["classes"]
    num_classes = len(classes)
    feature_spec = tft_output.transformed_feature_spec()

    keras.utils.set_random_seed(settings.seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    if settings.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.batch_size * replicas

    embedding_matrix, embeddings_found = None, None
    if settings.model.embeddings:
        vocabulary = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t
                      for t in tft_output.vocabulary_by_name(VOCAB_NAME)]
        embedding_matrix, embeddings_found = load_embedding_matrix(
            settings.model.embeddings, vocabulary, info["input_dim"], settings.seed)

    datasets = {split: make_dataset(transformed_data_pattern(transform_dir, split), feature_spec,
                                    info["max_len"], num_classes, global_batch,
                                    split == features.TRAIN, settings)
                for split in info["splits"]}
    if features.EVAL not in datasets:
        raise UserInputError("the Transform output has no Split-eval for early stopping")

    with staged_output(output_dir) as tmp:
        with strategy.scope():
            model = build_textcnn(info["input_dim"], info["max_len"], num_classes,
                                  settings.model, embedding_matrix)
            model.compile(loss="categorical_crossentropy",
                          optimizer=keras.optimizers.Adam(settings.learning_rate),
                          metrics=["accuracy"])
        callbacks = [keras.callbacks.TensorBoard(os.path.join(tmp, LOGS_DIR)),
                     _EpochProgress(settings.epochs).callback]
        if settings.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=settings.early_stopping_patience,
                restore_best_weights=True))
        start = time.monotonic()
        history = model.fit(datasets[features.TRAIN], validation_data=datasets[features.EVAL],
                            epochs=settings.epochs, callbacks=callbacks, verbose=0)
        seconds = time.monotonic() - start
        metrics = {f"{split}_{name}": float(value)
                   for split, ds in datasets.items()
                   for name, value in zip(model.metrics_names, model.evaluate(ds, verbose=0))}
        export_serving_model(model, tft_output, classes, info["max_len"],
                             os.path.join(tmp, MODEL_DIR))
        epochs_run = len(history.history["loss"])
        result = {
            "metrics": metrics,
            "epochs_run": epochs_run,
            "best_epoch": (int(max(range(epochs_run),
                                   key=lambda i: history.history["val_accuracy"][i])) + 1),
            "train_seconds": round(seconds, 1),
            "replicas": replicas,
            "strategy": type(strategy).__name__,
            "global_batch_size": global_batch,
            "parameters": int(model.count_params()),
            "input_dim": info["input_dim"],
            "max_len": info["max_len"],
            "classes": classes,
            "embeddings_found": embeddings_found,
            "settings": dataclasses.asdict(settings),
        }
        with open(os.path.join(tmp, HISTORY_FILE), "w") as f:
            json.dump({"history": {k: [float(v) for v in vs]
                                   for k, vs in history.history.items()}, **result},
                      f, indent=2, sort_keys=True)
    if settings.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    result["model"] = os.path.join(output_dir, MODEL_DIR)
    return result


def load_history(trainer_dir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(trainer_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
