"""Artifact directories: `<root>/<Stage>/<execution>/`, published only when complete.

A stage writes its output through `staged_output`, which publishes it with a marker
(`fileio.publishing`): on a local disk by renaming a hidden temporary sibling into place, on
object storage in place with the marker written last. A crash never leaves a directory that a
later stage takes for a complete artifact.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from components import fileio

staged_output = fileio.publishing


def artifact_dir(pipeline_root: str, stage: str, execution: str) -> str:
    return fileio.join(pipeline_root, stage, execution)


def fingerprint_dir(path: str, ignore: Sequence[str] = ()) -> str:
    """sha256 over the names and bytes of every file under `path`, in sorted order.

    Files named in `ignore` are left out (e.g. a SavedModel's graph, which records the
    temporary paths it was built in), and so is the publication marker.
    """
    h = hashlib.sha256()
    skip = set(ignore) | {fileio.MARKER}
    prefix = path.rstrip("/") + "/"
    for root, _, files in fileio.walk(path):
        for name in files:
            if name in skip:
                continue
            full = fileio.join(root, name)
            h.update(full[len(prefix):].encode("utf-8") + b"\0")
            with fileio.open_file(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (local or any filesystem Beam knows, e.g. gs://)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    h = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
