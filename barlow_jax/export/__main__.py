"""``python -m barlow_jax.export ...``: see barlow_jax/export/command.py."""

import sys

from barlow_jax.export.command import main

sys.exit(main())
