#!/usr/bin/env bash
# drkit end to end on the embedded default, on a fresh Debian/Ubuntu machine (run as root):
# installs what it needs, then backup -> disaster -> point-in-time restore -> verify -> RPO/RTO.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRKIT_VENV="${DRKIT_VENV:-/opt/drkit/venv}"
bash "$REPO/scripts/install.sh"
exec "$DRKIT_VENV/bin/python" "$REPO/scripts/demo.py" "$@"
