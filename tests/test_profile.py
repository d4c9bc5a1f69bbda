"""--profile_steps=START:STOP writes a TensorBoard-loadable jax.profiler trace (*.xplane.pb)."""

import os

import pytest

from barlow_jax import profiling
from barlow_jax.bench import benchmark
from barlow_jax.train import train_and_evaluate
from configs import smoke


def _config():
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    c.num_train_steps = 3
    c.log_every_steps = 3
    c.checkpoint_every_steps = 3
    return c


def _opened(path):
    """Opens a trace as TensorBoard's profile plugin does: the file is an XSpace protobuf.

    Returns the names of the events it holds (every plane, line and event).
    """
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    names = set()
    for plane in space.planes:
        for line in plane.lines:
            for ev in line.events:
                names.add(plane.event_metadata[ev.metadata_id].name)
    assert space.planes and names, path
    return names


def test_parse_steps():
    assert profiling.parse_steps("") is None
    assert profiling.parse_steps("2:5") == (2, 5)
    for bad in ("5:2", "3", "a:b", "-1:2", "2:2"):
        with pytest.raises(ValueError, match="START:STOP"):
            profiling.parse_steps(bad)


def test_trainer_writes_trace(tmp_path, capsys):
    c = _config()
    c.profile_steps = "1:3"
    train_and_evaluate(c, str(tmp_path / "w"))
    files = profiling.trace_files(str(tmp_path / "w" / "profile"))
    assert files and all(os.path.getsize(f) > 0 for f in files)
    assert os.sep.join(["plugins", "profile"]) in files[0]   # TensorBoard's layout
    assert "Profiler trace of steps 2-3" in capsys.readouterr().out
    names = _opened(files[0])
    assert any("train_step" in n for n in names), sorted(names)[:50]   # the traced step


def test_bench_writes_trace(tmp_path):
    c = _config()
    out = tmp_path / "bench_profile"
    benchmark(c, steps=3, warmup=0, profile_steps="1:2", profile_dir=str(out))
    files = profiling.trace_files(str(out))
    assert files and any("train_step" in n for n in _opened(files[0]))
