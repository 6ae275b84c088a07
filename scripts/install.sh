#!/usr/bin/env bash
# Set up drkit and the servers its tests use on a fresh Debian/Ubuntu machine.
#
#   scripts/install.sh            # OS packages + virtualenv + drkit (editable) with test extras
#   scripts/install.sh --bench    # also the peers the benchmarks compare against (pgBackRest, restic)
#
# Idempotent and quick when everything is already there: apt runs only for missing packages
# (with one `apt-get update` first), pip only when pyproject.toml changed since the last run.
#
# Environment:
#   DRKIT_VENV   where the virtualenv goes       (default /opt/drkit/venv)
#   DRKIT_CACHE  downloaded/built things         (default $HOME/.cache/drkit)
#   DRKIT_PYTHON interpreter for the virtualenv  (default /usr/bin/python3, the distro's)
#
# Why /opt and the distro's python: PostgreSQL refuses to run as root, and its archive_command /
# restore_command run as the server's OS user (`postgres`), which must be able to execute
# $DRKIT_VENV/bin/drkit. A python under /root (pyenv) is unreachable for that user.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRKIT_VENV="${DRKIT_VENV:-/opt/drkit/venv}"
DRKIT_CACHE="${DRKIT_CACHE:-$HOME/.cache/drkit}"
DRKIT_PYTHON="${DRKIT_PYTHON:-/usr/bin/python3}"
PG_OS_USER="postgres"
BENCH=0

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

say()  { printf '==> %s\n' "$*"; }
fail() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

SUDO=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || fail "not root and no sudo: run as root"
  SUDO=(sudo)
fi

# --- OS packages ------------------------------------------------------------------------------
PACKAGES=(
  postgresql            # the distro's server and client (15 on Debian 12): dumper + sandbox
  postgresql-contrib    # pg_stat_statements, amcheck, pgbench ... used by tests/benchmarks
  python3-venv          # virtualenv from the distro's python
  zstd                  # the zstd CLI (tests compare against it; peers use it)
  ca-certificates       # pip over TLS
  util-linux            # runuser: the sandbox starts servers as the postgres user
  redis-server          # Redis 7 (7.0 on Debian 12): dumper + sandbox
  redis-tools           # redis-cli, redis-check-aof/rdb, redis-benchmark
  python3-dev           # Python headers: drkit's optional C extension (drkit/dumpers/redis/_rdbscan.c)
  prometheus            # promtool: the alert rules' unit tests (monitoring/alerts_test.yml); no server is started
)
# A C compiler for that extension (setup.py); without one drkit installs and runs on the slower
# pure-Python path.
command -v cc >/dev/null 2>&1 || PACKAGES+=(build-essential)
# Java 17 + Maven for the Cassandra sandbox (Cassandra 5.0 runs on 11 or 17 only): from the OS
# packages unless a java/mvn is already on PATH (e.g. a JDK installed by other means).
command -v java >/dev/null 2>&1 || PACKAGES+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || PACKAGES+=(maven)
# Headless Chromium prints the drill/quarterly HTML reports to PDF (`drkit report quarterly --pdf`);
# pdftoppm (poppler-utils) renders the PDF's pages in the report tests.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || PACKAGES+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || PACKAGES+=(poppler-utils)
# A real Prometheus Pushgateway for the push tests (`drkit metrics --push`); the tests start their own.
command -v prometheus-pushgateway >/dev/null 2>&1 || PACKAGES+=(prometheus-pushgateway)
if [[ $BENCH -eq 1 ]]; then
  PACKAGES+=(pgbackrest restic)
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing OS packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
else
  say "OS packages present: ${PACKAGES[*]}"
fi

pg_bin="$(pg_config --bindir 2>/dev/null || true)"
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[[ -n "$pg_bin" && -x "$pg_bin/initdb" ]] || fail "PostgreSQL server binaries (initdb) not found"
id "$PG_OS_USER" >/dev/null 2>&1 || fail "OS user '$PG_OS_USER' missing (the postgresql package creates it)"
say "PostgreSQL binaries: $pg_bin ($("$pg_bin/postgres" --version))"

# --- virtualenv ---------------------------------------------------------------------------------
[[ -x "$DRKIT_PYTHON" ]] || fail "$DRKIT_PYTHON not found (install python3)"
"$DRKIT_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$DRKIT_PYTHON is $("$DRKIT_PYTHON" --version 2>&1); drkit needs Python >= 3.11"

as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u "$PG_OS_USER" -- "$@"; else "${SUDO[@]}" -u "$PG_OS_USER" "$@"; fi; }
as_pg "$DRKIT_PYTHON" -c pass 2>/dev/null \
  || fail "user $PG_OS_USER cannot run $DRKIT_PYTHON (a python under /root?): use the distro's /usr/bin/python3"

if [[ -x "$DRKIT_VENV/bin/python" ]]; then
  venv_base="$(sed -n 's/^executable = //p' "$DRKIT_VENV/pyvenv.cfg" 2>/dev/null || true)"
  want_base="$(readlink -f "$DRKIT_PYTHON")"
  if [[ -n "$venv_base" && "$(readlink -f "$venv_base")" != "$want_base" ]]; then
    fail "$DRKIT_VENV was made from $venv_base, not $want_base; remove it and re-run"
  fi
  say "virtualenv present: $DRKIT_VENV"
else
  say "creating virtualenv $DRKIT_VENV from $DRKIT_PYTHON"
  "${SUDO[@]}" mkdir -p "$(dirname "$DRKIT_VENV")"
  "${SUDO[@]}" "$DRKIT_PYTHON" -m venv "$DRKIT_VENV"
  "${SUDO[@]}" "$DRKIT_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
fi

mkdir -p "$DRKIT_CACHE"
PIP_LOG="$DRKIT_CACHE/pip-install.log"
pip_install() {  # quiet unless it fails; the full output stays in $PIP_LOG
  if ! "${SUDO[@]}" "$DRKIT_VENV/bin/python" -m pip install --disable-pip-version-check "$@" >"$PIP_LOG" 2>&1; then
    tail -n 40 "$PIP_LOG" >&2
    fail "pip install $* failed (full log: $PIP_LOG)"
  fi
  grep -E '^(WARNING|ERROR)' "$PIP_LOG" >&2 || true
}

# --- drkit itself -------------------------------------------------------------------------------
# Editable when the postgres user can read the checkout (then code edits need no re-install);
# otherwise a regular install, redone on every run.
stamp="$DRKIT_VENV/.drkit-install-stamp"
# setup.py and the C sources count too: an editable install builds the extension in place once.
want_stamp="$(cat "$REPO/pyproject.toml" "$REPO/requirements-dev.lock" "$REPO/setup.py" "$REPO"/drkit/dumpers/redis/*.c <("$DRKIT_VENV/bin/python" -V) \
  | sha256sum | cut -d' ' -f1) $REPO"
repo_readable=1
as_pg test -r "$REPO/pyproject.toml" 2>/dev/null || repo_readable=0

# The C extension is expected only where it can be built (a compiler and the Python headers);
# elsewhere its absence must not force a re-install on every run.
installed_check="import drkit, pytest"
py_include="$("$DRKIT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if command -v cc >/dev/null 2>&1 && [[ -f "$py_include/Python.h" ]]; then
  installed_check+=", drkit.dumpers.redis._rdbscan"
fi

if [[ $repo_readable -eq 1 ]]; then
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] \
     && (cd / && "$DRKIT_VENV/bin/python" -c "$installed_check; assert drkit.__file__.startswith('$REPO/')") \
        2>/dev/null; then  # ... and this checkout's drkit, not another checkout's editable install
    say "drkit already installed (editable) from $REPO"
  else
    say "pip install -e $REPO with requirements-dev.lock (the lock, pyproject.toml, setup.py or a C source changed, or first run)"
    # Every dependency from the lock file, each file's hash checked; then drkit itself, no deps.
    pip_install --require-hashes --no-deps -r "$REPO/requirements-dev.lock"
    pip_install --no-deps -e "$REPO"
    echo "$want_stamp" | "${SUDO[@]}" tee "$stamp" >/dev/null
  fi
else
  say "user $PG_OS_USER cannot read $REPO: installing a copy (re-run after code changes)"
  pip_install --require-hashes --no-deps -r "$REPO/requirements-dev.lock"
  pip_install --no-deps --force-reinstall "$REPO"
  "${SUDO[@]}" rm -f "$stamp"
fi

# Everyone (the postgres user above all) may read and execute the virtualenv.
"${SUDO[@]}" chmod -R a+rX "$DRKIT_VENV"
dir="$DRKIT_VENV"
while [[ "$dir" != "/" ]]; do
  "${SUDO[@]}" chmod a+x "$dir"
  dir="$(dirname "$dir")"
done

as_pg "$DRKIT_VENV/bin/python" -c 'import drkit, psycopg' \
  || fail "user $PG_OS_USER cannot import drkit from $DRKIT_VENV"
say "user $PG_OS_USER can run $DRKIT_VENV/bin/python with drkit"

say "cache: $DRKIT_CACHE"

if [[ $BENCH -eq 1 ]]; then
  say "bench peers: $(pgbackrest version 2>/dev/null || echo 'pgbackrest ?'), $(restic version 2>/dev/null | cut -d' ' -f1-2 || echo 'restic ?')"
fi
say "done: run tests with  $DRKIT_VENV/bin/python -m pytest -q  (from $REPO)"
