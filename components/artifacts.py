"""Artifact directories: `<root>/<Stage>/<execution>/`, published only when complete.

A stage writes its output through `staged_output`, which publishes it with a marker
(`fileio.publishing`): on a local disk by renaming a hidden temporary sibling into place, on
object storage in place with the marker written last. A crash never leaves a directory that a
later stage takes for a complete artifact.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Mapping, Optional, Sequence

from components import fileio

staged_output = fileio.publishing


def artifact_dir(pipeline_root: str, stage: str, execution: str) -> str:
    return fileio.join(pipeline_root, stage, execution)


def file_digests(path: str, ignore: Sequence[str] = ()) -> Dict[str, str]:
    """{name relative to `path`: sha256 of its bytes} for every file under `path`.

    Files named in `ignore` are left out (e.g. a SavedModel's graph, which records the
    temporary paths it was built in), and so is the publication marker.
    """
    skip = set(ignore) | {fileio.MARKER}
    prefix = path.rstrip("/") + "/"
    digests = {}
    for root, _, files in fileio.walk(path):
        for name in files:
            if name in skip:
                continue
            full = fileio.join(root, name)
            h = hashlib.sha256()
            with fileio.open_file(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[full[len(prefix):]] = h.hexdigest()
    return digests


def fingerprint_of(digests: Mapping[str, str], under: str = "") -> str:
    """sha256 over the (name, digest) pairs of `file_digests`, in sorted order; with `under`
    (a subdirectory, e.g. "Split-train"), over the files below it, named relative to it: the
    fingerprint that directory has on its own."""
    h = hashlib.sha256()
    prefix = under.rstrip("/") + "/" if under else ""
    for name in sorted(n for n in digests if n.startswith(prefix)):
        h.update(f"{name[len(prefix):]}\0{digests[name]}\0".encode("utf-8"))
    return h.hexdigest()


def fingerprint_dir(path: str, ignore: Sequence[str] = ()) -> str:
    """The fingerprint of a directory's content: `fingerprint_of(file_digests(path, ignore))`."""
    return fingerprint_of(file_digests(path, ignore))


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (local or any filesystem Beam knows, e.g. gs://)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    h = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_stat(path: str) -> Optional[str]:
    """"<size>:<mtime ns>:<ctime ns>:<inode>" of a local file, None elsewhere: with the same
    stat, a file's recorded sha256 is taken instead of reading it again (as make, rsync and git
    judge a file unchanged; the ctime and inode also change when a file is renamed over or its
    time is set back). A file rewritten within the same nanosecond would be missed:
    `run --no-cache` reads every file again."""
    if not fileio.is_local(path):
        return None
    st = os.stat(fileio._os_path(path))
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def content_id(path: str) -> str:
    """What identifies a file's content, for cache keys and lineage.

    A local file: the sha256 of its bytes. On object storage: the store's own checksum and the
    size ("gs crc32c <checksum> size <bytes>" on GCS), asked of the store without reading the
    object; where the store gives no checksum, the sha256 of the bytes.
    """
    if fileio.is_local(path):
        return file_sha256(path)
    from apache_beam.io.filesystems import FileSystems

    try:
        checksum = FileSystems.checksum(path)
    except Exception as e:  # noqa: BLE001
        # Only a file system that has no checksums falls back to reading; any other error (a
        # permission, a time-out) is raised: a different kind of id would change every key.
        causes = list(getattr(e, "exception_details", {}).values()) or [e]
        if all(isinstance(c, NotImplementedError) for c in causes):
            return file_sha256(path)
        raise
    [match] = FileSystems.match([path])
    size = match.metadata_list[0].size_in_bytes
    if not checksum or str(checksum) == str(size):  # some file systems give only the size
        return file_sha256(path)
    scheme = path.split("://", 1)[0]
    kind = {"gs": "crc32c", "s3": "etag"}.get(scheme, "checksum")
    return f"{scheme} {kind} {checksum} size {size}"

