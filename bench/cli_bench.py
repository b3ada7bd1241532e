"""How long a person waits for the command line: start-up, and ``turnledger demo`` from a fresh database.

Runs the real entry point (``python -m turnledger``) in subprocesses, as a shell would:

- ``version``: the floor every command pays (the CLI and the store, without LiteLLM, then interpreter exit);
- ``demo`` on a new SQLite file: wall time, and the demo's own work as it reports it
  ("demo took X s": migrate, five turns, a fortnight of history, writes, the read-back).

The issue asks that the demo "finish in a few seconds": the ratio printed is the median wall time of
the demo over a 5-second budget (below 1.0 is within it).

    python -m bench.cli_bench        (TURNLEDGER_BENCH_CLI_RUNS=N to resize, default 3)
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_BUDGET_S = 5.0


def _run(args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "COLUMNS": "80", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("TURNLEDGER_DATABASE_URL", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "turnledger", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - start, done.stdout


def _line(name: str, values: list[float]) -> str:
    return f"{name:<34} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s   max {max(values):6.2f} s"


def main() -> None:
    runs = int(os.environ.get("TURNLEDGER_BENCH_CLI_RUNS", "3"))
    startup: list[float] = []
    demo_wall: list[float] = []
    demo_work: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for i in range(runs):
            startup.append(_run(["version"], cwd)[0])
            url = f"sqlite:///{cwd / f'demo-{i}.db'}"
            wall, out = _run(["demo", "--database-url", url], cwd)
            demo_wall.append(wall)
            took = re.search(r"demo took ([0-9.]+) s", out)
            if took:
                demo_work.append(float(took.group(1)))
    print(f"runs: {runs} (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    print(_line("turnledger version (start-up)", startup))
    print(_line("turnledger demo, wall", demo_wall))
    if demo_work:
        print(_line("turnledger demo, its own work", demo_work))
    ratio = statistics.median(demo_wall) / DEMO_BUDGET_S
    print(f"ratio: median demo wall / {DEMO_BUDGET_S:.0f} s budget = {ratio:.2f}")


if __name__ == "__main__":
    main()
