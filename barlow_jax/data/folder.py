"""Folder source: ``<root>/<split>/<class>/*.{jpg,jpeg,png}`` as a directory or an archive.

``config.data.path`` is a directory or a ``.tar`` / ``.tar.gz`` of such a
tree; the split folder may sit anywhere in the top three levels (the CIFAR-10
archive holds ``CIFAR-10-images/train``). Class index = position of the class
folder's name in sorted order. A split without class subfolders whose images
lie directly in it (``<root>/<split>/*.jpg``) is unlabeled: every label is -1
(self-supervised training only; kNN and probes need a labelled split).

Everything expensive happens once and is kept in the cache directory
(``config.data.cache_dir``, '' = ``~/.cache/barlow_jax``):

* ``extracted/<name>-<key>/``: the archive's tree (``archive.py``).
* ``index/<key>.json``: the split's sorted file list and labels, plus the
  files that failed a full PIL decode (skipped, named in a warning and
  counted) and the files converted to RGB PNG because they are neither RGB
  nor grayscale JPEG/PNG (palette, RGBA, CMYK, 16-bit, ...), so that PIL and
  TensorFlow decode every indexed file to the same RGB pixels. The index is
  rebuilt when the split or class folders' modification times change, or when
  any image's size or modification time does (an image replaced in place).
* ``converted/<key>/``: those RGB copies.
* ``decoded/<key>-<files>-<HxW>.npy``: the split decoded to one uint8 array,
  for in-memory uses (placement 'device', ``load_eval_arrays``); ``<files>``
  is the digest of the images' sizes and times, so edited images get a new
  copy (older ones are deleted).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
from PIL import Image

from barlow_jax.data.archive import cache_key, materialize
from barlow_jax.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_INDEX_VERSION = 1
_MAX_NAMED = 20
log = logging.getLogger(__name__)


@dataclass
class FolderIndex:
    """One split of a folder tree: ``paths[i]`` (absolute) has class ``labels[i]``."""
    split_dir: str
    classes: List[str]
    paths: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray                      # [N, 2] (height, width)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)
    key: str = ""
    content: str = ""                      # digest of the files' sizes and times

    @property
    def num_examples(self) -> int:
        return len(self.paths)


def cache_root(data_config) -> str:
    root = data_config.get("cache_dir", "") or os.path.join("~", ".cache", "barlow_jax")
    return os.path.abspath(os.path.expanduser(root))


def _atomic_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def find_split_dir(root: str, split: str, max_depth: int = 3) -> str:
    """The shallowest folder named ``split`` under ``root`` (root itself included)."""
    if not any(not e.startswith(".") for e in os.listdir(root)):
        raise ValueError(f"config.data.path={root} is an empty folder; put the images in "
                         f"<path>/{split}/<class>/.")
    level = [root]
    for _ in range(max_depth + 1):
        for d in level:
            if os.path.basename(d) == split:
                return d
            if os.path.isdir(os.path.join(d, split)):
                return os.path.join(d, split)
        level = [os.path.join(d, e) for d in level for e in sorted(os.listdir(d))
                 if not e.startswith(".") and os.path.isdir(os.path.join(d, e))]
        if not level:
            break
    raise FileNotFoundError(f"No '{split}' folder found under {root}; the layout must be "
                            f"<root>/{split}/<class>/*.jpg (set config.data.split / eval_split).")


# ----------------------------------------------------------------- indexing

def _signature(split_dir: str, classes: List[str]) -> list:
    return [os.stat(split_dir).st_mtime_ns] + [
        [c, os.stat(os.path.join(split_dir, c)).st_mtime_ns] for c in classes]


def _files_digest(split_dir: str, classes: List[str]) -> str:
    """Digest of every image's (path, size, mtime): an image replaced in place changes it.

    Folder times alone miss a file rewritten under the same name. One stat per
    file (a few seconds for ImageNet's 1.28 M files on a local disk).
    """
    h = hashlib.sha1()
    for c in classes:
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, c)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{dirpath}/{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _list_classes(split_dir: str) -> List[str]:
    """Sorted class folder names; [] for an unlabeled split (images directly in it)."""
    classes = sorted(e for e in os.listdir(split_dir)
                     if not e.startswith(".") and os.path.isdir(os.path.join(split_dir, e)))
    if not classes and not any(not e.startswith(".") and e.lower().endswith(IMAGE_EXTENSIONS)
                               for e in os.listdir(split_dir)):
        raise ValueError(f"{split_dir} has no class subfolders and no images; put the images "
                         f"in {split_dir}/<class>/ (one folder per class), or directly in "
                         f"{split_dir}/ for unlabeled training.")
    return classes


def _list_files(split_dir: str, classes: List[str]):
    paths, labels = [], []
    # No class folders: the images directly in the split, label -1 (unlabeled).
    folders = list(enumerate(classes)) if classes else [(-1, None)]
    for label, c in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, c or "")):
            if c is None:
                dirnames[:] = []
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(dirpath, f), split_dir))
                    labels.append(label)
    if not paths:
        raise ValueError(f"No .jpg/.jpeg/.png images in the class folders of {split_dir}; "
                         f"check config.data.path.")
    return paths, labels


def _check_image(path: str):
    """('ok' | 'convert' | 'bad', detail, (height, width)) after a full decode with PIL."""
    try:
        with Image.open(path) as im:
            fmt, mode, (w, h) = im.format, im.mode, im.size
            if fmt == "JPEG":
                im.draft(im.mode, (64, 64))   # DCT-domain downscale: still reads every byte
            im.load()
    except Exception as e:  # PIL raises many types for broken files
        return "bad", f"{type(e).__name__}: {e}", (0, 0)
    if fmt in ("JPEG", "PNG") and mode in ("RGB", "L"):
        return "ok", "", (h, w)
    return "convert", f"{fmt} {mode}", (h, w)


def _convert(src: str, dst: str) -> None:
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    tmp = f"{dst}.{uuid.uuid4().hex}.tmp.png"
    rgb.save(tmp, format="PNG")
    os.replace(tmp, dst)


def index_split(data_config, split: str) -> FolderIndex:
    """The cached index of ``split`` (built on first use; see the module docstring)."""
    cache = cache_root(data_config)
    root = materialize(data_config.path, cache)
    split_dir = find_split_dir(root, split)
    classes = _list_classes(split_dir)
    key = cache_key(split_dir)
    index_file = os.path.join(cache, "index", f"{key}.json")
    signature = _signature(split_dir, classes)
    files = _files_digest(split_dir, classes)
    cached = None
    if os.path.exists(index_file):
        try:
            with open(index_file) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = {}  # torn or unreadable: rebuilt below
        if cached.get("version") != _INDEX_VERSION or cached.get("signature") != signature:
            cached = None
        elif cached.get("files") != files:
            log.warning("Images under %s changed since %s was built (size or modification "
                        "time); rebuilding the index and the decoded copies.", split_dir,
                        index_file)
            cached = None
    if cached is None:
        cached = _build_index(split_dir, classes, cache, key)
        cached.update(version=_INDEX_VERSION, signature=signature, files=files)
        _atomic_json(index_file, cached)
    skipped = [(os.path.join(split_dir, p), r) for p, r in cached["bad"]]
    _warn_skipped(skipped, index_file)
    paths = [c if os.path.isabs(c) else os.path.join(split_dir, c) for c in cached["paths"]]
    return FolderIndex(split_dir=split_dir, classes=classes,
                       paths=np.asarray(paths, dtype=object),
                       labels=np.asarray(cached["labels"], np.int32),
                       sizes=np.asarray(cached["sizes"], np.int32).reshape(-1, 2),
                       skipped=skipped, key=key, content=files)


def _build_index(split_dir: str, classes: List[str], cache: str, key: str) -> dict:
    rel, labels = _list_files(split_dir, classes)
    workers = min(32, os.cpu_count() or 1)
    progress = Progress(f"Indexing {split_dir} (once, each image checked with PIL)",
                        total=len(rel), unit="images")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        checks = []
        for check in pool.map(_check_image, (os.path.join(split_dir, p) for p in rel),
                              chunksize=256):
            checks.append(check)
            progress.update()
    out = {"paths": [], "labels": [], "sizes": [], "bad": []}
    conv_dir = os.path.join(cache, "converted", key)
    for i, (p, label, (status, detail, size)) in enumerate(zip(rel, labels, checks)):
        if status == "bad":
            out["bad"].append([p, detail])
            continue
        if status == "convert":
            os.makedirs(conv_dir, exist_ok=True)
            dst = os.path.join(conv_dir, f"{i:08d}.png")
            _convert(os.path.join(split_dir, p), dst)
            p = dst
        out["paths"].append(p)
        out["labels"].append(label)
        out["sizes"].append(list(size))
    if not out["paths"]:
        raise ValueError(f"None of the {len(rel)} images under {split_dir} could be decoded; "
                         f"check the files.")
    progress.close(f"{len(out['paths'])} indexed, {len(out['bad'])} skipped, "
                   f"{sum(c[0] == 'convert' for c in checks)} converted to RGB")
    return out


def _warn_skipped(skipped, index_file: str) -> None:
    for path, reason in skipped[:_MAX_NAMED]:
        log.warning("Skipping unreadable image %s (%s).", path, reason)
    if len(skipped) > _MAX_NAMED:
        log.warning("... and %d more unreadable images, all listed under 'bad' in %s.",
                    len(skipped) - _MAX_NAMED, index_file)


# ----------------------------------------------------------------- decoding

def read_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3] with PIL (grayscale, palette, RGBA -> RGB)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def resize_center_crop(image: np.ndarray, shorter: int, crop: int,
                       resample=Image.BICUBIC) -> np.ndarray:
    """Shorter side resized to ``shorter``, then the central ``crop`` x ``crop`` (torchvision
    ``Resize(shorter)`` + ``CenterCrop(crop)``); the identity when nothing changes."""
    h, w = image.shape[:2]
    if min(h, w) != shorter:
        scale = shorter / min(h, w)
        h, w = max(shorter, round(h * scale)), max(shorter, round(w * scale))
        image = np.asarray(Image.fromarray(image).resize((w, h), resample))
    top, left = int(round((h - crop) / 2)), int(round((w - crop) / 2))
    return image[top:top + crop, left:left + crop]


def decoded_arrays(data_config, split: str, index: FolderIndex = None):
    """(uint8 [N,H,W,3] memory-mapped, int32 [N]) of a split, decoded once into the cache.

    Images of one size are kept as they are; mixed sizes are fitted to squares
    of side ``round(image_size * 8 / 7)`` (256 for 224) with ``resize_center_crop``.
    """
    index = index or index_split(data_config, split)
    sizes = {tuple(s) for s in index.sizes.tolist()}
    if len(sizes) == 1:
        (h, w), fit = sizes.pop(), None
    else:
        fit = round(data_config.image_size * 8 / 7)
        h = w = fit
        log.warning("%s holds images of %d different sizes; in-memory copies are resized "
                    "and centre-cropped to %dx%d.", index.split_dir, len(sizes), fit, fit)
    name = f"{index.key}-{index.content}-{h}x{w}" if index.content else f"{index.key}-{h}x{w}"
    base = os.path.join(cache_root(data_config), "decoded", name)
    if not (os.path.exists(base + ".npy") and os.path.exists(base + ".labels.npy")):
        _remove_stale_decoded(os.path.dirname(base), index.key, name)
        _decode_all(index, base, (h, w), fit)
    images = np.load(base + ".npy", mmap_mode="r")
    labels = np.load(base + ".labels.npy")
    if len(images) != index.num_examples:
        raise ValueError(f"The decoded cache {base}.npy does not match the index of "
                         f"{index.split_dir}; delete it to rebuild.")
    return images, labels


def _remove_stale_decoded(folder: str, key: str, keep: str) -> None:
    """Deletes decoded copies of this split made from older versions of its files."""
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        if entry.startswith(f"{key}-") and not entry.startswith(keep) and ".tmp" not in entry:
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def _decode_all(index: FolderIndex, base: str, hw, fit) -> None:
    os.makedirs(os.path.dirname(base), exist_ok=True)
    tmp = f"{base}.{uuid.uuid4().hex}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(index.num_examples, *hw, 3))

    def load(i):
        image = read_rgb(index.paths[i])
        out[i] = image if fit is None else resize_center_crop(image, fit, fit)

    workers = min(32, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, Progress(
            f"Decoding {index.split_dir} (once, into {os.path.dirname(base)})", total=index.num_examples,
            unit="images") as progress:
        for _ in pool.map(load, range(index.num_examples), chunksize=256):
            progress.update()
    out.flush()
    out = None  # closes the memmap before the rename
    np.save(base + ".labels.npy", index.labels)
    os.replace(tmp, base + ".npy")
