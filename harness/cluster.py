"""Scored runs on a Slurm cluster through submitit (and submitit's local executor, the same code path): the
job's resources, its record in runs/cluster/, and its state for `just status`."""

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, JobPaths, pickle_load

from harness import Refusal
from referee.api import RunSpec
from repo.runs import RUNS

CLUSTER_CONFIG = "cluster.toml"  # optional, in the main checkout: defaults for the flags below
CLUSTER_DEFAULTS = dict(partition=None, gpus=None, time_min=120, cpus=None, mem_gb=None, account=None, qos=None)
SBATCH_TABLE = "sbatch"  # cluster.toml's [sbatch]: any other sbatch option, written as `#SBATCH --KEY=VALUE`
SLURM_DONE = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip
# sbatch's words for a request the cluster cannot meet (a pattern, in its lower case), and what changes it
SBATCH_FIXES = {
    "configuration (source|file)": (
        "run it on the cluster's login node, or point SLURM_CONF at the cluster's slurm.conf"
    ),
    "generic resource": "change --gpus (a partition without GPUs takes --gpus 0, the default with --device cpu)",
    "partition": "change --partition (sinfo lists the partitions)",
    "time limit": "change --time-min",
    "memory": "change --mem-gb",
    "account": "change --account (sacctmgr show assoc user=$USER lists yours)",
    "node configuration": "change --cpus, --mem-gb or --gpus (sinfo -o '%P %c %m %G' shows what a node has)",
}
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
        unknown = sorted(set(config) - set(options) - {SBATCH_TABLE})
        if unknown:
            raise Refusal(f"{path}: unknown keys {unknown}; the keys are {sorted(options)} and the table [sbatch]")
        if not isinstance(config.get(SBATCH_TABLE, {}), dict):
            raise Refusal(f'{path}: sbatch must be a table of sbatch options, e.g. [sbatch] then constraint = "a100"')
        options.update(config)
    options.update(flags)
    return options


def gpu_names() -> list[str]:
    """The machine's NVIDIA GPUs (nvidia-smi's order, which CUDA_VISIBLE_DEVICES indexes); none without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def job_gpus(options: dict, spec: RunSpec, available: int | None = None) -> int:
    """The GPUs a job asks for: --gpus (or cluster.toml's), else none for a CPU run and one per rank otherwise
    (at most `available`, the local machine's). A CUDA run with none is refused here, not on the node."""
    gpus = options["gpus"]
    if gpus is None:
        gpus = 0 if spec.device == "cpu" else spec.nproc if available is None else min(spec.nproc, available)
    if gpus < 0:
        raise Refusal(f"--gpus {gpus}: give the GPUs of the job, 0 or more")
    if gpus == 0 and spec.device == "cuda":
        raise Refusal("--gpus 0 with --device cuda: a CUDA run needs a GPU; give --gpus N, or --device cpu")
    return gpus


def slurm_parameters(slug: str, label: str, options: dict, spec: RunSpec) -> dict:
    """submitit.SlurmExecutor parameters: one task on one node, one GPU per rank (none for a CPU run) by default."""
    params = dict(
        job_name=f"eval-{slug}", comment=label, time=options["time_min"], nodes=1, ntasks_per_node=1,
        gpus_per_node=job_gpus(options, spec) or None, partition=options["partition"],
        cpus_per_task=options["cpus"], mem=f"{options['mem_gb']}GB" if options["mem_gb"] else None,
        account=options["account"], qos=options["qos"], additional_parameters=options.get(SBATCH_TABLE) or None,
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
        executor.update_parameters(**slurm_parameters(slug, spec.label, options, spec))
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=options["time_min"], gpus_per_node=job_gpus(options, spec, len(gpu_names()))
        )
    command = [sys.executable, str(root / "eval.py"), *spec.to_argv()]  # the label and the run id in the spec
    submitted_at = datetime.now(UTC).isoformat(timespec="seconds")  # before the job can write its row
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal: it is in the one below
            job = executor.submit(submitit.helpers.CommandFunction(command, cwd=str(path)))
    except FailedJobError as e:  # sbatch refused the request: say which flag changes it
        raise Refusal(sbatch_refusal(str(e))) from e
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


def sbatch_refusal(error: str) -> str:
    """One line from sbatch's refusal: its own words, and what changes the request."""
    words = [line.split(": ", 2)[-1].strip() for line in error.splitlines() if line.startswith("sbatch: ")]
    fix = next(
        (fix for pattern, fix in SBATCH_FIXES.items() if re.search(pattern, error.lower())),
        "see `man sbatch` and the cluster's documentation",
    )
    return f"sbatch refused the job ({'; '.join(dict.fromkeys(words)) or error.strip()}): {fix}"


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Slurm's own state of each job, with the reason a pending one waits: squeue's (it keeps an ended job for
    MinJobAge, 300 s by default), then, for jobs it no longer knows, sacct's where the cluster keeps accounting.
    A job neither knows is left out."""
    if shutil.which("squeue") is None:
        raise Refusal("runs/cluster/ has Slurm jobs and this machine has no squeue: ask on the cluster's login node")
    jobs = ",".join(job_ids)
    squeue = subprocess.run(
        ["squeue", "--noheader", "--states", "all", "--jobs", jobs, "--format", "%i %T %r"],
        capture_output=True, text=True,
    )  # fmt: skip
    if squeue.returncode != 0 and "Invalid job id" not in squeue.stderr:  # every id purged: none it knows
        raise Refusal(f"squeue could not say how the jobs stand: {squeue.stderr.strip()}")
    states = {}
    for line in squeue.stdout.splitlines() if squeue.returncode == 0 else []:
        job_id, state, reason = line.split(" ", 2)
        states[job_id] = state, reason if state == "PENDING" and reason != "None" else None  # PartitionTimeLimit
    missing = ",".join(job_id for job_id in job_ids if job_id not in states)
    if missing and shutil.which("sacct") is not None:
        sacct = subprocess.run(
            ["sacct", "--noheader", "--parsable2", "-X", "--jobs", missing, "--format", "JobID,State"],
            capture_output=True, text=True,
        )  # fmt: skip
        for line in sacct.stdout.splitlines() if sacct.returncode == 0 else []:  # "Slurm accounting ... disabled"
            job_id, state = line.split("|", 1)
            states[job_id] = state.split()[0], None  # "CANCELLED by 0"
    return states


def cluster_job_state(record: dict, job_dir: Path, slurm: tuple[str, str | None] | None) -> tuple[str, bool]:
    """(state, done) of a job: Slurm's own state (and a pending job's reason) where Slurm still knows the job;
    else, once it ended, its result file; else, for a local job, whether its process still lives."""
    if slurm is not None:
        state, reason = slurm
        return state.title() + (f" ({reason})" if reason else ""), state in SLURM_DONE
    paths = JobPaths(job_dir, record["job_id"])
    if paths.result_pickle.exists():
        outcome = pickle_load(paths.result_pickle)[0]
        return ("Success" if outcome == "success" else "Failed"), True
    if record["backend"] == "slurm":  # ended more than MinJobAge ago, on a cluster without accounting
        return "Ended", True
    try:
        os.kill(int(record["job_id"]), 0)
        return "Running", False
    except ProcessLookupError:
        return "Killed", True


def cluster_jobs(root: Path, only: str = "*") -> list[dict]:
    """The submitted jobs (or the one named `only`), each with its state and whether it ended."""
    paths = sorted((root / CLUSTER_JOBS).glob(f"{only}/job.json"))
    records = [(json.loads(path.read_text()), path.parent) for path in paths]
    on_slurm = [record["job_id"] for record, _ in records if record["backend"] == "slurm"]
    states = slurm_states(on_slurm) if on_slurm else {}
    jobs = []
    for record, job_dir in records:
        slurm = states.get(record["job_id"]) if record["backend"] == "slurm" else None
        state, done = cluster_job_state(record, job_dir, slurm)
        kind = f"{record['backend']} job"
        jobs.append(dict(record, kind=kind, state=state, done=done, since=record["submitted_at"], started=True))
    return jobs


def cluster_job_paths(root: Path, job_id: str):
    """submitit's files (stdout, stderr, result) of the job `just status` lists as `job_id`."""
    record_path = root / CLUSTER_JOBS / job_id / "job.json"
    if not record_path.exists():
        raise Refusal(f"no job {job_id!r}: the ids are pueue task numbers and the slurm-N / local-N of `just status`")
    return JobPaths(record_path.parent, json.loads(record_path.read_text())["job_id"])


def follow_job(root: Path, job_id: str, poll_s: float = 2.0, ask_max_s: float = 60.0) -> None:
    """Print a job's output (stdout, and its stderr to stderr) as it comes, until the job has ended, as
    `pueue follow` does for a task. The output is read every `poll_s`; Slurm is asked how the job stands at 0,
    2, 4, 8, ... seconds, then every `ask_max_s` (submitit's own back-off: one squeue serves every user of the
    cluster), and every `poll_s` once the job has written its result."""
    paths = cluster_job_paths(root, job_id)
    streams = {paths.stdout: sys.stdout, paths.stderr: sys.stderr}
    offsets = dict.fromkeys(streams, 0)
    started = asked = time.monotonic()
    job: dict = {}
    while True:
        now = time.monotonic()
        backed_off = job.get("backend") == "slurm" and not paths.result_pickle.exists()
        if not backed_off or now - asked >= min(ask_max_s, max(poll_s, asked - started)):
            [job] = cluster_jobs(root, only=job_id)  # before reading: what the job wrote before it ended is printed
            asked = now
        for path, stream in streams.items():
            if path.exists():
                with path.open("rb") as f:
                    f.seek(offsets[path])
                    chunk = f.read()
                offsets[path] += len(chunk)
                stream.write(chunk.decode(errors="replace"))
                stream.flush()
        if job["done"]:
            print(f"{job_id}: {job['state']}")
            return
        time.sleep(poll_s)
