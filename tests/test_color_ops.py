"""color_ops 'tf' and 'byol' against the reference colour jitters, in augment_jax and augment_tf.

'tf': google-research/simclr tf2/data_util.py ``color_jitter_rand`` (impl
'simclrv2') rebuilt from the real tf.image ops: brightness x * f, then
tf.image.adjust_contrast / adjust_saturation / adjust_hue, clipped to [0, 1]
after every op, in a random order. 'byol': a NumPy port of deepmind-research
byol/utils/augmentations.py (its rgb_to_hsv / hsv_to_rgb, additive
brightness, per-channel contrast, clip after every op).
"""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from barlow_jax.data import augment_jax as aj

tf = pytest.importorskip("tensorflow")
from barlow_jax.data import augment_tf as at  # noqa: E402

ORDERS = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]


def images(seed=0, b=4, s=12):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (b, s, s, 3)).astype(np.float32)
    x[0] = x[0] * np.array([1.0, 0.3, 0.1], np.float32)   # strongly coloured, uneven channels
    return x


def factors(seed=1, b=4):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0.6, 1.4, b), rng.uniform(0.2, 1.8, b),
                     rng.uniform(0.2, 1.8, b), rng.uniform(-0.2, 0.2, b)], 1).astype(np.float32)


def tf_reference(x, f, order):
    """simclr tf2 color_jitter_rand with given factors and permutation (one image)."""
    ops = [lambda y: y * f[0],
           lambda y: tf.image.adjust_contrast(y, f[1]),
           lambda y: tf.image.adjust_saturation(y, f[2]),
           lambda y: tf.image.adjust_hue(y, f[3])]
    y = tf.constant(x)
    for j in order:
        y = tf.clip_by_value(ops[j](y), 0.0, 1.0)
    return y.numpy()


# --- NumPy port of deepmind-research byol/utils/augmentations.py colour ops ---
def np_rgb_to_hsv(r, g, b):
    vv = np.maximum(np.maximum(r, g), b)
    rng_ = vv - np.minimum(np.minimum(r, g), b)
    sat = np.where(vv > 0, rng_ / np.where(vv > 0, vv, 1), 0.0)
    norm = np.where(rng_ != 0, 1.0 / (6.0 * np.where(rng_ != 0, rng_, 1)), 1e9)
    hr, hg, hb = norm * (g - b), norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6
    hue = np.where(r == vv, hr, np.where(g == vv, hg, hb)) * (rng_ > 0)
    return hue + (hue < 0), sat, vv


def np_hsv_to_rgb(h, s, v):
    c = s * v
    m = v - c
    dh = (h % 1.0) * 6.0
    x = c * (1 - np.abs(dh % 2.0 - 1))
    k = np.floor(dh).astype(np.int32)
    rr = np.where((k == 0) | (k == 5), c, np.where((k == 1) | (k == 4), x, 0)) + m
    gg = np.where((k == 1) | (k == 2), c, np.where((k == 0) | (k == 3), x, 0)) + m
    bb = np.where((k == 3) | (k == 4), c, np.where((k == 2) | (k == 5), x, 0)) + m
    return rr, gg, bb


def byol_reference(x, f, order):
    rgb = [x[..., 0].astype(np.float64), x[..., 1].astype(np.float64),
           x[..., 2].astype(np.float64)]

    def brightness(t):
        return [c + (f[0] - 1.0) for c in t]          # delta ~ U(-b, b) = factor - 1

    def contrast(t):
        return [f[1] * (c - c.mean()) + c.mean() for c in t]

    def saturation(t):
        h, s, v = np_rgb_to_hsv(*t)
        return list(np_hsv_to_rgb(h, np.clip(s * f[2], 0, 1), v))

    def hue(t):
        h, s, v = np_rgb_to_hsv(*t)
        return list(np_hsv_to_rgb((h + f[3]) % 1.0, s, v))

    ops = [brightness, contrast, saturation, hue]
    for j in order:
        rgb = [np.clip(c, 0.0, 1.0) for c in ops[j](rgb)]
    return np.stack(rgb, -1)


REFERENCES = {"tf": tf_reference, "byol": byol_reference}


@pytest.mark.parametrize("ops,order", list(itertools.product(sorted(REFERENCES), ORDERS)))
def test_jax_and_tf_color_ops_match_the_reference(ops, order):
    x, f = images(), factors()
    want = np.stack([REFERENCES[ops](x[b], f[b], order) for b in range(len(x))])
    o = np.tile(np.asarray(order, np.int32), (len(x), 1))
    got_j = np.asarray(jax.vmap(lambda y, ff, oo: aj.color_jitter(y, ff, oo, ops=ops))(
        jnp.asarray(x), jnp.asarray(f), jnp.asarray(o)))
    got_t = at.color_jitter(tf.constant(x), tf.constant(f), tf.constant(o), ops=ops).numpy()
    np.testing.assert_allclose(got_j, want, atol=2e-5)
    np.testing.assert_allclose(got_t, want, atol=2e-5)


def test_the_three_semantics_differ():
    """Same factors, same order: the families must give different pixels (in grey levels)."""
    x, f = images(seed=3), factors(seed=4)
    o = jnp.tile(jnp.arange(4, dtype=jnp.int32), (len(x), 1))
    out = {name: np.asarray(jax.vmap(lambda y, ff, oo: aj.color_jitter(y, ff, oo, ops=name))(
        jnp.asarray(x), jnp.asarray(f), o)) for name in aj.COLOR_OPS}
    for a, b in itertools.combinations(sorted(out), 2):
        assert np.abs(out[a] - out[b]).mean() * 255 > 1.0, (a, b)


def test_view_dispatches_on_color_ops_and_refuses_unknown_names():
    x = (images(seed=5, b=8, s=16) * 255).astype(np.uint8)
    cfg = ml_collections.ConfigDict(dict(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3))
    key = jax.random.key(0)
    outs = {}
    for name in ("torchvision", "tf", "byol"):
        v = ml_collections.ConfigDict(dict(
            crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3), flip_prob=0.0, jitter_prob=1.0,
            brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_prob=0.0,
            blur_prob=0.0, blur_sigma=(0.1, 2.0), solarize_prob=0.0, solarize_threshold=0.5,
            color_ops=name))
        outs[name] = np.asarray(aj.view(jnp.asarray(x), key, v, cfg, crop=False))
    assert np.abs(outs["tf"] - outs["torchvision"]).max() > 0.01
    assert np.abs(outs["byol"] - outs["tf"]).max() > 0.01
    v.color_ops = "pil"
    with pytest.raises(ValueError, match="color_ops='pil'"):
        aj.view(jnp.asarray(x), key, v, cfg, crop=False)


def test_tf_color_batch_dispatches_on_color_ops():
    x, f = images(seed=6), factors(seed=7)
    o = np.tile(np.asarray(ORDERS[2], np.int32), (len(x), 1))
    params = {"factors": tf.constant(f), "order": tf.constant(o),
              "jitter": tf.constant([True, True, False, True])}
    for name in ("tf", "byol"):
        v = ml_collections.ConfigDict(dict(
            jitter_prob=1.0, brightness=0.4, contrast=0.8, saturation=0.8, hue=0.2,
            grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0, color_ops=name))
        got = at.color_batch(tf.constant(x), params, v).numpy()
        want = np.stack([REFERENCES[name](x[b], f[b], ORDERS[2]) for b in range(len(x))])
        np.testing.assert_allclose(got[[0, 1, 3]], want[[0, 1, 3]], atol=2e-5)
        np.testing.assert_array_equal(got[2], x[2])   # jitter off for example 2
