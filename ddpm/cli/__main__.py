"""``python -m ddpm.cli``: the ``ddpm`` command."""

import sys

from . import console_main

sys.exit(console_main())
