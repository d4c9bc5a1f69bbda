"""Archives as folder trees: a ``.tar`` / ``.tar.gz`` extracted once into the cache.

``materialize(path, cache)`` returns the directory holding the image tree:
``path`` itself when it is a directory, else ``<cache>/extracted/<name>-<key>/``
with ``<key>`` a digest of the archive's path, size and modification time
(a replaced archive is extracted again). Extraction writes to a ``.partial``
sibling and renames it when complete, so an interrupted extraction is never
mistaken for a finished one; partial extractions left by dead processes of
this host are deleted. A damaged archive or a full disk is one sentence
(``ValueError``). The tree's layout and index are ``folder.py``'s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import uuid
import zlib

from barlow_jax.progress import Progress


def cache_key(*parts) -> str:
    """A 16-hex-digit digest of ``parts``: the stable name of a cache entry."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def materialize(path: str, cache: str) -> str:
    """The directory holding the tree: ``path`` itself, or the archive extracted once."""
    if not path:
        raise ValueError("config.data.path is empty; set it to a directory or a .tar/.tar.gz "
                         "of <split>/<class>/ images.")
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return path
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.data.path={path} does not exist; point it at a "
                                f"directory or a .tar/.tar.gz of <split>/<class>/ images.")
    st = os.stat(path)
    name = os.path.basename(path).split(".")[0] or "archive"
    parent = os.path.join(cache, "extracted")
    dest = os.path.join(parent, f"{name}-{cache_key(path, st.st_size, int(st.st_mtime))}")
    if os.path.isdir(dest):
        return dest
    if not tarfile.is_tarfile(path):
        raise ValueError(f"config.data.path={path} is neither a directory nor a .tar/.tar.gz "
                         f"archive; give the folder tree or an archive of it.")
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(parent, os.path.basename(dest))
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.partial-{socket.gethostname()}-"
                               f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _extract(path, tmp, parent)
        os.rename(tmp, dest)
    except (tarfile.TarError, EOFError, zlib.error) as e:  # truncated or corrupt archive
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"config.data.path={path} is a damaged archive ({type(e).__name__}: "
                         f"{e}; it may be truncated); download or copy it again, or extract "
                         f"it yourself and set config.data.path to the folder.") from None
    except OSError as e:
        if not os.path.isdir(dest):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"Could not extract {path} into {parent} ({e.strerror or e}); "
                             f"free space there or set config.data.cache_dir to a directory "
                             f"with room.") from None
        shutil.rmtree(tmp, ignore_errors=True)   # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _extract(path: str, tmp: str, parent: str) -> None:
    """Extracts the archive member by member, with progress in compressed bytes read."""
    total = os.path.getsize(path)
    mib = 2 ** 20
    with open(path, "rb") as raw, tarfile.open(fileobj=raw) as archive, Progress(
            f"Extracting {path} (once, into {parent})", total=total // mib,
            unit="MiB") as progress:

        def members():  # read lazily while extractall extracts: progress = bytes read
            for member in archive:
                progress.update(raw.tell() // mib - progress.done_count)
                yield member

        archive.extractall(tmp, members=members(), filter="data")
        progress.update(total // mib - progress.done_count)


def _remove_stale_partials(parent: str, base: str) -> None:
    """Deletes partial extractions of ``base`` left by dead processes of this host."""
    prefix = f".{base}.partial-{socket.gethostname()}-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except (ValueError, PermissionError):
            pass
