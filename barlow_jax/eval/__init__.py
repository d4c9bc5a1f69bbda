"""Evaluation of learned representations.

* ``knn``: weighted kNN classifier and the ``KnnMonitor`` the trainer runs.
* ``features``: labelled eval sets and sharded inference-mode embedding.
* ``linear``: linear probe on the frozen backbone (``python -m barlow_jax.eval.linear``).
* ``semisup``: fine-tuning on 1% / 10% of the labels (``python -m barlow_jax.eval.semisup``).
* what those two share: ``sgd`` (torch-SGD, per-epoch cosine, masked loss and
  top-k), ``epochs`` (the epoch loop: resume, checkpoints, signals, results
  JSON) and ``supervised`` (the run to evaluate, command-line flags).

Submodules are imported on use (the collapse statistics of the training step are
``barlow_jax.health``).
See docs/evaluation.md for protocols, commands and outputs.
"""
