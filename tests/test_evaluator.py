"""Evaluator: metrics checked against numbers worked out by hand, and each blessing rule alone.

The models here are not trained: each is a SavedModel with the Evaluator's two signatures whose
prediction is written in the text itself, so every prediction, and so every metric, is known.
A text is `p<k> q<j> words...`: the candidate predicts class k, the "oracle" predicts class j.
"""
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import pytest
import tensorflow as tf

from components import evaluator as ev
from components import export, features
from components.transform import raw_feature_spec
from conftest import write_examples

CLASSES = ["A", "B", "C"]
# (actual, candidate's prediction) pairs, so that the confusion matrix is, by hand:
#            predicted A  B  C
#   actual A           3  1  0
#   actual B           1  2  1
#   actual C           1  0  1
PAIRS = [("A", "A")] * 3 + [("A", "B")] + [("B", "A"), ("B", "B"), ("B", "B"), ("B", "C")] + \
        [("C", "A"), ("C", "C")]
MATRIX = [[3, 1, 0], [1, 2, 1], [1, 0, 1]]
# Lengths in words: 4 texts of 3 words (bucket 01-05), 6 of 7 words (06-10).
EXTRA_WORDS = [1, 1, 1, 5, 5, 5, 1, 5, 5, 5]


def text_of(i, actual, predicted):
    words = " ".join(f"w{i}x{n}" for n in range(EXTRA_WORDS[i]))
    return f"p{CLASSES.index(predicted)} q{CLASSES.index(actual)} {words}"


def make_model(path, token_index):
    """A SavedModel that predicts the class named by the text's token `token_index` (0: p, 1: q)
    with probability 0.8 (0.1 for the others), with the Evaluator's signatures."""
    classes = tf.constant(CLASSES)

    def predict(text):
        token = tf.strings.split(text).to_tensor()[:, token_index]
        class_id = tf.strings.to_number(tf.strings.substr(token, 1, 1), tf.int64)
        probabilities = 0.1 + 0.7 * tf.one_hot(class_id, len(CLASSES))
        return {export.PROBABILITIES: probabilities, export.PREDICTED_CLASS_ID: class_id,
                export.PREDICTED_CLASS: tf.gather(classes, class_id)}

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, serialized):
            raw = tf.io.parse_example(serialized, raw_feature_spec(with_label=False))
            return predict(raw[features.TEXT])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def transform_features(self, serialized):
            raw = tf.io.parse_example(serialized, raw_feature_spec(with_label=True))
            matches = tf.cast(tf.equal(tf.expand_dims(raw[features.LABEL], 1),
                                       tf.expand_dims(classes, 0)), tf.int64)
            return {features.transformed_name(features.LABEL): tf.argmax(matches, axis=1),
                    export.LENGTH_BUCKET: export.length_bucket(raw[features.TEXT])}

    module = Fixed()
    tf.saved_model.save(module, path, signatures={
        export.SERVING_EXAMPLES: module.serve_examples.get_concrete_function(),
        export.TRANSFORM_FEATURES: module.transform_features.get_concrete_function()})
    return path


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluator")
    rows = [(text_of(i, a, p), a) for i, (a, p) in enumerate(PAIRS)]
    write_examples(tmp / "examples", {"test": rows})
    return (tmp, str(tmp / "examples"), make_model(str(tmp / "candidate"), 0),
            make_model(str(tmp / "oracle"), 1))


def evaluate(fixed, name, settings, baseline=None):
    from apache_beam.options.pipeline_options import PipelineOptions

    from conftest import IN_MEMORY

    tmp, examples, candidate, _ = fixed
    out = str(tmp / name)
    result = ev.run_evaluator(examples, candidate, CLASSES, baseline, out, settings,
                              PipelineOptions(IN_MEMORY))
    return result, out


def test_metrics_equal_the_ones_worked_out_by_hand(fixed):
    result, out = evaluate(fixed, "by_hand", ev.EvaluatorSettings(min_accuracy=0.5))
    assert result["blessed"] and result["failures"] == [] and result["split"] == "test"
    assert os.path.exists(os.path.join(out, ev.BLESSED))
    overall = result["metrics"]["Overall"]
    assert overall["example_count"] == 10
    assert overall[ev.ACCURACY] == pytest.approx(6 / 10)
    assert overall["confusion_matrix"] == MATRIX  # [actual][predicted]
    # Precision is over a predicted column, recall over an actual row.
    expected = {"A": (3 / 5, 3 / 4), "B": (2 / 3, 2 / 4), "C": (1 / 2, 1 / 2)}
    f1s = []
    for c, (precision, recall) in enumerate(expected.values()):
        f1 = 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        assert overall[f"precision/class_{c}"] == pytest.approx(precision)
        assert overall[f"recall/class_{c}"] == pytest.approx(recall)
        assert overall[f"f1/class_{c}"] == pytest.approx(f1)
    assert overall["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 1 / 2) / 3)
    assert overall["macro_f1"] == pytest.approx(sum(f1s) / 3)

    # One slice per label, and per length bucket.
    b = result["metrics"]["label:B"]
    assert b["example_count"] == 4 and b[ev.ACCURACY] == pytest.approx(2 / 4)
    assert b["confusion_matrix"] == [[0, 0, 0], [1, 2, 1], [0, 0, 0]]
    assert b["recall/class_1"] == pytest.approx(2 / 4) and b["precision/class_1"] == 1.0
    assert b["recall/class_0"] is None and b["precision/class_0"] == 0.0
    short = result["metrics"]["text_length_bucket:01-05"]  # texts 0, 1, 2 (A->A) and 6 (B->B)
    assert short["example_count"] == 4 and short[ev.ACCURACY] == pytest.approx(1.0)
    long_ = result["metrics"]["text_length_bucket:06-10"]
    assert long_["example_count"] == 6 and long_[ev.ACCURACY] == pytest.approx(2 / 6)


def test_the_accuracy_floor_alone_blocks_a_model(fixed):
    result, out = evaluate(fixed, "floor", ev.EvaluatorSettings(min_accuracy=0.7))
    assert not result["blessed"] and result["baseline"] is None
    assert os.path.exists(os.path.join(out, ev.NOT_BLESSED))
    assert not os.path.exists(os.path.join(out, ev.BLESSED))
    [failure] = result["failures"]
    assert failure.startswith(f"{ev.ACCURACY} (value) = 0.6000 fails")
    assert "0.7" in failure


def test_the_change_threshold_alone_blocks_a_model_worse_than_the_baseline(fixed):
    _, _, _, oracle = fixed
    # The floor (0.5) passes; the baseline is right on every text (1.0 > 0.6 + 0.2).
    result, out = evaluate(fixed, "change", ev.EvaluatorSettings(min_accuracy=0.5,
                                                                 max_accuracy_drop=0.2),
                           baseline=oracle)
    assert not result["blessed"] and result["baseline"] == oracle
    assert os.path.exists(os.path.join(out, ev.NOT_BLESSED))
    assert result["metrics"]["Overall"][ev.ACCURACY] == pytest.approx(0.6)
    assert result["baseline_metrics"]["Overall"][ev.ACCURACY] == pytest.approx(1.0)
    assert result["baseline_metrics"]["Overall"]["confusion_matrix"] == [[4, 0, 0], [0, 4, 0],
                                                                        [0, 0, 2]]
    [failure] = result["failures"]
    assert failure.startswith(f"{ev.ACCURACY} (change) = -0.4000 fails")
