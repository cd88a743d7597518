"""ExampleGen: parsing of each format, the split rule, quarantine reasons and reconciled counts."""
import gzip
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from components import example_gen as eg
from components import readers as rd
from components import features
from components.errors import UserInputError
from conftest import read_split

SETTINGS = rd.ExampleGenSettings()


def write(path, content, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(content)
    return path


def parsed(record):
    """A RawRecord reduced to what the tests compare."""
    if record.error:
        return (os.path.basename(record.source), record.line, "error", record.error[0])
    return (os.path.basename(record.source), record.line,
            tuple(sorted((k, str(v)) for k, v in record.fields.items())))


def read_with_beam(items, settings=SETTINGS):
    return beam.Create(items) | beam.FlatMap(rd.read_records, settings) | beam.Map(parsed)


# ---------------------------------------------------------------------------- parsing per format


def test_csv_parsing_quotes_multiline_and_bad_rows(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label,id\n'
                                     '"hello, world",pos,1\n'
                                     '\n'
                                     '"two\nlines",neg,2\n'
                                     '"bad"quote,neg,3\n'
                                     'only,two\n')
    with BeamTestPipeline() as p:
        out = p | read_with_beam([(str(path), "csv")])
        assert_that(out, equal_to([
            ("a.csv", 2, (("id", "1"), ("label", "pos"), ("text", "hello, world"))),
            ("a.csv", 4, (("id", "2"), ("label", "neg"), ("text", "two\nlines"))),
            ("a.csv", 6, "error", rd.UNPARSEABLE),
            ("a.csv", 7, "error", rd.RAGGED),
        ]))


def test_tsv_parsing_keeps_quotes_literally(tmp_path):
    path = write(tmp_path / "a.tsv", "label\ttext\nneg\tThe ''Conan'' \"film\"\npos\tok\n")
    with BeamTestPipeline() as p:
        out = p | read_with_beam([(str(path), "tsv")])
        assert_that(out, equal_to([
            ("a.tsv", 2, (("label", "neg"), ("text", "The ''Conan'' \"film\""))),
            ("a.tsv", 3, (("label", "pos"), ("text", "ok"))),
        ]))


def test_jsonl_parsing(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a b", "label": "x", "id": 7}\n'
                                       '\n'
                                       '{"text": "broken"\n'
                                       '["not", "an", "object"]\n')
    with BeamTestPipeline() as p:
        out = p | read_with_beam([(str(path), "jsonl")])
        assert_that(out, equal_to([
            ("a.jsonl", 1, (("id", "7"), ("label", "x"), ("text", "a b"))),
            ("a.jsonl", 3, "error", rd.UNPARSEABLE),
            ("a.jsonl", 4, "error", rd.UNPARSEABLE),
        ]))


def test_gzipped_csv_is_read(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("text,label\nzipped row,pos\n")
    items = rd.discover_inputs([str(path)], SETTINGS)
    assert items == [(str(path), "csv")]
    with BeamTestPipeline() as p:
        out = p | read_with_beam(items)
        assert_that(out, equal_to([("a.csv.gz", 2, (("label", "pos"), ("text", "zipped row")))]))


def test_directory_per_label_and_split_layout(tmp_path):
    write(tmp_path / "flat" / "pos" / "1.txt", "good film")
    write(tmp_path / "flat" / "neg" / "2.txt", "bad film")
    write(tmp_path / "flat" / "neg" / "notes.md", "ignored: not a .txt")
    write(tmp_path / "split" / "train" / "pos" / "1.txt", "fine")
    write(tmp_path / "split" / "test" / "neg" / "1.txt", "awful")
    flat = rd.discover_inputs([str(tmp_path / "flat")], SETTINGS)
    nested = rd.discover_inputs([str(tmp_path / "split")], SETTINGS)
    assert [fmt for _, fmt in flat] == ["dir:neg:", "dir:pos:"]
    assert [fmt for _, fmt in nested] == ["dir:neg:test", "dir:pos:train"]
    with BeamTestPipeline() as p:
        out = (p | beam.Create(flat + nested) | beam.FlatMap(rd.read_records, SETTINGS)
               | beam.Map(lambda r: (r.fields["label"], r.fields["split"], r.fields["text"])))
        assert_that(out, equal_to([("neg", "", "bad film"), ("pos", "", "good film"),
                                   ("neg", "test", "awful"), ("pos", "train", "fine")]))


# ---------------------------------------------------------------------------- split rule


def test_split_rule_marked_and_hashed():
    def split_of(text, marked):
        record = rd.RawRecord("s", 1, b"", fields={"text": text, "label": "a", "split": marked})
        return rd.check_record(record, SETTINGS)[0]

    assert split_of("q", "test") == features.TEST
    assert split_of("q", "eval") == features.EVAL
    # Unmarked and `train` rows are split by the text's hash: same text, same split.
    texts = [f"question number {i}" for i in range(2000)]
    unmarked = [split_of(t, "") for t in texts]
    assert unmarked == [split_of(t, "train") for t in texts]
    assert unmarked == [rd.hash_split(t.encode(), 0.1) for t in texts]
    share = unmarked.count(features.EVAL) / len(texts)
    assert 0.08 < share < 0.12, share
    assert set(unmarked) == {features.TRAIN, features.EVAL}
    assert rd.hash_split(b"anything", 0.0) == features.TRAIN
    # Pinned: a change to the hash (its function, seed, bucket count or byte order) would move
    # every user's rows between train and eval, so these known answers must never change.
    assert share == 215 / 2000
    assert [i for i, s in enumerate(unmarked) if s == features.EVAL][:12] == [
        30, 35, 43, 46, 47, 51, 55, 61, 79, 102, 136, 140]
    known = {"How far is it from Denver to Aspen ?": 8230, "Who was Galileo ?": 8438,
             "What is an atom ?": 521, "Who invented the telephone ?": 4952}
    assert {t: rd.stable_bucket(t.encode(), 10_000) for t in known} == known
    assert [split_of(t, "") for t in known] == ["train", "train", "eval", "train"]


def test_parse_unit_fn_writes_a_unit_and_is_idempotent(tmp_path):
    path = write(tmp_path / "a.csv", "text,label,split\nwhat is x ?,DESC,test\n ,DESC,\n")
    unit = rd.InputUnit(str(path), ((str(path), "csv"),))
    unit_dir = str(tmp_path / "units" / "u1")
    for _ in range(2):  # the second run finds the unit published and only reports it
        with BeamTestPipeline() as p:
            out = p | beam.Create([(unit, unit_dir)]) | beam.ParDo(eg.ParseUnitFn(SETTINGS))
            assert_that(out, equal_to([(str(path), {"read": 2, "split:test": 1,
                                                    "quarantine:empty_text": 1})]))
    assert sorted(os.listdir(unit_dir)) == sorted([rd.COUNTS_FILE, "Split-test", rd.QUARANTINE_DIR])
    assert os.listdir(tmp_path / "units") == ["u1"]  # no temporary directory left behind
    [q] = eg._iter_jsonl(os.path.join(unit_dir, rd.QUARANTINE_DIR, eg.UNIT_QUARANTINE_FILE))
    assert (q["line"], q["reason"]) == (3, rd.EMPTY_TEXT)


# ---------------------------------------------------------------------------- whole stage


@pytest.mark.parametrize("in_process_max_bytes", [0, 1 << 20], ids=["beam", "in-process"])
def test_every_quarantine_reason_and_counts_reconcile(tmp_path, in_memory_options,
                                                      in_process_max_bytes):
    settings = rd.ExampleGenSettings(max_text_bytes=50, in_process_max_bytes=in_process_max_bytes)
    write(tmp_path / "in" / "rows.csv", "text,label,split\n"
                                        "good one,a,\n"
                                        "good two,b,test\n"
                                        '"bad"quote,a,\n'
                                        "ragged,a,,extra\n"
                                        "   ,a,\n"
                                        "no label here,,\n"
                                        + "x" * 51 + ",a,\n"
                                        "odd split,a,holdout\n")
    write(tmp_path / "in" / "bytes.csv", b"text,label\ncaf\xe9 latin-1,a\nfine,b\n", mode="wb")
    write(tmp_path / "in" / "rows.jsonl", '{"label": "a"}\n{"text": "json ok", "label": "a"}\n'
                                          '{oops}\n')
    write(tmp_path / "in" / "bad.jsonl", b'{"text": "\xff\xfe", "label": "a"}\n', mode="wb")
    out = str(tmp_path / "ExampleGen" / "1")
    counts = eg.run_example_gen([str(tmp_path / "in" / "*")], out, settings, in_memory_options)

    reasons = {rd.UNPARSEABLE: 2, rd.RAGGED: 1, rd.EMPTY_TEXT: 1, rd.MISSING_LABEL: 1,
               rd.TEXT_TOO_LONG: 1, rd.UNKNOWN_SPLIT: 1, rd.INVALID_UTF8: 2, rd.MISSING_TEXT: 1}
    assert counts["quarantine_reasons"] == reasons
    assert counts["quarantined"] == sum(reasons.values())
    assert counts["written"] == 4
    assert counts["read"] == counts["written"] + counts["quarantined"] == 14
    with open(os.path.join(out, rd.COUNTS_FILE)) as f:
        assert json.load(f)["read"] == 14

    quarantined = eg.read_quarantine(out)
    assert len(quarantined) == counts["quarantined"]
    assert {q["reason"] for q in quarantined} == set(reasons)
    for q in quarantined:
        assert set(q) == {"source", "line", "reason", "detail", "raw"}
        assert q["source"].endswith((".csv", ".jsonl")) and q["line"] >= 1
    by_reason = {q["reason"]: q for q in quarantined}
    assert by_reason[rd.RAGGED]["line"] == 5 and by_reason[rd.RAGGED]["raw"] == "ragged,a,,extra\n"
    assert "caf\\xe9" in [q for q in quarantined
                          if q["source"].endswith("bytes.csv")][0]["raw"]

    written = [e["text"] for s in features.SPLITS for e in read_split(out, s)]
    assert sorted(written) == ["fine", "good one", "good two", "json ok"]
    assert [e["text"] for e in read_split(out, features.TEST)] == ["good two"]


def test_raw_row_is_truncated_to_1_kib(tmp_path, in_memory_options):
    write(tmp_path / "long.csv", "text,label\n" + "y" * 5000 + ",\nshort,a\n")
    out = str(tmp_path / "EG")
    eg.run_example_gen([str(tmp_path / "long.csv")], out, SETTINGS, in_memory_options)
    [q] = eg.read_quarantine(out)
    assert q["reason"] == rd.MISSING_LABEL
    assert len(q["raw"].encode()) == 1024


def test_no_test_split_when_no_row_is_marked_test(tmp_path, in_memory_options):
    write(tmp_path / "a.csv", "text,label\n" + "".join(f"row {i},a\n" for i in range(50)))
    out = str(tmp_path / "EG")
    counts = eg.run_example_gen([str(tmp_path / "a.csv")], out, SETTINGS, in_memory_options)
    assert counts["splits"][features.TEST] == 0
    assert not os.path.exists(os.path.join(out, "Split-test"))
    assert os.path.isdir(os.path.join(out, "Split-train"))


def test_split_assignment_is_deterministic(tmp_path, in_memory_options):
    rows = "".join(f"question {i} about things,{'ab'[i % 2]},{'test' if i % 7 == 0 else ''}\n"
                   for i in range(300))
    write(tmp_path / "a.csv", "text,label,split\n" + rows)
    runs = []
    for n in (1, 2):
        out = str(tmp_path / "EG" / str(n))
        eg.run_example_gen([str(tmp_path / "a.csv")], out, SETTINGS, in_memory_options)
        runs.append({s: read_split(out, s) for s in features.SPLITS})
    assert runs[0] == runs[1]
    assert all(runs[0][s] for s in features.SPLITS)


def test_missing_input_and_empty_glob_name_the_path(tmp_path):
    with pytest.raises(UserInputError, match="nothing.csv"):
        rd.discover_inputs([str(tmp_path / "nothing.csv")], SETTINGS)
    with pytest.raises(UserInputError, match=r"\*\.jsonl"):
        rd.discover_inputs([str(tmp_path / "*.jsonl")], SETTINGS)


def test_missing_text_column_is_a_usage_error(tmp_path):
    write(tmp_path / "a.csv", "sentence,label\nhi,a\n")
    with pytest.raises(UserInputError, match="'text'.*sentence"):
        rd.discover_inputs([str(tmp_path / "a.csv")], SETTINGS)
    renamed = rd.ExampleGenSettings(text_key="sentence")
    assert rd.discover_inputs([str(tmp_path / "a.csv")], renamed) == [(str(tmp_path / "a.csv"),
                                                                         "csv")]


def test_unknown_extension_is_a_usage_error(tmp_path):
    write(tmp_path / "a.parquet", "x")
    with pytest.raises(UserInputError, match="a.parquet"):
        rd.discover_inputs([str(tmp_path / "a.parquet")], SETTINGS)


# ---------------------------------------------------------------------------- a user's own files


@pytest.mark.parametrize("name, content", [
    ("bom.csv", "\ufefftext,label\nfirst row,a\nsecond row,b\n"),
    ("bom.tsv", "\ufefftext\tlabel\nfirst row\ta\nsecond row\tb\n"),
    ("bom.jsonl", '\ufeff{"text": "first row", "label": "a"}\n'
                  '{"text": "second row", "label": "b"}\n'),
])
def test_byte_order_mark_is_not_part_of_the_data(tmp_path, name, content):
    """Spreadsheet programs save "CSV UTF-8" with a BOM; the first column/row must survive."""
    path = write(tmp_path / name, content)
    items = rd.discover_inputs([str(path)], SETTINGS)  # the header check sees `text`
    with BeamTestPipeline() as p:
        out = p | read_with_beam(items)
        assert_that(out, equal_to([
            (name, 2 if name.endswith("sv") else 1, (("label", "a"), ("text", "first row"))),
            (name, 3 if name.endswith("sv") else 2, (("label", "b"), ("text", "second row"))),
        ]))


def test_byte_order_mark_in_a_text_file_is_dropped(tmp_path):
    write(tmp_path / "d" / "pos" / "1.txt", "\ufeffgood film")
    [record] = rd.read_records(*rd.discover_inputs([str(tmp_path / "d")], SETTINGS), SETTINGS)
    assert record.fields["text"] == "good film"


def _long_inputs(root, text):
    """The same two rows (one `text`, one short) in every input format."""
    write(root / "rows.csv", f"text,label\n\"{text}\",long\nshort one,short\n")
    write(root / "rows.tsv", f"text\tlabel\n{text}\tlong\nshort one\tshort\n")
    write(root / "rows.jsonl", json.dumps({"text": text, "label": "long"}) + "\n"
          + json.dumps({"text": "short one", "label": "short"}) + "\n")
    write(root / "dir" / "long" / "1.txt", text)
    write(root / "dir" / "short" / "1.txt", "short one")
    return [str(root / "rows.*"), str(root / "dir")]


def test_a_200_kb_document_is_accepted_in_every_format(tmp_path, in_memory_options):
    # Over the csv module's default field limit (131,072), under max_text_bytes (1 MiB).
    text = "word, " * 35_000  # 210,000 bytes, commas included (quoted in the CSV)
    out = str(tmp_path / "EG")
    counts = eg.run_example_gen(_long_inputs(tmp_path / "in", text), out, SETTINGS,
                                in_memory_options)
    assert counts["quarantined"] == 0, eg.read_quarantine(out)
    assert counts["written"] == counts["read"] == 8
    written = [e["text"] for s in features.SPLITS for e in read_split(out, s)]
    assert written.count(text) == 4


def test_a_document_over_max_text_bytes_is_too_long_in_every_format(tmp_path,
                                                                     in_memory_options):
    text = "x" * 1_100_000  # 1.1 MB: over the default max_text_bytes of 1 MiB
    out = str(tmp_path / "EG")
    counts = eg.run_example_gen(_long_inputs(tmp_path / "in", text), out, SETTINGS,
                                in_memory_options)
    assert counts["quarantine_reasons"] == {rd.TEXT_TOO_LONG: 4}
    assert counts["written"] == 4 and counts["read"] == 8
    sources = sorted(os.path.basename(q["source"]) for q in eg.read_quarantine(out))
    assert sources == ["1.txt", "rows.csv", "rows.jsonl", "rows.tsv"]
    # The counts carry the first quarantined rows, for the summary and the report.
    assert [q["reason"] for q in counts["quarantine_sample"]] == [rd.TEXT_TOO_LONG] * 4


def test_a_runaway_quoted_field_is_one_record_and_no_row_is_invented(tmp_path,
                                                                    in_memory_options):
    """A quoted field over the limit spans lines: its lines must not come back as rows; a quote
    that never closes swallows the rest of the file as one record that says so."""
    settings = rd.ExampleGenSettings(max_text_bytes=100)
    long_field = "".join(f"line {i} of a long, quoted text\n" for i in range(50))
    write(tmp_path / "closed.csv", f'text,label\n"{long_field}",a\nfine,b\n"short tail,c\n')
    write(tmp_path / "open.csv", 'text,label\nfirst,a\n"never closed,a\n'
          + "".join(f"row {i},c\n" for i in range(40)))
    out = str(tmp_path / "EG")
    counts = eg.run_example_gen([str(tmp_path / "*.csv")], out, settings, in_memory_options)
    assert counts["read"] == 5 and counts["written"] == 2  # "fine" and "first"
    by_line = {(os.path.basename(q["source"]), q["line"]): q for q in eg.read_quarantine(out)}
    assert set(by_line) == {("closed.csv", 2), ("closed.csv", 54), ("open.csv", 3)}
    assert by_line[("closed.csv", 2)]["reason"] == rd.TEXT_TOO_LONG
    assert "(lines 2-52)" in by_line[("closed.csv", 2)]["detail"]
    assert by_line[("closed.csv", 54)]["reason"] == rd.UNPARSEABLE  # EOF inside the quotes
    assert by_line[("open.csv", 3)]["reason"] == rd.UNPARSEABLE
    assert "never closed" in by_line[("open.csv", 3)]["detail"]
    assert "(lines 3-43)" in by_line[("open.csv", 3)]["detail"]
    written = sorted(e["text"] for s in features.SPLITS for e in read_split(out, s))
    assert written == ["fine", "first"]


@pytest.mark.parametrize("content", ["", "text,label\n", "text,label\n   ,a\n,b\n"])
def test_no_usable_rows_stops_at_example_gen(tmp_path, in_memory_options, content):
    path = write(tmp_path / "a.csv", content)
    out = str(tmp_path / "EG")
    with pytest.raises(UserInputError, match="no usable rows in .*a.csv") as raised:
        eg.run_example_gen([str(path)], out, SETTINGS, in_memory_options)
    details = raised.value.details
    assert details["written"] == 0 and details["read"] == details["quarantined"]
    if details["quarantined"]:
        assert "empty_text" in str(raised.value) and "quarantine" in str(raised.value)
        assert len(eg.read_quarantine(out)) == details["quarantined"]  # there to read


def test_integer_labels_from_json_numbers_and_csv(tmp_path, in_memory_options):
    write(tmp_path / "a.jsonl", '{"text": "one", "label": 1}\n{"text": "zero", "label": 0}\n')
    write(tmp_path / "b.csv", "text,label\nten,10\n")
    out = str(tmp_path / "EG")
    eg.run_example_gen([str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv")], out, SETTINGS,
                       in_memory_options)
    rows = [e for s in features.SPLITS for e in read_split(out, s)]
    assert sorted((e["text"], e["label"]) for e in rows) == [("one", "1"), ("ten", "10"),
                                                              ("zero", "0")]


# ------------------------------------------------------------- one big line-based file, in pieces


def ordered_records(out):
    """Every split's records in file order (parts sorted by name) plus the quarantine."""
    import tensorflow as tf

    records = {}
    for split in features.SPLITS:
        paths = sorted(tf.io.gfile.glob(os.path.join(out, features.split_dir_name(split), "*")))
        records[split] = [r.numpy() for p in paths
                          for r in tf.data.TFRecordDataset(p, compression_type="GZIP")]
    return records, eg.read_quarantine(out)


def big_line_file(path, fmt):
    """Rows of every kind a line-based file holds: good ones, bad ones, blank lines, CRLF,
    multi-byte characters (a byte range may start inside one), a byte-order mark."""
    lines = []
    for i in range(40):
        text = f"question {i} caf\u00e9 \u65e5\u672c {'x' * (i % 7)}"
        label = "" if i % 13 == 5 else "ab"[i % 2]
        if fmt == "jsonl":
            line = json.dumps({"text": text, "label": label, "id": str(i)}, ensure_ascii=False)
            line = "{not json" if i % 11 == 3 else line
        else:
            line = f"{text}\t{label}\t{i}" + ("\textra" if i % 11 == 3 else "")
        lines.append(line + ("\r\n" if i % 5 == 0 else "\n") + ("\n" if i % 9 == 0 else ""))
    header = "" if fmt == "jsonl" else "\n\ntext\tlabel\tid\n"
    return write(path, ("\ufeff" + header + "".join(lines)).encode("utf-8"), mode="wb")


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_a_big_line_based_file_is_read_in_pieces_equal_to_one_read(tmp_path, fmt):
    path = big_line_file(str(tmp_path / f"big.{fmt}"), fmt)
    whole_out = str(tmp_path / "whole")
    whole = eg.run_example_gen([path], whole_out, rd.ExampleGenSettings(split_bytes=0), None)
    expected = ordered_records(whole_out)
    assert whole["quarantined"] >= 6 and whole["written"] >= 30
    assert len(os.listdir(os.path.join(whole_out, "Split-train"))) == 1
    # Ranges that start on a line break, inside a CRLF, inside a multi-byte character and one
    # range per byte: each piece reads the lines that start in it, so none is lost or doubled.
    for split_bytes in (1, 3, 50, 211, os.path.getsize(path) - 1):
        out = str(tmp_path / f"pieces-{split_bytes}")
        counts = eg.run_example_gen([path], out, rd.ExampleGenSettings(split_bytes=split_bytes),
                                    None)
        assert ordered_records(out) == expected, split_bytes
        assert {k: v for k, v in counts.items() if not k.startswith("units_")} == {
            k: v for k, v in whole.items() if not k.startswith("units_")}
        if split_bytes < 1000:  # the last size leaves the second piece no line to start
            assert len(os.listdir(os.path.join(out, "Split-train"))) > 1
    [unit] = rd.plan_units([path], rd.ExampleGenSettings())
    pieces = rd.plan_pieces(unit, rd.ExampleGenSettings(split_bytes=211))
    assert pieces[0].start == 0 and pieces[-1].end == os.path.getsize(path)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    if fmt == "tsv":  # the header (after two blank lines) stays in the first piece
        assert pieces[1].header == ("text", "label", "id")


def test_pieces_are_parsed_by_beam_workers_and_kept_after_a_crash(tmp_path, in_memory_options):
    path = big_line_file(str(tmp_path / "big.jsonl"), "jsonl")
    settings = rd.ExampleGenSettings(split_bytes=400, in_process_max_bytes=0)
    expected_out = str(tmp_path / "expected")
    eg.run_example_gen([path], expected_out, rd.ExampleGenSettings(split_bytes=0), None)
    unit_dir = str(tmp_path / "units" / "big")
    [unit] = rd.plan_units([path], settings)
    [(_, pieces)] = eg.plan_parts([(unit, unit_dir)], settings)
    assert len(pieces) > 3
    # A run that died after two pieces: those two are kept, the rest are parsed by Beam.
    for piece_dir, piece in pieces[:2]:
        list(eg.ParseUnitFn(settings).process((unit, piece_dir, piece)))
    before = os.path.getmtime(os.path.join(pieces[0][0], rd.COUNTS_FILE))
    out = str(tmp_path / "out")
    counts = eg.run_example_gen([path], out, settings, in_memory_options, {unit.name: unit_dir})
    assert counts["units_parsed"] == 1
    assert os.path.getmtime(os.path.join(pieces[0][0], rd.COUNTS_FILE)) == before
    assert ordered_records(out) == ordered_records(expected_out)
    eg.forget_unit(unit_dir)
    assert not any(os.path.exists(d) for d, _ in pieces)


def test_csv_and_compressed_files_are_never_cut(tmp_path):
    settings = rd.ExampleGenSettings(split_bytes=10)
    csv_path = write(str(tmp_path / "a.csv"), 'text,label\n"two\nlines",a\n' * 20)
    gz_path = str(tmp_path / "b.jsonl.gz")
    with gzip.open(gz_path, "wt") as f:
        f.write('{"text": "t", "label": "a"}\n' * 50)
    for path in (csv_path, gz_path):
        [unit] = rd.plan_units([path], settings)
        assert rd.plan_pieces(unit, settings) == [None]
