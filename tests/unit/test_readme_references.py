"""The README stays true to the code: the set-up commands it promises and every test it cites exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_shows_the_two_commands_and_the_makefile_has_them() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_every_test_the_readme_cites_exists() -> None:
    files = set(re.findall(r"(tests/[a-z_/]+\.py)", README))
    names = set(re.findall(r"`(test_[a-z0-9_]+)`", README)) | set(re.findall(r"::(test_[a-z0-9_]+)", README))
    assert files and names
    missing_files = sorted(f for f in files if not (ROOT / f).is_file())
    assert missing_files == []
    defined = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    missing = sorted(n for n in names if not re.search(rf"def {n}\(", defined))
    assert missing == []


def test_the_command_table_names_every_command_the_cli_has() -> None:
    import typer.main
    from typer.core import TyperGroup

    from turnledger.cli import app

    table = section("## The command line").split("\n## ")[0]
    documented = set(re.findall(r"^\| `turnledger ([a-z]+)", table, re.MULTILINE))
    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    assert documented == set(command.commands)


def section(heading: str) -> str:
    return README[README.index(heading) + len(heading) :]


def test_the_schema_section_names_every_column_of_the_usage_tables_and_every_table() -> None:
    from turnledger.store.base import Base
    from turnledger.store.tables import TABLE_NAMES, VERSION_TABLE

    schema = section("## The schema").split("\n## ")[0]
    # One bullet per table: "- `token_usage`: ...", up to the next bullet.
    bullets = {m.group(1): m.group(2) for m in re.finditer(r"^- `([a-z_]+)`[^:]*:(.*?)(?=^- |\Z)", schema, re.M | re.S)}
    missing = [
        f"{table}.{column.name}"
        for table in ("token_usage", "token_usage_calls")
        for column in Base.metadata.tables[table].columns
        if f"`{column.name}`" not in bullets.get(table, "")
    ]
    assert missing == []
    named = set(re.findall(r"`([a-z0-9_]+)`", schema))
    assert sorted(TABLE_NAMES - {VERSION_TABLE} - named) == []
