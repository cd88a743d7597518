"""Transform: the preprocessing_fn through tf.Transform's own test helpers, and the Beam stage."""
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import pytest
import tensorflow as tf
from tensorflow_transform.beam import tft_unit
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components import transform as tr
from components.errors import UserInputError

CLASSES = ["pos", "neg"]


def metadata():
    return dataset_metadata.DatasetMetadata.from_feature_spec(tr.raw_feature_spec())


def row(ids, label, tokens=None, oov=0):
    """An expected transformed row: `text_xf` is sparse (ids up to max_len, no padding)."""
    return {"text_xf$sparse_indices_0": list(range(len(ids))), "text_xf$sparse_values": ids,
            "label_xf": label, "text_tokens": len(ids) if tokens is None else tokens,
            "text_oov_tokens": oov}


class PreprocessingFnTest(tft_unit.TransformTestCase):

    def test_vocabulary_order_ids_padding_and_labels(self):
        settings = tr.TransformSettings(max_len=5, wide=False)
        input_data = [
            {"text": b"The cat sat.", "label": b"pos"},
            {"text": b"the DOG sat", "label": b"neg"},
            {"text": b"A cat?", "label": b"pos"},
            {"text": b"sat sat sat sat sat sat", "label": b"neg"},
        ]
        # Frequency first; ties (the/cat 2, dog/a/?/. 1) in tf.Transform's reverse token order.
        vocab = [b"sat", b"the", b"cat", b"dog", b"a", b"?", b"."]
        ids = {t: i + 1 for i, t in enumerate(vocab)}  # 0 is padding
        expected = [
            row([ids[b"the"], ids[b"cat"], ids[b"sat"], ids[b"."]], 0),
            row([ids[b"the"], ids[b"dog"], ids[b"sat"]], 1),
            row([ids[b"a"], ids[b"cat"], ids[b"?"]], 0),
            row([ids[b"sat"]] * 5, 1, tokens=6),  # truncated to max_len
        ]
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(settings, CLASSES),
            expected_data=expected,
            expected_vocab_file_contents={tr.VOCAB_NAME: vocab})

    def test_frequency_threshold_top_k_and_oov(self):
        settings = tr.TransformSettings(max_len=4, frequency_threshold=2, num_oov_buckets=1, wide=False)
        input_data = [
            {"text": b"a a b", "label": b"pos"},
            {"text": b"b c", "label": b"neg"},
        ]
        # Kept: a (2), b (2); c (1) falls under the threshold. OOV id = 1 + V = 3.
        expected = [row([2, 2, 1], 0), row([1, 3], 1, oov=1)]
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(settings, CLASSES),
            expected_data=expected, expected_vocab_file_contents={tr.VOCAB_NAME: [b"b", b"a"]})

        top1 = tr.TransformSettings(max_len=3, top_k=1, wide=False)
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(top1, CLASSES),
            expected_data=[row([2, 2, 1], 0, oov=2), row([1, 2], 1, oov=1)],
            expected_vocab_file_contents={tr.VOCAB_NAME: [b"b"]})


    def test_auto_max_len_is_the_exact_quantile_of_train_lengths(self):
        # Documents of 1..20 tokens: the 0.95 quantile is 19 tokens, so only the 20-token one
        # is truncated. The length is in the transformed schema (the sparse feature's shape).
        input_data = [{"text": " ".join(["w"] * n).encode(), "label": b"pos"}
                      for n in range(1, 21)]
        expected = [row([1] * min(n, 19), 0, tokens=n) for n in range(1, 21)]
        expected_metadata = dataset_metadata.DatasetMetadata.from_feature_spec({
            "text_xf": tf.io.SparseFeature(["text_xf$sparse_indices_0"],
                                           "text_xf$sparse_values", tf.int64, [19], True),
            "text_tokens": tf.io.FixedLenFeature([], tf.int64),
            "text_oov_tokens": tf.io.FixedLenFeature([], tf.int64),
            "label_xf": tf.io.FixedLenFeature([], tf.int64)})
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(),
            tr.make_preprocessing_fn(tr.TransformSettings(max_len_quantile=0.95, wide=False),
                                     CLASSES),
            expected_data=expected, expected_metadata=expected_metadata)
        capped = tr.TransformSettings(max_len_quantile=1.0, max_len_cap=7, wide=False)
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(capped, CLASSES),
            expected_data=[row([1] * min(n, 7), 0, tokens=n) for n in range(1, 21)])


def test_max_len_setting_is_auto_or_a_positive_number():
    assert tr.TransformSettings().max_len == "auto"
    assert tr.TransformSettings(max_len=50).max_len == 50
    for bad in ("long", 0, True, 2.5):
        with pytest.raises(UserInputError, match="max_len"):
            tr.TransformSettings(max_len=bad)
    with pytest.raises(UserInputError, match="max_len_quantile"):
        tr.TransformSettings(max_len_quantile=0)


def test_dense_token_ids_pads_to_max_len():
    ids = tf.sparse.SparseTensor([[0, 0], [0, 1], [1, 0]], tf.constant([5, 6, 7], tf.int64),
                                 [2, 2])
    dense = tr.dense_token_ids(ids, 4)
    assert dense.shape.as_list() == [2, 4]
    assert dense.numpy().tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]


def test_tokenizer_options():
    text = tf.constant(["How far is the Moon?"])
    assert tr.tokenize(text, True, True).to_list() == [[b"how", b"far", b"is", b"the", b"moon",
                                                         b"?"]]
    assert tr.tokenize(text, False, False).to_list() == [[b"How", b"far", b"is", b"the",
                                                           b"Moon?"]]


def test_stage_analyses_train_only_and_transforms_every_split(tmp_path, in_memory_options):
    from conftest import write_examples

    examples = tmp_path / "ExampleGen"
    rows = {"train": [("alpha beta", "pos"), ("beta gamma", "neg")] * 3,
            "eval": [("alpha delta", "pos")],
            "test": [("epsilon beta", "neg")]}
    write_examples(examples, rows)
    out = str(tmp_path / "Transform")
    info = tr.run_transform(str(examples), CLASSES, out, tr.TransformSettings(), in_memory_options)
    # Only Split-train words are in the vocabulary: delta/epsilon (eval/test only) are not.
    assert info["vocabulary_size"] == 3
    assert info["input_dim"] == 3 + 1 + 1
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(out)
    assert sorted(output.vocabulary_by_name(tr.VOCAB_NAME)) == [b"alpha", b"beta", b"gamma"]
    spec = output.transformed_feature_spec()
    counts = {}
    for split in ("train", "eval", "test"):
        ds = tf.data.TFRecordDataset(tf.io.gfile.glob(tr.transformed_data_pattern(out, split)),
                                     compression_type="GZIP")
        parsed = [tf.io.parse_single_example(r, spec) for r in ds]
        counts[split] = len(parsed)
        if split == "test":
            [example] = parsed
            oov = info["input_dim"] - 1
            ids = tf.sparse.to_dense(example["text_xf"]).numpy().tolist()
            assert ids == [oov, 1]  # "epsilon" is out of vocabulary; "beta" is the most frequent
            assert example["label_xf"].numpy() == 1
    assert counts == {"train": 6, "eval": 1, "test": 1}
    # Every training document has 2 tokens: auto max_len is 2, recorded for the Trainer.
    assert info["max_len"] == tr.transformed_max_len(output) == 2
    assert info["max_len_source"] == "auto"
    # The wide features (on by default): "alpha", "beta", "gamma", "alpha beta", "beta gamma"
    # are in 2+ training documents; each document has 3 of them.
    assert info["token_lengths"]["train"] == {"histogram": [[2, 6]], "documents": 6,
                                              "tokens": 12, "oov_tokens": 0, "truncated": 0,
                                              "wide_ngrams": 18}
    assert info["wide_input_dim"] == 5 and "warnings" not in info
    assert info["token_lengths"]["eval"]["oov_tokens"] == 1  # delta
    assert info["token_lengths"]["test"]["oov_tokens"] == 1  # epsilon
    assert os.path.isdir(os.path.join(out, "transform_fn"))
    assert os.path.isdir(os.path.join(out, "transformed_metadata"))
    assert schema_utils.schema_as_feature_spec(output.transformed_metadata.schema)
