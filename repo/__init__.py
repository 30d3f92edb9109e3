"""The research repository, as both halves see it: the bottom layer, which imports neither the referee nor the
harness. FROZEN (infrastructure): edit only with META_MODE=1.

    git        the one git layer (GitPython): checkouts, slugs, worktree paths
    ledger     results.tsv: its schema, what a valid row is, the locked append, killed runs
    guard      the file taxonomy (FROZEN, GLOBAL, APPEND-ONLY) and the scoring guard

and, here, what every layer needs: a refusal, a kill turned into an exception, the one way an entry point
ends (eval.py's and the harness's), and a file written whole or not at all.
"""

import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn


class Refusal(ValueError):
    """A command refused: the message says what, which rule, and how to proceed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a queue's or a scheduler's kill), handled as Ctrl-C is: a run still writes its row, and a command
    passes it on to the run it waits for."""


def on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not interrupt the row
    raise Terminated("killed by SIGTERM")


def entry_point(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """How eval.py and every harness command end. Exit 2: refused or bad input, nothing done, one line on stderr
    naming the value and the fix (`--debug` shows the traceback instead); 130 and 143: Ctrl-C and SIGTERM (a run
    in progress recorded its own crash row); else `main`'s code (1: it ran and failed, as a crash row, a
    mismatch or a check that found violations)."""
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return main([a for a in argv if a != "--debug"])
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        hint = "" if isinstance(e, ValueError) else " (run it again with --debug for the traceback)"
        text = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"  # a ValueError's says it all
        print(f"error: {' '.join(text.split())}{hint}", file=sys.stderr)
        return 2


def exit_without_teardown(run: Callable[[], int | None]) -> NoReturn:
    """End this process with `run()`'s exit code, or its SystemExit's, skipping the interpreter's teardown: with
    torch loaded it takes 0.5-1.2 s, and the end of the referee's process and of its training worker are on every
    run's path (the referee scores once its training worker has exited). Whatever the process writes is written
    by then: files are closed or fsynced where they are written, loguru's sinks are line-buffered, and stdout and
    stderr are flushed here."""
    try:
        code = run()
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python itself would end
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def append_durably(path: Path, data: bytes) -> None:
    """`data` appended to `path` (created if missing) in one write of an O_APPEND file, so that a reader never sees
    half of it, and fsynced before this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """`path` with `data` (bytes, or chunks of them), or as it was: a kill mid-write, or another process
    writing the same file at once, never leaves half a file behind (each writer has its own temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            f.write(chunk)
    os.replace(tmp, path)
