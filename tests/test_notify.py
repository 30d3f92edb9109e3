"""Word when it matters: the notification hook, a real script that records what it receives, told of a new best in
the bar's group and of a string of failed runs by the runs themselves, and of a confirmation; the circuit breaker
that the streak trips, which `just next` and `just queue` obey until `just resume`."""

import json
import sys
import time
from pathlib import Path

from conftest import add_rows, draw, group_of, just, ledger
from harness import notify, table
from harness.compare import CONFIRM_SEEDS, confirmation

HOOK = """import json, pathlib, sys
document = json.load(sys.stdin)
with open(pathlib.Path(sys.argv[1]), "a") as f:
    f.write(json.dumps(document) + "\\n")
"""


TIMED_OUT = ("eval", "tiny", "--budget-tokens", "4000", "--wall-cap-s", "0.01", "--seed")  # the cap passes at once


def received(path: Path, n: int, timeout: float = 120) -> list[dict]:
    """The first n documents the hook wrote (the notifier runs in a process of its own, after the run's row)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)
    raise AssertionError(f"the hook received {len(lines)} documents in {timeout:.0f} s, not {n}")


def test_a_new_best_and_a_streak_of_failed_runs_reach_the_hook_and_the_breaker_holds_the_queue(
    project, tmp_path, small_corpus
):
    hook, inbox = tmp_path / "hook.py", tmp_path / "received.jsonl"
    hook.write_text(HOOK)
    (project / "notify.toml").write_text(f'command = "{sys.executable} {hook} {inbox}"\ncrash_streak = 2\n')
    assert just(project, "eval", "tiny", "--budget-tokens", "3000", env=small_corpus).returncode == 0  # no bar: no news
    first = ledger(project).row(0, named=True)
    group = group_of(first)
    add_rows(  # main's baseline at 4,000 tokens, in that run's group but far worse than any tiny run
        project,
        *[dict(group, experiment="main", val_bpb=9.0 + s / 10, seed=s, budget_tokens=4000, train_tokens=3584,
               role="baseline", description=f"baseline seed {s}/2") for s in (0, 1)],
    )  # fmt: skip
    assert just(project, "eval", "tiny", "--budget-tokens", "4000", "--seed", "5", env=small_corpus).returncode == 0
    best = ledger(project).row(-1, named=True)
    [news] = received(inbox, 1)
    assert news["event"] == "new_best" and news["run"]["run_id"] == best["run_id"] and news["project"] == str(project)
    assert news["previous_best"]["val_bpb"] == 9.0 and news["run"]["val_bpb"] == best["val_bpb"] < 9.0
    assert news["bar"]["n"] == 2 and "new best in the bar's group: main" in news["text"]

    for seed in (6, 7):  # two runs that cannot finish: the wall cap passes at once
        failed = just(project, *TIMED_OUT, str(seed), env=small_corpus)
        assert failed.returncode == 1
    rows = ledger(project).tail(2)
    assert rows["status"].to_list() == ["timeout", "timeout"]
    streak = received(inbox, 2)[1]
    assert streak["event"] == "crash_streak" and streak["runs"] == rows["run_id"].to_list()
    assert "2 runs in a row failed" in streak["stopped"] and "just resume" in streak["stopped"]

    stop = just(project, "next")
    assert stop.stdout.startswith("STOP: 2 runs in a row failed") and rows["run_id"][-1] in stop.stdout
    assert json.loads(just(project, "next", "--json").stdout)["stop"].startswith("2 runs in a row failed")
    refused = just(project, "queue", "Q: does it run? H: yes", "main", "tiny")
    assert refused.returncode == 2 and "not queued: 2 runs in a row failed" in refused.stderr
    assert "the breaker is reset" in just(project, "resume").stdout
    assert "STOP" not in just(project, "next").stdout
    assert (
        "not queued" not in just(project, "queue", "Q: does it run? H: yes", "main", "tiny").stderr
    )  # (no pueue here)
    time.sleep(2)  # nothing more was news: one document each
    assert len(received(inbox, 2)) == 2 and "exit 0" in (project / "runs" / "notify.log").read_text()


def test_a_confirmed_experiment_reaches_the_hook_and_a_failing_hook_fails_nothing(project, tmp_path, monkeypatch):
    hook, inbox = tmp_path / "hook.py", tmp_path / "received.jsonl"
    hook.write_text(HOOK)
    (project / "notify.toml").write_text(f'command = "{sys.executable} {hook} {inbox}"\n')
    seeds = [CONFIRM_SEEDS.start + s for s in (5, 6, 7)]
    add_rows(
        project,
        *[dict(experiment="main", val_bpb=2.0 + s / 100, seed=s, description=f"baseline seed {s}/3") for s in range(3)],
        *[dict(experiment="fast", val_bpb=1.5 + i / 100, seed=s, description=f"confirm seed {s}") for i, s in enumerate(seeds)],
        *[dict(experiment="main", val_bpb=2.0 + i / 100, seed=s, description=f"confirm fast seed {s}") for i, s in enumerate(seeds)],
    )  # fmt: skip
    draw(project, "fast", *seeds)
    monkeypatch.chdir(project)  # where the draws are read from: the checkout the command runs in
    verdict = confirmation(table.ledger(project), "fast")  # what `just confirm fast` judges at its end
    assert verdict.outcome == "improved", verdict.why
    notify.confirmed(project, "fast", verdict)
    [news] = received(inbox, 1)
    assert news["event"] == "confirmed" and news["slug"] == "fast" and news["verdict"]["outcome"] == "improved"

    (project / "notify.toml").write_text('command = "false"\n')  # a hook that fails: logged, nothing else
    notify.confirmed(project, "fast", verdict)
    assert "confirmed -> 'false': exit 1" in (project / "runs" / "notify.log").read_text()
    (project / "notify.toml").write_text("crash_streak = 0\n")
    refused = just(project, "next")
    assert refused.returncode == 2 and "crash_streak = 0; give a whole number of failed runs" in refused.stderr
