"""Transform: the preprocessing_fn through tf.Transform's own test helpers, and the Beam stage."""
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import tensorflow as tf
from tensorflow_transform.beam import tft_unit
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components import transform as tr

CLASSES = ["pos", "neg"]


def metadata():
    return dataset_metadata.DatasetMetadata.from_feature_spec(tr.raw_feature_spec())


class PreprocessingFnTest(tft_unit.TransformTestCase):

    def test_vocabulary_order_ids_padding_and_labels(self):
        settings = tr.TransformSettings(max_len=5)
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
            {"text_xf": [ids[b"the"], ids[b"cat"], ids[b"sat"], ids[b"."], 0], "label_xf": 0},
            {"text_xf": [ids[b"the"], ids[b"dog"], ids[b"sat"], 0, 0], "label_xf": 1},
            {"text_xf": [ids[b"a"], ids[b"cat"], ids[b"?"], 0, 0], "label_xf": 0},
            {"text_xf": [ids[b"sat"]] * 5, "label_xf": 1},  # truncated to max_len
        ]
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(settings, CLASSES),
            expected_data=expected,
            expected_vocab_file_contents={tr.VOCAB_NAME: vocab})

    def test_frequency_threshold_top_k_and_oov(self):
        settings = tr.TransformSettings(max_len=4, frequency_threshold=2, num_oov_buckets=1)
        input_data = [
            {"text": b"a a b", "label": b"pos"},
            {"text": b"b c", "label": b"neg"},
        ]
        # Kept: a (2), b (2); c (1) falls under the threshold. OOV id = 1 + V = 3.
        expected = [
            {"text_xf": [2, 2, 1, 0], "label_xf": 0},
            {"text_xf": [1, 3, 0, 0], "label_xf": 1},
        ]
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(settings, CLASSES),
            expected_data=expected, expected_vocab_file_contents={tr.VOCAB_NAME: [b"b", b"a"]})

        top1 = tr.TransformSettings(max_len=3, top_k=1)
        self.assertAnalyzeAndTransformResults(
            input_data, metadata(), tr.make_preprocessing_fn(top1, CLASSES),
            expected_data=[{"text_xf": [2, 2, 1], "label_xf": 0},
                           {"text_xf": [1, 2, 0], "label_xf": 1}],
            expected_vocab_file_contents={tr.VOCAB_NAME: [b"b"]})


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
    info = tr.run_transform(str(examples), CLASSES, out, tr.TransformSettings(max_len=3),
                            in_memory_options)
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
            [row] = parsed
            oov = info["input_dim"] - 1
            assert row["text_xf"].numpy().tolist()[0] == oov  # "epsilon" is out of vocabulary
            assert row["label_xf"].numpy() == 1
    assert counts == {"train": 6, "eval": 1, "test": 1}
    assert os.path.isdir(os.path.join(out, "transform_fn"))
    assert os.path.isdir(os.path.join(out, "transformed_metadata"))
    assert schema_utils.schema_as_feature_spec(output.transformed_metadata.schema)
