"""Scores a file by calling a pushed SavedModel's `serving_default` signature directly, in one process.

    .venv/bin/python bench/direct_score.py --model SERVING_DIR/MODEL_NAME[/VERSION] --input FILE
                                           [--output FILE.jsonl] [--batch-size 256]

The baseline for bulk scoring (`local_runner.py score`) in bench/speed.py: no Beam, no
validation, no quarantine -- read the rows, feed the raw strings to the signature in batches of
`--batch-size` (256), and (with --output) write one JSON line per row (id, predicted_class, the
probabilities), as the scorer's predictions are. The signature takes the raw text (input
`text`, see components/export.py), so tokenisation is the model's own.

`--model` is a version directory (holding saved_model.pb) or a model directory, whose newest
(numerically largest) version is taken, as the scorer does. `--input`: JSONL (`text`, optional
`id` and `label`) or CSV/TSV with a header naming `text`.

Prints one JSON line: documents, batches, load_seconds (tf.saved_model.load and the
signature), score_seconds (reading, every batch, writing), seconds (both), import_seconds
(TensorFlow's import, from the script's first line), accuracy when the rows are labelled. A
benchmark that compares it with the CLI should time the whole process from outside: the CLI
pays its start-up too.
"""
from __future__ import annotations

import time

_T0 = time.monotonic()

import os  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

IMPORT_SECONDS = time.monotonic() - _T0


def version_dir(model: str) -> str:
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        return model
    versions = [int(d) for d in os.listdir(model)
                if d.isdigit() and os.path.exists(os.path.join(model, d, "saved_model.pb"))]
    if not versions:
        sys.exit(f"{model} holds no SavedModel version")
    return os.path.join(model, str(max(versions)))


def read_rows(path: str):
    """[(id, text, label or None)] of a JSONL, CSV or TSV file."""
    rows = []
    if path.endswith(".jsonl") or path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                r = json.loads(line)
                rows.append((str(r.get("id") or f"{path}:{number}"), str(r["text"]),
                             None if r.get("label") is None else str(r["label"])))
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
            for number, r in enumerate(reader, start=2):
                rows.append((r.get("id") or f"{path}:{number}", r["text"], r.get("label")))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", help="JSONL predictions (default: not written)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    start = time.monotonic()
    path = version_dir(args.model)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    load_seconds = time.monotonic() - start

    start = time.monotonic()
    rows = read_rows(args.input)
    out = open(args.output, "w", encoding="utf-8") if args.output else None
    hits = labelled = batches = 0
    try:
        for i in range(0, len(rows), args.batch_size):
            batch = rows[i:i + args.batch_size]
            result = signature(text=tf.constant([text for _, text, _ in batch]))
            predicted = [c.decode("utf-8") for c in result["predicted_class"].numpy()]
            probabilities = result["probabilities"].numpy()
            batches += 1
            for (_, _, label), cls in zip(batch, predicted):
                if label is not None and label != "":
                    labelled += 1
                    hits += cls == label
            if out is not None:
                for (row_id, _, label), cls, p in zip(batch, predicted,
                                                       np.round(probabilities.astype(np.float64), 6).tolist()):
                    record = {"id": row_id, "predicted_class": cls, "probabilities": p}
                    if label is not None:
                        record["label"] = label
                    out.write(json.dumps(record) + "\n")
    finally:
        if out is not None:
            out.close()
    score_seconds = time.monotonic() - start
    print(json.dumps({
        "model": path, "documents": len(rows), "batches": batches,
        "batch_size": args.batch_size, "load_seconds": round(load_seconds, 3),
        "score_seconds": round(score_seconds, 3),
        "seconds": round(load_seconds + score_seconds, 3),
        "import_seconds": round(IMPORT_SECONDS, 3),
        "documents_per_second_scoring": len(rows) / score_seconds if score_seconds else None,
        "labelled": labelled, "accuracy": hits / labelled if labelled else None}))
    sys.stdout.flush()
    # As local_runner.py does: skip the interpreter teardown (TensorFlow's destructors).
    os._exit(0)


if __name__ == "__main__":
    main()
