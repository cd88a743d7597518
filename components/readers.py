"""Reading raw labelled text, shared by ExampleGen (ingest) and the scorer.

Formats (CSV with RFC 4180 quoting, TSV, JSONL, optionally compressed, a folder of `.txt` files
per label), discovering the files of the inputs a user names, reading them into `RawRecord`s
(whole, or in pieces at line boundaries where the format allows), the checks that send a record
to quarantine with a reason, and the tallies that reconcile rows read = rows used + rows
quarantined. ExampleGen writes what passes as split tf.Examples; the scorer scores it.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components import features, fileio
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
    # A line-based file (JSONL, TSV; not compressed) larger than this is read as byte ranges of
    # about this size, each by its own worker, so one big file is read by many. 0: never split.
    split_bytes: int = 64 << 20

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
        if self.split_bytes < 0:
            raise UserInputError("example_gen.split_bytes must be >= 0 (0: never split a file)")


@dataclasses.dataclass(frozen=True)
class Piece:
    """A byte range of a line-based file, read by one worker (see `plan_pieces`)."""

    start: int
    end: int
    header: Optional[Tuple[str, ...]] = None  # a TSV's column names, for ranges after the first


class LineTally:
    """Filled by a reader with the number of lines it consumed (blank ones included): what
    turns the line numbers of a piece into line numbers of its file."""

    lines: int = 0


@dataclasses.dataclass
class RawRecord:
    """One record as read from a source, before any check beyond parsing."""

    source: str
    line: int  # 1-based line (CSV/TSV/JSONL) where the record starts (in its piece); 0: a file
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
    if fileio.isdir(path):
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
    subdirs = [d for d in fileio.listdir(root) if fileio.isdir(fileio.join(root, d))]
    split_layout = bool(subdirs) and all(d in _MARKED_SPLITS and d for d in subdirs)
    for sub in subdirs:
        if split_layout:
            for label in fileio.listdir(fileio.join(root, sub)):
                label_dir = fileio.join(root, sub, label)
                if fileio.isdir(label_dir):
                    out += [(fileio.join(label_dir, f), label, sub)
                            for f in fileio.listdir(label_dir) if f.endswith(".txt")]
        else:
            label_dir = fileio.join(root, sub)
            out += [(fileio.join(label_dir, f), sub, "")
                    for f in fileio.listdir(label_dir) if f.endswith(".txt")]
    if not out:
        raise UserInputError(
            f"directory input {root} holds no DIR/<label>/*.txt (or DIR/<split>/<label>/*.txt) "
            "files")
    return out


_DATA_EXTENSIONS = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".ndjson")


def _data_files_in(directory: str) -> List[str]:
    """The data files of a folder without subfolders (hidden files ignored); [] otherwise."""
    names = [n for n in fileio.listdir(directory) if not n.startswith(".")]
    if any(fileio.isdir(fileio.join(directory, n)) for n in names):
        return []
    return [fileio.join(directory, n) for n in names
            if _strip_compression(n).lower().endswith(_DATA_EXTENSIONS)]


def _is_directory(match_path: str) -> bool:
    """Whether a path a glob matched is a directory. Object stores list objects, and a
    "directory" there is at most an empty placeholder object named with a trailing '/'."""
    if fileio.is_local(match_path):
        return fileio.isdir(match_path)
    return match_path.endswith("/")


class _LinesReader(io.RawIOBase):
    """A raw stream over an iterator of byte strings (the lines of a byte range)."""

    def __init__(self, lines: Iterator[bytes], close: Any):
        self._lines = lines
        self._pending = b""
        self._close = close

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            self._pending = next(self._lines, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n

    def close(self):
        if not self.closed:
            self._close()
        super().close()


def open_binary(path: str, piece: Optional["Piece"] = None) -> io.BufferedReader:
    """Opens any Beam filesystem path, decompressing by extension (.gz, .bz2, ...).

    With a `piece`, the stream holds the lines of the (uncompressed) file that start in the
    piece's byte range, as Beam's splittable text source assigns them: a line belongs to the
    range its first byte is in, so consecutive ranges read every line exactly once.
    """
    if piece is None:
        return io.BufferedReader(fileio.RawStream(
            FileSystems.open(path, compression_type=CompressionTypes.AUTO)), 1 << 20)
    stream = io.BufferedReader(fileio.RawStream(
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)), 1 << 20)

    def lines():
        position = 0
        if piece.start > 0:  # the line running into the range belongs to the range before
            stream.seek(piece.start - 1)
            position = piece.start - 1 + len(stream.readline())
        while position < piece.end:
            line = stream.readline()
            if not line:
                return
            position += len(line)
            yield line

    return io.BufferedReader(_LinesReader(lines(), stream.close), 1 << 20)


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
        is_dir = fileio.isdir(pattern)
        data_files = _data_files_in(pattern) if is_dir else None
        if data_files:  # a folder of CSV/TSV/JSONL files, e.g. one that grows by a file a day
            pattern = fileio.join(pattern, "*")
        elif is_dir:
            if settings.input_format not in ("auto", "dir"):
                raise UserInputError(
                    f"{pattern} is a directory but example_gen.input_format is "
                    f"{settings.input_format!r}")
            items += [(p, f"dir:{label}:{split}") for p, label, split in _list_text_dir(pattern)]
            continue
        matches = FileSystems.match([pattern])[0].metadata_list
        paths = sorted(m.path for m in matches if not _is_directory(m.path))
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


def read_delimited(path: str, delimiter: str, max_text_bytes: int, piece: Optional[Piece] = None,
                   tally: Optional[LineTally] = None) -> Iterator[RawRecord]:
    _allow_fields_up_to(max_text_bytes)
    at_start = piece is None or piece.start == 0
    with open_binary(path, piece) as raw_stream:
        # surrogateescape keeps invalid bytes visible per row instead of failing the file;
        # utf-8-sig drops a byte-order mark at the start of the file.
        text = io.TextIOWrapper(raw_stream, encoding="utf-8-sig" if at_start else "utf-8",
                                errors="surrogateescape", newline="")
        recorder = _LineRecorder(text)
        reader = csv.reader(recorder, delimiter=delimiter, **_quoting(delimiter))
        header: Optional[List[str]] = None if at_start else list(piece.header)
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
        if tally is not None:
            tally.lines = recorder.lines_read


def read_jsonl(path: str, piece: Optional[Piece] = None, tally: Optional[LineTally] = None
               ) -> Iterator[RawRecord]:
    with open_binary(path, piece) as stream:
        number = 0
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(BOM) and (piece is None or piece.start == 0):
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
        if tally is not None:
            tally.lines = number


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


def count_lines(item: Tuple[str, str], piece: Piece) -> int:
    """The lines a piece of a JSONL or TSV file holds, counted as its reader counts them
    (`LineTally`) without parsing: what comes before a piece when records must carry the line
    number in the file before every piece has been read."""
    path, fmt = item
    with open_binary(path, piece) as stream:
        if fmt == "jsonl":
            return sum(1 for _ in stream)
        text = io.TextIOWrapper(stream, encoding="utf-8-sig" if piece.start == 0 else "utf-8",
                                errors="surrogateescape", newline="")
        return sum(1 for _ in text)


def read_records(item: Tuple[str, str], settings: ExampleGenSettings,
                 piece: Optional[Piece] = None, tally: Optional[LineTally] = None
                 ) -> Iterator[RawRecord]:
    """The records of one work item, or of one piece of it (see `plan_pieces`).

    Line numbers count from the start of the piece; `tally` gets the lines consumed.
    """
    path, fmt = item
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "," if fmt == "csv" else "\t", settings.max_text_bytes,
                              piece, tally)
    if fmt == "jsonl":
        return read_jsonl(path, piece, tally)
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


def check_values(record: RawRecord, settings: ExampleGenSettings
                 ) -> Tuple[Optional[Dict[str, bytes]], Optional[Tuple[str, str]]]:
    """(feature values, None) for a record whose text (and label, when `require_label`) can be
    used, else (None, (reason, detail)). A split column is not looked at (see `check_record`)."""
    if record.error:
        return None, record.error
    f = record.fields
    text = _as_text(f.get(settings.text_key))
    if text is None:
        return None, (MISSING_TEXT, f"no {settings.text_key!r} field")
    if not text.strip():
        return None, (EMPTY_TEXT, "text is empty or whitespace only")
    text_bytes = text.encode("utf-8")
    if len(text_bytes) > settings.max_text_bytes:
        return None, (TEXT_TOO_LONG, f"text is {len(text_bytes)} bytes, over the limit "
                                     f"of {settings.max_text_bytes}")
    values = {features.TEXT: text_bytes}
    label = _as_text(f.get(settings.label_key))
    if label is not None and label.strip():
        values[features.LABEL] = label.strip().encode("utf-8")
    elif settings.require_label:
        return None, (MISSING_LABEL, f"no value in {settings.label_key!r}")
    row_id = _as_text(f.get(settings.id_key))
    if row_id:
        values[features.ID] = row_id.encode("utf-8")
    return values, None


def check_record(record: RawRecord, settings: ExampleGenSettings
                 ) -> Tuple[Optional[str], Optional[Dict[str, bytes]], Optional[Tuple[str, str]]]:
    """Returns (split, feature values, None) for a usable record, else (None, None, (reason, detail))."""
    values, problem = check_values(record, settings)
    if problem:
        return None, None, problem
    marked = (_as_text(record.fields.get(settings.split_key)) or "").strip().lower()
    if marked not in _MARKED_SPLITS:
        return None, None, (UNKNOWN_SPLIT, f"split value {marked!r} is not one of train, eval, "
                                           "test or empty")
    split = _MARKED_SPLITS[marked]
    if split in (None, features.TRAIN):  # `train` rows are hash-split too: eval is for early stopping
        split = hash_split(values[features.TEXT], settings.eval_ratio)
    return split, values, None


def to_tf_example(values: Dict[str, bytes]) -> bytes:
    import tensorflow as tf  # imported late: workers that never encode don't pay for it

    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
               for k, v in sorted(values.items())}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


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


def total_bytes(units: Sequence[InputUnit]) -> int:
    """The size of every file of `units`, in bytes (as stored: compressed files count as such)."""
    paths = [path for unit in units for path, _ in unit.items]
    if not paths:
        return 0
    return sum(m.size_in_bytes for result in FileSystems.match(paths)
               for m in result.metadata_list)


_SPLITTABLE = ("jsonl", "tsv")


def _header_start(path: str, max_text_bytes: int) -> Optional[Tuple[Tuple[str, ...], int]]:
    """(column names, byte offset of their line) of a TSV: its first row that is not blank
    and parses, as `read_delimited` takes it; None when the file has no such row."""
    _allow_fields_up_to(max_text_bytes)
    with open_binary(path, Piece(0, 1 << 62)) as stream:
        offset = 0
        for number, line in enumerate(stream):
            text = line.decode("utf-8-sig" if number == 0 else "utf-8", "surrogateescape")
            try:
                row = next(csv.reader([text], delimiter="\t", **_quoting("\t")), [])
            except csv.Error:
                row = []
            if row:
                return tuple(row), offset
            offset += len(line)
    return None


def plan_pieces(unit: InputUnit, settings: ExampleGenSettings) -> List[Optional[Piece]]:
    """How a unit is read: `[None]` in one go, or as byte-range pieces, one worker call each.

    Only one big line-based file is cut: JSONL or TSV over `settings.split_bytes`, not
    compressed (a gzip stream cannot be entered in the middle). CSV is never cut: a quoted field
    may hold newlines, so a byte offset can fall inside a record. A TSV's header line stays in
    the first piece and its column names travel with the others.
    """
    if settings.split_bytes <= 0 or len(unit.items) != 1:
        return [None]
    path, fmt = unit.items[0]
    if fmt not in _SPLITTABLE or _strip_compression(path) != path:
        return [None]
    size = total_bytes([unit])
    if size <= settings.split_bytes:
        return [None]
    header, header_at = None, -1
    if fmt == "tsv":
        found = _header_start(path, settings.max_text_bytes)
        if found is None:
            return [None]
        header, header_at = found
    bounds = [0] + [b for b in range(settings.split_bytes, size, settings.split_bytes)
                    if b > header_at] + [size]
    return [Piece(start, end, header) for start, end in zip(bounds, bounds[1:])]


@beam.ptransform_fn
def WriteQuarantine(quarantined, output_dir: str):
    """Quarantine records as JSON lines under `output_dir/quarantine/`."""
    return (
        quarantined
        | "ToJson" >> beam.Map(json.dumps, sort_keys=True, ensure_ascii=False)
        | "Write" >> beam.io.WriteToText(
            fileio.join(output_dir, QUARANTINE_DIR, "quarantine"), file_name_suffix=".jsonl"))


@beam.ptransform_fn
def WriteCounts(pcolls, output_dir: str):
    """Writes `counts.json` from (records read, output keys like "split:train", quarantined).

    The tallies are taken at different points of the graph, so reconciling them is a real check.
    Each is counted where it is taken (a lifted combine) and only the counts are flattened: a key
    per row flattened first is what the DirectRunner would hold, every row's key at once.
    """
    records, written_keys, quarantined = pcolls
    counted = (
        (records | "KeyRead" >> beam.Map(lambda _: "read")
         | "CountRead" >> beam.combiners.Count.PerElement()),
        (written_keys | "CountWritten" >> beam.combiners.Count.PerElement()),
        (quarantined | "KeyQuarantine" >> beam.Map(lambda q: f"quarantine:{q['reason']}")
         | "CountQuarantined" >> beam.combiners.Count.PerElement()),
    ) | "Flatten" >> beam.Flatten()
    return (
        counted
        | "Collect" >> beam.combiners.ToList()
        | "ToJson" >> beam.Map(lambda pairs: json.dumps(dict(sorted(pairs))))
        | "Write" >> beam.io.WriteToText(fileio.join(output_dir, COUNTS_FILE),
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
