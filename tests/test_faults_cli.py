"""One sentence instead of a traceback: bench out of memory, export --import of a bad file."""


import jax
import jax.numpy as jnp
import pytest

from barlow_jax import bench, export


def _real_oom():
    try:  # 800 GB: XLA's own RESOURCE_EXHAUSTED, on any machine
        jax.jit(lambda: jnp.ones((200_000, 1_000_000), jnp.float32))().block_until_ready()
    except Exception as e:  # noqa: BLE001
        return e
    pytest.skip("this machine allocated 800 GB")


@pytest.mark.parametrize("make_error", [_real_oom, lambda: MemoryError()])
def test_bench_out_of_memory_is_one_sentence(capsys, monkeypatch, make_error):
    monkeypatch.delenv("BARLOW_JAX_VERBOSE", raising=False)
    error = make_error()
    with pytest.raises(SystemExit) as e:
        bench.out_of_memory_exit(error, 256)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The benchmark ran out of memory at --config.batch_size=256")
    assert "--config.batch_size=128" in err and len(err.splitlines()) == 1
    assert bench.out_of_memory_exit(ValueError("other"), 256) is None  # others pass through


def test_bench_out_of_memory_traceback_when_verbose(capsys, monkeypatch):
    monkeypatch.setenv("BARLOW_JAX_VERBOSE", "1")
    try:
        raise MemoryError("host")
    except MemoryError as err:
        with pytest.raises(SystemExit):
            bench.out_of_memory_exit(err, 64)
    assert "Traceback" in capsys.readouterr().err


class _Foreign:  # a pickled object that weights_only=True refuses
    pass


@pytest.mark.parametrize("kind", ["text", "pickle", "no_tensors"])
def test_export_import_of_a_bad_file_is_one_sentence(tmp_path, capsys, kind):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pth"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickle":
        torch.save({"model": _Foreign()}, path)
    else:
        torch.save({"epoch": 3}, path)
    out = tmp_path / "out.msgpack"
    assert export.main(["--import", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}")
    assert "torch.save(model.state_dict(), path)" in err
    if kind == "pickle":
        assert "weights_only=True" in err
    assert not out.exists()


def test_undeclared_keys_of_a_config_file():
    import ml_collections
    from barlow_jax import cli
    from configs import base, smoke
    c = smoke.get_config()
    c.data.arrays = {"train": 1}  # inside a declared dict-valued key: fine
    assert cli.undeclared_keys(c, base.get_config()) == []
    c.batch_sizee, c.data.pathh = 3, "x"
    c.extra = ml_collections.ConfigDict({"a": 1})
    assert cli.undeclared_keys(c, base.get_config()) == [
        ("batch_sizee", "batch_size"), ("data.pathh", "data.path"), ("extra", None)]
    with pytest.raises(KeyError, match="did you mean 'batch_size'"):
        cli.check_config_file_keys(c, "my.py")


_INJECT_OOM = """
import jax, jax.numpy as jnp
import barlow_jax.train as train
def init_state(*a, **k):   # the paper's step does not fit: XLA's own RESOURCE_EXHAUSTED
    jax.jit(lambda: jnp.ones((200_000, 1_000_000), jnp.float32))().block_until_ready()
    raise SystemExit('this machine allocated 800 GB')
train.init_state = init_state
import runpy, sys
sys.argv = ['barlow_jax.bench'] + sys.argv[1:]
runpy.run_module('barlow_jax.bench', run_name='__main__')
"""


def test_bench_cli_out_of_memory_is_one_sentence(tmp_path):
    """`python -m barlow_jax.bench --config=configs/bt_in1k.py --config.batch_size=256` with
    the device's out-of-memory error injected where the state is allocated."""
    import subprocess
    import sys
    from tests.cli_helpers import ROOT, cli_env
    env = cli_env(1)
    env.pop("BARLOW_JAX_VERBOSE", None)
    out = tmp_path / "bench.jsonl"
    r = subprocess.run([sys.executable, "-c", _INJECT_OOM, "--config=configs/bt_in1k.py",
                        "--config.batch_size=256", f"--json_out={out}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    if "allocated 800 GB" in r.stderr:
        pytest.skip("this machine allocated 800 GB")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert err[0].startswith("error: The benchmark ran out of memory at "
                             "--config.batch_size=256 on ")
    assert "--config.batch_size=128" in err[0] and not out.exists()
