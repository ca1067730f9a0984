"""The ``ddpm`` executable (pyproject's script entry).

Every GPU job of the workflow starts as ``ddpm claim-gpus N -- ddpm …`` (:mod:`ddpm.gpus`), which only takes locks
and replaces itself with the job: it starts here without importing the whole command line (numpy and the sampler
families, ~0.1 s of CPU a job). Every other command goes to :func:`ddpm.cli.console_main`.
"""

from __future__ import annotations

import sys


def console_main() -> int:
    if sys.argv[1:2] == ["claim-gpus"]:
        from .gpus import claim_gpus_main

        return claim_gpus_main(sys.argv[2:])
    from .cli import console_main as command_line

    return command_line()
