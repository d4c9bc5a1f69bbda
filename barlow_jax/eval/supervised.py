"""Where the linear probe and fine-tuning start: the run to evaluate and the command line.

* ``resolve_run``: the pretraining config, weights, mesh and splits of ``--workdir``.
* ``cli``: ``python -m barlow_jax.eval.{linear,semisup}``, framed as
  ``barlow_jax.main``: the flags are defined, parsed by ``cli.parse_flags``,
  and only then is the saved config ``DIR/config.json`` read. The flags:
  ``--workdir`` (required); ``--config.KEY=VALUE`` for any key declared in
  ``barlow_jax/defaults.py``, applied to the saved config after it is
  loaded (only the keys given on the command line); ``--<section>.KEY=VALUE``
  for the evaluation's own settings; the multi-process flags.

The maths is ``sgd.py``; the epoch loop (resume, checkpoints, signals,
results JSON) is ``epochs.py``.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict


def resolve_run(workdir: str, section, config=None, variables=None, pretrain_step=None,
                mesh=None):
    """What the linear probe and fine-tuning start from.

    Loads ``variables`` (at ``section.step``, latest when < 0) and the saved
    config from ``workdir`` unless given; a given ``config`` (e.g. with CLI
    overrides) replaces the saved one. Returns (config, variables,
    pretrain_step, mesh, train_split, test_split); the splits default to the
    pretraining config's ``data.split`` / ``data.eval_split``.
    """
    from barlow_jax import parallel
    if variables is None:
        from barlow_jax import checkpointing
        saved, variables, pretrain_step = checkpointing.load_variables(
            workdir, None if int(section.step) < 0 else int(section.step))
        config = config if config is not None else saved
    mesh = mesh if mesh is not None else parallel.make_mesh()
    train_split = section.train_split or config.data.split
    test_split = section.test_split or config.data.eval_split
    return config, variables, pretrain_step, mesh, train_split, test_split


def define_flags(section: str, default_section, extra_flags: Callable[[], None] = lambda: None):
    """Defines --workdir, --config.KEY, --<section>.KEY, ``extra_flags()`` and the
    multi-process flags; an unknown KEY is one sentence and exit status 2."""
    from absl import flags
    from ml_collections import config_flags
    from barlow_jax import defaults, distributed
    from barlow_jax.cli import fail, unknown_key_message
    try:  # config_flags reads the --config.* / --section.* overrides while defining
        flags.DEFINE_string("workdir", None, "Directory of the pretraining run.")
        config_flags.DEFINE_config_dict(
            "config", defaults.get_config(),
            "Overrides of the pretraining config saved in DIR/config.json.")
        config_flags.DEFINE_config_dict(section, default_section, f"{section} settings.")
        extra_flags()
        distributed.define_flags(flags)  # the checkpoint loads on this run's processes/devices
    except (AttributeError, KeyError) as e:  # an override names a key that does not exist
        fail(unknown_key_message(e, f"--config.* / --{section}.*",
                                 "see docs/evaluation.md for the keys"), 2, e)


def saved_config_with_overrides(workdir: str, config_flag):
    """``DIR/config.json`` with the --config.KEY=VALUE flags given on the command line."""
    from barlow_jax import checkpointing
    config = checkpointing.load_config(workdir)
    config.update_from_flattened_dict(dict(config_flag.override_values))
    return config


def _main(argv, *, section: str, run: Callable[..., Dict]):
    from absl import app, flags, logging
    from barlow_jax import distributed
    from barlow_jax.checkpointing import CheckpointSaveError
    from barlow_jax.cli import fail
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if not f.workdir:
        fail("pass --workdir=DIR, the directory of a pretraining run.", 2)
    try:
        distributed.initialize_from_flags(f)
    except distributed.DistributedInitError as e:
        fail(str(e), 1, e)
    try:
        config = saved_config_with_overrides(f.workdir, f["config"])
        run(workdir=f.workdir, config=config, flags=f, **{section: f[section].value})
    except (ValueError, FileNotFoundError, CheckpointSaveError) as e:
        fail(str(e), 1, e)


def cli(section: str, default_section, run: Callable[..., Dict],
        extra_flags: Callable[[], None] = lambda: None):
    """Defines the flags, parses them (``cli.parse_flags``) and runs ``run``.

    Args:
      section: the name of the evaluation's settings flag, e.g. 'linear'.
      default_section: the ConfigDict of its defaults.
      run: called inside absl's app.run as ``run(workdir=..., config=...,
        flags=FLAGS, <section>=...)``, ``config`` being the saved pretraining
        config with the --config.* overrides applied.
      extra_flags: defines further flags (e.g. semisup's --fraction).

    ValueError, FileNotFoundError and CheckpointSaveError become one line on
    stderr and exit status 1.
    """
    from absl import app
    from barlow_jax import cli as cli_lib
    define_flags(section, default_section, extra_flags)
    app.run(functools.partial(_main, section=section, run=run), flags_parser=cli_lib.parse_flags)
