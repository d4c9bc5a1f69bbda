"""Where training tells what it did: metrics.jsonl, TensorBoard events, a progress line.

The TensorBoard writer is self-contained (TFRecord framing + the few
protobuf fields of ``Event``/``Summary`` it needs), so logging works on
accelerator images that have no TensorFlow (FIELD_NOTES §7).

Every writer has one interface, ``MetricWriter`` (as CLU's): ``write_scalars
(step, values)``, ``write_image(step, tag, image)``, ``close()``;
``MultiWriter`` sends to several, ``NullWriter`` drops everything.

Files go through ``barlow_jax.paths`` (etils.epath), so a ``gs://`` workdir
gets its logs in the bucket. In a multi-process run only process 0 builds
these writers and the others get a ``NullWriter`` (telemetry.py): one
writer per shared file.
"""

from __future__ import annotations

import io
import json
import math
import struct
import sys
import time
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from barlow_jax import paths

# ---------------------------------------------------------------- the interface


class MetricWriter:
    """Where logged values go; this base class drops them (the ``NullWriter``)."""

    def write_scalars(self, step: int, values: Dict[str, float]):
        """``values``: the step's record; writers keep the numbers they can."""

    def write_image(self, step: int, tag: str, image: np.ndarray):
        """``image``: uint8 [H, W, 3]."""

    def close(self):
        pass


NullWriter = MetricWriter  # what processes other than 0 write to


class MultiWriter(MetricWriter):
    """Sends everything to each of ``writers``, in order; closes them all."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write_scalars(self, step: int, values: Dict[str, float]):
        for w in self.writers:
            w.write_scalars(step, values)

    def write_image(self, step: int, tag: str, image: np.ndarray):
        for w in self.writers:
            w.write_image(step, tag, image)

    def close(self):
        for w in self.writers:
            w.close()


# ---------------------------------------------------------------- JSONL


class JsonlWriter(MetricWriter):
    """Appends one JSON object per logged step to ``path``, flushed each time.

    The record is written as given (it carries its ``step``); images are not kept.
    """

    def __init__(self, path: str):
        self.path = path
        self._f = paths.AppendFile(path)

    def write_scalars(self, step: int, values: Dict):
        del step  # the record carries it
        self._f.write(json.dumps(values, sort_keys=True) + "\n")

    def close(self):
        self._f.close()


def truncate_after(path: str, step: int) -> int:
    """Moves records with ``step`` > ``step`` from ``path`` to ``path + '.discarded'``.

    A run that died after its last checkpoint logged steps that the resumed
    run will log again; keeping both would duplicate them. Nothing is
    deleted: the dropped lines are appended to the ``.discarded`` file.
    Returns how many lines were moved. Call it on process 0 only: the file
    is replaced through a temporary file named uniquely (``paths.write_text``).
    """
    if not paths.exists(path):
        return 0
    keep, drop = [], []
    for line in paths.read_text(path).splitlines(keepends=True):
        if not line.strip():
            continue
        if not line.endswith("\n"):
            line += "\n"  # a torn last line (killed mid-write) is moved, whole-lined
        try:
            rec_step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            drop.append(line)
            continue
        (drop if rec_step > step else keep).append(line)
    if drop:
        paths.append_text(path + ".discarded", "".join(drop))
        paths.write_text(path, "".join(keep))
    return len(drop)


def read_jsonl(path: str):
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


# ---------------------------------------------------------- TensorBoard

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, summary: Optional[bytes] = None,
           file_version: Optional[str] = None) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _image_value(tag: str, image: np.ndarray) -> bytes:
    from PIL import Image  # pillow ships with matplotlib and torchvision
    image = np.asarray(image, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    img = (_varint(1 << 3) + _varint(h) + _varint(2 << 3) + _varint(w) +
           _varint(3 << 3) + _varint(channels) + _field_bytes(4, buf.getvalue()))
    return _field_bytes(1, tag.encode()) + _field_bytes(4, img)


class TensorBoardWriter(MetricWriter):
    """Writes scalars and images to ``logdir/events.out.tfevents.*``."""

    def __init__(self, logdir: str):
        paths.makedirs(logdir)
        self.logdir = logdir
        self._f = paths.AppendFile(self._new_name(), binary=True, rotate=self._new_name)
        self._write(_event(0, time.time(), file_version="brain.Event:2"))

    def _new_name(self) -> str:
        # Unique across hosts and restarts (pid 1 in every container; same second).
        return paths.join(self.logdir,
                          f"events.out.tfevents.{int(time.time())}.{paths.unique_suffix()}")

    def _write(self, event: bytes):
        header = struct.pack("<Q", len(event))
        self._f.write(header + struct.pack("<I", _masked_crc(header)) + event +
                      struct.pack("<I", _masked_crc(event)))

    def write_scalars(self, step: int, values: Dict[str, float]):
        vals = b"".join(_field_bytes(1, _scalar_value(k, float(v)))
                        for k, v in values.items() if _is_number(v))
        if vals:
            self._write(_event(step, time.time(), summary=vals))

    def write_image(self, step: int, tag: str, image: np.ndarray):
        self._write(_event(step, time.time(), summary=_field_bytes(1, _image_value(tag, image))))

    def close(self):
        self._f.close()


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


# ------------------------------------------------------------- progress


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def progress_line(step: int, total: int, steps_per_epoch: int, record: Dict,
                  eta_seconds: float, method_keys: Sequence = ()) -> str:
    """``method_keys``: the method's ``(key, format)`` pairs, after the loss (Method.progress_keys)."""
    parts = [f"step {step}/{total}", f"epoch {step / max(steps_per_epoch, 1):.2f}",
             f"loss {record['loss']:.4f}"]
    for key, fmt in (*method_keys, ("knn_top1", "{:.3f}"), ("lr", "{:.3g}"),
                     ("pairs_per_sec", "{:.1f}")):
        if key in record:
            parts.append(f"{key} " + fmt.format(record[key]))
    parts.append(f"ETA {format_seconds(eta_seconds)}")
    return " | ".join(parts)


def print_progress(line: str):
    print(line, file=sys.stdout, flush=True)


def nonfinite_keys(record: Dict) -> Iterable[str]:
    return [k for k, v in record.items() if _is_number(v) and not math.isfinite(float(v))]


class WandbWriter(MetricWriter):
    """The TensorBoardWriter's scalars and pictures, sent to Weights & Biases.

    Optional: built only when ``config.wandb.project`` is set, and then needs
    the ``wandb`` package (``pip install wandb``). ``config.wandb.mode`` is
    wandb's: 'online', 'offline' (files under ``<workdir>/wandb``, upload
    later with ``wandb sync``) or 'disabled'. The run id is derived from the
    workdir, so a resumed run continues the same wandb run.
    """

    def __init__(self, run, wandb_module):
        self._run, self._wandb = run, wandb_module

    @classmethod
    def from_config(cls, config, workdir: str) -> Optional["WandbWriter"]:
        wc = config.get("wandb", None)
        if wc is None or not wc.get("project", ""):
            return None
        try:
            import wandb
        except ImportError:
            raise ImportError("config.wandb.project is set but the wandb package is missing; "
                              "`pip install wandb`, or leave config.wandb.project empty.") from None
        import hashlib
        run_id = hashlib.sha1(paths.absolute(workdir).encode()).hexdigest()[:16]
        to_dict = getattr(config, "to_dict", None)
        run = wandb.init(project=wc.project, entity=wc.get("entity", "") or None,
                         mode=wc.get("mode", "online") or "online",
                         dir=None if paths.is_remote(workdir) else workdir,  # wandb: local only
                         id=run_id, resume="allow", name=paths.basename(paths.absolute(workdir)),
                         config=to_dict() if to_dict else dict(config))
        return cls(run, wandb)

    def write_scalars(self, step: int, values: Dict[str, float]):
        vals = {k: float(v) for k, v in values.items() if _is_number(v) and k != "step"}
        if vals:
            self._run.log(vals, step=int(step))

    def write_image(self, step: int, tag: str, image: np.ndarray):
        self._run.log({tag: self._wandb.Image(np.asarray(image))}, step=int(step))

    def close(self):
        self._run.finish()
