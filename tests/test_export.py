"""Export/import between the Flax ResNet and torchvision state dicts.

The PyTorch side is tests/torch_ref.py (torch.nn.functional ops written
from torchvision's resnet.py semantics), because torchvision is not
installed on the CPU machines. Every variable is randomised (non-trivial BN
statistics, nonzero last-BN scales) so a wrong block wiring cannot hide
behind zero-init residuals.
"""

import io
import json
import os
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

from barlow_jax import export  # noqa: E402
from barlow_jax.models import build_resnet  # noqa: E402
from tests import torch_ref  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# torchvision's published parameter counts minus fc (in_features * 1000 + 1000).
TORCHVISION_PARAMS = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                      "resnet50": 25_557_032 - 2_049_000}


# ----------------------------------------------------------------------------- helpers

def torchvision_shapes(name, width=64, cifar_stem=False):
    """Key -> shape of torchvision's resnet state dict without fc, in its order.

    Follows torchvision.models.resnet.ResNet.__init__/_make_layer: inplanes
    starts at 64, layer k has planes 64 * 2**(k-1), block 0 is strided for
    k > 1 and gets downsample when stride != 1 or inplanes != planes * expansion.
    """
    layers, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                          "resnet50": ((3, 4, 6, 3), True)}[name]
    exp = 4 if bottleneck else 1
    out = {}

    def bn(p, c):
        out.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,),
                    f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()})

    k = 3 if cifar_stem else 7
    out["conv1.weight"] = (width, 3, k, k)
    bn("bn1", width)
    inplanes = width
    for li, n in enumerate(layers):
        planes = width * 2 ** li
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            stride = 2 if (li > 0 and b == 0) else 1
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    return out


def randomize(shapes, seed):
    """Random values for every variable: He-scaled kernels, BN scale in [0.5, 1.5]
    (never 0), bias and running mean ~ N(0, 0.1^2), running var in [0.5, 2]."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def random_resnet(name, cifar_stem=False, seed=0):
    model = build_resnet(name, cifar_stem=cifar_stem)
    size = 32 if cifar_stem else 64
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return model, randomize(shapes, seed)


def cifar_images(path, size, n=4):
    """The first test image of n CIFAR-10 classes, bicubic-resized, ImageNet-normalised, NHWC."""
    imgs, classes = [], set()
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.name.endswith(".jpg") or parts[-2] in classes:
                continue
            classes.add(parts[-2])
            im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            if size != 32:
                im = im.resize((size, size), Image.BICUBIC)
            imgs.append((np.asarray(im, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
            if len(imgs) == n:
                break
    return np.stack(imgs)


def flax_features(model, variables, x_nhwc):
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.apply(variables, jnp.asarray(x_nhwc), train=False))


def torch_features(sd, x_nhwc):
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    return torch_ref.resnet_features(sd, x).numpy()


def max_rel(a, ref):
    """max |a - ref| / max |ref| (the figure quoted in docs/export.md)."""
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_keys_shapes_and_order_match_torchvision(name):
    model = build_resnet(name)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    sd = export.to_torchvision(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes))
    want = torchvision_shapes(name)
    assert list(sd) == list(want)  # same keys, torchvision's order, no fc
    assert {k: v.shape for k, v in sd.items()} == want
    for k, v in sd.items():
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
        assert v.flags["C_CONTIGUOUS"]
    assert export.count_parameters(sd) == TORCHVISION_PARAMS[name]


def test_cifar_stem_layout():
    _, v = random_resnet("resnet18", cifar_stem=True)
    sd = export.to_torchvision(v)
    assert {k: a.shape for k, a in sd.items()} == torchvision_shapes("resnet18", cifar_stem=True)
    assert export.infer_architecture(sd) == {"name": "resnet18", "width": 64, "cifar_stem": True}


def test_conv_and_bn_values_are_transposed_not_reshaped():
    _, v = random_resnet("resnet18")
    sd = export.to_torchvision(v)
    k = np.asarray(v["params"]["layer2_0"]["conv1"]["kernel"])  # HWIO (3, 3, 64, 128)
    # torch weight[o, i, h, w] == flax kernel[h, w, i, o]
    assert sd["layer2.0.conv1.weight"][5, 7, 2, 1] == k[2, 1, 7, 5]
    np.testing.assert_array_equal(sd["layer2.0.downsample.0.weight"][:, :, 0, 0],
                                  np.asarray(v["params"]["layer2_0"]["downsample_conv"]["kernel"])[0, 0].T)
    np.testing.assert_array_equal(sd["layer3.1.bn2.running_var"],
                                  np.asarray(v["batch_stats"]["layer3_1"]["bn2"]["var"]))
    np.testing.assert_array_equal(sd["bn1.weight"], np.asarray(v["params"]["bn1"]["scale"]))
    assert int(sd["layer4.1.bn2.num_batches_tracked"]) == 0


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name,cifar_stem,size", [("resnet50", False, 64),
                                                  ("resnet18", False, 64),
                                                  ("resnet18", True, 32)])
def test_torch_features_match_flax(name, cifar_stem, size, cifar_archive):
    model, v = random_resnet(name, cifar_stem=cifar_stem, seed=1)
    sd = {k: torch.from_numpy(a) for k, a in export.to_torchvision(v).items()}
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((2, size, size, 3)).astype(np.float32),
                        cifar_images(cifar_archive, size, 4)])
    ref = flax_features(model, v, x)
    got = torch_features(sd, x)
    assert ref.shape == (6, model.num_features)
    assert (ref.std(axis=0) > 1e-3 * np.abs(ref).max()).mean() > 0.5  # non-degenerate features
    rel_random, rel_real = max_rel(got[:2], ref[:2]), max_rel(got[2:], ref[2:])
    print(f"{name} cifar_stem={cifar_stem} {size}px: max rel diff random {rel_random:.2e}, "
          f"real {rel_real:.2e}")
    assert rel_random < 1e-4 and rel_real < 1e-4

    # Negative control: the same comparison catches a spatially flipped conv
    # kernel and a wrong last-BN scale of one residual block.
    last = "layer4.1.bn2.weight" if name != "resnet50" else "layer4.2.bn3.weight"
    for key, change in [("layer1.0.conv2.weight", lambda w: w.flip(-1)),
                        (last, lambda w: w * 0.5)]:
        bad = dict(sd, **{key: change(sd[key])})
        assert max_rel(torch_features(bad, x), ref) > 1e-3, key


# ----------------------------------------------------------------------------- import

def test_roundtrip_is_exact_and_accepts_torch_and_numpy():
    for name, stem in [("resnet50", False), ("resnet18", True)]:
        _, v = random_resnet(name, cifar_stem=stem, seed=3)
        sd = export.to_torchvision(v)
        assert_trees_equal(export.from_torchvision(sd), v)
        tsd = {k: torch.from_numpy(a) for k, a in sd.items()}
        tsd["fc.weight"], tsd["fc.bias"] = torch.zeros(10, 2048), torch.zeros(10)  # ignored
        assert_trees_equal(export.from_torchvision(tsd), v)
        assert export.infer_architecture(tsd) == {"name": name, "width": 64, "cifar_stem": stem}


def test_sslnet_variables_and_prefixes():
    _, v = random_resnet("resnet18", seed=4)
    ssl = {"params": {"backbone": v["params"], "projector": {}},
           "batch_stats": {"backbone": v["batch_stats"]}}
    sd = export.to_torchvision(v)
    assert list(export.to_torchvision(ssl)) == list(sd)
    # The official checkpoint.pth: {'epoch', 'model': DDP state dict with projector}.
    ckpt = {"epoch": 3, "model": {**{f"module.backbone.{k}": a for k, a in sd.items()},
                                  "module.projector.0.weight": np.zeros((8, 512), np.float32)}}
    assert_trees_equal(export.from_torchvision(ckpt), v)
    assert_trees_equal(export.from_torchvision({f"module.{k}": a for k, a in sd.items()}), v)


def test_import_errors_name_the_keys():
    _, v = random_resnet("resnet18", seed=5)
    sd = export.to_torchvision(v)
    with pytest.raises(ValueError, match=r"lacks 1 resnet18 key\(s\): layer3.1.bn2.running_var"):
        export.from_torchvision({k: a for k, a in sd.items() if k != "layer3.1.bn2.running_var"})
    extra = dict(sd, **{"layer1.0.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="layer1.0.extra.weight; remove them or pass strict=False"):
        export.from_torchvision(extra)
    assert_trees_equal(export.from_torchvision(extra, strict=False), v)
    shape_msg = r"layer2.0.conv1.weight \(128, 64, 3, 1\) \(expected \(128, 64, 3, 3\)\)"
    with pytest.raises(ValueError, match=shape_msg):
        export.from_torchvision(dict(sd, **{"layer2.0.conv1.weight": sd["layer2.0.conv1.weight"][..., :1]}))
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        export.from_torchvision({"encoder.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="matches none of"):
        export.from_torchvision({k: a for k, a in sd.items() if not k.startswith("layer4.1.")})


# ----------------------------------------------------------------------------- full net

def small_ssl_config():
    from configs import smoke
    c = smoke.get_config()
    c.model.name, c.model.width, c.model.cifar_stem = "resnet18", 64, True
    c.projector.spec, c.projector.hidden_bias = "32-32-16", False
    c.predictor.spec, c.predictor.hidden_bias, c.predictor.last_bias = "24-16", True, True
    return c


def random_ssl_variables(seed):
    from barlow_jax.models import build_ssl_net
    c = small_ssl_config()
    net = build_ssl_net(c, dtype=jnp.float32)
    x = jnp.zeros((2, 32, 32, 3))
    v = randomize(jax.eval_shape(net.init, jax.random.key(0), x), seed)
    target_net = build_ssl_net(c, dtype=jnp.float32, with_predictor=False)
    target = randomize(jax.eval_shape(target_net.init, jax.random.key(0), x), seed + 1)
    return c, net, dict(v, target=target)


def test_full_layout_parity_and_roundtrip(cifar_archive):
    c, net, v = random_ssl_variables(6)
    sd = export.to_torch_full(v)
    head_keys = sorted(k for k in sd if k.startswith(("projector.", "predictor.")))
    bn = ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"]
    assert head_keys == sorted(["projector.0.weight", *[f"projector.1.{s}" for s in bn],
                                "projector.3.weight", *[f"projector.4.{s}" for s in bn],
                                "projector.6.weight", "predictor.0.weight", "predictor.0.bias",
                                *[f"predictor.1.{s}" for s in bn], "predictor.3.weight",
                                "predictor.3.bias"])
    assert sd["projector.0.weight"].shape == (32, 512) and sd["predictor.3.weight"].shape == (16, 24)
    bb = {k[len("backbone."):]: a for k, a in sd.items() if k.startswith("backbone.")}
    assert {k: a.shape for k, a in bb.items()} == torchvision_shapes("resnet18", cifar_stem=True)
    assert {k for k in sd if k.startswith("target.")} == {
        f"target.{k}" for k in sd if k.startswith(("backbone.", "projector."))}

    x = np.concatenate([np.random.default_rng(7).standard_normal((2, 32, 32, 3)).astype(np.float32),
                        cifar_images(cifar_archive, 32, 2)])
    with jax.default_matmul_precision("highest"):
        out = jax.tree.map(np.asarray, net.apply({"params": v["params"], "batch_stats": v["batch_stats"]},
                                                 jnp.asarray(x), train=False))
    tsd = {k: torch.from_numpy(a) for k, a in sd.items()}
    h = torch_features(bb, x)
    z = torch_ref.mlp_head(tsd, "projector", h)
    p = torch_ref.mlp_head(tsd, "predictor", z)
    assert max_rel(h, out["features"]) < 1e-4
    assert max_rel(z.numpy(), out["z"]) < 1e-4
    assert max_rel(p.numpy(), out["p"]) < 1e-4

    back = export.from_torch_full(tsd)
    assert_trees_equal(back["target"], v["target"])
    assert_trees_equal({"params": back["params"], "batch_stats": back["batch_stats"]},
                       {"params": v["params"], "batch_stats": v["batch_stats"]})


# ----------------------------------------------------------------------------- CLI

@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A workdir with checkpoints/7/ whose loader returns random SSLNet variables."""
    c, _, v = random_ssl_variables(8)
    (tmp_path / "run" / "checkpoints" / "7").mkdir(parents=True)
    monkeypatch.setattr(export.files, "_load_variables", lambda workdir, step: (c, v, 7))
    return str(tmp_path / "run"), v


def test_cli_export_backbone_and_full(fake_run, tmp_path, capsys):
    workdir, v = fake_run
    out = str(tmp_path / "r18.pth")
    assert export.main([f"--workdir={workdir}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    n_params = TORCHVISION_PARAMS["resnet18"] - 64 * 3 * (7 * 7 - 3 * 3)  # 3x3 stem
    assert "WARNING: the CIFAR stem" in printed and f"{n_params:,} parameters" in printed
    sd = torch.load(out, weights_only=True)
    want = export.to_torchvision(v)
    assert list(sd) == list(want)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    for k, a in want.items():
        np.testing.assert_array_equal(sd[k].numpy(), a)
    meta = json.load(open(out + ".meta.json"))
    assert meta["cifar_stem"] and not meta["torchvision_compatible"] and meta["step"] == 7
    assert meta["parameters"] == n_params

    full = str(tmp_path / "full.pth")
    assert export.main([f"--workdir={workdir}", "--step=7", f"--out={full}", "--full"]) == 0
    back = export.from_torch_full(torch.load(full, weights_only=True))
    assert_trees_equal(back["params"], v["params"])
    assert_trees_equal(back["target"], v["target"])


def test_cli_bad_input_is_one_sentence(fake_run, tmp_path, capsys):
    workdir, _ = fake_run
    out = str(tmp_path / "x.pth")
    cases = [([f"--workdir={tmp_path}/nope", f"--out={out}"], "does not exist; pass the --workdir"),
             ([f"--workdir={tmp_path}", f"--out={out}"], "has no checkpoints/ directory"),
             ([f"--workdir={workdir}", f"--out={tmp_path}/no/dir/x.pth"], "does not exist; create it"),
             ([f"--workdir={workdir}", f"--out={tmp_path}"], "is a directory"),
             ([f"--import={tmp_path}/none.pth", f"--out={out}"], "does not exist; pass --import")]
    for argv, msg in cases:
        assert export.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, (argv, err)
    assert not os.path.exists(out)


def test_cli_import_pth(tmp_path, capsys):
    _, v = random_resnet("resnet18", seed=9)
    sd = {k: torch.from_numpy(a) for k, a in export.to_torchvision(v).items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    pth, out = str(tmp_path / "r18.pth"), str(tmp_path / "r18.msgpack")
    torch.save(sd, pth)
    assert export.main([f"--import={pth}", f"--out={out}"]) == 0
    assert "11,176,512 parameters" in capsys.readouterr().out
    got, arch = export.read_variables(out)
    assert arch == {"name": "resnet18", "width": 64, "cifar_stem": False}
    assert_trees_equal(got, v)
    x = np.random.default_rng(10).standard_normal((1, 32, 32, 3)).astype(np.float32)
    ref = flax_features(build_resnet("resnet18"), v, x)
    np.testing.assert_array_equal(flax_features(build_resnet(**arch), got, x), ref)


def test_export_from_orbax_checkpoint(tmp_path, capsys):
    """End to end through the trainer's on-disk format: config.json plus a
    TrainState saved by checkpointing.Checkpointer, read by load_variables."""
    checkpointing = pytest.importorskip("barlow_jax.checkpointing")
    from barlow_jax.state import TrainState
    c, _, v = random_ssl_variables(12)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, checkpointing.CONFIG_FILE), "w") as f:
        json.dump(checkpointing.config_to_dict(c), f)
    ckpt = checkpointing.Checkpointer(workdir)
    for step in (3, 6):
        ckpt.save(step, TrainState(step=np.int32(step), params=v["params"], batch_stats=v["batch_stats"],
                                   opt_state={"mu": np.zeros(3, np.float32)}, target=v["target"]))
    ckpt.close()
    out = str(tmp_path / "full.pth")
    assert export.main([f"--workdir={workdir}", f"--out={out}", "--full"]) == 0
    back = export.from_torch_full(torch.load(out, weights_only=True))
    assert_trees_equal(back["params"], v["params"])
    assert_trees_equal(back["batch_stats"], v["batch_stats"])
    assert_trees_equal(back["target"], v["target"])
    assert json.load(open(out + ".meta.json"))["step"] == 6  # latest
    assert export.main([f"--workdir={workdir}", "--step=3", f"--out={out}"]) == 0
    assert "from step 3" in capsys.readouterr().out
    assert export.main([f"--workdir={workdir}", "--step=5", f"--out={out}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "No checkpoint for step 5" in err and "\n" not in err, err


@pytest.mark.parametrize("method,final_bn_keys", [
    ("simclr", {"weight", "running_mean", "running_var", "num_batches_tracked"}),
    ("simsiam", {"running_mean", "running_var", "num_batches_tracked"}),
])
def test_full_export_of_scale_only_and_non_affine_final_bn(method, final_bn_keys):
    """SimCLR's last BN has a scale only, SimSiam's is BatchNorm1d(affine=False)."""
    import jax
    import jax.numpy as jnp
    from barlow_jax.export import from_torch_full, to_torch_full
    from barlow_jax.models import build_ssl_net
    from configs import smoke
    config = smoke.get_config(method)
    v = build_ssl_net(config).init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)), train=False)
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda x: np.asarray(x) + rng.random(x.shape).astype(np.float32), v)
    sd = to_torch_full({"params": v["params"], "batch_stats": v["batch_stats"], "target": None})
    assert {k.split(".", 2)[2] for k in sd if k.startswith("projector.4.")} == final_bn_keys
    back = from_torch_full(sd)
    for part in ("params", "batch_stats"):
        flat_a = jax.tree_util.tree_leaves_with_path(v[part])
        flat_b = dict(jax.tree_util.tree_leaves_with_path(back[part]))
        assert len(flat_a) == len(flat_b)
        for path, a in flat_a:
            np.testing.assert_array_equal(np.asarray(flat_b[path]), a)
