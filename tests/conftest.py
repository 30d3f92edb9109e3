"""Shared fixtures: a real copy of this project in a temporary git repo, and a way to run its recipes."""

import argparse
import inspect
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import eval, harness, model, train from the checkout under test
from harness import table  # noqa: E402
from harness.compare import CONFIRM_SEEDS, record_draw  # noqa: E402
from referee.spec import RunSpec  # noqa: E402
from repo import guard  # noqa: E402
from repo.ledger import RESULTS_COLUMNS, append_result  # noqa: E402

DRAWN_SEED = CONFIRM_SEEDS.start  # hand-made confirmation rows: seeds in the range `just confirm` draws from
JUST = shutil.which("just") or str(ROOT / ".venv" / "bin" / "just")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def is_research_record(rel: str) -> bool:
    """What a research project accumulates: ideas and reports beyond their templates."""
    return rel.startswith(("1_ideas/", "9_reports/")) and not rel.endswith("_TEMPLATE.md")


def make_project(dst: Path) -> Path:
    """The checkout's tracked code (as it is on disk) committed on `main` of a new repo at `dst`,
    with the checkout's virtual environment shared through a symlink. The research record starts
    empty, as in a fresh clone of the template: the ledger's header, the journals' heads, no ideas
    or reports, whatever this checkout has recorded so far."""
    dst.mkdir(parents=True, exist_ok=True)
    for rel in git("ls-files", "-z", cwd=ROOT).split("\0"):
        if rel and (ROOT / rel).is_file() and not is_research_record(rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    (dst / "results.tsv").write_text("\t".join(RESULTS_COLUMNS) + "\n")
    for journal in dst.glob("*journal*.md"):
        if guard.is_journal(journal.name):
            journal.write_text(guard.journal_head(journal.read_text()))
    (dst / ".venv").symlink_to(ROOT / ".venv")
    git("init", "-q", "-b", "main", cwd=dst)
    git("config", "user.email", "test@example.com", cwd=dst)
    git("config", "user.name", "test", cwd=dst)
    git("add", "-A", cwd=dst)
    git("commit", "-q", "-m", "init", cwd=dst)
    return dst


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def child_env(env: dict | None = None) -> dict:
    """The environment of a command a test starts: this process's, with `env` on top. The caller's META_MODE (which
    small_corpus sets for its commit), or pueue's slot of a test run under pueue, must not leak into a test's runs."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("META_MODE", "PUEUE_GROUP", "PUEUE_WORKER_ID")}
    return {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=child_env(env), timeout=timeout)


def just(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return run([JUST, *args], cwd=cwd, env=env, timeout=timeout)


def block(stdout: str) -> dict[str, str]:
    """The `key: value` summary block a run prints after its `---` line."""
    tail = stdout.rsplit("---\n", 1)[-1]
    return dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in tail.splitlines() if line)


def ledger(project: Path):
    """The project's results.tsv, read with the referee's schema."""
    return table.read_results(project / "results.tsv")


def group_of(row: dict) -> dict:
    """The columns that put a hand-made row in `row`'s comparable group (harness.table.COMPARABLE, but the budget,
    which add_rows derives from budget_tokens), and its config."""
    return {k: row[k] for k in (*(c for c in table.COMPARABLE if c != "budget"), "config")}


def add_rows(project: Path, *rows: dict) -> None:
    """Hand-made ledger rows, written the way the referee writes them, each with the spec its columns imply:
    its CONFIG (the config column up to a `:`, a display the referee writes and nothing parses), its device,
    budget, threads and seed, and the `overrides` and `nproc` a row may give for its spec alone."""
    base = dict(status="ok", eval_sha="e" * 40, data_fp="f" * 16, device="cpu", config="cpu", train_tokens=1000, seed=0)
    for i, given in enumerate(rows):
        extra = {k: given[k] for k in ("overrides", "nproc") if k in given}
        row = base | dict(run_id=f"r{i}-{given['experiment']}", started_at=f"2026-01-01T00:00:{i:02d}")
        row |= {k: v for k, v in given.items() if k not in extra}
        if str(row.get("description", "")).startswith("confirm") and "holdout_bpb" not in row:
            row["holdout_bpb"] = row.get("val_bpb")  # a confirmation run is scored on the holdout too
        name = row["config"].partition(":")[0]
        spec = RunSpec(
            config_name=None if name.endswith(".json") else name,
            config=Path(name) if name.endswith(".json") else None,
            device=row["device"],
            budget_tokens=row.get("budget_tokens") or row["train_tokens"],
            seed=row["seed"],
            threads=row.get("threads"),
            run_id=row["run_id"],
            **extra,
        )
        append_result(row | dict(spec=row.get("spec", spec.to_json())), project / "results.tsv")


def draw(project: Path, slug: str, *seeds: int) -> None:
    """What `just confirm SLUG` records before it runs each pair (runs/confirm-draws.jsonl), for confirming rows
    written by hand: a confirmation counts only the seeds drawn for it."""
    for seed in seeds:
        record_draw(project, slug, seed)


def set_data_source(project: Path, source: str) -> None:
    """What a researcher does in meta-mode: edit the referee's DATA_SOURCE and commit it on main (META_MODE=1 must
    be set for the commit)."""
    path = project / "referee" / "data.py"
    text = path.read_text()
    assert 'DATA_SOURCE = "stdlib"' in text
    path.write_text(text.replace('DATA_SOURCE = "stdlib"', f"DATA_SOURCE = {source!r}"))
    git("commit", "-qam", f"data source {source}", cwd=project)


@pytest.fixture
def small_corpus(project: Path, tmp_path: Path, monkeypatch) -> dict:
    """The project's DATA_SOURCE set to 330 KB of real text (a few modules of the standard library in one file), so
    that a scoring pass takes a second or two instead of ten (the default corpus's 1.95 MB validation split); the
    environment its runs need (a cache folder of their own). For tests of the workflow around runs, which run many:
    the default corpus is what the tests of a single run, the red team's and the README's own run score. One file
    needs no `just prepare` (each run reads and splits it; tests/test_data.py prepares sources)."""
    text = tmp_path / "corpus.py.txt"
    text.write_text("".join(Path(m.__file__).read_text() for m in (argparse, textwrap, inspect)))
    monkeypatch.setenv("META_MODE", "1")  # the commit of referee/data.py (conftest.run drops it for runs)
    set_data_source(project, f"text:{text}")
    return {"RESEARCH_CACHE_DIR": str(tmp_path / "cache")}


def new(project: Path, slug: str) -> Path:
    result = just(project, "new", slug)
    assert result.returncode == 0, result.stderr
    return project / "5_worktrees" / slug


def in_processes(target, args_per_process: list[tuple]) -> None:
    """Run `target` in fresh processes at once (spawned, so each imports the code itself), and wait."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=target, args=args) for args in args_per_process]
    for p in workers:
        p.start()
    for p, args in zip(workers, args_per_process, strict=True):
        p.join()
        assert p.exitcode == 0, f"{target.__name__}{args} exited {p.exitcode}"
