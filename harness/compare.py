"""An experiment's rows against main's: `just compare` (its exploration seeds against main's baseline) and
the confirmation on fresh seeds that `just confirm` runs and `just submit` needs; the advice names the
exact commands to run next."""

import dataclasses
import shlex

import polars as pl

from harness import Refusal
from harness.git import WORKTREES, main_root
from harness.stats import SEED_PLANS, Outcome, Verdict, verdict
from harness.table import baseline_rows, group_name, ledger, ok_rows, print_json, same_group

CONFIRM = "confirm"  # `just confirm SLUG`: "confirm seed S" (the experiment), "confirm SLUG seed S" (main)


def exploration_rows(df, slug: str):
    """The slug's ok rows that took part in choosing it: all but its confirmation rows."""
    return ok_rows(df, slug).filter(~pl.col("description").fill_null("").str.starts_with(CONFIRM))


def eval_args_of(row: dict) -> list[str]:
    """The eval.py arguments that repeat a row's run (its config, device and budget), less the seed."""
    name, _, overrides = row["config"].partition(":")
    args = ["--config", name] if name.endswith(".json") else [name]
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        args += [f"--{key.replace('_', '-')}", value]
    return [*args, "--device", row["device"], "--budget-tokens", str(row["budget"])]


def seed_commands(slug: str, row: dict, seeds: range) -> str:
    where = "" if slug == "main" else f"cd {WORKTREES}/{slug} && "
    return "\n".join(f"  {where}uv run just eval {shlex.join([*eval_args_of(row), '--seed', str(s)])}" for s in seeds)


def first_fresh_seed(df, row: dict) -> int:
    """The lowest seed above every seed of `row`'s comparable group."""
    return df.filter(same_group(row))["seed"].max() + 1


def compare_slug(df, slug: str) -> Verdict:
    """The slug's exploration rows in the group of its newest one, against main's baseline there;
    the advice names the commands to run next."""
    mine = exploration_rows(df, slug)
    if mine.is_empty():
        raise Refusal(f"no ok rows for {slug!r}: score it first (cd {WORKTREES}/{slug} && uv run just eval)")
    newest = mine.sort("started_at").row(-1, named=True)
    runs = mine.filter(same_group(newest))
    base = baseline_rows(df, newest)
    result = verdict(runs["val_bpb"].to_list(), base["val_bpb"].to_list())
    plan = SEED_PLANS[newest["device"]]
    first = first_fresh_seed(df, newest)
    fresh = range(first, first + max(plan.runs - runs.height, 2))
    if base.height < 2:
        advice = f"no baseline in this group ({group_name(newest)}): run it with\n  uv run just baseline {plan.baseline} {shlex.join(eval_args_of(newest)[1:])}"
    elif result.outcome in (Outcome.PROMISING, Outcome.INCONCLUSIVE) and runs.height < plan.runs:
        advice = f"{result.advice}; {plan.runs - runs.height} more seeds:\n{seed_commands(slug, newest, fresh)}"
    elif result.outcome == Outcome.INCONCLUSIVE:
        advice = f"{result.advice} at {runs.height} seeds: drop it, or resolve a smaller effect with more seeds:\n{seed_commands(slug, newest, fresh)}"
    elif result.outcome == Outcome.IMPROVED:
        advice = f"{result.advice}: uv run just confirm {slug}"
    else:
        advice = result.advice
    return dataclasses.replace(result, advice=advice)


def confirmation_rows(df, slug: str):
    """(the slug's confirmation rows, main's rows run beside them) in the group of the newest one."""
    mine = ok_rows(df, slug).filter(pl.col("description").str.starts_with(f"{CONFIRM} seed"))
    if mine.is_empty():
        return mine, mine
    group = same_group(mine.sort("started_at").row(-1, named=True))
    mains = ok_rows(df, "main").filter(group & pl.col("description").str.starts_with(f"{CONFIRM} {slug} seed"))
    return mine.filter(group), mains


def confirmation(df, slug: str) -> Verdict | None:
    """The rule on the rows `just confirm SLUG` ran: fresh seeds of the experiment against fresh seeds
    of main, none of which took part in choosing the experiment; None before any."""
    mine, mains = confirmation_rows(df, slug)
    if mine.is_empty():
        return None
    result = verdict(mine["val_bpb"].to_list(), mains["val_bpb"].to_list())
    if result.outcome == Outcome.IMPROVED:
        return dataclasses.replace(result, advice=f"confirmed: just submit {slug} opens the pull request")
    return dataclasses.replace(result, advice="not confirmed on fresh seeds: no pull request; report it as it is")


def compare(slug: str, /, json: bool = False) -> None:
    """SLUG against main's baseline of the same group (improved / promising / inconclusive / worse),
    and its confirmation on fresh seeds once `just confirm SLUG` ran."""
    df = ledger(main_root())
    result, confirmed = compare_slug(df, slug), confirmation(df, slug)
    if json:
        return print_json(dict(dataclasses.asdict(result), confirmation=confirmed and dataclasses.asdict(confirmed)))
    print(f"{slug}: {result.outcome}\n{result.why}\nnext: {result.advice}")
    if confirmed is not None:
        print(f"on fresh seeds: {confirmed.outcome}\n{confirmed.why}\nnext: {confirmed.advice}")
