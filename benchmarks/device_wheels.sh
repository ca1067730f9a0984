#!/usr/bin/env bash
# The wheels benchmarks/device_session.sh needs on the GPU machine (Python 3.12, no network there): torch-fidelity
# and diffusers, pure Python, at this project's pins (constraints.txt), and importlib_metadata (diffusers needs it;
# the device image lacks it) at the version this machine's environment has; their other needs are on the image.
# Run here, in the repository root, before the device call that carries .whl (ignored by git through
# .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" constraints.txt | head -1; }
here() { .venv/bin/python -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
    "$(pin torch-fidelity)" "$(pin diffusers)" "$(here importlib_metadata)"
ls -l .whl
