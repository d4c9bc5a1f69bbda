"""The one normalisation: the same numbers from NumPy, JAX (under jit) and TensorFlow."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from barlow_jax.data import normalize as nz


def _config(**kw):
    return ml_collections.ConfigDict(kw)


def test_defaults_are_imagenet_and_the_config_overrides_them():
    mean, std = nz.mean_std(_config())
    np.testing.assert_array_equal(mean, np.float32([0.485, 0.456, 0.406]))
    np.testing.assert_array_equal(std, np.float32([0.229, 0.224, 0.225]))
    mean, std = nz.mean_std(_config(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_array_equal(std, np.float32([0.25, 0.5, 1.0]))


def test_numpy_jax_and_tensorflow_agree_and_to_uint8_inverts():
    dc = _config(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)
    ref = (images.astype(np.float64) / 255.0 - np.float64(dc.mean)) / np.float64(dc.std)
    host = nz.from_uint8(images, dc)
    dev = jax.jit(lambda x: nz.from_uint8(x, dc))(jnp.asarray(images))
    assert host.dtype == np.float32 and dev.dtype == jnp.float32
    np.testing.assert_allclose(host, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dev), ref, rtol=1e-6, atol=1e-6)
    from barlow_jax.data.tensorflow_env import import_tensorflow
    tf = import_tensorflow()
    tf_out = nz.normalize(tf.constant(images.astype(np.float32) / 255.0), dc)
    assert tf_out.dtype == tf.float32
    np.testing.assert_allclose(tf_out.numpy(), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(nz.to_uint8(host, dc), images)
    np.testing.assert_allclose(nz.to_unit(host, dc), images / 255.0, atol=1e-6)
