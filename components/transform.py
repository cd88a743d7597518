"""Transform: tf.Transform vocabulary and padded integer sequences, analysed on Split-train only.

`preprocessing_fn` is module level so that any Beam runner's workers can import it; the stage
traces it once on the driver, and workers run the resulting graph.

Ids: 0 is padding; the vocabulary's tokens (most frequent first) are 1..V; out-of-vocabulary
tokens hash to V+1..V+num_oov_buckets. The label is its index in the schema's class list.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from typing import Any, Dict, List, Sequence

import apache_beam as beam

from components import features
from components.artifacts import staged_output
from components.errors import UserInputError
from components.statistics_gen import available_splits, split_data_pattern

VOCAB_NAME = "text_vocab"
TRANSFORM_INFO_FILE = "transform_info.json"  # sizes the Trainer needs, and the class list
TRANSFORMED_PREFIX = "transformed_examples"
PADDING_ID = 0
RESERVED_IDS = 1  # the padding id, before the vocabulary

# Punctuation split off as tokens of its own ("earth?" -> "earth ?"). RE2 syntax.
_PUNCTUATION = r"([!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~])"


@dataclasses.dataclass(frozen=True)
class TransformSettings:
    """Text normalisation, vocabulary and sequence length."""

    lowercase: bool = True
    split_punctuation: bool = True
    max_len: int = 50  # the seed's input_length: sequences are padded or truncated to it
    top_k: int = 0  # keep the k most frequent tokens; 0 keeps all
    frequency_threshold: int = 0  # drop tokens seen fewer times in Split-train; 0 or 1 keep all
    num_oov_buckets: int = 1

    def __post_init__(self):
        if self.max_len < 1:
            raise UserInputError("transform.max_len must be at least 1")
        if self.top_k < 0 or self.frequency_threshold < 0 or self.num_oov_buckets < 1:
            raise UserInputError("transform.top_k and frequency_threshold must be >= 0, "
                                 "num_oov_buckets >= 1")


def raw_feature_spec(with_label: bool = True) -> Dict[str, Any]:
    """Feature spec of the raw tf.Examples the Transform and the serving signature parse."""
    import tensorflow as tf

    spec = {features.TEXT: tf.io.FixedLenFeature([], tf.string)}
    if with_label:
        spec[features.LABEL] = tf.io.FixedLenFeature([], tf.string)
    return spec


def tokenize(text, lowercase: bool, split_punctuation: bool):
    """Batch of strings -> RaggedTensor of tokens, with tf.strings ops only (runs in the graph)."""
    import tensorflow as tf

    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    if split_punctuation:
        text = tf.strings.regex_replace(text, _PUNCTUATION, r" \1 ")
    return tf.strings.split(text)


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """tf.Transform preprocessing: `text` -> `text_xf` ids [batch, max_len], `label` -> `label_xf`.

    custom_config: the TransformSettings fields as a dict plus `classes` (the label domain).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    tokens = tokenize(inputs[features.TEXT], custom_config["lowercase"],
                      custom_config["split_punctuation"])
    ids = tft.compute_and_apply_vocabulary(
        tokens,
        top_k=custom_config["top_k"] or None,
        frequency_threshold=(custom_config["frequency_threshold"]
                             if custom_config["frequency_threshold"] > 1 else None),
        num_oov_buckets=custom_config["num_oov_buckets"],
        vocab_filename=VOCAB_NAME)
    max_len = custom_config["max_len"]
    padded = (ids + RESERVED_IDS).to_tensor(default_value=PADDING_ID, shape=[None, max_len])
    outputs = {features.transformed_name(features.TEXT): padded}

    if features.LABEL in inputs:
        # Index in the class list, -1 for a label outside it (validation stops those earlier).
        classes = tf.constant(custom_config["classes"])
        matches = tf.equal(tf.expand_dims(inputs[features.LABEL], 1), tf.expand_dims(classes, 0))
        outputs[features.transformed_name(features.LABEL)] = tf.where(
            tf.reduce_any(matches, axis=1), tf.argmax(tf.cast(matches, tf.int64), axis=1),
            tf.constant(-1, tf.int64))
    return outputs


def make_preprocessing_fn(settings: TransformSettings, classes: Sequence[str]):
    config = dict(dataclasses.asdict(settings), classes=list(classes))
    return functools.partial(preprocessing_fn, custom_config=config)


def run_transform(examples_dir: str, classes: Sequence[str], output_dir: str,
                  settings: TransformSettings, beam_options) -> Dict[str, Any]:
    """Analyses Split-train, transforms every split; writes TFRecords and the transform graph."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    splits = available_splits(examples_dir)
    if features.TRAIN not in splits:
        raise UserInputError(f"{examples_dir} has no Split-train to analyse")
    raw_schema = schema_utils.schema_from_feature_spec(raw_feature_spec())
    fn = make_preprocessing_fn(settings, classes)

    with staged_output(output_dir) as tmp:
        with beam.Pipeline(options=beam_options) as p, tft_beam.Context(
                temp_dir=os.path.join(tmp, ".tft_tmp"), force_tf_compat_v1=False):
            sources = {
                split: tfxio.TFExampleRecord(
                    split_data_pattern(examples_dir, split), schema=raw_schema,
                    telemetry_descriptors=["textcnn_pipeline", "Transform"])
                for split in splits}
            train = sources[features.TRAIN]
            transform_fn = (
                (p | "ReadTrain" >> train.BeamSource(), train.TensorAdapterConfig())
                | "Analyze" >> tft_beam.AnalyzeDataset(fn))
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(tmp)
            transformed_schema = beam.pvalue.AsSingleton(
                transform_fn[1].deferred_metadata
                | "TransformedSchema" >> beam.Map(lambda metadata: metadata.schema))
            for split in splits:
                source = sources[split]
                batches, _ = (
                    ((p | f"Read[{split}]" >> source.BeamSource(), source.TensorAdapterConfig()),
                     transform_fn)
                    | f"Transform[{split}]" >> tft_beam.TransformDataset(
                        output_record_batches=True))
                _ = (
                    batches
                    | f"Encode[{split}]" >> beam.ParDo(_EncodeFn(), transformed_schema)
                    | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                        os.path.join(tmp, features.split_dir_name(split), TRANSFORMED_PREFIX),
                        file_name_suffix=".gz"))
        shutil.rmtree(os.path.join(tmp, ".tft_tmp"), ignore_errors=True)
        vocab_size = tft.TFTransformOutput(tmp).vocabulary_size_by_name(VOCAB_NAME)
        info = {"splits": list(splits), "vocabulary_size": vocab_size,
                "input_dim": vocab_size + RESERVED_IDS + settings.num_oov_buckets,
                "classes": list(classes), "max_len": settings.max_len,
                "settings": dataclasses.asdict(settings)}
        with open(os.path.join(tmp, TRANSFORM_INFO_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
    return info


class _EncodeFn(beam.DoFn):
    """(RecordBatch, passthrough) of transformed features -> serialized tf.Examples."""

    def __init__(self):
        self._encoder = None

    def process(self, element, schema) -> List[bytes]:
        if self._encoder is None:
            from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

            self._encoder = RecordBatchToExamplesEncoder(schema)
        record_batch, _ = element
        return self._encoder.encode(record_batch)


def transformed_data_pattern(transform_dir: str, split: str) -> str:
    return os.path.join(transform_dir, features.split_dir_name(split), f"{TRANSFORMED_PREFIX}*")
