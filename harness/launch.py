"""`just eval` and `just smoke`: main's eval.py with the command line as given; for a run that pueue started
from the seed's plain `pueue add --label "Q: .. H: .." -- just eval ...`, the label of its task added as
--label, so that the referee never asks pueue. Light imports: the run starts at once."""

import os
import sys
from pathlib import Path

from harness import Refusal
from harness.pueue import task_label

EVAL = Path(__file__).resolve().parents[1] / "eval.py"


def main(argv: list[str]) -> None:
    roles = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--role"] + [
        a[7:] for a in argv if a.startswith("--role=")
    ]
    if any(role.startswith("confirm:") for role in roles):
        print(
            f"error: --role {roles[0]}: confirmation rows are written by `just confirm SLUG`, which draws its seeds "
            "in secret and runs each on both sides; a role given by hand makes no confirmation (compare judges "
            "a confirmation by its seeds, not its role)",
            file=sys.stderr,
        )
        sys.exit(2)
    labelled = any(a == "--label" or a.startswith("--label=") for a in argv)
    try:
        label = "" if labelled else task_label()
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.execv(sys.executable, [sys.executable, str(EVAL), *argv, *(["--label", label] if label else [])])


if __name__ == "__main__":
    main(sys.argv[1:])
