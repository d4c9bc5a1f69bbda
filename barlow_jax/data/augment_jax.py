"""Two-view augmentation in JAX: runs inside the jitted step, per device.

The recipe is Barlow Twins' (FIELD_NOTES §3, facebookresearch/barlowtwins
``main.py`` ``Transform``), applied in this order to each example::

    random resized crop (bicubic) -> horizontal flip -> colour jitter (p)
    -> grayscale (p) -> gaussian blur (p) -> solarize (p) -> normalize

with every probability and strength read from one view's config
(``barlow_jax/defaults.py: augment_view``). Images are float32 in [0, 1] between the
ops. ``augment_tf`` implements the same ops and the same parameter
distributions for tf.data; ``tests/test_data_augment.py`` checks both against
PIL / NumPy references and against each other.

Op definitions (torchvision ``transforms.functional`` on float tensors, with
PIL's luma weights):

* crop box: torchvision ``RandomResizedCrop.get_params``: 10 attempts of
  area ~ U(scale) * H * W, log(aspect) ~ U(log ratio), w = round(sqrt(area *
  aspect)), h = round(sqrt(area / aspect)); the first box that fits wins,
  top ~ U{0..H-h}, left ~ U{0..W-w}; else a centre crop clamped to the ratio
  range.
* resize: bicubic (Keys, a = -0.5) antialiased when downscaling, weights
  renormalised inside the crop box: PIL's ``crop(box).resize(size, BICUBIC)``
  without PIL's uint8 rounding between the two passes.
* gray(x) = 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2, PIL ``convert('L')``).
* brightness f ~ U(max(0, 1-b), 1+b): clip(f x); contrast f ~ U(max(0, 1-c),
  1+c): clip(f x + (1-f) mean(gray(x))); saturation f ~ U(max(0, 1-s), 1+s):
  clip(f x + (1-f) gray(x)); hue f ~ U(-h, h): H <- (H + f) mod 1 in HSV. The
  four are applied in a uniformly random order (torchvision ``ColorJitter``).
* blur: sigma ~ U(blur_sigma), kernel size ``blur_kernel_size(size)`` (about
  10% of the side, odd), reflect padding; two depthwise ``lax.conv`` passes.
* solarize: x >= threshold -> 1 - x (PIL ``ImageOps.solarize``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax.data.normalize import normalize

LUMA = (0.299, 0.587, 0.114)
CROP_ATTEMPTS = 10
CROP_UNIFORMS = 2 * CROP_ATTEMPTS + 2   # areas, aspects, top, left
PARAM_UNIFORMS = 14   # flip, jitter, gray, blur, solarize, sigma, 4 factors, 4 order keys


def blur_kernel_size(size: int, sigma_max: float = 2.0) -> int:
    """Odd kernel: about 10% of the image side (23 at 224), and at least 2*ceil(3 sigma_max)+1.

    The 10% rule (SimCLR, BYOL) is the kernel of large images; at small sizes
    it truncates the Gaussian (3 taps at 32 px), far weaker than PIL's
    ``GaussianBlur(radius=sigma)`` that the torchvision-based recipes (BT,
    solo-learn) use, whose support is not truncated. The +-3 sigma floor (13
    taps for sigma 2) keeps PIL's effective support (docs/methods.md: measured
    difference). Reflect padding needs a kernel radius below the image side.
    """
    k = int(0.1 * size)
    k = max(3, k + 1 - k % 2, 2 * math.ceil(3.0 * float(sigma_max)) + 1)
    if k // 2 >= size:
        raise ValueError(f"Gaussian blur with sigma up to {sigma_max} needs images larger than "
                         f"{k // 2} pixels (got {size}); set blur_prob=0 for this view or "
                         f"lower blur_sigma.")
    return k


# ----------------------------------------------------------------- crop + resize

def crop_box(key, height: int, width: int, scale, ratio):
    """torchvision RandomResizedCrop.get_params -> int32 (top, left, h, w)."""
    return crop_box_from_uniform(jax.random.uniform(key, (CROP_UNIFORMS,)), height, width,
                                 scale, ratio)


def crop_box_from_uniform(u, height: int, width: int, scale, ratio):
    """``crop_box`` from ``CROP_UNIFORMS`` U(0, 1) numbers (one RNG call per example)."""
    a = CROP_ATTEMPTS
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:a])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(lo + (hi - lo) * u[a:2 * a])
    w = jnp.round(jnp.sqrt(area * aspect))
    h = jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = jnp.argmax(fits)
    fh, fw = _fallback_box(height, width, ratio)
    h = jnp.where(fits.any(), h[first], fh).astype(jnp.int32)
    w = jnp.where(fits.any(), w[first], fw).astype(jnp.int32)
    top = jnp.floor(u[2 * a] * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[2 * a + 1] * (width - w + 1)).astype(jnp.int32)
    top = jnp.where(fits.any(), top, (height - h) // 2)
    left = jnp.where(fits.any(), left, (width - w) // 2)
    return top, left, h, w


def _fallback_box(height, width, ratio):
    """torchvision's fallback: the whole image, clamped to the ratio range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return round(width / ratio[0]), width
    if in_ratio > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def _cubic(x, a=-0.5):
    x = jnp.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return jnp.where(x <= 1.0, near, jnp.where(x < 2.0, far, 0.0))


def resize_weights(in_size: int, out_size: int, start, length):
    """[out_size, in_size] bicubic weights mapping pixels [start, start+length) to out_size.

    Output pixel o samples input coordinate c_o = start + (o + 0.5) * s with
    s = length / out_size; input pixel t has weight cubic((t + 0.5 - c_o) /
    max(s, 1)) (the kernel is stretched when downscaling: antialiasing), zero
    outside the box, rows normalised to sum 1 (PIL ``ImagingResample``).
    """
    start = jnp.asarray(start, jnp.float32)
    length = jnp.asarray(length, jnp.float32)
    s = length / out_size
    centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * s
    t = jnp.arange(in_size, dtype=jnp.float32)
    w = _cubic((t[None, :] + 0.5 - centres[:, None]) / jnp.maximum(s, 1.0))
    w = jnp.where((t >= start) & (t < start + length), w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def resized_crop(image, box, size: int):
    """float [H,W,C] -> [size,size,C]: the box (top, left, h, w) resized bicubically."""
    top, left, h, w = box
    wy = resize_weights(image.shape[0], size, top, h)
    wx = resize_weights(image.shape[1], size, left, w)
    return jnp.einsum("oh,hwc,pw->opc", wy, image, wx)


# ----------------------------------------------------------------- colour

def grayscale(x):
    """[..., 3] -> [..., 1] luma (ITU-R 601-2)."""
    return jnp.sum(x * jnp.asarray(LUMA, x.dtype), axis=-1, keepdims=True)


def adjust_brightness(x, f):
    return jnp.clip(x * f, 0.0, 1.0)


def adjust_contrast(x, f):
    return jnp.clip(f * x + (1.0 - f) * jnp.mean(grayscale(x)), 0.0, 1.0)


def adjust_saturation(x, f):
    return jnp.clip(f * x + (1.0 - f) * grayscale(x), 0.0, 1.0)


def rgb_to_hsv(x):
    """torchvision ``_rgb2hsv``: h, s, v in [0, 1]."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = jnp.max(x, axis=-1)
    minc = jnp.min(x, axis=-1)
    equal = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(equal, 1.0, maxc)
    crd = jnp.where(equal, 1.0, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def hsv_to_rgb(h, s, v):
    """torchvision ``_hsv2rgb``."""
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = jnp.mod(i.astype(jnp.int32), 6)
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    sel = [i == k for k in range(6)]
    pick = lambda *vals: jnp.select(sel, vals)
    return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p),
                      pick(p, p, t, v, v, q)], axis=-1)


def adjust_hue(x, f):
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb(jnp.mod(h + f, 1.0), s, v)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# Other colour semantics (``view_config.color_ops``). The factors are drawn as
# torchvision's (b, c, s in [1 - x, 1 + x], hue delta in [-h, h]); each family
# maps them onto its own operations, every op clipping to [0, 1] as the
# reference code clips after each op.

def adjust_contrast_per_channel(x, f):
    """tf.image.adjust_contrast / BYOL ``adjust_contrast``: each channel about its own mean."""
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    return jnp.clip(f * (x - mean) + mean, 0.0, 1.0)


def adjust_saturation_hsv(x, f):
    """tf.image.adjust_saturation / BYOL: S <- clip(S * f, 0, 1) in HSV."""
    h, s, v = rgb_to_hsv(x)
    return jnp.clip(hsv_to_rgb(h, jnp.clip(s * f, 0.0, 1.0), v), 0.0, 1.0)


def adjust_brightness_additive(x, f):
    """BYOL ``adjust_brightness``: x + delta with delta = f - 1 ~ U(-b, b)."""
    return jnp.clip(x + (f - 1.0), 0.0, 1.0)


COLOR_OPS = {
    # torchvision ColorJitter (BT, VICReg, solo-learn): blends with black, the grey
    # image's mean, and the grey image.
    "torchvision": JITTER_OPS,
    # google-research/simclr tf2/data_util.py color_jitter_rand (impl 'simclrv2'):
    # multiplicative brightness, tf.image contrast, saturation and hue.
    "tf": (adjust_brightness, adjust_contrast_per_channel, adjust_saturation_hsv, adjust_hue),
    # deepmind-research byol/utils/augmentations.py _color_transform_single_image.
    "byol": (adjust_brightness_additive, adjust_contrast_per_channel, adjust_saturation_hsv,
             adjust_hue),
}


def color_ops_name(view_config) -> str:
    """The view's ``color_ops`` ('torchvision' when absent), checked."""
    name = view_config.get("color_ops", "torchvision")
    if name not in COLOR_OPS:
        raise ValueError(f"color_ops={name!r} is not supported; use one of "
                         f"{sorted(COLOR_OPS)} (config.data.augment.viewN.color_ops).")
    return name


def color_jitter(x, factors, order, active=(True, True, True, True), ops: str = "torchvision"):
    """Applies op ``order[i]`` with ``factors[order[i]]`` for i = 0..3 (one example).

    ``ops`` names the colour semantics (``COLOR_OPS``). ``active[j]`` False
    (strength 0 in the config) makes op j the identity without computing it.
    """
    table = COLOR_OPS[ops]
    branches = [(lambda y, j=j: table[j](y, factors[j])) if active[j]
                else (lambda y: y) for j in range(4)]
    return lax.fori_loop(0, 4, lambda i, y: lax.switch(order[i], branches, y), x)


def gaussian_blur(x, sigma, ksize: int):
    """float [B,H,W,C], sigma [B] -> blurred, reflect padding, separable lax.conv.

    The batch and channels are folded into one depthwise convolution
    (feature_group_count = B*C), so each example has its own kernel.
    """
    b, hgt, wid, c = x.shape
    r = ksize // 2
    taps = jnp.arange(ksize, dtype=jnp.float32) - r
    k = jnp.exp(-taps[None, :] ** 2 / (2.0 * sigma[:, None] ** 2))
    k = k / jnp.sum(k, axis=1, keepdims=True)                     # [B, K]
    k = jnp.repeat(k, c, axis=0).T                                 # [K, B*C]
    y = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    y = y.transpose(1, 2, 0, 3).reshape(1, hgt + 2 * r, wid + 2 * r, b * c)
    dn = ("NHWC", "HWIO", "NHWC")
    y = lax.conv_general_dilated(y, k.reshape(ksize, 1, 1, b * c), (1, 1), "VALID",
                                 dimension_numbers=dn, feature_group_count=b * c)
    y = lax.conv_general_dilated(y, k.reshape(1, ksize, 1, b * c), (1, 1), "VALID",
                                 dimension_numbers=dn, feature_group_count=b * c)
    return y.reshape(hgt, wid, b, c).transpose(2, 0, 1, 3)


def solarize(x, threshold):
    return jnp.where(x >= threshold, 1.0 - x, x)


# ----------------------------------------------------------------- one view

def factor_range(strength):
    """torchvision ColorJitter's factor range for brightness, contrast, saturation."""
    return (max(0.0, 1.0 - strength), 1.0 + strength)


def sample_params(key, view_config, height: int, width: int, crop: bool = True):
    """Random parameters of one example's view (the distributions of the module doc).

    All are functions of one vector of U(0, 1) draws: a single RNG call per
    example keeps the vmapped program small to compile.
    """
    v = view_config
    u = jax.random.uniform(key, (PARAM_UNIFORMS + CROP_UNIFORMS,))
    scaled = lambda x, lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * x
    p = {
        "flip": u[0] < v.flip_prob,
        "jitter": u[1] < v.jitter_prob,
        "gray": u[2] < v.grayscale_prob,
        "blur": u[3] < v.blur_prob,
        "solarize": u[4] < v.solarize_prob,
        "sigma": scaled(u[5], v.blur_sigma),
        "factors": jnp.stack([scaled(u[6], factor_range(v.brightness)),
                              scaled(u[7], factor_range(v.contrast)),
                              scaled(u[8], factor_range(v.saturation)),
                              scaled(u[9], (-v.hue, v.hue))]),
        "order": jnp.argsort(u[10:14]).astype(jnp.int32),   # uniform random permutation
    }
    if crop:
        p["box"] = jnp.stack(crop_box_from_uniform(u[PARAM_UNIFORMS:], height, width,
                                                   v.crop_scale, v.crop_ratio))
    return p


def example_keys(key, ids, view_index: int):
    """[B] keys of one view: fold_in(fold_in(key, id), view_index) for each example id.

    With ``key`` the step key (a function of (seed, step)) and ``ids`` the
    examples' global dataset indices, every example's randomness is a
    function of (seed, step, example) only: not of the device or process
    that computes it, nor of the number of devices (docs/data.md).
    """
    ids = jnp.asarray(ids).astype(jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), view_index))(ids)


def view(images, key, view_config, data_config, size=None, crop: bool = True, keys=None):
    """uint8 [B,H,W,3] -> float32 [B,size,size,3] normalised view.

    ``crop=False`` (placement 'split') takes images already cropped and
    flipped on the host and applies the rest. Randomness is per example:
    ``keys`` ([B] keys, e.g. from ``example_keys``) when given, else ``key``
    is split into B example keys (then it depends on the batch layout).
    """
    b, height, width, _ = images.shape
    size = size or data_config.image_size
    v = view_config
    if keys is None:
        keys = jax.random.split(key, b)
    params = jax.vmap(lambda k: sample_params(k, v, height, width, crop))(keys)
    x = images.astype(jnp.float32) / 255.0
    if crop:
        x = jax.vmap(resized_crop, in_axes=(0, 0, None))(
            x, tuple(params["box"].T), size)
        x = jnp.where(params["flip"][:, None, None, None], x[:, :, ::-1], x)
        x = jnp.clip(x, 0.0, 1.0)
    if v.jitter_prob > 0:
        active = (v.brightness > 0, v.contrast > 0, v.saturation > 0, v.hue > 0)
        ops = color_ops_name(v)
        jittered = jax.vmap(lambda y, f, o: color_jitter(y, f, o, active, ops))(
            x, params["factors"], params["order"])
        x = jnp.where(params["jitter"][:, None, None, None], jittered, x)
    if v.grayscale_prob > 0:
        x = jnp.where(params["gray"][:, None, None, None],
                      jnp.broadcast_to(grayscale(x), x.shape), x)
    if v.blur_prob > 0:
        blurred = gaussian_blur(x, params["sigma"], blur_kernel_size(x.shape[1]))
        x = jnp.where(params["blur"][:, None, None, None], blurred, x)
    if v.solarize_prob > 0:
        x = jnp.where(params["solarize"][:, None, None, None],
                      solarize(x, v.solarize_threshold), x)
    return normalize(x, data_config)


def two_views(images, key, data_config, crop: bool = True, ids=None):
    """(view1, view2) of uint8 images with the two views' configs.

    ``ids`` (the examples' global indices): per-example keys
    ``example_keys(key, ids, 1 | 2)``, so the views do not depend on where
    or beside which other examples an example is computed.
    """
    aug = data_config.augment
    if ids is not None:
        return tuple(view(images, None, cfg, data_config, crop=crop,
                          keys=example_keys(key, ids, k))
                     for k, cfg in ((1, aug.view1), (2, aug.view2)))
    k1, k2 = jax.random.split(key)
    return (view(images, k1, aug.view1, data_config, crop=crop),
            view(images, k2, aug.view2, data_config, crop=crop))

