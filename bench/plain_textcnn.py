"""A plain, in-memory Keras TextCNN on TREC: the baseline that bench/speed.py times the pipeline against.

    .venv/bin/python bench/plain_textcnn.py [--input data/trec.csv] [--max-len 64] [--seed 42]
                                            [--epochs 50] [--patience 5]

What anyone would write without the pipeline: read the CSV with the csv module, tokenise with
Python's `re`, build a vocabulary, pad every document to a fixed length with numpy and call
`model.fit` on the arrays. It imports only the standard library, numpy, tensorflow and tf_keras
(none of the project's code), but uses the same data, splits and hyperparameters as the
pipeline's defaults, so that the two can be compared:

- Splits: rows whose `split` is `test` are the test set; rows marked `eval`/`dev`/`valid`/
  `validation` go to eval; unmarked rows and rows marked `train` go to eval when
  sha256(text as UTF-8)[:8] (big-endian) % 10000 < 1000, else to train -- components/
  readers.py `hash_split` with the default eval_ratio 0.1, so the three sets are the
  pipeline's (rows with an empty text or label are dropped, as ExampleGen quarantines them).
- Tokens: lowercase, ASCII punctuation split off as tokens of its own, split on whitespace
  (components/transform.py `tokenize`). Vocabulary: every token of the training rows, most
  frequent first (ties in reverse token order, as tf.Transform orders them), ids 1..V; 0 is
  padding, V+1 out of vocabulary. Sequences are truncated/padded at the end to --max-len
  (default 64: a plain script picks one fixed length; the pipeline picks 18 for TREC itself).
- Network (components/model.py and TrainerSettings defaults): Embedding(V+2, 128), Conv1D
  (100 filters, kernels 3, 4, 5, valid, relu), global max pooling, concatenate, Dropout(0.5),
  Dense(classes, MaxNorm(3)), softmax; categorical cross-entropy, Adam(1e-3), batch 64, up to 50
  epochs, EarlyStopping(val_accuracy, mode max, patience 5, best weights restored) on the eval
  rows; keras.utils.set_random_seed(seed). No padding mask (the pipeline zeroes padding
  positions; a plain script does not), no op determinism, no tf.data. AutoGraph converts
  tf_keras' train step as it does for any plain script (the first epoch pays for it; the
  pipeline's Trainer tells AutoGraph not to): --skip-autograph-keras does what the Trainer does.

Prints one JSON line at the end: test_accuracy, eval_accuracy, epochs_run, best_epoch,
fit_seconds (model.fit, tracing included), first_epoch_seconds, train_examples,
examples_per_second (= train_examples x epochs_run / fit_seconds), max_len, vocabulary_size,
eval/test rows, seed, seconds (the whole script after its imports).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import collections  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUNCTUATION = re.compile(r"""([!"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")
EVAL_MARKS = {"eval", "dev", "valid", "validation"}


def split_of(text: str, marked: str, eval_ratio: float = 0.1):
    """The pipeline's split of a row (components/readers.py check_record / hash_split)."""
    marked = (marked or "").strip().lower()
    if marked == "test":
        return "test"
    if marked in EVAL_MARKS:
        return "eval"
    if marked not in ("", "train"):
        return None  # the pipeline quarantines it (unknown_split)
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 10_000
    return "eval" if bucket < round(eval_ratio * 10_000) else "train"


def tokenize(text: str):
    return PUNCTUATION.sub(r" \1 ", text.lower()).split()


def read_rows(path: str):
    rows = {"train": [], "eval": [], "test": []}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            text, label = r.get("text") or "", (r.get("label") or "").strip()
            if not text.strip() or not label:
                continue
            split = split_of(text, r.get("split", ""))
            if split:
                rows[split].append((text, label))
    return rows


def encode(texts, vocab, max_len: int) -> np.ndarray:
    oov = len(vocab) + 1
    x = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = [vocab.get(t, oov) for t in tokenize(text)][:max_len]
        x[i, :len(ids)] = ids
    return x


def build_model(input_dim: int, max_len: int, num_classes: int):
    ids = keras.Input(shape=(max_len,), dtype="int64")
    x = layers.Embedding(input_dim, 128, input_length=max_len)(ids)
    pooled = [layers.GlobalMaxPooling1D()(layers.Conv1D(100, k, padding="valid",
                                                        activation="relu", strides=1)(x))
              for k in (3, 4, 5)]
    x = layers.Dropout(0.5)(layers.Concatenate()(pooled))
    logits = layers.Dense(num_classes, kernel_constraint=keras.constraints.MaxNorm(3.0))(x)
    return keras.Model(ids, layers.Activation("softmax")(logits))


def skip_autograph_for_tf_keras() -> None:
    """What components/trainer.py `skip_autograph_for_tf_keras` does, written out here."""
    from tensorflow.python.autograph.core import config

    if not any(isinstance(r, config.DoNotConvert) and r.matches("tf_keras")
               for r in config.CONVERSION_RULES):
        config.CONVERSION_RULES = config.CONVERSION_RULES + (config.DoNotConvert("tf_keras"),)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=os.path.join(REPO, "data", "trec.csv"))
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--verbose", type=int, default=0, help="model.fit's verbose")
    parser.add_argument("--skip-autograph-keras", action="store_true",
                        help="tell AutoGraph not to convert tf_keras' own code, as the "
                             "pipeline's Trainer does (a TensorFlow-private setting; off: "
                             "what a plain script gets)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    rows = read_rows(args.input)
    counts = collections.Counter(t for text, _ in rows["train"] for t in tokenize(text))
    # tf.Transform's order: most frequent first, ties in reverse token order (bytes).
    ordered = sorted(counts, key=lambda t: (counts[t], t.encode("utf-8")), reverse=True)
    vocab = {t: i + 1 for i, t in enumerate(ordered)}
    classes = sorted({label for _, label in rows["train"]})
    index = {c: i for i, c in enumerate(classes)}
    data = {}
    for split, items in rows.items():
        x = encode([t for t, _ in items], vocab, args.max_len)
        # A label unseen in training (none in TREC) is left all-zero: it counts as wrong.
        y = np.zeros((len(items), len(classes)), dtype=np.float32)
        for i, (_, label) in enumerate(items):
            if label in index:
                y[i, index[label]] = 1.0
        data[split] = (x, y)

    if args.skip_autograph_keras:
        skip_autograph_for_tf_keras()
    keras.utils.set_random_seed(args.seed)
    model = build_model(len(vocab) + 2, args.max_len, len(classes))
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(1e-3),
                  metrics=["accuracy"])
    epoch_seconds = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: epoch_seconds.append(-time.monotonic()),
        on_epoch_end=lambda e, logs: epoch_seconds.__setitem__(-1, epoch_seconds[-1]
                                                               + time.monotonic()))
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                         patience=args.patience, restore_best_weights=True)
    fit_start = time.monotonic()
    history = model.fit(*data["train"], batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=data["eval"], callbacks=[timer, stop], shuffle=True,
                        verbose=args.verbose)
    fit_seconds = time.monotonic() - fit_start
    epochs_run = len(history.history["loss"])
    val = history.history["val_accuracy"]
    _, test_accuracy = model.evaluate(*data["test"], batch_size=256, verbose=0)
    _, eval_accuracy = model.evaluate(*data["eval"], batch_size=256, verbose=0)
    train_examples = len(rows["train"])
    print(json.dumps({
        "test_accuracy": float(test_accuracy), "eval_accuracy": float(eval_accuracy),
        "epochs_run": epochs_run, "best_epoch": int(np.argmax(val)) + 1,
        "fit_seconds": round(fit_seconds, 3),
        "first_epoch_seconds": round(epoch_seconds[0], 3) if epoch_seconds else None,
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "train_examples": train_examples,
        "examples_per_second": train_examples * epochs_run / fit_seconds,
        "max_len": args.max_len, "vocabulary_size": len(vocab), "classes": classes,
        "eval_rows": len(rows["eval"]), "test_rows": len(rows["test"]), "seed": args.seed,
        "skip_autograph_keras": args.skip_autograph_keras, "tensorflow": tf.__version__, "seconds": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
