"""An offline stand-in for Google Cloud Storage: ``gs://BUCKET/PATH`` lives in ``ROOT/BUCKET/PATH``.

Only the storage layer is replaced, below everything barlow_jax and orbax do:

* etils.epath's ``gs://`` backend (tf.io.gfile or fsspec/gcsfs in real use) becomes
  one that maps every path into ROOT and maps listings back to ``gs://``;
* orbax's TensorStore spec for a GCS directory (the ``gcs`` kvstore driver) becomes
  the ``file`` driver on the mapped folder, and its GCS-only helpers (hierarchical
  namespace check, bucket rmtree) act on the mapped folder.

Everything above stays on its GCS code path: orbax sees a ``gs://`` directory
(``CommitFileTemporaryPath`` finalization, no rename), and barlow_jax's own I/O
must go through epath or it would create a local folder named ``gs:`` in the
working directory, which the tests look for.

Run a module under it: ``python tests/fake_gcs.py ROOT module.name --flag ...``.
"""

from __future__ import annotations

import os
import runpy
import sys

PREFIX = "gs://"


def install(root: str):
    """Patches epath and orbax in this process (idempotent)."""
    from etils.epath import backend as backend_lib
    from etils.epath import gpath

    root = os.path.abspath(root)

    def local(path) -> str:
        s = os.fspath(path)
        return os.path.join(root, s[len(PREFIX):]) if s.startswith(PREFIX) else s

    def remote(path) -> str:
        s = os.fspath(path)
        return PREFIX + os.path.relpath(s, root) if s.startswith(root + os.sep) else s

    class MappedBackend(backend_lib._OsPathBackend):  # pylint: disable=protected-access
        def open(self, path, mode):
            if any(m in mode for m in "wa"):
                os.makedirs(os.path.dirname(local(path)), exist_ok=True)  # buckets: no dirs
            return super().open(local(path), mode)

        def exists(self, path):
            return super().exists(local(path))

        def isdir(self, path):
            return super().isdir(local(path))

        def listdir(self, path):
            return super().listdir(local(path))

        def glob(self, path):
            return [remote(p) for p in super().glob(local(path))]

        def walk(self, top, *, top_down=True, on_error=None):
            for d, dirs, files in super().walk(local(top), top_down=top_down,
                                               on_error=on_error):
                yield remote(os.fspath(d)), dirs, files

        def makedirs(self, path, *, exist_ok=False, mode=None):
            return super().makedirs(local(path), exist_ok=exist_ok, mode=mode)

        def mkdir(self, path, *, exist_ok=False, mode=None):
            return super().mkdir(local(path), exist_ok=exist_ok, mode=mode)

        def rmtree(self, path):
            return super().rmtree(local(path))

        def remove(self, path):
            return super().remove(local(path))

        def rename(self, path, dst):
            return super().rename(local(path), local(dst))

        def replace(self, path, dst):
            return super().replace(local(path), local(dst))

        def copy(self, path, dst, overwrite):
            return super().copy(local(path), local(dst), overwrite)

        def stat(self, path):
            return super().stat(local(path))

    mapped = MappedBackend()
    gpath._is_tf_installed = lambda: False  # pylint: disable=protected-access
    gpath._PREFIX_TO_BACKEND["gs"] = mapped  # pylint: disable=protected-access

    from orbax.checkpoint._src.path import gcs_utils

    def kvstore(ckpt_path):
        return {"driver": "file", "path": local(str(ckpt_path))}  # as orbax's: no slash added

    def rmtree(path, missing_ok=False):
        if os.path.exists(local(path)) or not missing_ok:
            mapped.rmtree(str(path))

    gcs_utils.get_kvstore_for_gcs = kvstore
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
    gcs_utils.rmtree = rmtree
    return local


def main(argv):
    root, module, *args = argv[1:]
    install(root)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)
    main(sys.argv)
