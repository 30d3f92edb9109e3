"""How long `just site` takes on a large record: a git repo with a ledger of --rows rows over --experiments
experiments (each a branch with a commit, an idea file, and a metrics.jsonl of 50 steps per run) and a journal
of 200 entries. Prints one JSON line: the build's seconds and what it built (no timing is asserted anywhere).

    uv run python bench/site_bench.py [--rows 1000] [--experiments 50]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import website  # noqa: E402
from repo.ledger import RESULTS_COLUMNS  # noqa: E402


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_record(root: Path, rows: int, experiments: int) -> None:
    rng = random.Random(0)
    git("init", "-q", "-b", "main", cwd=root)
    git("config", "user.email", "bench@example.com", cwd=root)
    git("config", "user.name", "bench", cwd=root)
    (root / "train.py").write_text("".join(f"x{i} = {i}\n" for i in range(200)))
    for folder in ("1_ideas", "9_reports", "runs"):
        (root / folder).mkdir()
    entries = [
        f"## 2026-01-01 00:{i % 60:02d} UTC · e{i % experiments}\n\nnote {i} on e{i % experiments}\n"
        for i in range(200)
    ]
    (root / "RESEARCH_JOURNAL.md").write_text("# Research Journal\n\n" + "\n".join(entries))
    git("add", "-A", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    for e in range(experiments):
        git("checkout", "-qb", f"exp/e{e}", "main", cwd=root)
        (root / "train.py").write_text((root / "train.py").read_text().replace(f"x{e} = {e}\n", f"x{e} = {e + 1}\n"))
        git("commit", "-qam", f"exp(e{e})", cwd=root)
        (root / "1_ideas" / f"2026-01-01_e{e}.md").write_text(f"# idea {e}\n\nRating: {e % 10}/10\n")
    git("checkout", "-q", "main", cwd=root)
    lines = ["\t".join(RESULTS_COLUMNS)]
    for i in range(rows):
        experiment = "main" if i % 10 == 0 else f"e{rng.randrange(experiments)}"
        description = f"baseline seed {i // 10}/{rows // 10}" if experiment == "main" else "exploration"
        run_id = f"run{i:05d}"
        row = dict(
            run_id=run_id, started_at=f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}",
            experiment=experiment, config="cpu", commit="0" * 12, seed=i, device="cpu", status="ok",
            val_bpb=1.75 + rng.gauss(0, 0.01), train_tokens=7_000_000, wall_s=400.0, tokens_per_s=17000.0,
            mfu=0.3, peak_mem_gb=1.0, params_m=3.0, eval_sha="e" * 40, data_fp="f" * 16,
            description=description, budget_tokens=7_000_000, threads=2,
        )  # fmt: skip
        lines.append("\t".join("" if row.get(c) is None else str(row[c]) for c in RESULTS_COLUMNS))
        (root / "runs" / run_id).mkdir()
        steps = [dict(step=s, total_steps=500, tokens=s * 14336, loss=5.0 / (1 + s / 100)) for s in range(0, 500, 10)]
        (root / "runs" / run_id / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
    (root / "results.tsv").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--experiments", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_record(root, args.rows, args.experiments)
        start = time.perf_counter()
        index = website.build(root)
        first = time.perf_counter() - start
        start = time.perf_counter()
        website.build(root)
        again = time.perf_counter() - start
        pages = len(list(index.parent.rglob("*.html")))
        size = sum(p.stat().st_size for p in index.parent.rglob("*.html"))
    print(json.dumps(dict(rows=args.rows, experiments=args.experiments, build_s=round(first, 2),
                          rebuild_s=round(again, 2), pages=pages, html_mb=round(size / 1e6, 1))))  # fmt: skip


if __name__ == "__main__":
    main()
