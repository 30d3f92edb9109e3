"""How much of a seed's luck main and an experiment share: four real changes (a learning rate, a width, an
architectural change, a schedule), each in its own worktree of a scratch project, scored with `just eval` at
the same seeds as main; per change, the correlation of the two sides' val_bpb at equal seeds and what pairing
them buys (the spread of the per-seed differences against the spread of an unpaired difference).

Usage:
    uv run python bench/pairing.py --budget-tokens 1000000 --seeds 5      # ~25 runs; resumable with --project
    uv run python bench/pairing.py --project /tmp/pairing --seeds 6       # more seeds in the same project

Each finished run prints a JSON line; the table comes last. The runs are real rows of the scratch project's
ledger, so `just compare` can be tried on them there.
"""

import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from scratch import change, scratch_project, sh

from harness.table import read_results

# slug -> (file, text in main, text in the experiment)
CHANGES = {
    "lr-3e-3": ("train.py", "lr: float = 2e-3", "lr: float = 3e-3"),  # 1.5 times (4e-3 -> 6e-3 before 2e-3)
    "width-160": ("train.py", "d_model: int = 128", "d_model: int = 160"),
    "gelu-mlp": ("model.py", "F.relu(self.up(x)).square()", "F.gelu(self.up(x))"),
    "warmup-10pct": ("train.py", "warmup_frac: float = 0.03", "warmup_frac: float = 0.1"),
}


@dataclass(frozen=True)
class Args:
    budget_tokens: int = 1_000_000
    """training tokens of every run"""
    seeds: int = 5
    """seeds 0..N-1 on main and on each change"""
    project: Path | None = None
    """a scratch project made by an earlier call (runs already in its ledger are not repeated)"""
    changes: tuple[str, ...] = tuple(CHANGES)
    """which of the changes to run"""


def worktree(project: Path, slug: str) -> Path:
    """5_worktrees/SLUG with the change committed."""
    path = project / "5_worktrees" / slug
    if not path.is_dir():
        sh(str(project / ".venv/bin/just"), "new", slug, cwd=project)
        change(path, *CHANGES[slug], slug)
    return path


def val_bpb(project: Path, budget: int) -> dict[tuple[str, int], float]:
    """(experiment, seed) -> val_bpb of the ok rows at this budget."""
    df = read_results(project / "results.tsv")
    rows = df.filter((df["status"] == "ok") & (df["budget_tokens"] == budget)).iter_rows(named=True)
    return {(r["experiment"], r["seed"]): r["val_bpb"] for r in rows}


def report(scores: dict[tuple[str, int], float], changes: tuple[str, ...]) -> None:
    print(
        "| change | seeds | main mean | change mean | delta | main std | change std | r | std of differences | paired / unpaired noise |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for slug in changes:
        seeds = sorted(s for (e, s) in scores if e == slug and ("main", s) in scores)
        if len(seeds) < 3:
            continue
        m, x = [scores["main", s] for s in seeds], [scores[slug, s] for s in seeds]
        diff = [b - a for a, b in zip(m, x, strict=True)]
        sd_m, sd_x, sd_d = statistics.stdev(m), statistics.stdev(x), statistics.stdev(diff)
        r = statistics.correlation(m, x)
        ratio = sd_d / (sd_m**2 + sd_x**2) ** 0.5
        print(
            f"| {slug} | {len(seeds)} | {statistics.fmean(m):.4f} | {statistics.fmean(x):.4f} | "
            f"{statistics.fmean(diff):+.4f} | {sd_m:.4f} | {sd_x:.4f} | {r:+.2f} | {sd_d:.4f} | {ratio:.2f} |"
        )


def main(args: Args) -> None:
    project = args.project or scratch_project("pairing-")
    print(f"project: {project}", flush=True)
    just = str(project / ".venv/bin/just")
    places = {"main": project} | {slug: worktree(project, slug) for slug in args.changes}
    for seed in range(args.seeds):
        for experiment, where in places.items():
            if (experiment, seed) in val_bpb(project, args.budget_tokens):
                continue
            t0 = time.perf_counter()
            cmd = [just, "eval", "--budget-tokens", str(args.budget_tokens), "--seed", str(seed)]
            done = subprocess.run(cmd, cwd=where, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{experiment} seed {seed} failed:\n{done.stderr[-2000:]}")
            score = val_bpb(project, args.budget_tokens)[experiment, seed]
            line = dict(experiment=experiment, seed=seed, val_bpb=score, wall_s=round(time.perf_counter() - t0, 1))
            print(json.dumps(line), flush=True)
    report(val_bpb(project, args.budget_tokens), args.changes)
    if args.project is None:
        print(f"(the scratch project stays for more seeds: --project {project}; rm -r {project.parent} when done)")


if __name__ == "__main__":
    main(tyro.cli(Args))
