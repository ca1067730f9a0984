"""``python -m ddpm.cli``: the ``ddpm`` command."""

import sys

from . import main

sys.exit(main())
