#!/usr/bin/env bash
# Regenerate requirements-dev.lock (everything the tests need) and requirements.lock (what the
# image needs, pinned to the same versions) from pyproject.toml: every file pinned by hash, one
# universal resolution for Python 3.11 (environment markers kept, so the same lock installs on
# Debian's 3.11.2 and the image's newest 3.11). Run after changing dependencies in
# pyproject.toml; commit both files.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check uv
cp "$REPO/pyproject.toml" "$work/"
cd "$work"
compile() { "$work/venv/bin/uv" pip compile -q --universal --python-version 3.11 --generate-hashes --no-header "$@" pyproject.toml; }
compile --extra test -o requirements-dev.lock
compile -c requirements-dev.lock -o requirements.lock
cp requirements-dev.lock requirements.lock "$REPO/"
echo "wrote $REPO/requirements-dev.lock and $REPO/requirements.lock"
