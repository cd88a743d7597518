"""The wide tower: TF-IDF bags of n-grams from the Transform, a linear tower beside the CNN."""
import dataclasses
import json
import os

import components  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_transform.beam import tft_unit
from tensorflow_transform.tf_metadata import dataset_metadata

from components import export, features
from components import transform as tr
from components.errors import UserInputError
from components.model import ModelSettings, build_textcnn, model_inputs
from components.trainer import TrainerSettings, run_trainer
from conftest import write_examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["pos", "neg"]
WIDE = tr.TransformSettings(wide=True)


def sklearn_tfidf(train, texts, ngrams=2, min_df=2, sublinear=True):
    """{text: {n-gram: weight}} from scikit-learn's TfidfVectorizer fitted on `train`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, ngrams), min_df=min_df, sublinear_tf=sublinear,
                                 token_pattern=r"\S+", lowercase=False)
    vectorizer.fit(train)
    names = vectorizer.get_feature_names_out()
    out = []
    for row in vectorizer.transform(texts):
        out.append({names[j]: w for j, w in zip(row.indices, row.data)})
    return out


def bags(transformed_rows, vocabulary):
    """The transformed rows' wide features as {n-gram: weight} per row."""
    return [{vocabulary[i]: w for i, w in zip(r[features.WIDE_IDS], r[features.WIDE_WEIGHTS])}
            for r in transformed_rows]


class WideFeaturesTest(tft_unit.TransformTestCase):

    def test_tfidf_of_words_and_bigrams_equals_scikit_learn(self):
        # Lowercased and punctuation split off by the Transform's tokenizer already.
        texts = ["the cat sat on the mat", "the dog sat", "a cat and a dog",
                 "the the the cat", "zebra", "the cat sat", "", "okapi"]
        import tensorflow_transform.beam as tft_beam
        import tempfile

        # Batches of 2: the analysis adds up several batches, and one batch ("", "okapi")
        # has only empty bags.
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(), desired_batch_size=2):
            (rows, _), transform_fn = (
                ([{"text": t.encode(), "label": b"pos"} for t in texts],
                 dataset_metadata.DatasetMetadata.from_feature_spec(tr.raw_feature_spec()))
                | tft_beam.AnalyzeAndTransformDataset(tr.make_preprocessing_fn(WIDE, CLASSES)))
            vocabulary_dir = tempfile.mkdtemp()
            _ = transform_fn | tft_beam.WriteTransformFn(vocabulary_dir)
        import tensorflow_transform as tft

        vocabulary = [t.decode() for t in tft.TFTransformOutput(
            vocabulary_dir).vocabulary_by_name(tr.WIDE_VOCAB_NAME)]
        got = bags(rows, vocabulary)
        want = sklearn_tfidf(texts, texts)
        # "zebra" is in one document only (min_df 2): its bag is empty, as the empty text's.
        assert got[4] == {} == want[4] and got[6] == {} == want[6] == got[7]
        for g, w in zip(got, want):
            assert set(g) == set(w)
            for ngram in g:
                assert g[ngram] == pytest.approx(w[ngram], rel=1e-5)
        # Each n-gram once per document, unit L2 norm.
        for r in rows:
            assert len(set(r[features.WIDE_IDS])) == len(r[features.WIDE_IDS])
            if len(r[features.WIDE_WEIGHTS]):
                assert np.linalg.norm(r[features.WIDE_WEIGHTS]) == pytest.approx(1.0, rel=1e-5)

    def test_settings_of_the_bag(self):
        texts = [b"a b c", b"a b c", b"a b d", b"a a a a"]
        settings = tr.TransformSettings(wide=True, wide_ngrams=1, wide_min_df=1, wide_top_k=2,
                                        wide_sublinear_tf=False)
        import tensorflow_transform.beam as tft_beam
        import tempfile

        with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
            (rows, _), transform_fn = (
                ([{"text": t, "label": b"pos"} for t in texts],
                 dataset_metadata.DatasetMetadata.from_feature_spec(tr.raw_feature_spec()))
                | tft_beam.AnalyzeAndTransformDataset(tr.make_preprocessing_fn(settings,
                                                                               CLASSES)))
        # top_k 2 by document frequency: a (4 documents), b (3); no bigrams (wide_ngrams 1).
        # Raw counts (no sublinear tf): "a a a a" is a alone.
        n, df = 4, {"a": 4, "b": 3}
        idf = {t: 1 + np.log((1 + n) / (1 + d)) for t, d in df.items()}
        first = np.array([idf["a"], idf["b"]])
        assert len(rows[0][features.WIDE_IDS]) == 2
        np.testing.assert_allclose(sorted(rows[0][features.WIDE_WEIGHTS]),
                                   sorted(first / np.linalg.norm(first)), rtol=1e-5)
        np.testing.assert_allclose(rows[3][features.WIDE_WEIGHTS], [1.0], rtol=1e-6)


def test_auto_turns_the_wide_tower_on_for_long_documents():
    """"auto": on when max_len cut more than 10% of Split-train's documents (the cap of
    automatic max_len binds: long documents), and the Transform computed wide features."""
    from components.model import AUTO_WIDE_TRUNCATED, resolve_wide

    def info(truncated, documents=100, wide_input_dim=50):
        return {"wide_input_dim": wide_input_dim,
                "token_lengths": {"train": {"documents": documents, "truncated": truncated}}}

    auto = ModelSettings()
    assert auto.wide == "auto" and AUTO_WIDE_TRUNCATED == 0.10
    assert resolve_wide(auto, info(47)).wide is True  # BBC News: 47% cut at 400 tokens
    assert resolve_wide(auto, info(5)).wide is False  # the 0.95 quantile: short documents
    assert resolve_wide(auto, info(10)).wide is False
    assert resolve_wide(auto, info(47, wide_input_dim=None)).wide is False  # no features
    assert resolve_wide(auto, info(0, documents=0)).wide is False
    for fixed in (True, False):
        assert resolve_wide(ModelSettings(wide=fixed), info(0)).wide is fixed
    with pytest.raises(UserInputError, match="wide must be"):
        ModelSettings(wide="yes")
    with pytest.raises(ValueError, match="resolve_wide"):
        build_textcnn(20, 8, 3, auto, wide_input_dim=6)


def test_wide_settings_are_checked():
    for bad in ({"wide_ngrams": 0}, {"wide_min_df": 0}, {"wide_top_k": -1},
                {"wide_ngrams": True}):
        with pytest.raises(UserInputError, match="transform.wide_"):
            tr.TransformSettings(**bad)
    for bad in ({"wide_dropout": 1.0}, {"wide_l2": -1.0}, {"wide_learning_rate_scale": 0.0}):
        with pytest.raises(UserInputError, match="wide"):
            ModelSettings(**bad)


def test_wide_logits_are_added_to_the_cnn_logits():
    """softmax(cnn logits + scale * sum_j weight_j W[id_j]); padding (id 0, weight 0) adds
    nothing; a model whose wide weights are zero is the CNN alone."""
    settings = ModelSettings(embedding_dim=4, num_filters=2, wide=True, dropout_rate=0.0,
                             wide_learning_rate_scale=3.0)
    tf.keras.utils.set_random_seed(1)
    model = build_textcnn(20, 8, 3, settings, wide_input_dim=6)
    ids = tf.constant([[3, 4, 5, 6, 0, 0, 0, 0], [7, 8, 9, 0, 0, 0, 0, 0]], tf.int64)
    wide_ids = tf.constant([[1, 2, 0], [5, 0, 0]], tf.int64)
    weights = tf.constant([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], tf.float32)
    table = np.arange(18, dtype=np.float32).reshape(6, 3) / 10.0
    model.get_layer("wide_weights").set_weights([table])
    probabilities = model(model_inputs(ids, wide_ids, weights)).numpy()
    cnn = tf.keras.Model(model.inputs, model.get_layer("cnn_logits").output)
    cnn_logits = cnn(model_inputs(ids, wide_ids, weights)).numpy()
    wide = 3.0 * np.stack([0.6 * table[1] + 0.8 * table[2], table[5]])
    np.testing.assert_allclose(probabilities, tf.nn.softmax(cnn_logits + wide).numpy(),
                               rtol=1e-5)
    # More padding of the bag changes nothing.
    longer = model(model_inputs(ids, tf.pad(wide_ids, [[0, 0], [0, 4]]),
                                tf.pad(weights, [[0, 0], [0, 4]]))).numpy()
    np.testing.assert_allclose(longer, probabilities, rtol=1e-6)
    # Zero wide weights (as they start): the CNN's own probabilities.
    model.get_layer("wide_weights").set_weights([np.zeros_like(table)])
    np.testing.assert_allclose(model(model_inputs(ids, wide_ids, weights)).numpy(),
                               tf.nn.softmax(cnn_logits).numpy(), rtol=1e-5)
    with pytest.raises(UserInputError, match="wide features"):
        build_textcnn(20, 8, 3, settings)


TEXTS = {"pos": "a {} film , truly {} and moving", "neg": "a {} mess , dull and {} to watch"}
WORDS = ["fine", "great", "bold", "warm", "rich", "deep", "fresh", "keen"]


def make_wide_transformed(tmp_path, options, wide=True):
    rows = {}
    for i in range(64):
        label = CLASSES[i % 2]
        text = TEXTS[label].format(WORDS[i % 8], WORDS[(i // 8) % 8])
        split = "test" if i % 8 == 0 else "eval" if i % 8 == 1 else "train"
        rows.setdefault(split, []).append((text, label))
    write_examples(tmp_path / "ExampleGen", rows)
    out = str(tmp_path / "Transform")
    info = tr.run_transform(str(tmp_path / "ExampleGen"), CLASSES, out,
                            tr.TransformSettings(wide=wide), options)
    return out, rows, info


SMALL = TrainerSettings(model=ModelSettings(embedding_dim=8, num_filters=4, wide=True),
                        epochs=3, batch_size=8, early_stopping_patience=0)


@pytest.fixture(scope="module")
def trained_wide(tmp_path_factory):
    from apache_beam.options.pipeline_options import PipelineOptions

    from conftest import IN_MEMORY

    tmp = tmp_path_factory.mktemp("wide")
    transform_dir, rows, info = make_wide_transformed(tmp, PipelineOptions(IN_MEMORY))
    result = run_trainer(transform_dir, str(tmp / "Trainer"), SMALL)
    return transform_dir, rows, info, result, tmp


def test_trainer_with_the_wide_tower_serves_raw_text_as_it_trained(trained_wide):
    """The wide features reach the model the same way in training (Beam's transformed
    records, length-bucketed or not) and in serving (the raw-string signature)."""
    import tensorflow_transform as tft

    from components import trainer as tn

    transform_dir, rows, info, result, _ = trained_wide
    assert info["wide_input_dim"] > 10
    assert set(result["towers"]) == {"cnn", "wide"}
    assert result["towers"]["wide"] == {"ngrams": info["wide_input_dim"], "ngram_max": 2,
                                        "parameters": info["wide_input_dim"] * 2}
    assert (result["towers"]["cnn"]["parameters"] + result["towers"]["wide"]["parameters"]
            == result["parameters"])
    loaded = tf.saved_model.load(result["model"])
    weights = loaded.variables
    assert any("wide_weights" in v.name and np.abs(v.numpy()).max() > 0 for v in weights)
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    texts = [t for t, _ in rows["test"]]
    served = loaded.signatures[export.SERVING_DEFAULT](text=tf.constant(texts))[
        export.PROBABILITIES].numpy()
    transformed = loaded.signatures[export.TRANSFORM_FEATURES](examples=tf.constant(
        [tr_example(t, label) for t, label in rows["test"]]))
    # Each test text's token ids (distinct here), and the served transform's bag of it.
    key = {tuple(ids): k for k, ids in enumerate(transformed["text_xf"].numpy().tolist())}
    assert len(key) == len(texts)
    for bucketing in (True, False):
        settings = dataclasses.replace(SMALL, bucket_by_length=bucketing, cache=False)
        ds = tn.make_dataset(tr.transformed_data_pattern(transform_dir, "test"), spec,
                             info["max_len"], 2, 3, False, settings)
        seen = set()
        for x, _ in ds:
            assert set(x) == {"text_xf", features.WIDE_IDS, features.WIDE_WEIGHTS}
            probabilities = loaded(x, training=False).numpy()
            for i, p in enumerate(probabilities):
                ids = x["text_xf"][i].numpy().tolist()
                k = key[tuple(ids + [0] * (info["max_len"] - len(ids)))]
                # Beam's bag for the text is the served transform's (padding aside).
                bag = {(int(j), round(float(w), 5)) for j, w in zip(
                    x[features.WIDE_IDS][i].numpy(), x[features.WIDE_WEIGHTS][i].numpy()) if w}
                assert bag and bag == {(int(j), round(float(w), 5)) for j, w in zip(
                    transformed[features.WIDE_IDS][k].numpy(),
                    transformed[features.WIDE_WEIGHTS][k].numpy()) if w}
                np.testing.assert_allclose(p, served[k], rtol=1e-5, atol=1e-6)
                seen.add(k)
        assert seen == set(range(len(texts)))
    # An empty text and one of unknown words: empty bags, probabilities all the same.
    odd = loaded.signatures[export.SERVING_DEFAULT](text=tf.constant(["", "zzz qqq"]))[
        export.PROBABILITIES].numpy()
    np.testing.assert_allclose(odd.sum(axis=1), 1.0, rtol=1e-5)


def tr_example(text, label):
    from components.readers import to_tf_example

    return to_tf_example({features.TEXT: text.encode(), features.LABEL: label.encode()})


def test_mixed_precision_dropout_and_l2_of_the_wide_tower():
    """A training step under mixed_float16 with wide dropout and L2, batches with empty bags
    included: float32 probabilities, the L2 penalty on the effective weights."""
    import tf_keras as keras

    from components.trainer import compile_textcnn

    settings = ModelSettings(embedding_dim=4, num_filters=2, wide=True, wide_dropout=0.5,
                             wide_l2=0.01, wide_learning_rate_scale=10.0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_textcnn(20, 8, 2, settings, wide_input_dim=6)
        compile_textcnn(model, TrainerSettings(model=settings), steps_known=False)
        ids = tf.constant([[3, 4, 5, 0, 0, 0, 0, 0], [7, 8, 9, 0, 0, 0, 0, 0]], tf.int64)
        labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
        for wide_ids, weights in (
                (tf.constant([[1, 2], [5, 0]], tf.int64), tf.constant([[0.6, 0.8], [1.0, 0]])),
                (tf.zeros([2, 0], tf.int64), tf.zeros([2, 0], tf.float32))):
            model.train_on_batch(model_inputs(ids, wide_ids, weights), labels)
            out = model(model_inputs(ids, wide_ids, weights))
            assert out.dtype == tf.float32
            np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-3)
        kernel = model.get_layer("wide_weights").kernel.numpy()
        assert np.abs(kernel).max() > 0
        np.testing.assert_allclose(float(model.losses[0]),
                                   0.01 * np.sum((10.0 * kernel) ** 2), rtol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_an_empty_wide_vocabulary_is_a_warning(tmp_path, in_memory_options):
    rows = {"train": [("alpha", "pos"), ("beta", "neg"), ("gamma", "pos")],
            "eval": [("alpha", "pos")]}
    write_examples(tmp_path / "ExampleGen", rows)
    info = tr.run_transform(str(tmp_path / "ExampleGen"), CLASSES, str(tmp_path / "T"), WIDE,
                            in_memory_options)
    assert info["token_lengths"]["train"]["wide_ngrams"] == 0
    [warning] = info["warnings"]
    assert "wide tower's vocabulary is empty" in warning and "wide_min_df" in warning


def test_a_wide_model_needs_the_wide_features(tmp_path, in_memory_options):
    transform_dir, _, info = make_wide_transformed(tmp_path, in_memory_options, wide=False)
    assert info["wide_input_dim"] is None
    with pytest.raises(UserInputError, match="transform.wide = true"):
        run_trainer(transform_dir, str(tmp_path / "Trainer"), SMALL)
    # "auto" without wide features: the CNN alone.
    auto = dataclasses.replace(SMALL, epochs=1, model=dataclasses.replace(SMALL.model,
                                                                          wide="auto"))
    result = run_trainer(transform_dir, str(tmp_path / "Auto"), auto)
    assert set(result["towers"]) == {"cnn"} and result["settings"]["model"]["wide"] is False
    from components.tuner import TunerSettings, run_tuner

    cnn_only = dataclasses.replace(SMALL, model=ModelSettings(embedding_dim=8, wide=False))
    with pytest.raises(UserInputError, match="no wide features"):
        run_tuner(transform_dir, str(tmp_path / "Tuner"), cnn_only,
                  TunerSettings(enabled=True, space={"wide": [False, True]}))
    from components.tuner import resolve_space

    # A setting of the wide tower, searched where no trial has the tower: nothing to search.
    with pytest.raises(UserInputError, match="no trial has"):
        resolve_space(TunerSettings(space={"wide_dropout": [0.0, 0.5]}), cnn_only)


def test_the_config_turns_the_wide_features_on(tmp_path):
    from pipeline import configs

    # "auto" by default (the Trainer decides); the Transform computes the features when some
    # model can use them.
    default = configs.load_config(None, {})
    assert default.trainer.model.wide == "auto" and default.transform.wide
    off = {"trainer": {"model": {"wide": False}}}
    assert not configs.load_config(None, off).transform.wide
    tuned = configs.load_config(None, {"tuner": {"enabled": True,
                                                 "space": {"wide": [False, True]}}})
    assert tuned.transform.wide and tuned.trainer.model.wide
    # The search holds a wide the config gives at its value: no trial has the tower.
    held = configs.load_config(None, {**off, "tuner": {"enabled": True,
                                                       "space": {"wide": [False, True]}}})
    assert not held.transform.wide
    kept = configs.load_config(None, {**off, "transform": {"wide": True}})
    assert kept.transform.wide  # given: computed as asked
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"transform": {"wide": False},
                                "trainer": {"model": {"wide": True}}}))
    with pytest.raises(UserInputError, match="transform.wide = false"):
        configs.load_config(str(path), {})
    # A config built in code gets them from api.run too.
    built = configs.PipelineConfig(transform=tr.TransformSettings(wide=False))
    assert configs.with_wide_features(built).transform.wide
    built = configs.PipelineConfig(trainer=TrainerSettings(model=ModelSettings(wide=False)))
    assert not configs.with_wide_features(built).transform.wide


def test_tuner_searches_the_wide_tower(trained_wide, tmp_path):
    from components.tuner import TunerSettings, run_tuner

    transform_dir = trained_wide[0]
    base = dataclasses.replace(SMALL, model=ModelSettings(embedding_dim=8, num_filters=4,
                                                          wide=False))
    result = run_tuner(transform_dir, str(tmp_path / "Tuner"), base, TunerSettings(
        enabled=True, max_trials=2, epochs=1, space={"wide": [False, True]}))
    seen = {t["values"]["wide"] for t in result["trials"]}
    assert seen == {False, True} and result["trials_failed"] == 0
