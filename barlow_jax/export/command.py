"""The command line ``python -m barlow_jax.export`` (absl flags, framed by barlow_jax/cli.py).

    python -m barlow_jax.export --workdir=DIR [--step=N] --out=resnet50.pth [--full]
    python -m barlow_jax.export --workdir=DIR --format=safetensors --out=resnet50.safetensors
    python -m barlow_jax.export --workdir=DIR --format=timm_hub --out=HUB_DIR
    python -m barlow_jax.export --import=resnet50.pth --out=variables.msgpack

plus ``--coordinator_address/--num_processes/--process_id`` (a checkpoint of
any topology loads on this one) and ``--verbose`` (tracebacks). ``--flag
value`` works as well as ``--flag=value``. A bad command line prints one
sentence and exits with status 2; a failed export or import prints one
sentence and exits with status 1 (docs/export.md).

The flags live on a ``flags.FlagValues`` of their own, made per call, so
that ``main(argv)`` can run several times in one process (the tests do).
"""

from __future__ import annotations

import sys
from typing import List, Optional

from absl import flags

from barlow_jax import cli
from barlow_jax.export.formats import FORMATS

PROG = "python -m barlow_jax.export"
_EXPORT_ONLY = ("step", "full", "format")
_HELP = ("-h", "--help", "--helpshort", "--helpfull")


def _define_flags() -> flags.FlagValues:
    from barlow_jax import distributed

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Training run directory to export (holds "
                        "checkpoints/<step>/; local or gs://...).", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "File to write: the .pth/.safetensors (export), the "
                        ".msgpack (--import), or a folder for --format=timm_hub.", flag_values=fv)
    flags.DEFINE_enum("format", "pth", FORMATS, "Export file format (docs/export.md).",
                      flag_values=fv)
    flags.DEFINE_bool("full", False, "Also write projector/predictor/target (keys in "
                      "docs/export.md).", flag_values=fv)
    flags.DEFINE_string("import", None, "torchvision .pth to convert into Flax variables "
                        "(msgpack) instead of exporting.", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Print tracebacks with error messages.", flag_values=fv)
    distributed.define_flags(flags, flag_values=fv)
    return fv


def _check_usage(fv: flags.FlagValues, rest: List[str]) -> None:
    """One sentence and exit status 2 for a command line that cannot run."""
    if len(rest) > 1:
        cli.fail(f"unexpected arguments {rest[1:]}; every setting is a --flag=value "
                 f"(`{PROG} --help` lists them).", 2)
    if (fv.workdir is None) == (fv["import"].value is None):
        cli.fail("pass exactly one of --workdir=DIR (export a training run's checkpoint) and "
                 "--import=FILE.pth (import a torchvision state dict).", 2)
    if fv.out is None:
        cli.fail("pass --out: the .pth or .safetensors file to write, a folder for "
                 "--format=timm_hub, or the .msgpack file for --import.", 2)
    if fv["import"].value is not None and any(fv[k].present for k in _EXPORT_ONLY):
        given = [f"--{k}" for k in _EXPORT_ONLY if fv[k].present]
        names = " and ".join([", ".join(given[:-1]), given[-1]] if given[1:] else given)
        cli.fail(f"{names} {'apply' if given[1:] else 'applies'} only to exports "
                 f"(--workdir); drop {'them' if given[1:] else 'it'} with --import.", 2)
    if fv.full and fv.format == "timm_hub":
        cli.fail("--full is not available with --format=timm_hub (backbone only); drop --full "
                 "or use --format=safetensors.", 2)


def _run(fv: flags.FlagValues) -> None:
    from barlow_jax.export import files, formats

    if fv["import"].value is not None:
        files.import_pth(fv["import"].value, fv.out)
    elif fv.format == "safetensors":
        formats.export_safetensors(fv.workdir, fv.out, step=fv.step, full=fv.full)
    elif fv.format == "timm_hub":
        formats.export_timm_hub(fv.workdir, fv.out, step=fv.step)
    else:
        files.export_workdir(fv.workdir, fv.out, step=fv.step, full=fv.full)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``python -m barlow_jax.export`` with the flags in ``argv``.

    Args:
      argv: the flags, without the program name, e.g.
        ``['--workdir=DIR', '--out=resnet50.pth']``; None for
        ``sys.argv[1:]``.

    Returns:
      The exit status: 0 when the file was written, 1 when the export or
      import failed (one ``error: ...`` sentence on stderr, plus the
      traceback with ``--verbose``). A command line that cannot run (an
      unknown or malformed flag, a missing --out, ...) prints one sentence
      and raises ``SystemExit(2)``, as every barlow_jax CLI does.
    """
    from barlow_jax import distributed

    argv = sys.argv[1:] if argv is None else list(argv)
    fv = _define_flags()
    if any(a in _HELP for a in argv):
        print(f"Export a barlow_jax checkpoint as a torchvision ResNet state dict (or as "
              f"safetensors / a timm Hub folder), or import one.\n\n{__doc__.split(chr(10) * 2)[1]}"
              f"\n\nflags:{fv.get_help(include_special_flags=False)}")
        return 0
    rest = cli.parse_flags([PROG, *argv], flag_values=fv)
    _check_usage(fv, rest)
    try:
        if fv.workdir is not None:
            distributed.initialize_from_flags(fv)
    except distributed.DistributedInitError as e:
        cli.print_error(str(e), e)
        return 1
    try:
        _run(fv)
    except (FileNotFoundError, ValueError, ImportError) as e:
        cli.print_error(str(e), e)
        return 1
    return 0
