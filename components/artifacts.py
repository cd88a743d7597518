"""Artifact directories: `<root>/<Stage>/<execution>/`, published only when complete.

A stage writes into a hidden temporary sibling and renames it into place at the end, so a crash
never leaves a half-written artifact at the path a later stage reads.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from typing import Iterator, Sequence


def artifact_dir(pipeline_root: str, stage: str, execution: str) -> str:
    return os.path.join(pipeline_root, stage, execution)


@contextlib.contextmanager
def staged_output(final_dir: str) -> Iterator[str]:
    """Yields a temporary directory; on success renames it to `final_dir`.

    On an exception the temporary directory is removed and nothing appears at `final_dir`.
    """
    if os.path.exists(final_dir):
        raise FileExistsError(f"artifact already exists, refusing to overwrite: {final_dir}")
    parent, name = os.path.split(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, final_dir)


def fingerprint_dir(path: str, ignore: Sequence[str] = ()) -> str:
    """sha256 over the names and bytes of every file under `path`, in sorted order.

    Files named in `ignore` are left out (e.g. a SavedModel's graph, which records the
    temporary paths it was built in).
    """
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(f for f in files if f not in ignore):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode("utf-8") + b"\0")
            with open(full, "rb") as f:
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
