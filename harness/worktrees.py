"""One git worktree per experiment: `just new` (5_worktrees/SLUG on branch exp/SLUG), `just rm`, `just submit`
(commit, push, and a pull request once confirmed on fresh seeds), and `just check` (the taxonomy guard)."""

import shlex
import shutil
import subprocess
from pathlib import Path

from harness import Refusal
from harness.audit import run_audit
from harness.compare import confirmation, confirmation_rows
from harness.records import idea_file, idea_title
from harness.stats import Outcome
from harness.table import ledger, ok_rows
from repo.git import (
    MAIN_BRANCH,
    commit,
    git,
    head_commit,
    main_root,
    repo,
    succeeds,
    uncommitted_files,
    worktree_dir,
)
from repo.guard import check_violations
from repo.ledger import LEDGER, record_killed_runs


def new(slug: str, /) -> None:
    """Create worktree 5_worktrees/SLUG on a new branch exp/SLUG from main, or re-open an existing exp/SLUG."""
    root = main_root()
    path = worktree_dir(root, slug)
    git("worktree", "prune", cwd=root)  # a worktree deleted by hand (rm -rf) no longer holds its branch
    if path.exists():
        raise Refusal(f"{path} already exists: pick another slug, or remove it with `just rm {slug}`")
    heads = {head.name: head.commit.hexsha[:12] for head in repo(root).heads}
    if f"exp/{slug}" in heads:  # kept by `just rm`: its commits are what rows name
        git("worktree", "add", str(path), f"exp/{slug}", cwd=root)
        print(f"re-opened branch exp/{slug} in {path} (at {heads[f'exp/{slug}']})")
    else:
        git("worktree", "add", "-b", f"exp/{slug}", str(path), MAIN_BRANCH, cwd=root)
        print(f"created {path} on branch exp/{slug} (from {MAIN_BRANCH} {heads[MAIN_BRANCH]})")
    if (root / ".venv").is_dir():  # share the main checkout's environment: a new worktree is ready in seconds
        (path / ".venv").symlink_to(root / ".venv")
    idea = idea_file(root, slug)
    if idea is not None:
        print(f"idea: {idea.relative_to(root)}")
    print(f"next: cd {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print("      edit train.py / model.py, git commit -am '...', then: uv run just smoke && uv run just eval")


def rm(slug: str, /, force: bool = False) -> None:
    """Remove a worktree whose branch is merged or whose runs are all recorded (else --force)."""
    root = main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(f"no worktree {path}; `git worktree list` shows the ones that exist")
    head = head_commit(path, 40)
    merged = succeeds("merge-base", "--is-ancestor", head, MAIN_BRANCH, cwd=root)
    dirty = uncommitted_files(path)
    df = ledger(root)
    scored = any(r["experiment"] == slug and head.startswith(r["commit"] or "-") for r in df.iter_rows(named=True))
    losses = []
    if dirty:
        losses.append(f"the uncommitted changes to {', '.join(dirty)}")
    if not merged and not scored:
        losses.append(f"its commit {head[:12]}, which is neither merged into {MAIN_BRANCH} nor scored in {LEDGER}")
    if losses and not force:
        raise Refusal(
            f"refusing to remove {path}: that would lose " + ", and ".join(losses) + ". Commit and score it, "
            "or use --force to remove it anyway."
        )
    if (path / ".venv").is_symlink():
        (path / ".venv").unlink()
    git("worktree", "remove", *(["--force"] if force else []), str(path), cwd=root)
    print(
        f"removed {path}; branch exp/{slug} is kept, as its commits are what the ledger names (just new {slug} re-opens it)"
    )


def check() -> None:
    """List taxonomy violations (FROZEN, GLOBAL, APPEND-ONLY) of this checkout; exit 1 if any. Runs
    killed before they wrote their row get it here (and in `just eval` and `just next`)."""
    record_killed_runs(main_root())
    problems = check_violations(Path.cwd())
    for p in problems:
        print(f"- {p}")
    if problems:
        raise SystemExit(1)
    print("check: ok (FROZEN, GLOBAL and APPEND-ONLY rules hold)")


def is_local_path(url: str) -> bool:
    """A remote on this machine (a folder, or file://), not a server: git's URL forms, scp-like `host:path` too."""
    return url.startswith(("/", ".", "~", "file://")) or ("://" not in url and ":" not in url.split("/")[0])


def submit(slug: str, /, message: str = "", push: bool = False) -> None:
    """Commit the worktree's pending changes as exp(SLUG): ..., push exp/SLUG to origin (saying where; a local
    path, such as the repository this one was cloned from, only with --push), and open a pull request (or print
    the command) when `just confirm SLUG` confirmed it on fresh seeds and `just audit SLUG` re-derives that from
    the record; the pull request carries the audit's lines."""
    root = main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(f"no worktree {path}: `just new {slug}` creates it")
    pending = uncommitted_files(path)
    idea = idea_file(root, slug)
    summary = message or (idea_title(idea) if idea else "experiment")
    if pending:
        git("add", "-A", cwd=path)
        refused = commit(path, f"exp({slug}): {summary}")
        if refused is not None:
            raise Refusal(f"commit refused:\n{refused}")
        print(f"committed {len(pending)} files as exp({slug}): {summary}")
    else:
        print("nothing to commit")
    remotes = git("remote", cwd=root).split()
    url = git("remote", "get-url", "origin", cwd=root) if "origin" in remotes else None
    if url is None:
        print("no remote 'origin': nothing pushed (add one with git remote add origin URL, then rerun)")
    elif is_local_path(url) and not push:
        print(f"origin is a local path ({url}): nothing pushed there unasked (rerun with --push to push exp/{slug})")
    else:
        git("push", "-u", "origin", f"exp/{slug}", cwd=path)
        print(f"pushed exp/{slug} to origin ({url})")
    df = ledger(root)
    if ok_rows(df, slug).is_empty():
        print(f"no ok rows for {slug}: no pull request (score it with just eval first)")
        return
    result = confirmation(df, slug)
    if result is None:
        print(
            f"no pull request: {slug} is not confirmed on fresh seeds; once `just compare {slug}` says improved, run `just confirm {slug}`"
        )
        return
    print(f"{slug} on fresh seeds: {result.outcome} — {result.why}")
    if result.outcome != Outcome.IMPROVED:
        print(f"no pull request: {result.advice}")
        return
    evidence = []

    def emit(line: str) -> None:
        print(line)
        evidence.append(line)

    if not run_audit(root, df, slug, emit):
        print(f"no pull request: the audit failed (`just audit {slug}` repeats it)")
        raise SystemExit(1)
    confirming = confirmation_rows(df, slug)
    mine, mains = confirming.mine, confirming.mains
    title = f"exp({slug}): {summary}"
    body = (
        f"Confirmed on fresh seeds: {result.why}. Confirming rows: {', '.join(mine['run_id'])} against the main rows "
        f"{', '.join(mains['run_id'])}.\n\n`just audit {slug}` re-derived it from the record:\n\n```\n"
        + "\n".join(evidence)
        + "\n```\n\nMerging is for a human."
    )
    command = ["gh", "pr", "create", "--base", MAIN_BRANCH, "--head", f"exp/{slug}", "--title", title, "--body", body]
    if shutil.which("gh") and "origin" in remotes:
        subprocess.run(command, cwd=path, check=True)
    else:
        print("open the pull request with:\n  " + shlex.join(command))
