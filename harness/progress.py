"""Where the research stands, from the ledger and the ideas: `just results`, `just best` (the bar and the
verdicts in its group) and `just next` (the seed's algorithm: IDEATE or IMPLEMENT)."""

import dataclasses
from pathlib import Path

import polars as pl

from harness import Refusal, advice
from harness.compare import compare_slug
from harness.notify import breaker
from harness.records import ideas_table, journal_entries
from harness.stats import SEED_PLANS
from harness.table import (
    bar_line,
    best_rows,
    group_name,
    ledger,
    newest_group,
    print_json,
    print_table,
    same_group,
    the_bar,
)
from repo.git import WORKTREES, main_root, uncommitted_files
from repo.ledger import record_killed_runs

IDEATE_UNTIL = 30  # the seed's algorithm: ideate while fewer ideas than this exist


def results(n: int = 20, /, json: bool = False) -> None:
    """The last N ledger rows as a table (or JSON)."""
    df = ledger(main_root()).tail(n)
    if json:
        return print_json(df.to_dicts())
    print_table(df)


def best(json: bool = False) -> None:
    """The best ok row of each comparable group (eval_sha, data_fp, device, budget); main's baseline,
    the bar; and the verdict of every experiment in the bar's group."""
    df = ledger(main_root())
    groups, bar = best_rows(df), the_bar(df)
    contenders = []
    if bar is not None:
        group = df.filter(same_group(bar["row"]) & (pl.col("status") == "ok") & (pl.col("experiment") != "main"))
        contenders = group["experiment"].unique(maintain_order=True).to_list()
    verdicts = {slug: compare_slug(df, slug) for slug in contenders}
    if json:
        return print_json(
            dict(groups=groups.to_dicts(), bar=bar, verdicts={k: dataclasses.asdict(v) for k, v in verdicts.items()})
        )
    print_table(groups)
    if bar is None:
        print("the bar: none yet (no baseline; score main's seeds first: uv run just baseline)")
        return
    print(bar_line(bar, 6))
    for slug, result in verdicts.items():
        print(f"  {slug}: {result.outcome} — {result.why}")


def where_things_stand(root: Path) -> dict:
    df = ledger(root)
    worktrees = (
        sorted(p.name for p in (root / WORKTREES).iterdir() if p.is_dir()) if (root / WORKTREES).is_dir() else []
    )
    last = {}
    for slug in worktrees:
        rows = df.filter(pl.col("experiment") == slug)
        last[slug] = None if rows.is_empty() else rows.row(-1, named=True)
    bar = the_bar(df)
    anchor = newest_group(df, bar)
    # best and bar from one comparable group: the bar's, else the newest ok run's
    in_group = None if anchor is None else df.filter(same_group(anchor) & (pl.col("status") == "ok"))
    best = None if in_group is None else in_group.sort("val_bpb").row(0, named=True)
    entries = journal_entries(root)
    newest = entries[0].strip() if entries else None
    return dict(worktrees=last, bar=bar, best=best, newest_journal_entry=newest, rows=df.height)


def next_step(root: Path) -> dict:
    """The seed's loop: IDEATE below IDEATE_UNTIL ideas or when every idea has results, else IMPLEMENT the
    best-rated idea without results. Below the threshold, that idea is named too: an idea written and never
    scored is work waiting, whatever the count."""
    ideas = ideas_table(root)
    untried = [i for i in ideas if i["results"] == 0]
    key = lambda i: (i["rating"] if i["rating"] is not None else -1.0, [-ord(c) for c in i["date"]])  # noqa: E731
    best = max(untried, key=key) if untried else None
    if best is not None:
        rating = "unrated" if best["rating"] is None else f"rated {best['rating']:g}/10"
        named = f"{best['slug']} is the best-rated without results ({rating}, {len(untried)} untried)"
    if len(ideas) < IDEATE_UNTIL:
        why = f"{len(ideas)} ideas in 1_ideas/, fewer than {IDEATE_UNTIL}: brainstorm more"
        return dict(mode="IDEATE", idea=best, why=why + (f"; or score an untried one: {named}" if best else ""))
    if best is None:
        return dict(mode="IDEATE", idea=None, why=f"all {len(ideas)} ideas have results: brainstorm new ones")
    return dict(mode="IMPLEMENT", idea=best, why=f"{len(ideas)} ideas; {named}")


def pending(root: Path) -> tuple[list[dict], str | None]:
    """What is waiting, in the order to do it: experiments called improved and not confirmed, finished
    labelled runs not reviewed, experiments with runs and no report, and the record not committed; and why
    the queue was not checked, if it was not."""
    from harness.compare import confirmation_rows, exploration_rows
    from harness.queue import unreviewed
    from harness.records import RECORD
    from harness.stats import Outcome

    df, todo = ledger(root), []
    experiments = df.filter((pl.col("experiment") != "main") & (pl.col("status") == "ok"))["experiment"].unique(
        maintain_order=True
    )
    for slug in experiments:
        confirming = confirmation_rows(df, slug)
        if compare_slug(df, slug).outcome == Outcome.IMPROVED and not (confirming.complete or confirming.problems):
            newest = exploration_rows(df, slug).sort("started_at").row(-1, named=True)  # the row compare judged by
            pairs, size = confirming.mine.height, SEED_PLANS[newest["device"]].confirm
            why = f"its confirmation has {pairs} of {size} pairs" if pairs else "not yet confirmed on fresh seeds"
            todo.append(
                dict(
                    kind="confirm",
                    slug=slug,
                    why=f"called improved, {why}" + advice.time_here(root, newest, 2 * (size - pairs), holdout=True),
                    command=advice.confirm(slug),
                )
            )
    queue_unchecked = None
    try:
        runs = unreviewed(root)
    except Refusal as e:  # pueue is optional: say that the queue was not looked at, and why
        runs, queue_unchecked = [], str(e)
    for run in runs:
        what = f"{run['kind']} {run['id']} ({run['slug']}) finished: its Q and H meet the result"
        todo.append(dict(kind="review", slug=run["slug"], why=what, command=advice.command("review")))
    for slug in df.filter(pl.col("experiment") != "main")["experiment"].unique(maintain_order=True):
        if not any((root / "9_reports").glob(f"*_{slug}.md")):
            todo.append(
                dict(kind="report", slug=slug, why="has runs and no report", command=advice.command("report", slug))
            )
    changed = uncommitted_files(root, *RECORD)
    if changed:
        what = f"{len(changed)} changed: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"
        todo.append(
            dict(
                kind="record", slug=None, why=f"the record is not committed ({what})", command=advice.command("record")
            )
        )
    return todo, queue_unchecked


def what_next(json: bool = False) -> None:
    """What is pending (confirm, review, report, record), then the seed's algorithm: IDEATE or IMPLEMENT (which
    idea, and why), and where things stand."""
    root = main_root()
    record_killed_runs(root)
    todo, queue_unchecked = pending(root)
    step, state, stopped = next_step(root), where_things_stand(root), breaker(root)
    if json:
        return print_json({"stop": stopped, "pending": todo, "queue_unchecked": queue_unchecked, **step, **state})
    if stopped:
        print(f"STOP: {stopped}")
    for item in todo:
        print(f"pending {item['kind']}: {item['slug'] + ' ' if item['slug'] else ''}{item['why']}\n  {item['command']}")
    if queue_unchecked:
        print(f"queue: not checked ({queue_unchecked})")
    print(f"mode: {step['mode']}{' (once the above is done)' if todo else ''}\nwhy: {step['why']}")
    if step["idea"]:
        print(f"next: {advice.new(step['idea']['slug'])}   # {step['idea']['file']}")
    if state["bar"] is not None:  # what scoring an idea costs: its seeds in the bar's group
        seeds = SEED_PLANS[state["bar"]["row"]["device"]].runs
        print(f"an idea's seeds in the bar's group:{advice.time_here(root, state['bar']['row'], seeds)}")
    print(f"\nledger: {state['rows']} rows")
    bar, b = state["bar"], state["best"]
    if bar is not None:
        print(bar_line(bar, 4))
    if b is not None:
        baseline = f"run just baseline{advice.time_here(root, b, SEED_PLANS[b['device']].baseline)}"
        where = "in that group" if bar is not None else f"no baseline yet: {baseline}; in {group_name(b)}"
        print(f"best: {b['val_bpb']:.4f} val_bpb, {b['experiment']} ({b['run_id']}), {where}")
    for slug, r in state["worktrees"].items():
        print(
            f"worktree {slug}: "
            + ("no runs yet" if r is None else f"last {r['status']} {r['val_bpb']} ({r['run_id']})")
        )
    print("newest journal entry:\n" + (state["newest_journal_entry"] or "(none)"))
