"""A user's own data end to end: integer labels, byte-order marks, long documents."""
import glob
import json
import os
import random

from conftest import IN_MEMORY, only_dir, run_cli
from test_cli import summary_of

SMALL_MODEL = """
[trainer]
epochs = {epochs}
batch_size = 16
learning_rate = 0.01

[trainer.model]
embedding_dim = 8
num_filters = 8

[evaluator]
min_accuracy = 0.0
"""


def write_config(tmp_path, name="small", epochs=8, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(extra + SMALL_MODEL.format(epochs=epochs))
    return str(path)


def read_predictions(out):
    return [json.loads(line) for p in sorted(glob.glob(os.path.join(out, "predictions",
                                                                      "*.jsonl")))
            for line in open(p)]


def test_integer_labels_from_csv_and_json_end_to_end(tmp_path):
    """0/1/2/10 as CSV text (with a spreadsheet's BOM) and as JSON numbers: classes in numeric
    order, trained, pushed with the inferred schema, and scored back as numbers."""
    words = {0: "apple", 1: "river", 2: "engine", 10: "violin"}
    rows = [(f"the {words[c]} story number {i}", c) for i in range(24) for c in words]
    with open(tmp_path / "part1.csv", "w", encoding="utf-8-sig") as f:  # BOM first
        f.write("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows[::2]))
    with open(tmp_path / "part2.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": t, "label": c}) + "\n" for t, c in rows[1::2]))
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    proc = run_cli("run", "--input", str(tmp_path / "part1.csv"), "--input",
                   str(tmp_path / "part2.jsonl"), "--pipeline-root", root, "--serving-dir",
                   serving, "--schema", "infer", "--config", write_config(tmp_path), *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(root)
    stages = {s["name"]: s.get("details") for s in summary["stages"]}
    assert stages["ExampleGen"]["read"] == stages["ExampleGen"]["written"] == 96
    assert stages["SchemaGen"]["classes"] == ["0", "1", "2", "10"]  # numeric, not "10" < "2"
    assert stages["Trainer"]["classes"] == ["0", "1", "2", "10"]
    version_dir = stages["Pusher"]["path"]
    assert os.path.exists(os.path.join(version_dir, "schema.pbtxt"))  # pushed with the model

    with open(tmp_path / "new.jsonl", "w", encoding="utf-8-sig") as f:  # BOM again
        f.write(json.dumps({"text": "the violin story number 3", "label": 10, "id": "v"}) + "\n")
        f.write(json.dumps({"text": "the apple story number 5", "label": 0, "id": "a"}) + "\n")
    out = str(tmp_path / "scored")
    scored = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input",
                     str(tmp_path / "new.jsonl"), "--output", out, *IN_MEMORY)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "rows read 2 = scored 2 + quarantined 0" in scored.stdout
    by_id = {r["id"]: r for r in read_predictions(out)}
    assert by_id["v"]["label"] == 10 and by_id["a"]["label"] == 0  # as they came in: numbers
    assert all(isinstance(r["predicted_class"], int) for r in by_id.values())
    assert set(by_id["v"]["probabilities"]) == {"0", "1", "2", "10"}
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["schema"] == os.path.join(version_dir, "schema.pbtxt")


def long_documents(n_per_class=150, seed=7):
    """Two classes told apart by one keyword at token 101 of 121; the filler is shared noise."""
    rng = random.Random(seed)
    filler = [f"filler{i}" for i in range(40)]
    rows = []
    for i in range(n_per_class):
        for label, keyword in (("a", "alpha"), ("b", "omega")):
            words = rng.choices(filler, k=100) + [keyword] + rng.choices(filler, k=20)
            rows.append({"text": " ".join(words), "label": label,
                         "split": "test" if i % 6 == 0 else ""})
    return rows


def test_auto_max_len_reads_long_documents_where_50_tokens_cannot(tmp_path):
    with open(tmp_path / "long.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in long_documents()))
    data = str(tmp_path / "long.jsonl")
    schema = tmp_path / "ab.pbtxt"
    schema.write_text('feature { name: "text" type: BYTES presence { min_fraction: 1 } }\n'
                      'feature { name: "label" type: BYTES domain: "label" '
                      'presence { min_fraction: 1 } not_in_environment: "SERVING" }\n'
                      'string_domain { name: "label" value: "a" value: "b" }\n'
                      'default_environment: "TRAINING"\ndefault_environment: "SERVING"\n')
    root, serving = str(tmp_path / "auto"), str(tmp_path / "serving")
    auto = run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir", serving,
                   "--schema", str(schema), "--config", write_config(tmp_path), *IN_MEMORY)
    assert auto.returncode == 0, auto.stderr[-3000:]
    stages = {s["name"]: s.get("details") for s in summary_of(root)["stages"]}
    transform = stages["Transform"]
    assert transform["max_len"] == 121 and transform["max_len_source"] == "auto"
    assert transform["token_lengths"]["train"]["truncated"] == 0
    assert "max_len 121" in auto.stdout
    assert stages["Trainer"]["metrics"]["test_accuracy"] >= 0.9

    # The pushed model's raw-text signature reads as far as training did: bulk scoring of the
    # test documents finds the keyword at token 101.
    tests = [r for r in long_documents() if r["split"] == "test"]
    with open(tmp_path / "score.jsonl", "w") as f:
        f.write("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                        for r in tests))
    out = str(tmp_path / "scored")
    scored = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input",
                     str(tmp_path / "score.jsonl"), "--output", out, *IN_MEMORY)
    assert scored.returncode == 0, scored.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["accuracy"] >= 0.9

    # The old fixed length cuts every document before the keyword: no better than chance.
    fixed = run_cli("run", "--input", data, "--pipeline-root", str(tmp_path / "fixed"),
                    "--schema", str(schema), "--until", "Trainer",
                    "--config", write_config(tmp_path, "fixed", extra="[transform]\n"
                                             "max_len = 50\n"), *IN_MEMORY)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    trainer = summary_of(str(tmp_path / "fixed"))["stages"][-1]["details"]
    assert trainer["metrics"]["test_accuracy"] <= 0.7
    with open(os.path.join(only_dir(os.path.join(str(tmp_path / "fixed"), "Transform")),
                           "transform_info.json")) as f:
        info = json.load(f)
    assert info["max_len"] == 50 and info["max_len_source"] == "fixed"
    assert info["token_lengths"]["train"]["truncated"] > 0  # every document is cut
