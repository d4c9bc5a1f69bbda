"""The GPU session's scripts work on the CPU at tiny size (no GPU here).

* launch/h200_torch_reference.py: its LARS is the project's bt_lars (the
  official rule) and its loss the project's Barlow Twins loss, on the same
  numbers; its timed step runs (tiny trunk, fp32, CPU).
* launch/h200_step_bench.sh: the torch row end to end, with the summary table.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference():
    spec = importlib.util.spec_from_file_location(
        "h200_torch_reference", os.path.join(ROOT, "launch", "h200_torch_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lars_is_bt_lars():
    from barlow_jax.optim import bt_lars
    ref = _reference()
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (3,), "zero": (2, 2)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    params["zero"][:] = 0.0   # |p| = 0: no adaptation
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(3)]
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = ref.Lars(tparams.values(), lr=0.3, weight_decay=0.1)
    tx = bt_lars(0.3, 0.3, weight_decay=0.1)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(p)
    for g in grads:
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        upd, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
        p = {k: p[k] + upd[k] for k in p}
    for k in shapes:
        np.testing.assert_allclose(tparams[k].detach().numpy(), p[k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)


def test_loss_is_barlow_twins():
    from barlow_jax.methods.barlow_twins import barlow_twins
    ref = _reference()
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(16, 8)).astype(np.float32)
    z2 = (z1 + rng.normal(size=(16, 8))).astype(np.float32) * 2
    bn = torch.nn.BatchNorm1d(8, affine=False)
    loss, _ = ref.bt_loss(torch.tensor(z1), torch.tensor(z2), bn, 0.0051)
    want = barlow_twins(jnp.asarray(z1), jnp.asarray(z2), lambd=0.0051)[0]
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_reference_step_runs_on_cpu():
    r = _reference().run(mode="fp32", batch=8, size=16, projector="32-32", arch="tiny",
                         steps=2, warmup=1, device="cpu")
    assert r["pairs_per_sec"] > 0 and np.isfinite(r["last_loss"]) and r["device"] == "cpu"
    with pytest.raises(ValueError, match="--mode='fp8'"):
        _reference().run(mode="fp8")


def test_launch_script_torch_row(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), ROWS="torch_fp32", STEPS="2", B="8",
               TORCH_EXTRA="--arch=tiny --size=16 --projector=32-32 --device=cpu",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "h200_step_bench.sh")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    (row,) = [json.loads(line) for line in open(tmp_path / "rows" / "torch_fp32.jsonl")]
    assert row["mode"] == "fp32" and row["batch_size"] == 8
    summary = (tmp_path / "summary.md").read_text()
    assert "| torch_fp32 |" in summary and "h200_torch_reference.py" in summary
