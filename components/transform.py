"""Transform: tf.Transform vocabulary and padded integer sequences, analysed on Split-train only.

`preprocessing_fn` is module level so that any Beam runner's workers can import it; the stage
traces it once on the driver, and workers run the resulting graph.

Ids: 0 is padding; the vocabulary's tokens (most frequent first) are 1..V; out-of-vocabulary
tokens hash to V+1..V+num_oov_buckets. The label is its index in the schema's class list.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import apache_beam as beam

from components import features, fileio
from components.artifacts import staged_output
from components.beam_pipeline import beam_pipeline
from components.canonical import WriteSortedTFRecords, num_shards_for
from components.errors import UserInputError
from components.statistics_gen import available_splits, split_data_pattern

VOCAB_NAME = "text_vocab"
WIDE_VOCAB_NAME = "wide_vocab"  # the wide tower's n-grams (`wide_features`)
TRANSFORM_INFO_FILE = "transform_info.json"  # sizes the Trainer needs, and the class list
TRANSFORMED_PREFIX = "transformed_examples"
TOKEN_STATS_FILE = "token_stats.json"  # per split: token-length histogram, OOV tokens
PADDING_ID = 0
RESERVED_IDS = 1  # the padding id, before the vocabulary

# Punctuation split off as tokens of its own ("earth?" -> "earth ?"). RE2 syntax.
_PUNCTUATION = r"([!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~])"


AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class TransformSettings:
    """Text normalisation, vocabulary and sequence length."""

    lowercase: bool = True
    split_punctuation: bool = True
    # Sequences are truncated to max_len tokens (and padded to it by the exported model; the
    # Trainer pads each batch to its longest sequence). "auto": the max_len_quantile of Split-train's token counts, capped at
    # max_len_cap, computed by the same tf.Transform analysis as the vocabulary. A number fixes it.
    max_len: Union[int, str] = AUTO
    max_len_quantile: float = 0.95
    max_len_cap: int = 400
    top_k: int = 0  # keep the k most frequent tokens; 0 keeps all
    frequency_threshold: int = 0  # drop tokens seen fewer times in Split-train; 0 or 1 keep all
    num_oov_buckets: int = 1
    # Transformed examples are written in a canonical order, by content (components.canonical):
    # one file per this many records of the split, each file sorted in one worker's memory.
    records_per_shard: int = 100_000
    # The wide tower's input (`wide_features`): each document's bag of 1..wide_ngrams-grams of
    # the whole text (never truncated), TF-IDF weighted. Computed when the model has a wide
    # tower: the pipeline's config sets it to trainer.model.wide (or the Tuner's space) unless
    # it is given.
    wide: bool = True
    wide_ngrams: int = 2  # words and bigrams
    wide_min_df: int = 2  # n-grams in fewer Split-train documents are left out
    wide_top_k: int = 200_000  # the n-grams in most Split-train documents; 0 keeps all
    wide_sublinear_tf: bool = True  # 1 + log(count) instead of the count

    def __post_init__(self):
        if self.max_len != AUTO and (isinstance(self.max_len, bool) or not isinstance(
                self.max_len, int) or self.max_len < 1):
            raise UserInputError(f'transform.max_len must be "{AUTO}" or a number of tokens >= 1; '
                                 f"got {self.max_len!r}")
        if not 0.0 < self.max_len_quantile <= 1.0 or self.max_len_cap < 1:
            raise UserInputError("transform.max_len_quantile must be in (0, 1] and "
                                 "transform.max_len_cap >= 1")
        if self.top_k < 0 or self.frequency_threshold < 0 or self.num_oov_buckets < 1:
            raise UserInputError("transform.top_k and frequency_threshold must be >= 0, "
                                 "num_oov_buckets >= 1")
        if (isinstance(self.records_per_shard, bool) or not isinstance(self.records_per_shard, int)
                or self.records_per_shard < 1):
            raise UserInputError("transform.records_per_shard must be a number of records >= 1; "
                                 f"got {self.records_per_shard!r}")
        for name in ("wide_ngrams", "wide_min_df", "wide_top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    0 if name == "wide_top_k" else 1):
                raise UserInputError(f"transform.{name} must be an integer >= "
                                     f"{0 if name == 'wide_top_k' else 1}; got {value!r}")


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


def length_quantile(lengths, quantile: float):
    """The smallest length L such that a `quantile` share of `lengths` is <= L, exactly.

    A tf.Transform analyzer: the exact histogram of lengths over the whole dataset
    (`tft.count_per_key`), then the quantile read off its cumulative counts, in the graph.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    keys, counts = tft.count_per_key(lengths, name="token_length_histogram")
    order = tf.argsort(keys)
    keys, cumulative = tf.gather(keys, order), tf.cumsum(tf.gather(counts, order))
    # ceil(quantile * total) in integers (parts per million), so that no float rounding makes
    # it one document too many.
    ppm = tf.constant(round(quantile * 1_000_000), tf.int64)
    needed = (ppm * cumulative[-1] + 999_999) // 1_000_000
    first = tf.argmax(cumulative >= needed)  # the first True
    return keys[first]


def wide_features(tokens, ngrams: int, min_df: int, top_k: int, sublinear_tf: bool):
    """The wide tower's input: a document's bag of n-grams with TF-IDF weights, like
    scikit-learn's TfidfVectorizer(ngram_range=(1, ngrams), min_df, sublinear_tf, norm="l2").

    tokens: RaggedTensor [batch, tokens], the whole text. Returns two SparseTensors
    [batch, n-grams of the document] with the same indices: the n-gram ids (0..V-1 in the
    `wide_vocab` vocabulary, each once per document) and their weights: tf * idf, tf the count
    in the document (1 + log(count) with `sublinear_tf`), idf = 1 + log((1 + N) / (1 + df)) over
    Split-train's N documents, the weights of a document scaled to unit L2 norm. N-grams outside
    the vocabulary (in fewer than `min_df` Split-train documents, or beyond `top_k`) are left
    out; a document with none has an empty bag.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    sparse_tokens = tokens.to_sparse()
    every = tft.ngrams(sparse_tokens, (1, ngrams), " ")
    # The vocabulary counts each n-gram once per document: its frequency is the document
    # frequency, so frequency_threshold is min_df and top_k keeps the most widespread.
    vocabulary = tft.vocabulary(
        tft.bag_of_words(sparse_tokens, (1, ngrams), " "), top_k=top_k or None,
        frequency_threshold=min_df if min_df > 1 else None, vocab_filename=WIDE_VOCAB_NAME)
    ids = tft.apply_vocabulary(every, vocabulary, default_value=-1)
    size = tf.maximum(tf.cast(tft.get_num_buckets_for_transformed_feature(ids), tf.int64), 1)
    ids = tf.sparse.retain(ids, ids.values >= 0)
    idf = tft.experimental.idf(ids, size).values  # one per occurrence
    # Each (document, n-gram) once, with its count: keys in document order, and unique keeps
    # the order of first occurrences, so the documents stay in order.
    batch = tf.shape(tokens.row_lengths(), out_type=tf.int64)[0]
    keys, where, counts = tf.unique_with_counts(ids.indices[:, 0] * size + ids.values,
                                                out_idx=tf.int64)
    documents, terms = keys // size, keys % size
    term_idf = tf.math.unsorted_segment_max(idf, where, tf.size(keys, out_type=tf.int64))
    counts = tf.cast(counts, tf.float32)
    tf_weight = 1.0 + tf.math.log(counts) if sublinear_tf else counts
    weights = tf_weight * tf.cast(term_idf, tf.float32)
    norms = tf.math.sqrt(tf.math.unsorted_segment_sum(tf.square(weights), documents, batch))
    weights = weights / tf.gather(norms, documents)
    bag_ids = tf.RaggedTensor.from_value_rowids(
        terms, documents, nrows=batch, validate=False).to_sparse()
    bag_weights = tf.RaggedTensor.from_value_rowids(
        weights, documents, nrows=batch, validate=False).to_sparse()
    return bag_ids, bag_weights


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """tf.Transform preprocessing.

    `text` -> `text_xf`: token ids truncated to max_len, a sparse feature whose dense shape is
    [max_len] (recorded in the transformed schema); the Trainer and the exported model pad it.
    `text_tokens` and `text_oov_tokens`: each document's token count and out-of-vocabulary
    count before truncation (for the length and coverage statistics).
    `label` -> `label_xf`: the index in the class list.

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
    lengths = tokens.row_lengths()
    if custom_config["max_len"] == AUTO:
        max_len = tf.clip_by_value(length_quantile(lengths, custom_config["max_len_quantile"]),
                                   1, custom_config["max_len_cap"])
    else:
        max_len = tf.constant(custom_config["max_len"], tf.int64)
    truncated = (ids + RESERVED_IDS)[:, :max_len].to_sparse()
    tft.experimental.annotate_sparse_output_shape(truncated, tf.reshape(max_len, [1]))
    vocabulary_size = tft.experimental.get_vocabulary_size_by_name(VOCAB_NAME)
    outputs = {
        features.transformed_name(features.TEXT): truncated,
        features.TOKENS: lengths,
        features.OOV_TOKENS: tf.reduce_sum(tf.cast(ids >= vocabulary_size, tf.int64), axis=1),
    }
    if custom_config.get("wide"):
        outputs[features.WIDE_IDS], outputs[features.WIDE_WEIGHTS] = wide_features(
            tokens, custom_config["wide_ngrams"], custom_config["wide_min_df"],
            custom_config["wide_top_k"], custom_config["wide_sublinear_tf"])

    if features.LABEL in inputs:
        # Index in the class list, -1 for a label outside it (validation stops those earlier).
        classes = tf.constant(custom_config["classes"])
        matches = tf.equal(tf.expand_dims(inputs[features.LABEL], 1), tf.expand_dims(classes, 0))
        outputs[features.transformed_name(features.LABEL)] = tf.where(
            tf.reduce_any(matches, axis=1), tf.argmax(tf.cast(matches, tf.int64), axis=1),
            tf.constant(-1, tf.int64))
    return outputs


def dense_token_ids(ids, max_len: int):
    """`text_xf` as the model takes it: a sparse [batch, <=max_len] -> dense [batch, max_len],
    padded with PADDING_ID."""
    import tensorflow as tf

    dense = tf.sparse.to_dense(tf.sparse.reset_shape(
        ids, tf.stack([tf.shape(ids, out_type=tf.int64)[0], tf.constant(max_len, tf.int64)])),
        default_value=PADDING_ID)
    return tf.ensure_shape(dense, [None, max_len])


def dense_wide_features(parsed: Dict[str, Any]):
    """The wide tower's parsed sparse features -> dense [batch, longest bag] (ids, weights),
    padded with id 0 and weight 0 (which add nothing to the wide logits)."""
    import tensorflow as tf

    return (tf.sparse.to_dense(parsed[features.WIDE_IDS], default_value=0),
            tf.sparse.to_dense(parsed[features.WIDE_WEIGHTS], default_value=0.0))


def transformed_max_len(tft_output) -> int:
    """The sequence length the transform graph truncates to (from the transformed schema)."""
    return int(tft_output.transformed_feature_spec()[
        features.transformed_name(features.TEXT)].size[0])


def make_preprocessing_fn(settings: TransformSettings, classes: Sequence[str]):
    config = dict(dataclasses.asdict(settings), classes=list(classes))
    return functools.partial(preprocessing_fn, custom_config=config)


def run_transform(examples_dir: str, classes: Sequence[str], output_dir: str,
                  settings: TransformSettings, beam_options) -> Dict[str, Any]:
    """Analyses Split-train, transforms every split; writes TFRecords and the transform graph.

    The transformed examples are written in a canonical layout (`WriteSortedTFRecords`): the
    same records give the same files, whatever order the runner processed them in.
    """
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
        with beam_pipeline(beam_options) as p, tft_beam.Context(
                temp_dir=fileio.join(tmp, ".tft_tmp"), force_tf_compat_v1=False):
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
                    | f"Write[{split}]" >> WriteSortedTFRecords(
                        fileio.join(tmp, features.split_dir_name(split), TRANSFORMED_PREFIX),
                        transformed_num_shards(examples_dir, split, settings)))
                _ = (
                    batches
                    | f"TokenStats[{split}]" >> beam.CombineGlobally(TokenStatsFn())
                    | f"TokenStatsToJson[{split}]" >> beam.Map(json.dumps)
                    | f"WriteTokenStats[{split}]" >> beam.io.WriteToText(
                        fileio.join(tmp, features.split_dir_name(split), TOKEN_STATS_FILE),
                        shard_name_template=""))
        fileio.rmtree(fileio.join(tmp, ".tft_tmp"))
        tft_output = tft.TFTransformOutput(tmp)
        vocab_size = tft_output.vocabulary_size_by_name(VOCAB_NAME)
        max_len = transformed_max_len(tft_output)
        info = {"splits": list(splits), "vocabulary_size": vocab_size,
                "input_dim": vocab_size + RESERVED_IDS + settings.num_oov_buckets,
                "classes": list(classes), "max_len": max_len,
                "max_len_source": AUTO if settings.max_len == AUTO else "fixed",
                # The wide tower's n-gram vocabulary (ids 0..wide_input_dim - 1); None: the
                # output has no wide features.
                "wide_input_dim": (tft_output.vocabulary_size_by_name(WIDE_VOCAB_NAME)
                                   if settings.wide else None),
                "token_lengths": {split: _read_token_stats(tmp, split, max_len)
                                  for split in splits},
                "settings": dataclasses.asdict(settings)}
        if settings.wide and not info["token_lengths"][features.TRAIN]["wide_ngrams"]:
            info["warnings"] = [
                f"the wide tower's vocabulary is empty: no n-gram is in "
                f"{settings.wide_min_df} or more Split-train documents, so the wide tower "
                f"adds nothing (lower transform.wide_min_df, or set trainer.model.wide = false)"]
        fileio.write_json(fileio.join(tmp, TRANSFORM_INFO_FILE), info, indent=2,
                          sort_keys=True)
    return info


class TokenStatsFn(beam.CombineFn):
    """Transformed record batches -> {histogram: {tokens: documents}, documents, tokens, oov,
    wide_ngrams}."""

    def create_accumulator(self):
        # wide_ngrams: the wide features' entries (n-grams, each once per document), if any.
        return {"histogram": collections.Counter(), "documents": 0, "tokens": 0,
                "oov_tokens": 0, "wide_ngrams": 0}

    def add_input(self, acc, element):
        import numpy as np

        record_batch, _ = element
        lengths = np.asarray(record_batch.column(features.TOKENS).flatten())
        oov = np.asarray(record_batch.column(features.OOV_TOKENS).flatten())
        acc["histogram"].update(lengths.tolist())
        acc["documents"] += len(lengths)
        acc["tokens"] += int(lengths.sum())
        acc["oov_tokens"] += int(oov.sum())
        if features.WIDE_IDS in record_batch.schema.names:
            acc["wide_ngrams"] += len(record_batch.column(features.WIDE_IDS).flatten())
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            for key, value in acc.items():
                merged[key] += value  # Counter + Counter for the histogram
        return merged

    def extract_output(self, acc):
        return dict(acc, histogram=sorted(acc["histogram"].items()))


def _read_token_stats(transform_dir: str, split: str, max_len: int) -> Dict[str, Any]:
    """A split's token statistics, with the documents longer than max_len counted."""
    path = fileio.join(transform_dir, features.split_dir_name(split), TOKEN_STATS_FILE)
    stats = fileio.read_json(path)
    stats["truncated"] = sum(n for length, n in stats["histogram"] if length > max_len)
    return stats


class _EncodeFn(beam.DoFn):
    """(RecordBatch, passthrough) of transformed features -> serialized tf.Examples.

    The encoder serializes each Example's feature map in hash-map order, which varies from
    process to process; serializing again deterministically (map keys sorted) makes the bytes a
    function of the features alone, as the canonical writer needs.
    """

    def __init__(self):
        self._encoder = None
        self._parse = None

    def process(self, element, schema) -> Iterator[bytes]:
        if self._encoder is None:
            import tensorflow as tf
            from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

            self._encoder = RecordBatchToExamplesEncoder(schema)
            self._parse = tf.train.Example.FromString
        record_batch, _ = element
        for serialized in self._encoder.encode(record_batch):
            yield self._parse(serialized).SerializeToString(deterministic=True)


def transformed_data_pattern(transform_dir: str, split: str) -> str:
    return fileio.join(transform_dir, features.split_dir_name(split), f"{TRANSFORMED_PREFIX}*")


def transformed_num_shards(examples_dir: str, split: str, settings: TransformSettings) -> int:
    """Files for a split's transformed examples: its record count (from ExampleGen's
    `counts.json`) over `records_per_shard`; one file when the artifact has no counts.

    The count comes from the input artifact, never from how its records are laid out, so the
    same records give the same files.
    """
    records = read_split_count(examples_dir, split)
    return num_shards_for(records or 0, settings.records_per_shard)


def read_split_count(examples_dir: str, split: str) -> Optional[int]:
    """Records of `split` in an ExampleGen artifact, from its `counts.json`; None if unknown."""
    from components.readers import COUNTS_FILE

    path = fileio.join(examples_dir, COUNTS_FILE)
    if not fileio.exists(path):
        return None
    try:
        counts = fileio.read_json(path)
    except ValueError as e:
        raise UserInputError(f"{path} is not valid JSON: {e}") from e
    splits = counts.get("splits") if isinstance(counts, dict) else None
    n = splits.get(split) if isinstance(splits, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
