"""Two-view augmentation in TensorFlow for tf.data on the host.

Same ops, order and parameter distributions as ``augment_jax`` (see its
docstring for the formulas). Parameters come from one stateless U(0, 1)
vector per example and view, with the same layout as
``augment_jax.sample_params``, so a view depends only on its example's seed
(the pipeline uses (seed, epoch, example index)) and a resumed pipeline
reproduces it exactly.

Work is split the way tf.data runs fastest: per example (``map`` before
``batch``) the parameters, decode, crop and flip, whose shapes vary per
image; per batch (``map`` after ``batch``) the colour jitter, grayscale,
blur and solarize, vectorised with per-example parameters, since per-example
control flow costs more than the arithmetic at small sizes. The crop is
``crop_to_bounding_box`` + ``resize(bicubic, antialias=True)``, equal to
``augment_jax.resize_weights`` to 3e-4 of a grey level.

Import this module only where tf.data is used: TensorFlow is not installed on
every accelerator machine.
"""

from __future__ import annotations

import math

from barlow_jax.data.tensorflow_env import import_tensorflow

tf = import_tensorflow()  # quiet, and hidden from the GPUs

from barlow_jax.data.augment_jax import (CROP_ATTEMPTS, CROP_UNIFORMS, LUMA, PARAM_UNIFORMS,
                                         blur_kernel_size, color_ops_name, factor_range)
from barlow_jax.data.normalize import normalize


def decode(encoded):
    """JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (grayscale expanded to RGB).

    JPEGs use libjpeg's accurate integer IDCT, as PIL does, so every placement
    and the (PIL-based) evaluation see identical pixels; TF's default fast
    IDCT differs by up to 5 grey levels.
    """
    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                   other)


# ----------------------------------------------------------------- parameters

def crop_box_from_uniform(u, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params from ``CROP_UNIFORMS`` U(0,1) numbers."""
    a = CROP_ATTEMPTS
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = hf * wf * (scale[0] + (scale[1] - scale[0]) * u[:a])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(lo + (hi - lo) * u[a:2 * a])
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= wf) & (h <= hf)
    any_fits = tf.reduce_any(fits)
    first = tf.argmax(tf.cast(fits, tf.int32))
    in_ratio = wf / hf
    fh = tf.where(in_ratio < ratio[0], tf.round(wf / ratio[0]), hf)
    fw = tf.where(in_ratio > ratio[1], tf.round(hf * ratio[1]), wf)
    h = tf.cast(tf.where(any_fits, tf.gather(h, first), fh), tf.int32)
    w = tf.cast(tf.where(any_fits, tf.gather(w, first), fw), tf.int32)
    top = tf.cast(tf.floor(u[2 * a] * tf.cast(height - h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(u[2 * a + 1] * tf.cast(width - w + 1, tf.float32)), tf.int32)
    top = tf.where(any_fits, top, (height - h) // 2)
    left = tf.where(any_fits, left, (width - w) // 2)
    return top, left, h, w


def crop_box(seed, height, width, scale, ratio):
    u = tf.random.stateless_uniform([CROP_UNIFORMS], seed)
    return crop_box_from_uniform(u, height, width, scale, ratio)


def sample_params(seed, view_config, height, width):
    """One example's view parameters (layout of ``augment_jax.sample_params``)."""
    v = view_config
    u = tf.random.stateless_uniform([PARAM_UNIFORMS + CROP_UNIFORMS], seed)
    scaled = lambda x, lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * x
    return {
        "flip": u[0] < v.flip_prob,
        "jitter": u[1] < v.jitter_prob,
        "gray": u[2] < v.grayscale_prob,
        "blur": u[3] < v.blur_prob,
        "solarize": u[4] < v.solarize_prob,
        "sigma": scaled(u[5], v.blur_sigma),
        "factors": tf.stack([scaled(u[6], factor_range(v.brightness)),
                             scaled(u[7], factor_range(v.contrast)),
                             scaled(u[8], factor_range(v.saturation)),
                             scaled(u[9], (-v.hue, v.hue))]),
        "order": tf.cast(tf.argsort(u[10:14]), tf.int32),
        "box": tf.stack(crop_box_from_uniform(u[PARAM_UNIFORMS:], height, width,
                                              v.crop_scale, v.crop_ratio)),
    }


# ----------------------------------------------------------------- per example

def resized_crop(image, box, size: int):
    """uint8/float [H,W,3] -> float32 [size,size,3] on the 0..255 scale of the input."""
    top, left, h, w = box[0], box[1], box[2], box[3]
    crop = tf.image.crop_to_bounding_box(image, top, left, h, w)   # before any cast
    return tf.image.resize(crop, [size, size], method="bicubic", antialias=True)


def crop_and_flip(image, params, size: int):
    """uint8 [H,W,3] -> float32 [size,size,3] in [0, 255]: crop box, resize, flip."""
    x = resized_crop(image, params["box"], size)
    x = tf.where(params["flip"], x[:, ::-1], x)
    x.set_shape([size, size, 3])
    return tf.clip_by_value(x, 0.0, 255.0)


def crop_and_flip_uint8(image, seed, view_config, size: int):
    """The host half of placement 'split': uint8 crop + flip."""
    shape = tf.shape(image)
    params = sample_params(seed, view_config, shape[0], shape[1])
    return tf.cast(tf.round(crop_and_flip(image, params, size)), tf.uint8)


def crop_stage(image, seed, view_config, size: int):
    """Per-example half of placement 'host': (float [S,S,3] in [0,1], colour params)."""
    shape = tf.shape(image)
    params = sample_params(seed, view_config, shape[0], shape[1])
    x = crop_and_flip(image, params, size) / 255.0
    del params["box"], params["flip"]
    return x, params


# ----------------------------------------------------------------- per batch

def _b(p):
    """Per-example scalar [B] -> [B,1,1,1] for broadcasting against images."""
    return tf.reshape(p, [-1, 1, 1, 1])


def grayscale(x):
    return tf.reduce_sum(x * tf.constant(LUMA, x.dtype), axis=-1, keepdims=True)


def adjust_brightness(x, f):
    """Batch x [B,S,S,3], per-example factor f [B]."""
    return tf.clip_by_value(x * _b(f), 0.0, 1.0)


def adjust_contrast(x, f):
    mean = tf.reduce_mean(grayscale(x), axis=[-3, -2, -1], keepdims=True)
    return tf.clip_by_value(_b(f) * x + (1.0 - _b(f)) * mean, 0.0, 1.0)


def adjust_saturation(x, f):
    return tf.clip_by_value(_b(f) * x + (1.0 - _b(f)) * grayscale(x), 0.0, 1.0)


def adjust_hue(x, f):
    """H <- (H + f) mod 1 in HSV (tf.image.adjust_hue's definition), f [B]."""
    hsv = tf.image.rgb_to_hsv(x)
    h = tf.math.floormod(hsv[..., 0] + tf.reshape(f, [-1, 1, 1]), 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], -1)),
                            0.0, 1.0)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def adjust_contrast_per_channel(x, f):
    """tf.image.adjust_contrast / BYOL: each channel about its own spatial mean, f [B]."""
    mean = tf.reduce_mean(x, axis=[-3, -2], keepdims=True)
    return tf.clip_by_value(_b(f) * (x - mean) + mean, 0.0, 1.0)


def adjust_saturation_hsv(x, f):
    """tf.image.adjust_saturation: S <- clip(S * f, 0, 1) in HSV, f [B]."""
    hsv = tf.image.rgb_to_hsv(x)
    s = tf.clip_by_value(hsv[..., 1] * tf.reshape(f, [-1, 1, 1]), 0.0, 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([hsv[..., 0], s, hsv[..., 2]], -1)),
                            0.0, 1.0)


def adjust_brightness_additive(x, f):
    """BYOL: x + delta, delta = f - 1 ~ U(-b, b), f [B]."""
    return tf.clip_by_value(x + _b(f - 1.0), 0.0, 1.0)


# The colour semantics of ``view_config.color_ops`` (augment_jax.COLOR_OPS documents them).
COLOR_OPS = {
    "torchvision": JITTER_OPS,
    "tf": (adjust_brightness, adjust_contrast_per_channel, adjust_saturation_hsv, adjust_hue),
    "byol": (adjust_brightness_additive, adjust_contrast_per_channel, adjust_saturation_hsv,
             adjust_hue),
}


def color_jitter(x, factors, order, active=(True, True, True, True), apply=None,
                 ops: str = "torchvision"):
    """Batch [B,S,S,3]: at position i each example applies op ``order[b, i]`` with
    ``factors[b, order[b, i]]`` (torchvision ColorJitter's random order).

    Each position partitions the batch by op (``dynamic_partition``), runs
    every op on its own examples only and stitches the batch back together:
    vectorised like a batch op, with the arithmetic of per-example ops.
    ``apply`` [B] bool (default all) selects the examples that are jittered;
    an inactive op (strength 0 in the config) is the identity.
    """
    ids = tf.range(tf.shape(x)[0])
    skip = tf.zeros_like(order[:, 0]) + 4
    for i in range(4):
        op = order[:, i] if apply is None else tf.where(apply, order[:, i], skip)
        xs = tf.dynamic_partition(x, op, 5)
        fs = tf.dynamic_partition(factors, op, 5)
        outs = [COLOR_OPS[ops][j](xs[j], fs[j][:, j]) if active[j] else xs[j]
                for j in range(4)]
        x = tf.dynamic_stitch(tf.dynamic_partition(ids, op, 5), outs + [xs[4]])
    return x


def gaussian_blur(x, sigma, ksize: int):
    """Batch [B,H,W,C], sigma [B] -> separable gaussian blur, reflect padding.

    Batch and channels are folded into one depthwise convolution so that each
    example has its own kernel.
    """
    r = ksize // 2
    b, c = tf.shape(x)[0], x.shape[-1]
    taps = tf.range(ksize, dtype=tf.float32) - r
    k = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    k = k / tf.reduce_sum(k, axis=1, keepdims=True)                # [B, K]
    k = tf.transpose(tf.repeat(k, c, axis=0))                       # [K, B*C]
    y = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    hp, wp = tf.shape(y)[1], tf.shape(y)[2]
    y = tf.reshape(tf.transpose(y, [1, 2, 0, 3]), [1, hp, wp, b * c])
    y = tf.nn.depthwise_conv2d(y, tf.reshape(k, [ksize, 1, b * c, 1]), [1, 1, 1, 1], "VALID")
    y = tf.nn.depthwise_conv2d(y, tf.reshape(k, [1, ksize, b * c, 1]), [1, 1, 1, 1], "VALID")
    y = tf.reshape(y, [hp - 2 * r, wp - 2 * r, b, c])
    return tf.transpose(y, [2, 0, 1, 3])


def solarize(x, threshold):
    return tf.where(x >= threshold, 1.0 - x, x)


def _on_subset(x, mask, fn):
    """fn applied to the examples where mask [B] is True only; the others unchanged."""
    def update():
        rows = tf.where(mask)
        return tf.tensor_scatter_nd_update(x, rows, fn(tf.gather_nd(x, rows), rows[:, 0]))

    return tf.cond(tf.reduce_any(mask), update, lambda: x)


def color_batch(x, params, view_config):
    """Batch [B,S,S,3] in [0,1] with batched params -> jitter, grayscale, blur, solarize."""
    v = view_config
    if v.jitter_prob > 0:
        active = (v.brightness > 0, v.contrast > 0, v.saturation > 0, v.hue > 0)
        x = color_jitter(x, params["factors"], params["order"], active, params["jitter"],
                         color_ops_name(v))
    if v.grayscale_prob > 0:
        x = _on_subset(x, params["gray"], lambda y, _: tf.tile(grayscale(y), [1, 1, 1, 3]))
    if v.blur_prob > 0:
        ksize = blur_kernel_size(x.shape[1])
        x = _on_subset(x, params["blur"], lambda y, rows: gaussian_blur(
            y, tf.gather(params["sigma"], rows), ksize))
    if v.solarize_prob > 0:
        x = _on_subset(x, params["solarize"], lambda y, _: solarize(y, v.solarize_threshold))
    return x


def full_views(images, seeds, view_config, data_config):
    """uint8 images (a list, sizes may differ) -> float32 normalised [B,S,S,3] (tests, tools)."""
    crops, params = zip(*[crop_stage(im, s, view_config, data_config.image_size)
                          for im, s in zip(images, seeds)])
    batched = {k: tf.stack([p[k] for p in params]) for k in params[0]}
    return normalize(color_batch(tf.stack(crops), batched, view_config), data_config)
