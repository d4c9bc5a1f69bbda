"""The Flax ResNets have torchvision's layout: parameter counts, shapes, init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barlow_jax.models import MLPHead, build_resnet, parse_widths
from barlow_jax.models.resnet import BasicBlock, Bottleneck, ResNet

# torchvision totals minus the classifier head (fc): 11,689,512 - 513,000 etc.
TORCHVISION_COUNTS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032}


def _shapes(name, size=224, **kw):
    model = build_resnet(name, **kw)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_count_matches_torchvision(name):
    v = _shapes(name)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))
    assert n == TORCHVISION_COUNTS[name]


def test_resnet50_layout_and_features():
    v = _shapes("resnet50")
    p = v["params"]
    assert p["conv1"]["kernel"].shape == (7, 7, 3, 64)
    # v1.5: the stride sits on the 3x3 conv of the first block of a stage
    assert p["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert p["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert "downsample_conv" not in p["layer2_1"]
    assert p["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 256)


def test_explicit_symmetric_padding_spatial_sizes():
    """torchvision: 224 -> 112 (stem) -> 56 (pool) -> 56, 28, 14, 7; odd sizes too."""
    model = build_resnet("resnet18")
    x = jnp.zeros((1, 225, 225, 3))
    v = model.init(jax.random.key(0), x, train=False)
    _, inter = model.apply(v, x, train=False, capture_intermediates=True)
    shapes = {k: inter["intermediates"][k]["__call__"][0].shape
              for k in ("conv1", "layer1_1", "layer2_1", "layer3_1", "layer4_1")}
    # torch: floor((225 + 2*3 - 7)/2) + 1 = 113; pool: floor((113 + 2 - 3)/2) + 1 = 57
    assert shapes["conv1"][1:3] == (113, 113)
    assert shapes["layer1_1"][1:3] == (57, 57)
    assert shapes["layer2_1"][1:3] == (29, 29)
    assert shapes["layer3_1"][1:3] == (15, 15)
    assert shapes["layer4_1"][1:3] == (8, 8)


def test_stride2_conv_matches_symmetric_padding_reference():
    """A strided 3x3 conv equals lax.conv with torch's (1, 1) padding, not Flax 'SAME'."""
    model = build_resnet("resnet_tiny", width=4, cifar_stem=True)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
    v = model.init(jax.random.key(0), x, train=False)
    _, inter = model.apply(v, x, train=False, capture_intermediates=True)
    block_in = inter["intermediates"]["layer1_0"]["__call__"][0]
    k = v["params"]["layer2_0"]["conv1"]["kernel"]
    ref = jax.lax.conv_general_dilated(block_in, k, (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = inter["intermediates"]["layer2_0"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_zero_init_residual():
    # ResNet-50's Bottleneck and ResNet-18's BasicBlock, fewer of them and small inputs:
    # every block's last BN scale starts at 0 (the others at 1), and at 1 when turned off.
    x = jnp.zeros((1, 16, 16, 3))
    for block, last, zero in ((Bottleneck, "bn3", True), (BasicBlock, "bn2", True),
                              (BasicBlock, "bn2", False)):
        if True:
            net = ResNet(stage_sizes=(1, 1, 1, 1), block_cls=block, zero_init_residual=zero,
                         width=8)
            params = net.init(jax.random.key(0), x, train=False)["params"]
            blocks = [k for k in params if k.startswith("layer")]
            assert len(blocks) == 4
            for name in blocks:
                bns = {k: v["scale"] for k, v in params[name].items() if k.startswith("bn")}
                assert float(jnp.abs(bns[last]).max()) == (0.0 if zero else 1.0), (block, name)
                assert float(jnp.abs(bns[last]).min()) == (0.0 if zero else 1.0), (block, name)
                for k, scale in bns.items():
                    if k != last:
                        assert float(scale.min()) == float(scale.max()) == 1.0, (block, name, k)


def test_cifar_stem_and_bf16():
    model = build_resnet("resnet18", cifar_stem=True, dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 3))
    v = model.init(jax.random.key(0), x, train=False)
    assert v["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    out = model.apply(v, x, train=False)
    assert out.shape == (2, 512) and out.dtype == jnp.bfloat16


def test_projector_layout():
    assert parse_widths("8192-8192-8192") == (8192, 8192, 8192)
    with pytest.raises(ValueError, match="dash-separated"):
        parse_widths("8192x8192")
    head = MLPHead(widths=(16, 16, 8))
    v = head.init(jax.random.key(0), jnp.zeros((4, 32)), train=False)
    p = v["params"]
    assert set(p) == {"linear0", "bn0", "linear1", "bn1", "linear2"}
    assert all("bias" not in p[f"linear{i}"] for i in range(3))
    assert p["linear0"]["kernel"].shape == (32, 16) and p["linear2"]["kernel"].shape == (16, 8)


def test_unknown_backbone_is_one_clear_sentence():
    with pytest.raises(ValueError, match="config.model.name"):
        build_resnet("resnet51")
