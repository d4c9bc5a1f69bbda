"""A gs:// workdir end to end, offline (issue 9 item 4): trainer, resume, linear evaluation,
report and export all read and write through etils.epath, and no local folder named
``gs:`` ever appears.

tests/fake_gcs.py replaces only the storage under epath and orbax (a bucket is a local
folder ROOT/BUCKET); barlow_jax and orbax run their gs:// code paths unchanged.
"""

import json
import os
import subprocess
import sys

from barlow_jax import paths
from tests.cli_helpers import ROOT, cli_env

FAKE = os.path.join(ROOT, "tests", "fake_gcs.py")
CONFIG = os.path.join(ROOT, "configs", "smoke.py")


def _run(tmp_path, module, *args):
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, FAKE, str(tmp_path / "gcs"), module, *args],
                          cwd=cwd, env=cli_env(1), capture_output=True, text=True, timeout=600)


def _no_local_gs_folder(*roots):
    for root in roots:
        for d, dirs, _ in os.walk(root):
            assert not any(x.startswith("gs:") for x in dirs), os.path.join(d, "gs:")


def test_train_resume_eval_report_export_on_a_gs_workdir(tmp_path):
    work = "gs://bucket/runs/bt"
    bucket = tmp_path / "gcs" / "bucket" / "runs" / "bt"
    r = _run(tmp_path, "barlow_jax.main", f"--config={CONFIG}", f"--workdir={work}",
             "--config.num_train_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"workdir {work}" in r.stdout
    r = _run(tmp_path, "barlow_jax.main", f"--config={CONFIG}", f"--workdir={work}",
             "--config.num_train_steps=6")   # resumable change: trains steps 5 and 6
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {work}/checkpoints/4" in r.stdout
    # orbax took its GCS path: finalized by a commit file, not a rename.
    assert sorted(os.listdir(bucket / "checkpoints")) == ["4", "6"]
    assert (bucket / "checkpoints" / "6" / "commit_success.txt").exists()
    lines = (bucket / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6]
    assert len(os.listdir(bucket / "tensorboard")) == 2 and (bucket / "config.json").exists()

    r = _run(tmp_path, "barlow_jax.eval.linear", f"--workdir={work}", "--linear.augment=False",
             "--linear.epochs=1", "--linear.train_examples=64", "--linear.test_examples=64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bucket / "linear_eval.json").exists() and (bucket / "linear_eval").is_dir()
    r = _run(tmp_path, "barlow_jax.report", f"--workdir={work}", "--examples=64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bucket / "report" / "summary.md").exists()
    assert (bucket / "report" / "c_matrix.png").exists()
    out = tmp_path / "bt.pth"
    r = _run(tmp_path, "barlow_jax.export", f"--workdir={work}", f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.exists() and f"from step 6 of {work}" in r.stdout
    _no_local_gs_folder(tmp_path / "cwd", ROOT, tmp_path)


def test_paths_helpers_keep_remote_paths_remote_and_write_atomically(tmp_path):
    assert paths.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert paths.absolute("gs://b/run") == "gs://b/run"
    assert paths.absolute("rel") == os.path.abspath("rel")
    assert paths.is_remote("s3://x") and not paths.is_remote("/tmp/x")
    f = str(tmp_path / "a.json")
    paths.write_text(f, "one")
    paths.write_text(f, "two")
    assert paths.read_text(f) == "two" and os.listdir(tmp_path) == ["a.json"]  # no temporaries
    a, b = paths.unique_suffix(), paths.unique_suffix()
    assert a != b and str(os.getpid()) in a
    log = paths.AppendFile(str(tmp_path / "m.jsonl"))
    log.write("1\n")
    log.write("2\n")
    log.close()
    assert paths.read_text(str(tmp_path / "m.jsonl")) == "1\n2\n"
