"""Every command the harness prints for a person or an agent to run next, built here and nowhere else, so
that each one runs as printed (tests/test_advice.py parses every command the harness emits against the
real command line)."""

import shlex

from harness.git import WORKTREES


def command(recipe: str, *args: str, where: str = "main") -> str:
    """`uv run just RECIPE ARGS`, run from the experiment's worktree unless `where` is main."""
    cd = "" if where == "main" else f"cd {WORKTREES}/{where} && "
    return f"{cd}uv run just {shlex.join([recipe, *args])}"


def rerun_args(row: dict, fields: bool = True) -> list[str]:
    """The eval.py arguments that repeat a row's run: its config and (with `fields`) its field overrides, its
    device and budget, its process and thread counts; not its seed."""
    name, _, overrides = row["config"].partition(":")
    args = []
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        flag = key.replace("_", "-")
        if key == "nproc" or fields:  # every train.Config field takes a value, booleans and None included
            args += [f"--{flag}", value]
    head = ["--config", name] if name.endswith(".json") else [name]
    threads = ["--threads", str(row["threads"])] if row.get("threads") else []  # the number depends on it
    return [*head, *args, "--device", row["device"], "--budget-tokens", str(row["budget"]), *threads]


def seed_runs(slug: str, row: dict, seeds: range) -> str:
    """'N more seed(s):' and one `just eval` per seed, from the slug's worktree."""
    lines = [f"  {command('eval', *rerun_args(row), '--seed', str(s), where=slug)}" for s in seeds]
    return f"{len(seeds)} more seed{'' if len(seeds) == 1 else 's'}:\n" + "\n".join(lines)


def baseline(row: dict, seeds: int) -> str:
    """main's baseline at a row's config name, device and budget (main's code: the row's field overrides
    are the experiment's, not main's)."""
    return command("baseline", "--seeds", str(seeds), *rerun_args(row, fields=False))


def confirm(slug: str) -> str:
    return command("confirm", slug)


def submit(slug: str) -> str:
    return command("submit", slug)


def new(slug: str) -> str:
    return command("new", slug)
