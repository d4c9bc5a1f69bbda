"""Evaluation resize: torchvision Resize(int) truncates the long side (not round)."""

import numpy as np
from PIL import Image

from barlow_jax.data import evaluation


def test_long_side_is_truncated_like_torchvision():
    # torchvision _compute_resized_output_size: new_long = int(size * long / short)
    assert evaluation.resize_shorter_size(375, 499, 256) == (256, 340)   # 340.65 -> 340
    assert evaluation.resize_shorter_size(499, 375, 256) == (340, 256)
    assert evaluation.resize_shorter_size(300, 300, 256) == (256, 256)
    assert round(256 * 499 / 375) == 341   # what rounding gave


def test_resize_center_crop_is_pil_bilinear_then_centre_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (375, 499, 3), dtype=np.uint8)
    got = evaluation.transform(img, 224, "test")
    ref = np.asarray(Image.fromarray(img).resize((340, 256), Image.BILINEAR))
    top, left = int(round((256 - 224) / 2.0)), int(round((340 - 224) / 2.0))
    np.testing.assert_array_equal(got, ref[top:top + 224, left:left + 224])
