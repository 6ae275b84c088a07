#!/usr/bin/env bash
# Install and start everything the tests need on a fresh Debian/Ubuntu machine, then run them.
#   scripts/test.sh                 # the whole suite (what CI runs)
#   scripts/test.sh tests/unit -x   # extra arguments go to pytest
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRKIT_VENV="${DRKIT_VENV:-/opt/drkit/venv}"
bash "$REPO/scripts/install.sh"
cd "$REPO"
# Servers the integration tests need and that take a build: fetched into the cache up front
# (the fixtures start them; a server that cannot start fails the run, it is never skipped).
"$DRKIT_VENV/bin/drkit" sandbox install postgres redis mongodb cassandra s3-versitygw
"$DRKIT_VENV/bin/ruff" check .
if [[ $# -eq 0 ]]; then
  set -- tests
fi
# install.sh builds the Redis restore's C fast path; the suite fails if that build silently did not.
export DRKIT_REQUIRE_NATIVE=1
exec "$DRKIT_VENV/bin/python" -m pytest -p no:cacheprovider -ra "$@"
