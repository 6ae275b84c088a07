"""The documentation cannot drift from the code.

- docs/cli.md must be exactly what scripts/gen_cli_docs.py generates from the current commands;
- every setting the configuration accepts (the fields of the config dataclasses, and of a
  postgres source) and every exit code must be mentioned in docs/user-guide.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from drkit.config import EncryptionConfig, RepositoryConfig, S3Options
from drkit.dumpers.postgres.options import PgOptions
from drkit.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
USER_GUIDE = ROOT / "docs" / "user-guide.md"
CLI_DOC = ROOT / "docs" / "cli.md"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_current_commands() -> None:
    expected = _load_generator().render()
    current = CLI_DOC.read_text() if CLI_DOC.exists() else ""
    assert current == expected, (
        "docs/cli.md differs from the commands' --help: run "
        "`/opt/drkit/venv/bin/python scripts/gen_cli_docs.py` and commit docs/cli.md"
    )


def test_cli_reference_covers_every_command() -> None:
    from drkit.cli.main import _register_plugins, cli

    _register_plugins()
    text = CLI_DOC.read_text()
    for name, command in cli.commands.items():
        assert f"## `drkit {name}`" in text
        for sub in getattr(command, "commands", {}):
            assert f"## `drkit {name} {sub}`" in text


def _settings() -> list[tuple[str, str]]:
    out = []
    for section, cls in (
        ("repository", RepositoryConfig),
        ("repository.s3", S3Options),
        ("encryption", EncryptionConfig),
        ("sources.<name> (type: postgres)", PgOptions),
    ):
        out += [(section, f.name) for f in dataclasses.fields(cls)]
    return out


@pytest.mark.parametrize(("section", "name"), _settings(), ids=lambda v: str(v))
def test_every_config_setting_is_documented(section: str, name: str) -> None:
    guide = USER_GUIDE.read_text()
    # As a YAML key (`name:`) or in backticks (`name`), not merely as a word of prose.
    pattern = rf"(`{re.escape(name)}`|\b{re.escape(name)}:)"
    assert re.search(pattern, guide), f"{section}.{name} is accepted by the code but not documented in {USER_GUIDE}"


def test_every_exit_code_is_documented() -> None:
    guide = USER_GUIDE.read_text()
    for what, code in EXIT_CODES.items():
        assert re.search(rf"^\|\s*{code}\s*\|", guide, re.MULTILINE), (
            f"exit code {code} ({what}) has no row in the exit code table of {USER_GUIDE}"
        )
