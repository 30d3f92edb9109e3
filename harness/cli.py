"""The command line behind the recipes: `python -P -m harness COMMAND [ARGS]`. tyro parses each command's
arguments from its signature (or dataclass) and docstring; a command's module is imported only when it
runs, so a ledger query never loads torch. Any failure is one line on stderr naming the value and the fix;
`--debug` shows the traceback instead."""

import importlib
import sys

import tyro

from harness import Refusal
from repo import entry_point
from repo.git import main_root
from repo.guard import install_hooks, pre_commit_violations

# command -> (module, attribute). A class is a command that takes eval.py's arguments through: tyro parses
# its own fields and hands it the rest, untouched, for eval.py to parse.
COMMANDS = {
    "new": ("worktrees", "new"),
    "rm": ("worktrees", "rm"),
    "submit": ("worktrees", "submit"),
    "check": ("worktrees", "check"),
    "journal": ("records", "journal"),
    "idea": ("records", "idea"),
    "ideas": ("records", "ideas"),
    "report": ("records", "report"),
    "record": ("records", "record"),
    "paper": ("papers", "paper"),
    "results": ("progress", "results"),
    "best": ("progress", "best"),
    "next": ("progress", "what_next"),
    "compare": ("compare", "compare"),
    "queue": ("queue", "Queue"),
    "gpus": ("queue", "gpus"),
    "status": ("queue", "status"),
    "log": ("queue", "log"),
    "follow": ("queue", "follow"),
    "review": ("queue", "review"),
    "plot": ("plots", "plot"),
    "site": ("website", "site"),
    "export": ("export", "export"),
    "prepare": ("runs", "prepare"),
    "baseline": ("runs", "Baseline"),
    "plan": ("plan", "Plan"),
    "confirm": ("runs", "confirm"),
    "audit": ("audit", "audit"),
    "aa": ("runs", "Aa"),
    "determinism": ("runs", "Determinism"),
    "verify": ("runs", "verify"),
    "notify": ("notify", "notify"),
    "resume": ("notify", "resume"),
}


def run(argv: list[str]) -> int:
    name, args = (argv[0], argv[1:]) if argv else ("", [])
    if name == "pre-commit":  # the git hook
        problems = pre_commit_violations(main_root())
        for p in problems:
            print(f"commit refused: {p}", file=sys.stderr)
        return 1 if problems else 0
    if name not in COMMANDS:
        raise Refusal(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} (`uv run just` lists them)")
    install_hooks(main_root())
    module, attribute = COMMANDS[name]
    command = getattr(importlib.import_module(f"harness.{module}"), attribute)
    if isinstance(command, type):
        parsed, eval_args = tyro.cli(command, args=args, prog=f"just {name}", return_unknown_args=True)
        parsed(eval_args)
    else:
        tyro.cli(command, args=args, prog=f"just {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return entry_point(run, list(sys.argv[1:] if argv is None else argv))
