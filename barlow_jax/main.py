"""Command line: python -m barlow_jax.main --config=configs/bt_in1k.py --workdir=DIR [--config.key=value]

Several processes (docs/distributed.md): add ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or the ``JAX_*`` variables), or set
``BARLOW_JAX_DISTRIBUTED=1`` on a cluster JAX detects (SLURM, Open MPI, TPU, Kubernetes).
"""

from __future__ import annotations

import os
import sys

# TensorFlow (tf.data placements only) prints C++ start-up notices unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from barlow_jax import distributed  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs "
                    "(local, or any path orbax supports, e.g. gs://bucket/run).")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE.")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from barlow_jax.cli import fail
    try:  # before anything touches a device
        distributed.initialize_from_flags(flags.FLAGS)
    except distributed.DistributedInitError as e:
        fail(str(e), 1, e)
    from barlow_jax import train
    from barlow_jax.checkpointing import CheckpointSaveError
    try:
        train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except distributed.PeerLost as e:
        distributed.exit_now(str(e), 1)  # atexit would wait for the dead process
    except (ValueError, FileNotFoundError, PermissionError, train.TrainingDiverged,
            CheckpointSaveError) as e:
        fail(str(e), 1, e)


if __name__ == "__main__":
    from barlow_jax import supervisor
    if supervisor.wants_supervision(sys.argv):  # one sentence when JAX's runtime aborts
        sys.exit(supervisor.supervise("barlow_jax.main", sys.argv))
    from barlow_jax.cli import parse_flags
    app.run(main, flags_parser=parse_flags)
