"""Flag parsing shared by the command-line entry points: bad settings in one line."""

from __future__ import annotations

import re
import sys

from absl import flags


def unknown_key_message(error: Exception, flag_prefixes: str, keys_doc: str) -> str:
    """One sentence for ml_collections' 'no such key' error, with its suggestion."""
    text = str(error)
    key = re.search(r"\w+", text)
    hint = re.search(r'Did you mean \\*"([\w.]+)', text)
    return (f"error: unknown config key {key.group(0) if key else text!r} in the "
            f"{flag_prefixes} flags" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + f"; {keys_doc}.")


def parse_flags(argv):
    """absl's parser, but an unknown or mistyped --config.KEY becomes one clear sentence."""
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            _ = flags.FLAGS.config.to_dict()  # a broken or missing file fails here, not later
        return rest
    except OSError as e:
        first = str(e).split("\n")
        detail = next((line.strip() for line in first if "Errno" in line or "rror" in line), "")
        print(f"error: could not load the config file given by --config ({detail}); pass "
              f"--config=configs/<name>.py with a file from configs/.", file=sys.stderr, flush=True)
        sys.exit(2)
    except (AttributeError, KeyError) as e:  # ml_collections: the key does not exist
        print(unknown_key_message(e, "--config.*", "the keys are declared in configs/base.py"),
              file=sys.stderr, flush=True)
        sys.exit(2)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
