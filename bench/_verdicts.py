"""How the capture benches judge a share against the target: one rule for an interval, whether it is
the bootstrap interval of a timed median (capture_bench, logger_floor_bench) or the spread of counted
repeats (capture_instr_bench)."""

from __future__ import annotations

TARGET_SHARE = 0.01
"""The issue's capture target: under 1% of LiteLLM's per-call time."""


def interval_verdict(low: float, high: float, target: float, spanned: str = "noise spans the target") -> str:
    """PASS if the whole interval is under ``target``, OVER if none of it is, else UNDECIDED, saying why
    (``spanned``). Judged by an interval, not a median alone: on a noisy day a median can fall under the
    target by chance while the interval spans several percent either way."""
    if high < target:
        return "PASS"
    if low >= target:
        return "OVER"
    return f"UNDECIDED ({spanned})"
