"""Scored runs on a Slurm cluster through submitit (and submitit's local executor, the same code path): the
job's resources, its record in runs/cluster/, and its state for `just status`."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths, pickle_load

from harness import Refusal
from referee.api import RunSpec
from repo.runs import RUNS

CLUSTER_CONFIG = "cluster.toml"  # optional, in the main checkout: defaults for the flags below
CLUSTER_DEFAULTS = dict(partition=None, gpus=None, time_min=120, cpus=None, mem_gb=None, account=None)
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}
CLUSTER_JOBS = Path(RUNS) / "cluster"  # runs/cluster/ID/job.json: what `just status` follows of a submitted job


def cluster_options(root: Path, flags: dict) -> dict:
    """CLUSTER_DEFAULTS, overridden by cluster.toml, overridden by the command's flags."""
    options = dict(CLUSTER_DEFAULTS)
    path = root / CLUSTER_CONFIG
    if path.exists():
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise Refusal(f"{path}: not valid TOML ({e})") from e
        unknown = sorted(set(config) - set(options))
        if unknown:
            raise Refusal(f"{path}: unknown keys {unknown}; the keys are {sorted(options)}")
        options.update(config)
    options.update(flags)
    return options


def gpu_names() -> list[str]:
    """The machine's NVIDIA GPUs (nvidia-smi's order, which CUDA_VISIBLE_DEVICES indexes); none without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def slurm_parameters(slug: str, label: str, options: dict, nproc: int) -> dict:
    """submitit.SlurmExecutor parameters: one task on one node, one GPU per rank by default."""
    params = dict(
        job_name=f"eval-{slug}", comment=label, time=options["time_min"], nodes=1, ntasks_per_node=1,
        gpus_per_node=options["gpus"] if options["gpus"] is not None else nproc, partition=options["partition"],
        cpus_per_task=options["cpus"], mem=f"{options['mem_gb']}GB" if options["mem_gb"] else None,
        account=options["account"],
    )  # fmt: skip
    return {k: v for k, v in params.items() if v is not None}


def submit_cluster(root: Path, backend: str, spec: RunSpec, slug: str, path: Path, flags: dict) -> None:
    """Submit one scored run as a submitit job; its record (runs/cluster/ID/job.json) lets
    `just status` and `just review` follow it beside the pueue tasks."""
    options = cluster_options(root, flags)
    folder = root / CLUSTER_JOBS / f"{backend}-%j"
    if backend == "slurm":
        if shutil.which("sbatch") is None:
            raise Refusal("--backend slurm needs Slurm's sbatch on PATH: run this on the cluster's login node")
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**slurm_parameters(slug, spec.label, options, spec.nproc))
    else:
        gpus = options["gpus"] if options["gpus"] is not None else min(spec.nproc, len(gpu_names()))
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options["time_min"], gpus_per_node=gpus)
    command = [sys.executable, str(root / "eval.py"), *spec.to_argv()]  # the label and the run id in the spec
    submitted_at = datetime.now(UTC).isoformat(timespec="seconds")  # before the job can write its row
    job = executor.submit(submitit.helpers.CommandFunction(command, cwd=str(path)))
    record = dict(
        id=f"{backend}-{job.job_id}", backend=backend, job_id=str(job.job_id), label=spec.label, run_id=spec.run_id,
        slug=slug, path=str(path), command=shlex.join(["just", "eval", *spec.to_argv()]),
        submitted_at=submitted_at,
    )  # fmt: skip
    job_dir = root / CLUSTER_JOBS / record["id"]
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"submitted {backend} job {record['id']}: {record['command']} in {slug}")
    print(f"label: {spec.label}\nlog: uv run just log {record['id']}   status: uv run just status")


def cluster_job_state(record: dict, job_dir: Path) -> tuple[str, bool]:
    """(state, done) of a submitit job: its result file once it ended, else Slurm's accounting
    (sacct) or, for a local job, whether its process still lives."""
    paths = JobPaths(job_dir, record["job_id"])
    if paths.result_pickle.exists():
        outcome = pickle_load(paths.result_pickle)[0]
        return ("Success" if outcome == "success" else "Failed"), True
    if record["backend"] == "local":
        try:
            os.kill(int(record["job_id"]), 0)
            return "Running", False
        except ProcessLookupError:
            return "Killed", True
    state = submitit.SlurmJob(job_dir, record["job_id"]).state
    return state.title(), state in SLURM_DONE


def cluster_jobs(root: Path) -> list[dict]:
    jobs = []
    for path in sorted((root / CLUSTER_JOBS).glob("*/job.json")):
        record = json.loads(path.read_text())
        state, done = cluster_job_state(record, path.parent)
        kind = f"{record['backend']} job"
        jobs.append(dict(record, kind=kind, state=state, done=done, since=record["submitted_at"], started=True))
    return jobs


def cluster_job_paths(root: Path, job_id: str):
    """submitit's files (stdout, stderr, result) of the job `just status` lists as `job_id`."""
    record_path = root / CLUSTER_JOBS / job_id / "job.json"
    if not record_path.exists():
        raise Refusal(f"no job {job_id!r}: the ids are pueue task numbers and the slurm-N / local-N of `just status`")
    return JobPaths(record_path.parent, json.loads(record_path.read_text())["job_id"])
