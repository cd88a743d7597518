"""Trainer: the network's shape, pretrained vectors, repeatability, and no training/serving skew."""
import bz2
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from components import export, features
from components import transform as tr
from components.readers import to_tf_example
from conftest import write_examples
from components.errors import UserInputError
from components.model import ModelSettings, build_textcnn, load_embedding_matrix
from components.trainer import TrainerSettings, run_trainer

CLASSES = ["NUM", "HUM", "LOC"]
TEMPLATES = {"NUM": "how many {} are there ?", "HUM": "who is the {} ?",
             "LOC": "where is the {} ?"}
WORDS = ["moon", "river", "king", "city", "ocean", "author", "bridge", "planet", "tower", "lake"]


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_textcnn_max_over_time():
    model = build_textcnn(100, 20, 6, ModelSettings(wide=False, embedding_dim=8))
    convs = [l for l in model.layers if type(l).__name__ == "Conv1D"]
    assert [(c.kernel_size[0], c.filters, c.padding, c.strides[0]) for c in convs] == [
        (3, 100, "valid", 1), (4, 100, "valid", 1), (5, 100, "valid", 1)]
    assert all(c.activation.__name__ == "relu" for c in convs)
    assert layer_types(model).count("MaxOverText") == 3
    assert model.input.shape.as_list() == [None, None]  # any length: see length_free
    assert model.get_layer("concatenate").output.shape[-1] == 300
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("logits").kernel_constraint.get_config()["max_value"] == 3.0
    assert model.output.shape[-1] == 6
    assert model.get_layer("embedding").input_dim == 100
    probabilities = model(tf.zeros([2, 20], tf.int64)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_textcnn_seed_pooling_flattens_each_branch():
    model = build_textcnn(50, 10, 2, ModelSettings(wide=False, embedding_dim=4, num_filters=2,
                                                   pooling="seed", max_norm=0))
    # valid conv of width k on 10 steps -> 11-k; pool 2 stride 1 -> 10-k; times 2 filters.
    flat = [model.get_layer(f"flatten_{k}").output.shape[-1] for k in (3, 4, 5)]
    assert flat == [(10 - k) * 2 for k in (3, 4, 5)]
    assert model.get_layer("concatenate").output.shape[-1] == sum(flat)
    assert model.get_layer("logits").kernel_constraint is None


@pytest.mark.parametrize("pooling, max_len, padded", [("seed", 2, 6), ("seed", 5, 6)])
def test_sequences_shorter_than_the_widest_filter_are_padded(pooling, max_len, padded):
    model = build_textcnn(20, max_len, 3, ModelSettings(wide=False, embedding_dim=4,
                                                       num_filters=2, pooling=pooling))
    assert model.get_layer("pad_to_widest_filter").output.shape[1] == padded
    assert model(tf.constant([[3, 4, 5, 6, 7][:max_len]], tf.int64)).shape == (1, 3)


def test_length_free_model_is_the_same_however_far_a_text_is_padded():
    """The Trainer pads each batch only to its longest text, the exported model to max_len:
    the probabilities must not depend on it, nor on the other texts of the batch."""
    model = build_textcnn(30, 12, 3, ModelSettings(wide=False, embedding_dim=8, num_filters=4))
    texts = [[3, 4, 5, 6, 7, 8, 9], [2], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], []]

    def padded(rows, width):
        return tf.constant([row + [0] * (width - len(row)) for row in rows], tf.int64)

    reference = model(padded(texts, 12)).numpy()
    for width in (12, 13, 40):
        np.testing.assert_allclose(model(padded(texts, width)).numpy(), reference, rtol=1e-6)
    for i, row in enumerate(texts):  # alone, padded to itself only (shorter than a kernel too)
        np.testing.assert_allclose(model(padded([row], len(row))).numpy()[0], reference[i],
                                   rtol=1e-6, atol=1e-7)


def test_max_over_text_keeps_the_windows_inside_the_text():
    from components.model import _max_over_text_layer

    pool = _max_over_text_layer()(3)
    # conv outputs of a width-3 kernel over 6 steps -> 4 windows, one filter: the windows
    # starting at 0..3. A text of 4 tokens has windows 0 and 1 inside it.
    conv = tf.constant([[[1.0], [2.0], [9.0], [8.0]],  # text of 4: max(1, 2)
                        [[5.0], [2.0], [9.0], [8.0]],  # text of 1: window 0 only
                        [[1.0], [2.0], [3.0], [8.0]]])  # text of 6: all four
    out = pool([conv, tf.constant([4, 1, 6])]).numpy()
    assert out[:, 0].tolist() == [2.0, 5.0, 8.0]


def test_mask_zero_zeroes_padding_vectors():
    model = build_textcnn(20, 6, 2, ModelSettings(wide=False, embedding_dim=4, mask_zero=True))
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

    model = build_textcnn(5, 6, 2, ModelSettings(wide=False, embeddings=str(path)), matrix)
    embedding = model.get_layer("embedding")
    assert not embedding.trainable and embedding.output_dim == 2
    np.testing.assert_array_equal(embedding.get_weights()[0], matrix)
    tuned = build_textcnn(5, 6, 2, ModelSettings(wide=False, embeddings=str(path),
                                                 embeddings_trainable=True), matrix)
    assert tuned.get_layer("embedding").trainable


def test_unknown_vectors_take_the_variance_of_the_known_ones(tmp_path):
    rng = np.random.default_rng(0)
    known = rng.normal(0.0, [0.1, 2.0], (400, 2))  # per-dimension spread: 0.1 and 2.0
    lines = [f"w{i} {a:.6f} {b:.6f}" for i, (a, b) in enumerate(known)]
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    vocabulary = [f"w{i}" for i in range(400)] + [f"new{i}" for i in range(2000)]
    uniform, found = load_embedding_matrix(str(path), vocabulary, 2402, seed=3)
    scaled, _ = load_embedding_matrix(str(path), vocabulary, 2402, seed=3,
                                      unknown_vectors="variance")
    assert found == 400
    np.testing.assert_array_equal(uniform[:401], scaled[:401])  # padding and known rows
    bound = np.sqrt(3 * known.var(axis=0))
    unknown = scaled[401:]
    assert np.all(np.abs(unknown) <= bound + 1e-6)
    np.testing.assert_allclose(unknown.std(axis=0), known.std(axis=0), rtol=0.1)
    assert np.all(np.abs(uniform[401:]) <= 0.25)
    with pytest.raises(UserInputError, match="unknown_vectors"):
        ModelSettings(unknown_vectors="zeros")


def test_multichannel_has_a_frozen_and_a_tuned_copy(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("the 1.0 2.0\ncat 3.0 4.0\n")
    matrix, _ = load_embedding_matrix(str(path), ["cat", "the"], input_dim=4, seed=1)
    settings = ModelSettings(wide=False, embeddings=str(path), multichannel=True, num_filters=3)
    model = build_textcnn(4, 6, 2, settings, matrix)
    frozen, tuned = model.get_layer("embedding"), model.get_layer("embedding_tuned")
    assert not frozen.trainable and tuned.trainable
    np.testing.assert_array_equal(tuned.get_weights()[0], matrix)
    assert model.get_layer("conv_3").kernel.shape == (3, 4, 3)  # 2 channels of 2 dims
    trainable = {w.name.split("/")[0] for w in model.trainable_weights}
    assert "embedding_tuned" in trainable and "embedding" not in trainable
    with pytest.raises(UserInputError, match="multichannel needs pretrained"):
        ModelSettings(multichannel=True)


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


# The CNN alone (tests/test_wide.py trains the wide tower).
SMALL = TrainerSettings(model=ModelSettings(embedding_dim=8, num_filters=4, wide=False),
                        epochs=3, batch_size=8, early_stopping_patience=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from apache_beam.options.pipeline_options import PipelineOptions

    from conftest import IN_MEMORY

    tmp = tmp_path_factory.mktemp("trained")
    transform_dir, texts = make_transformed(tmp, PipelineOptions(IN_MEMORY))
    result = run_trainer(transform_dir, str(tmp / "Trainer"), SMALL)
    return transform_dir, texts, result, tmp


def test_trainer_outputs_and_history(trained):
    import json

    transform_dir, texts, result, tmp = trained
    assert result["epochs_run"] == 3
    assert set(result["metrics"]) >= {"train_accuracy", "eval_accuracy", "test_accuracy"}
    with open(os.path.join(tmp, "Trainer", "history.json")) as f:
        history = json.load(f)
    assert history["epochs_run"] == 3 and history["metrics"] == result["metrics"]
    assert {len(v) for v in history["history"].values()} == {3}
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history["history"])
    # TensorBoard event files for the training and the validation curves.
    logs = os.path.join(tmp, "Trainer", "logs")
    for part in ("train", "validation"):
        assert tf.io.gfile.glob(os.path.join(logs, part, "events.out.tfevents.*")), part
    assert result["strategy"] == "_DefaultDistributionStrategy" and result["replicas"] == 1
    # The reported test accuracy is the exported model's on the test texts.
    loaded = tf.saved_model.load(result["model"])
    test = texts["test"]
    predicted = loaded.signatures[export.SERVING_DEFAULT](
        text=tf.constant([t for t, _ in test]))[export.PREDICTED_CLASS].numpy()
    correct = sum(p.decode() == label for p, (_, label) in zip(predicted, test))
    assert result["metrics"]["test_accuracy"] == pytest.approx(correct / len(test), abs=1e-6)


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
        # Row by row: each text's served probabilities are those the training path gives the ids
        # Beam wrote for it (the same ids give the same probabilities, so a repeat is harmless).
        by_ids = {tuple(row): probs for row, probs in zip(ids.numpy().tolist(), training_path)}
        served = serving[export.PROBABILITIES].numpy()
        for i, row in enumerate(transformed["text_xf"].numpy().tolist()):
            np.testing.assert_allclose(served[i], by_ids[tuple(row)], rtol=1e-5, atol=1e-6)
        assert len({tuple(p) for p in np.round(served, 4)}) > 1  # the texts are told apart
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


def test_length_buckets_and_the_batches_of_a_pass(trained):
    """Each batch holds one length bucket, padded to its longest text; a pass yields every
    record once, in as many batches as `batches_per_pass` says (from the Transform's
    histogram), which the dataset asserts."""
    import dataclasses

    import tensorflow_transform as tft

    from components import trainer as tn

    assert tn.bucket_boundaries(18) == [4, 7, 10, 13, 16]
    assert tn.bucket_boundaries(6) == [2, 3, 4, 5, 6]
    assert tn.bucket_boundaries(400) == [51, 101, 151, 201, 251, 301, 351]
    transform_dir, texts, _, _ = trained
    info = tn.read_transform_info(transform_dir)
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    boundaries = [0] + tn.bucket_boundaries(info["max_len"]) + [10 ** 9]
    for bucketing in (True, False):
        settings = dataclasses.replace(SMALL, bucket_by_length=bucketing, batch_size=4)
        for split in info["splits"]:
            expected = tn.batches_per_pass(info, split, 4, settings)
            ds = tn.make_dataset(tr.transformed_data_pattern(transform_dir, split), spec,
                                 info["max_len"], 3, 4, split == "train", settings,
                                 batches=expected)
            batches = list(ds.as_numpy_iterator())
            assert len(batches) == expected == ds.cardinality().numpy()
            assert sum(len(ids) for ids, _ in batches) == len(texts[split])
            for ids, labels in batches:
                lengths = (ids != 0).sum(axis=1)
                assert len(ids) == len(labels) <= 4
                if not bucketing:
                    assert ids.shape[1] == info["max_len"]
                    continue
                assert ids.shape[1] == lengths.max()  # padded to its longest text only
                bucket = [np.searchsorted(boundaries, n, side="right") for n in lengths]
                assert len(set(bucket)) == 1, (lengths, boundaries)
        # A wrong count fails the pass instead of training on a part of it silently.
        wrong = tn.make_dataset(tr.transformed_data_pattern(transform_dir, "train"), spec,
                                info["max_len"], 3, 4, True, settings,
                                batches=tn.batches_per_pass(info, "train", 4, settings) + 1)
        with pytest.raises(tf.errors.FailedPreconditionError):
            list(wrong.as_numpy_iterator())
