"""The TextCNN of Kim (2014), built with tf_keras, and pretrained embedding matrices."""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from components import features, fileio
from components.errors import UserInputError

POOLINGS = ("max_over_time", "seed")
AUTO = "auto"  # trainer.model.wide's default: see ModelSettings.wide
# "auto" turns the wide tower on when max_len cuts more than this share of Split-train's
# documents: automatic max_len (the 0.95 quantile of the lengths) cuts at most 5%, unless the
# cap (400 tokens) is below that quantile, i.e. the documents are long.
AUTO_WIDE_TRUNCATED = 0.10
# How pretrained vectors fill the vocabulary tokens they lack (and the OOV rows):
# "uniform": U(-0.25, 0.25), the constant of Kim's released code; "variance": U(-a, a) with a
# per dimension such that the random vectors have the known vectors' variance (Kim 2014, 3.1).
UNKNOWN_VECTORS = ("uniform", "variance")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Hyperparameters of the network; defaults are the seed's, Kim's where the seed has none."""

    embedding_dim: int = 128
    # Zero the padding positions' vectors before the convolutions, as Kim's code keeps the
    # padding vector at zero (the seed has no masking; measured in bench/accuracy.py).
    mask_zero: bool = True
    filter_sizes: tuple = (3, 4, 5)
    num_filters: int = 100
    pooling: str = "max_over_time"  # Kim's one max per filter; "seed": MaxPooling1D(2, 1) + Flatten
    # Fraction of units DROPPED. The seed calls this `dropout_keep_prob`, but passes it to
    # Keras' Dropout, whose argument is the drop rate: 0.5 either way.
    dropout_rate: float = 0.5
    max_norm: float = 3.0  # Kim's L2 max-norm constraint on the output layer's weights; 0: off
    embeddings: Optional[str] = None  # GloVe/word2vec text file (.bz2/.gz ok)
    embeddings_trainable: bool = False  # False: Kim's CNN-static (the seed's frozen vectors)
    # Kim's CNN-multichannel: two copies of the pretrained vectors, one frozen and one tuned,
    # seen by every filter (as two input channels). Needs `embeddings`; then
    # `embeddings_trainable` does not apply.
    multichannel: bool = False
    unknown_vectors: str = "uniform"  # see UNKNOWN_VECTORS
    # Wide and deep: a linear ("wide") tower over the document's TF-IDF bag of n-grams (the
    # Transform's `wide_features`, of the whole text), whose logits are added to the CNN's
    # before the softmax. Its weights start at zero. "auto" (the default): on when the
    # documents are long, i.e. the Transform's max_len cuts more than AUTO_WIDE_TRUNCATED of
    # Split-train's documents (the Trainer decides, `resolve_wide`). Measured in
    # bench/accuracy.py (README, Accuracy): it wins on long documents (BBC News), and on short
    # ones it can win (MR), make no difference (TREC) or, on small data, lose (it fits noise
    # n-grams before the CNN learns; tests/test_own_data.py's keyword task).
    wide: Union[bool, str] = AUTO
    # Fraction of a document's n-grams dropped in training (their weights zeroed), so that the
    # wide tower cannot lean on a few rare n-grams; 0: off.
    wide_dropout: float = 0.0
    # L2 penalty on the wide tower's effective weights (loss + wide_l2 * sum of their
    # squares); 0: off
    wide_l2: float = 0.0
    # How many times faster the wide tower learns than the CNN. A linear model over TF-IDF
    # needs weights of several units, which Adam at the CNN's rate (steps of about
    # learning_rate each) does not reach before the CNN has fitted Split-train and early
    # stopping ends the training. Done by scaling the tower's output (logits = scale * x.W):
    # Adam's steps do not depend on the gradient's scale, so the effective weights move
    # `scale` times as fast.
    wide_learning_rate_scale: float = 10.0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise UserInputError(f"trainer.model.pooling must be one of {', '.join(POOLINGS)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserInputError("trainer.model.dropout_rate is the fraction dropped, in [0, 1)")
        if self.embedding_dim < 1 or self.num_filters < 1 or self.max_norm < 0:
            raise UserInputError("trainer.model.embedding_dim and num_filters must be at least "
                                 "1, and max_norm at least 0 (0: no constraint)")
        if not self.filter_sizes or any(int(k) < 1 for k in self.filter_sizes):
            raise UserInputError("trainer.model.filter_sizes must be positive kernel sizes")
        if self.unknown_vectors not in UNKNOWN_VECTORS:
            raise UserInputError(f"trainer.model.unknown_vectors must be one of "
                                 f"{', '.join(UNKNOWN_VECTORS)}; got {self.unknown_vectors!r}")
        if self.wide not in (True, False, AUTO) or isinstance(self.wide, int) and not \
                isinstance(self.wide, bool):
            raise UserInputError(f'trainer.model.wide must be true, false or "{AUTO}"; got '
                                 f"{self.wide!r}")
        if not self.wide_learning_rate_scale > 0:
            raise UserInputError("trainer.model.wide_learning_rate_scale must be above 0")
        if not 0.0 <= self.wide_dropout < 1.0 or not self.wide_l2 >= 0.0:
            raise UserInputError("trainer.model.wide_dropout is the fraction of n-grams dropped, "
                                 "in [0, 1), and trainer.model.wide_l2 must be >= 0")
        if self.multichannel and not self.embeddings:
            raise UserInputError("trainer.model.multichannel needs pretrained vectors "
                                 "(trainer.model.embeddings): its channels are a frozen and a "
                                 "tuned copy of them")


def _open_text(path: str) -> io.TextIOBase:
    """A text stream of a local or remote (gs://...) file, decompressed by its extension."""
    raw = fileio.open_stream(path)
    if path.endswith(".bz2"):
        raw = bz2.BZ2File(raw, "rb")
    elif path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def load_embedding_matrix(path: str, vocabulary: Sequence[str], input_dim: int, seed: int,
                          unknown_vectors: str = "uniform") -> Tuple[np.ndarray, int]:
    """Matrix [input_dim, dim] in id order: row 0 (padding) zero, token i at row i + 1.

    Tokens without a vector, and the out-of-vocabulary rows, get random vectors (see
    UNKNOWN_VECTORS): U(-0.25, 0.25) as in Kim's code, or ("variance") U(-a, a) per dimension
    with a = sqrt(3 var) of the vectors found, as in Kim (2014). Returns (matrix, number of
    vocabulary tokens found in the file).
    """
    if unknown_vectors not in UNKNOWN_VECTORS:
        raise UserInputError(f"unknown_vectors must be one of {', '.join(UNKNOWN_VECTORS)}")
    wanted = {token: i + 1 for i, token in enumerate(vocabulary)}
    matrix = None
    known = np.zeros(input_dim, dtype=bool)
    if not fileio.exists(path) or fileio.isdir(path):
        raise UserInputError(f"cannot read embeddings {path}: no such file")
    try:
        with _open_text(path) as f:
            for line_number, line in enumerate(f, start=1):
                parts = line.rstrip().split(" ")
                if line_number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec text header: "<count> <dim>"
                if matrix is None:
                    dim = len(parts) - 1
                    if dim < 1:
                        raise UserInputError(f"{path}:1 is not 'word v1 v2 ...'")
                    matrix = np.zeros((input_dim, dim), dtype=np.float32)
                row = wanted.get(parts[0])
                if row is None or known[row]:  # a repeated word keeps its first vector
                    continue
                if len(parts) - 1 != matrix.shape[1]:
                    raise UserInputError(f"{path}:{line_number}: {len(parts) - 1} values, "
                                         f"expected {matrix.shape[1]}")
                try:
                    matrix[row] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise UserInputError(f"{path}:{line_number}: not a number among the values "
                                         f"of {parts[0]!r}")
                known[row] = True
    except OSError as e:
        raise UserInputError(f"cannot read embeddings {path}: {e}")
    if matrix is None:
        raise UserInputError(f"embeddings file {path} is empty")
    found = int(known.sum())
    if unknown_vectors == "variance" and found > 1:
        bound = np.sqrt(3.0 * matrix[known].var(axis=0, dtype=np.float64)).astype(np.float32)
    else:
        bound = np.full(matrix.shape[1], 0.25, dtype=np.float32)
    # Drawn for every row in one call, then kept for the unknown ones: a token's vector does
    # not depend on which other tokens the file has.
    random_rows = np.random.default_rng(seed).uniform(-1.0, 1.0, matrix.shape).astype(np.float32)
    unknown = ~known
    unknown[0] = False
    matrix[unknown] = random_rows[unknown] * bound
    logging.info("embeddings: %d of %d vocabulary tokens found in %s", found, len(vocabulary),
                 path)
    return matrix, found


def length_free(settings: ModelSettings) -> bool:
    """Whether the network's output is the same however far a sequence is padded: the padding
    vectors are zeroed (`mask_zero`) and max-over-time pooling looks only at windows of the
    text itself (see `MaxOverText`). Such a model takes sequences of any length, so the Trainer
    pads each batch only to its longest sequence and does no work on padding. The seed's
    pooling (a fixed number of positions per branch) needs every sequence at max_len."""
    return settings.mask_zero and settings.pooling == "max_over_time"


def _text_lengths(ids):
    """[batch, steps] ids, padding (0) only after the text -> [batch] text lengths."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(tf.not_equal(ids, 0), tf.int32), axis=1)


def _pad_to_length(x, length: int):
    """[batch, steps, dim] -> zero-padded to at least `length` steps (at the end)."""
    import tensorflow as tf

    return tf.pad(x, [[0, 0], [0, tf.maximum(0, length - tf.shape(x)[1])], [0, 0]])


def _max_over_text_layer():
    """The `MaxOverText` Keras layer class (defined on first use: tf_keras is imported lazily)."""
    global _MaxOverText
    if _MaxOverText is not None:
        return _MaxOverText
    import tensorflow as tf
    import tf_keras as keras

    class MaxOverText(keras.layers.Layer):
        """Max-over-time pooling of a "valid" convolution of width `kernel_size`, over the
        windows that lie inside the text: window i counts when i + kernel_size <= the text's
        length (only window 0, text plus zero vectors, for a text shorter than the kernel).
        Windows reaching into the padding are left out, so the result does not depend on how
        far the sequence was padded. Inputs: [conv outputs (ReLU, so >= 0), text lengths]."""

        def __init__(self, kernel_size: int, **kwargs):
            super().__init__(**kwargs)
            self.kernel_size = int(kernel_size)

        def call(self, inputs):
            conv, lengths = inputs
            last_start = tf.maximum(lengths, self.kernel_size) - self.kernel_size  # [batch]
            positions = tf.range(tf.shape(conv)[1])
            inside = tf.cast(positions[None, :] <= last_start[:, None], conv.dtype)
            # ReLU outputs are >= 0 and window 0 always counts: zeroing the windows left out
            # cannot change the maximum of those kept.
            return tf.reduce_max(conv * inside[..., None], axis=1)

        def get_config(self):
            return {**super().get_config(), "kernel_size": self.kernel_size}

    _MaxOverText = MaxOverText
    return MaxOverText


_MaxOverText = None


def model_inputs(ids, wide_ids=None, wide_weights=None):
    """What the model takes: the token ids alone, or with a wide tower a dict of the token ids
    and the wide tower's dense [batch, n-grams] ids and weights (padding: id 0, weight 0)."""
    if wide_ids is None:
        return ids
    return {features.transformed_name(features.TEXT): ids, features.WIDE_IDS: wide_ids,
            features.WIDE_WEIGHTS: wide_weights}


def _wide_linear_layer():
    """The `WideLinear` Keras layer class (defined on first use: tf_keras is imported lazily)."""
    global _WideLinear
    if _WideLinear is not None:
        return _WideLinear
    import tensorflow as tf
    import tf_keras as keras

    @tf.custom_gradient
    def dense_gradient(kernel):
        """The kernel, whose gradient arrives dense: an embedding lookup's gradient is sparse
        (IndexedSlices), and with several workers sparse gradients are all-gathered in
        pieces whose size differs from worker to worker; a dense [ngrams, classes] one is a
        plain all-reduce. (tf.convert_to_tensor sums the slices with unsorted_segment_sum,
        deterministic on GPUs since TensorFlow 2.7, where sparse_dense_matmul is not.)"""
        def grad(upstream):
            return tf.convert_to_tensor(upstream)

        return tf.identity(kernel), grad

    class WideLinear(keras.layers.Layer):
        """logits = scale * X W: X the batch's [batch, ngrams] TF-IDF matrix, given as each
        row's n-gram ids and weights (padded with id 0 and weight 0, which add nothing), W
        [ngrams, classes] starting at zero. `l2` penalises the effective weights scale * W."""

        def __init__(self, ngrams: int, classes: int, scale: float = 1.0, l2: float = 0.0,
                     **kwargs):
            super().__init__(**kwargs)
            self.ngrams, self.classes, self.scale, self.l2 = int(ngrams), int(classes), \
                float(scale), float(l2)

        def build(self, input_shape):
            self.kernel = self.add_weight(
                "kernel", shape=(self.ngrams, self.classes), initializer="zeros",
                regularizer=(keras.regularizers.L2(self.l2 * self.scale ** 2) if self.l2
                             else None), dtype=tf.float32)
            super().build(input_shape)

        def call(self, inputs):
            ids, weights = inputs
            per_ngram = tf.gather(dense_gradient(self.kernel), ids)  # [batch, n, classes]
            return self.scale * tf.einsum("bn,bnc->bc", tf.cast(weights, tf.float32),
                                          per_ngram)

        def get_config(self):
            return {**super().get_config(), "ngrams": self.ngrams, "classes": self.classes,
                    "scale": self.scale, "l2": self.l2}

    _WideLinear = WideLinear
    return WideLinear


_WideLinear = None


def _wide_logits(wide_input_dim: int, num_classes: int, settings: ModelSettings):
    """(inputs, logits) of the wide tower (`WideLinear`, float32 always)."""
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras import layers

    wide_ids = keras.Input(shape=(None,), dtype=tf.int64, name=features.WIDE_IDS)
    weights = keras.Input(shape=(None,), dtype=tf.float32, name=features.WIDE_WEIGHTS)
    kept = weights
    if settings.wide_dropout:
        kept = layers.Dropout(settings.wide_dropout, dtype="float32",
                              name="wide_dropout")(weights)
    logits = _wide_linear_layer()(wide_input_dim, num_classes, settings.wide_learning_rate_scale,
                                  settings.wide_l2, dtype="float32",
                                  name="wide_weights")([wide_ids, kept])
    return [wide_ids, weights], logits


def resolve_wide(settings: ModelSettings, transform_info: Dict[str, Any]) -> ModelSettings:
    """`settings` with wide "auto" decided for a Transform output (`transform_info.json`): on
    when it has wide features and max_len cut more than AUTO_WIDE_TRUNCATED of Split-train's
    documents. True and false stay as they are."""
    if settings.wide != AUTO:
        return settings
    train = (transform_info.get("token_lengths") or {}).get(features.TRAIN) or {}
    documents = train.get("documents") or 0
    cut = train.get("truncated", 0) / documents if documents else 0.0
    return dataclasses.replace(settings, wide=bool(transform_info.get("wide_input_dim"))
                               and cut > AUTO_WIDE_TRUNCATED)


def check_wide_features(available: Any, who: str = "trainer.model.wide") -> None:
    """UserInputError unless a Transform output has the wide tower's features: `available` is
    its n-gram vocabulary size (transform_info.json; None when it computed none) or whether
    its transformed feature spec has them."""
    if not available:
        raise UserInputError(
            f"{who} needs the Transform's wide features, and this Transform output has no "
            f"wide features: run the Transform with transform.wide = true (the pipeline does "
            f"when trainer.model.wide is set)")


def towers(settings: ModelSettings) -> Tuple[str, ...]:
    """The towers a model of these settings has, for reports."""
    return ("cnn", "wide") if settings.wide else ("cnn",)


def build_textcnn(input_dim: int, max_len: int, num_classes: int, settings: ModelSettings,
                  embedding_matrix: Optional[np.ndarray] = None,
                  wide_input_dim: Optional[int] = None):
    """Embedding -> Conv1D per kernel size -> pooling -> concatenate -> dropout -> logits,
    plus (`settings.wide`) the wide tower's logits over `wide_input_dim` n-grams -> softmax.

    A `length_free` model takes [batch, any length] ids (the Trainer's batches are padded to
    their longest sequence, the exported model's to max_len; the output is the same); any
    other takes [batch, max_len]. With the wide tower it takes `model_inputs`' dict.
    """
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras import layers

    if settings.wide == AUTO:
        raise ValueError('trainer.model.wide = "auto" is decided by the Trainer for a Transform '
                         "output (resolve_wide) before the network is built")
    if settings.wide:
        check_wide_features(wide_input_dim)
    free = length_free(settings)
    ids = keras.Input(shape=(None if free else max_len,), dtype=tf.int64,
                      name=features.transformed_name(features.TEXT))
    length_arg = {} if free else {"input_length": max_len}
    if embedding_matrix is not None:
        def pretrained(trainable: bool, name: str):
            return layers.Embedding(
                input_dim, embedding_matrix.shape[1],
                embeddings_initializer=keras.initializers.Constant(embedding_matrix),
                trainable=trainable, name=name, **length_arg)

        if settings.multichannel:
            # Each filter spans both channels (its weights for each, summed: Kim's "applied to
            # both channels and the results added"), so the channels are concatenated.
            x = layers.Concatenate(name="channels")([pretrained(False, "embedding")(ids),
                                                     pretrained(True, "embedding_tuned")(ids)])
        else:
            x = pretrained(settings.embeddings_trainable, "embedding")(ids)
    else:
        x = layers.Embedding(input_dim, settings.embedding_dim, name="embedding",
                             **length_arg)(ids)
    if settings.mask_zero:
        # Keras masks do not pass through Conv1D, so padding is zeroed explicitly instead.
        dtype = x.dtype
        not_padding = layers.Lambda(lambda t: tf.cast(tf.not_equal(t, 0), dtype)[..., None],
                                    name="padding_mask")(ids)
        x = layers.Multiply(name="mask_padding")([x, not_padding])

    # A "valid" convolution needs `widest` positions, and the seed's pooling (window 2) two
    # convolution outputs: very short sequences are zero-padded to that.
    needed = max(int(k) for k in settings.filter_sizes) + (settings.pooling == "seed")
    if free:
        lengths = layers.Lambda(_text_lengths, name="text_length")(ids)
        x = layers.Lambda(_pad_to_length, arguments={"length": needed},
                          name="pad_to_widest_filter")(x)
    elif max_len < needed:
        x = layers.ZeroPadding1D((0, needed - max_len), name="pad_to_widest_filter")(x)
    branches = []
    for size in settings.filter_sizes:
        conv = layers.Conv1D(settings.num_filters, int(size), padding="valid", activation="relu",
                             strides=1, name=f"conv_{size}")(x)
        if free:
            pooled = _max_over_text_layer()(int(size), name=f"max_over_time_{size}")(
                [conv, lengths])
        elif settings.pooling == "max_over_time":
            pooled = layers.GlobalMaxPooling1D(name=f"max_over_time_{size}")(conv)
        else:
            pooled = layers.Flatten(name=f"flatten_{size}")(
                layers.MaxPooling1D(pool_size=2, strides=1, padding="valid",
                                    name=f"pool_{size}")(conv))
        branches.append(pooled)
    x = layers.Concatenate(name="concatenate")(branches) if len(branches) > 1 else branches[0]
    x = layers.Dropout(settings.dropout_rate, name="dropout")(x)
    constraint = keras.constraints.MaxNorm(settings.max_norm) if settings.max_norm else None
    logits = layers.Dense(num_classes, kernel_constraint=constraint, name="logits")(x)
    inputs = ids
    if settings.wide:
        wide_inputs, wide = _wide_logits(wide_input_dim, num_classes, settings)
        inputs = model_inputs(ids, *wide_inputs)
        logits = layers.Add(dtype="float32", name="wide_and_deep")([
            layers.Activation("linear", dtype="float32", name="cnn_logits")(logits), wide])
    # Softmax in float32 so that mixed precision never returns half-precision probabilities.
    probabilities = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probabilities, name="textcnn")
