#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml: `bash tools/lock.sh` (after any change to the
# dependencies). Extra arguments go to uv: `bash tools/lock.sh --upgrade` moves every pin to the
# newest release allowed, `--upgrade-package NAME` just one; without them, pins that still satisfy
# pyproject.toml are kept.
#
#   requirements.txt      what the image installs: the runtime dependencies
#   requirements-dev.txt  what CI and developers install: runtime + every extra (dev, embedded...),
#                         constrained to the runtime pins (CI tests the versions the image ships)
#
# Both are universal (one file for Python 3.11 to 3.13 on every platform; markers pick the
# wheels) and carry hashes, so pip installs them in hash-checking mode. tests/test_deploy.py
# (tools/check_lock.py) fails when pyproject.toml and the locks disagree.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python -m uv); fi
common=(--universal --python-version 3.11 --generate-hashes --quiet
        --custom-compile-command "bash tools/lock.sh")

"${UV[@]}" pip compile "${common[@]}" "$@" pyproject.toml -o requirements.txt
"${UV[@]}" pip compile "${common[@]}" "$@" pyproject.toml --all-extras \
    -c requirements.txt -o requirements-dev.txt
