"""Flag parsing and error reporting shared by the command-line entry points.

Every CLI turns a fault into one sentence on stderr and an exit code; the
traceback is printed too only with ``--verbose`` on the command line or
``BARLOW_JAX_VERBOSE=1`` in the environment (``verbose()`` / ``fail()``).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback

from absl import flags


def verbose() -> bool:
    """True when tracebacks were asked for (``--verbose`` or ``BARLOW_JAX_VERBOSE=1``)."""
    if os.environ.get("BARLOW_JAX_VERBOSE", "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        return bool(flags.FLAGS["verbose"].value)
    except (KeyError, AttributeError, flags.Error):
        return False


def print_error(message: str, error: BaseException = None) -> None:
    """Prints ``error: message`` on stderr, after the traceback of ``error`` when verbose."""
    if error is not None and verbose():
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    text = message if message.startswith(("error:", "warning:")) else f"error: {message}"
    print(text, file=sys.stderr, flush=True)


def fail(message: str, code: int = 1, error: BaseException = None):
    """Prints ``error: message`` (plus the traceback when verbose) and exits with ``code``."""
    print_error(message, error)
    sys.exit(code)


def argv_value(argv, name: str):
    """The value of ``--name=V`` or ``--name V`` in ``argv`` before flags are parsed, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's RESOURCE_EXHAUSTED (device memory) or a host MemoryError."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error) or (
        "out of memory" in str(error).lower() and type(error).__name__ in (
            "XlaRuntimeError", "JaxRuntimeError", "RuntimeError"))


def unknown_key_message(error: Exception, flag_prefixes: str, keys_doc: str) -> str:
    """One sentence for ml_collections' 'no such key' error, with its suggestion."""
    text = str(error)
    key = re.search(r"\w+", text)
    hint = re.search(r'Did you mean \\*"([\w.]+)', text)
    return (f"error: unknown config key {key.group(0) if key else text!r} in the "
            f"{flag_prefixes} flags" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + f"; {keys_doc}.")


def _flat_keys(d, prefix=""):
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat_keys(v, f"{prefix}{k}.")
        out.append(f"{prefix}{k}")
    return out


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def undeclared_keys(config, declared) -> list:
    """[(key, suggestion or None)] of ``config``'s keys that ``declared`` (base) lacks."""
    known = set(_flat_keys(declared.to_dict()))
    sections = {k for k in known if isinstance(_get(declared.to_dict(), k), dict)}
    out = []
    for key in _flat_keys(config.to_dict()):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if key in known or (parent and parent not in known):
            continue  # declared, or reported at its parent
        if parent and parent not in sections:
            continue  # inside a declared value that is itself a dict (e.g. data.arrays)
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        out.append((key, near[0] if near else None))
    return out


def _declared_base():
    """The declared config (``barlow_jax.defaults.get_config()``)."""
    from barlow_jax import defaults
    return defaults.get_config()


def check_config_file_keys(config, path: str):
    """Refuses a config file that sets a key barlow_jax/defaults.py does not declare (a typo)."""
    declared = _declared_base()
    if declared is None:
        return
    bad = undeclared_keys(config, declared)
    if bad:
        key, near = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(k for k, _ in bad[1:4])})" if bad[1:] else ""
        raise KeyError(f"config file {path} sets {key!r}, which barlow_jax/defaults.py does not declare"
                       + (f" (did you mean {near!r}?)" if near else "") + more
                       + "; fix the name, or declare a new key in barlow_jax/defaults.py")


def _config_file_path(argv) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":")[0]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
    return "the --config file"


def parse_flags(argv, flag_values: flags.FlagValues = None):
    """absl's parser, but a bad --config file or --config.KEY becomes one clear sentence.

    Args:
      argv: the command line, program name first.
      flag_values: where the flags are defined; None for absl's global
        ``flags.FLAGS`` (a CLI callable in-process, like ``barlow_jax.export``,
        defines them on its own ``flags.FlagValues()``).

    Returns:
      The arguments that are not flags, program name first. A bad flag
      prints one sentence on stderr and exits with status 2.
    """
    fv = flags.FLAGS if flag_values is None else flag_values
    if "verbose" not in fv:
        flags.DEFINE_bool("verbose", False, "Print tracebacks with error messages.", flag_values=fv)
    path = _config_file_path(argv)
    if any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv[1:]):
        os.environ["BARLOW_JAX_VERBOSE"] = "1"  # parse errors happen before the flag is read
    try:
        rest = fv(argv)
        if "config" in fv and fv["config"].present:
            config = fv.config  # a broken or missing file fails here, not later
            _ = config.to_dict()
            check_config_file_keys(config, path)
        return rest
    except SyntaxError as e:
        fail(f"the config file {e.filename or path}:{e.lineno} has a syntax error "
             f"({e.msg}); fix that line.", 2, e)
    except OSError as e:
        first = str(e).split("\n")
        detail = next((line.strip() for line in first if "Errno" in line or "rror" in line), "")
        fail(f"could not load the config file given by --config ({detail}); pass "
             f"--config=configs/<name>.py with a file from configs/.", 2, e)
    except (AttributeError, KeyError) as e:  # ml_collections: the key does not exist
        text = str(e).strip("'\"")
        if "has no attribute 'get_config'" in str(e):
            fail(f"the config file {path} defines no get_config(); add "
                 f"`def get_config(): ...` returning a ConfigDict (see configs/smoke.py).", 2, e)
        if text.startswith("config file "):
            fail(text + ".", 2, e)
        fail(unknown_key_message(e, "--config.*", "the keys are declared in "
                                 "barlow_jax/defaults.py (docs/config.md)"), 2, e)
    except flags.Error as e:
        fail(str(e), 2, e)
    except Exception as e:  # the config file's own code raised (e.g. its ValueError)
        fail(f"the config file {path} failed to load ({type(e).__name__}: {e}).", 2, e)
