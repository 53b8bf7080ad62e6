"""docs/cli.md is the parser's own flag reference, and is kept current.

scripts/gen_cli_reference.py writes docs/cli.md from ila.cli.build_parser(); these tests
regenerate it in memory and compare, and check that what it writes is the parser's and the
config's (every flag of every command, each config setting with its field default).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from ila.cli import build_parser
from ila.config import RunConfig, flag_name, iter_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_cli_reference", REPO / "scripts" / "gen_cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_current(gen: ModuleType) -> None:
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == gen.render(), (
        "docs/cli.md is stale (the flags of ila.cli / ila.config changed): regenerate it "
        "with `make docs` (or: python scripts/gen_cli_reference.py) and commit it"
    )


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices.items())


def _section(text: str, command: str) -> str:
    start = text.index(f"\n## `ila {command}`\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_flag_of_every_command_is_in_its_section(gen: ModuleType) -> None:
    text = gen.render()
    commands = _commands()
    assert len(commands) >= 10
    for name, sub in commands.items():
        section = _section(text, name)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert f"`{flag}`" in section, f"ila {name}: {flag} missing from docs/cli.md"


def test_config_settings_show_the_field_default_and_yaml_key(gen: ModuleType) -> None:
    section = _section(gen.render(), "run")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()}
    for sec, f, _ in iter_settings(RunConfig):
        flag = flag_name(sec, f.name)
        row = next((r for k, r in rows.items() if k.startswith(f"`{flag}`")), None)
        assert row is not None, f"{flag} has no row in the ila run section"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert f"| {gen._yaml(default)} |" in row, f"{flag}: default {default!r} not in {row}"
        assert f"`{sec}.{f.name}`" in row
        assert "(default: " + str(default) + ")" not in row  # the suffix moved to its column


def test_check_mode_fails_on_a_stale_file_and_names_the_command(
    gen: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "cli.md"
    target.write_text(gen.render().replace("## `ila score`", "## `ila scores`"), encoding="utf-8")
    assert gen.main(["--check", "--output", str(target)]) == 1
    assert "make docs" in capsys.readouterr().err
    assert gen.main(["--output", str(target)]) == 0
    assert gen.main(["--check", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == gen.render()
