"""Running ``turnledger`` as a user's shell would (a subprocess of the real entry point), or in-process.

A subprocess pays for importing LiteLLM every time (seconds on a busy machine), so each test file runs
the real entry point for what only it can show and checks the many small option cases in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from typer.testing import CliRunner, Result


def run_cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m turnledger ARGS`` with a plain (non-terminal) stdout, 80 columns, and no inherited DB URL."""
    full_env = {k: v for k, v in os.environ.items() if k != "TURNLEDGER_DATABASE_URL"}
    full_env.update({"COLUMNS": "80", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1", "TERM": "dumb"})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "turnledger", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_into_closed_pipe(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m turnledger ARGS`` writing into a pipe whose reader has already gone (``... | head -1``
    that read what it wanted): the read end is closed before the command starts, so every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    full_env = {k: v for k, v in os.environ.items() if k != "TURNLEDGER_DATABASE_URL"}
    full_env.update({"COLUMNS": "80", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1", "TERM": "dumb"})
    full_env.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-m", "turnledger", *args],
            env=full_env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


def run_many(
    commands: Sequence[Sequence[str]], *, env: Mapping[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Several independent invocations, two at a time: each one's start-up (importing LiteLLM) is most of its cost."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: run_cli(*args, env=env), commands))


def invoke(*args: str, columns: int = 80) -> Result:
    """The same command in-process, through typer's runner, at ``columns`` columns (80 unless told)."""
    from turnledger.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"})


def one_line_error(result: subprocess.CompletedProcess[str] | Result) -> str:
    """The command's stderr, asserted to be a single ``error:`` line and no traceback (or uncaught exception)."""
    if isinstance(result, Result):
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]
