"""Writes a PNG grid of training images with their two augmented views.

    python -m barlow_jax.data.preview --config=configs/bt_cifar10.py --out=views.png [--num=8]

One row per image: the stored image, view 1, view 2, each made by the code
path of the config's placement (host: TF; split: TF crop + JAX colour;
device: JAX), de-normalised for display. Small images are enlarged with
nearest-neighbour so single pixels stay visible.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from barlow_jax.data import normalize


def define_flags():
    """The command-line flags; defined only when the module runs as a program."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string("out", "views.png", "Output PNG.")
    flags.DEFINE_integer("num", 8, "Number of images.")
    flags.DEFINE_integer("seed", 0, "Picks the images and the views.")
    flags.DEFINE_integer("cell", 128, "Displayed size of each image, pixels.")


def sample_images(data_config, num: int, seed: int):
    """``num`` random uint8 images of the training split, fitted to one common size."""
    from barlow_jax.data import folder
    from barlow_jax.data.sources import IndexedSource, open_source
    source = open_source(data_config, data_config.split)
    if not isinstance(source, IndexedSource):   # TFDS: the first images of the stream
        from barlow_jax.data.sources import tfds_dataset
        images = [im for im, _ in tfds_dataset(data_config, data_config.split, decode=True)
                  .take(num).as_numpy_iterator()]
    else:
        rng = np.random.default_rng(seed)
        ids = rng.choice(source.num_examples, min(num, source.num_examples), replace=False)
        images = [source.images[i] if source.images is not None
                  else folder.read_rgb(source.paths[i]) for i in ids]
    if len({im.shape for im in images}) > 1:
        side = round(data_config.image_size * 8 / 7)
        images = [folder.resize_center_crop(im, side, side) for im in images]
    return np.stack(images)


def make_views(data_config, images: np.ndarray, seed: int):
    """(view1, view2) float [N,S,S,3] in [0,1] by the config's placement."""
    import jax
    import jax.numpy as jnp
    from barlow_jax.data import augment_jax
    from barlow_jax.data.pipeline import resolve_placement
    placement = resolve_placement(data_config.placement)
    aug = data_config.augment
    key1, key2 = jax.random.split(jax.random.key(seed))
    views = []
    for k, (cfg, key) in enumerate(((aug.view1, key1), (aug.view2, key2))):
        if placement == "device":
            v = augment_jax.view(jnp.asarray(images), key, cfg, data_config)
        else:
            from barlow_jax.data.tensorflow_env import import_tensorflow
            tf = import_tensorflow()
            from barlow_jax.data import augment_tf
            seeds = [tf.constant([seed, 2 * i + k], tf.int64) for i in range(len(images))]
            if placement == "host":
                v = augment_tf.full_views(images, seeds, cfg, data_config).numpy()
            else:
                crops = np.stack([augment_tf.crop_and_flip_uint8(
                    tf.constant(im), s, cfg, data_config.image_size).numpy()
                    for im, s in zip(images, seeds)])
                v = augment_jax.view(jnp.asarray(crops), key, cfg, data_config, crop=False)
        views.append(normalize.to_unit(v, data_config))
    return views[0], views[1], placement


def grid(images, view1, view2, cell: int, title: str) -> Image.Image:
    """Rows of (image, view 1, view 2) cells under a one-line header."""
    header, pad = 18, 4
    n = len(images)
    canvas = Image.new("RGB", (3 * cell + 4 * pad, header + n * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for col, name in enumerate(("image", "view 1", "view 2")):
        draw.text((pad + col * (cell + pad) + 2, 3), name, fill="black")
    draw.text((canvas.width - pad - draw.textlength(title), 3), title, fill="gray")
    for row in range(n):
        for col, im in enumerate((images[row], view1[row] * 255, view2[row] * 255)):
            pil = Image.fromarray(np.asarray(np.round(im), np.uint8))
            resample = Image.NEAREST if max(pil.size) <= cell // 2 else Image.BICUBIC
            pil = pil.resize((cell, cell), resample)
            canvas.paste(pil, (pad + col * (cell + pad), header + pad + row * (cell + pad)))
    return canvas


def write_preview(config, out: str, num: int = 8, seed: int = 0, cell: int = 128) -> str:
    images = sample_images(config.data, num, seed)
    view1, view2, placement = make_views(config.data, images, seed)
    grid(images, view1, view2, cell, f"placement {placement}").save(out)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    if flags.FLAGS.config is None:
        raise app.UsageError("--config is required.")
    try:
        out = write_preview(flags.FLAGS.config, flags.FLAGS.out, flags.FLAGS.num,
                            flags.FLAGS.seed, flags.FLAGS.cell)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote {out}")


if __name__ == "__main__":
    from barlow_jax.cli import parse_flags
    define_flags()
    app.run(main, flags_parser=parse_flags)
