"""ExampleGen: raw text files (CSV, TSV, JSONL, a folder per label) to split tf.Example TFRecords.

Every record read ends up in exactly one place: a split (`Split-train`, `Split-eval`,
`Split-test`) or `quarantine/` with a reason. `counts.json` holds the tallies, and the driver
refuses to publish the artifact unless rows read = rows written + rows quarantined.

The unit of work is an input unit: one data file (CSV, TSV, JSONL), or one directory of `.txt`
files. A unit is parsed by one worker call, streaming (a quoted CSV field may span lines, so a file
cannot be cut at byte offsets), into its own directory: its split TFRecords in input order, its
quarantine records in line order, and its tallies. Many units are parsed in parallel. The
artifact is then assembled from the unit directories, which the caller names: a unit whose
directory is already published is not parsed again, so a folder that grows by a file a day costs
one file's parse (the caller keys the directories by content, see `unit_fingerprint`). The output
depends only on the units' contents, never on the order workers ran in.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import shutil
import uuid
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components import features
from components.artifacts import file_sha256, staged_output
from components.errors import UserInputError

FORMATS = ("csv", "tsv", "jsonl", "dir")

# Quarantine reasons (the `reason` field of a quarantine record).
UNPARSEABLE = "unparseable_row"
RAGGED = "ragged_columns"
INVALID_UTF8 = "invalid_utf8"
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"
TEXT_TOO_LONG = "text_too_long"
UNKNOWN_SPLIT = "unknown_split"

RAW_LIMIT_BYTES = 1024
QUARANTINE_DIR = "quarantine"
COUNTS_FILE = "counts.json"
QUARANTINE_SAMPLE = 5  # quarantine records shown in the counts (and the run report)
BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, as spreadsheet programs write "CSV UTF-8"
_CSV_FIELD_TOO_LARGE = "field larger than field limit"

# Values of the split column and the split they send a row to. Empty means "assign by hash".
_MARKED_SPLITS = {
    "": None,
    "train": features.TRAIN,
    "eval": features.EVAL,
    "dev": features.EVAL,
    "valid": features.EVAL,
    "validation": features.EVAL,
    "test": features.TEST,
}


@dataclasses.dataclass(frozen=True)
class ExampleGenSettings:
    """How raw rows are read, checked and split."""

    input_format: str = "auto"  # auto | csv | tsv | jsonl | dir
    text_key: str = features.TEXT
    label_key: str = features.LABEL
    id_key: str = features.ID
    split_key: str = "split"
    eval_ratio: float = 0.1  # share of unmarked and `train` rows sent to Split-eval
    max_text_bytes: int = 1 << 20
    require_label: bool = True
    # Input files to parse that total at most this many bytes are parsed in this process: a Beam
    # pipeline costs seconds to start, more than parsing a few MiB. Larger ones go to the runner.
    in_process_max_bytes: int = 32 << 20

    def __post_init__(self):
        if self.input_format not in ("auto",) + FORMATS:
            raise UserInputError(
                f"example_gen.input_format must be one of auto, {', '.join(FORMATS)}; "
                f"got {self.input_format!r}")
        if not 0.0 <= self.eval_ratio < 1.0:
            raise UserInputError(
                f"example_gen.eval_ratio must be in [0, 1); got {self.eval_ratio}")
        if self.max_text_bytes <= 0:
            raise UserInputError("example_gen.max_text_bytes must be positive")
        if self.in_process_max_bytes < 0:
            raise UserInputError("example_gen.in_process_max_bytes must be >= 0")


@dataclasses.dataclass
class RawRecord:
    """One record as read from a source, before any check beyond parsing."""

    source: str
    line: int  # 1-based line (CSV/TSV/JSONL) where the record starts; 0 for a whole file
    raw: bytes
    fields: Optional[Dict[str, Any]] = None  # None when the record could not be parsed
    error: Optional[Tuple[str, str]] = None  # (reason, detail) when it could not be parsed


# ----------------------------------------------------------------------------------------------
# Input discovery (driver side): clear errors before any Beam work starts.


def _strip_compression(path: str) -> str:
    for ext in (".gz", ".bz2", ".deflate", ".zst"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def detect_format(path: str) -> str:
    if FileSystems.exists(path) and os.path.isdir(path):
        return "dir"
    ext = os.path.splitext(_strip_compression(path))[1].lower()
    known = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
             ".ndjson": "jsonl"}
    if ext not in known:
        raise UserInputError(
            f"cannot tell the format of {path}: name it .csv, .tsv, .jsonl, give a directory "
            "laid out as DIR/<label>/*.txt, or set example_gen.input_format")
    return known[ext]


def _list_text_dir(root: str) -> List[Tuple[str, str, str]]:
    """(path, label, marked split) for DIR/<label>/*.txt or DIR/<split>/<label>/*.txt."""
    out = []
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    split_layout = bool(subdirs) and all(d in _MARKED_SPLITS and d for d in subdirs)
    for sub in subdirs:
        if split_layout:
            for label in sorted(os.listdir(os.path.join(root, sub))):
                label_dir = os.path.join(root, sub, label)
                if os.path.isdir(label_dir):
                    out += [(os.path.join(label_dir, f), label, sub)
                            for f in sorted(os.listdir(label_dir)) if f.endswith(".txt")]
        else:
            label_dir = os.path.join(root, sub)
            out += [(os.path.join(label_dir, f), sub, "")
                    for f in sorted(os.listdir(label_dir)) if f.endswith(".txt")]
    if not out:
        raise UserInputError(
            f"directory input {root} holds no DIR/<label>/*.txt (or DIR/<split>/<label>/*.txt) "
            "files")
    return out


_DATA_EXTENSIONS = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".ndjson")


def _data_files_in(directory: str) -> List[str]:
    """The data files of a folder without subfolders (hidden files ignored); [] otherwise."""
    names = [n for n in sorted(os.listdir(directory)) if not n.startswith(".")]
    if any(os.path.isdir(os.path.join(directory, n)) for n in names):
        return []
    return [os.path.join(directory, n) for n in names
            if _strip_compression(n).lower().endswith(_DATA_EXTENSIONS)]


class _RawReader(io.RawIOBase):
    """Adapts a Beam file handle (possibly decompressing) to the `io` stack."""

    def __init__(self, handle):
        self._handle = handle

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._handle.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        if not self.closed:
            self._handle.close()
        super().close()


def open_binary(path: str) -> io.BufferedReader:
    """Opens any Beam filesystem path, decompressing by extension (.gz, .bz2, ...)."""
    return io.BufferedReader(_RawReader(
        FileSystems.open(path, compression_type=CompressionTypes.AUTO)), 1 << 20)


def _read_header(path: str, delimiter: str, max_text_bytes: int) -> List[str]:
    with open_binary(path) as raw:
        # utf-8-sig: a byte-order mark before the first column name is not part of it.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text, delimiter=delimiter, **_quoting(delimiter))
        _allow_fields_up_to(max_text_bytes)
        for row in reader:
            if row:
                return row
    return []


def _allow_fields_up_to(max_text_bytes: int) -> None:
    """Sets the csv module's (process-wide) field limit so that no usable row is refused.

    Python refuses fields over 131,072 characters by default. A text of max_text_bytes bytes has
    at most that many characters, so the limit is max_text_bytes + 1 characters (the parser
    refuses a field that reaches its limit): every usable row parses, and a runaway quoted field
    holds at most that much in memory before it is cut off.
    """
    csv.field_size_limit(max_text_bytes + 1)


def _quoting(delimiter: str) -> Dict[str, Any]:
    # CSV follows RFC 4180 quoting, checked strictly; TSV has no quoting (IANA text/tab-separated).
    if delimiter == "\t":
        return {"quoting": csv.QUOTE_NONE}
    return {"strict": True}


def discover_inputs(inputs: Sequence[str], settings: ExampleGenSettings) -> List[Tuple[str, str]]:
    """Expands globs to (path, format) work items; raises UserInputError naming what is wrong.

    For a directory input each .txt file is one item with format `dir:<label>:<split>`.
    """
    if not inputs:
        raise UserInputError("no input given: pass --input GLOB")
    items: List[Tuple[str, str]] = []
    for pattern in inputs:
        data_files = _data_files_in(pattern) if os.path.isdir(pattern) else None
        if data_files:  # a folder of CSV/TSV/JSONL files, e.g. one that grows by a file a day
            pattern = os.path.join(pattern, "*")
        elif os.path.isdir(pattern):
            if settings.input_format not in ("auto", "dir"):
                raise UserInputError(
                    f"{pattern} is a directory but example_gen.input_format is "
                    f"{settings.input_format!r}")
            items += [(p, f"dir:{label}:{split}") for p, label, split in _list_text_dir(pattern)]
            continue
        matches = FileSystems.match([pattern])[0].metadata_list
        paths = sorted(m.path for m in matches if not os.path.isdir(m.path))
        if data_files:
            paths = data_files
        if not paths:
            raise UserInputError(f"input {pattern} matches no file")
        for path in paths:
            fmt = settings.input_format if settings.input_format != "auto" else detect_format(path)
            if fmt in ("csv", "tsv"):
                header = _read_header(path, "," if fmt == "csv" else "\t",
                                      settings.max_text_bytes)
                if header:  # an empty file holds no rows; nothing to check
                    required = [settings.text_key] + ([settings.label_key]
                                                      if settings.require_label else [])
                    missing = [c for c in required if c not in header]
                    if missing:
                        raise UserInputError(
                            f"{path}: header has no column {', '.join(map(repr, missing))} "
                            f"(columns: {', '.join(header)}); set example_gen.text_key / "
                            "label_key to the right names")
            items.append((path, fmt))
    return items


# ----------------------------------------------------------------------------------------------
# Readers (worker side): one file in, RawRecords out.


class _LineRecorder:
    """Iterates a text stream, keeping the lines consumed since the last `take()`."""

    def __init__(self, stream):
        self._stream = iter(stream)
        self._lines: List[str] = []
        self.lines_read = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._stream)
        self.lines_read += 1
        self._lines.append(line)
        return line

    def take(self) -> bytes:
        raw = "".join(self._lines).encode("utf-8", "surrogateescape")
        self._lines.clear()
        return raw

    def skip_to_closing_quote(self, quotes_so_far: int) -> bool:
        """Consumes lines until the quotes seen balance (the open quoted field ends); returns
        False when the file ends first. The skipped lines are counted, not kept."""
        quotes = quotes_so_far
        for line in self._stream:
            self.lines_read += 1
            quotes += line.count('"')
            if quotes % 2 == 0:
                return True
        return False


def _field_too_large(recorder: _LineRecorder, raw: bytes, quoting: bool, max_text_bytes: int
                     ) -> Tuple[str, str]:
    """The quarantine reason for a field over the parser's limit, after resynchronising.

    The parser gives up inside the field. When that field is quoted (an odd number of quotes so
    far) its remaining lines would parse as rows of their own, so they are skipped to the
    closing quote; a quote that never closes makes the rest of the file one unparseable record.
    """
    quotes = raw.count(b'"')
    if quoting and quotes % 2 and not recorder.skip_to_closing_quote(quotes):
        return UNPARSEABLE, "a quoted field is never closed: the rest of the file is inside it"
    return TEXT_TOO_LONG, f"a field is over max_text_bytes ({max_text_bytes} characters)"


def _has_invalid_utf8(values: Iterable[str]) -> bool:
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not valid UTF-8
        return True
    return False


def read_delimited(path: str, delimiter: str, max_text_bytes: int) -> Iterator[RawRecord]:
    _allow_fields_up_to(max_text_bytes)
    with open_binary(path) as raw_stream:
        # surrogateescape keeps invalid bytes visible per row instead of failing the file;
        # utf-8-sig drops a byte-order mark at the start of the file.
        text = io.TextIOWrapper(raw_stream, encoding="utf-8-sig", errors="surrogateescape",
                                newline="")
        recorder = _LineRecorder(text)
        reader = csv.reader(recorder, delimiter=delimiter, **_quoting(delimiter))
        header: Optional[List[str]] = None
        prev_line = 0
        while True:
            try:
                row = next(reader)
                error = None
            except StopIteration:
                break
            except csv.Error as e:
                row, error = None, (UNPARSEABLE, str(e))
            raw = recorder.take()
            if error and _CSV_FIELD_TOO_LARGE in error[1]:
                error = _field_too_large(recorder, raw, delimiter != "\t", max_text_bytes)
            start, prev_line = prev_line + 1, recorder.lines_read
            if error and prev_line > start:  # say which lines one record took
                error = (error[0], f"{error[1]} (lines {start}-{prev_line})")
            if row is not None and not row:
                continue  # a blank line holds no record
            if header is None and error is None:
                header = row
                continue
            if error is None and len(row) != len(header):
                error = (RAGGED, f"expected {len(header)} columns, got {len(row)}")
            if error is None and _has_invalid_utf8(row):
                error = (INVALID_UTF8, "row is not valid UTF-8")
            if error:
                yield RawRecord(path, start, raw, error=error)
            else:
                yield RawRecord(path, start, raw, fields=dict(zip(header, row)))


def read_jsonl(path: str) -> Iterator[RawRecord]:
    with open_binary(path) as stream:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue  # a blank line holds no record
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield RawRecord(path, number, raw, error=(INVALID_UTF8, "line is not valid UTF-8"))
                continue
            except ValueError as e:
                yield RawRecord(path, number, raw, error=(UNPARSEABLE, f"invalid JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                yield RawRecord(path, number, raw,
                                error=(UNPARSEABLE, f"expected a JSON object, got "
                                                    f"{type(obj).__name__}"))
                continue
            yield RawRecord(path, number, raw, fields=obj)


def read_text_file(path: str, label: str, split: str, settings: ExampleGenSettings
                   ) -> Iterator[RawRecord]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        yield RawRecord(path, 0, raw, error=(INVALID_UTF8, "file is not valid UTF-8"))
        return
    yield RawRecord(path, 0, raw, fields={
        settings.text_key: text, settings.label_key: label, settings.split_key: split,
        settings.id_key: path})


def read_records(item: Tuple[str, str], settings: ExampleGenSettings) -> Iterator[RawRecord]:
    path, fmt = item
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "," if fmt == "csv" else "\t", settings.max_text_bytes)
    if fmt == "jsonl":
        return read_jsonl(path)
    label, split = fmt[len("dir:"):].rsplit(":", 1)
    return read_text_file(path, label, split, settings)


# ----------------------------------------------------------------------------------------------
# Checks, split assignment and tf.Example encoding.


def stable_bucket(data: bytes, buckets: int) -> int:
    """A bucket in [0, buckets) from a sha256 of `data`: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % buckets


def hash_split(text: bytes, eval_ratio: float) -> str:
    """Train or eval by a stable hash of the text: the same text always lands in the same split."""
    bucket = stable_bucket(text, 10_000)
    return features.EVAL if bucket < round(eval_ratio * 10_000) else features.TRAIN


def _as_text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, dict, list)):
        return json.dumps(value)
    return str(value)


def quarantine_record(record: RawRecord, reason: str, detail: str) -> Dict[str, Any]:
    return {
        "source": record.source,
        "line": record.line,
        "reason": reason,
        "detail": detail,
        "raw": record.raw[:RAW_LIMIT_BYTES].decode("utf-8", "backslashreplace"),
    }


def check_record(record: RawRecord, settings: ExampleGenSettings
                 ) -> Tuple[Optional[str], Optional[Dict[str, bytes]], Optional[Tuple[str, str]]]:
    """Returns (split, feature values, None) for a usable record, else (None, None, (reason, detail))."""
    if record.error:
        return None, None, record.error
    f = record.fields
    text = _as_text(f.get(settings.text_key))
    if text is None:
        return None, None, (MISSING_TEXT, f"no {settings.text_key!r} field")
    if not text.strip():
        return None, None, (EMPTY_TEXT, "text is empty or whitespace only")
    text_bytes = text.encode("utf-8")
    if len(text_bytes) > settings.max_text_bytes:
        return None, None, (TEXT_TOO_LONG, f"text is {len(text_bytes)} bytes, over the limit "
                                           f"of {settings.max_text_bytes}")
    values = {features.TEXT: text_bytes}
    label = _as_text(f.get(settings.label_key))
    if label is not None and label.strip():
        values[features.LABEL] = label.strip().encode("utf-8")
    elif settings.require_label:
        return None, None, (MISSING_LABEL, f"no value in {settings.label_key!r}")
    row_id = _as_text(f.get(settings.id_key))
    if row_id:
        values[features.ID] = row_id.encode("utf-8")
    marked = (_as_text(f.get(settings.split_key)) or "").strip().lower()
    if marked not in _MARKED_SPLITS:
        return None, None, (UNKNOWN_SPLIT, f"split value {marked!r} is not one of train, eval, "
                                           "test or empty")
    split = _MARKED_SPLITS[marked]
    if split in (None, features.TRAIN):  # `train` rows are hash-split too: eval is for early stopping
        split = hash_split(text_bytes, settings.eval_ratio)
    return split, values, None


def to_tf_example(values: Dict[str, bytes]) -> bytes:
    import tensorflow as tf  # imported late: workers that never encode don't pay for it

    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
               for k, v in sorted(values.items())}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


# ----------------------------------------------------------------------------------------------
# Input units, the Beam graph and the driver.

UNIT_DATA_FILE = "data.tfrecord.gz"
UNIT_QUARANTINE_FILE = "quarantine.jsonl"


@dataclasses.dataclass(frozen=True)
class InputUnit:
    """What one worker call parses: a data file, or a directory of `.txt` files."""

    name: str  # the file, or the directory
    items: Tuple[Tuple[str, str], ...]  # (path, format) work items, in reading order


def plan_units(inputs: Sequence[str], settings: ExampleGenSettings) -> List[InputUnit]:
    """The input units of `inputs`, each once, in input order (errors as `discover_inputs`)."""
    units: Dict[str, List[Tuple[str, str]]] = {}
    for pattern in inputs:
        for path, fmt in discover_inputs([pattern], settings):
            name = pattern.rstrip("/") if fmt.startswith("dir:") else path
            items = units.setdefault(name, [])
            if (path, fmt) not in items:
                items.append((path, fmt))
    return [InputUnit(name, tuple(items)) for name, items in units.items()]


def unit_fingerprint(unit: InputUnit, file_hashes: Optional[Sequence[str]] = None) -> str:
    """sha256 over each item's path, format and content: what the unit's records depend on.

    `file_hashes` are the items' `file_sha256`, when the caller has them already.
    """
    hashes = file_hashes if file_hashes is not None else [file_sha256(p) for p, _ in unit.items]
    h = hashlib.sha256()
    for (path, fmt), content in zip(unit.items, hashes):
        h.update(f"{path}\0{fmt}\0{content}\0".encode("utf-8"))
    return h.hexdigest()


def is_parsed(unit_dir: str) -> bool:
    """Whether a unit directory is published and complete: its tallies are there, and so is
    the file of every split and of the quarantine they count."""
    if not FileSystems.exists(os.path.join(unit_dir, COUNTS_FILE)):
        return False
    tallies = _load_json(os.path.join(unit_dir, COUNTS_FILE))
    expected = [os.path.join(unit_dir, features.split_dir_name(k.split(":", 1)[1]),
                             UNIT_DATA_FILE) for k, n in tallies.items()
                if k.startswith("split:") and n]
    if any(k.startswith("quarantine:") and n for k, n in tallies.items()):
        expected.append(os.path.join(unit_dir, QUARANTINE_DIR, UNIT_QUARANTINE_FILE))
    return all(FileSystems.exists(path) for path in expected)


class ParseUnitFn(beam.DoFn):
    """(unit, unit_dir) -> writes the unit's records under unit_dir; yields (name, tallies).

    Records are written in input order, quarantine records in line order, into a temporary
    sibling renamed into place at the end: a retried bundle or a killed worker never leaves a
    partial unit, and a unit parsed twice gives the same bytes.
    """

    def __init__(self, settings: ExampleGenSettings):
        self._settings = settings

    def process(self, element):
        import tensorflow as tf

        unit, unit_dir = element
        if is_parsed(unit_dir):  # a retried bundle: already done
            yield unit.name, _load_json(os.path.join(unit_dir, COUNTS_FILE))
            return
        tmp = f"{unit_dir.rstrip('/')}.tmp-{uuid.uuid4().hex}"
        tf.io.gfile.makedirs(tmp)
        tallies: Counter = Counter()
        writers: Dict[str, Any] = {}
        quarantine = None
        try:
            for item in unit.items:
                for record in read_records(item, self._settings):
                    tallies["read"] += 1
                    split, values, problem = check_record(record, self._settings)
                    if problem:
                        if quarantine is None:
                            quarantine = _open_text(os.path.join(tmp, QUARANTINE_DIR,
                                                                 UNIT_QUARANTINE_FILE))
                        quarantine.write(json.dumps(quarantine_record(record, *problem),
                                                    sort_keys=True, ensure_ascii=False) + "\n")
                        tallies[f"quarantine:{problem[0]}"] += 1
                        continue
                    if split not in writers:
                        split_dir = os.path.join(tmp, features.split_dir_name(split))
                        tf.io.gfile.makedirs(split_dir)
                        writers[split] = tf.io.TFRecordWriter(
                            os.path.join(split_dir, UNIT_DATA_FILE),
                            tf.io.TFRecordOptions(compression_type="GZIP"))
                    writers[split].write(to_tf_example(values))
                    tallies[f"split:{split}"] += 1
            for writer in writers.values():
                writer.close()
            if quarantine is not None:
                quarantine.close()
            if not tf.io.gfile.isdir(tmp):  # removed under us (a cleanup): never publish
                raise RuntimeError(f"temporary unit directory {tmp} disappeared while parsing")
            with tf.io.gfile.GFile(os.path.join(tmp, COUNTS_FILE), "w") as f:
                json.dump(dict(sorted(tallies.items())), f)
            if is_parsed(unit_dir):  # another attempt finished first: same content
                tf.io.gfile.rmtree(tmp)
            else:
                tf.io.gfile.rename(tmp, unit_dir)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.rmtree(tmp)
            raise
        yield unit.name, dict(tallies)


def _open_text(path: str):
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    return tf.io.gfile.GFile(path, "w")


def _load_json(path: str) -> Any:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def parse_units(units: Sequence[Tuple[InputUnit, str]], settings: ExampleGenSettings,
                beam_options) -> List[str]:
    """Parses each (unit, unit_dir) not yet published: in one Beam pipeline, or in this process
    when they total at most `settings.in_process_max_bytes` (the same DoFn either way).

    Returns the names of the units it parsed.
    """
    todo = [(u, d) for u, d in units if not is_parsed(d)]
    parsed = [u.name for u, _ in todo]
    if not todo:
        return parsed
    size = sum(m.size_in_bytes for u, _ in todo for result in FileSystems.match(
        [path for path, _ in u.items]) for m in result.metadata_list)
    if size <= settings.in_process_max_bytes:
        parse = ParseUnitFn(settings)
        for element in todo:
            for _ in parse.process(element):
                pass
        return parsed
    with beam.Pipeline(options=beam_options) as p:
        _ = (p
             | "CreateUnits" >> beam.Create(todo)
             | "Distribute" >> beam.Reshuffle()
             | "ParseUnits" >> beam.ParDo(ParseUnitFn(settings)))
    return parsed


def assemble_examples(units: Sequence[Tuple[InputUnit, str]], output_dir: str,
                      parsed: Sequence[str] = ()) -> Dict[str, Any]:
    """Builds the Examples artifact at `output_dir` from parsed unit directories.

    Each unit's split file becomes `Split-<s>/part-<unit dir name>.gz` (a hard link where the
    filesystem allows, else a copy), so the artifact depends only on the units. Returns the
    counts, with `units_parsed`/`units_reused` telling which units `parsed` names were parsed
    by this run.
    """
    tallies: Counter = Counter()
    for _, unit_dir in units:
        tallies.update(_load_json(os.path.join(unit_dir, COUNTS_FILE)))
    counts = summarize_counts(dict(tallies))
    if counts["read"] != counts["written"] + counts["quarantined"]:
        raise RuntimeError(f"ExampleGen counts do not reconcile: {counts}")
    with staged_output(output_dir) as tmp:
        for _, unit_dir in units:
            part = f"part-{os.path.basename(unit_dir.rstrip('/'))}"
            for split in features.SPLITS:
                source = os.path.join(unit_dir, features.split_dir_name(split), UNIT_DATA_FILE)
                if FileSystems.exists(source):
                    _link_or_copy(source, os.path.join(tmp, features.split_dir_name(split),
                                                       f"{part}.gz"))
            source = os.path.join(unit_dir, QUARANTINE_DIR, UNIT_QUARANTINE_FILE)
            if FileSystems.exists(source):
                _link_or_copy(source, os.path.join(tmp, QUARANTINE_DIR, f"{part}.jsonl"))
        # The file depends on the units alone: not on the input order, nor on which units
        # this run parsed (that goes only to the returned counts).
        ordered = sorted(units, key=lambda unit: unit[0].name)
        names = [u.name for u, _ in ordered]
        counts["inputs"] = names if len(names) <= 100 else len(names)
        counts["quarantine_sample"] = list(itertools.islice(
            (q for _, d in ordered for q in _iter_jsonl(
                os.path.join(d, QUARANTINE_DIR, UNIT_QUARANTINE_FILE))), QUARANTINE_SAMPLE))
        with open(os.path.join(tmp, COUNTS_FILE), "w") as f:
            json.dump(counts, f, indent=2, sort_keys=True)
    counts["units_parsed"] = len(set(parsed) & set(names))
    counts["units_reused"] = len(names) - counts["units_parsed"]
    return counts


def _link_or_copy(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _iter_jsonl(path: str) -> Iterator[Dict[str, Any]]:
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())


@beam.ptransform_fn
def WriteQuarantine(quarantined, output_dir: str):
    """Quarantine records as JSON lines under `output_dir/quarantine/`."""
    return (
        quarantined
        | "ToJson" >> beam.Map(json.dumps, sort_keys=True, ensure_ascii=False)
        | "Write" >> beam.io.WriteToText(
            os.path.join(output_dir, QUARANTINE_DIR, "quarantine"), file_name_suffix=".jsonl"))


@beam.ptransform_fn
def WriteCounts(pcolls, output_dir: str):
    """Writes `counts.json` from (records read, output keys like "split:train", quarantined).

    The tallies are taken at different points of the graph, so reconciling them is a real check.
    """
    records, written_keys, quarantined = pcolls
    keys = (
        (records | "KeyRead" >> beam.Map(lambda _: "read")),
        written_keys,
        (quarantined | "KeyQuarantine" >> beam.Map(lambda q: f"quarantine:{q['reason']}")),
    ) | "Flatten" >> beam.Flatten()
    return (
        keys
        | "Count" >> beam.combiners.Count.PerElement()
        | "Collect" >> beam.combiners.ToList()
        | "ToJson" >> beam.Map(lambda pairs: json.dumps(dict(sorted(pairs))))
        | "Write" >> beam.io.WriteToText(os.path.join(output_dir, COUNTS_FILE),
                                         shard_name_template=""))


def summarize_counts(raw_counts: Dict[str, int], splits: Sequence[str] = features.SPLITS
                     ) -> Dict[str, Any]:
    """Totals from the raw tallies; `splits` names the outputs the rows were written to."""
    splits = {s: raw_counts.get(f"split:{s}", 0) for s in splits}
    reasons = {k.split(":", 1)[1]: v for k, v in raw_counts.items() if k.startswith("quarantine:")}
    return {
        "read": raw_counts.get("read", 0),
        "written": sum(splits.values()),
        "quarantined": sum(reasons.values()),
        "splits": splits,
        "quarantine_reasons": reasons,
    }


def run_example_gen(inputs: Sequence[str], output_dir: str, settings: ExampleGenSettings,
                    beam_options, unit_dirs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Runs ExampleGen into `output_dir` (published only when complete); returns the counts.

    `unit_dirs` ({unit name: directory}) says where each input unit's parsed records live;
    units whose directory is already published are not parsed again. Without it (or for a unit
    it does not name) the unit is parsed into `output_dir/.units/`.
    """
    units = plan_units(inputs, settings)
    local_units = os.path.join(output_dir + ".units")
    placed = [(u, (unit_dirs or {}).get(u.name)
               or os.path.join(local_units, unit_fingerprint(u)[:32])) for u in units]
    parsed = parse_units(placed, settings, beam_options)
    counts = assemble_examples(placed, output_dir, parsed)
    shutil.rmtree(local_units, ignore_errors=True)
    if not counts["written"]:
        # Published all the same: the quarantine records are what the user needs to read.
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(counts["quarantine_reasons"].items()))
        raise UserInputError(
            f"no usable rows in {', '.join(inputs)}: read {counts['read']}, quarantined "
            f"{counts['quarantined']}" + (f" ({reasons})" if reasons else "")
            + (f"; see {os.path.join(output_dir, QUARANTINE_DIR)}/" if counts["quarantined"]
               else "; the inputs hold no records"), details=counts)
    return counts


def iter_quarantine(output_dir: str) -> Iterator[Dict[str, Any]]:
    """The quarantine records of an ExampleGen artifact, file by file, lazily."""
    qdir = os.path.join(output_dir, QUARANTINE_DIR)
    for name in sorted(os.listdir(qdir)) if os.path.isdir(qdir) else []:
        yield from _iter_jsonl(os.path.join(qdir, name))


def read_quarantine(output_dir: str) -> List[Dict[str, Any]]:
    """All quarantine records of an ExampleGen artifact."""
    return list(iter_quarantine(output_dir))
