"""``python -m bench NAME``, as the README says to run one benchmark: a name it does not have is refused."""

from __future__ import annotations

import pytest

from bench.__main__ import main


def test_an_unknown_benchmark_name_is_refused_with_the_names_there_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A typo ran nothing and exited 0, which reads as "the benchmark ran and printed nothing".
    monkeypatch.setattr("sys.argv", ["bench", "report_bnch"])
    assert main() == 2
    err = capsys.readouterr().err
    assert "no benchmark 'report_bnch'" in err and "report_bench" in err and "capture_bench" in err
