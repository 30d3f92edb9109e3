"""Word when it matters: a command configured once (notify.toml, or RESEARCH_NOTIFY) that the harness runs with a
JSON document on stdin when an experiment is confirmed, when a new best lands in the bar's group, and when runs
fail N times in a row; and the circuit breaker of that streak, which `just next` and `just queue` obey until
`just resume`.

Each scored run, once its row is written, starts `python -m harness notify RUN_ID` in a process of its own
(eval.py: the referee runs a command, it imports none of this), so a slow or failing hook never holds a run.
What a hook did goes to runs/notify.log; what was said, and the breaker's reset, to runs/notify.json."""

import json
import os
import shlex
import subprocess
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from harness import Refusal, advice
from harness.stats import Outcome, Verdict
from harness.table import ledger, same_group, the_bar
from repo import write_atomic
from repo.git import main_root
from repo.runs import NOTIFY_CONFIG, NOTIFY_ENV, NOTIFY_LOG, RUNS

STATE = "notify.json"  # under runs/: the streak already told of, where `just resume` reset the breaker
CRASH_STREAK = 3  # failed runs in a row that trip the breaker, unless notify.toml says `crash_streak = N`
HOOK_TIMEOUT_S = 60


def settings(root: Path) -> dict:
    """{command, crash_streak}: notify.toml's, the environment's command over it; a file that is not TOML, or a
    streak below 1, is a Refusal naming the fix."""
    path, found = root / NOTIFY_CONFIG, {}
    if path.exists():
        try:
            found = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise Refusal(f'{path}: not TOML ({e}); write e.g. command = "sh notify.sh" and crash_streak = 3') from e
    streak = found.get("crash_streak", CRASH_STREAK)
    if not isinstance(streak, int) or streak < 1:
        raise Refusal(f"{path}: crash_streak = {streak!r}; give a whole number of failed runs, 1 or more")
    return dict(command=os.environ.get(NOTIFY_ENV) or found.get("command"), crash_streak=streak)


def read_state(root: Path) -> dict:
    path = root / RUNS / STATE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(root: Path, state: dict) -> None:
    write_atomic(root / RUNS / STATE, (json.dumps(state, indent=2) + "\n").encode())  # read by others at any time


def failed_streak(df: pl.DataFrame, after: int = 0) -> list[dict]:
    """The rows that ended `crash` or `timeout` at the end of the ledger, in order, among its rows from `after` on
    (where `just resume` left it)."""
    streak = []
    for row in reversed(df.slice(after).to_dicts()):
        if row["status"] == "ok":
            break
        streak.insert(0, row)
    return streak


def breaker(root: Path, df: pl.DataFrame | None = None) -> str | None:
    """Why to stop and look, when the newest runs failed crash_streak times in a row since the last
    `just resume`; None otherwise."""
    df = ledger(root) if df is None else df
    streak = failed_streak(df, read_state(root).get("resumed_at_row", 0))
    return stop_and_look(streak) if len(streak) >= settings(root)["crash_streak"] else None


def stop_and_look(streak: list[dict]) -> str:
    """What `just next` and `just queue` say of a tripped breaker: the streak's newest runs, their errors, the way on."""
    ids = ", ".join(r["run_id"] for r in streak[-3:])
    why = "; ".join(dict.fromkeys(f"{r['status']}: {(r['error'] or '')[:120]}" for r in streak[-3:]))
    return (
        f"{len(streak)} runs in a row failed (the newest: {ids}; {why}): stop and look (`uv run just results`, the "
        f"runs' logs in runs/), then `{advice.command('resume')}` lets `just queue` add runs again"
    )


def resume() -> None:
    """Reset the circuit breaker after a string of failed runs: `just queue` adds runs again, `just next` stops
    saying to stop. The failed rows stay in the ledger."""
    root = main_root()
    df = ledger(root)
    why = breaker(root, df)
    write_state(root, {**read_state(root), "resumed_at_row": df.height})
    print(f"resume: {'the breaker is reset' if why else 'the breaker was not tripped'} ({df.height} rows so far)")


def events(root: Path, run_id: str) -> list[dict]:
    """What the row `run_id` is news of: a new best in the bar's group (better than every earlier ok row there), or
    the failed run that makes a streak of crash_streak; each told once (runs/notify.json)."""
    df = ledger(root)
    mine = df.filter(pl.col("run_id") == run_id)
    if mine.is_empty():
        raise Refusal(f"no run {run_id!r} in the ledger")
    row, found, state = mine.row(-1, named=True), [], read_state(root)
    bar = the_bar(df)
    if row["status"] == "ok" and bar is not None:
        group = df.filter(same_group(bar["row"]) & (pl.col("status") == "ok"))
        earlier = group.filter(pl.col("started_at") < row["started_at"])
        if run_id in group["run_id"].to_list() and not earlier.is_empty() and row["val_bpb"] < earlier["val_bpb"].min():
            best = earlier.sort("val_bpb").row(0, named=True)
            found.append(
                dict(
                    event="new_best",
                    text=f"new best in the bar's group: {row['experiment']} {row['val_bpb']:.4f} val_bpb ({run_id}), "
                    f"was {best['val_bpb']:.4f} ({best['experiment']}, {best['run_id']})",
                    previous_best=best,
                    bar=dict(group=bar["group"], mean=bar["mean"], std=bar["std"], n=bar["n"]),
                )
            )
    streak = failed_streak(df, state.get("resumed_at_row", 0))
    tripped = len(streak) >= settings(root)["crash_streak"]
    if row["status"] != "ok" and tripped and state.get("streak_told") != streak[0]["run_id"]:
        write_state(root, {**state, "streak_told": streak[0]["run_id"]})
        found.append(
            dict(
                event="crash_streak",
                text=f"{len(streak)} runs in a row failed, the newest {run_id} ({row['status']}: {row['error']})",
                runs=[r["run_id"] for r in streak],
                stopped=stop_and_look(streak),
            )
        )
    return [dict(e, run=row) for e in found]


def send(root: Path, event: dict) -> int | None:
    """Run the hook with `event` (and the project, the time) as JSON on stdin, from the main checkout; its exit
    code (None without a hook, or past HOOK_TIMEOUT_S), logged in runs/notify.log. A failing hook fails nothing."""
    command = settings(root)["command"]
    if not command:
        return None
    document = dict(event, project=str(root), time=datetime.now(UTC).isoformat(timespec="seconds"))
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            shlex.split(command),
            input=json.dumps(document, default=str),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=HOOK_TIMEOUT_S,
        )
        code, output = done.returncode, (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        code, output = None, f"{type(e).__name__}: {e}"
    (root / RUNS).mkdir(exist_ok=True)
    with open(root / RUNS / NOTIFY_LOG, "a") as log:
        log.write(
            f"{document['time']} {event['event']} -> {command!r}: exit {code} in {time.perf_counter() - t0:.1f} s"
            + (f"\n  {output[:2000]}" if output else "")
            + "\n"
        )
    return code


def notify(run_id: str, /) -> None:
    """Tell the hook what the row RUN_ID is news of (started by each scored run once its row is written)."""
    root = main_root()
    for event in events(root, run_id):
        send(root, event)


def confirmed(root: Path, slug: str, verdict: Verdict | None) -> None:
    """`just confirm`'s end: an experiment confirmed (improved on fresh seeds and on the holdout) is news."""
    if verdict is not None and verdict.outcome == Outcome.IMPROVED:
        what = dict(outcome=str(verdict.outcome), why=verdict.why, advice=verdict.advice)
        send(
            root,
            dict(event="confirmed", text=f"{slug} confirmed on fresh seeds: {verdict.why}", slug=slug, verdict=what),
        )
