"""Trustworthy comparisons: the noise floor, the determinism check, verdicts, re-verification, plots."""

import json
import math
import struct

import pytest
import torch

import harness
from conftest import add_rows, git, just, ledger, new

TINY = ["tiny", "--budget-tokens", "3000"]


# --- verdicts on hand-made numbers ---


def test_a_single_run_must_beat_the_baseline_by_two_std():
    base = [2.00, 2.02, 2.01]  # mean 2.01, std 0.01
    assert harness.verdict([1.985], base).verdict == "improved"  # 2.5 std below
    assert harness.verdict([2.04], base).verdict == "worse"
    close = harness.verdict([2.0], base)
    assert close.verdict.startswith("inconclusive — run") and "delta -0.0100, 2 std = 0.0200" in close.why


def test_several_runs_are_judged_by_welchs_t_test():
    base = [2.00, 2.02, 2.01]
    assert harness.verdict([1.95, 1.96, 1.94], base).verdict == "improved"
    assert harness.verdict([2.10, 2.12, 2.11], base).verdict == "worse"
    mixed = harness.verdict([1.99, 2.03, 2.00], base)
    assert mixed.verdict == "inconclusive — run 3 more seeds" and "Welch t=" in mixed.why


def test_without_a_baseline_nothing_is_claimed():
    assert "run `just baseline` first" in harness.verdict([1.0], [2.0]).why


@pytest.mark.parametrize(
    "t, df, p",
    [(2.0, 10, 0.07339), (1.0, 1, 0.5), (2.7764, 4, 0.05), (2.2281, 10, 0.05), (12.706, 1, 0.05), (0.0, 7, 1.0)],
)
def test_welch_p_values_match_the_t_distribution(t, df, p):
    assert harness.betainc(df / 2, 0.5, df / (df + t * t)) == pytest.approx(p, abs=2e-4)


def test_welch_on_known_samples():
    t, df, p = harness.welch([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert (t, df) == (pytest.approx(-12.2474, abs=1e-3), pytest.approx(4.0)) and p == pytest.approx(2.55e-4, rel=1e-2)


def test_compare_reads_the_ledger(project):
    add_rows(
        project,
        *[
            dict(experiment="main", val_bpb=v, commit="m", description=f"baseline seed {i}/3")
            for i, v in enumerate((2.0, 2.02, 2.01))
        ],
        dict(experiment="main", val_bpb=1.5, commit="m", description="not a baseline row"),
        dict(experiment="faster", val_bpb=1.9, commit="f"),
        dict(experiment="faster", val_bpb=1.91, commit="f", seed=1),
        dict(experiment="other-budget", val_bpb=1.0, commit="o", train_tokens=5),
    )
    result = json.loads(just(project, "compare", "faster", "--json").stdout)
    assert result["verdict"] == "improved" and result["baseline"] == [2.0, 2.02, 2.01] and result["runs"] == [1.9, 1.91]
    assert "inconclusive" in just(project, "compare", "other-budget").stdout  # no baseline in its group
    assert "no ok rows for 'nobody'" in just(project, "compare", "nobody").stderr


# --- real runs: baseline, determinism, verify, plot ---


def test_baseline_writes_n_rows_and_prints_the_noise_floor(project):
    result = just(project, "baseline", "2", *TINY)
    assert result.returncode == 0, result.stderr
    df = ledger(project)
    assert df["description"].to_list() == ["baseline seed 0/2", "baseline seed 1/2"] and df["seed"].to_list() == [0, 1]
    out = dict(line.split(": ", 1) for line in result.stdout.rsplit("---\n", 1)[1].splitlines())
    mean, std = harness.mean_std(df["val_bpb"].to_list())
    assert float(out["mean"]) == pytest.approx(mean, abs=1e-6) and float(out["std"]) == pytest.approx(std, abs=1e-6)
    assert std > 0 and out["verdict"].startswith(("ok", "too noisy"))


def test_determinism_passes_on_cpu(project):
    result = just(project, "determinism", *TINY, "--seed", "3")
    assert result.returncode == 0 and "deterministic: yes" in result.stdout
    assert ledger(project)["seed"].to_list() == [3, 3]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_verify_reproduces_a_run_from_any_worktree_and_flags_tampering(project):
    wt = new(project, "verified")
    (wt / "model.py").write_text((wt / "model.py").read_text().replace("std=0.02)", "std=0.03)"))
    git("commit", "-qam", "another init", cwd=wt)
    assert just(wt, "eval", *TINY).returncode == 0
    run_id = ledger(project)["run_id"][0]
    assert just(project, "rm", "verified").returncode == 0  # scored, so removable; the branch stays

    result = just(project, "verify", run_id)
    assert result.returncode == 0 and "verify: ok" in result.stdout, result.stdout + result.stderr

    assert just(project, "plot").returncode == 0
    assert png_size(project / "progress.png") == (1200, 700)
    assert png_size(project / "runs" / run_id / "loss.png") == (800, 500)

    results = project / "results.tsv"
    original = results.read_text()
    recorded = ledger(project)["val_bpb"][0]
    results.write_text(original.replace(repr(recorded), repr(recorded - 0.01)))
    tampered_row = just(project, "verify", run_id)
    assert tampered_row.returncode == 1 and "MISMATCH" in tampered_row.stdout
    results.write_text(original)

    checkpoint = project / "runs" / run_id / "model.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["head.weight"][0, 0] += 1.0
    torch.save(state, checkpoint)
    tampered = just(project, "verify", run_id)
    assert tampered.returncode == 1 and "MISMATCH" in tampered.stdout
    assert math.isfinite(recorded)


def test_verify_refuses_what_it_cannot_check(project):
    add_rows(project, dict(experiment="main", val_bpb=2.0, commit="m", status="crash"))
    assert "there is no metric to verify" in just(project, "verify", "r0-main").stderr
    assert "no run 'nope'" in just(project, "verify", "nope").stderr
