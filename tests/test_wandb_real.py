"""config.wandb with the real wandb package, offline: the run file holds the writer's data.

``tests/test_wandb.py`` drives the trainer with a fake ``wandb`` module (what
the trainer calls). This test uses the real package where it is installed
(``pip install wandb``; not in the ``test`` extra: it is large and starts a
service process, so it is skipped elsewhere, saying so): ``WandbWriter`` is
built from a config with ``wandb.mode='offline'`` as the trainer builds it,
writes two steps of scalars and a picture, and closes; the offline run
directory is then read back without wandb's help: ``run-<id>.wandb`` is a
LevelDB-style log (7-byte ``:W&B`` header, 32 KiB blocks, records of
crc32 / length / type + payload) of ``wandb_internal_pb2.Record`` protobufs.
"""

import glob
import json
import os
import struct
import time

import numpy as np
import pytest

wandb = pytest.importorskip("wandb", reason="the wandb package is not installed "
                            "(pip install wandb to run this check)")

from barlow_jax import metrics as metrics_lib  # noqa: E402
from configs import smoke  # noqa: E402

BLOCK = 32768


def read_records(path):
    """Payloads of a wandb .wandb file (LevelDB log format with wandb's 7-byte header)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:8]
    pos, out, part = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:                     # block trailer: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:                    # zero-filled rest of a block
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:                    # FULL
            out.append(payload)
        elif kind == 2:                  # FIRST
            part = payload
        elif kind == 3:                  # MIDDLE
            part += payload
        elif kind == 4:                  # LAST
            out.append(part + payload)
    return out


def test_offline_run_holds_the_scalars_and_the_picture(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2 as pb
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = smoke.get_config()
    c.wandb.project, c.wandb.mode = "barlow_jax_test", "offline"
    work = str(tmp_path / "run")
    os.makedirs(work)
    writer = metrics_lib.WandbWriter.from_config(c, work)
    writer.write_scalars(1, {"step": 1, "loss": 1.5, "lr": 0.25, "note": "text is skipped"})
    writer.write_scalars(2, {"step": 2, "loss": 1.25, "lr": 0.5})
    picture = (np.arange(8 * 8 * 3) % 255).astype(np.uint8).reshape(8, 8, 3)
    writer.write_image(2, "cross_correlation_vs_identity", picture)
    writer.close()

    runs = glob.glob(os.path.join(work, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, os.listdir(os.path.join(work, "wandb"))
    # wandb's service process may still be flushing the file when finish() returns:
    # read until its "exit" record is there.
    deadline = time.time() + 60
    while True:
        records = []
        for payload in read_records(runs[0]):
            r = pb.Record()
            r.ParseFromString(payload)
            records.append(r)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.time() > deadline:
            break
        time.sleep(0.5)
    history, config = [], None
    for r, kind in zip(records, kinds):
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in r.history.item})
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
    steps = {h["_step"]: h for h in history}
    assert set(steps) == {1, 2}, (history, kinds)
    assert steps[1]["loss"] == 1.5 and steps[1]["lr"] == 0.25 and "note" not in steps[1]
    assert steps[2]["loss"] == 1.25 and steps[2]["lr"] == 0.5
    tag = "cross_correlation_vs_identity/"      # a picture is logged as nested keys
    image = {k[len(tag):]: v for k, v in steps[2].items() if k.startswith(tag)}
    assert image["_type"] == "image-file" and image["width"] == 8 and image["height"] == 8
    assert glob.glob(os.path.join(os.path.dirname(runs[0]), "files", "media", "images",
                                  "cross_correlation_vs_identity_2_*.png"))
    assert config is not None and config["method"] == "barlow_twins"   # the run's config
