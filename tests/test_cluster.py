"""Slurm through submitit: real jobs on a real one-node Slurm (tests/slurm_cluster.py; skipped, with its reason,
where Slurm or root is missing), and the same submission through submitit's local executor (real subprocesses)."""

import itertools
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, unavailable
from submitit.slurm.slurm import _make_sbatch_string
from test_queue import TINY, Pueue

import harness
from conftest import JUST, just, ledger
from harness import cluster
from referee.spec import RunSpec

LABEL = "Q: does the cluster path score? H: one row, label kept"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


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


def test_local_backend_runs_a_labelled_job_into_the_ledger_beside_pueue(project, small_corpus, tmp_path):
    pueue = Pueue(tmp_path / "pueue").start()
    env = pueue.env | small_corpus
    try:
        submitted = just(project, "queue", "--backend", "local", "--time-min", "10", LABEL, "main", *TINY, env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split("submitted local job ", 1)[1].split(":", 1)[0]
        queued = just(project, "queue", "Q: and pueue? H: the same row shape", "main", *TINY, env=env)
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


def submit(project: Path, env: dict, label: str, *args: str) -> str:
    result = just(project, "queue", "--backend", "slurm", label, "main", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("submitted slurm job ", 1)[1].split(":", 1)[0]


def test_real_slurm_jobs_that_pass_fail_and_are_cancelled_each_leave_one_row(project, small_corpus, slurm, tmp_path):
    """Four jobs at once on a 2-core node (two run together, writing the ledger under its lock); a CPU run asks
    for no GPU on a partition that has none; the states are Slurm's own (squeue), which `just follow` asks for
    less and less often, as submitit does."""
    (project / "cluster.toml").write_text('partition = "debug"\nqos = "normal"\n\n[sbatch]\nnice = 10\n')
    cpu = ["tiny", "--device", "cpu", "--budget-tokens", "3000"]
    ok = [submit(project, slurm.env, f"Q: seed {seed}? H: a row", *cpu, "--seed", str(seed)) for seed in (1, 2)]
    failed = submit(project, slurm.env, "Q: past the cap? H: a timeout row", *cpu, "--wall-cap-s", "0.01")
    # cancelled as it trains: a budget the cpu preset's cap of 1,200 s holds beside three jobs (at 5,000 tokens/s)
    long = ["tiny", "--device", "cpu", "--budget-tokens", "5000000"]
    cancelled = submit(project, slurm.env, "Q: cancelled? H: a crash row", *long)
    asks = tmp_path / "squeue-asks"  # one line per squeue that `just follow` runs: the real one, logged
    (tmp_path / "bin").mkdir()
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text(f'#!/bin/sh\necho x >> {asks}\nexec {shutil.which("squeue")} "$@"\n')
    squeue.chmod(0o755)
    follow_env = {**os.environ, "PYTHONUNBUFFERED": "1", **slurm.env, "PATH": f"{squeue.parent}:{os.environ['PATH']}"}
    out, errors = tmp_path / "follow.out", tmp_path / "follow.err"
    with out.open("w") as stdout, errors.open("w") as stderr:  # files, not pipes: nothing waits on a reader
        follow = subprocess.Popen(
            [JUST, "follow", cancelled], cwd=project, env=follow_env, stdout=stdout, stderr=stderr
        )
    followed_from = time.monotonic()
    err = project / "runs" / "cluster" / cancelled / f"{cancelled.split('-')[1]}_0_log.err"
    deadline = followed_from + 180
    while time.monotonic() < deadline and (
        "| step " not in (err.read_text() if err.exists() else "") or time.monotonic() < followed_from + 30
    ):
        time.sleep(1)
    assert err.exists() and "| step " in err.read_text(), just(project, "status", env=slurm.env).stdout
    asked, followed_s = len(asks.read_text().splitlines()), time.monotonic() - followed_from
    assert slurm.client("scancel", cancelled.split("-")[1]).returncode == 0
    follow.wait(timeout=120)  # returns once the job ended
    runs = {r["id"]: r for r in wait_done(project, slurm.env)}
    review = just(project, "review", env=slurm.env)
    log = just(project, "log", failed, env=slurm.env)

    assert follow.returncode == 0 and "crash: Terminated: killed by SIGTERM" in errors.read_text()
    assert f"{cancelled}: Cancelled" in out.read_text()
    assert asked <= 3 + math.log2(followed_s), (asked, followed_s)  # at 0, 2, 4, 8, 16, ... s, not every 2 s
    assert {k: (r["kind"], r["state"]) for k, r in runs.items()} == {
        ok[0]: ("slurm job", "Completed"), ok[1]: ("slurm job", "Completed"),
        failed: ("slurm job", "Failed"), cancelled: ("slurm job", "Cancelled"),
    }  # fmt: skip
    rows = ledger(project).to_dicts()
    assert sorted(r["run_id"] for r in rows) == sorted(r["row"]["run_id"] for r in runs.values())  # one row each
    assert [runs[job]["row"]["status"] for job in (*ok, failed, cancelled)] == ["ok", "ok", "timeout", "crash"]
    assert runs[cancelled]["row"]["label"] == "Q: cancelled? H: a crash row"
    assert runs[ok[0]]["row"]["val_bpb"] != runs[ok[1]]["row"]["val_bpb"]  # seeds 1 and 2, each its own row
    assert "status: timeout" in log.stdout
    assert "review: 4 new journal entries" in review.stdout
    script = (project / "runs" / "cluster" / ok[0] / f"{ok[0].split('-')[1]}_submission.sh").read_text()
    assert "--gpus" not in script and "#SBATCH --comment='Q: seed 1? H: a row'" in script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --qos=normal" in script  # from cluster.toml
    assert "Nice=10" in slurm.client("scontrol", "show", "job", ok[0].split("-")[1]).stdout  # [sbatch] reached Slurm
    spans = sorted(job_span(slurm, job) for job in runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans  # jobs ran at once


def job_span(slurm: SlurmCluster, job: str) -> tuple[str, str]:
    """(StartTime, EndTime) of a job, as Slurm recorded them."""
    fields = dict(
        f.split("=", 1)
        for f in slurm.client("scontrol", "-o", "show", "job", job.split("-")[1]).stdout.split()
        if "=" in f
    )
    return fields["StartTime"], fields["EndTime"]


@pytest.mark.parametrize(
    "flags, device, message",
    [
        (["--gpus", "1"], "cpu", "change --gpus (a partition without GPUs takes --gpus 0"),  # the node has none
        ([], None, "change --gpus"),  # a run that may use CUDA asks for a GPU by default
        (["--partition", "gpu"], "cpu", "invalid partition specified: gpu"),
        (["--time-min", "600"], "cpu", "change --time-min"),  # the partition's limit is 180 minutes
        (["--gpus", "0"], "cuda", "a CUDA run needs a GPU; give --gpus N, or --device cpu"),
    ],
)
def test_a_request_the_real_slurm_cannot_meet_is_refused_in_one_line(project, slurm, flags, device, message):
    device_flag = ["--device", device] if device else []
    result = just(project, "queue", "--backend", "slurm", *flags, LABEL, "main", *TINY, *device_flag, env=slurm.env)
    assert result.returncode == 2 and message in result.stderr
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("error: recipe")]
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    assert not list((project / "runs" / "cluster").glob("*/job.json"))


def test_slurm_job_script_carries_label_partition_gpus_and_time(project):
    (project / "cluster.toml").write_text('partition = "gpu"\ntime_min = 45\naccount = "lab"\n')
    options = cluster.cluster_options(project, {"time_min": 30})
    params = cluster.slurm_parameters("rotary", LABEL, options, RunSpec(nproc=2))
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


def test_slurm_without_sbatch_is_a_clear_refusal(project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Slurm's commands
    with pytest.raises(harness.Refusal, match="--backend slurm needs Slurm's sbatch on PATH"):
        cluster.submit_cluster(project, "slurm", RunSpec(label=LABEL), "main", project, {})
    assert not (project / "runs" / "cluster").exists()


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="Slurm's sbatch is not installed")
def test_sbatch_with_no_cluster_configured_says_where_to_run(project):
    result = just(project, "queue", "--backend", "slurm", LABEL, "main", *TINY)  # no SLURM_CONF, no slurm.conf
    assert result.returncode == 2, result.stderr
    assert "run it on the cluster's login node, or point SLURM_CONF at the cluster's slurm.conf" in result.stderr
    assert not list((project / "runs" / "cluster").glob("*/job.json"))


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
