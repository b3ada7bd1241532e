"""A reader that stops reading (``turnledger report | head -1``) ends the command as it ends ``cat``.

Python ignores SIGPIPE, so a write to a pipe nobody reads any more raises ``BrokenPipeError``;
click and rich each turn that into exit code 1, which this CLI's exit codes read as "the operation
failed". Putting SIGPIPE back for the whole process is not an option: a write to a database socket
the server closed would then kill the command silently instead of reporting the error. So only
stdout is watched: :func:`watching_stdout` turns its broken pipe into :class:`StdoutClosed`, which
no library catches, and :func:`end_as_closed_pipe` ends the process by SIGPIPE, the way a shell
expects (status 141, no message; ``set -o pipefail`` scripts see that the output was cut).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, TextIO, cast

STDOUT_FD = 1
EXIT_CLOSED_PIPE = 128 + 13
"""What a shell reports for a process that SIGPIPE ended (used where there is no SIGPIPE)."""
WRITE_PIECE = 2048
"""Characters per write: at most 8 KiB encoded, what a text stream's buffer holds."""


class StdoutClosed(Exception):
    """Whoever read the command's stdout has gone away: not a failure of the command."""


class _WatchedStdout:
    """``sys.stdout`` with its broken pipe raised as :class:`StdoutClosed`; everything else passed on."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if type(text) is not str:
            # Refused by the text stream itself, as before the wrapping: click tells a binary stream
            # from a text one by writing b"" to it, and took this one, which wrote nothing of b"", for a
            # binary stream; it then wrote bytes through it, and every --help ended in a TypeError, exit 1.
            return self._stream.write(text)
        try:
            # In pieces the stream's buffer holds: CPython 3.11 takes a partial write of one large
            # write for the whole of it (measured: a 198,461-byte table into a pipe whose reader
            # left got 65,536 bytes written and no error), so the command ended 0 with its output cut.
            for start in range(0, len(text), WRITE_PIECE):
                self._stream.write(text[start : start + WRITE_PIECE])
        except BrokenPipeError:
            raise StdoutClosed from None
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def watching_stdout() -> None:
    """Make a broken pipe on ``sys.stdout`` raise :class:`StdoutClosed` from every writer (rich, click, print)."""
    if not isinstance(sys.stdout, _WatchedStdout):
        sys.stdout = cast(TextIO, _WatchedStdout(sys.stdout))


def end_as_closed_pipe() -> NoReturn:
    """End the process as SIGPIPE ends it, writing nothing more to the closed pipe."""
    # Output still buffered for the pipe would be flushed at exit, and fail again, loudly.
    os.dup2(os.open(os.devnull, os.O_WRONLY), STDOUT_FD)
    sigpipe = getattr(signal, "SIGPIPE", None)
    if sigpipe is not None:
        sys.stderr.flush()
        signal.signal(sigpipe, signal.SIG_DFL)
        os.kill(os.getpid(), sigpipe)
    os._exit(EXIT_CLOSED_PIPE)


__all__ = ["EXIT_CLOSED_PIPE", "StdoutClosed", "end_as_closed_pipe", "watching_stdout"]
