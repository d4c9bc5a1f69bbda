"""Onboarding (issue 10): install extras, the accelerator warning, TensorFlow kept quiet and
off the GPU, progress lines, the main job's config, and the main job itself end to end at a
tiny size without TensorFlow and without start-up noise."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from barlow_jax import accelerator, progress
from tests.cli_helpers import OPTIMIZED, ROOT, cli_env

CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")


# ---------------------------------------------------------------- install extras

def _extras():
    from setuptools import distutils  # noqa: F401  (setuptools' bundled distutils)
    import distutils.core
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        dist = distutils.core.run_setup(os.path.join(ROOT, "setup.py"), stop_after="init")
    finally:
        os.chdir(cwd)
    return dist.install_requires, dist.extras_require


def test_accelerator_extras_pull_the_matching_jax_build():
    install, extras = _extras()
    jax_req = next(r for r in install if r.startswith("jax") and not r.startswith("jaxlib"))
    spec = jax_req[len("jax"):]
    for extra in ("cuda12", "cuda13", "tpu"):
        # jax's own extra pins jaxlib and the CUDA plugin / libtpu to the jax version.
        assert extras[extra] == [f"jax[{extra}]{spec}"], extras[extra]
    for name in ("data", "test"):
        assert any(r.startswith("tensorflow") for r in extras[name])
    for tool in ("nbclient", "nbformat", "ipykernel"):   # tests/test_notebook.py
        assert any(r.startswith(tool) for r in extras["test"]), tool
    assert not any(r.startswith("tensorflow") for r in install)


def test_readme_first_command_is_the_quick_main_job_without_tensorflow():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    first = commands[0]
    assert 'pip install -e ".[report]"' in first
    assert "--config=configs/bt_cifar10_quick.py" in first and "barlow_jax.report" in first
    assert "configs/bt_cifar10.py" in commands[1]                 # the full recipe next
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()[-1]
    assert ci in commands                                          # CI runs the README's tests


# ---------------------------------------------------------------- accelerator check

def test_backend_warning_names_the_fix():
    t4 = ["NVIDIA GPU: Tesla T4"]
    text = accelerator.backend_warning("cpu", t4, {"jax-cuda12-plugin": "0.4.33"}, "0.10.2")
    assert text.count(". ") <= 1 and text.startswith("warning:")
    assert "Tesla T4" in text and "jax-cuda12-plugin 0.4.33 does not match jaxlib 0.10.2" in text
    assert 'pip install -e ".[cuda12]"' in text
    tpu = accelerator.backend_warning("cpu", ["TPU (/dev/accel0)"], {}, "0.10.2")
    assert 'pip install -e ".[tpu]"' in tpu
    plugin_only = accelerator.backend_warning("cpu", [], {"jax-cuda13-plugin": "0.10.2"},
                                              "0.10.2")
    assert '".[cuda13]"' in plugin_only and "no working accelerator plugin" in plugin_only
    assert accelerator.backend_warning("gpu", t4, {}, "0.10.2") is None
    assert accelerator.backend_warning("cpu", [], {}, "0.10.2") is None


def test_check_backend_warns_once_unless_cpu_was_asked_for(monkeypatch):
    monkeypatch.setattr(accelerator, "visible_accelerators", lambda: ["NVIDIA GPU: Tesla T4"])
    monkeypatch.setattr(accelerator, "installed_plugins", lambda: {})
    printed = []
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")          # the tests ask for the CPU on purpose
    assert accelerator.check_backend(printed.append) is None and not printed
    monkeypatch.setenv("JAX_PLATFORMS", "")
    text = accelerator.check_backend(printed.append)
    assert printed == [text] and "Tesla T4" in text


def test_visible_accelerators_parses_nvidia_smi(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-1234)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert "NVIDIA GPU: Tesla T4" in accelerator.visible_accelerators()


# ---------------------------------------------------------------- TensorFlow

def test_tensorflow_is_imported_quietly_and_without_gpus():
    code = ("import os; os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)\n"
            "from barlow_jax.data.tensorflow_env import import_tensorflow\n"
            "tf = import_tensorflow()\n"
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], tf.config.get_visible_devices('GPU'))\n")
    env = cli_env(1)
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "2 []"
    assert "cpu_feature_guard" not in r.stderr and "oneDNN" not in r.stderr, r.stderr


# ---------------------------------------------------------------- progress lines

class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_in_logs_and_on_a_terminal():
    clock, out = _Clock(), io.StringIO()
    p = progress.Progress("Decoding", total=1000, unit="images", stream=out, tty=False,
                          clock=clock)
    for _ in range(100):
        clock.t += 1.0           # 10 images/s
        p.update(10)
    p.close()
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 5, lines            # about every 25%, then the summary
    assert lines[0].startswith("Decoding: 250/1,000 images (25%), 10/s, ETA 1:15"), lines[0]
    assert lines[-1] == "Decoding: 1,000 images in 100.0s"
    clock, out = _Clock(), io.StringIO()
    with progress.Progress("kNN", total=100, stream=out, tty=True, clock=clock) as p:
        for _ in range(100):
            clock.t += 0.1
            p.update()
    text = out.getvalue()
    assert text.count("\r") >= 10 and text.endswith("kNN: 100 items in 10.0s\033[K\n")
    quick, out = _Clock(), io.StringIO()    # fast, and the caller reports its own time
    with progress.Progress("kNN", total=10, stream=out, tty=False, summary=False,
                           clock=quick) as p:
        p.update(10)
    assert out.getvalue() == ""


# ---------------------------------------------------------------- the main job's config

def test_quick_config_sizes_by_backend():
    from configs import bt_cifar10_quick as quick
    cpu, gpu = quick.get_config("cpu"), quick.get_config("gpu")
    assert quick.get_config().model.name == cpu.model.name == "resnet_tiny"  # this is a CPU
    assert cpu.eval.knn_at_start and gpu.eval.knn_at_start
    assert cpu.data.placement == gpu.data.placement == "device"   # no TensorFlow needed
    assert cpu.num_train_steps * cpu.batch_size < 50_000           # under one epoch on a CPU
    assert cpu.eval_every_steps == cpu.num_train_steps and cpu.eval.knn_train_examples == 10_000
    assert gpu.model.name == "resnet18" and gpu.num_train_steps == -1 and gpu.num_epochs == 30
    assert cpu.compute_dtype == gpu.compute_dtype == "auto"
    with pytest.raises(ValueError, match=":cpu or :gpu"):
        quick.get_config("laptop")


def _png_folder(root, per_class):
    """A tiny ImageNet-style folder of real CIFAR-10 images (lossless PNG copies)."""
    from barlow_jax.data.download import archive_subset
    arrays = archive_subset(CIFAR, per_class)
    for split, (images, labels) in arrays.items():
        for i, (im, label) in enumerate(zip(images, labels)):
            d = os.path.join(root, split, f"class{label}")
            os.makedirs(d, exist_ok=True)
            Image.fromarray(im).save(os.path.join(d, f"{i:05d}.png"))
    return root


def test_main_job_end_to_end_tiny_without_tensorflow_or_noise(tmp_path):
    """The README's first command (main job + report) at a tiny size, in a Python where
    TensorFlow cannot be imported (the `report` extra is all it needs), with the default
    TF_CPP_MIN_LOG_LEVEL: it prints the untrained and the trained kNN, writes the report's
    pictures, and prints no TensorFlow or absl-formatted start-up lines."""
    if not os.path.exists(CIFAR):
        pytest.skip(f"{CIFAR} not found")
    data = _png_folder(str(tmp_path / "cifar"), {"train": 16, "test": 8})
    work = str(tmp_path / "work")
    no_tf = ("import sys; sys.modules['tensorflow'] = None; "
             "sys.modules['tensorflow_datasets'] = None; import runpy; sys.argv = sys.argv[1:]; "
             "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
    env = {**cli_env(1), **OPTIMIZED}   # the program users run
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    flags = ["--config=configs/bt_cifar10_quick.py:cpu", f"--workdir={work}",
             f"--config.data.path={data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
             "--config.num_train_steps=4", "--config.batch_size=32",
             "--config.eval_every_steps=4", "--config.log_every_steps=2",
             "--config.eval.knn_train_examples=0", "--config.model.width=8",
             "--config.projector.spec=64-64"]
    r = subprocess.run([sys.executable, "-c", no_tf, "barlow_jax.main", *flags], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    assert re.search(r"kNN at step 0 \(untrained network\): top-1 [\d.]+%", out), out
    assert re.search(r"kNN at step 4: top-1 [\d.]+% .*; untrained network: top-1 [\d.]+%",
                     out), out
    assert "(cpu, float32)" in out
    noise = [line for line in r.stderr.splitlines()
             if re.match(r"^[IWEF]\d{4} ", line) or "oneDNN" in line or "cpu_feature_guard" in
             line or "absl::InitializeLog" in line]
    assert not noise, noise
    assert "Indexing" in out and "Decoding" not in r.stderr
    r = subprocess.run([sys.executable, "-c", no_tf, "barlow_jax.report", f"--workdir={work}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("knn.png", "curves.png", "c_matrix.png"):
        with Image.open(os.path.join(work, "report", name)) as im:
            assert im.size[0] > 100
    summary = open(os.path.join(work, "report", "summary.md")).read()
    assert "Untrained network (step 0)" in summary
    knn = [rec for rec in _records(work) if "knn_top1" in rec]
    assert [rec["step"] for rec in knn] == [0, 4]
    assert all(np.isfinite(rec["knn_top1"]) for rec in knn)


def _records(work):
    from tests.cli_helpers import read_metrics
    return read_metrics(work)
