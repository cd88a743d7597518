"""File I/O on any path TensorFlow knows: a local disk, `gs://`, `s3://`, `hdfs://`.

Artifacts, pipeline roots and serving directories may live on shared object storage, where
there is no atomic directory rename and a "directory" is a prefix. Everything the project reads
or writes at such a path goes through this module (built on `tf.io.gfile`, which Beam workers
have too) or through Beam's own I/O; never through `os`/`open()`.

Publication: a directory is published when its marker file (`_PUBLISHED`) exists; a directory
without it is treated as absent. On a local disk the content is written into a hidden sibling
that is renamed into place (atomic), marker included; on object storage it is written in place,
the marker last.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from typing import Any, Iterator, List, Tuple

MARKER = "_PUBLISHED"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_local(path: str) -> bool:
    """Whether `path` is on a local (POSIX) file system, where rename is atomic."""
    return "://" not in path or path.startswith("file://")


def join(path: str, *parts: str) -> str:
    """os.path.join for local paths, '/'-joining for URLs (gs://bucket/a/b)."""
    return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def dirname(path: str) -> str:
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(path.rstrip("/"))


def basename(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


def absolute(path: str) -> str:
    """An absolute path for a local path; URLs (`file://` ones included) unchanged."""
    return path if "://" in path else os.path.abspath(path)


def _os_path(path: str) -> str:
    """A local path as `os` takes it (`file:///a/b` -> `/a/b`)."""
    return path[len("file://"):] if path.startswith("file://") else path


def local_path(path: str) -> str:
    """A local path (`file://` ones included) as an absolute path that `os` takes; other URLs
    unchanged. (`absolute` keeps `file://`: paths that the pipeline records keep their form.)"""
    return os.path.abspath(_os_path(path)) if is_local(path) else path


def exists(path: str) -> bool:
    return _gfile().exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path)


def listdir(path: str) -> List[str]:
    """Names in a directory (without trailing '/'), sorted; [] when it does not exist."""
    if not isdir(path):
        return []
    return sorted({name.rstrip("/") for name in _gfile().listdir(path)})


def glob(pattern: str) -> List[str]:
    return sorted(_gfile().glob(pattern))


def makedirs(path: str) -> None:
    _gfile().makedirs(path)


def rmtree(path: str) -> None:
    """Removes a directory tree or a file; nothing when it does not exist."""
    gfile = _gfile()
    if not gfile.exists(path):
        return
    if gfile.isdir(path):
        gfile.rmtree(path)
    else:
        gfile.remove(path)


def remove(path: str) -> None:
    _gfile().remove(path)


def copy(source: str, target: str, overwrite: bool = False) -> None:
    makedirs(dirname(target))
    _gfile().copy(source, target, overwrite=overwrite)


def rename(source: str, target: str, overwrite: bool = False) -> None:
    """Renames a file or directory: atomic on a local disk only (see `rename_is_atomic`)."""
    _gfile().rename(source, target, overwrite=overwrite)


def walk(path: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """(directory, subdirectory names, file names) top-down, names sorted."""
    for root, dirs, files in _gfile().walk(path):
        dirs[:] = sorted(d.rstrip("/") for d in dirs)
        yield root.rstrip("/"), dirs, sorted(files)


def open_file(path: str, mode: str = "r"):
    """A file object for reading or writing (`mode` as for `open`, without encoding)."""
    if "w" in mode or "a" in mode:
        makedirs(dirname(path))
    return _gfile().GFile(path, mode)


class RawStream(io.RawIOBase):
    """A file handle (a GFile, a Beam file handle, possibly decompressing) as a raw stream of the
    `io` module, for `io.BufferedReader` and `io.TextIOWrapper`."""

    def __init__(self, handle):
        self._handle = handle

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._handle.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seekable(self):
        seekable = getattr(self._handle, "seekable", False)  # a property on compressed handles
        return bool(seekable() if callable(seekable) else seekable)

    def seek(self, offset, whence=io.SEEK_SET):
        self._handle.seek(offset, whence)
        return self._handle.tell()

    def tell(self):
        return self._handle.tell()

    def close(self):
        if not self.closed:
            self._handle.close()
        super().close()


def open_stream(path: str) -> io.BufferedReader:
    """A buffered binary stream for reading, which `io.TextIOWrapper`, `gzip` and `bz2` take
    (a GFile alone lacks parts of the `io` protocol)."""
    return io.BufferedReader(RawStream(open_file(path, "rb")), 1 << 20)


def read_text(path: str) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, obj: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(obj, **kwargs))


def replace_text(path: str, text: str) -> None:
    """Writes a whole file that readers never see half-written, replacing any earlier one.

    Locally through a temporary file renamed over it; on object storage an object appears
    whole when its upload ends, so it is written in place.
    """
    if not rename_is_atomic(path):
        write_text(path, text)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        write_text(tmp, text)
        rename(tmp, path, overwrite=True)
    except BaseException:
        rmtree(tmp)
        raise


def link_or_copy(source: str, target: str) -> None:
    """A hard link on a local disk (no bytes copied), else a copy (server-side on GCS)."""
    if is_local(source) and is_local(target):
        os.makedirs(os.path.dirname(_os_path(target)), exist_ok=True)
        try:
            os.link(_os_path(source), _os_path(target))
            return
        except OSError:
            pass
    copy(source, target, overwrite=True)


# ----------------------------------------------------------------------------------------------
# Publication with a marker.


def is_published(path: str) -> bool:
    """Whether the directory at `path` is complete: its marker exists."""
    return exists(join(path, MARKER))


def rename_is_atomic(path: str) -> bool:
    """Local disks rename a directory atomically; object stores copy object by object."""
    return is_local(path)


@contextlib.contextmanager
def publishing(final_dir: str) -> Iterator[str]:
    """Yields the directory to write a new artifact in; publishes it on success.

    A published directory is never overwritten (FileExistsError). Unpublished leftovers at
    `final_dir` (a crash on object storage) are removed first. On an exception nothing is
    published: locally the temporary sibling is removed; on object storage the partial content
    stays without its marker, absent to every reader, and is removed by the next attempt.
    """
    final_dir = absolute(final_dir).rstrip("/")
    if is_published(final_dir):
        raise FileExistsError(f"artifact already exists, refusing to overwrite: {final_dir}")
    rmtree(final_dir)
    if rename_is_atomic(final_dir):
        parent, name = os.path.split(_os_path(final_dir))
        work = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    else:
        work = final_dir
    makedirs(work)
    try:
        yield work
        write_text(join(work, MARKER), "")
        if work != final_dir:
            os.rename(work, _os_path(final_dir))
    except BaseException:
        if work != final_dir:
            rmtree(work)
        raise
