"""One run on several processes: `just eval --nproc N`, one training worker per rank, with DDP (gloo on CPU)."""

import json
import os

from conftest import block, git, just, ledger, new

RUN = ("eval", "tiny", "--budget-tokens", "20000")


def test_two_processes_write_one_row_and_repeat_the_metric(project, small_corpus):
    first, second = (just(project, *RUN, "--nproc", "2", env=small_corpus) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    rows = ledger(project).to_dicts()
    assert len(rows) == 2  # rank 1 never writes
    assert all(r["status"] == "ok" and r["config"] == "tiny" and json.loads(r["spec"])["nproc"] == 2 for r in rows)
    assert rows[0]["val_bpb"] == rows[1]["val_bpb"] == float(block(first.stdout)["val_bpb"])
    assert rows[0]["train_tokens"] == 19968  # the global budget, counted once for all ranks
    # Each rank trains on its half of the same global batches: one process sees the same data.
    single = just(project, *RUN, env=small_corpus)
    assert single.returncode == 0, single.stderr
    assert abs(float(block(single.stdout)["val_bpb"]) - rows[0]["val_bpb"]) < 1e-5


def test_more_processes_than_the_machine_has_is_refused(project):
    n = (os.cpu_count() or 1) + 1
    result = just(project, *RUN, "--nproc", str(n))
    assert result.returncode == 2
    assert f"--nproc {n}: only {n - 1} CPU cores are here" in result.stderr
    assert not ledger(project).height


def test_a_batch_that_does_not_split_over_the_ranks_is_a_recorded_crash(project):
    result = just(project, *RUN, "--nproc", "2", "--batch-size", "7")
    assert result.returncode != 0
    [row] = ledger(project).to_dicts()
    assert row["status"] == "crash" and "batch_size=7 does not split over 2 processes" in row["error"]


def test_the_wall_clock_cap_under_ddp_is_one_timeout_row(project):
    # The referee holds the cap: at it, it stops both ranks and records the run as a timeout.
    result = just(project, "eval", "tiny", "--nproc", "2", "--wall-cap-s", "3", "--budget-tokens", "10000000")
    assert result.returncode == 1
    [row] = ledger(project).to_dicts()
    assert row["status"] == "timeout" and "wall-clock cap" in row["error"]


def test_a_rank_that_dies_without_a_word_leaves_the_referees_crash_row(project):
    wt = new(project, "rank-zero-dies")
    code = (wt / "train.py").read_text()
    hard_exit = '    if os.environ.get("RANK") == "0":  # dies as an OOM kill would: no exception, no row\n        os._exit(3)\n'
    code = code.replace("    # --- model and optimizer ---\n", hard_exit + "    # --- model and optimizer ---\n")
    (wt / "train.py").write_text("import os\n" + code)
    git("commit", "-qam", "rank 0 dies", cwd=wt)
    result = just(wt, *RUN, "--nproc", "2")
    assert result.returncode != 0
    [row] = ledger(project).to_dicts()
    assert row["status"] == "crash" and row["experiment"] == "rank-zero-dies" and json.loads(row["spec"])["nproc"] == 2
    assert row["error"] == "the train worker (rank 0) exited with code 3 (its output is above)"
