"""bench/capture_instr_bench.py's reading of callgrind's dumps and its verdict (valgrind is not run here)."""

from __future__ import annotations

import pytest

from bench.capture_instr_bench import ARMS, differences, measured_totals, parse_totals, rounds_of, verdict


def _dump(trigger: str, totals: int, part: int = 1) -> str:
    # The shape callgrind 3.19 writes: a header with ``summary: 0`` (the instrumentation was off when
    # it started), the cost lines, and ``totals:`` at the end.
    return f"""# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 5309
cmd:  /work/main/.venv/bin/python -m bench.capture_instr_bench --child 60 3 /tmp/cgctl.so
part: {part}


desc: I1 cache:
desc: D1 cache:
desc: LL cache:

desc: Timerange: Basic block 0 - 105391067
desc: Trigger: {trigger}

positions: instr
events: Ir
summary: 0


ob=(11) /usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so
fn=(56) PyType_stgdict
0x4a2c 4
cob=(5)
cfn=(4984)
calls=60 0x4b10
* 255720

totals: {totals}
"""


def test_the_count_is_the_totals_line_not_the_summary_in_the_header() -> None:
    assert parse_totals(_dump("Client Request: measured", 491273872)) == 491273872


def test_a_dump_without_its_totals_is_refused() -> None:
    truncated = _dump("Client Request: measured", 491273872).replace("totals:", "")
    with pytest.raises(ValueError, match="one 'totals:' line"):
        parse_totals(truncated)


def test_the_measured_dumps_are_the_ones_the_child_asked_for_in_its_order_not_the_one_at_exit() -> None:
    # callgrind writes one more dump when the program ends; its count is of the run after the last stop.
    # The files' names sort 1, 10, 11, 2...: the order is the dumps' own part numbers.
    at_exit = _dump("Program termination", 1234, part=13)
    blocks = [_dump("Client Request: measured", 500_000_000 + part, part=part) for part in range(1, 13)]
    by_file_name = sorted([*blocks, at_exit], key=lambda d: str(d.split("part: ")[1].split()[0]))
    assert measured_totals(by_file_name) == [500_000_000 + part for part in range(1, 13)]
    assert measured_totals([at_exit]) == []


def test_measured_dumps_that_cannot_be_put_in_order_are_refused() -> None:
    first = _dump("Client Request: measured", 491273872, part=1)
    with pytest.raises(ValueError, match="same part number"):
        measured_totals([first, first])
    with pytest.raises(ValueError, match="without its 'part:'"):
        measured_totals([first.replace("part: 1", "")])


def test_every_round_counts_every_arm_once_the_first_one_rotating() -> None:
    blocks = rounds_of(3)
    assert len(blocks) == 3 * len(ARMS)
    for i in range(3):
        arms = [arm for r, arm in blocks if r == i]
        assert sorted(arms) == sorted(ARMS)
        assert arms[0] == ARMS[i]
    # Blocks of a round are contiguous, rounds in order: each round's counts pair up.
    assert [r for r, _ in blocks] == sorted(r for r, _ in blocks)


def test_every_share_is_of_litellms_own_count_so_the_parts_add_up_to_the_whole() -> None:
    per_call = {"without": [1000.0, 2000.0], "no-op logger": [1010.0, 2030.0], "callback": [1025.0, 2040.0]}
    deltas, own = differences(per_call, "callback", "no-op logger")
    _, litellms = differences(per_call, "no-op logger", "without")
    _, whole = differences(per_call, "callback", "without")
    assert deltas == [15.0, 10.0]
    assert own == [0.015, 0.005]  # of ``without``, not of the no-op logger's count
    assert [o + lit for o, lit in zip(own, litellms, strict=True)] == pytest.approx(whole)


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.0099, 0.0098, 0.0012], "PASS"),
        ([0.0100], "OVER"),  # the target is "under 1%": exactly 1% is not under it
        ([0.0100, 0.0150], "OVER"),
        ([0.0099, 0.0101], "UNDECIDED (repeats span the target)"),
    ],
)
def test_the_verdict_passes_only_when_every_repeat_is_under_the_target(shares: list[float], expected: str) -> None:
    assert verdict(shares) == expected


def test_no_repeats_is_no_verdict() -> None:
    with pytest.raises(ValueError, match="no shares"):
        verdict([])
