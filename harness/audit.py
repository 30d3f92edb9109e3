"""`just audit SLUG`: a claim re-derived from the record, one line per check, exit 1 on any failure. The seeds'
structure (drawn by `just confirm`, one ok row a side, fresh), the verdict on them, every confirming row scored again
from its kept code and checkpoint (bit for bit, the holdout too), the memorization probe, the holdout's reads and
the code (under the cap, the commit's, the branch's). `just submit` runs it and the pull request carries its lines,
so a reviewer reads the evidence, not the agent's summary of it."""

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from harness import Refusal
from harness.compare import CONFIRM_SEEDS, Confirming, confirmation, confirmation_rows
from harness.runs import rescore_row, what_differs
from harness.stats import Outcome
from harness.table import group_name, ledger, same_group
from referee import api
from repo.git import git, main_root, show, succeeds
from repo.ledger import CONFIRM_ROLE
from repo.runs import RUNS


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def checks(root: Path, slug: str, df: pl.DataFrame, confirming: Confirming) -> Iterator[Check]:
    """The checks of SLUG's confirmation (`confirming`: its confirmation_rows in the ledger `df`), one at a time
    (each rescoring takes a scoring pass)."""
    mine, mains, problems = confirming.mine, confirming.mains, confirming.problems
    if mine.is_empty() and not problems:
        yield Check("confirmation", False, f"no confirming rows of {slug}: `just confirm {slug}` runs them")
        return
    pairs = sorted(mine["seed"])
    drawn = f"drawn from {CONFIRM_SEEDS.start:,} up"
    if problems:
        yield Check("seeds", False, "; ".join(problems))
    else:
        seeds = ", ".join(map(str, pairs))
        yield Check("seeds", True, f"{len(pairs)} pairs (seeds {seeds}), {drawn}, one ok row a side, none used before")
    result = confirmation(df, slug)
    why = result.why.replace("\n", "; ")
    yield Check("verdict", result.outcome == Outcome.IMPROVED, f"{result.outcome} on fresh seeds: {why}")

    rescored, margin = {}, api.limits()["memorization_margin"]
    for row in pl.concat([mine, mains]).sort("seed", "experiment").iter_rows(named=True):
        check, scores = rescoring(root, row)
        rescored[row["run_id"]] = scores
        yield check
    yield memorization(pl.concat([mine, mains]), rescored, margin)
    yield holdout_reads(df, slug, mine)
    yield from code(root, slug, mine)


def rescoring(root: Path, row: dict) -> tuple[Check, object | None]:
    """One confirming row scored again, the holdout too: the same val_bpb and holdout_bpb, bit for bit."""
    name = f"rescore {row['run_id']}"
    try:
        scores, device_name, _ = rescore_row(root, row, holdout=True)
    except (Refusal, ValueError) as e:
        return Check(name, False, str(e)), None
    recorded = f"val_bpb {row['val_bpb']!r}, holdout_bpb {row['holdout_bpb']!r}"
    if scores.val_bpb == row["val_bpb"]:
        if scores.holdout_bpb == row["holdout_bpb"]:
            return Check(name, True, f"{recorded} again, bit for bit"), scores
        if float(f"{scores.holdout_bpb:.6g}") == row["holdout_bpb"]:  # a row from before it was kept in full
            return Check(name, True, f"{recorded} again (val_bpb bit for bit, holdout_bpb to its 6 digits)"), scores
    differs = "; ".join(what_differs(row, device_name)) or "nothing else differs: the checkpoint or the row changed"
    again = f"rescored {scores.val_bpb!r} and {scores.holdout_bpb!r} ({differs})"
    return Check(name, False, f"{recorded}, {again}"), scores


def memorization(rows: pl.DataFrame, rescored: dict, margin: float) -> Check:
    """Every confirming row predicts the validation and holdout text no more than `margin` better than training
    text it was never served: as recorded, and again on the windows the rescoring drew afresh."""
    worst, refused = 0.0, []
    for row in rows.iter_rows(named=True):
        scores = rescored.get(row["run_id"])
        figures = [(row["val_bpb"], row["unseen_bpb"]), (row["holdout_bpb"], row["unseen_bpb"])]
        if scores is not None:
            figures += [(scores.val_bpb, scores.unseen_bpb), (scores.holdout_bpb, scores.unseen_bpb)]
        if any(unseen is None for _, unseen in figures):
            refused.append(f"{row['run_id']} has no unseen_bpb: it was never probed")
            continue
        better = max(1 - bpb / unseen for bpb, unseen in figures)
        worst = max(worst, better)
        if better > margin:
            refused.append(f"{row['run_id']} predicts scored text {better:.1%} better than unseen training text")
    if refused:
        return Check("memorization", False, "; ".join(refused) + f" (the margin is {margin:.0%})")
    detail = f"at most {worst:.1%} better on the validation or holdout text than on unseen training text"
    return Check("memorization", True, f"{detail}, recorded and on fresh windows (the margin is {margin:.0%})")


def holdout_reads(df: pl.DataFrame, slug: str, mine: pl.DataFrame) -> Check:
    """The sealed holdout is read by `just confirm` alone, in one confirmation: a second one at another budget or
    thread count of the same referee and data would be a choice among confirmations."""
    reads = df.filter((pl.col("experiment") == slug) & pl.col("holdout_bpb").is_not_null())
    by_hand = reads.filter(pl.col("role") != CONFIRM_ROLE + slug)
    newest = mine.sort("started_at").row(-1, named=True)
    kin = (pl.col("eval_sha") == newest["eval_sha"]) & (pl.col("data_fp") == newest["data_fp"])
    elsewhere = reads.filter(kin & ~same_group(newest))
    detail = f"read {reads.height} times by {slug}'s rows, {mine.height} of them the counted pairs'"
    if not by_hand.is_empty():
        return Check("holdout", False, f"{detail}; by rows no confirmation ran: {', '.join(by_hand['run_id'])}")
    if not elsewhere.is_empty():
        others = ", ".join(sorted({group_name(r) for r in elsewhere.iter_rows(named=True)}))
        return Check(
            "holdout", False, f"{detail}; confirmed again in another group ({others}): one claim, one confirmation"
        )
    return Check("holdout", True, detail)


def code(root: Path, slug: str, mine: pl.DataFrame) -> Iterator[Check]:
    """The confirming rows' kept code: under the referee's cap, the files of the commit each row names, and what
    exp/SLUG carries now (the pull request's code is the code that was scored)."""
    cap, branch = api.limits()["max_code_bytes"], f"exp/{slug}"
    on_branch = None  # the branch's experiment code: name -> bytes
    if succeeds("rev-parse", "--verify", "--quiet", branch, cwd=root):
        listed = git("ls-tree", "--name-only", branch, cwd=root).split()
        on_branch = {
            name: show(f"{branch}:{name}", root) for name in listed if name.endswith(".py") and name != "eval.py"
        }
    for row in mine.sort("seed").iter_rows(named=True):
        kept = {path.name: path.read_bytes() for path in sorted((root / RUNS / row["run_id"]).glob("*.py"))}
        size = sum(map(len, kept.values()))
        problems = [f"{size:,} bytes, over the cap of {cap:,}"] if size > cap else []
        problems += [
            f"{name} is not commit {row['commit']}'s"
            for name in kept
            if show(f"{row['commit']}:{name}", root) != kept[name]
        ]
        if on_branch is None:
            problems.append(f"no branch {branch}")
        else:
            problems += [f"{name} differs on {branch}" for name in kept if on_branch.get(name) != kept[name]]
            problems += [f"{name} is on {branch} but was not scored" for name in sorted(set(on_branch) - set(kept))]
        if not kept:
            problems = [f"runs/{row['run_id']} keeps no code (runs/ is local to the machine that scored it)"]
        detail = (
            f"{row['run_id']}: {', '.join(kept)}, {size:,} bytes (cap {cap:,}), commit {row['commit']}'s and {branch}'s"
        )
        yield Check("code", not problems, "; ".join(problems) if problems else detail)


def audit(slug: str, /) -> None:
    """Re-derive SLUG's claim from the record: one line per check, exit 1 if any fails (`just submit` runs it)."""
    root = main_root()
    if not run_audit(root, ledger(root), slug, print):
        raise SystemExit(1)


def run_audit(root: Path, df: pl.DataFrame, slug: str, emit) -> bool:
    """The checks on the ledger `df`, each passed to `emit` as it ends (a line), then the summary line; whether all
    passed."""
    confirming = confirmation_rows(df, slug)
    if not confirming.mine.is_empty():
        emit(f"audit {slug}: its confirmation in {group_name(confirming.mine.row(-1, named=True))}")
    failed = total = 0
    for check in checks(root, slug, df, confirming):
        emit(str(check))
        failed, total = failed + (not check.ok), total + 1
    emit(f"audit: ok ({total} checks)" if not failed else f"audit: FAIL ({failed} of {total} checks)")
    return not failed
