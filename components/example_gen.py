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

import hashlib
import itertools
import json
import uuid
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam

from components import features, fileio
from components.artifacts import file_sha256, staged_output
from components.beam_pipeline import beam_pipeline
from components.errors import UserInputError
from components.readers import (COUNTS_FILE, ExampleGenSettings, InputUnit, LineTally, Piece,
                                QUARANTINE_DIR, QUARANTINE_SAMPLE, check_record, plan_pieces,
                                plan_units, quarantine_record, read_records, summarize_counts,
                                to_tf_example, total_bytes)

# ----------------------------------------------------------------------------------------------
# Input units, the Beam graph and the driver.

UNIT_DATA_FILE = "data.tfrecord.gz"
UNIT_QUARANTINE_FILE = "quarantine.jsonl"


def unit_fingerprint(unit: InputUnit, file_hashes: Optional[Sequence[str]] = None) -> str:
    """sha256 over each item's path, format and content: what the unit's records depend on.

    `file_hashes` are the items' `file_sha256`, when the caller has them already.
    """
    hashes = file_hashes if file_hashes is not None else [file_sha256(p) for p, _ in unit.items]
    h = hashlib.sha256()
    for (path, fmt), content in zip(unit.items, hashes):
        h.update(f"{path}\0{fmt}\0{content}\0".encode("utf-8"))
    return h.hexdigest()


def piece_dirs(unit_dir: str, pieces: Sequence[Optional[Piece]]) -> List[str]:
    """Where each piece of a unit is parsed to: the unit directory itself for a unit read in
    one go, else numbered siblings of it (each published on its own, so a crash keeps them)."""
    if len(pieces) == 1:
        return [unit_dir]
    base = unit_dir.rstrip("/")
    return [f"{base}-{i:05d}-of-{len(pieces):05d}" for i in range(len(pieces))]


def forget_unit(unit_dir: str) -> None:
    """Removes a parsed unit and its pieces, so that it is parsed again."""
    base = unit_dir.rstrip("/")
    for path in [base] + fileio.glob(f"{base}-*-of-*"):
        fileio.rmtree(path)


def is_parsed(unit_dir: str) -> bool:
    """Whether a unit directory is published and complete: its tallies are there, and so is
    the file of every split and of the quarantine they count.

    `counts.json` is written last, so this holds on object storage too, where a unit is
    written in place (see `ParseUnitFn`).
    """
    counts = fileio.join(unit_dir, COUNTS_FILE)
    if not fileio.exists(counts):
        return False
    tallies = fileio.read_json(counts)
    expected = [fileio.join(unit_dir, features.split_dir_name(k.split(":", 1)[1]),
                            UNIT_DATA_FILE) for k, n in tallies.items()
                if k.startswith("split:") and n]
    if any(k.startswith("quarantine:") and n for k, n in tallies.items()):
        expected.append(fileio.join(unit_dir, QUARANTINE_DIR, UNIT_QUARANTINE_FILE))
    return all(fileio.exists(path) for path in expected)


class ParseUnitFn(beam.DoFn):
    """(unit, unit_dir[, piece]) -> writes the unit's records (or the piece's) under unit_dir;
    yields (name, tallies).

    Records are written in input order, quarantine records in line order, and `counts.json`
    last. On a local disk they go to a temporary sibling renamed into place at the end; on
    object storage, which has no atomic rename, in place, after removing what an attempt that
    died left there (a directory without its counts, or missing a file they count, is not
    parsed: see `is_parsed`). Either way a retried bundle or a killed worker never leaves a unit
    that passes for parsed, and a unit parsed twice gives the same bytes. A piece's tallies
    include the lines it consumed (`lines`), and its quarantine records' line numbers count
    from the piece's start: `assemble_examples` makes them the file's.
    """

    def __init__(self, settings: ExampleGenSettings):
        self._settings = settings

    def process(self, element):
        import tensorflow as tf

        unit, unit_dir, piece = (*element, None)[:3]
        unit_dir = unit_dir.rstrip("/")
        if is_parsed(unit_dir):  # a retried bundle: already done
            yield unit.name, fileio.read_json(fileio.join(unit_dir, COUNTS_FILE))
            return
        in_place = not fileio.rename_is_atomic(unit_dir)
        if in_place:
            fileio.rmtree(unit_dir)  # an unfinished attempt's files
            work = unit_dir
        else:
            work = f"{unit_dir}.tmp-{uuid.uuid4().hex}"
        fileio.makedirs(work)
        tallies: Counter = Counter()
        writers: Dict[str, Any] = {}
        quarantine = None
        try:
            for item in unit.items:
                line_tally = LineTally()
                for record in read_records(item, self._settings, piece, line_tally):
                    tallies["read"] += 1
                    split, values, problem = check_record(record, self._settings)
                    if problem:
                        if quarantine is None:
                            quarantine = fileio.open_file(
                                fileio.join(work, QUARANTINE_DIR, UNIT_QUARANTINE_FILE), "w")
                        quarantine.write(json.dumps(quarantine_record(record, *problem),
                                                    sort_keys=True, ensure_ascii=False) + "\n")
                        tallies[f"quarantine:{problem[0]}"] += 1
                        continue
                    if split not in writers:
                        split_dir = fileio.join(work, features.split_dir_name(split))
                        fileio.makedirs(split_dir)
                        writers[split] = tf.io.TFRecordWriter(
                            fileio.join(split_dir, UNIT_DATA_FILE),
                            tf.io.TFRecordOptions(compression_type="GZIP"))
                    writers[split].write(to_tf_example(values))
                    tallies[f"split:{split}"] += 1
                if piece is not None:
                    tallies["lines"] += line_tally.lines
            for writer in writers.values():
                writer.close()
            if quarantine is not None:
                quarantine.close()
            if not fileio.isdir(work):  # removed under us (a cleanup): never publish
                raise RuntimeError(f"unit directory {work} disappeared while parsing")
            fileio.write_json(fileio.join(work, COUNTS_FILE), dict(sorted(tallies.items())))
            if not in_place:
                if is_parsed(unit_dir):  # another attempt finished first: same content
                    fileio.rmtree(work)
                else:
                    fileio.rename(work, unit_dir)
        except BaseException:
            # In place, what was written stays without its counts (not parsed) and is removed
            # by the next attempt: another attempt may be writing the same directory.
            if not in_place:
                fileio.rmtree(work)
            raise
        yield unit.name, dict(tallies)


Parts = List[Tuple[InputUnit, List[Tuple[str, Optional[Piece]]]]]


def plan_parts(units: Sequence[Tuple[InputUnit, str]], settings: ExampleGenSettings) -> Parts:
    """(unit, [(piece directory, piece)]) for each (unit, unit directory): see `plan_pieces`."""
    parts = []
    for unit, unit_dir in units:
        pieces = plan_pieces(unit, settings)
        parts.append((unit, list(zip(piece_dirs(unit_dir, pieces), pieces))))
    return parts


def parse_units(parts: Parts, settings: ExampleGenSettings, beam_options) -> List[str]:
    """Parses each piece of `parts` not yet published: in one Beam pipeline, or in this process
    when they total at most `settings.in_process_max_bytes` (the same DoFn either way).

    Returns the names of the units it parsed (some or all pieces of).
    """
    todo = [(unit, piece_dir, piece) for unit, pieces in parts for piece_dir, piece in pieces
            if not is_parsed(piece_dir)]
    parsed = list(dict.fromkeys(unit.name for unit, _, _ in todo))
    if not todo:
        return parsed
    size = sum(piece.end - piece.start if piece else total_bytes([unit])
               for unit, _, piece in todo)
    if size <= settings.in_process_max_bytes:
        parse = ParseUnitFn(settings)
        for element in todo:
            for _ in parse.process(element):
                pass
        return parsed
    with beam_pipeline(beam_options) as p:
        _ = (p
             | "CreatePieces" >> beam.Create(todo)
             | "Distribute" >> beam.Reshuffle()
             | "ParseUnits" >> beam.ParDo(ParseUnitFn(settings)))
    return parsed


def _shift_lines(source: str, target: str, offset: int) -> None:
    """Copies a piece's quarantine records with their line numbers made the file's."""
    with fileio.open_file(target, "w") as out:
        for record in _iter_jsonl(source):
            record["line"] += offset
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def assemble_examples(parts: Parts, output_dir: str, parsed: Sequence[str] = ()
                      ) -> Dict[str, Any]:
    """Builds the Examples artifact at `output_dir` from parsed unit (and piece) directories.

    Each piece's split file becomes `Split-<s>/part-<piece dir name>.gz` (a hard link where the
    filesystem allows, else a copy), so the artifact depends only on the units. Returns the
    counts, with `units_parsed`/`units_reused` telling which units `parsed` names were parsed
    by this run.
    """
    tallies: Counter = Counter()
    piece_tallies: Dict[str, Dict[str, int]] = {}
    for _, pieces in parts:
        for piece_dir, _ in pieces:
            if not is_parsed(piece_dir):  # e.g. removed, or emptied by a cleanup, since parsing
                raise RuntimeError(f"parsed input {piece_dir} is incomplete: parse it again "
                                   "(run without the cache, or remove it)")
            piece_tallies[piece_dir] = fileio.read_json(fileio.join(piece_dir, COUNTS_FILE))
            tallies.update(piece_tallies[piece_dir])
    counts = summarize_counts(dict(tallies))
    if counts["read"] != counts["written"] + counts["quarantined"]:
        raise RuntimeError(f"ExampleGen counts do not reconcile: {counts}")
    # The files depend on the units alone: not on the input order, nor on which units this
    # run parsed (that goes only to the returned counts).
    ordered = sorted(parts, key=lambda part: part[0].name)
    with staged_output(output_dir) as tmp:
        quarantine_files = []
        for _, pieces in ordered:
            lines_before = 0
            for piece_dir, _ in pieces:
                part = f"part-{fileio.basename(piece_dir)}"
                for split in features.SPLITS:
                    source = fileio.join(piece_dir, features.split_dir_name(split),
                                         UNIT_DATA_FILE)
                    if fileio.exists(source):
                        fileio.link_or_copy(source, fileio.join(
                            tmp, features.split_dir_name(split), f"{part}.gz"))
                source = fileio.join(piece_dir, QUARANTINE_DIR, UNIT_QUARANTINE_FILE)
                target = fileio.join(tmp, QUARANTINE_DIR, f"{part}.jsonl")
                if fileio.exists(source):
                    if lines_before:
                        _shift_lines(source, target, lines_before)
                    else:
                        fileio.link_or_copy(source, target)
                    quarantine_files.append(target)
                lines_before += piece_tallies[piece_dir].get("lines", 0)
        names = [unit.name for unit, _ in ordered]
        counts["inputs"] = names if len(names) <= 100 else len(names)
        counts["quarantine_sample"] = list(itertools.islice(
            (q for path in quarantine_files for q in _iter_jsonl(path)), QUARANTINE_SAMPLE))
        fileio.write_json(fileio.join(tmp, COUNTS_FILE), counts, indent=2, sort_keys=True)
    counts["units_parsed"] = len(set(parsed) & set(names))
    counts["units_reused"] = len(names) - counts["units_parsed"]
    return counts


def _iter_jsonl(path: str) -> Iterator[Dict[str, Any]]:
    if fileio.exists(path):
        with fileio.open_file(path) as f:
            yield from (json.loads(line) for line in f if line.strip())


def run_example_gen(inputs: Sequence[str], output_dir: str, settings: ExampleGenSettings,
                    beam_options, unit_dirs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Runs ExampleGen into `output_dir` (published only when complete); returns the counts.

    `unit_dirs` ({unit name: directory}) says where each input unit's parsed records live;
    units whose directory is already published are not parsed again. Without it (or for a unit
    it does not name) the unit is parsed into `output_dir/.units/`.
    """
    units = plan_units(inputs, settings)
    local_units = output_dir.rstrip("/") + ".units"
    parts = plan_parts([(u, (unit_dirs or {}).get(u.name)
                         or fileio.join(local_units, unit_fingerprint(u)[:32])) for u in units],
                       settings)
    parsed = parse_units(parts, settings, beam_options)
    counts = assemble_examples(parts, output_dir, parsed)
    fileio.rmtree(local_units)
    if not counts["written"]:
        # Published all the same: the quarantine records are what the user needs to read.
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(counts["quarantine_reasons"].items()))
        raise UserInputError(
            f"no usable rows in {', '.join(inputs)}: read {counts['read']}, quarantined "
            f"{counts['quarantined']}" + (f" ({reasons})" if reasons else "")
            + (f"; see {fileio.join(output_dir, QUARANTINE_DIR)}/" if counts["quarantined"]
               else "; the inputs hold no records"), details=counts)
    return counts


def iter_quarantine(output_dir: str) -> Iterator[Dict[str, Any]]:
    """The quarantine records of an ExampleGen artifact, file by file, lazily."""
    qdir = fileio.join(output_dir, QUARANTINE_DIR)
    for name in fileio.listdir(qdir):
        yield from _iter_jsonl(fileio.join(qdir, name))


def read_quarantine(output_dir: str) -> List[Dict[str, Any]]:
    """All quarantine records of an ExampleGen artifact."""
    return list(iter_quarantine(output_dir))
