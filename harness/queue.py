"""Labelled scored runs on pueue (or a cluster): `just queue`, one group per GPU (`just gpus`), `just status`
(tasks joined with their ledger rows), `just log`/`follow`, and `just review` (a journal entry per finished
run: question, hypothesis, what was observed)."""

import dataclasses
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
from tyro.conf import Positional

from harness import Refusal
from harness.cluster import CLUSTER_DEFAULTS, cluster_job_paths, cluster_jobs, follow_job, gpu_names, submit_cluster
from harness.notify import breaker
from harness.pueue import LABEL, parse_label, pueue, task_state
from harness.pueue import state as pueue_state
from harness.records import prepend_entry
from harness.table import baseline_rows, ledger, print_json, print_table
from referee.api import RunSpec
from repo.git import experiment_name, main_root, worktree_dir
from repo.guard import JOURNAL, require_scoring_allowed
from repo.ledger import new_run_id


@dataclass(frozen=True)
class Queue:
    """Put a labelled scored run of a worktree (or `main`) on pueue, or on a cluster through submitit. Any
    other argument goes to eval.py: just queue "Q: does rotary help? H: -0.05 val_bpb" rotary --seed 1"""

    label: Positional[str]
    """'Q: <question> H: <hypothesis>': it travels to the ledger row, `just status` and `just review`"""
    slug: Positional[str]
    """the worktree 5_worktrees/SLUG to score, or main"""
    backend: Literal["pueue", "slurm", "local"] = "pueue"
    """pueue on this machine; slurm (sbatch on a login node) or local, both through submitit"""
    nproc: int = 1
    """processes (GPUs) for the one run: eval.py's --nproc"""
    partition: str | None = None
    """slurm/local: the partition (default: cluster.toml's, else the cluster's)"""
    gpus: int | None = None
    """slurm/local: GPUs of the job (default: one per process of --nproc; none with --device cpu)"""
    time_min: int | None = None
    """slurm/local: time limit in minutes (default: cluster.toml's, else 120)"""
    cpus: int | None = None
    """slurm/local: CPUs per task"""
    mem_gb: int | None = None
    """slurm/local: memory of the job in GB"""
    account: str | None = None
    """slurm: the account to charge"""
    qos: str | None = None
    """slurm: the quality of service"""

    def __call__(self, eval_args: list[str]) -> None:
        parse_label(self.label)
        stopped = breaker(main_root())
        if stopped:  # an overnight loop that queues into a broken checkout loses the night, not one run
            raise Refusal(f"not queued: {stopped}")
        if self.nproc < 1:
            raise Refusal(f"--nproc {self.nproc}: give a whole number of processes (GPUs), 1 or more")
        resources = {k: getattr(self, k) for k in CLUSTER_DEFAULTS if getattr(self, k) is not None}
        if self.backend == "pueue" and resources:
            raise Refusal(f"--{', --'.join(resources)}: cluster resources go with --backend slurm (or local)")
        root = main_root()
        path = root if self.slug == "main" else worktree_dir(root, self.slug)
        if not path.is_dir():
            raise Refusal(
                f"no worktree for {self.slug!r} ({path}): create it with `just new {self.slug}`, or queue `main`"
            )
        require_scoring_allowed(path, root)  # refuse now what eval.py would refuse hours later
        spec = dataclasses.replace(
            RunSpec.from_argv(eval_args),
            nproc=self.nproc,
            label=self.label,
            run_id=new_run_id(self.slug),  # the row's id: `just status` and `just review` find the run's row by it
        )
        if self.backend != "pueue":
            submit_cluster(root, self.backend, spec, self.slug, path, resources)
            return
        group, gpu = pick_group(pueue_state())
        if gpu is not None and self.nproc > 1:
            raise Refusal(
                f"--nproc {self.nproc} needs several GPUs, and pueue's gpuN groups give a run one: run it "
                "directly (uv run just eval --nproc N) or on a cluster (just queue --backend slurm ...)"
            )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
        command = shlex.join(["just", "eval", *spec.to_argv()])
        where = ["--working-directory", str(path), "--group", group]
        task_id = pueue("add", "--print-task-id", "--label", self.label, *where, "--", command, env=env).stdout.strip()
        gpu_note = f", CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
        print(f"queued task {task_id}: {command} in {self.slug} (group {group}{gpu_note}), run {spec.run_id}")
        print(f"label: {self.label}\nfollow it: uv run just follow {task_id}   status: uv run just status")


def pick_group(state: dict) -> tuple[str, str | None]:
    """The gpuN group with the fewest queued and running tasks (its GPU index for
    CUDA_VISIBLE_DEVICES), or the default group when `just gpus` made none."""
    gpus = sorted((g for g in state["groups"] if re.fullmatch(r"gpu\d+", g)), key=lambda g: int(g[3:]))
    if not gpus:
        return "default", None
    load = {g: 0 for g in gpus}
    for task in state["tasks"].values():
        if task["group"] in load and task_state(task)[0] in ("Queued", "Running", "Paused", "Locked"):
            load[task["group"]] += 1
    group = min(gpus, key=lambda g: (load[g], int(g[3:])))
    return group, group[3:]


def gpus() -> None:
    """Create one pueue group per GPU (gpu0, gpu1, ...), one task at a time each."""
    names = gpu_names()
    existing = pueue_state()["groups"]  # first: say so if pueue is missing or down
    if not names:
        print("no NVIDIA GPU here (nvidia-smi lists none): just queue uses pueue's default group, one task at a time")
        return
    for i, name in enumerate(names):
        if f"gpu{i}" not in existing:
            pueue("group", "add", f"gpu{i}", "--parallel", "1")
        pueue("parallel", "1", "--group", f"gpu{i}")
        print(f"group gpu{i}: {name}, one task at a time")


def pueue_tasks() -> list[dict]:
    tasks = []
    for task in pueue_state()["tasks"].values():
        name, start, _, result = task_state(task)
        state = result if name == "Done" else name
        tasks.append(dict(id=task["id"], kind="pueue task", label=task.get("label") or "", path=task["path"],
                          run_id=queued_run_id(task["command"]), since=start, state=state,
                          done=name == "Done", started=name in ("Done", "Running")))  # fmt: skip
    return tasks


def queued_run_id(command: str) -> str | None:
    """The run id `just queue` put in a task's command (`just eval ... --run-id ID`), read by the spec's own
    parser; None for a task added by hand without one."""
    argv = shlex.split(command)
    if argv[:2] != ["just", "eval"] or "--run-id" not in argv:
        return None
    return RunSpec.from_argv(argv[2:]).run_id


def task_rows(df, job: dict, slug: str, claimed: set[str]):
    """The ledger rows of one task or job: by the run id `just queue` gave it (a `pueue restart` of
    it adds a suffix); for a task added with plain `pueue add --label`, the rows of that label and
    worktree started after the task started that no other task claimed by id."""
    if job.get("run_id"):
        return df.filter((pl.col("run_id") == job["run_id"]) | pl.col("run_id").str.starts_with(job["run_id"] + "-"))
    rows = df.filter(
        (pl.col("label") == job["label"]) & (pl.col("experiment") == slug) & ~pl.col("run_id").is_in(claimed)
    )
    if job["since"] is not None:
        begun = datetime.fromisoformat(job["since"]).astimezone(UTC).replace(microsecond=0)
        rows = rows.filter(pl.col("started_at") >= begun.isoformat(timespec="seconds"))
    return rows


def queued_runs(root: Path) -> list[dict]:
    """Labelled pueue tasks and cluster jobs joined with their ledger rows (`task_rows`)."""
    df = ledger(root)
    jobs = cluster_jobs(root)
    # A cluster's login node has no pueue: its jobs alone. Elsewhere a pueue that does not answer is an error.
    tasks = [] if jobs and shutil.which("pueue") is None else pueue_tasks()
    claimed = {
        run_id for job in tasks + jobs if job.get("run_id") for run_id in task_rows(df, job, "", set())["run_id"]
    }
    out = []
    for job in tasks + jobs:
        if LABEL.match(job["label"]) is None:
            continue
        q, h = parse_label(job["label"])
        slug = experiment_name(Path(job["path"]), root)
        rows = task_rows(df, job, slug, claimed).sort("started_at")
        row = None if rows.is_empty() or not job["started"] else rows.row(-1 if job.get("run_id") else 0, named=True)
        base = baseline_rows(df, row) if row is not None and row["status"] == "ok" else None
        delta = None if base is None or base.is_empty() else row["val_bpb"] - base["val_bpb"].mean()
        out.append(dict(id=job["id"], kind=job["kind"], state=job["state"], q=q, h=h, slug=slug, done=job["done"],
                        row=row, delta=delta))  # fmt: skip
    return out


def status(json: bool = False) -> None:
    """pueue's labelled tasks joined with their ledger rows: id, state, Q, H, slug, val_bpb, delta vs main."""
    runs = queued_runs(main_root())
    if json:
        return print_json(runs)
    table = pl.DataFrame(
        [
            dict(
                id=str(r["id"]), state=r["state"], Q=r["q"], H=r["h"], slug=r["slug"],
                val_bpb=None if r["row"] is None else r["row"]["val_bpb"], delta_vs_main=r["delta"],
            )
            for r in runs
        ],
        schema=dict(id=pl.String, state=pl.String, Q=pl.String, H=pl.String, slug=pl.String, val_bpb=pl.Float64, delta_vs_main=pl.Float64),
    )  # fmt: skip
    print_table(table, table.columns)


def log(task_id: str, /) -> None:
    """The full output of a pueue task (a number) or a cluster job (slurm-N, local-N)."""
    if not task_id.isdigit():
        paths = cluster_job_paths(main_root(), task_id)
        for path in (paths.stdout, paths.stderr):
            print(f"==> {path} <==\n{path.read_text() if path.exists() else '(not written yet)'}")
        return
    pueue_state()
    os.execvp("pueue", ["pueue", "log", task_id, "--full"])


def follow(task_id: str, /) -> None:
    """Stream the output of a pueue task (a number) or a cluster job (slurm-N, local-N) as it runs."""
    if not task_id.isdigit():
        return follow_job(main_root(), task_id)
    pueue_state()
    os.execvp("pueue", ["pueue", "follow", task_id])


REVIEWED = re.compile(r"<!-- reviewed: (\S+) -->")


def review_key(run: dict) -> str:
    return run["row"]["run_id"] if run["row"] is not None else f"task-{run['id']}-{run['slug']}"


def unreviewed(root: Path) -> list[dict]:
    """The finished labelled runs that no journal entry reviews yet."""
    done = set(REVIEWED.findall((root / JOURNAL).read_text()))
    return [run for run in queued_runs(root) if run["done"] and review_key(run) not in done]


def review() -> None:
    """Prepend a journal entry for every finished labelled run not reviewed yet: Q, H, what was
    observed, and an empty inference line to fill in before committing."""
    root = main_root()
    journal = root / JOURNAL
    written = 0
    for run in unreviewed(root):
        row, key = run["row"], review_key(run)
        if row is None:
            observed = (
                f"{run['kind']} {run['id']} ended {run['state']} without a ledger row (see: just log {run['id']})"
            )
        elif row["status"] != "ok":
            observed = f"run {row['run_id']} ended `{row['status']}`: {row['error']}"
        else:
            vs = (
                "no baseline in its group to compare with"
                if run["delta"] is None
                else f"{run['delta']:+.4f} vs main's baseline mean in its group"
            )
            observed = (
                f"val_bpb {row['val_bpb']:.4f} ({vs}); {row['train_tokens']:,} tokens in {row['wall_s']:.0f} s, "
                f"{row['tokens_per_s']:,.0f} tokens/s, run {row['run_id']}"
            )
        entry = "\n".join(
            [
                f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {run['slug']} · review of {run['kind']} {run['id']}",
                "",
                f"- **Question:** {run['q']}",
                f"- **Hypothesis:** {run['h']}",
                f"- **Observation:** {observed}",
                "- **Inference:** ",
                f"<!-- reviewed: {key} -->",
            ]
        )
        prepend_entry(journal, entry)
        written += 1
    print(
        f"review: {written} new journal entries"
        + (" (fill in each Inference line before committing)" if written else "")
    )
