"""The file taxonomy, enforced: FROZEN, GLOBAL and APPEND-ONLY rules for the pre-commit hook, `just check`
and the referee (which refuses to score a checkout whose frozen files differ from main's)."""

import os
import re
from pathlib import Path

from repo import Refusal
from repo.git import MAIN_BRANCH, checkout_dir, config_get, current_branch, git, show, uncommitted_files
from repo.ledger import LEDGER, RESULTS_COLUMNS, ledger_problems, migrated, without_bad_lines

# pyproject.toml and uv.lock: every checkout runs in main's environment (a worktree's .venv is a link to main's),
# so an experiment that changed them would re-sync the environment main's runs use, under them.
FROZEN = ("program.md", "eval.py", "meta_journal.md", "justfile", "pyproject.toml", "uv.lock")  # and the packages:
FROZEN_PACKAGES = ("referee/", "harness/", "repo/")  # the referee; the workflow that records a run; what both stand on
GLOBAL = (LEDGER, "RESEARCH_JOURNAL.md")
JOURNAL = "RESEARCH_JOURNAL.md"


def meta_mode() -> bool:
    return os.environ.get("META_MODE") == "1"


def is_frozen(path: str) -> bool:
    return path in FROZEN or (path.startswith(FROZEN_PACKAGES) and "__pycache__" not in path)


def frozen_paths(code_dir: Path, root: Path) -> list[str]:
    """The frozen files of main's last commit and of the checkout (a file added to a package counts)."""
    on_main = git("ls-tree", "-r", "--name-only", MAIN_BRANCH, "--", *FROZEN, *FROZEN_PACKAGES, cwd=root).split("\n")
    here = [str(p.relative_to(code_dir)) for d in FROZEN_PACKAGES for p in (code_dir / d).rglob("*") if p.is_file()]
    return sorted({p for p in on_main + here if p and is_frozen(p)})


def install_hooks(root: Path) -> None:
    """Point git at the tracked hooks folder of the main checkout (shared by every worktree).
    Every recipe does this; two doing it at once race for git's config lock, and the loser is
    fine as long as the value it wanted is there."""
    hooks = str(root / ".githooks")
    if config_get("core.hooksPath", root) == hooks:
        return
    try:
        git("config", "core.hooksPath", hooks, cwd=root)
    except Exception as e:
        if config_get("core.hooksPath", root) != hooks:
            raise Refusal(f"could not install the pre-commit hook (git config core.hooksPath {hooks}): {e}") from e


def is_journal(path: str) -> bool:
    return path == JOURNAL or path.endswith("_journal.md")


def journal_head(text: str) -> str:
    """The title and preamble: everything before the first `## ` entry heading."""
    match = re.search(r"^## ", text, flags=re.MULTILINE)
    return text if match is None else text[: match.start()]


def journal_grows_at_top(old: str, new: str) -> bool:
    """APPEND-ONLY for journals: new = head + new entries + every old entry, unchanged."""
    head, entries = journal_head(old), old[len(journal_head(old)) :]
    return len(new) >= len(old) and new.startswith(head) and new.endswith(entries)


def ledger_grows_at_bottom(old: str, new: str) -> bool:
    """APPEND-ONLY for the ledger: rows are only appended, never edited or removed. Before the new rows,
    the old text may have lost lines that were not rows (`without_bad_lines`), and a ledger from before
    a column was added may have been migrated (`migrated`: header and padding only)."""
    if not old or new.startswith(old):
        return not old or old.endswith("\n")
    header = old.split("\n", 1)[0].split("\t")
    if tuple(header) != RESULTS_COLUMNS[: len(header)] or not old.endswith("\n"):
        return False
    repaired = without_bad_lines(old)
    return any(new.startswith(before) for before in (repaired, migrated(old), migrated(repaired)))


def taxonomy_violations(changes: dict[str, tuple[bytes | None, bytes | None]], on_main: bool, meta: bool) -> list[str]:
    """The rules broken by a change, given each changed path's (old, new) content (None = absent).
    Each message names the rule, the file and how to proceed."""
    problems = []
    for path, (old, new) in sorted(changes.items()):
        if old == new:
            continue
        if is_frozen(path) and not meta:
            problems.append(
                f"FROZEN {path}: changes only in meta-mode. Undo it (git checkout {MAIN_BRANCH} -- {path}), or, "
                f"if a human asked for meta-mode in human_journal.md, run with META_MODE=1."
            )
        if path in GLOBAL and not on_main:
            problems.append(
                f"GLOBAL {path}: committed only on {MAIN_BRANCH}; a worktree writes the root copy (just journal, "
                f"just eval). Drop it from this commit: git restore --staged {path} && git checkout HEAD -- {path}"
            )
        if old is None:
            continue
        if new is None and (is_journal(path) or path == LEDGER):
            problems.append(f"APPEND-ONLY {path}: may not be deleted. Restore it: git checkout HEAD -- {path}")
        elif new is not None and is_journal(path) and not journal_grows_at_top(old.decode(), new.decode()):
            problems.append(
                f"APPEND-ONLY {path}: an old entry or the title was edited or removed. Add new entries at the top, "
                f'below the title (just journal "..."), and leave the old ones as they are.'
            )
        elif new is not None and path == LEDGER and not ledger_grows_at_bottom(old.decode(), new.decode()):
            problems.append(f"APPEND-ONLY {path}: rows were edited or removed; rows are only appended (by just eval).")
        elif new is not None and path == LEDGER and (bad := ledger_problems(new.decode())):
            problems.append(
                f"APPEND-ONLY {path}: {bad[0]}: not a row the referee wrote. Delete that line, then commit again."
            )
    return problems


def staged_changes(cwd: Path) -> dict[str, tuple[bytes | None, bytes | None]]:
    names = git("diff", "--cached", "--name-only", "-z", cwd=cwd).split("\0")
    return {n: (show(f"HEAD:{n}", cwd), show(f":{n}", cwd)) for n in names if n}


def pre_commit_violations(cwd: Path) -> list[str]:
    """What the pre-commit hook refuses: the staged changes that break a rule."""
    top = checkout_dir(cwd)
    return taxonomy_violations(staged_changes(top), current_branch(top) == MAIN_BRANCH, meta_mode())


def check_violations(cwd: Path) -> list[str]:
    """What `just check` reports: the branch's commits since it left main, then uncommitted changes."""
    top, branch = checkout_dir(cwd), current_branch(cwd)
    problems = []
    if branch != MAIN_BRANCH:
        base = git("merge-base", MAIN_BRANCH, "HEAD", cwd=top)
        names = [n for n in git("diff", "--name-only", "-z", base, "HEAD", cwd=top).split("\0") if n]
        changes = {n: (show(f"{base}:{n}", top), show(f"HEAD:{n}", top)) for n in names}
        problems += [f"committed on {branch}: {p}" for p in taxonomy_violations(changes, False, meta_mode())]
    local = {
        n: (show(f"HEAD:{n}", top), (top / n).read_bytes() if (top / n).is_file() else None)
        for n in uncommitted_files(top)
    }
    problems += [f"uncommitted: {p}" for p in taxonomy_violations(local, branch == MAIN_BRANCH, meta_mode())]
    return problems


def scoring_violations(code_dir: Path, root: Path) -> list[str]:
    """Why a run from `code_dir` may not be scored: frozen files that differ from main's committed
    versions (unless META_MODE=1), and uncommitted Python code (a row must name a commit)."""
    problems = []
    if not meta_mode():
        changed = [
            f
            for f in frozen_paths(code_dir, root)
            if ((code_dir / f).read_bytes() if (code_dir / f).is_file() else None) != show(f"{MAIN_BRANCH}:{f}", root)
        ]
        if changed:
            problems.append(
                f"FROZEN files differ from {MAIN_BRANCH}'s committed versions: {', '.join(changed)}. "
                f"Restore them (git checkout {MAIN_BRANCH} -- {' '.join(changed)}), or set META_MODE=1 for harness work."
            )
    dirty = [f for f in uncommitted_files(code_dir, "*.py") if not is_frozen(f)]
    if dirty:
        problems.append(
            f"uncommitted Python code in {code_dir}: {', '.join(dirty)}. Commit it first "
            f"(git -C {code_dir} commit -am '...'): a scored row must name code that exists."
        )
    return problems


def require_scoring_allowed(code_dir: Path, root: Path) -> None:
    problems = scoring_violations(code_dir, root)
    if problems:
        raise Refusal("refusing to score this run:\n  - " + "\n  - ".join(problems))
