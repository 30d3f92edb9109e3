"""Trustworthy comparisons: the noise floor, the determinism check, verdicts, re-verification, plots."""

import json
import math
import os
import shlex
import signal
import struct
import subprocess
import time

import polars as pl
import pytest
import torch

from conftest import JUST, add_rows, block, child_env, draw, git, group_of, just, ledger, new
from harness import stats
from harness.compare import CONFIRM_SEEDS
from repo.runs import minutes, pace_here, remove_scratch

TINY = ["tiny", "--budget-tokens", "3000"]
DRAWN = [CONFIRM_SEEDS.start + 7, CONFIRM_SEEDS.start + 1234, CONFIRM_SEEDS.start + 99]  # as `just confirm` draws


# --- the ledger's verdicts (the rule itself: test_stats.py) ---


def baseline_rows(*values: float, **fields) -> list[dict]:
    n = len(values)
    return [
        dict(experiment="main", val_bpb=v, commit="m", seed=i, description=f"baseline seed {i}/{n}", **fields)
        for i, v in enumerate(values)
    ]


def test_compare_reads_the_ledger_and_names_the_next_commands(project):
    add_rows(
        project,
        *baseline_rows(2.0, 2.02, 2.01, config="tiny", budget_tokens=1000),
        dict(experiment="main", val_bpb=1.5, commit="m", description="not a baseline row"),
        dict(experiment="faster", val_bpb=1.9, commit="f", config="tiny:lr=0.003", budget_tokens=1000),
        dict(experiment="faster", val_bpb=1.91, commit="f", seed=1, config="tiny:lr=0.003", budget_tokens=1000),
        dict(experiment="other-budget", val_bpb=1.0, commit="o", train_tokens=5, config="tiny"),
        dict(experiment="lucky", val_bpb=1.9, commit="l", config="tiny", budget_tokens=1000),
    )
    result = json.loads(just(project, "compare", "faster", "--json").stdout)
    assert result["outcome"] == "improved" and result["baseline"] == [2.0, 2.02, 2.01] and result["runs"] == [1.9, 1.91]
    assert result["advice"].endswith("just confirm faster") and result["confirmation"] is None
    other = just(project, "compare", "other-budget").stdout
    assert "inconclusive" in other and "uv run just baseline --seeds 3 tiny --device cpu --budget-tokens 5" in other
    lucky = just(project, "compare", "lucky").stdout
    assert lucky.startswith("lucky: promising") and "2 more seeds" in lucky
    assert "cd 5_worktrees/lucky && uv run just eval tiny --seed 3 --device cpu --budget-tokens 1000" in lucky
    assert "no ok rows for 'nobody'" in just(project, "compare", "nobody").stderr
    best = just(project, "best").stdout
    assert "the bar: main's baseline 2.010000 ± 0.010000 (n=3) in cpu, 1,000 tokens" in best
    assert "faster: improved" in best and "lucky: promising" in best and "other-budget" not in best.split("the bar")[1]


def test_rows_compare_by_the_budget_asked_for_not_the_tokens_served(project):
    """A batch-size experiment is served fewer tokens (whole batches only) from the same budget."""
    add_rows(
        project,
        *baseline_rows(2.0, 2.02, 2.01, budget_tokens=7_000_000, train_tokens=6_995_968),
        *[
            dict(
                experiment="bigger-batch",
                val_bpb=v,
                commit="b",
                seed=s,
                budget_tokens=7_000_000,
                train_tokens=6_979_584,
            )
            for s, v in enumerate((1.95, 1.96, 1.94))
        ],
    )
    result = json.loads(just(project, "compare", "bigger-batch", "--json").stdout)
    assert result["outcome"] == "improved" and len(result["baseline"]) == 3


def test_rows_at_another_cpu_thread_count_are_another_group(project):
    # The same seed gives another number at another thread count: no verdict across counts.
    add_rows(
        project,
        *baseline_rows(2.0, 2.02, 2.01, budget_tokens=1000, threads=2),
        *[
            dict(experiment="one-thread", val_bpb=v, seed=s, budget_tokens=1000, threads=1)
            for s, v in ((0, 1.5), (1, 1.5))
        ],
    )
    printed = just(project, "compare", "one-thread").stdout
    assert "inconclusive" in printed and "cpu (1 thread), 1,000 tokens" in printed
    assert "uv run just baseline --seeds 3 cpu --device cpu --budget-tokens 1000 --threads 1" in printed


def test_a_rows_role_not_its_description_decides_what_it_counts_for(project):
    # A description that reads like a command's is only a description; a row without a role (an older
    # ledger's) takes the one its description implied when its command wrote it.
    add_rows(
        project,
        *baseline_rows(2.0, 2.02, 2.01, budget_tokens=1000),
        dict(experiment="lr", val_bpb=1.9, seed=3, budget_tokens=1000, role="exploration", description="confirm lr idea"),
        dict(experiment="lr", val_bpb=1.91, seed=4, budget_tokens=1000, role="exploration", description="baseline seed 1/2"),
        dict(experiment="main", val_bpb=9.0, seed=5, budget_tokens=1000, role="exploration", description="baseline seed 5/5"),
        dict(experiment="lr", val_bpb=1.0, seed=6, budget_tokens=1000, role="determinism", description="a check"),
    )  # fmt: skip
    result = json.loads(just(project, "compare", "lr", "--json").stdout)  # every scored row of lr, whatever its role
    assert result["runs"] == [1.9, 1.91, 1.0] and result["baseline"] == [2.0, 2.02, 2.01]
    assert ledger(project)["role"].to_list()[:3] == [None, None, None]  # as written: the file is not rewritten


def test_submit_opens_a_pull_request_only_for_a_result_confirmed_on_fresh_seeds(project):
    new(project, "faster")
    rows = [
        *baseline_rows(2.0, 2.02, 2.01),
        *[dict(experiment="faster", val_bpb=v, commit="f", seed=s) for s, v in enumerate((1.9, 1.91, 1.92))],
    ]
    add_rows(project, *rows)
    chosen = just(project, "submit", "faster")
    assert (
        "no pull request: faster is not confirmed on fresh seeds" in chosen.stdout
        and "just confirm faster" in chosen.stdout
    )
    confirming = [
        dict(
            experiment=e,
            val_bpb=v,
            commit="x",
            seed=s,
            description=d,
            run_id=f"c{i + 3}-{e}",
            started_at=f"2026-01-02T00:00:0{i}",
        )
        for i, (s, (a, b)) in enumerate(zip(DRAWN, ((1.90, 2.01), (1.91, 2.00), (1.92, 2.02)), strict=True))
        for e, v, d in (("faster", a, f"confirm seed {s}"), ("main", b, f"confirm faster seed {s}"))
    ]
    crashed = dict(seed=DRAWN[0] + 5, role="confirm:faster", started_at="2026-01-02T00:00:09")
    crashed_pair = [
        dict(experiment="faster", val_bpb=1.91, **crashed),
        dict(experiment="main", status="crash", **crashed),
    ]
    add_rows(project, *confirming, *crashed_pair)  # a pair one side of which crashed is no pair, and no forgery
    draw(project, "faster", *DRAWN, crashed["seed"])
    submitted = just(project, "submit", "faster")  # confirmed, but rows written by hand re-derive nothing
    assert "faster on fresh seeds: improved" in submitted.stdout and "gh pr create" not in submitted.stdout
    assert submitted.returncode == 1 and "ok    seeds: 3 pairs" in submitted.stdout
    assert f"FAIL  rescore c3-faster: {project / 'runs' / 'c3-faster' / 'model.pt'} is missing" in submitted.stdout
    assert "no pull request: the audit failed (`just audit faster` repeats it)" in submitted.stdout
    compared = just(project, "compare", "faster").stdout
    assert "on fresh seeds: improved" in compared and compared.startswith("faster: improved")
    assert "on the holdout: mean of 3 runs 1.9100 vs baseline 2.0100" in compared
    assert "(its holdout read 3 times)" in compared


def confirming_pairs(slug: str, *pairs: tuple[float, float], first: int = 0) -> list[dict]:
    """Hand-made confirmation pairs (the experiment's val_bpb, main's), at drawn seeds, in the order they began."""
    return [
        dict(
            experiment=e, val_bpb=v, seed=CONFIRM_SEEDS.start + 100 + i, role=f"confirm:{slug}", run_id=f"c{i}-{e}",
            description="confirm", started_at=f"2026-01-02T00:{i:02d}:0{side}",
        )
        for i, (a, b) in enumerate(pairs, start=first)
        for side, (e, v) in enumerate(((slug, a), ("main", b)))
    ]  # fmt: skip


def drawn_pairs(project, slug: str, *pairs: tuple[float, float], first: int = 0) -> list[dict]:
    """confirming_pairs, their seeds drawn for `slug` as `just confirm` draws them before it runs a pair."""
    rows = confirming_pairs(slug, *pairs, first=first)
    draw(project, slug, *dict.fromkeys(row["seed"] for row in rows))
    return rows


def test_a_confirmation_is_judged_once_at_the_plans_pairs(project):
    """Read after every pair, or run twice, a confirmation would give noise more chances: it is judged once, at
    the plan's 3 pairs (pairs after those are not judged), and stops after 2 if the experiment is not ahead."""
    new(project, "late")
    explored = [dict(experiment="late", val_bpb=v, seed=s) for s, v in enumerate((1.9, 1.91, 1.92))]
    add_rows(
        project, *baseline_rows(2.0, 2.02, 2.01), *explored, *drawn_pairs(project, "late", (1.90, 2.01), (1.91, 2.0))
    )
    confirmation = lambda: json.loads(just(project, "compare", "late", "--json").stdout)["confirmation"]  # noqa: E731
    pending = confirmation()  # improved at 2 pairs by the t-test's numbers, and still no verdict
    assert pending["outcome"] == "inconclusive" and pending["why"].startswith("2 of 3 pairs: judged at 3, not before")
    assert pending["advice"] == "`uv run just confirm late` runs the other 1"
    waiting = json.loads(just(project, "next", "--json").stdout)["pending"][0]
    assert waiting["kind"] == "confirm" and waiting["why"].startswith(
        "called improved, its confirmation has 2 of 3 pairs"
    )
    add_rows(project, *drawn_pairs(project, "late", (1.92, 2.02), first=2))
    assert confirmation()["outcome"] == "improved"
    second = drawn_pairs(project, "late", (2.3, 2.0), (2.3, 2.0), (2.3, 2.0), first=3)  # a second `just confirm`
    add_rows(project, *second)
    judged = confirmation()
    assert judged["outcome"] == "improved" and judged["runs"] == [1.90, 1.91, 1.92]
    left_out = ", ".join(str(CONFIRM_SEEDS.start + 100 + i) for i in (3, 4, 5))
    assert f"pairs run after it was complete, seeds {left_out}, are not judged" in judged["why"]
    again = just(project, "confirm", "late")
    assert again.returncode == 2 and "late's confirmation is complete (3 pairs): it is judged once" in again.stderr

    new(project, "flat")  # main's own numbers: after 2 pairs its mean is not below main's, and it stops there
    add_rows(project, dict(experiment="flat", val_bpb=2.0, seed=3, run_id="f3"), *drawn_pairs(project, "flat", (2.0, 2.01), (2.02, 2.0), (1.5, 2.0), first=10))  # fmt: skip
    flat = json.loads(just(project, "compare", "flat", "--json").stdout)["confirmation"]
    assert flat["outcome"] == "inconclusive" and flat["runs"] == [2.0, 2.02]
    assert flat["why"].startswith("stopped after 2 pairs, the experiment's mean not below main's: mean of 2 runs")
    assert flat["advice"].startswith("not confirmed on fresh seeds") and "are not judged" in flat["why"]


def test_a_claim_needs_the_holdout_too(project):
    """Improved on fresh seeds of the validation split, not on the sealed holdout: no pull request."""
    new(project, "overfit")
    explored = [dict(experiment="overfit", val_bpb=v, commit="o", seed=s) for s, v in enumerate((1.9, 1.91, 1.92))]
    add_rows(project, *baseline_rows(2.0, 2.02, 2.01), *explored)
    add_rows(
        project,
        *[
            dict(experiment=e, val_bpb=v, holdout_bpb=h, seed=s, description=d, run_id=f"c{s}-{e}")
            for i, (s, (a, b)) in enumerate(zip(DRAWN, ((1.90, 2.01), (1.91, 2.00), (1.92, 2.02)), strict=True))
            for e, v, h, d in (
                ("overfit", a, 2.3, f"confirm seed {s}"),
                ("main", b, 2.3 - (i + 3) / 1000, f"confirm overfit seed {s}"),
            )
        ],
    )
    draw(project, "overfit", *DRAWN)
    compared = just(project, "compare", "overfit").stdout
    assert "on fresh seeds: worse" in compared and "improved on fresh seeds but not on the holdout" in compared
    submitted = just(project, "submit", "overfit")
    assert "gh pr create" not in submitted.stdout and "no pull request" in submitted.stdout


def test_a_drawn_seed_waits_for_both_sides_and_a_line_that_is_no_draw_is_refused(project):
    """`just confirm` records each draw in runs/confirm-draws.jsonl before either side runs: a drawn seed that no
    row used yet is a pair begun, waiting for both sides; a line there that is not a draw is named, with the repair."""
    add_rows(project, *baseline_rows(2.0, 2.02, 2.01), dict(experiment="x", val_bpb=1.9, seed=3))
    draws = project / "runs" / "confirm-draws.jsonl"
    draws.parent.mkdir(exist_ok=True)
    draws.write_text(f'{{"experiment": "x", "seed": {DRAWN[0]}, "drawn_at": "2026-01-02T00:00:00"}}\n')
    waiting = json.loads(just(project, "compare", "x", "--json").stdout)["confirmation"]
    assert f"0 of 3 pairs: judged at 3, not before; seed {DRAWN[0]} waits for x and main's run" in waiting["why"]
    with draws.open("a") as f:
        f.write('{"experiment": "x", "se\n')
    refused = just(project, "compare", "x")
    assert refused.returncode == 2 and f"{draws}, line 2: " in refused.stderr
    assert "is not a draw of `just confirm`; restore it from a backup" in refused.stderr


def test_a_confirmation_assembled_by_hand_is_no_confirmation(project):
    """The forgery of issue 25: seeds screened with plain runs, the best three run on the experiment's side and
    the worst three on main's, each with the role typed by hand. Each seed is refused by name."""
    new(project, "forged")
    screened = dict(zip((8, 3, 4, 5, 6, 7), (1.90, 1.91, 1.92, 2.00, 2.01, 2.02), strict=True))
    add_rows(
        project,
        *baseline_rows(2.0, 2.02, 2.01),
        *[dict(experiment="forged", val_bpb=v, seed=s) for s, v in screened.items()],
        *[
            dict(experiment=e, val_bpb=screened[s], seed=s, role="confirm:forged", started_at=f"2026-01-02T00:00:0{s}")
            for e, seeds in (("forged", (8, 3, 4)), ("main", (5, 6, 7)))
            for s in seeds
        ],
    )
    result = json.loads(just(project, "compare", "forged", "--json").stdout)["confirmation"]
    assert result["outcome"] == "inconclusive" and result["why"].startswith(
        f"not a confirmation: seed 3: not drawn by `just confirm` (it draws from {CONFIRM_SEEDS.start:,} up"
    )
    assert all(f"seed {s}: not drawn" in result["why"] for s in screened)
    submitted = just(project, "submit", "forged").stdout
    assert "gh pr create" not in submitted and "no pull request" in submitted
    # both sides at each screened seed, still by hand: not drawn, and not fresh
    add_rows(project, *[dict(experiment="main", val_bpb=2.0, seed=s, role="confirm:forged") for s in (8, 3, 4)])
    why = json.loads(just(project, "compare", "forged", "--json").stdout)["confirmation"]["why"]
    assert "seed 8: not drawn by `just confirm`" in why
    # a fresh seed of the drawn range, both sides run with the role typed: a seed screened out of sight (another
    # clone) would look the same, so a seed counts only if `just confirm` drew it
    unrecorded = dict(role="confirm:forged", seed=DRAWN[2], started_at="2026-01-03T00:00:00")
    add_rows(project, *[dict(experiment=e, val_bpb=v, run_id=f"h-{e}", **unrecorded) for e, v in (("forged", 1.9), ("main", 2.0))])  # fmt: skip
    why = json.loads(just(project, "compare", "forged", "--json").stdout)["confirmation"]["why"]
    assert f"seed {DRAWN[2]}: not drawn by `just confirm forged` (runs/confirm-draws.jsonl has no draw of it)" in why
    draw(project, "forged", DRAWN[1], DRAWN[0] - 1)  # drawn, and still no pair: each seed's own reason
    twice = dict(role="confirm:forged", seed=DRAWN[1], started_at="2026-01-03T00:00:00")  # one side scored twice
    add_rows(project, *[dict(experiment=e, val_bpb=v, run_id=f"t-{e}-{v}", **twice) for e, v in (("forged", 1.9), ("forged", 1.8), ("main", 2.0))])  # fmt: skip
    why = json.loads(just(project, "compare", "forged", "--json").stdout)["confirmation"]["why"]
    assert f"seed {DRAWN[1]}: ok rows t-forged-1.9, t-forged-1.8, t-main-2.0: a confirmation runs each seed once" in why
    fresh = dict(role="confirm:forged", started_at="2026-01-03T00:00:00")
    add_rows(
        project,
        dict(experiment="forged", val_bpb=1.9, seed=DRAWN[0] - 1, **fresh),  # drawn range, screened before
        dict(experiment="forged", val_bpb=1.9, seed=DRAWN[0] - 1, started_at="2026-01-01T00:00:00"),
        dict(experiment="main", val_bpb=2.0, seed=DRAWN[0] - 1, **fresh),
    )
    why = json.loads(just(project, "compare", "forged", "--json").stdout)["confirmation"]["why"]
    assert f"seed {DRAWN[0] - 1}: not fresh" in why
    refused = just(project, "eval", "tiny", "--role", "confirm:forged", "--budget-tokens", "3000")
    assert refused.returncode == 2 and "a role given by hand makes no confirmation" in refused.stderr


def test_a_pair_begun_is_never_dropped(project):
    """Issue 25's second forgery: the experiment's number at a confirming seed comes out badly, and main's run of
    that seed is killed (by a shell, or timed out by the experiment's code hogging the machine). Dropping the
    pair for a fresh seed made that a way to choose seeds: the confirmation said improved. The pair waits for
    main's run at its seed, and that run must retrace the one that failed."""
    new(project, "picky")
    explored = [dict(experiment="picky", val_bpb=v, seed=s) for s, v in enumerate((1.9, 1.91, 1.92))]
    unlucky, killed = drawn_pairs(project, "picky", (2.3, 2.0))
    killed |= dict(status="crash", val_bpb=None, error="killed by SIGTERM")
    good = drawn_pairs(project, "picky", (1.90, 2.01), (1.91, 2.0), (1.92, 2.02), first=1)
    add_rows(project, *baseline_rows(2.0, 2.02, 2.01), *explored, unlucky, killed, *good)
    seed = unlucky["seed"]
    confirmation = lambda: json.loads(just(project, "compare", "picky", "--json").stdout)["confirmation"]  # noqa: E731
    waiting = confirmation()  # before: improved, on the three pairs after the dropped one
    assert waiting["outcome"] == "inconclusive" and waiting["runs"] == [1.90, 1.91]
    assert waiting["why"].startswith(f"2 of 3 pairs: judged at 3, not before; seed {seed} waits for main's run")
    assert waiting["advice"] == "`uv run just confirm picky` runs it again at its seed"

    def steps(run_id: str, *losses: float) -> None:
        folder = project / "runs" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").write_text(
            "".join(json.dumps(dict(step=10 * i, loss=x)) + "\n" for i, x in enumerate(losses))
        )

    steps(killed["run_id"], 5.5, 3.1)  # what main's killed run logged before it died
    add_rows(project, dict(experiment="main", val_bpb=2.0, seed=seed, role="confirm:picky", run_id="again-main", description="confirm", started_at="2026-01-03T00:00:00"))  # fmt: skip
    steps("again-main", 5.5, 3.0, 2.5)  # not the run that was killed: another draw of luck
    why = confirmation()["why"]
    assert why.startswith(
        f"not a confirmation: seed {seed}: again-main does not retrace {killed['run_id']}, main's run"
    )
    assert "(loss 3.0 against 3.1 at step 10): the same seed must give the same run" in why
    steps("again-main", 5.5, 3.1, 2.5)  # the same run: the pair is judged, and the unlucky seed counts
    judged = confirmation()
    assert judged["runs"] == [2.3, 1.90] and judged["why"].startswith("stopped after 2 pairs")


# --- real runs: baseline, determinism, verify, plot ---


def test_plan_measures_this_machine_and_later_runs_plan_with_it(project, small_corpus):
    result = just(project, "plan", *TINY, env=small_corpus)
    assert result.returncode == 0, result.stderr
    row = ledger(project).row(0, named=True)
    assert (row["role"], row["seed"], row["budget_tokens"], row["experiment"]) == ("plan", 0, 3000, "main")
    summary = json.loads((project / "runs" / row["run_id"] / "summary.json").read_text())
    assert summary["run_s"] > summary["wall_s"] + summary["eval_s"]  # start to row: more than training and scoring
    steady = summary["steady_tokens_per_s"]  # past the first step line, as the referee served the batches
    assert steady > row["tokens_per_s"] * 0.5 and summary["run_s"] - row["train_tokens"] / steady > summary["eval_s"]
    out = result.stdout.rsplit("---\n", 1)[1]
    assert f"{steady:,.0f} tokens/s past the first steps; scoring {summary['eval_s']:.0f} s" in out
    # the holdout, which only confirming runs score: the validation split's scoring time by its share of bytes
    assert summary["val_bytes"] > 0 and summary["holdout_bytes"] > 0
    holdout = summary["eval_s"] * summary["holdout_bytes"] / summary["val_bytes"]
    assert f"the holdout, which a confirming run scores too, {holdout:.0f} s" in out
    fixed = summary["run_s"] - row["train_tokens"] / steady
    one_run = fixed + 7_000_000 / steady  # the preset, at that pace
    claim = 12 * one_run + 6 * holdout + 6 * (fixed + holdout)  # 12 runs, 6 of them confirming; the audit's 6
    preset = next(line for line in out.splitlines() if "7,000,000 (preset)" in line)
    assert minutes(one_run) in preset and minutes(claim) in preset and minutes(12 * one_run) not in preset
    assert any("3,000 (measured)" in line for line in out.splitlines())
    # a later run like it says how long it will take here, from that pace
    later = just(project, "eval", *TINY, env=small_corpus)
    assert f"like this run here (the newest 1: {steady:,.0f} tokens/s" in later.stderr


def test_determinism_passes_on_cpu(project, small_corpus):
    result = just(project, "determinism", *TINY, "--seed", "3", env=small_corpus)
    assert result.returncode == 0 and "deterministic: yes" in result.stdout
    assert ledger(project)["seed"].to_list() == [3, 3]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_verify_reproduces_a_run_after_its_branch_is_gone_and_flags_tampering(project, small_corpus):
    wt = new(project, "verified")
    (wt / "model.py").write_text((wt / "model.py").read_text().replace("std=0.02)", "std=0.03)"))
    git("commit", "-qam", "another init", cwd=wt)
    assert just(wt, "eval", *TINY, env=small_corpus).returncode == 0
    run_id = ledger(project)["run_id"][0]
    assert just(project, "rm", "verified").returncode == 0  # scored, so removable; the branch stays
    git("branch", "-D", "exp/verified", cwd=project)  # ... until someone deletes it: the run kept its code

    result = just(project, "verify", run_id, env=small_corpus)
    assert result.returncode == 0 and "verify: ok" in result.stdout, result.stdout + result.stderr

    assert just(project, "plot").returncode == 0
    assert png_size(project / "progress.png") == (1200, 700)
    assert png_size(project / "runs" / run_id / "loss.png") == (800, 500)

    results = project / "results.tsv"
    original = results.read_text()
    recorded = ledger(project)["val_bpb"][0]
    named = ("referee core:", "processor:", "torch:", "threads:")  # what decides a number besides code and weights
    assert not any(line.startswith(named) for line in result.stdout.splitlines()), result.stdout
    torch_cell = f"\t{torch.__version__}\t"
    assert original.count(torch_cell) == 1
    results.write_text(original.replace(repr(recorded), repr(recorded - 0.01)).replace(torch_cell, "\t2.0.0\t"))
    tampered_row = just(project, "verify", run_id, env=small_corpus)
    assert tampered_row.returncode == 1 and "MISMATCH" in tampered_row.stdout
    assert f"torch: 2.0.0 then, {torch.__version__} now" in tampered_row.stdout  # what differs, named
    assert tampered_row.stdout.rstrip().endswith(": torch differs")
    results.write_text(original)

    checkpoint = project / "runs" / run_id / "model.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["head.weight"][0, 0] += 1.0
    torch.save(state, checkpoint)
    tampered = just(project, "verify", run_id, env=small_corpus)
    assert tampered.returncode == 1 and "MISMATCH" in tampered.stdout
    assert math.isfinite(recorded)


def test_verify_refuses_what_it_cannot_check(project):
    add_rows(project, dict(experiment="main", val_bpb=2.0, commit="m", status="crash"))
    assert "there is no metric to verify" in just(project, "verify", "r0-main").stderr
    assert "no run 'nope'" in just(project, "verify", "nope").stderr


# --- real runs through the protocol: a batch-size experiment, confirm, aa ---


def test_baseline_prints_the_noise_floor_and_a_batch_size_experiment_compares_with_it(project, small_corpus):
    result = just(project, "baseline", "--seeds", "2", *TINY, env=small_corpus)
    assert result.returncode == 0, result.stderr
    df = ledger(project)
    assert df["description"].to_list() == ["baseline seed 0/2", "baseline seed 1/2"] and df["seed"].to_list() == [0, 1]
    assert df["budget_tokens"].to_list() == [3000, 3000] and df["role"].to_list() == ["baseline", "baseline"]
    out = dict(line.split(": ", 1) for line in result.stdout.rsplit("---\n", 1)[1].splitlines())  # the noise floor
    mean, std = stats.mean_std(df["val_bpb"].to_list())
    assert float(out["mean"]) == pytest.approx(mean, abs=1e-6) and float(out["std"]) == pytest.approx(std, abs=1e-6)
    effect = stats.resolvable_effect(stats.SEED_PLANS["cpu"])
    assert float(out["resolvable_effect"].split()[0]) == pytest.approx(effect * std, abs=1e-6)
    assert out["group"].startswith("cpu (") and f"{len(os.sched_getaffinity(0))} thread" in out["group"] and std > 0

    wt = new(project, "bigger-batch")
    train_py = wt / "train.py"
    train_py.write_text(train_py.read_text().replace("seq_len=64, batch_size=8,", "seq_len=64, batch_size=12,"))
    git("commit", "-qam", "batch 12", cwd=wt)
    assert just(wt, "eval", *TINY, env=small_corpus).returncode == 0
    df = ledger(project)
    assert df["train_tokens"].to_list() == [2560, 2560, 2304] and set(df["budget_tokens"]) == {3000}
    result = json.loads(just(project, "compare", "bigger-batch", "--json").stdout)
    assert len(result["baseline"]) == 2 and len(result["runs"]) == 1 and result["outcome"] != "improved"
    summaries = [json.loads(p.read_text()) for p in (project / "runs").glob("*/summary.json")]
    pace = pace_here(project, df.row(-1, named=True))  # the three runs': same config, device and threads
    assert pace.runs == 3 and pace.tokens_per_s == sorted(s["steady_tokens_per_s"] for s in summaries)[1]
    assert f"(2 runs, about {minutes(2 * pace.run_s(3000))} here)" in result["advice"]  # the two seeds it asks for


def test_confirm_scores_fresh_seeds_of_the_experiment_and_of_main(project, small_corpus):
    new(project, "same")  # main's code: the two sides of each fresh seed must agree to the bit
    hand = dict(config="tiny", budget_tokens=3000, train_tokens=2560)
    add_rows(
        project,
        *baseline_rows(5.0, 5.1, 5.2, **hand),
        dict(experiment="same", val_bpb=4.9, commit="s", seed=7, **hand),
    )
    result = just(project, "confirm", "same", env=small_corpus)  # the plan's 3 pairs, unless it stops after 2
    assert result.returncode == 0, result.stderr
    rows = ledger(project).filter(ledger(project)["description"].str.starts_with("confirm"))
    first, second = rows["seed"][0], rows["seed"][2]  # drawn in secret, far above any seed a person picks
    assert (
        first in CONFIRM_SEEDS
        and second in CONFIRM_SEEDS
        and rows.select("experiment", "seed", "description", "role").rows()
        == [
            ("same", first, f"confirm seed {first}", "confirm:same"),
            ("main", first, f"confirm same seed {first}", "confirm:same"),
            ("same", second, f"confirm seed {second}", "confirm:same"),
            ("main", second, f"confirm same seed {second}", "confirm:same"),
        ]
    )
    assert rows["val_bpb"][0] == rows["val_bpb"][1] and rows["val_bpb"][2] == rows["val_bpb"][3]
    assert set(rows["config"]) == {"tiny"}
    assert (
        "same on fresh seeds: inconclusive\nstopped after 2 pairs, the experiment's mean not below main's"
        in result.stdout
    )
    assert "no pull request" in just(project, "submit", "same", env=small_corpus).stdout

    # The audit re-derives it: each row scored again bit for bit, the holdout too; only the verdict fails.
    audited = just(project, "audit", "same", env=small_corpus)
    lines = audited.stdout.splitlines()
    assert audited.returncode == 1 and lines[-1] == "audit: FAIL (1 of 10 checks)", audited.stdout + audited.stderr
    names = [line.split(":")[0] for line in lines[1:-1]]
    assert names[:2] == ["ok    seeds", "FAIL  verdict"] and sorted(names[2:6]) == sorted(
        f"ok    rescore {run_id}" for run_id in rows["run_id"]
    )
    assert names[6:] == [
        "ok    memorization",
        "ok    holdout",
        "ok    code",
        "ok    code",
    ]  # a code line per experiment row
    assert f"holdout_bpb {rows['holdout_bpb'][0]!r} again, bit for bit" in audited.stdout
    results, kept = project / "results.tsv", project / "runs" / rows["run_id"][0] / "train.py"
    recorded = repr(rows["val_bpb"][0])
    assert results.read_text().count(recorded) == 2  # both sides
    results.write_text(results.read_text().replace(recorded, repr(rows["val_bpb"][0] - 1e-9), 1))
    kept.write_text(kept.read_text() + "# edited after the run\n")
    tampered = just(project, "audit", "same", env=small_corpus).stdout
    assert f"FAIL  rescore {rows['run_id'][0]}: val_bpb {rows['val_bpb'][0] - 1e-9!r}" in tampered
    assert "nothing else differs: the checkpoint or the row changed" in tampered
    assert f"FAIL  code: train.py is not commit {rows['commit'][0]}'s; train.py differs on exp/same" in tampered


def start_confirming(project, small_corpus) -> subprocess.Popen:
    """Main's baseline and an experiment with main's code, as rows (a confirmation judges its own pairs, real runs),
    and `just confirm same 1` started in a session of its own."""
    new(project, "same")
    hand = dict(config="tiny", budget_tokens=3000, train_tokens=2560)
    add_rows(
        project, *baseline_rows(5.0, 5.1, **hand), dict(experiment="same", val_bpb=4.9, commit="s", seed=7, **hand)
    )
    return subprocess.Popen(
        [JUST, "confirm", "same", "1"], cwd=project, env=child_env(small_corpus), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_confirm_runs_a_killed_side_again_at_its_seed(project, small_corpus):
    """Real runs: `just confirm` killed while main's side of its first pair runs; the next `just confirm` runs main
    at that same seed before any fresh one, and gets the experiment's number (main's own code) to the bit."""
    confirming = start_confirming(project, small_corpus)
    deadline = time.monotonic() + 300
    while not (project / "results.tsv").read_text().count("confirm:same") and time.monotonic() < deadline:
        time.sleep(0.05)  # the experiment's side has its row: main's side starts now
    os.killpg(confirming.pid, signal.SIGTERM)
    assert confirming.wait(timeout=120) != 0
    (mine,) = (
        ledger(project).filter(pl.col("role") == "confirm:same").filter(pl.col("experiment") == "same").rows(named=True)
    )
    add_rows(project, *baseline_rows(5.0, 5.1, **group_of(mine), budget_tokens=3000))  # main's, in the real runs' group
    out, rows = confirm_again(project, small_corpus, mine["seed"], "main")
    assert rows.filter(pl.col("seed") == mine["seed"])["val_bpb"].to_list() == [mine["val_bpb"]] * 2
    assert rows.height == 4 and "stopped after 2 pairs" in out  # then one fresh pair, as asked


def confirm_again(project, small_corpus, seed: int, sides: str) -> tuple[str, pl.DataFrame]:
    """`just compare` says the pair at `seed` waits for `sides`, and `just confirm same 1` runs them there before a
    fresh pair: what it printed, and the ok confirming rows after it."""
    waiting = json.loads(just(project, "compare", "same", "--json").stdout)["confirmation"]
    assert f"seed {seed} waits for {sides}'s run" in waiting["why"]
    again = just(project, "confirm", "same", "1", env=small_corpus)
    assert again.returncode == 0, again.stderr
    assert f"seed {seed}: its pair waits for {sides}; run again at that seed" in again.stdout
    return again.stdout, ledger(project).filter((pl.col("role") == "confirm:same") & (pl.col("status") == "ok"))


def test_a_confirming_side_killed_without_a_trace_keeps_its_seed(project, small_corpus):
    """Real runs: the experiment's side of a first pair is killed with its process group once its row is marked, from
    where it trains (SIGKILL: no crash row is written), and its marker removed, as an agent's shell could when the
    loss looked bad; with no row at that seed, `just confirm` drew a fresh one. The draw was recorded before either
    side ran: the pair waits for both sides at its seed, and the next `just confirm` runs it there before any fresh
    seed."""
    confirming = start_confirming(project, small_corpus)
    deadline, marker = time.monotonic() + 300, None
    while marker is None and time.monotonic() < deadline:  # the experiment's side has begun: its row is marked
        marker = next((project / "runs").glob("*-same-*/running.json"), None)
        time.sleep(0.02)
    os.killpg(confirming.pid, signal.SIGKILL)
    confirming.wait(timeout=60)
    seed = json.loads(marker.read_text())["row"]["seed"]
    marker.unlink()
    assert ledger(project).filter(pl.col("role") == "confirm:same").is_empty()  # no row at that seed, anywhere
    _, rows = confirm_again(project, small_corpus, seed, "same and main")
    assert rows["seed"][:2].to_list() == [seed, seed] and rows["val_bpb"][0] == rows["val_bpb"][1]
    remove_scratch(marker.parent.name)  # the killed run's workers' folder: with its marker gone, no reaper finds it


def test_a_claim_from_baseline_to_pull_request_carries_its_audit(project, small_corpus):
    """The protocol end to end on real runs, as program.md has an agent run it: main's baseline, an experiment with a
    real improvement (tiny's learning rate 3e-3 -> 1e-2 at 3,000 tokens: markedly lower at every seed),
    the seeds compare asks for, `just confirm` (drawn seeds, both sides), and submit, whose audit scores every
    confirming row again and whose pull request carries the audit's lines."""
    assert just(project, "baseline", "--seeds", "3", *TINY, env=small_corpus).returncode == 0
    wt = new(project, "hot")
    train_py = wt / "train.py"
    train_py.write_text(train_py.read_text().replace("batch_size=8, lr=3e-3", "batch_size=8, lr=1e-2"))
    git("commit", "-qam", "tiny at lr 1e-2", cwd=wt)
    assert just(wt, "eval", *TINY, env=small_corpus).returncode == 0
    asked = just(project, "compare", "hot", env=small_corpus).stdout
    assert asked.startswith("hot: promising") and "2 more seeds:" in asked
    for seed in (3, 4):  # fresh seeds, as compare asks
        assert f"cd 5_worktrees/hot && uv run just eval tiny --seed {seed} --device cpu --budget-tokens 3000" in asked
        assert just(wt, "eval", *TINY, "--seed", str(seed), env=small_corpus).returncode == 0
    compared = just(project, "compare", "hot", env=small_corpus).stdout
    assert compared.startswith("hot: improved\nmean of 3 runs") and "uv run just confirm hot" in compared
    confirmed = just(project, "confirm", "hot", env=small_corpus)
    assert "hot on fresh seeds: improved" in confirmed.stdout, confirmed.stdout + confirmed.stderr
    submitted = just(project, "submit", "hot", env=small_corpus)
    audit, command = submitted.stdout.split("open the pull request with:\n")
    checks = [line.split(":")[0] for line in audit.splitlines() if line.startswith(("ok  ", "FAIL"))]
    rescore = [
        f"ok    rescore {row['run_id']}"
        for row in ledger(project).filter(pl.col("seed") >= DRAWN[0]).iter_rows(named=True)
    ]
    assert checks[:2] == ["ok    seeds", "ok    verdict"] and sorted(checks[2:8]) == sorted(rescore)
    assert checks[8:] == ["ok    memorization", "ok    holdout", *["ok    code"] * 3], audit
    assert audit.rstrip().endswith("audit: ok (13 checks)")
    body = shlex.split(command)[-1]  # the pull request's body: the audit's own lines
    assert "`just audit hot` re-derived it from the record" in body and "audit: ok (13 checks)" in body
    assert all(line in body for line in audit.splitlines() if line.startswith("ok  "))


def test_aa_passes_on_mains_own_code_and_fails_when_runs_drift(project, small_corpus):
    result = just(project, "aa", "--experiments", "1", *TINY, env=small_corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    out = block(result.stdout)
    assert out["aa_experiments"] == "1" and int(out["improved"]) <= int(out["allowed"]) == 1
    df = ledger(project)
    assert df.height == 6 and df["seed"].to_list() == list(range(6))
    assert df["description"].to_list()[:4] == [*(f"aa baseline seed {s}" for s in range(3)), "aa 1/1 seed 3"]
    assert set(df["role"]) == {"aa"}

    # Drift: the first three runs from now on come out worse (an untrained head), as a machine that warms
    # up, or a cache that fills, would make them. Those are the baseline, and the rule must notice. (A worker
    # cannot keep a counter between runs, so the drift goes by seed: the next A/A's baseline is seeds 6-8.)
    train_py = project / "train.py"
    train_py.write_text(
        train_py.read_text().replace(
            "    return model\n",
            "    if torch.initial_seed() < 9:  # the worker seeded torch with the run's seed\n"
            "        model.head.weight.data.zero_()\n"
            "    return model\n",
        )
    )
    git("commit", "-qam", "drift", cwd=project)
    drifted = just(project, "aa", "--experiments", "2", *TINY, env=small_corpus)
    assert drifted.returncode == 1 and "aa: FAIL" in drifted.stdout
    out = block(drifted.stdout)
    assert (
        out["improved"] == "2" and out["allowed"] == "1" and ledger(project)["seed"].to_list()[6:] == list(range(6, 15))
    )


def test_compare_says_when_the_baseline_is_of_other_data(project):
    """The holdout split changed every data_fp once: an experiment scored after it finds main's older
    baseline in no group of its own, and compare names the column that differs."""
    add_rows(project, *baseline_rows(2.0, 2.02, 2.01, data_fp="0ld0ld0ld0ld0ld0"))
    add_rows(project, dict(experiment="after", val_bpb=1.9, seed=3))
    out = just(project, "compare", "after").stdout
    assert "0 baseline seeds in this group" in out
    assert "of another data, data_fp 0ld0ld0ld0ld0ld0, this run's is ffffffffffffffff" in out
