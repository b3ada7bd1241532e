"""Capture overhead counted in instructions (callgrind): a figure the machine's load does not move.

bench/capture_bench.py times the capture against LiteLLM's own per-call time, but on a shared machine
the paired timing moves by several percent from run to run, so it cannot settle a 1% target.
Instructions executed are repeatable whatever the load, so this bench counts them instead.

Method: a child Python runs under ``valgrind --tool=callgrind --instr-atstart=no`` (``PYTHONHASHSEED``
fixed), importing the same ``turnledger`` and ``bench`` this process did, and counts every arm in turn, in
blocks: it registers the arm's logger (and takes every other one out of LiteLLM's lists), lets LiteLLM take
it up (``BLOCK_WARM_CALLS`` calls), then counts exactly ``BENCH_INSTR_CALLS`` ``acompletion(mock_response=...)``
calls in turns of 3, ending with the wait for LiteLLM's logging worker to go idle (as capture_bench's
``_block``), so the callback's deferred work is inside the count. Before the first counted block every arm
runs once uncounted (``WARM_CALLS`` calls each): the first block after a logger was first registered in the
process counted 40,000 instructions a call more than the same arm later in the same child (measured
2026-11-27, its 15 warm-up calls notwithstanding; not traced to its cause in LiteLLM). The count is
switched on and off from inside the child by callgrind's client requests (``ZERO_STATS`` +
``START_INSTRUMENTATION``, then ``STOP_INSTRUMENTATION`` + ``DUMP_STATS``), through a tiny C library
compiled with gcc at run time into a temporary directory; each block's dump's ``totals:`` line is its
count, all threads included. Arms:
- ``without``: no logger;
- ``no-op logger``: capture_bench's logger that does nothing (any logger switches on LiteLLM's own
  logging work);
- ``no-op, waited``: the no-op logger, and at the end of each 3-call turn a wait until it has seen the
  turn's 3 success events: what knowing a turn's calls when it ends costs any logger (LiteLLM logs a
  call from its worker after the call returns, so the turn's end waits for the worker's steps);
- ``callback, one scope``: ``TokenTrackingCallback`` installed, every counted call in one ``scoped_turn``
  (what the callback costs per call once per-turn costs are spread over many calls; not judged);
- ``callback``: ``TokenTrackingCallback`` installed, each 3-call turn in its own ``scoped_turn``, as in
  real use, so scope entry and exit (its wait for the turn's last event) are in the count.

Why all arms in one child: a child's counts, every arm alike, move with the process as a whole. Children
started side by side counted the same arm within a few thousand instructions a call of each other, one
started alone on a quiet machine 55,000 to 75,000 more in every arm; within one child, blocks of the same
arm agree within about 3,000 (measured 2026-11-27, no-op logger and without, 4 blocks a child; in one run
of the bench since, one no-op block of six came out 48,000 above the other five). With an arm
a child, that per-process shift landed on the differences (the judged one moved from +0.2% to +1.1%
between repeats); with every arm in each child it cancels. A repeat is one round of all the arms in a
child, the first arm rotating from round to round; ``BENCH_INSTR_CHILDREN`` children, up to
``BENCH_INSTR_JOBS`` at a time, each run ``BENCH_INSTR_REPEATS`` rounds. Printed per arm: instructions per
call, min/median/max over every block; then, paired within each round of each child,
(no-op - without) / without: LiteLLM's own logging work that any logger switches on;
(callback - no-op) / without: turnledger's own work; (callback - without) / without: all of it, what a
user pays; and, as context: (no-op waited - no-op): the per-turn wait any logger pays, (callback -
no-op waited): turnledger's own work beyond that wait, and the one-scope arm over the no-op logger.
Judged: turnledger's own work (callback - no-op) against LiteLLM's per-call instructions without a
logger, target < 1%: PASS if every repeat is under it, OVER if none is, else UNDECIDED.

Needs valgrind, its ``valgrind/callgrind.h`` and gcc (Debian: ``apt-get install valgrind gcc``);
without them it says what is missing and returns. The default run, 2 children of 3 rounds side by side,
counts 1,800 calls each (2,175 run): 6.5 minutes wall on the project's 2-core machine (measured 2026-11-27),
about 40 seconds of each child importing LiteLLM under valgrind.

Size knobs: ``BENCH_INSTR_CALLS`` (counted calls per block, a multiple of 3, default 120),
``BENCH_INSTR_REPEATS`` (rounds of all the arms per child, default 3), ``BENCH_INSTR_CHILDREN`` (default 2),
``BENCH_INSTR_JOBS`` (children at a time, default 2).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litellm.integrations.custom_logger import CustomLogger

from bench._verdicts import TARGET_SHARE, interval_verdict

if TYPE_CHECKING:
    from turnledger import TokenTrackingCallback

ARMS = ("without", "no-op logger", "no-op, waited", "callback, one scope", "callback")
WARM_CALLS = 30
BLOCK_WARM_CALLS = 15
_CHILD_FLAG = "--child"

_CGCTL_C = """\
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT("measured"); }
"""
_DUMP_REASON = "Client Request: measured"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# -- reading callgrind's dumps and judging ---------------------------------------------------------


def parse_totals(dump: str) -> int:
    """The ``totals:`` of one callgrind dump (instructions, the only event counted here)."""
    found = re.findall(r"^totals:\s+(\d+)\s*$", dump, re.MULTILINE)
    if len(found) != 1:
        raise ValueError(f"expected one 'totals:' line in the callgrind dump, found {len(found)}")
    return int(found[0])


def measured_totals(dumps: Iterable[str]) -> list[int]:
    """The counts of the dumps the child asked for, one a block, in the order it asked for them (their
    ``part:`` numbers): callgrind also writes one at exit (zero, as the instrumentation is off by then),
    which is not one of them."""
    ours: list[tuple[int, int]] = []
    for dump in dumps:
        if not re.search(rf"^desc: Trigger: {re.escape(_DUMP_REASON)}\s*$", dump, re.MULTILINE):
            continue
        part = re.search(r"^part:\s+(\d+)\s*$", dump, re.MULTILINE)
        if part is None:
            raise ValueError("a measured dump without its 'part:' number")
        ours.append((int(part.group(1)), parse_totals(dump)))
    ours.sort()
    parts = [number for number, _ in ours]
    if len(set(parts)) != len(parts):
        raise ValueError(f"measured dumps with the same part number: {parts}")
    return [total for _, total in ours]


def verdict(shares: list[float], target: float = TARGET_SHARE) -> str:
    """PASS if every repeat's share is under the target, OVER if none is, else UNDECIDED."""
    if not shares:
        raise ValueError("no shares to judge")
    return interval_verdict(min(shares), max(shares), target, spanned="repeats span the target")


def _spread(values: list[float], fmt: str) -> str:
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"min {low}   median {mid}   max {high}"


class _WaitedLogger(CustomLogger):
    """A logger that does nothing but count success events, so a turn can wait for its own."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self._wanted = 0
        self._done: asyncio.Future[None] | None = None

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.seen += 1
        if self._done is not None and self.seen >= self._wanted and not self._done.done():
            self._done.set_result(None)

    async def turn_logged(self, calls: int = 3) -> None:
        """Until the last ``calls`` calls' success events are in."""
        self._wanted += calls
        if self.seen < self._wanted:
            self._done = asyncio.get_running_loop().create_future()
            await self._done
            self._done = None


_waited = _WaitedLogger()


# -- the child, run under callgrind ----------------------------------------------------------------


async def _turns(arm: str, turns: int) -> int:
    """``turns`` turns of 3 calls, then LiteLLM's logging worker idle; returns the calls turnledger recorded."""
    import turnledger
    from bench.capture_bench import _call, _logging_idle

    recorded = 0
    if arm == "callback, one scope":
        async with turnledger.scoped_turn(user_id="bench") as turn:
            for _ in range(3 * turns):
                await _call()
        await _logging_idle()
        return len(turn.calls)
    for _ in range(turns):
        if arm == "callback":
            async with turnledger.scoped_turn(user_id="bench") as turn:
                for _ in range(3):
                    await _call()
            recorded += len(turn.calls)
        else:
            for _ in range(3):
                await _call()
            if arm == "no-op, waited":
                await _waited.turn_logged()
    await _logging_idle()
    return recorded


def _take_up(arm: str, callback: TokenTrackingCallback) -> None:
    """Register ``arm``'s logger, with every logger of the other arms taken out of LiteLLM's lists."""
    import litellm

    import turnledger
    from bench.capture_bench import _noop, forget_logger

    forget_logger(_noop)
    forget_logger(_waited)
    turnledger.uninstall(callback)
    if arm == "no-op logger":
        litellm.callbacks.append(_noop)
    elif arm == "no-op, waited":
        litellm.callbacks.append(_waited)
    elif arm in ("callback", "callback, one scope"):
        turnledger.install(callback)
    elif arm != "without":
        raise ValueError(f"no arm {arm!r}")


def rounds_of(repeats: int) -> list[tuple[int, str]]:
    """The blocks a child counts, in order: every arm once a round, the first one rotating."""
    return [(i, arm) for i in range(repeats) for arm in ARMS[i % len(ARMS) :] + ARMS[: i % len(ARMS)]]


async def _child(calls: int, repeats: int, library: str) -> None:
    import ctypes

    import turnledger

    cg = ctypes.CDLL(library)
    # The GIL's switch interval is wall-clock time (5 ms): under callgrind, 50 times slower, a call's
    # threads were forced to hand the GIL over many times more often than natively, by how loaded the
    # machine was (a no-op arm's count moved by 30k per call between children). Handed over only when
    # a thread blocks, as a native 3 ms call almost always does, the counts repeat within a few thousand.
    sys.setswitchinterval(1000.0)
    callback = turnledger.TokenTrackingCallback(name="bench-instr")
    for arm in ARMS:
        _take_up(arm, callback)
        await _turns(arm, WARM_CALLS // 3)
    # install() loads LiteLLM's tokenizer in a thread; slow under callgrind, it must not run into a count.
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name == "turnledger-tokenizer-warmup":
            thread.join()
    for i, arm in rounds_of(repeats):
        _take_up(arm, callback)
        await _turns(arm, BLOCK_WARM_CALLS // 3)
        gc.collect()
        cg.cg_start()
        recorded = await _turns(arm, calls // 3)
        cg.cg_stop()
        print(f"block round={i} arm={arm} calls={calls} recorded={recorded}", flush=True)


# -- the parent ------------------------------------------------------------------------------------


def _missing_tools() -> list[str]:
    return [tool for tool in ("valgrind", "gcc") if shutil.which(tool) is None]


def _compile(workdir: Path) -> Path | str:
    """The client-request library, or gcc's complaint."""
    source = workdir / "cgctl.c"
    source.write_text(_CGCTL_C, encoding="utf-8")
    library = workdir / "cgctl.so"
    done = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    return library if done.returncode == 0 else done.stderr.strip()


def _import_roots() -> list[str]:
    """Where this process found turnledger and bench: the child must count the same code."""
    import bench
    import turnledger

    roots = [str(Path(turnledger.__file__).resolve().parents[1]), str(Path(bench.__file__).resolve().parents[1])]
    return list(dict.fromkeys(roots))


def _run_child(calls: int, repeats: int, library: Path, workdir: Path, tag: str) -> dict[str, list[int]]:
    """Instructions the child counted, arm -> one count per round (each over ``calls`` calls)."""
    out = workdir / f"{tag}.out"
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        "PYTHONPATH": os.pathsep.join([*_import_roots(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--dump-line=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.capture_instr_bench",
            _CHILD_FLAG,
            str(calls),
            str(repeats),
            str(library),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    if done.returncode != 0:
        raise RuntimeError(f"child {tag} failed (exit {done.returncode}):\n{tail}")
    blocks = [line for line in done.stdout.splitlines() if line.startswith("block ")]
    expected = rounds_of(repeats)
    for line, (i, arm) in zip(blocks, expected, strict=False):
        if not line.startswith(f"block round={i} arm={arm} calls={calls} "):
            raise RuntimeError(f"child {tag} counted {line!r} where round {i} of {arm} was due")
        if arm.startswith("callback") and not line.endswith(f" recorded={calls}"):
            raise RuntimeError(f"the callback arm did not record every counted call: {line}")
    if len(blocks) != len(expected):
        raise RuntimeError(f"child {tag} reported {len(blocks)} blocks of {len(expected)}:\n{done.stdout}\n{tail}")
    totals = measured_totals(p.read_text(encoding="utf-8") for p in sorted(workdir.glob(f"{tag}.out*")))
    if len(totals) != len(expected):
        raise RuntimeError(f"child {tag} left {len(totals)} measured dumps for {len(expected)} blocks")
    counts: dict[str, list[int]] = {arm: [] for arm in ARMS}
    for (_, arm), total in zip(expected, totals, strict=True):
        counts[arm].append(total)
    return counts


def _how_made(calls: int, repeats: int, children: int, jobs: int) -> str:
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    root = Path(_import_roots()[0]).parent
    git = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = git.stdout.strip() or "unknown"
    if dirty.stdout.strip():
        commit += " + uncommitted changes"
    return (
        f"LiteLLM {version('litellm')}, Python {sys.version.split()[0]}, {valgrind}, turnledger at {root} "
        f"(commit {commit}); {children} children ({jobs} at a time), each counting every arm in {repeats} "
        f"rounds, {calls} calls a block after {BLOCK_WARM_CALLS} uncounted ones (and {WARM_CALLS} of every arm "
        f"before the first block); PYTHONHASHSEED=0"
    )


def main() -> None:
    calls = _env_int("BENCH_INSTR_CALLS", 120)
    repeats = _env_int("BENCH_INSTR_REPEATS", 3)
    children = _env_int("BENCH_INSTR_CHILDREN", 2)
    jobs = _env_int("BENCH_INSTR_JOBS", 2)
    if calls <= 0 or calls % 3:
        raise ValueError(f"BENCH_INSTR_CALLS must be a positive multiple of 3 (turns of 3 calls), not {calls}")
    if repeats <= 0 or children <= 0 or jobs <= 0:
        raise ValueError("BENCH_INSTR_REPEATS, BENCH_INSTR_CHILDREN and BENCH_INSTR_JOBS must be positive")
    missing = _missing_tools()
    if missing:
        print(f"skipped: {' and '.join(missing)} not found. Debian/Ubuntu: apt-get install valgrind gcc")
        return
    # Read before the children run: the tree may change under a run this long.
    how_made = _how_made(calls, repeats, children, jobs)
    with tempfile.TemporaryDirectory(prefix="capture-instr-") as tmp:
        workdir = Path(tmp)
        library = _compile(workdir)
        if isinstance(library, str):
            print(f"skipped: could not compile callgrind's client requests (valgrind/callgrind.h missing?):\n{library}")
            print("Debian/Ubuntu: apt-get install valgrind (it ships the header); elsewhere its -devel package")
            return
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_child, calls, repeats, library, workdir, f"child-{c}") for c in range(children)]
            counted = [future.result() for future in futures]
    # Every arm's counts in the same order, child by child and round by round: differences pair up
    # counts of one round of one child.
    per_call = {arm: [total / calls for counts in counted for total in counts[arm]] for arm in ARMS}
    _report(per_call, how_made)


COMPARISONS = (
    ("no-op logger", "without", "LiteLLM's own logging work, switched on by any logger"),
    ("callback", "no-op logger", "turnledger's own work"),
    ("callback", "without", "all of it: what installing turnledger costs a call"),
    ("no-op, waited", "no-op logger", "context: waiting at each turn's end for LiteLLM to log its calls, any logger"),
    ("callback", "no-op, waited", "context: turnledger's own work beyond that wait"),
    ("callback, one scope", "no-op logger", "context: turnledger's own work, one scope for all the calls"),
)


def differences(per_call: dict[str, list[float]], arm: str, minus: str) -> tuple[list[float], list[float]]:
    """(arm - minus) per call, paired by repeat (a round of a child), and each as a share of that repeat's
    ``without``: every share is of LiteLLM's own per-call count, so turnledger's and LiteLLM's shares add
    up to the whole."""
    deltas = [a - b for a, b in zip(per_call[arm], per_call[minus], strict=True)]
    return deltas, [d / w for d, w in zip(deltas, per_call["without"], strict=True)]


def _report(per_call: dict[str, list[float]], how_made: str) -> None:
    print(f"LiteLLM acompletion(mock_response) under callgrind: {how_made}")
    print(" instructions per call:")
    width = max(map(len, ARMS))
    for arm in ARMS:
        print(f"  {arm:<{width}} {_spread(per_call[arm], '{:>12,.0f}')}")
    print(
        " differences per call, paired by repeat (a round of all the arms in one child), and their share of"
        " `without` (LiteLLM's own per-call count):"
    )
    for arm, minus, note in COMPARISONS:
        deltas, shares = differences(per_call, arm, minus)
        print(f"  ({arm} - {minus}) [{note}]")
        print(f"      instructions {_spread(deltas, '{:>+10,.0f}')}")
        print(f"      / without    {_spread(shares, '{:>+8.3%}')}")
    _, own = differences(per_call, "callback", "no-op logger")
    _, litellms = differences(per_call, "no-op logger", "without")
    _, whole = differences(per_call, "callback", "without")
    print(
        f"  JUDGED turnledger's own work / without: median {statistics.median(own):+.3%}   target < {TARGET_SHARE:.0%} "
        f"-> {verdict(own)}"
    )
    print(
        f"  what a user pays, (callback - without) / without: median {statistics.median(whole):+.3%}   (medians of "
        f"its parts: turnledger's own work {statistics.median(own):+.3%}, LiteLLM's logging work that any logger "
        f"switches on {statistics.median(litellms):+.3%})"
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == _CHILD_FLAG:
        asyncio.run(_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    else:
        main()
