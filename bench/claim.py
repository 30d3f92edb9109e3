"""The time to a confirmed claim, from a fresh clone: main's baseline, an experiment with a real improvement (its
change committed in a worktree), its seeds as `just compare` asks for them, `just confirm` and `just audit`, each
stage timed, the way an agent following program.md runs them. Prints a line per stage and a JSON line at the end.

Usage:
    uv run python bench/claim.py                                    # the cpu preset: 12 runs or more, over 2 hours on the 2-core Xeon VM
    uv run python bench/claim.py --budget-tokens 2000000 --change train.py "batch_size: int = 16" "batch_size: int = 8"
                                                                    # 40.6 min on a 2-core EPYC: confirmed, audited
    uv run python bench/claim.py --change train.py "lr: float = 2e-3" "lr: float = 3e-3"

Each command's own output goes to the scratch project's claim.log; the project stays for a look afterwards.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from scratch import change, scratch_project

SLUG = "claim"
# 1.5 times the params, 1.3-1.6 times a run's time: -0.092 at the preset, better at every seed, but its seeds
# spread 0.075 (bench/README.md, "Main's batch size is 16"), so compare may ask for more than three
WIDER = ("train.py", "d_model: int = 128", "d_model: int = 160")


@dataclass(frozen=True)
class Args:
    budget_tokens: int | None = None
    """training tokens of every run (default: the device's preset)"""
    config: str | None = None
    """the config of every run (default: the device's; `tiny` checks this script in minutes)"""
    change: tuple[str, str, str] = WIDER
    """the experiment: FILE, text in main, text in the experiment"""


def main(args: Args) -> None:
    project = scratch_project("claim-")
    log = open(project / "claim.log", "w")
    env = {**os.environ, "PATH": f"{project / '.venv/bin'}:{os.environ['PATH']}"}
    eval_args = [args.config] if args.config else []
    eval_args += ["--budget-tokens", str(args.budget_tokens)] if args.budget_tokens else []
    stages: dict[str, dict] = {}

    def just(*argv: str, cwd: Path = project, check: bool = True) -> str:
        log.write(f"$ just {' '.join(argv)}\n")
        log.flush()
        done = subprocess.run(["just", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        log.write(done.stdout)
        if check and done.returncode:
            raise SystemExit(f"just {' '.join(argv)} failed ({done.returncode}): see {project / 'claim.log'}")
        return done.stdout

    def stage(name: str, runs: int, t0: float) -> None:
        stages[name] = dict(wall_s=round(time.perf_counter() - t0, 1), runs=runs)
        print(f"{name}: {stages[name]['wall_s']:.0f} s, {runs} runs", flush=True)

    t_all = t0 = time.perf_counter()
    print(f"project: {project}", flush=True)
    just("baseline", *eval_args)
    stage("baseline", n_rows(project), t0)

    t0, before = time.perf_counter(), n_rows(project)
    just("new", SLUG)
    worktree = project / "5_worktrees" / SLUG
    change(worktree, *args.change, f"exp({SLUG}): {args.change[1]} -> {args.change[2]}")
    just("eval", *eval_args, cwd=worktree)
    while True:  # the seeds compare asks for, until it decides
        verdict = json.loads(just("compare", SLUG, "--json"))
        commands = [line.strip() for line in verdict["advice"].splitlines() if "uv run just eval" in line]
        if not commands or verdict["outcome"] in ("improved", "worse") or "drop it" in verdict["advice"]:
            break
        for command in commands:
            log.write(f"$ {command}\n")
            subprocess.run(
                command.replace("uv run just", "just"),
                shell=True,
                cwd=project,
                env=env,
                stdout=log,
                stderr=log,
                check=True,
            )
    stage("explore", n_rows(project) - before, t0)
    outcome = verdict["outcome"]
    if outcome == "improved":
        t0, before = time.perf_counter(), n_rows(project)
        confirmed = just("confirm", SLUG)
        stage("confirm", n_rows(project) - before, t0)
        outcome = "confirmed" if "on fresh seeds: improved" in confirmed else "not confirmed"
        t0 = time.perf_counter()
        audited = just("audit", SLUG, check=False)
        stage("audit", 0, t0)
        outcome += ", " + audited.strip().splitlines()[-1]
    total = round(time.perf_counter() - t_all, 1)
    print(f"whole: {total:.0f} s ({total / 60:.1f} min), {n_rows(project)} runs: {outcome}")
    print(
        json.dumps(
            dict(
                config=args.config,
                budget_tokens=args.budget_tokens,
                change=args.change,
                stages=stages,
                whole_s=total,
                outcome=outcome,
            )
        )
    )


def n_rows(project: Path) -> int:
    return len((project / "results.tsv").read_text().splitlines()) - 1


if __name__ == "__main__":
    main(tyro.cli(Args))
