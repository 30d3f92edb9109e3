"""The one git layer: every git command of the harness and the referee goes through GitPython here."""

import re
from pathlib import Path

from git import Git, GitCommandError, Repo

from repo import Refusal

MAIN_BRANCH = "main"
WORKTREES = "5_worktrees"  # one worktree per experiment: 5_worktrees/{slug} on branch exp/{slug}
SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")


def git(*args: str, cwd: Path) -> str:
    """`git ARGS` in `cwd`: its stdout without the final newline; a failure raises GitCommandError."""
    return Git(cwd).execute(["git", *args])


def succeeds(*args: str, cwd: Path) -> bool:
    """Whether `git ARGS` exits 0 (a question such as `merge-base --is-ancestor`)."""
    status, _, _ = Git(cwd).execute(["git", *args], with_extended_output=True, with_exceptions=False)
    return status == 0


def show(rev_path: str, cwd: Path) -> bytes | None:
    """`git show REV:PATH` (or `:PATH` for the index), byte for byte; None when it does not exist there."""
    status, out, _ = Git(cwd).execute(
        ["git", "show", rev_path], with_extended_output=True, with_exceptions=False,
        stdout_as_string=False, strip_newline_in_stdout=False,
    )  # fmt: skip
    return out if status == 0 else None


class NotARepository(ValueError):
    def __init__(self, path: Path):
        super().__init__(f"{path} is not inside a git checkout of the research repo: cd into it (or a worktree) first")


def repo(cwd: Path) -> Repo:
    return Repo(cwd)


def main_root(cwd: Path | None = None) -> Path:
    """The main checkout, from anywhere inside it or any of its worktrees."""
    try:
        common = git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=cwd or Path.cwd())
    except GitCommandError as e:
        raise NotARepository(cwd or Path.cwd()) from e
    return Path(common).parent


def checkout_dir(cwd: Path | None = None) -> Path:
    """The top folder of the checkout (main or a worktree) that `cwd` is in."""
    try:
        return Path(git("rev-parse", "--show-toplevel", cwd=cwd or Path.cwd()))
    except GitCommandError as e:
        raise NotARepository(cwd or Path.cwd()) from e


def experiment_name(code_dir: Path, root: Path) -> str:
    """What the ledger calls a checkout's runs: `main`, or the worktree's slug."""
    return "main" if code_dir == root else code_dir.name


def current_branch(cwd: Path) -> str:
    return git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)


def head_commit(cwd: Path, length: int = 12) -> str:
    return git("rev-parse", f"--short={length}", "HEAD", cwd=cwd)


EXPERIMENT_CODE = (":(top,glob)*.py", ":(top,exclude)eval.py")  # what a run keeps beside its row (eval.py's keep_code)


def code_commits(root: Path, commits: list[str]) -> dict[str, str]:
    """Each commit -> the newest commit at or before it that changed the experiment's code, abbreviated alike:
    runs of one code name one commit, whatever was committed between them (`just record` during a baseline). A
    commit this repository lacks maps to itself."""
    found = {}
    for c in dict.fromkeys(c for c in commits if c):
        changed = succeeds("cat-file", "-e", f"{c}^{{commit}}", cwd=root) and git(
            "log", "-1", f"--abbrev={len(c)}", "--format=%h", c, "--", *EXPERIMENT_CODE, cwd=root
        )
        found[c] = changed or c
    return found


def uncommitted_files(cwd: Path, *pathspec: str) -> list[str]:
    """Paths with uncommitted changes, untracked files included (porcelain -z: no quoting, no trimming)."""
    out = git("status", "--porcelain", "-z", "--untracked-files=all", "--", *pathspec, cwd=cwd)
    return sorted(entry[3:] for entry in out.split("\0") if len(entry) > 3)


def tracked_dirty(cwd: Path) -> bool:
    """Whether tracked code (.py files) differs from HEAD: the research record (ledger, journal, ideas) and
    untracked files do not make a run's commit dirty."""
    return bool(git("status", "--porcelain", "--untracked-files=no", "--", "*.py", cwd=cwd))


def commit(cwd: Path, message: str, *pathspec: str) -> str | None:
    """`git commit -m MESSAGE [-- PATHSPEC]`; None when it succeeded, else git's (and the hook's) output."""
    args = ["git", "commit", "-m", message, *(["--", *pathspec] if pathspec else [])]
    status, out, err = Git(cwd).execute(args, with_extended_output=True, with_exceptions=False)
    return None if status == 0 else f"{out}\n{err}".strip()


def config_get(key: str, cwd: Path) -> str:
    status, out, _ = Git(cwd).execute(["git", "config", key], with_extended_output=True, with_exceptions=False)
    return out if status == 0 else ""


def check_slug(slug: str) -> str:
    """An experiment's name, as its worktree, branch, idea and report use it."""
    if slug == MAIN_BRANCH:
        raise Refusal(
            f"the slug {slug!r} is reserved: the ledger records the main checkout's own runs as experiment "
            f"{slug!r}, the baseline; pick another slug"
        )
    if not SLUG.fullmatch(slug):
        raise Refusal(
            f"bad slug {slug!r}: use lowercase letters, digits and dashes, starting with a letter or digit (e.g. rotary-base-500)"
        )
    return slug


def worktree_dir(root: Path, slug: str) -> Path:
    return root / WORKTREES / check_slug(slug)
