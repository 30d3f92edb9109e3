"""An experiment's rows against main's: `just compare` (its exploration seeds against main's baseline) and
the confirmation on fresh seeds that `just confirm` runs and `just submit` needs; the advice names the
exact commands to run next."""

import dataclasses
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import polars as pl

from harness import Refusal, advice
from harness.stats import SEED_PLANS, Outcome, Verdict, verdict
from harness.table import COMPARABLE, baseline_rows, group_name, ledger, ok_rows, print_json, same_group
from repo import append_durably
from repo.git import main_root
from repo.ledger import CONFIRM_ROLE, rows_in_flight
from repo.runs import RUNS, read_steps

# `just confirm` draws its seeds in secret from here: too many to screen, and above every seed a person picks
CONFIRM_SEEDS = range(2**31, 2**32)
DRAWS = "confirm-draws.jsonl"  # under runs/: every seed `just confirm` drew, recorded before either side ran


def exploration_rows(df, slug: str):
    """Every scored row of the slug, whatever command ran it (no role keeps a run out of the verdict), one per
    seed: a determinism check's second run repeats its first."""
    return ok_rows(df, slug).sort("started_at").unique("seed", keep="first", maintain_order=True)


def first_fresh_seed(df, row: dict, flight: list[dict] = ()) -> int:
    """The lowest seed above every seed of `row`'s comparable group (runs in flight too), below the
    confirmation seeds."""
    seeds = df.filter(same_group(row) & (pl.col("seed") < CONFIRM_SEEDS.start))["seed"].to_list()
    seeds += [r["seed"] for r in flight if in_group(r, row) and r["seed"] < CONFIRM_SEEDS.start]
    return max(seeds) + 1 if seeds else 0


def in_group(flying: dict, row: dict) -> bool:
    """Whether a run in flight (its row as it stands: a budget asked for, no measured columns) is of `row`'s group."""
    return all(flying.get("budget_tokens" if c == "budget" else c) == row[c] for c in COMPARABLE)


def draw_confirm_seeds(df, n: int) -> list[int]:
    """n seeds drawn with secret randomness from CONFIRM_SEEDS, none that any row of the ledger used or any
    confirmation drew."""
    used, seeds = set(df["seed"].to_list()) | {draw["seed"] for draw in drawn_seeds(main_root())}, []
    while len(seeds) < n:
        seed = CONFIRM_SEEDS.start + secrets.randbelow(len(CONFIRM_SEEDS))
        if seed not in used:
            used.add(seed)
            seeds.append(seed)
    return seeds


def record_draw(root: Path, slug: str, seed: int) -> None:
    """Record that `just confirm` drew `seed` for `slug`, durably, before either side runs: from then on its pair
    has begun. A side that then ends without a row (refused before training, or killed with its process group and
    its marker removed, after its log had shown its loss) leaves the pair waiting at that seed, never dropped for a
    fresh one."""
    drawn_at = datetime.now(UTC).isoformat(timespec="seconds")  # as a row's started_at
    (root / RUNS).mkdir(exist_ok=True)
    append_durably(
        root / RUNS / DRAWS, (json.dumps(dict(experiment=slug, seed=seed, drawn_at=drawn_at)) + "\n").encode()
    )


def drawn_seeds(root: Path) -> list[dict]:
    """Every draw `just confirm` recorded under `root`'s runs/: {experiment, seed, drawn_at}, oldest first."""
    path, draws = root / RUNS / DRAWS, []
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        try:
            draws.append({key: json.loads(line)[key] for key in ("experiment", "seed", "drawn_at")})
        except (ValueError, TypeError, KeyError):
            raise Refusal(
                f"{path}, line {number}: {line!r} is not a draw of `just confirm`; restore it from a backup, or delete "
                "the line if it was never one"
            ) from None
    return draws


def compare_slug(df, slug: str, flight: list[dict] = (), here: Path | None = None) -> Verdict:
    """The slug's exploration rows in the group of its newest one, against main's baseline there; the advice
    names the commands to run next, none for what runs in flight (`flight`: their rows as they stand), and with
    `here` (the main checkout) how long they take on this machine."""
    mine = exploration_rows(df, slug)
    if mine.is_empty():
        raise Refusal(f"no ok rows for {slug!r}: score it first ({advice.command('eval', where=slug)})")
    newest = mine.sort("started_at").row(-1, named=True)
    runs = mine.filter(same_group(newest))
    base = baseline_rows(df, newest)
    result = verdict(runs["val_bpb"].to_list(), base["val_bpb"].to_list())
    plan = SEED_PLANS[newest["device"]]
    first = first_fresh_seed(df, newest, flight)
    flying = [r for r in flight if in_group(r, newest)]
    base_flying = sorted(r["seed"] for r in flying if r["experiment"] == "main" and r["role"] == "baseline")
    mine_flying = sorted(r["seed"] for r in flying if r["experiment"] == slug)
    took = lambda runs, holdout=False: advice.time_here(here, newest, runs, holdout)  # noqa: E731
    if base.height < 2 and base.height + len(base_flying) >= 2:
        then = f"main's baseline {seed_list(base_flying)} in flight: wait for it, then compare again"
    elif base.height < 2:
        seeds = f"{base.height} baseline seed{'' if base.height == 1 else 's'}"
        then = f"{seeds} in this group ({group_name(newest)}): a verdict needs 2; run{took(plan.baseline)}\n  {advice.baseline(newest, plan.baseline)}"
        then += changed_referee_or_data(df, newest)
    elif result.outcome in (Outcome.PROMISING, Outcome.INCONCLUSIVE) and runs.height + len(mine_flying) < plan.runs:
        missing = range(first, first + plan.runs - runs.height - len(mine_flying))
        then = f"{result.advice}{took(len(missing))}; {advice.seed_runs(slug, newest, missing)}" + flight_note(
            mine_flying
        )
    elif result.outcome in (Outcome.PROMISING, Outcome.INCONCLUSIVE) and mine_flying:
        then = f"{result.advice}; {seed_list(mine_flying)} in flight: wait, then compare again"
    elif result.outcome == Outcome.INCONCLUSIVE:
        more = advice.seed_runs(slug, newest, range(first, first + 2))
        then = f"{result.advice} at {runs.height} seeds: drop it, or resolve a smaller effect{took(2)} with {more}"
    elif result.outcome == Outcome.IMPROVED:
        then = f"{result.advice}{took(2 * plan.confirm, True)}: {advice.confirm(slug)}"  # they score the holdout too
    else:
        then = result.advice
    return dataclasses.replace(result, advice=then)


def seed_list(seeds: list[int]) -> str:
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def flight_note(seeds: list[int]) -> str:
    return f"\n  (and {seed_list(seeds)}, in flight)" if seeds else ""


ONE_CHANGE = dict(data_fp="data", eval_sha="referee's core", torch="torch", device_name="processor")


def changed_referee_or_data(df, row: dict) -> str:
    """Why main's baseline is not in `row`'s group, when one thing alone differs: the data, the referee's core,
    torch or the processor."""
    others = df.filter((pl.col("experiment") == "main") & (pl.col("role") == "baseline") & ~same_group(row))
    for column, what in ONE_CHANGE.items():
        rest = [c for c in COMPARABLE if c != column]
        same_but = others.filter(pl.all_horizontal(pl.col(c).eq_missing(row[c]) for c in rest))
        same_but = same_but.filter(~pl.col(column).eq_missing(row[column]))
        if not same_but.is_empty():
            return (
                f"\n  (main's baseline seeds here are of another {what}, {column} {same_but[column][-1]}, this run's is "
                f"{row[column]}: rows of two {column}s never compare; the holdout split of 2026-12 changed every "
                "data_fp once, a change to referee/core.py changes eval_sha, and torch and the processor are "
                "recorded since 2026-12: run main's baseline again here)"
            )
    return ""


FUTILE_AFTER = 2  # pairs: a confirmation whose experiment is not ahead of main by then stops there


class Confirming(NamedTuple):
    """A confirmation as the record has it: the judged pairs' rows of each side, why any confirm:SLUG row does not
    count, the pairs it is judged at, whether it stopped early, the seeds of pairs run after it was complete, and
    the judged pairs begun and not finished (their seed and the sides with no ok row yet)."""

    mine: pl.DataFrame
    mains: pl.DataFrame
    problems: list[str]
    size: int
    stopped: bool
    left_out: list[int]
    waiting: list[tuple[int, list[str]]]

    @property
    def complete(self) -> bool:
        return self.stopped or 0 < self.size <= self.mine.height


def confirmation_rows(df, slug: str) -> Confirming:
    """The slug's confirmation in the group of its newest confirming row. A claim holds by its structure, not by
    the role a row carries (a shell can set any): a seed counts only as a pair, drawn from CONFIRM_SEEDS by
    `just confirm` for this slug (its draw in runs/confirm-draws.jsonl: a seed screened out of sight is none), fresh
    (no row of the ledger, of any experiment, group or status, used it before the pair began), with one ok row a
    side. It is judged once, at the plan's pairs in the order they began (a look at fewer or more would be another
    chance for noise), or at FUTILE_AFTER pairs if the experiment's mean is not below main's there. A pair begins
    when `just confirm` draws its seed (`record_draw`), and is never dropped: a side that failed (crashed, timed out,
    was killed) or left no row waits to be run again at its seed, and that run must retrace the failed one. Were it
    dropped for a fresh seed, a side could be killed, or made to time out by the other side's code, whenever the
    other side's number came out badly."""
    role = pl.col("role") == CONFIRM_ROLE + slug
    tried = df.filter(role & (pl.col("experiment") == slug)).sort(pl.col("status") == "ok", "started_at")
    drawn = {draw["seed"]: draw["drawn_at"] for draw in drawn_seeds(main_root()) if draw["experiment"] == slug}
    unrun = set(drawn) - set(df["seed"].to_list())  # drawn, and no side left a row: the pair waits for both
    if not tried.is_empty():
        newest = tried.row(-1, named=True)  # the newest ok row; the newest try while none is ok
    else:  # no row yet: a drawn seed waits in the group `just confirm` runs it in, the exploration's
        explored = exploration_rows(df, slug)
        if not unrun or explored.is_empty():
            return Confirming(tried, tried, [], 0, False, [], [])
        newest = explored.sort("started_at").row(-1, named=True)
    both = df.filter(same_group(newest) & role & pl.col("experiment").is_in([slug, "main"]))
    rows_of = {seed: rows for (seed,), rows in both.group_by("seed")} | {seed: both.clear() for seed in unrun}
    began = {seed: min(filter(None, [*rows["started_at"], drawn.get(seed)])) for seed, rows in rows_of.items()}
    pairs, problems = [], []
    for seed in sorted(rows_of, key=lambda seed: began[seed]):
        rows = rows_of[seed]
        earlier = df.filter((pl.col("seed") == seed) & (pl.col("started_at") < began[seed]))
        ok = rows.filter(pl.col("status") == "ok")
        if seed not in CONFIRM_SEEDS:
            problems.append(
                f"seed {seed}: not drawn by `just confirm` (it draws from {CONFIRM_SEEDS.start:,} up, in secret)"
            )
        elif seed not in drawn:
            problems.append(f"seed {seed}: not drawn by `just confirm {slug}` (runs/{DRAWS} has no draw of it)")
        elif not earlier.is_empty():
            problems.append(
                f"seed {seed}: not fresh, {', '.join(earlier['run_id'])} used it before the confirmation began"
            )
        elif ok["experiment"].is_duplicated().any():
            problems.append(
                f"seed {seed}: ok rows {', '.join(ok['run_id'])}: a confirmation runs each seed once on each side"
            )
        elif why := not_retraced(rows):
            problems.append(f"seed {seed}: {why}")
        else:
            pairs.append((seed, rows))
    size = SEED_PLANS[newest["device"]].confirm
    missing = [missing_sides(rows, slug) for _, rows in pairs]
    first = pairs[:FUTILE_AFTER]
    finished = len(first) == FUTILE_AFTER and not any(missing[:FUTILE_AFTER])
    stopped = finished and sum(difference(rows, slug) for _, rows in first) >= 0
    judged = first if stopped else pairs[:size]
    judged_missing = list(zip(judged, missing[: len(judged)], strict=True))
    waiting = [(seed, sides) for (seed, _), sides in judged_missing if sides]
    done = [rows["run_id"] for (_, rows), sides in judged_missing if not sides]
    kept = pl.col("run_id").is_in([run for runs in done for run in runs]) & (pl.col("status") == "ok")
    left_out = [seed for seed, _ in pairs[len(judged) :]]
    mine, mains = (both.filter(kept & (pl.col("experiment") == side)) for side in (slug, "main"))
    return Confirming(mine, mains, problems, size, stopped, left_out, waiting)


def missing_sides(pair: pl.DataFrame, slug: str) -> list[str]:
    """The sides of a confirming pair with no ok row yet: it waits for them, at its seed."""
    ok = set(pair.filter(pl.col("status") == "ok")["experiment"])
    return [side for side in (slug, "main") if side not in ok]


def not_retraced(pair: pl.DataFrame) -> str | None:
    """Why a side's ok row at a confirming seed is not the run that failed there before, if it is not. The same
    seed gives the same run, so it must log the same loss at every step the failed one logged; otherwise code that
    is not deterministic could be killed (or end itself) when its loss looked bad, and be run again for another
    draw of luck."""
    for (side,), tries in pair.group_by("experiment"):
        ok, failed = tries.filter(pl.col("status") == "ok"), tries.filter(pl.col("status") != "ok")
        if ok.is_empty() or failed.is_empty():
            continue
        runs = main_root() / RUNS
        rerun = {step["step"]: step["loss"] for step in read_steps(runs / ok["run_id"][0])}
        for run_id in failed["run_id"]:
            for step in read_steps(runs / run_id):
                if rerun.get(step["step"]) != step["loss"]:
                    return (
                        f"{ok['run_id'][0]} does not retrace {run_id}, {side}'s run that failed at this seed (loss "
                        f"{rerun.get(step['step'])} against {step['loss']} at step {step['step']}): the same seed "
                        "must give the same run"
                    )
    return None


def difference(pair: pl.DataFrame, slug: str) -> float:
    """The experiment's val_bpb minus main's at one confirming seed (below zero: the experiment is ahead)."""
    ok = pair.filter(pl.col("status") == "ok")
    value = dict(zip(ok["experiment"], ok["val_bpb"], strict=True))
    return value[slug] - value["main"]


def holdout_reads(df, experiment: str) -> int:
    """How many of the experiment's rows were scored on the sealed holdout (each a read of it)."""
    return df.filter((pl.col("experiment") == experiment) & pl.col("holdout_bpb").is_not_null()).height


def confirmation(df, slug: str) -> Verdict | None:
    """The rule on the rows `just confirm SLUG` ran: fresh seeds of the experiment against fresh seeds
    of main, none of which took part in choosing the experiment, on the validation split and on the sealed
    holdout; a claim needs both. None before any."""
    confirming = confirmation_rows(df, slug)
    mine, mains = confirming.mine, confirming.mains
    if confirming.problems:
        why = "not a confirmation: " + "; ".join(confirming.problems)
        then = f"no pull request: run `{advice.confirm(slug)}`, which draws fresh seeds in secret and runs each on both sides"
        return Verdict(Outcome.INCONCLUSIVE, why, then, mine["val_bpb"].to_list(), mains["val_bpb"].to_list())
    if confirming.waiting:  # a judged pair waits for a side: no verdict before it is run again
        return unfinished(confirming, slug)
    if mine.is_empty():
        return None
    result = verdict(mine["val_bpb"].to_list(), mains["val_bpb"].to_list())
    held = verdict(mine["holdout_bpb"].drop_nulls().to_list(), mains["holdout_bpb"].drop_nulls().to_list())
    why = f"{result.why}\non the holdout: {held.why} (its holdout read {holdout_reads(df, slug)} times)"
    if confirming.left_out:
        why += (
            f"\n(pairs run after it was complete, seeds {', '.join(map(str, confirming.left_out))}, are not judged: "
            "a confirmation is judged once)"
        )
    if confirming.stopped:
        why = f"stopped after {FUTILE_AFTER} pairs, the experiment's mean not below main's: {why}"
        then = "not confirmed on fresh seeds: no pull request; report it as it is"
        return dataclasses.replace(result, why=why, advice=then)  # inconclusive or worse: not below main
    if not confirming.complete:
        why = f"{mine.height} of {confirming.size} pairs: judged at {confirming.size}, not before; {why}"
        then = f"`{advice.confirm(slug)}` runs the other {confirming.size - mine.height}"
        return dataclasses.replace(result, outcome=Outcome.INCONCLUSIVE, why=why, advice=then)
    if result.outcome == Outcome.IMPROVED and held.outcome == Outcome.IMPROVED:
        then = f"confirmed on fresh seeds and on the holdout: `{advice.submit(slug)}` opens the pull request"
        return dataclasses.replace(result, why=why, advice=then)
    if result.outcome == Outcome.IMPROVED:
        then = "improved on fresh seeds but not on the holdout: no pull request; report it as it is"
        return dataclasses.replace(result, outcome=held.outcome, why=why, advice=then)
    then = "not confirmed on fresh seeds: no pull request; report it as it is"
    return dataclasses.replace(result, why=why, advice=then)


def unfinished(confirming: Confirming, slug: str) -> Verdict:
    """The verdict while a judged pair waits for a side that failed: none yet, and the command that finishes it."""
    mine, mains, size = confirming.mine, confirming.mains, confirming.size
    waits = "; ".join(f"seed {seed} waits for {' and '.join(sides)}'s run" for seed, sides in confirming.waiting)
    why = (
        f"{mine.height} of {size} pairs: judged at {size}, not before; {waits} (a pair begun is never dropped for a "
        "fresh seed: the same seed gives the same run)"
    )
    rest = size - mine.height - len(confirming.waiting)
    again = "them again at their seeds" if len(confirming.waiting) > 1 else "it again at its seed"
    then = f"`{advice.confirm(slug)}` runs {again}" + (f", then the other {rest}" if rest > 0 else "")
    return Verdict(Outcome.INCONCLUSIVE, why, then, mine["val_bpb"].to_list(), mains["val_bpb"].to_list())


def verdict_of(df: pl.DataFrame, slug: str) -> dict:
    """The verdicts of `just compare` and of `just confirm`; None for each where there is no ok row or no confirmation."""
    try:
        result = compare_slug(df, slug)
    except Refusal:
        return dict(compare=None, confirmation=None)
    return dict(compare=result, confirmation=confirmation(df, slug))


def compare(slug: str, /, json: bool = False) -> None:
    """SLUG against main's baseline of the same group (improved / promising / inconclusive / worse),
    and its confirmation on fresh seeds once `just confirm SLUG` ran."""
    root = main_root()
    df = ledger(root)
    result, confirmed = compare_slug(df, slug, rows_in_flight(root), root), confirmation(df, slug)
    if json:
        return print_json(dict(dataclasses.asdict(result), confirmation=confirmed and dataclasses.asdict(confirmed)))
    print(f"{slug}: {result.outcome}\n{result.why}\nnext: {result.advice}")
    if confirmed is not None:
        print(f"on fresh seeds: {confirmed.outcome}\n{confirmed.why}\nnext: {confirmed.advice}")
