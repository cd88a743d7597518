"""Export: one SavedModel with the transform graph inside, so serving sees exactly what training saw.

Signatures:
  serving_default      text: [batch] raw strings -> probabilities, predicted_class, predicted_class_id
  serving_examples     examples: [batch] serialized tf.Example (TF Serving / RunInference) -> same
  transform_features   examples: [batch] serialized tf.Example with label -> text_xf, label_xf,
                       text_length_bucket (for TFMA's preprocessing_function_names, as TFX's
                       penguin example does; the bucket is a feature for slicing only)
"""
from __future__ import annotations

from typing import Sequence

from components import features

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
TRANSFORM_FEATURES = "transform_features"

PROBABILITIES = "probabilities"
PREDICTED_CLASS = "predicted_class"
PREDICTED_CLASS_ID = "predicted_class_id"
LENGTH_BUCKET = "text_length_bucket"
# Whitespace-separated words: 1-5, 6-10, 11-20, 21-40, over 40.
LENGTH_BOUNDARIES = (5, 10, 20, 40)
LENGTH_NAMES = ("01-05", "06-10", "11-20", "21-40", "41+")


def length_bucket(text):
    """Batch of raw strings -> the name of each one's length bucket (in words)."""
    import tensorflow as tf

    words = tf.strings.split(text).row_lengths()
    index = tf.searchsorted(tf.constant(LENGTH_BOUNDARIES, tf.int64), words, side="left")
    return tf.gather(tf.constant(LENGTH_NAMES), index)


def export_serving_model(model, tft_output, classes: Sequence[str], max_len: int,
                         export_dir: str) -> None:
    import tensorflow as tf

    from components.model import model_inputs
    from components.transform import dense_token_ids, dense_wide_features, raw_feature_spec

    text_xf = features.transformed_name(features.TEXT)
    wide = isinstance(model.input, dict)  # a wide tower's model takes `model_inputs`' dict
    # Attached to the model so that the transform graph and its vocabulary asset are saved too.
    model.tft_layer = tft_output.transform_features_layer()
    class_names = tf.constant(list(classes))

    def transform(raw_features):
        transformed = dict(model.tft_layer(raw_features))
        transformed[text_xf] = dense_token_ids(transformed[text_xf], max_len)
        if features.WIDE_IDS in transformed:
            transformed[features.WIDE_IDS], transformed[features.WIDE_WEIGHTS] = (
                dense_wide_features(transformed))
        return transformed

    def predict(raw_features):
        transformed = transform(raw_features)
        inputs = (model_inputs(transformed[text_xf], transformed[features.WIDE_IDS],
                               transformed[features.WIDE_WEIGHTS])
                  if wide else transformed[text_xf])
        probabilities = tf.cast(model(inputs, training=False), tf.float32)
        class_id = tf.argmax(probabilities, axis=1)
        return {PROBABILITIES: probabilities, PREDICTED_CLASS_ID: class_id,
                PREDICTED_CLASS: tf.gather(class_names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.TEXT)])
    def serve_text(text):
        return predict({features.TEXT: text})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized):
        return predict(tf.io.parse_example(serialized, raw_feature_spec(with_label=False)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        raw = tf.io.parse_example(serialized, raw_feature_spec(with_label=True))
        transformed = transform(raw)
        transformed[LENGTH_BUCKET] = length_bucket(raw[features.TEXT])
        return transformed

    tf.saved_model.save(model, export_dir, signatures={
        SERVING_DEFAULT: serve_text.get_concrete_function(),
        SERVING_EXAMPLES: serve_examples.get_concrete_function(),
        TRANSFORM_FEATURES: transform_features.get_concrete_function(),
    })
