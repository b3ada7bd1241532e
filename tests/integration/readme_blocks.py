"""The README's Python examples, found by the heading they follow, for the tests that run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python(heading: str) -> str:
    """The first Python block after ``heading`` in the README."""
    return readme_block(heading, "python")


def readme_block(heading: str, language: str) -> str:
    """The first ``language`` block (``python``, ``yaml``, ``sh``...) after ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(rf"```{re.escape(language)}\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"the README lost its {language} block under {heading!r}"
    return match.group(1)
