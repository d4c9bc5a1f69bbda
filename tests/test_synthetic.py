"""The synthetic source's splits share their classes (so smoke evaluations mean something)."""

import numpy as np

from barlow_jax.data.synthetic import make_synthetic


def test_test_split_has_the_train_classes():
    xtr, ytr = make_synthetic(400, 16, num_classes=10, seed=0)
    xte, yte = make_synthetic(200, 16, num_classes=10, seed=0, split_seed=1)
    assert not np.array_equal(xtr[:200], xte)            # other samples ...
    a = xtr.reshape(len(xtr), -1).astype(np.float32)
    b = xte.reshape(len(xte), -1).astype(np.float32)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    pred = ytr[np.argmax(b @ a.T, axis=1)]                 # ... of the same classes
    assert (pred == yte).mean() > 0.5, (pred == yte).mean()  # chance is 0.1


def test_deterministic():
    a = make_synthetic(20, 8, seed=3, split_seed=1)
    b = make_synthetic(20, 8, seed=3, split_seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
