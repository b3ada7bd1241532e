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


def test_every_python_block_of_the_readme_is_run_by_a_test() -> None:
    # The tests find an example by the heading it follows (tests/integration/readme_blocks.py): an
    # example added under a heading no test names would go stale unseen.
    blocks = {m.start(1): m.group(1).splitlines()[0] for m in re.finditer(r"```python\n(.*?)```", README, re.S)}
    assert blocks
    run = {README.index("```python\n", README.index(heading)) + len("```python\n") for heading in readme_headings()}
    assert sorted(line for start, line in blocks.items() if start not in run) == []


def readme_headings() -> set[str]:
    """The headings the tests pass to ``readme_python`` or ``readme_block(..., "python")``."""
    import ast

    found: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {
            node.targets[0].id: node.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name not in ("readme_python", "readme_block"):
                continue
            args = [
                a.value if isinstance(a, ast.Constant) else constants.get(a.id) if isinstance(a, ast.Name) else None
                for a in node.args
            ]
            strings = [a for a in args if isinstance(a, str)]
            if name == "readme_block" and "python" not in strings:
                continue
            found.update(s for s in strings if s != "python" and s in README)
    return found
