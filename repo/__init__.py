"""The research repository, as both halves see it: the bottom layer, which imports neither the referee nor the
harness. FROZEN (infrastructure): edit only with META_MODE=1.

    git        the one git layer (GitPython): checkouts, slugs, worktree paths
    ledger     results.tsv: its schema, what a valid row is, the locked append, killed runs
    guard      the file taxonomy (FROZEN, GLOBAL, APPEND-ONLY) and the scoring guard

and, here, what every layer needs: a refusal, and a file written whole or not at all.
"""

import os
from collections.abc import Iterable
from pathlib import Path


class Refusal(ValueError):
    """A command refused: the message says what, which rule, and how to proceed."""


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """`path` with `data` (bytes, or chunks of them), or as it was: a kill mid-write, or another process
    writing the same file at once, never leaves half a file behind (each writer has its own temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            f.write(chunk)
    os.replace(tmp, path)
