"""Workdir I/O through ``etils.epath`` (what orbax uses): local folders and gs:// alike.

Every read and write of a run directory goes through here, never through
``os.path``/``open``: those would turn ``gs://bucket/run`` into a local folder
named ``gs:``. Paths stay strings at the interfaces; a string with ``://`` is
remote (``gs://``, ``s3://``, ...), anything else a local path.

Object stores differ from a POSIX disk in two ways this module hides:
there is no append (``AppendFile`` rewrites the object, in bounded parts)
and no atomic rename (an object upload is itself atomic, so ``write_text``
writes in place there, and through a uniquely named temporary file plus
``os.replace`` on local disks).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import List

from etils import epath


def is_remote(path) -> bool:
    return "://" in str(path)


def absolute(path) -> str:
    """``path`` made absolute on local disks; remote paths are returned as they are."""
    return str(path) if is_remote(path) else os.path.abspath(str(path))


def join(base, *parts) -> str:
    if is_remote(base):
        return str(epath.Path(str(base)).joinpath(*parts))
    return os.path.join(str(base), *parts)


def basename(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path) -> bool:
    return epath.Path(str(path)).exists()


def isdir(path) -> bool:
    return epath.Path(str(path)).is_dir()


def listdir(path) -> List[str]:
    p = epath.Path(str(path))
    return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def glob(directory, pattern: str) -> List[str]:
    return sorted(str(p) for p in epath.Path(str(directory)).glob(pattern))


def makedirs(path):
    epath.Path(str(path)).mkdir(parents=True, exist_ok=True)


def remove(path):
    epath.Path(str(path)).unlink(missing_ok=True)


def rmtree(path):
    p = epath.Path(str(path))
    if p.exists():
        p.rmtree()


def read_text(path) -> str:
    return epath.Path(str(path)).read_text(encoding="utf-8")


def read_bytes(path) -> bytes:
    return epath.Path(str(path)).read_bytes()


def unique_suffix() -> str:
    """A name part no other process writes: host, pid, JAX process index and a random tag
    (containers often give every trainer pid 1, and hosts may share a name)."""
    try:
        import jax
        index = jax.process_index()
    except Exception:  # noqa: BLE001 - before or without a JAX backend
        index = 0
    return f"{socket.gethostname()}.{os.getpid()}.p{index}.{uuid.uuid4().hex[:8]}"


def write_text(path, text: str):
    """Replaces ``path``'s content (UTF-8), atomically as ``write_bytes``."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes):
    """Replaces ``path``'s content atomically: readers see the old or the new file, never half."""
    path = str(path)
    if is_remote(path):
        epath.Path(path).write_bytes(data)  # one upload: atomic on GCS/S3
        return
    tmp = f"{path}.tmp.{unique_suffix()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_text(path, text: str):
    """Appends to ``path`` (rewrites the whole object on remote paths)."""
    path = str(path)
    if is_remote(path):
        old = read_text(path) if exists(path) else ""
        epath.Path(path).write_text(old + text, encoding="utf-8")
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


class AppendFile:
    """A log file written by appending and flushed after every write.

    Local: an ordinary file opened for appending. Remote (object stores have no
    append): the content is kept in memory and the object rewritten at every
    flush; once a part reaches ``part_bytes`` a new part starts when
    ``rotate`` gives its name (TensorBoard reads every events file of a folder),
    else the one object keeps growing (metrics.jsonl: small, one object).
    """

    def __init__(self, path, binary: bool = False, rotate=None, part_bytes: int = 8 << 20):
        self.path, self.binary = str(path), binary
        self._rotate, self._part_bytes = rotate, part_bytes
        self._remote = is_remote(self.path)
        if self._remote:
            p = epath.Path(self.path)
            self._buffer = bytearray(p.read_bytes() if p.exists() else b"")
        else:
            self._f = open(self.path, "ab" if binary else "a", encoding=None if binary else "utf-8")

    def write(self, data):
        if not self._remote:
            self._f.write(data)
            self._f.flush()
            return
        self._buffer += data if self.binary else data.encode("utf-8")
        epath.Path(self.path).write_bytes(bytes(self._buffer))
        if self._rotate is not None and len(self._buffer) >= self._part_bytes:
            self.path, self._buffer = str(self._rotate()), bytearray()

    def close(self):
        if not self._remote:
            self._f.close()
