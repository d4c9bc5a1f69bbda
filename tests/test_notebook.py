"""notebooks/colab_demo.ipynb, executed top to bottom with nbclient in its tiny CPU setting.

The test flips the parameters cell's ``TINY_CPU = False`` to True (the one switch the
notebook documents) and points WORKDIR at a temporary folder; every other cell runs as
written, in one kernel. It checks real outputs: the untrained and trained kNN numbers,
the report pictures and the views picture (PNG outputs and files), the linear probe's
result and the exported PyTorch file. The Colab default (clone, pip install with the
cuda12 extra, CIFAR-10 download, Drive) is checked only as text: this machine has no
network and no Colab.
"""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_demo.ipynb")
ARCHIVE = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def _load():
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")
    return nbformat, nbformat.read(NOTEBOOK, as_version=4)


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook must have exactly one cell tagged 'parameters'"
    return cells[0]


def test_colab_default_is_what_a_colab_user_runs():
    _, nb = _load()
    params = _parameters_cell(nb).source
    assert re.search(r"^TINY_CPU = False\b", params, re.M)
    assert re.search(r'^DATA = "torchvision"', params, re.M)
    assert re.search(r"^USE_DRIVE = True\b", params, re.M)
    assert "REPO_URL" in params and "EDIT" in params
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "git\", \"clone\"" in code and "[cuda12,report]" in code
    assert "[data" not in code        # no tensorflow-cpu over Colab's own TensorFlow
    assert "drive.mount" in code and "cifar10_arrays(DATA" in code
    for run_elsewhere in ("!python", "subprocess.run([sys.executable, \"-m\", \"barlow_jax"):
        assert run_elsewhere not in code  # report, probe and export run in the kernel


def test_notebook_runs_top_to_bottom_in_the_tiny_cpu_setting(tmp_path, monkeypatch):
    nbformat, nb = _load()
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' (ipykernel)")
    if not os.path.exists(ARCHIVE):
        pytest.skip(f"{ARCHIVE} not found")
    cell = _parameters_cell(nb)
    workdir = str(tmp_path / "work")
    cell.source, n = re.subn(r"^TINY_CPU = False\b", "TINY_CPU = True", cell.source, flags=re.M)
    assert n == 1
    cell.source, n = re.subn(r'^WORKDIR = ""', f"WORKDIR = {workdir!r}", cell.source, flags=re.M)
    assert n == 1
    # One CPU device in the kernel, as on a laptop (the suite's 8 fake devices are for tests).
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT,
                                                                                  "notebooks")}})
    client.execute()

    text, pngs = [], 0
    for c in nb.cells:
        for out in c.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            pngs += "image/png" in data
            text.append(data.get("text/plain", ""))
            text.append(data.get("text/markdown", ""))
    printed = "".join(text)
    untrained = re.search(r"kNN at step 0 \(untrained network\): top-1 ([\d.]+)%", printed)
    trained = re.search(r"kNN top-1 after step 16: ([\d.]+)%", printed)
    assert untrained and trained, printed[-3000:]
    assert 0.0 <= float(trained.group(1)) <= 100.0
    report = os.path.join(workdir, "report")
    for name in ("curves.png", "knn.png", "c_matrix.png"):
        assert os.path.getsize(os.path.join(report, name)) > 1000, name
    assert os.path.getsize(os.path.join(workdir, "views.png")) > 1000
    assert pngs >= 4                       # report pictures and the views, shown inline
    probe = json.load(open(os.path.join(workdir, "linear_eval.json")))
    assert probe["complete"] and len(probe["epochs"]) == 2
    assert re.search(r"linear probe top-1: [\d.]+%", printed)
    exported = os.path.join(workdir, "resnet_tiny_cifar.pth")
    assert os.path.getsize(exported) > 10_000 and os.path.exists(exported + ".meta.json")
    import torch
    state = torch.load(exported, weights_only=True)
    assert "conv1.weight" in state and state["conv1.weight"].shape[0] == 8
