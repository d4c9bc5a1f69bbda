"""Command line: python -m barlow_jax.main --config=configs/bt_in1k.py --workdir=DIR [--config.key=value]"""

from __future__ import annotations

import os
import sys

# TensorFlow (tf.data placements only) prints C++ start-up notices unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Config files import `from configs import base`: make the repository root importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    import jax
    from barlow_jax import train
    if os.environ.get("BARLOW_JAX_DISTRIBUTED"):
        jax.distributed.initialize()
    try:
        train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError, PermissionError, train.TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    from barlow_jax.cli import parse_flags
    app.run(main, flags_parser=parse_flags)
