"""The command line ``python -m barlow_jax.export`` (see barlow_jax/export/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from barlow_jax.export.formats import FORMATS


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m barlow_jax.export", description=(
        "Export a barlow_jax checkpoint as a torchvision ResNet state dict, or import one."))
    ap.add_argument("--workdir", help="training run directory (holds checkpoints/<step>/)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--out", required=True, help=".pth to write (export) or .msgpack (import); "
                    "a folder for --format=timm_hub")
    ap.add_argument("--format", default="pth", choices=FORMATS,
                    help="export file format (docs/export.md)")
    ap.add_argument("--full", action="store_true",
                    help="also write projector/predictor/target (keys in docs/export.md)")
    ap.add_argument("--import", dest="import_path", default=None,
                    help="torchvision .pth to convert into Flax variables (msgpack)")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks with errors")
    from barlow_jax import distributed  # a checkpoint of any topology loads on this one
    distributed.add_argparse_flags(ap)
    args = ap.parse_args(argv)
    if args.verbose:
        os.environ["BARLOW_JAX_VERBOSE"] = "1"
    if (args.workdir is None) == (args.import_path is None):
        ap.error("pass exactly one of --workdir (export) and --import (import)")
    try:
        if args.workdir is not None:
            distributed.initialize_from_flags(args)
    except distributed.DistributedInitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from barlow_jax.export import files, formats
    try:
        if args.import_path is not None:
            files.import_pth(args.import_path, args.out)
        elif args.format == "safetensors":
            formats.export_safetensors(args.workdir, args.out, step=args.step, full=args.full)
        elif args.format == "timm_hub":
            if args.full:
                ap.error("--full is not available with --format=timm_hub (backbone only)")
            formats.export_timm_hub(args.workdir, args.out, step=args.step)
        else:
            files.export_workdir(args.workdir, args.out, step=args.step, full=args.full)
    except (FileNotFoundError, ValueError, ImportError) as e:
        from barlow_jax.cli import verbose
        if verbose():
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
