"""``python -m bench capture_bench`` (and ``logger_floor_bench``) run to their end at a tiny size: nothing
else runs the benches, and a rename in turnledger once ended one halfway (AttributeError), before its
judged per-event figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_bench(name: str, sizes: dict[str, str]) -> str:
    """The bench's output, once it has run to its end with ``sizes`` as its size knobs."""
    env = {**os.environ, **sizes, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_capture_bench_runs_to_its_last_figure_at_a_tiny_size() -> None:
    out = _run_bench(
        "capture_bench",
        {
            "BENCH_CAPTURE_ROUNDS": "2",
            "BENCH_CAPTURE_TURNS": "1",
            "BENCH_CAPTURE_REPEATS": "2",
            "BENCH_CAPTURE_EVENTS": "10",
        },
    )
    for figure in ("JUDGED (callback - without) / without, CPU", "The hooks in situ", "JUDGED both hooks per call"):
        assert figure in out, figure
    # LiteLLM's share and turnledger's own are each judged too, in CPU time only.
    assert out.count("-> against 1%:") == 2, out


def test_logger_floor_bench_judges_each_logger_at_a_tiny_size() -> None:
    out = _run_bench("logger_floor_bench", {"BENCH_FLOOR_ROUNDS": "2", "BENCH_FLOOR_TURNS": "1"})
    # Both loggers, in CPU time only (the wall clock's figures are printed, not judged).
    assert out.count("-> against 1%:") == 2, out
