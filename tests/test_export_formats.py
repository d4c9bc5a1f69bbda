"""--format=safetensors and --format=timm_hub: files, model card, and loading them in PyTorch.

Every machine with torch: the exported tensors run through tests/torch_ref.py
(torch.nn.functional written from torchvision's semantics) and must give the
JAX model's features. With torchvision / timm installed (the ``test`` extra
installs both; tests/torch_libs.py imports PyPI's CUDA torchvision wheel beside
a CPU torch), the files are loaded with strict=True into the real
``torchvision.models.resnet18/50``, into ``timm.create_model('local-dir:DIR',
pretrained=True, num_classes=0)`` and ``timm.create_model(arch, num_classes=0)``,
and the CIFAR stem into the model card's own ``torch_cifar_resnet()``; their
features must equal the JAX model's. Those tests skip, saying so, only when
the library is not installed; an installed library that fails to import
fails the test.
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from barlow_jax import checkpointing, export  # noqa: E402
from barlow_jax.export import formats as export_formats  # noqa: E402
from barlow_jax.models import build_resnet  # noqa: E402
from configs import smoke  # noqa: E402
from tests import torch_libs  # noqa: E402

needs_torch = pytest.mark.skipif(not torch_libs.installed("torch"), reason="torch not installed")
needs_torchvision = pytest.mark.skipif(
    not torch_libs.installed("torchvision"),
    reason="torchvision not installed (pip install -e .[test] installs it)")
needs_timm = pytest.mark.skipif(
    not (torch_libs.installed("timm") and torch_libs.installed("torchvision")),
    reason="timm/torchvision not installed (pip install -e .[test] installs them)")


def _randomize(shapes, seed):
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        if name.endswith("['scale']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _run(tmp_path, monkeypatch, cifar_stem, measured=True, arch="resnet18"):
    """A workdir (config.json, metrics.jsonl, linear_eval.json) over random ResNet variables."""
    size = 32 if cifar_stem else 64
    model = build_resnet(arch, cifar_stem=cifar_stem)
    bb = _randomize(jax.eval_shape(model.init, jax.random.key(0),
                                   jnp.zeros((1, size, size, 3))), 3)
    c = smoke.get_config()
    c.model.name, c.model.width, c.model.cifar_stem = arch, 64, cifar_stem
    c.data.image_size = size
    workdir = tmp_path / f"run{int(cifar_stem)}_{arch}"
    (workdir / "checkpoints" / "7").mkdir(parents=True)
    with open(workdir / "config.json", "w") as f:
        json.dump(checkpointing.config_to_dict(c), f)
    if measured:
        with open(workdir / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 4, "epoch": 0.5, "loss": 1.0}) + "\n")
            f.write(json.dumps({"step": 7, "epoch": 0.875, "knn_top1": 31.25, "knn_top5": 80.5,
                                "online_test_top1": 27.0}) + "\n")
        with open(workdir / "linear_eval.json", "w") as f:
            json.dump({"final": {"epoch": 3, "top1": 41.5, "top5": 88.0},
                       "setup": {"epochs": 3}, "complete": True}, f)
    v = {"params": {"backbone": bb["params"]}, "batch_stats": {"backbone": bb["batch_stats"]},
         "target": None}
    monkeypatch.setattr(export.files, "_load_variables", lambda workdir, step: (c, v, 7))
    x = np.random.default_rng(5).standard_normal((3, size, size, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        feats = np.asarray(model.apply(bb, jnp.asarray(x), train=False))
    return str(workdir), v, x, feats


def _rel(a, ref):
    return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


def _torch_feats(sd, x, module=None):
    import torch
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if module is not None:
        module.eval()
        with torch.no_grad():
            return module(xt).numpy()
    from tests import torch_ref
    return torch_ref.resnet_features({k: torch.as_tensor(np.asarray(a)) for k, a in sd.items()},
                                     xt).numpy()


def _export_safetensors(tmp_path, monkeypatch, capsys, arch="resnet18"):
    workdir, v, x, feats = _run(tmp_path, monkeypatch, cifar_stem=False, arch=arch)
    out = str(tmp_path / f"{arch}.safetensors")
    assert export.main([f"--workdir={workdir}", "--format=safetensors", f"--out={out}"]) == 0
    assert "Wrote" in capsys.readouterr().out
    return out, v, x, feats


def test_safetensors_file_equals_state_dict(tmp_path, monkeypatch, capsys):
    out, v, x, feats = _export_safetensors(tmp_path, monkeypatch, capsys)
    sd = export_formats.load_safetensors(out)
    ref = export.to_torchvision(v)
    assert sorted(sd) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
    meta = json.load(open(out + ".meta.json"))
    assert meta["architecture"] == "resnet18" and meta["step"] == 7
    if torch_libs.installed("torch"):
        assert _rel(_torch_feats(sd, x), feats) < 1e-4


@needs_torchvision
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_safetensors_loads_strictly_into_real_torchvision(tmp_path, monkeypatch, capsys, arch):
    tv = torch_libs.import_torchvision()
    import torch
    from safetensors.torch import load_file
    out, _, x, feats = _export_safetensors(tmp_path, monkeypatch, capsys, arch)
    m = getattr(tv.models, arch)()
    m.fc = torch.nn.Identity()
    m.load_state_dict(load_file(out), strict=True)
    assert _rel(_torch_feats(None, x, m), feats) < 1e-4


def _export_hub(tmp_path, monkeypatch, cifar_stem=False, measured=True):
    workdir, v, x, feats = _run(tmp_path, monkeypatch, cifar_stem=cifar_stem, measured=measured)
    out = tmp_path / ("hub_cifar" if cifar_stem else "hub")
    assert export.main([f"--workdir={workdir}", "--format=timm_hub", f"--out={out}"]) == 0
    return out, x, feats


def test_timm_hub_folder_and_card(tmp_path, monkeypatch):
    out, x, feats = _export_hub(tmp_path, monkeypatch)
    assert sorted(os.listdir(out)) == ["README.md", "barlow_jax_config.json",
                                       "barlow_jax_export.json", "config.json",
                                       "model.safetensors"]
    cfg = json.load(open(out / "config.json"))
    assert cfg["architecture"] == "resnet18" and cfg["num_features"] == 512
    assert cfg["num_classes"] == 0
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 64, 64]
    np.testing.assert_allclose(pc["mean"], smoke.get_config().data.mean)
    np.testing.assert_allclose(pc["std"], smoke.get_config().data.std)
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "barlow_twins" in card
    assert "epochs trained: 0.875 (step 7)" in card
    assert "top-1 31.25%" in card and "top-5 80.50%" in card     # kNN from metrics.jsonl
    assert "online linear probe (test split): top-1 27.00%" in card
    assert "top-1 41.50%, top-5 88.00% after 3/3 epochs" in card  # linear_eval.json
    if torch_libs.installed("torch"):
        sd = export_formats.load_safetensors(str(out / "model.safetensors"))
        assert _rel(_torch_feats(sd, x), feats) < 1e-4


@needs_timm
def test_timm_hub_folder_loads_into_real_timm(tmp_path, monkeypatch):
    timm = torch_libs.import_timm()
    from safetensors.torch import load_file
    out, x, feats = _export_hub(tmp_path, monkeypatch)
    cfg = json.load(open(out / "config.json"))
    hub = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0)
    assert hub.num_features == cfg["num_features"] == 512
    assert _rel(_torch_feats(None, x, hub), feats) < 1e-4   # timm loaded the file itself
    plain = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0)
    plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert _rel(_torch_feats(None, x, plain), feats) < 1e-4


def test_timm_hub_cifar_stem_card_snippet(tmp_path, monkeypatch):
    out, x, feats = _export_hub(tmp_path, monkeypatch, cifar_stem=True, measured=False)
    card = (out / "README.md").read_text()
    assert "not measured" in card and "torch_cifar_resnet" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert export.TORCH_CIFAR_RESNET_SOURCE.strip() in snippet
    compile(snippet, "card", "exec")
    assert json.load(open(out / "config.json"))["pretrained_cfg"]["pool_size"] == [4, 4]
    sd = export_formats.load_safetensors(str(out / "model.safetensors"))
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    if torch_libs.installed("torch"):
        assert _rel(_torch_feats(sd, x), feats) < 1e-4


@needs_torchvision
def test_cifar_stem_card_snippet_runs_with_real_torchvision(tmp_path, monkeypatch):
    torch_libs.import_torchvision()
    out, x, feats = _export_hub(tmp_path, monkeypatch, cifar_stem=True, measured=False)
    snippet = (out / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    cwd = os.getcwd()
    os.chdir(out)                   # the card loads 'model.safetensors' from its folder
    try:
        scope = {}
        exec(snippet.replace("features = model(images)", "pass"), scope)
    finally:
        os.chdir(cwd)
    got = _torch_feats(None, x, scope["model"])
    assert _rel(got, feats) < 1e-4
    got2 = _torch_feats(None, x, export.torch_cifar_resnet("resnet18",
                                                           str(out / "model.safetensors")))
    np.testing.assert_array_equal(got, got2)


def test_bad_out_is_one_sentence(tmp_path, monkeypatch, capsys):
    workdir, _, _, _ = _run(tmp_path, monkeypatch, cifar_stem=False, measured=False)
    f = tmp_path / "afile"
    f.write_text("x")
    assert export.main([f"--workdir={workdir}", "--format=timm_hub", f"--out={f}"]) == 1
    assert "writes a folder" in capsys.readouterr().err
