"""Slurm through submitit. No Slurm here: the local backend runs the very same submission through
submitit's local executor (real subprocesses), and the Slurm job script is what submitit writes."""

import json
import time
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string
from test_queue import TINY, Pueue

import harness
from conftest import just, ledger
from harness import cluster

LABEL = "Q: does the cluster path score? H: one row, label kept"


def wait_done(project: Path, env: dict, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = just(project, "status", "--json", env=env)
        assert result.returncode == 0, result.stderr
        runs = json.loads(result.stdout)
        if runs and all(r["done"] for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"jobs not done after {timeout} s: {runs}")


def test_local_backend_runs_a_labelled_job_into_the_ledger_beside_pueue(project, tmp_path):
    pueue = Pueue(tmp_path / "pueue").start()
    try:
        submitted = just(
            project, "queue", "--backend", "local", "--time-min", "10", LABEL, "main", *TINY, env=pueue.env
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split("submitted local job ", 1)[1].split(":", 1)[0]
        queued = just(project, "queue", "Q: and pueue? H: the same row shape", "main", *TINY, env=pueue.env)
        assert queued.returncode == 0, queued.stderr
        runs = wait_done(project, pueue.env)
        review = just(project, "review", env=pueue.env)
    finally:
        pueue.stop()
    assert {(r["kind"], r["state"]) for r in runs} == {("local job", "Success"), ("pueue task", "Success")}
    [job] = [r for r in runs if r["kind"] == "local job"]
    assert job["id"] == job_id and job["q"] == "does the cluster path score?" and job["slug"] == "main"
    rows = ledger(project).to_dicts()
    assert sorted(r["label"] for r in rows) == sorted([LABEL, "Q: and pueue? H: the same row shape"])
    assert job["row"]["label"] == LABEL and job["row"]["val_bpb"] == rows[0]["val_bpb"] == rows[1]["val_bpb"]
    log = just(project, "log", job_id)
    assert "status: ok" in log.stdout and f"run {job['row']['run_id']}" in log.stdout
    assert "review: 2 new journal entries" in review.stdout
    assert f"review of local job {job_id}" in (project / "RESEARCH_JOURNAL.md").read_text()


def test_slurm_job_script_carries_label_partition_gpus_and_time(project):
    (project / "cluster.toml").write_text('partition = "gpu"\ntime_min = 45\naccount = "lab"\n')
    options = cluster.cluster_options(project, {"time_min": 30})
    params = cluster.slurm_parameters("rotary", LABEL, options, nproc=2)
    script = _make_sbatch_string(command="python -m submitit.core._submit /x", folder="/x/%j", **params)
    for line in (
        "#SBATCH --comment='Q: does the cluster path score? H: one row, label kept'",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-node=2",  # one GPU per DDP rank
        "#SBATCH --time=30",  # the flag beats cluster.toml
        "#SBATCH --job-name=eval-rotary",
        "#SBATCH --ntasks-per-node=1",  # eval.py starts its own ranks under torchrun
    ):
        assert line in script


def test_slurm_without_sbatch_is_a_clear_refusal(project):
    result = just(project, "queue", "--backend", "slurm", LABEL, "main", *TINY)
    assert result.returncode == 2
    assert "--backend slurm needs Slurm's sbatch on PATH" in result.stderr
    assert not (project / "runs" / "cluster").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backend", "nomad"], "invalid choice 'nomad' for argument '--backend'"),  # tyro's words
        (["--backend", "slurm", "--gpus", "two"], "Error parsing --gpus"),
        (["--partition", "gpu"], "--partition: cluster resources go with --backend slurm"),
        (["--queue-name", "x"], "Missing value for argument 'label'"),
    ],
)
def test_bad_queue_flags_are_refused(project, flags, message):
    result = just(project, "queue", *flags, LABEL, "main")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_bad_cluster_toml_names_the_key(project):
    (project / "cluster.toml").write_text("partitions = 'gpu'\n")
    with pytest.raises(harness.Refusal, match=r"unknown keys \['partitions'\]"):
        cluster.cluster_options(project, {})


def test_a_multi_gpu_run_is_not_put_in_a_one_gpu_pueue_group(project, tmp_path):
    pueue = Pueue(tmp_path / "pueue").start()
    try:
        assert pueue("group", "add", "gpu0").returncode == 0
        result = just(project, "queue", LABEL, "main", *TINY, "--nproc", "2", env=pueue.env)
        tasks = json.loads(pueue("status", "--json").stdout)["tasks"]
    finally:
        pueue.stop()
    assert result.returncode == 2 and "--nproc 2 needs several GPUs" in result.stderr
    assert tasks == {}
