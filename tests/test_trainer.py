"""Trainer: the network's shape, pretrained vectors, repeatability, and no training/serving skew."""
import bz2
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from components import export, features
from components import transform as tr
from components.example_gen import to_tf_example
from conftest import write_examples
from components.model import ModelSettings, build_textcnn, load_embedding_matrix
from components.trainer import TrainerSettings, run_trainer

CLASSES = ["NUM", "HUM", "LOC"]
TEMPLATES = {"NUM": "how many {} are there ?", "HUM": "who is the {} ?",
             "LOC": "where is the {} ?"}
WORDS = ["moon", "river", "king", "city", "ocean", "author", "bridge", "planet", "tower", "lake"]


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_textcnn_max_over_time():
    model = build_textcnn(100, 20, 6, ModelSettings(embedding_dim=8))
    convs = [l for l in model.layers if type(l).__name__ == "Conv1D"]
    assert [(c.kernel_size[0], c.filters, c.padding, c.strides[0]) for c in convs] == [
        (3, 100, "valid", 1), (4, 100, "valid", 1), (5, 100, "valid", 1)]
    assert all(c.activation.__name__ == "relu" for c in convs)
    assert layer_types(model).count("GlobalMaxPooling1D") == 3
    assert model.get_layer("concatenate").output.shape[-1] == 300
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("logits").kernel_constraint.get_config()["max_value"] == 3.0
    assert model.output.shape[-1] == 6
    assert model.get_layer("embedding").input_dim == 100
    probabilities = model(tf.zeros([2, 20], tf.int64)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_textcnn_seed_pooling_flattens_each_branch():
    model = build_textcnn(50, 10, 2, ModelSettings(embedding_dim=4, num_filters=2,
                                                   pooling="seed", max_norm=0))
    # valid conv of width k on 10 steps -> 11-k; pool 2 stride 1 -> 10-k; times 2 filters.
    flat = [model.get_layer(f"flatten_{k}").output.shape[-1] for k in (3, 4, 5)]
    assert flat == [(10 - k) * 2 for k in (3, 4, 5)]
    assert model.get_layer("concatenate").output.shape[-1] == sum(flat)
    assert model.get_layer("logits").kernel_constraint is None


@pytest.mark.parametrize("pooling, max_len, padded", [
    ("max_over_time", 2, 5), ("max_over_time", 4, 5), ("seed", 2, 6), ("seed", 5, 6)])
def test_sequences_shorter_than_the_widest_filter_are_padded(pooling, max_len, padded):
    model = build_textcnn(20, max_len, 3, ModelSettings(embedding_dim=4, num_filters=2,
                                                       pooling=pooling))
    assert model.get_layer("pad_to_widest_filter").output.shape[1] == padded
    assert model(tf.constant([[3, 4, 5, 6, 7][:max_len]], tf.int64)).shape == (1, 3)


def test_mask_zero_zeroes_padding_vectors():
    model = build_textcnn(20, 6, 2, ModelSettings(embedding_dim=4, mask_zero=True))
    import tf_keras as keras

    upto_mask = keras.Model(model.input, model.get_layer("mask_padding").output)
    out = upto_mask(tf.constant([[3, 4, 0, 0, 0, 0]], tf.int64)).numpy()
    assert np.all(out[0, 2:] == 0) and np.any(out[0, :2] != 0)


def test_embedding_matrix_in_vocabulary_order(tmp_path):
    path = tmp_path / "vectors.txt.bz2"
    path.write_bytes(bz2.compress(b"3 2\nthe 1.0 2.0\ncat 3.0 4.0\nunused 9 9\n"))
    matrix, found = load_embedding_matrix(str(path), ["cat", "dog", "the"], input_dim=5, seed=1)
    assert matrix.shape == (5, 2) and found == 2
    np.testing.assert_array_equal(matrix[0], [0, 0])  # padding
    np.testing.assert_array_equal(matrix[1], [3, 4])  # cat
    np.testing.assert_array_equal(matrix[3], [1, 2])  # the
    assert np.all(np.abs(matrix[[2, 4]]) <= 0.25)  # dog (not found) and the OOV row

    model = build_textcnn(5, 6, 2, ModelSettings(embeddings=str(path)), matrix)
    embedding = model.get_layer("embedding")
    assert not embedding.trainable and embedding.output_dim == 2
    np.testing.assert_array_equal(embedding.get_weights()[0], matrix)
    tuned = build_textcnn(5, 6, 2, ModelSettings(embeddings=str(path),
                                                 embeddings_trainable=True), matrix)
    assert tuned.get_layer("embedding").trainable


def make_transformed(tmp_path, in_memory_options, n=60):
    """A tiny ExampleGen output (train/eval/test) run through the real Transform stage."""
    examples = tmp_path / "ExampleGen"
    texts = {}
    for i in range(n):
        label = CLASSES[i % 3]
        text = TEMPLATES[label].format(WORDS[(i // 3) % len(WORDS)] + ("s" * (i // 30)))
        split = "test" if i % 10 == 0 else "eval" if i % 10 == 1 else "train"
        texts.setdefault(split, []).append((text, label))
    # Auto max_len is the 0.95 quantile of training lengths (5-6 tokens): this one is longer,
    # and so is one in the test split, truncated alike by the Transform and the served model.
    texts["train"].append(("how many moons and rings and planets are there ?", "NUM"))
    texts["test"].append(("who is the king of the city by the lake ?", "HUM"))
    write_examples(examples, texts)
    out = str(tmp_path / "Transform")
    info = tr.run_transform(str(examples), CLASSES, out, tr.TransformSettings(),
                            in_memory_options)
    assert info["max_len"] == 6 and info["token_lengths"]["train"]["truncated"] == 1
    return out, texts


SMALL = TrainerSettings(model=ModelSettings(embedding_dim=8, num_filters=4), epochs=3,
                        batch_size=8, early_stopping_patience=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from apache_beam.options.pipeline_options import PipelineOptions

    from conftest import IN_MEMORY

    tmp = tmp_path_factory.mktemp("trained")
    transform_dir, texts = make_transformed(tmp, PipelineOptions(IN_MEMORY))
    result = run_trainer(transform_dir, str(tmp / "Trainer"), SMALL)
    return transform_dir, texts, result, tmp


def test_trainer_outputs_and_history(trained):
    _, _, result, tmp = trained
    assert result["epochs_run"] == 3
    assert set(result["metrics"]) >= {"train_accuracy", "eval_accuracy", "test_accuracy"}
    assert os.path.exists(os.path.join(tmp, "Trainer", "history.json"))
    assert os.listdir(os.path.join(tmp, "Trainer", "logs"))
    assert result["strategy"] == "_DefaultDistributionStrategy" and result["replicas"] == 1


def test_training_path_equals_serving_path(trained):
    """Transformed features -> model, and raw text -> serving signature: same probabilities."""
    import tensorflow_transform as tft

    transform_dir, texts, result, _ = trained
    loaded = tf.saved_model.load(result["model"])
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    for split in ("eval", "test"):
        records = list(tf.data.TFRecordDataset(
            tf.io.gfile.glob(tr.transformed_data_pattern(transform_dir, split)),
            compression_type="GZIP"))
        max_len = tr.transformed_max_len(tft.TFTransformOutput(transform_dir))
        ids = tr.dense_token_ids(tf.io.parse_example(tf.stack(records), spec)["text_xf"],
                                 max_len)
        assert ids.shape[1] == max_len == 6
        training_path = loaded(ids, training=False).numpy()

        raw = tf.constant([t for t, _ in texts[split]])
        serving = loaded.signatures[export.SERVING_DEFAULT](text=raw)
        serialized = tf.constant([to_tf_example({features.TEXT: t.encode()})
                                  for t, _ in texts[split]])
        served_examples = loaded.signatures[export.SERVING_EXAMPLES](examples=serialized)
        transformed = loaded.signatures[export.TRANSFORM_FEATURES](examples=tf.constant(
            [to_tf_example({features.TEXT: t.encode(), features.LABEL: l.encode()})
             for t, l in texts[split]]))

        # The serving transform gives exactly the ids Beam wrote (rows sorted: order differs).
        assert sorted(map(tuple, transformed["text_xf"].numpy().tolist())) == sorted(
            map(tuple, ids.numpy().tolist()))
        assert transformed["label_xf"].numpy().tolist() == [CLASSES.index(l)
                                                            for _, l in texts[split]]
        np.testing.assert_allclose(np.sort(serving[export.PROBABILITIES].numpy(), axis=0),
                                   np.sort(training_path, axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(served_examples[export.PROBABILITIES].numpy(),
                                   serving[export.PROBABILITIES].numpy(), rtol=1e-6)
        names = serving[export.PREDICTED_CLASS].numpy().tolist()
        assert names == [CLASSES[i].encode() for i in
                         np.argmax(serving[export.PROBABILITIES].numpy(), axis=1)]


def test_cpu_training_is_repeatable(trained, tmp_path):
    transform_dir, texts, result, _ = trained
    again = run_trainer(transform_dir, str(tmp_path / "Trainer"), SMALL)
    assert again["metrics"] == result["metrics"]
    raw = tf.constant([t for t, _ in texts["test"]])
    first = tf.saved_model.load(result["model"]).signatures["serving_default"](text=raw)
    second = tf.saved_model.load(again["model"]).signatures["serving_default"](text=raw)
    np.testing.assert_array_equal(first["probabilities"].numpy(), second["probabilities"].numpy())
