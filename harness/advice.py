"""Every command the harness prints for a person or an agent to run next, built here and nowhere else, so
that each one runs as printed (tests/test_advice.py parses every command the harness emits against the
real command line)."""

import shlex
from pathlib import Path

from harness import Refusal
from referee.api import RunSpec
from repo.git import WORKTREES
from repo.runs import minutes, pace_here


def command(recipe: str, *args: str, where: str = "main") -> str:
    """`uv run just RECIPE ARGS`, run from the experiment's worktree unless `where` is main."""
    cd = "" if where == "main" else f"cd {WORKTREES}/{where} && "
    return f"{cd}uv run just {shlex.join([recipe, *args])}"


def rerun_spec(row: dict) -> RunSpec:
    """The spec a row's run was scored under (its `spec` column): what reruns copy."""
    if not row.get("spec"):
        raise Refusal(
            f"run {row['run_id']} has no spec (scored before rows kept one): rerun it by hand, with its config "
            f"{row['config']!r}, device {row['device']} and {row['budget']:,} tokens"
        )
    return RunSpec.from_json(row["spec"])


def rerun_args(row: dict, seed: int, fields: bool = True) -> list[str]:
    """The eval.py arguments that repeat a row's run with another seed: its config and (with `fields`) its field
    overrides, device, budget, process and thread counts, as its spec has them."""
    return rerun_spec(row).rerun(seed, keep_fields=fields).to_argv()


def seed_runs(slug: str, row: dict, seeds: range) -> str:
    """'N more seed(s):' and one `just eval` per seed, from the slug's worktree."""
    lines = [f"  {command('eval', *rerun_args(row, s), where=slug)}" for s in seeds]
    return f"{len(seeds)} more seed{'' if len(seeds) == 1 else 's'}:\n" + "\n".join(lines)


def baseline(row: dict, seeds: int) -> str:
    """main's baseline at a row's config name, device and budget (main's code: the row's field overrides
    are the experiment's, not main's)."""
    return command("baseline", "--seeds", str(seeds), *rerun_args(row, 0, fields=False))


def confirm(slug: str) -> str:
    return command("confirm", slug)


def submit(slug: str) -> str:
    return command("submit", slug)


def new(slug: str) -> str:
    return command("new", slug)


def time_here(root: Path | None, row: dict, runs: int, holdout: bool = False) -> str:
    """' (N runs, about T here)': how long `runs` runs like `row` (its config, device, threads, budget) take on
    this machine at the pace of its newest such runs, confirming runs (`holdout`: they score it too) or not;
    ' (N runs; `just plan` ...)' before any; '' without root."""
    if root is None:
        return ""
    pace, what = pace_here(root, row), f"{runs} run{'s' * (runs != 1)}"
    if pace is None:
        return f" ({what}; `{command('plan')}` measures how long they take here)"
    return f" ({what}, about {minutes(runs * pace.run_s(row['budget'], holdout))} here)"
