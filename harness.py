"""Workflow CLI: worktrees, the taxonomy guard, journal, ideas, reports, ledger queries, smoke.
FROZEN (infrastructure): edit only with META_MODE=1.

Usage: uv run just RECIPE   (each recipe calls one subcommand here; `uv run just` lists them)
       python harness.py SUBCOMMAND --help
"""

import dataclasses
import enum
import itertools
import json as jsonlib
import math
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import tyro
from tyro.conf import Positional

MAIN_BRANCH = "main"
FROZEN = ("program.md", "eval.py", "meta_journal.md", "harness.py", "justfile")
GLOBAL = ("RESEARCH_JOURNAL.md", "results.tsv")
LEDGER = "results.tsv"
JOURNAL = "RESEARCH_JOURNAL.md"
WORKTREES = "5_worktrees"
IDEATE_UNTIL = 30  # the seed's algorithm: ideate while fewer ideas than this exist
SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
COMPARABLE = ("eval_sha", "data_fp", "device", "budget")  # rows compare only within these


class Refusal(ValueError):
    """A command refused: the message says what, which rule, and how to proceed."""


# --- git and paths ---


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def main_root(cwd: Path | None = None) -> Path:
    """The main checkout, from anywhere inside it or any of its worktrees."""
    common = git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=cwd or Path.cwd())
    return Path(common).parent


def checkout_dir(cwd: Path | None = None) -> Path:
    return Path(git("rev-parse", "--show-toplevel", cwd=cwd or Path.cwd()))


def experiment_name(code_dir: Path, root: Path) -> str:
    return "main" if code_dir == root else code_dir.name


def new_run_id(experiment: str) -> str:
    """A ledger row's id: start time, experiment, and 4 random hex digits so parallel runs differ."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{experiment}-{secrets.token_hex(2)}"


def current_branch(cwd: Path) -> str:
    return git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)


def show(rev_path: str, cwd: Path) -> bytes | None:
    """`git show REV:PATH` (or `:PATH` for the index); None when it does not exist there."""
    result = subprocess.run(["git", "show", rev_path], cwd=cwd, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def uncommitted_files(cwd: Path, *pathspec: str) -> list[str]:
    """Paths with uncommitted changes, untracked files included (porcelain -z: no quoting, no trimming)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", *pathspec],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sorted(entry[3:] for entry in out.split("\0") if len(entry) > 3)


def meta_mode() -> bool:
    return os.environ.get("META_MODE") == "1"


def check_slug(slug: str) -> str:
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


def install_hooks(root: Path) -> None:
    """Point git at the tracked hooks folder of the main checkout (shared by every worktree).
    Every recipe does this; two doing it at once race for git's config lock, and the loser is
    fine as long as the value it wanted is there."""
    hooks = str(root / ".githooks")

    def current() -> str:
        return subprocess.run(
            ["git", "config", "core.hooksPath"], cwd=root, capture_output=True, text=True
        ).stdout.strip()

    if current() != hooks:
        result = subprocess.run(["git", "config", "core.hooksPath", hooks], cwd=root, capture_output=True, text=True)
        if result.returncode != 0 and current() != hooks:
            raise Refusal(
                f"could not install the pre-commit hook (git config core.hooksPath {hooks}): {result.stderr.strip()}"
            )


# --- the taxonomy guard: one implementation for the hook, `just check` and the tests ---


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
    the old text may have lost lines that were not rows (eval.without_bad_lines), and a ledger from
    before a column was added may have been migrated (eval.migrated: header and padding only)."""
    if not old or new.startswith(old):
        return not old or old.endswith("\n")
    import eval as referee

    header = old.split("\n", 1)[0].split("\t")
    if tuple(header) != referee.RESULTS_COLUMNS[: len(header)] or not old.endswith("\n"):
        return False
    repaired = referee.without_bad_lines(old)
    return any(new.startswith(before) for before in (repaired, referee.migrated(old), referee.migrated(repaired)))


def taxonomy_violations(changes: dict[str, tuple[bytes | None, bytes | None]], on_main: bool, meta: bool) -> list[str]:
    """The rules broken by a change, given each changed path's (old, new) content (None = absent).
    Each message names the rule, the file and how to proceed."""
    problems = []
    for path, (old, new) in sorted(changes.items()):
        if old == new:
            continue
        if path in FROZEN and not meta:
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
            for f in FROZEN
            if (code_dir / f).exists() and (code_dir / f).read_bytes() != show(f"{MAIN_BRANCH}:{f}", root)
        ]
        if changed:
            problems.append(
                f"FROZEN files differ from {MAIN_BRANCH}'s committed versions: {', '.join(changed)}. "
                f"Restore them (git checkout {MAIN_BRANCH} -- {' '.join(changed)}), or set META_MODE=1 for harness work."
            )
    dirty = [f for f in uncommitted_files(code_dir, "*.py") if f not in FROZEN]
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


# --- the ledger, read with the referee's schema ---


def ledger_problems(text: str) -> list[str]:
    import eval as referee

    return referee.ledger_problems(text)


def ledger(root: Path):
    """The ledger, and `budget`: the token budget asked for, which decides comparability. Rows written
    before the ledger had budget_tokens compare by the tokens they were served, as they did then."""
    import polars as pl

    import eval as referee

    for run_id in referee.reap_killed_runs(root):
        print(f"recorded run {run_id} as crash: its process was killed before it wrote its row", file=sys.stderr)
    try:
        df = referee.read_results(root / LEDGER)
    except ValueError as e:  # a line that is not a row: named, with its repair
        raise Refusal(str(e)) from e
    return df.with_columns(budget=pl.coalesce("budget_tokens", "train_tokens"))


def same_group(row: dict):
    """A polars filter: the rows comparable with `row` (same eval_sha, data_fp, device, budget)."""
    import polars as pl

    return pl.all_horizontal(pl.col(c) == row[c] for c in COMPARABLE)


def group_name(row: dict) -> str:
    """A comparable group in words: device, budget, data fingerprint, eval.py hash."""
    return f"{row['device']}, {row['budget']:,} tokens, data {row['data_fp']}, eval.py {row['eval_sha'][:10]}"


def the_bar(df) -> dict | None:
    """What an experiment must beat: main's baseline in the group of the newest baseline row, as
    {group, mean, std, n, row}; None before `just baseline` ran."""
    import polars as pl

    base = df.filter(
        (pl.col("experiment") == "main") & (pl.col("status") == "ok") & pl.col("description").str.starts_with(BASELINE)
    )
    if base.is_empty():
        return None
    newest = base.sort("started_at").row(-1, named=True)
    values = baseline_rows(df, newest)["val_bpb"].to_list()
    mean, std = mean_std(values)
    return dict(group=group_name(newest), mean=mean, std=std, n=len(values), row=newest)


def best_rows(df):
    """The best ok run of each comparable group."""
    import polars as pl

    ok = df.filter(pl.col("status") == "ok")
    return ok.sort("val_bpb").group_by(COMPARABLE, maintain_order=True).first().sort("started_at")


SHOWN = [
    "run_id",
    "experiment",
    "config",
    "seed",
    "device",
    "status",
    "val_bpb",
    "train_tokens",
    "wall_s",
    "label",
    "description",
]


def print_table(df, columns: list[str] = SHOWN) -> None:
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=250, tbl_hide_dataframe_shape=True):
        print(df.select(columns))


def print_json(doc) -> None:
    print(jsonlib.dumps(doc, indent=2, default=str))


# --- ideas ---


def idea_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "1_ideas").glob("*.md") if p.name != "_TEMPLATE.md")


def idea_slug(path: Path) -> str:
    return path.stem.split("_", 1)[1] if "_" in path.stem else path.stem


def idea_rating(text: str) -> float | None:
    ratings = re.findall(r"Rating:\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*10", text)
    return float(ratings[-1]) if ratings else None


def idea_file(root: Path, slug: str) -> Path | None:
    """The idea file `1_ideas/*_{slug}.md`, if one exists."""
    return next((p for p in idea_files(root) if idea_slug(p) == slug), None)


def idea_title(path: Path) -> str:
    return next((line[2:].strip() for line in path.read_text().splitlines() if line.startswith("# ")), idea_slug(path))


def ideas_table(root: Path) -> list[dict]:
    df = ledger(root)
    counts = dict(df.group_by("experiment").len().iter_rows()) if df.height else {}
    out = []
    for path in idea_files(root):
        text, slug = path.read_text(), idea_slug(path)
        out.append(
            dict(
                date=path.stem.split("_", 1)[0], slug=slug, title=idea_title(path), rating=idea_rating(text),
                worktree=(root / WORKTREES / slug).is_dir(), results=counts.get(slug, 0),
                report=any((root / "9_reports").glob(f"*_{slug}.md")), file=str(path.relative_to(root)),
            )
        )  # fmt: skip
    return out


# --- subcommands ---


def cmd_new(slug: Positional[str]) -> None:
    """Create worktree 5_worktrees/SLUG on a new branch exp/SLUG from main, or re-open an existing exp/SLUG."""
    import git as gitpython

    root = main_root()
    path = worktree_dir(root, slug)
    repo = gitpython.Repo(root)
    repo.git.worktree("prune")  # a worktree deleted by hand (rm -rf) no longer holds its branch
    if path.exists():
        raise Refusal(f"{path} already exists: pick another slug, or remove it with `just rm {slug}`")
    if f"exp/{slug}" in [h.name for h in repo.heads]:  # kept by `just rm`: its commits are what rows name
        repo.git.worktree("add", str(path), f"exp/{slug}")
        print(f"re-opened branch exp/{slug} in {path} (at {repo.heads[f'exp/{slug}'].commit.hexsha[:12]})")
    else:
        repo.git.worktree("add", "-b", f"exp/{slug}", str(path), MAIN_BRANCH)
        print(f"created {path} on branch exp/{slug} (from {MAIN_BRANCH} {repo.heads[MAIN_BRANCH].commit.hexsha[:12]})")
    if (root / ".venv").is_dir():  # share the main checkout's environment: a new worktree is ready in seconds
        (path / ".venv").symlink_to(root / ".venv")
    idea = idea_file(root, slug)
    if idea is not None:
        print(f"idea: {idea.relative_to(root)}")
    print(f"next: cd {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print("      edit train.py / model.py, git commit -am '...', then: uv run just smoke && uv run just eval")


def cmd_rm(slug: Positional[str], force: bool = False) -> None:
    """Remove a worktree whose branch is merged or whose runs are all recorded (else --force)."""
    import git as gitpython

    root = main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(f"no worktree {path}; `git worktree list` shows the ones that exist")
    repo = gitpython.Repo(root)
    head = git("rev-parse", "HEAD", cwd=path)
    merged = subprocess.run(["git", "merge-base", "--is-ancestor", head, MAIN_BRANCH], cwd=root).returncode == 0
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
    repo.git.worktree("remove", *(["--force"] if force else []), str(path))
    print(
        f"removed {path}; branch exp/{slug} is kept, as its commits are what the ledger names (just new {slug} re-opens it)"
    )


def cmd_check() -> None:
    """List taxonomy violations (FROZEN, GLOBAL, APPEND-ONLY) of this checkout; exit 1 if any. Runs
    killed before they wrote their row get it here (as on every ledger read)."""
    ledger(main_root())
    problems = check_violations(Path.cwd())
    for p in problems:
        print(f"- {p}")
    if problems:
        raise SystemExit(1)
    print("check: ok (FROZEN, GLOBAL and APPEND-ONLY rules hold)")


def prepend_entry(path: Path, entry: str) -> None:
    """Insert an entry at the top of a journal, below its title, under a lock."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        text = path.read_text()
        head = journal_head(text)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(head.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n\n" + text[len(head) :])
        os.replace(tmp, path)


def cmd_journal(text: Positional[str], observation: str = "", inference: str = "") -> None:
    """Prepend a dated entry to the root RESEARCH_JOURNAL.md, from any worktree."""
    if not text.strip():
        raise Refusal('an empty journal entry: give the text, e.g. just journal "tried X: val_bpb 1.75 -> 1.74"')
    root = main_root()
    who = experiment_name(checkout_dir(), root)
    lines = [f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {who}", "", text.strip()]
    if observation or inference:
        lines += [""] + [f"- **{k}:** {v}" for k, v in (("Observation", observation), ("Inference", inference)) if v]
    prepend_entry(root / JOURNAL, "\n".join(lines))
    print(f"journal: new entry at the top of {root / JOURNAL}")


def cmd_idea(slug: Positional[str], title: Positional[str]) -> None:
    """Create 1_ideas/{YYYY-MM-DD}_{SLUG}.md from the template."""
    root = main_root()
    check_slug(slug)
    existing = idea_file(root, slug)
    if existing is not None:
        raise Refusal(f"an idea with slug {slug!r} exists: {existing.relative_to(root)}; pick another slug")
    date = f"{datetime.now():%Y-%m-%d}"
    path = root / "1_ideas" / f"{date}_{slug}.md"
    template = (root / "1_ideas" / "_TEMPLATE.md").read_text()
    path.write_text(template.replace("{title}", title).replace("{slug}", slug).replace("{date}", date))
    print(f"idea: {path.relative_to(root)} (fill it in, then append the critique with a `Rating: N/10` line)")


# --- papers: the full text of a paper into 0_docs/papers/, for IDEATE ---

ARXIV = os.environ.get("RESEARCH_ARXIV_URL", "https://export.arxiv.org")  # its mirror for programs
ARXIV_ID = re.compile(
    r"(?:https?://(?:export\.)?arxiv\.org/(?:abs|pdf)/|arXiv:)?"
    r"(?P<id>\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?(?:\.pdf)?"
)
OAI = {"oai": "http://www.openarchives.org/OAI/2.0/", "arxiv": "http://arxiv.org/OAI/arXiv/"}


def fetch(url: str) -> bytes:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "research-harness (just paper)"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Refusal(
            f"could not fetch {url} ({reason}): no network here? Download the PDF where there is one, then run "
            "just paper PATH.pdf"
        ) from e


def arxiv_metadata(arxiv_id: str) -> dict:
    """Title, authors and licence of an arXiv paper, from arXiv's OAI-PMH record."""
    import xml.etree.ElementTree as ET

    url = f"{ARXIV}/oai2?verb=GetRecord&identifier=oai:arXiv.org:{arxiv_id}&metadataPrefix=arXiv"
    record = ET.fromstring(fetch(url)).find(".//arxiv:arXiv", OAI)
    if record is None:
        raise Refusal(f"arXiv has no record {arxiv_id!r} ({url})")
    text = lambda tag: " ".join((record.findtext(f"arxiv:{tag}", "", OAI) or "").split())  # noqa: E731
    authors = [
        " ".join(filter(None, (a.findtext("arxiv:forenames", "", OAI), a.findtext("arxiv:keyname", "", OAI))))
        for a in record.iterfind("arxiv:authors/arxiv:author", OAI)
    ]
    return dict(title=text("title"), authors=authors, licence=text("license") or "not stated (arXiv's default licence)")


def pdf_text(data: bytes) -> tuple[str, dict]:
    """The text of every page (pypdf), and the PDF's own title and author, if it has them."""
    import io

    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    pages = [page.extract_text() or "" for page in reader.pages]
    meta = reader.metadata or {}
    own = dict(
        title=(meta.get("/Title") or "").strip(), authors=[a for a in [(meta.get("/Author") or "").strip()] if a]
    )
    return "\n\n".join(f"<!-- page {i} -->\n{text.strip()}" for i, text in enumerate(pages, start=1)), own


def cmd_paper(source: Positional[str], slug: str = "") -> None:
    """Save a paper's full text to 0_docs/papers/{SLUG}.md, with its title, authors, arXiv id and licence
    at the top: SOURCE is an arXiv id or URL, another PDF URL, or a PDF file."""
    match = ARXIV_ID.fullmatch(source.strip())
    arxiv_id = match["id"] if match and not Path(source).is_file() else None
    if arxiv_id is not None:
        meta, url = arxiv_metadata(arxiv_id), f"{ARXIV}/pdf/{arxiv_id}"
        data = fetch(url)
    elif source.startswith(("http://", "https://")):
        meta, url, data = {}, source, fetch(source)
    elif Path(source).is_file():
        meta, url, data = {}, str(Path(source).resolve()), Path(source).read_bytes()
    else:
        raise Refusal(f"{source!r} is not an arXiv id (2106.09685), a URL or a PDF file")
    if not data.startswith(b"%PDF"):
        raise Refusal(f"{url} is not a PDF (it starts {data[:20]!r})")
    text, own = pdf_text(data)
    if not text.replace("<!-- page", "").strip(" \n0123456789->"):
        raise Refusal(f"{url}: the PDF has no text layer (a scan?); nothing to save")
    title = meta.get("title") or own["title"] or Path(url).stem
    authors = meta.get("authors") or own["authors"]
    slug = check_slug(slug or "-".join(re.findall(r"[a-z0-9]+", title.lower())[:6]) or "paper")
    root = main_root()
    path = root / "0_docs" / "papers" / f"{slug}.md"
    if path.exists():
        raise Refusal(f"{path.relative_to(root)} exists: pick another --slug")
    import pypdf

    header = [
        f"# {title}", "",
        f"- **Authors:** {', '.join(authors) or 'not stated'}",
        f"- **arXiv:** {f'{arxiv_id} (https://arxiv.org/abs/{arxiv_id})' if arxiv_id else 'none'}",
        f"- **Licence:** {meta.get('licence', 'not stated: check the source before quoting it')}",
        f"- **Source:** {url}; full text extracted with pypdf {pypdf.__version__} on {datetime.now():%Y-%m-%d}",
        "", "---", "",
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + text + "\n")
    print(f"paper: {path.relative_to(root)} ({len(text.split()):,} words, {text.count('<!-- page ')} pages)")


def cmd_ideas(json: bool = False) -> None:
    """List ideas: date, slug, title, rating, and whether a worktree, results and a report exist."""
    table = ideas_table(main_root())
    if json:
        return print_json(table)
    if not table:
        print('no ideas yet: just idea SLUG "TITLE"')
    for i in table:
        rating = "-" if i["rating"] is None else f"{i['rating']:g}/10"
        flags = f"worktree={'y' if i['worktree'] else 'n'} results={i['results']} report={'y' if i['report'] else 'n'}"
        print(f"{i['date']}  {i['slug']:<28} {rating:>6}  {flags}  {i['title']}")


def where_things_stand(root: Path) -> dict:
    import polars as pl

    df = ledger(root)
    worktrees = (
        sorted(p.name for p in (root / WORKTREES).iterdir() if p.is_dir()) if (root / WORKTREES).is_dir() else []
    )
    last = {}
    for slug in worktrees:
        rows = df.filter(pl.col("experiment") == slug)
        last[slug] = None if rows.is_empty() else rows.row(-1, named=True)
    bar = the_bar(df)
    ok = df.filter(pl.col("status") == "ok")
    in_group = ok if bar is None else ok.filter(same_group(bar["row"]))  # one group: best and bar compare
    best = None if in_group.is_empty() else in_group.sort("val_bpb").row(0, named=True)
    journal = (root / JOURNAL).read_text() if (root / JOURNAL).exists() else ""
    entries = journal[len(journal_head(journal)) :]
    newest = re.split(r"\n(?=## )", entries, maxsplit=1)[0].strip() if entries else None
    return dict(worktrees=last, bar=bar, best=best, newest_journal_entry=newest, rows=df.height)


def next_step(root: Path) -> dict:
    ideas = ideas_table(root)
    if len(ideas) < IDEATE_UNTIL:
        return dict(
            mode="IDEATE", idea=None, why=f"{len(ideas)} ideas in 1_ideas/, fewer than {IDEATE_UNTIL}: brainstorm more"
        )
    untried = [i for i in ideas if i["results"] == 0]
    if not untried:
        return dict(mode="IDEATE", idea=None, why=f"all {len(ideas)} ideas have results: brainstorm new ones")
    best = max(untried, key=lambda i: (i["rating"] if i["rating"] is not None else -1.0, [-ord(c) for c in i["date"]]))
    rating = "unrated" if best["rating"] is None else f"rated {best['rating']:g}/10"
    why = f"{len(ideas)} ideas; {best['slug']} is the best-rated without results ({rating}, {len(untried)} untried)"
    return dict(mode="IMPLEMENT", idea=best, why=why)


def cmd_next(json: bool = False) -> None:
    """The seed's algorithm: IDEATE or IMPLEMENT (which idea, and why), and where things stand."""
    root = main_root()
    step, state = next_step(root), where_things_stand(root)
    if json:
        return print_json({**step, **state})
    print(f"mode: {step['mode']}\nwhy: {step['why']}")
    if step["idea"]:
        print(f"next: uv run just new {step['idea']['slug']}   # {step['idea']['file']}")
    print(f"\nledger: {state['rows']} rows")
    bar, b = state["bar"], state["best"]
    if bar is not None:
        print(f"the bar: main's baseline {bar['mean']:.4f} ± {bar['std']:.4f} (n={bar['n']}) in {bar['group']}")
    if b is not None:
        where = "in that group" if bar is not None else f"no baseline yet: run just baseline; in {group_name(b)}"
        print(f"best: {b['val_bpb']:.4f} val_bpb, {b['experiment']} ({b['run_id']}), {where}")
    for slug, r in state["worktrees"].items():
        print(
            f"worktree {slug}: "
            + ("no runs yet" if r is None else f"last {r['status']} {r['val_bpb']} ({r['run_id']})")
        )
    print("newest journal entry:\n" + (state["newest_journal_entry"] or "(none)"))


def markdown_table(df) -> str:
    if df.is_empty():
        return "(none)"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join(lines)


def cmd_report(slug: Positional[str]) -> None:
    """Create 9_reports/{YYYY-MM-DD}_{SLUG}.md, prefilled with the slug's rows, the bar and the diff stat."""
    import polars as pl

    root = main_root()
    check_slug(slug)
    df = ledger(root)
    rows = df.filter(pl.col("experiment") == slug)
    if rows.is_empty():
        raise Refusal(f"no rows for {slug!r} in {LEDGER}: score it first (cd {WORKTREES}/{slug} && uv run just eval)")
    date = f"{datetime.now():%Y-%m-%d}"
    path = root / "9_reports" / f"{date}_{slug}.md"
    if path.exists():
        raise Refusal(f"{path.relative_to(root)} exists: edit it")
    ok = rows.filter(pl.col("status") == "ok")
    base = None if ok.is_empty() else baseline_rows(df, ok.sort("started_at").row(-1, named=True))
    cols = ["run_id", "commit", "seed", "status", "val_bpb", "train_tokens", "wall_s", "label", "description", "error"]
    diffstat = subprocess.run(
        ["git", "diff", "--stat", f"{MAIN_BRANCH}...exp/{slug}"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    idea = idea_file(root, slug)
    text = (root / "9_reports" / "_TEMPLATE.md").read_text()
    for key, value in dict(
        slug=slug, date=date, idea="(none)" if idea is None else str(idea.relative_to(root)), rows=markdown_table(rows.select(cols)),
        baseline="(no baseline rows in its group: just baseline)" if base is None or base.is_empty() else markdown_table(base.select(cols)),
        diffstat=f"```\n{diffstat or '(no diff against ' + MAIN_BRANCH + ')'}\n```",
    ).items():  # fmt: skip
        text = text.replace("{" + key + "}", value)
    path.write_text(text)
    print(f"report: {path.relative_to(root)}")


RECORD = (LEDGER, JOURNAL, "1_ideas", "9_reports", "0_docs")  # the research record, committed on main


def cmd_record(message: str = "") -> None:
    """Commit the research record on main, from any worktree: results.tsv, RESEARCH_JOURNAL.md, and
    the ideas, reports and papers that recipes wrote into the main checkout."""
    root = main_root()
    if current_branch(root) != MAIN_BRANCH:
        raise Refusal(f"the main checkout {root} is on {current_branch(root)}, not {MAIN_BRANCH}: switch it back first")
    pending = uncommitted_files(root, *RECORD)
    if not pending:
        print("record: nothing new to commit")
        return
    git("add", "--", *RECORD, cwd=root)
    summary = message or f"record: {', '.join(pending[:4])}" + (
        f" and {len(pending) - 4} more" if len(pending) > 4 else ""
    )
    result = subprocess.run(["git", "commit", "-m", summary, "--", *RECORD], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise Refusal(f"commit refused:\n{result.stdout}{result.stderr}")
    print(f"record: committed {len(pending)} files on {MAIN_BRANCH}: {', '.join(pending)}")


def cmd_results(n: Positional[int] = 20, json: bool = False) -> None:
    """The last N ledger rows as a table (or JSON)."""
    df = ledger(main_root()).tail(n)
    if json:
        return print_json(df.to_dicts())
    print_table(df)


def cmd_best(json: bool = False) -> None:
    """The best ok row of each comparable group (eval_sha, data_fp, device, budget); main's baseline,
    the bar; and the verdict of every experiment in the bar's group."""
    import polars as pl

    df = ledger(main_root())
    best, bar = best_rows(df), the_bar(df)
    contenders = []
    if bar is not None:
        group = df.filter(same_group(bar["row"]) & (pl.col("status") == "ok") & (pl.col("experiment") != "main"))
        contenders = group["experiment"].unique(maintain_order=True).to_list()
    verdicts = {slug: compare_slug(df, slug) for slug in contenders}
    if json:
        return print_json(
            dict(groups=best.to_dicts(), bar=bar, verdicts={k: dataclasses.asdict(v) for k, v in verdicts.items()})
        )
    print_table(best)
    if bar is None:
        print("the bar: none yet (no baseline; score main's seeds first: uv run just baseline)")
        return
    print(f"the bar: main's baseline {bar['mean']:.6f} ± {bar['std']:.6f} (n={bar['n']}) in {bar['group']}")
    for slug, result in verdicts.items():
        print(f"  {slug}: {result.outcome} — {result.why}")


def cmd_submit(slug: Positional[str], message: str = "") -> None:
    """Commit the worktree's pending changes as exp(SLUG): ..., push exp/SLUG if there is a remote, and
    open a pull request (or print the command) when `just confirm SLUG` confirmed it on fresh seeds."""
    import polars as pl

    root = main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(f"no worktree {path}: `just new {slug}` creates it")
    pending = uncommitted_files(path)
    idea = idea_file(root, slug)
    summary = message or (idea_title(idea) if idea else "experiment")
    if pending:
        git("add", "-A", cwd=path)
        result = subprocess.run(
            ["git", "commit", "-m", f"exp({slug}): {summary}"], cwd=path, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise Refusal(f"commit refused:\n{result.stdout}{result.stderr}")
        print(f"committed {len(pending)} files as exp({slug}): {summary}")
    else:
        print("nothing to commit")
    remotes = git("remote", cwd=root).split()
    if "origin" in remotes:
        git("push", "-u", "origin", f"exp/{slug}", cwd=path)
        print(f"pushed exp/{slug} to origin")
    else:
        print("no remote 'origin': nothing pushed (add one with git remote add origin URL, then rerun)")
    df = ledger(root)
    if df.filter((pl.col("experiment") == slug) & (pl.col("status") == "ok")).is_empty():
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
    mine, mains = confirmation_rows(df, slug)
    title = f"exp({slug}): {summary}"
    body = (
        f"Confirmed on fresh seeds (just compare {slug}): {result.why}. Confirming rows: {', '.join(mine['run_id'])} "
        f"against the main rows {', '.join(mains['run_id'])}. Merging is for a human."
    )
    command = ["gh", "pr", "create", "--base", MAIN_BRANCH, "--head", f"exp/{slug}", "--title", title, "--body", body]
    if shutil.which("gh") and "origin" in remotes:
        subprocess.run(command, cwd=path, check=True)
    else:
        print("open the pull request with:\n  " + shlex.join(command))


# --- trustworthy comparisons: one rule with a known false-positive rate ---
#
# The rule (`verdict`): an experiment's seeds against main's baseline seeds in one comparable group,
# by Student's two-sample t-test, one-sided at ALPHA each way. With one run this is exactly the t
# prediction interval of the baseline, and one run is at most "promising". Student's pooled variance,
# not Welch's: in an A/A test the variances are equal by construction and Student's test is exact for
# every pair of counts, while Welch's is liberal for unequal counts (2 runs vs 10 seeds: 3.8% at
# ALPHA; tests/test_stats.py measures both). The confirmation that a pull request needs uses equal
# counts on both sides, where Student's test is also robust to an experiment that changes the variance.

ALPHA = 0.015  # one-sided level: false "improved" in A/A tests <= 2.5% even with heavy-tailed noise
POWER = 0.8  # the resolvable effect is the one the rule detects this often
BASELINE = "baseline seed"  # description prefix of the rows `just baseline` writes
CONFIRM = "confirm"  # `just confirm SLUG`: "confirm seed S" (the experiment), "confirm SLUG seed S" (main)


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """The seed counts of the protocol on one device class, and the smallest improvement worth a claim
    there; chosen from a measured baseline (bench/README.md, "Seed noise")."""

    baseline: int  # main's seeds in `just baseline`
    runs: int  # an experiment's seeds before `just compare` can call it improved
    confirm: int  # fresh seeds each, of the experiment and of main, in `just confirm`
    meaningful_effect: float  # val_bpb


SEED_PLANS = {
    # 3 seeds everywhere until a preset's seed noise is measured (bench/README.md, "Seed noise"): with
    # 3 vs 3 the rule resolves 3.6 std, so the plan fits a device whose preset std is below
    # meaningful_effect / 4.1 (the effect a pull request needs); `just baseline` says when it is not.
    "cpu": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.01),
    "mps": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.01),
    # cuda: a GPU run is 5-6 minutes and its metric lower, so a smaller effect is worth a claim
    "cuda": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.005),
}


class Outcome(enum.StrEnum):
    IMPROVED = "improved"  # several seeds beat the baseline beyond seed noise
    PROMISING = "promising"  # one seed beat it beyond seed noise: run more before any claim
    INCONCLUSIVE = "inconclusive"
    WORSE = "worse"


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    why: str  # the numbers behind the outcome
    advice: str  # what to do next
    runs: list[float]
    baseline: list[float]
    p_improved: float | None = None  # one-sided p-value of "lower than the baseline"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(runs: list[float], baseline: list[float]) -> Verdict:
    """The rule for "better than main" (lower val_bpb is better); see the comment above ALPHA."""
    from scipy import stats

    if len(baseline) < 2 or not runs:
        return Verdict(
            Outcome.INCONCLUSIVE, f"{len(runs)} runs, {len(baseline)} baseline rows",
            "a verdict needs at least 1 run and 2 baseline seeds: run `just baseline` first", runs, baseline,
        )  # fmt: skip
    if len(set(runs)) == 1 and len(set(baseline)) == 1:
        return Verdict(
            Outcome.INCONCLUSIVE, f"runs all {runs[0]!r}, baseline seeds all {baseline[0]!r}",
            "the seeds gave no spread, so there is no noise to judge a difference against: check that train.py "
            "draws its weights and batches from the seeded stream", runs, baseline,
        )  # fmt: skip
    lower = stats.ttest_ind(runs, baseline, alternative="less")
    higher = stats.ttest_ind(runs, baseline, alternative="greater")
    (mean_r, _), (mean_b, std_b) = mean_std(runs), mean_std(baseline)
    why = (
        f"{'run' if len(runs) == 1 else f'mean of {len(runs)} runs'} {mean_r:.4f} vs baseline {mean_b:.4f} ± "
        f"{std_b:.4f} (n={len(baseline)}): delta {mean_r - mean_b:+.4f}, t={lower.statistic:.2f}, "
        f"df={lower.df:.0f}, one-sided p={min(lower.pvalue, higher.pvalue):.3g} (claims need p < {ALPHA})"
    )
    p = float(lower.pvalue)
    if p < ALPHA and len(runs) == 1:
        return Verdict(Outcome.PROMISING, why, "one seed is never a result: run more seeds", runs, baseline, p)
    if p < ALPHA:
        return Verdict(Outcome.IMPROVED, why, "confirm it on fresh seeds before a pull request", runs, baseline, p)
    if higher.pvalue < ALPHA:
        return Verdict(
            Outcome.WORSE, why, "worse than main beyond seed noise: report it and move on", runs, baseline, p
        )
    return Verdict(Outcome.INCONCLUSIVE, why, "the difference is within seed noise so far", runs, baseline, p)


def power(effect_std: float, n_runs: int, n_base: int) -> float:
    """How often the rule calls an experiment improved whose true effect is `effect_std` baseline
    std, from n_runs seeds against n_base (normal noise; the noncentral t distribution)."""
    from scipy import stats

    df = n_runs + n_base - 2
    return float(stats.nct.sf(stats.t.isf(ALPHA, df), df, effect_std / math.sqrt(1 / n_runs + 1 / n_base)))


def resolvable_effect(plan: SeedPlan, to_pull_request: bool = False) -> float:
    """The effect, in baseline std, that the rule detects with probability POWER at the plan's seed
    counts; with `to_pull_request`, that `compare` and then `confirm` both detect."""
    from scipy.optimize import brentq

    def detected(d: float) -> float:
        found = power(d, plan.runs, plan.baseline)
        return found * power(d, plan.confirm, plan.confirm) if to_pull_request else found

    return float(brentq(lambda d: detected(d) - POWER, 1e-6, 100.0))


def aa_allowed(k: int, n_runs: int, n_base: int, sims: int = 20_000) -> int:
    """The most of k A/A experiments (n_runs seeds of main's own code each, against one shared baseline
    of n_base seeds) that the rule calls improved in 99% of such checks. Simulated, not binomial:
    the shared baseline makes the k verdicts depend on one another."""
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(0)
    base = np.broadcast_to(rng.standard_normal((sims, 1, n_base)), (sims, k, n_base))
    runs = rng.standard_normal((sims, k, n_runs))
    improved = (stats.ttest_ind(runs, base, axis=-1, alternative="less").pvalue < ALPHA).sum(axis=1)
    return int(np.quantile(improved, 0.99))


def baseline_rows(df, row: dict):
    """main's ok `just baseline` rows in `row`'s comparable group."""
    import polars as pl

    return df.filter(
        same_group(row)
        & (pl.col("experiment") == "main")
        & (pl.col("status") == "ok")
        & pl.col("description").str.starts_with(BASELINE)
    )


def exploration_rows(df, slug: str):
    """The slug's ok rows that took part in choosing it: all but its confirmation rows."""
    import polars as pl

    ok = df.filter((pl.col("experiment") == slug) & (pl.col("status") == "ok"))
    return ok.filter(~pl.col("description").fill_null("").str.starts_with(CONFIRM))


def eval_args_of(row: dict) -> list[str]:
    """The eval.py arguments that repeat a row's run (its config, device and budget), less the seed."""
    name, _, overrides = row["config"].partition(":")
    args = ["--config", name] if name.endswith(".json") else [name]
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        args += [f"--{key.replace('_', '-')}", value]
    return [*args, "--device", row["device"], "--budget-tokens", str(row["budget"])]


def seed_commands(slug: str, row: dict, seeds: range) -> str:
    where = "" if slug == "main" else f"cd {WORKTREES}/{slug} && "
    return "\n".join(f"  {where}uv run just eval {shlex.join([*eval_args_of(row), '--seed', str(s)])}" for s in seeds)


def first_fresh_seed(df, row: dict) -> int:
    """The lowest seed above every seed of `row`'s comparable group."""
    return df.filter(same_group(row))["seed"].max() + 1


def compare_slug(df, slug: str) -> Verdict:
    """The slug's exploration rows in the group of its newest one, against main's baseline there;
    the advice names the commands to run next."""
    mine = exploration_rows(df, slug)
    if mine.is_empty():
        raise Refusal(f"no ok rows for {slug!r}: score it first (cd {WORKTREES}/{slug} && uv run just eval)")
    newest = mine.sort("started_at").row(-1, named=True)
    runs = mine.filter(same_group(newest))
    base = baseline_rows(df, newest)
    result = verdict(runs["val_bpb"].to_list(), base["val_bpb"].to_list())
    plan = SEED_PLANS[newest["device"]]
    first = first_fresh_seed(df, newest)
    fresh = range(first, first + max(plan.runs - runs.height, 2))
    if base.height < 2:
        advice = f"no baseline in this group ({group_name(newest)}): run it with\n  uv run just baseline {plan.baseline} {shlex.join(eval_args_of(newest)[1:])}"
    elif result.outcome in (Outcome.PROMISING, Outcome.INCONCLUSIVE) and runs.height < plan.runs:
        advice = f"{result.advice}; {plan.runs - runs.height} more seeds:\n{seed_commands(slug, newest, fresh)}"
    elif result.outcome == Outcome.INCONCLUSIVE:
        advice = f"{result.advice} at {runs.height} seeds: drop it, or resolve a smaller effect with more seeds:\n{seed_commands(slug, newest, fresh)}"
    elif result.outcome == Outcome.IMPROVED:
        advice = f"{result.advice}: uv run just confirm {slug}"
    else:
        advice = result.advice
    return dataclasses.replace(result, advice=advice)


def confirmation_rows(df, slug: str):
    """(the slug's confirmation rows, main's rows run beside them) in the group of the newest one."""
    import polars as pl

    mine = df.filter(
        (pl.col("experiment") == slug)
        & (pl.col("status") == "ok")
        & pl.col("description").str.starts_with(f"{CONFIRM} seed")
    )
    if mine.is_empty():
        return mine, mine
    group = same_group(mine.sort("started_at").row(-1, named=True))
    mains = df.filter(
        group & (pl.col("experiment") == "main") & (pl.col("status") == "ok")
        & pl.col("description").str.starts_with(f"{CONFIRM} {slug} seed")
    )  # fmt: skip
    return mine.filter(group), mains


def confirmation(df, slug: str) -> Verdict | None:
    """The rule on the rows `just confirm SLUG` ran: fresh seeds of the experiment against fresh seeds
    of main, none of which took part in choosing the experiment; None before any."""
    mine, mains = confirmation_rows(df, slug)
    if mine.is_empty():
        return None
    result = verdict(mine["val_bpb"].to_list(), mains["val_bpb"].to_list())
    if result.outcome == Outcome.IMPROVED:
        return dataclasses.replace(result, advice=f"confirmed: just submit {slug} opens the pull request")
    return dataclasses.replace(result, advice="not confirmed on fresh seeds: no pull request; report it as it is")


def run_eval(cwd: Path, args: list[str]) -> dict:
    """One scored run as a subprocess of main's eval.py; its printed block as a dict."""
    root = main_root()
    result = subprocess.run([sys.executable, str(root / "eval.py"), *args], cwd=cwd, stdout=subprocess.PIPE, text=True)
    block = result.stdout.rsplit("---\n", 1)[-1]
    out = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
    if result.returncode != 0 or out.get("status") != "ok":
        raise Refusal(
            f"eval.py {' '.join(args)} failed ({out.get('status', result.returncode)}): {out.get('error', 'see its log above')}"
        )
    return out


def split_count(argv: list[str], default: int | None) -> tuple[int | None, list[str]]:
    """A leading whole number off eval.py's arguments: `just baseline 5 --budget-tokens ...`."""
    return (int(argv[0]), argv[1:]) if argv[:1] and argv[0].isdigit() else (default, argv)


def eval_flag(eval_args: list[str], name: str) -> str | None:
    """The value of `--NAME V` (or `--NAME=V`) among eval.py's arguments, the last one as tyro reads
    them; "" when the flag ends the line without its value; None when it is absent."""
    value = None
    for i, arg in enumerate(eval_args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}":
            value = eval_args[i + 1] if i + 1 < len(eval_args) else ""
    return value


def device_of(eval_args: list[str]) -> str:
    """The device class eval.py will use for these arguments."""
    import eval as referee

    return eval_flag(eval_args, "device") or referee.resolve_device(None).type


def noise_report(values: list[float], plan: SeedPlan) -> list[str]:
    """What `just baseline` prints after its runs: the noise floor and the effects it resolves."""
    mean, std = mean_std(values)
    rule, to_pr = resolvable_effect(plan), resolvable_effect(plan, to_pull_request=True)
    lines = [
        f"baseline_n: {len(values)}", f"mean: {mean:.6f}", f"std: {std:.6f}",
        f"resolvable_effect: {rule * std:.6f}  ({rule:.2f} std: {plan.runs} runs vs {plan.baseline} baseline seeds are "
        f"called improved {POWER:.0%} of the time at this effect; false 'improved' in an A/A test: {ALPHA:.1%})",
        f"resolvable_effect_to_pr: {to_pr * std:.6f}  ({to_pr:.2f} std: improved, then confirmed on {plan.confirm} + "
        f"{plan.confirm} fresh seeds)",
        f"meaningful_effect: {plan.meaningful_effect}",
    ]  # fmt: skip
    if to_pr * std <= plan.meaningful_effect:
        lines.append(f"verdict: ok — the protocol resolves a meaningful improvement ({plan.meaningful_effect})")
        return lines
    needed = next((n for n in range(2, 101) if power_of_plan(n, std, plan) >= POWER), None)
    fix = f"{needed} seeds at every step" if needed else "more than 100 seeds"
    lines.append(
        f"verdict: too noisy — a meaningful improvement ({plan.meaningful_effect}) needs {fix}; "
        "use more eval data, a smaller model, or a proxy metric with less noise"
    )
    return lines


def power_of_plan(n: int, std: float, plan: SeedPlan) -> float:
    """How often n seeds at every step take a meaningful improvement to a pull request."""
    effect = plan.meaningful_effect / std
    return power(effect, n, n) ** 2


def baseline(argv: list[str]) -> None:
    """just baseline [N] [EVAL_ARGS...]: score main's code with seeds 0..N-1 (N: the device's seed plan),
    then print mean, std and the smallest effect the protocol resolves."""
    import polars as pl

    n, eval_args = split_count(argv, None)
    plan = SEED_PLANS[device_of(eval_args)]
    n = n if n is not None else plan.baseline
    root = main_root()
    if n < 2:
        raise Refusal(f"N={n}: a std needs at least 2 seeds")
    for seed in range(n):
        out = run_eval(root, [*eval_args, "--seed", str(seed), "--description", f"{BASELINE} {seed}/{n}"])
        print(f"baseline seed {seed}: val_bpb {float(out['val_bpb']):.6f} ({out['run_id']})")
    df = ledger(root)
    newest = df.row(by_predicate=pl.col("run_id") == out["run_id"], named=True)
    values = baseline_rows(df, newest)["val_bpb"].to_list()
    print("---\n" + "\n".join([f"group: {group_name(newest)}", *noise_report(values, plan)]))


def confirm(argv: list[str]) -> None:
    """just confirm SLUG [N]: score N fresh seeds of the experiment and N of main, interleaved, at the
    config, device and budget of its newest rows; judge those rows alone (`confirmation`)."""
    n, rest = split_count(argv[1:], None)
    if not argv or rest:
        raise Refusal("usage: just confirm SLUG [N], e.g. just confirm rotary")
    slug, root = argv[0], main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(
            f"no worktree {path}: the code to confirm must be checked out (just new {slug} re-opens exp/{slug})"
        )
    df = ledger(root)
    explored = exploration_rows(df, slug)
    if explored.is_empty():
        raise Refusal(f"no ok rows for {slug!r}: score and compare it first (just compare {slug})")
    newest = explored.sort("started_at").row(-1, named=True)
    base = baseline_rows(df, newest)
    if base.is_empty():
        raise Refusal(f"no baseline in {slug}'s group ({group_name(newest)}): run just baseline first")
    plan = SEED_PLANS[newest["device"]]
    n = n if n is not None else plan.confirm
    first = first_fresh_seed(df, newest)  # no seed that took part in choosing it
    for seed in range(first, first + n):
        for where, row, description in (
            (path, newest, f"{CONFIRM} seed {seed}"),
            (root, base.row(-1, named=True), f"{CONFIRM} {slug} seed {seed}"),
        ):
            out = run_eval(where, [*eval_args_of(row), "--seed", str(seed), "--description", description])
            print(f"{description}: val_bpb {float(out['val_bpb']):.6f} ({out['run_id']})")
    result = confirmation(ledger(root), slug)
    print(f"---\n{slug} on fresh seeds: {result.outcome}\n{result.why}\n{result.advice}")


AA_ARGS = ["tiny", "--budget-tokens", "100000"]  # `just aa` with no EVAL_ARGS: main's tiny config, a small budget


def aa(argv: list[str]) -> None:
    """just aa [K=20] [EVAL_ARGS...]: the rule's A/A check on this machine. A baseline and K experiments,
    all main's code on fresh seeds (the device's seed plan), each judged by the rule; exit 1 when more
    are called improved than the rule allows in 99% of A/A checks."""
    k, eval_args = split_count(argv, 20)
    eval_args = eval_args or AA_ARGS
    if k < 1:
        raise Refusal(f"K={k}: give at least 1 experiment")
    root = main_root()
    plan = SEED_PLANS[device_of(eval_args)]
    df = ledger(root)
    seeds = iter(itertools.count(1 + (df["seed"].max() if df.height else -1)))
    t0 = time.perf_counter()

    def scored(description: str) -> float:
        seed = next(seeds)
        out = run_eval(root, [*eval_args, "--seed", str(seed), "--description", f"aa {description} seed {seed}"])
        return float(out["val_bpb"])

    base = [scored("baseline") for _ in range(plan.baseline)]
    print(f"aa baseline: {', '.join(f'{v:.6f}' for v in base)}")
    improved = 0
    for i in range(1, k + 1):
        result = verdict([scored(f"{i}/{k}") for _ in range(plan.runs)], base)
        improved += result.outcome == Outcome.IMPROVED
        print(f"aa experiment {i}/{k}: {result.outcome} — {result.why}")
    allowed = aa_allowed(k, plan.runs, plan.baseline)
    print(
        f"---\naa_experiments: {k}\nimproved: {improved}\nexpected: {k * ALPHA:.2f}  (the rule's rate, {ALPHA:.1%})\n"
        f"allowed: {allowed}\n(99% of A/A checks with one shared baseline call at most {allowed} improved)\n"
        f"wall_s: {time.perf_counter() - t0:.0f}"
    )
    if improved > allowed:
        print(
            f"aa: FAIL — {improved} of {k} experiments that are main's own code were called improved: the noise is not what the rule assumes (nondeterminism, drift, or a heavy tail)"
        )
        raise SystemExit(1)
    print("aa: ok — main's own code is not called better than itself more often than the rule allows")


def determinism(argv: list[str]) -> None:
    """just determinism [EVAL_ARGS...]: score this checkout's code twice with the same seed; exit 1
    unless the two val_bpb are bitwise identical."""
    here = checkout_dir()
    first, second = (run_eval(here, [*argv, "--description", f"determinism check {i}/2"]) for i in (1, 2))
    a, b = float(first["val_bpb"]), float(second["val_bpb"])
    print(f"---\nfirst: {a!r} ({first['run_id']})\nsecond: {b!r} ({second['run_id']})")
    if a != b:
        print(f"deterministic: no (difference {b - a:+.3g})")
        raise SystemExit(1)
    print("deterministic: yes (bitwise identical val_bpb)")


def cmd_compare(slug: Positional[str], json: bool = False) -> None:
    """SLUG against main's baseline of the same group (improved / promising / inconclusive / worse),
    and its confirmation on fresh seeds once `just confirm SLUG` ran."""
    df = ledger(main_root())
    result, confirmed = compare_slug(df, slug), confirmation(df, slug)
    if json:
        return print_json(dict(dataclasses.asdict(result), confirmation=confirmed and dataclasses.asdict(confirmed)))
    print(f"{slug}: {result.outcome}\n{result.why}\nnext: {result.advice}")
    if confirmed is not None:
        print(f"on fresh seeds: {confirmed.outcome}\n{confirmed.why}\nnext: {confirmed.advice}")


def cmd_verify(run_id: Positional[str]) -> None:
    """Rebuild a run's model from its checkpoint with the model.py/train.py of its commit (from git),
    re-score it with the current referee, and exit 1 unless it reproduces the row's val_bpb."""
    import tempfile

    import polars as pl
    import torch

    import eval as referee

    root = main_root()
    rows = ledger(root).filter(pl.col("run_id") == run_id)
    if rows.is_empty():
        raise Refusal(f"no run {run_id!r} in {LEDGER}: `just results` lists them")
    row = rows.row(0, named=True)
    if row["status"] != "ok":
        raise Refusal(f"run {run_id} ended {row['status']}: there is no metric to verify")
    checkpoint = root / "runs" / run_id / "model.pt"
    if not checkpoint.exists():
        raise Refusal(f"{checkpoint} is missing: runs/ is local to the machine that scored the run")
    code = Path(tempfile.mkdtemp(prefix=f"verify-{run_id}-"))
    for name in ("model.py", "train.py"):
        blob = show(f"{row['commit']}:{name}", root)
        if blob is None:
            raise Refusal(f"commit {row['commit']} (or its {name}) is not in this repository: was its branch deleted?")
        (code / name).write_bytes(blob)
    train = referee.load_experiment(code)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = train.build_model(train.Config(**state["train_config"]))
    model.load_state_dict(state["model"])
    device = referee.resolve_device(row["device"])
    corpus = load_corpus(referee)
    if corpus.fingerprint != row["data_fp"]:
        raise Refusal(f"the corpus changed: fingerprint {corpus.fingerprint}, the row has {row['data_fp']}")
    val_bpb = referee.evaluate(model.to(device).eval(), corpus.val, referee.PRESETS[device.type].eval_seq_len, device)
    tolerance = 1e-6 if device.type == "cpu" else 1e-4
    referee_note = (
        "same eval.py" if referee.git_blob_sha(root / "eval.py") == row["eval_sha"] else "eval.py changed since"
    )
    print(
        f"---\nrecorded: {row['val_bpb']!r}\nrescored: {val_bpb!r}\ndifference: {val_bpb - row['val_bpb']:+.3g}\nreferee: {referee_note}"
    )
    if abs(val_bpb - row["val_bpb"]) > tolerance:
        print(f"verify: MISMATCH — run {run_id} does not reproduce its recorded val_bpb (tolerance {tolerance:g})")
        raise SystemExit(1)
    print(f"verify: ok (within {tolerance:g})")


def plot_group(df):
    """The runs worth plotting together: the ok runs comparable with the bar (else with the newest ok
    run), and the crashes and timeouts of the same device and referee."""
    import polars as pl

    ok = df.filter(pl.col("status") == "ok")
    if ok.is_empty():
        return df.filter(pl.col("status") != "ok")
    bar = the_bar(df)
    anchor = bar["row"] if bar is not None else ok.sort("started_at").row(-1, named=True)
    failed = (
        (pl.col("status") != "ok") & (pl.col("device") == anchor["device"]) & (pl.col("eval_sha") == anchor["eval_sha"])
    )
    return df.filter(((pl.col("status") == "ok") & same_group(anchor)) | failed)


def save_figure(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_plot() -> None:
    """progress.png (val_bpb per run, running best, kept runs labelled, crashes marked) and
    runs/{run_id}/loss.png (training loss from the run's log) for every run that lacks one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    root = main_root()
    df = ledger(root)
    rows = plot_group(df).sort("started_at").to_dicts()
    fig, ax = plt.subplots(figsize=(12, 7), dpi=100)
    xs = list(range(1, len(rows) + 1))
    ok = [(x, r) for x, r in zip(xs, rows, strict=True) if r["status"] == "ok"]
    ax.scatter([x for x, _ in ok], [r["val_bpb"] for _, r in ok], color="tab:blue", s=18, label="scored run (ok)")
    best, best_line, kept = math.inf, [], []
    for x, r in ok:
        if r["val_bpb"] < best:
            best = r["val_bpb"]
            kept.append((x, r))
        best_line.append((x, best))
    if best_line:
        ax.step(
            [x for x, _ in best_line], [b for _, b in best_line], where="post", color="tab:green", label="running best"
        )
    for x, r in ok:  # every point says whose it is; a new best also says what it asked
        new_best = any(x == k for k, _ in kept)
        text = f"{r['experiment']}: {r['label']}" if new_best and r["label"] else r["experiment"]
        ax.annotate(text, (x, r["val_bpb"]), textcoords="offset points", xytext=(4, 6), fontsize=8 if new_best else 6)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # runs are counted, not measured
    crashes = [x for x, r in zip(xs, rows, strict=True) if r["status"] != "ok"]
    if crashes:
        ax.scatter(
            crashes,
            [best if math.isfinite(best) else 0] * len(crashes),
            marker="x",
            color="tab:red",
            s=40,
            label="crash / timeout",
        )
    ax.set_title(f"val_bpb per run — {group_name(ok[0][1])}" if ok else "val_bpb per run (no scored runs yet)")
    save_figure(fig, ax, "run (in order of start)", "val_bpb (bits per byte, lower is better)", root / "progress.png")
    print(f"plot: {root / 'progress.png'} ({len(rows)} runs)")
    made = 0
    for r in df.to_dicts():
        run_dir = root / "runs" / r["run_id"]
        if not (run_dir / "train.log").exists() or (run_dir / "loss.png").exists():
            continue
        losses = step_losses((run_dir / "train.log").read_text())
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        ax.plot(
            [s for s, _ in losses], [loss / math.log(2) for _, loss in losses], color="tab:blue", label="training loss"
        )
        if r["val_bpb"] is not None:
            ax.axhline(r["val_bpb"], color="tab:green", linestyle="--", label=f"val_bpb {r['val_bpb']:.4f}")
        ax.set_title(f"{r['run_id']} ({r['status']})")
        save_figure(fig, ax, "step", "training loss (bits per byte)", run_dir / "loss.png")
        made += 1
    print(f"plot: {made} new loss curves in runs/*/loss.png")


# --- queue: pueue through its CLI (contract: shared/pueue-reference.md, 4.x and 3.x) ---

LABEL = re.compile(r"^\s*Q:\s*(?P<q>\S.*?)\s*H:\s*(?P<h>\S.*?)\s*$", re.DOTALL)
LABEL_EXAMPLE = '"Q: does rotary help? H: expect -0.05 val_bpb"'
PUEUE_INSTALL = (
    "install pueue (cargo install --locked pueue, brew install pueue, or a release binary from "
    "https://github.com/Nukesor/pueue/releases), then start its daemon: pueued -d"
)


def parse_label(label: str) -> tuple[str, str]:
    match = LABEL.match(label)
    if match is None:
        raise Refusal(f"bad label {label!r}: it must read 'Q: <question> H: <hypothesis>', e.g. {LABEL_EXAMPLE}")
    return match["q"], match["h"]


def pueue(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the pueue client; a missing client or a daemon that does not answer is a clear refusal."""
    if shutil.which("pueue", path=(env or os.environ).get("PATH")) is None:
        raise Refusal(f"pueue is not installed: {PUEUE_INSTALL}")
    result = subprocess.run(["pueue", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0 and "Did you start" in result.stderr:
        raise Refusal("the pueue daemon does not answer: start it with `pueued -d` (then check with `pueue status`)")
    if result.returncode != 0:
        raise Refusal(f"pueue {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def pueue_state() -> dict:
    return jsonlib.loads(pueue("status", "--json").stdout)


def task_state(task: dict) -> tuple[str, str | None, str | None, str | None]:
    """(state, start, end, result) of a task, from the 4.x or the 3.x status format."""
    status = task["status"]
    if isinstance(status, str):  # 3.x: "Queued", "Running", "Paused", "Locked"
        return status, task.get("start"), task.get("end"), None
    name, inner = next(iter(status.items()))
    if name == "Done" and not (isinstance(inner, dict) and "result" in inner):
        # 3.x: {"Done": "Success"} or {"Done": {"Failed": 1}}, with the times as top-level keys
        inner = {"result": inner, "start": task.get("start"), "end": task.get("end")}
    inner = inner if isinstance(inner, dict) else {}
    result = inner.get("result")
    if isinstance(result, dict):  # {"Failed": 1} -> "Failed(1)"
        result = "{}({})".format(*next(iter(result.items())))
    return name, inner.get("start", task.get("start")), inner.get("end", task.get("end")), result


def run_label() -> str:
    """The label of the pueue task this run is: RESEARCH_LABEL when `just queue` set it; else, under
    pueue (PUEUE_GROUP and PUEUE_WORKER_ID set, as for the seed's own `pueue add --label .. -- just eval`),
    the label of the running task in that group's worker slot, since pueue has no task-id variable;
    else empty (a run started by hand)."""
    if "RESEARCH_LABEL" in os.environ:
        return os.environ["RESEARCH_LABEL"]
    group, worker = os.environ.get("PUEUE_GROUP"), os.environ.get("PUEUE_WORKER_ID")
    if group is None or worker is None:
        return ""
    mine = [
        task
        for task in pueue_state()["tasks"].values()
        if task["group"] == group
        and task_state(task)[0] == "Running"
        and task.get("envs", {}).get("PUEUE_WORKER_ID") == worker
    ]
    if len(mine) != 1:
        raise Refusal(
            f"PUEUE_GROUP={group} PUEUE_WORKER_ID={worker}: {len(mine)} running pueue tasks hold that slot "
            f"({', '.join(str(t['id']) for t in mine) or 'none'}), so this run cannot tell which label is its own; "
            "queue it with `just queue LABEL SLUG`, or set RESEARCH_LABEL"
        )
    return mine[0].get("label") or ""


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


QUEUE_USAGE = (
    "usage: just queue [--backend pueue|slurm|local] [--partition P] [--gpus N] [--time-min M] [--cpus N] "
    f"[--mem-gb N] [--account A] LABEL SLUG [EVAL_ARGS...], e.g. just queue {LABEL_EXAMPLE} rotary --seed 1"
)


def split_queue_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """The queue's own `--flag VALUE` pairs (the backend, the cluster's resources), wherever they stand:
    before LABEL or among the eval arguments, which have none of these names; and the rest, in order."""
    flags: dict = {}
    rest: list[str] = []
    while argv:
        name, _, value = argv[0][2:].partition("=")
        key = name.replace("-", "_")
        if not argv[0].startswith("--") or (key != "backend" and key not in CLUSTER_DEFAULTS):
            if argv[0].startswith("--") and not rest:  # before LABEL only the queue's flags may stand
                raise Refusal(f"unknown option --{name}; {QUEUE_USAGE}")
            rest.append(argv[0])
            argv = argv[1:]
            continue
        if not value and len(argv) < 2:
            raise Refusal(f"--{name} needs a value; {QUEUE_USAGE}")
        value, argv = (value, argv[1:]) if value else (argv[1], argv[2:])
        if key in ("gpus", "time_min", "cpus", "mem_gb"):
            if not value.isdigit():
                raise Refusal(f"--{name} {value!r}: give a whole number")
            value = int(value)
        flags[key] = value
    backend = flags.pop("backend", "pueue")
    if backend not in BACKENDS:
        raise Refusal(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "pueue" and flags:
        raise Refusal(f"--{', --'.join(flags)}: cluster resources go with --backend slurm (or local)")
    return dict(flags, backend=backend), rest


def queue(argv: list[str]) -> None:
    """just queue [FLAGS] LABEL SLUG [EVAL_ARGS...]: put a scored run of a worktree (or `main`) on
    pueue (default) or, with --backend slurm, on a Slurm cluster through submitit."""
    flags, argv = split_queue_flags(argv)
    if len(argv) < 2:
        raise Refusal(QUEUE_USAGE)
    label, slug, eval_args = argv[0], argv[1], argv[2:]
    parse_label(label)
    root = main_root()
    path = root if slug == "main" else worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(f"no worktree for {slug!r} ({path}): create it with `just new {slug}`, or queue `main`")
    require_scoring_allowed(path, root)  # refuse now what eval.py would refuse hours later
    backend = flags.pop("backend")
    run_id = new_run_id(slug)  # the row's id: `just status` and `just review` find the run's row by it
    if backend != "pueue":
        return submit_cluster(backend, label, run_id, slug, path, eval_args, nproc_of(eval_args), flags)
    state = pueue_state()
    group, gpu = pick_group(state)
    if gpu is not None and (nproc := nproc_of(eval_args)) > 1:
        raise Refusal(
            f"--nproc {nproc} needs several GPUs, and pueue's gpuN groups give a run one: run it "
            "directly (uv run just eval --nproc N) or on a cluster (just queue --backend slurm ...)"
        )
    env = {**os.environ, "RESEARCH_LABEL": label, "RESEARCH_RUN_ID": run_id}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    command = shlex.join(["just", "eval", *eval_args])
    result = pueue(
        "add",
        "--print-task-id",
        "--label",
        label,
        "--working-directory",
        str(path),
        "--group",
        group,
        "--",
        command,
        env=env,
    )
    task_id = result.stdout.strip()
    gpu_note = f", CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    print(f"queued task {task_id}: {command} in {slug} (group {group}{gpu_note}), run {run_id}")
    print(f"label: {label}\nfollow it: uv run just follow {task_id}   status: uv run just status")


def cmd_gpus() -> None:
    """Create one pueue group per visible GPU (gpu0, gpu1, ...), one task at a time each."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        pueue_state()  # still say so if pueue is missing or down
        print("no CUDA device visible: just queue uses pueue's default group (one task at a time)")
        return
    existing = pueue_state()["groups"]
    for i in range(count):
        if f"gpu{i}" not in existing:
            pueue("group", "add", f"gpu{i}", "--parallel", "1")
        pueue("parallel", "1", "--group", f"gpu{i}")
        print(f"group gpu{i}: {torch.cuda.get_device_name(i)}, one task at a time")


def pueue_tasks() -> list[dict]:
    tasks = []
    for task in pueue_state()["tasks"].values():
        name, start, _, result = task_state(task)
        state = result if name == "Done" else name
        tasks.append(dict(id=task["id"], kind="pueue task", label=task.get("label") or "", path=task["path"],
                          run_id=task.get("envs", {}).get("RESEARCH_RUN_ID"), since=start, state=state,
                          done=name == "Done", started=name in ("Done", "Running")))  # fmt: skip
    return tasks


def task_rows(df, job: dict, slug: str, claimed: set[str]):
    """The ledger rows of one task or job: by the run id `just queue` gave it (a `pueue restart` of
    it adds a suffix); for a task added with plain `pueue add --label`, the rows of that label and
    worktree started after the task started that no other task claimed by id."""
    import polars as pl

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


def cmd_status(json: bool = False) -> None:
    """pueue's labelled tasks joined with their ledger rows: id, state, Q, H, slug, val_bpb, delta vs main."""
    runs = queued_runs(main_root())
    if json:
        return print_json(runs)
    import polars as pl

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


def cmd_log(task_id: Positional[str]) -> None:
    """The full output of a pueue task (a number) or a cluster job (slurm-N, local-N)."""
    if not task_id.isdigit():
        paths = cluster_job_paths(main_root(), task_id)
        for path in (paths.stdout, paths.stderr):
            print(f"==> {path} <==\n{path.read_text() if path.exists() else '(not written yet)'}")
        return
    pueue_state()
    os.execvp("pueue", ["pueue", "log", task_id, "--full"])


def cmd_follow(task_id: Positional[str]) -> None:
    """Stream the output of a pueue task (a number) or a cluster job (slurm-N, local-N) as it runs."""
    if not task_id.isdigit():
        paths = cluster_job_paths(main_root(), task_id)
        os.execvp("tail", ["tail", "-n", "+1", "-F", str(paths.stdout), str(paths.stderr)])
    pueue_state()
    os.execvp("pueue", ["pueue", "follow", task_id])


REVIEWED = re.compile(r"<!-- reviewed: (\S+) -->")


def cmd_review() -> None:
    """Prepend a journal entry for every finished labelled run not reviewed yet: Q, H, what was
    observed, and an empty inference line to fill in before committing."""
    root = main_root()
    journal = root / JOURNAL
    done = set(REVIEWED.findall(journal.read_text()))
    written = 0
    for run in queued_runs(root):
        row = run["row"]
        key = row["run_id"] if row is not None else f"task-{run['id']}-{run['slug']}"
        if not run["done"] or key in done:
            continue
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
        done.add(key)
        written += 1
    print(
        f"review: {written} new journal entries"
        + (" (fill in each Inference line before committing)" if written else "")
    )


# --- cluster: Slurm through submitit (and submitit's local executor, same code path) ---

CLUSTER_CONFIG = "cluster.toml"  # optional, in the main checkout: defaults for the flags below
CLUSTER_DEFAULTS = dict(partition=None, gpus=None, time_min=120, cpus=None, mem_gb=None, account=None)
BACKENDS = ("pueue", "slurm", "local")
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}


def cluster_options(root: Path, flags: dict) -> dict:
    """CLUSTER_DEFAULTS, overridden by cluster.toml, overridden by the command's flags."""
    import tomllib

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


def nproc_of(eval_args: list[str]) -> int:
    """The `--nproc N` among the run's eval.py arguments (1 if absent): the GPUs it needs."""
    value = eval_flag(eval_args, "nproc")
    if value is None:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise Refusal(f"--nproc {value!r}: give a whole number of processes (GPUs), 1 or more")
    return int(value)


def slurm_parameters(slug: str, label: str, options: dict, nproc: int) -> dict:
    """submitit.SlurmExecutor parameters: one task on one node, one GPU per rank by default."""
    params = dict(
        job_name=f"eval-{slug}", comment=label, time=options["time_min"], nodes=1, ntasks_per_node=1,
        gpus_per_node=options["gpus"] if options["gpus"] is not None else nproc, partition=options["partition"],
        cpus_per_task=options["cpus"], mem=f"{options['mem_gb']}GB" if options["mem_gb"] else None,
        account=options["account"],
    )  # fmt: skip
    return {k: v for k, v in params.items() if v is not None}


def submit_cluster(
    backend: str, label: str, run_id: str, slug: str, path: Path, eval_args: list[str], nproc: int, flags: dict
) -> None:
    """Submit one scored run as a submitit job; its record (runs/cluster/ID/job.json) lets
    `just status` and `just review` follow it beside the pueue tasks."""
    import submitit

    root = main_root()
    options = cluster_options(root, flags)
    folder = root / "runs" / "cluster" / f"{backend}-%j"
    if backend == "slurm":
        if shutil.which("sbatch") is None:
            raise Refusal("--backend slurm needs Slurm's sbatch on PATH: run this on the cluster's login node")
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**slurm_parameters(slug, label, options, nproc))
    else:
        import torch

        gpus = options["gpus"] if options["gpus"] is not None else min(nproc, torch.cuda.device_count())
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options["time_min"], gpus_per_node=gpus)
    # `env` adds the label and run id to the job's own environment (the node's, not a pickled copy of ours).
    command = [
        "env",
        f"RESEARCH_LABEL={label}",
        f"RESEARCH_RUN_ID={run_id}",
        sys.executable,
        str(root / "eval.py"),
        *eval_args,
    ]
    submitted_at = datetime.now(UTC).isoformat(timespec="seconds")  # before the job can write its row
    job = executor.submit(submitit.helpers.CommandFunction(command, cwd=str(path)))
    record = dict(
        id=f"{backend}-{job.job_id}", backend=backend, job_id=str(job.job_id), label=label, run_id=run_id, slug=slug,
        path=str(path), command=shlex.join(["just", "eval", *eval_args]),
        submitted_at=submitted_at,
    )  # fmt: skip
    job_dir = root / "runs" / "cluster" / record["id"]
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(jsonlib.dumps(record, indent=2) + "\n")
    print(f"submitted {backend} job {record['id']}: {record['command']} in {slug}")
    print(f"label: {label}\nlog: uv run just log {record['id']}   status: uv run just status")


def cluster_job_state(record: dict, job_dir: Path) -> tuple[str, bool]:
    """(state, done) of a submitit job: its result file once it ended, else Slurm's accounting
    (sacct) or, for a local job, whether its process still lives."""
    import submitit
    from submitit.core.utils import JobPaths, pickle_load

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
    for path in sorted((root / "runs" / "cluster").glob("*/job.json")):
        record = jsonlib.loads(path.read_text())
        state, done = cluster_job_state(record, path.parent)
        kind = f"{record['backend']} job"
        jobs.append(dict(record, kind=kind, state=state, done=done, since=record["submitted_at"], started=True))
    return jobs


def cluster_job_paths(root: Path, job_id: str):
    """submitit's files (stdout, stderr, result) of the job `just status` lists as `job_id`."""
    from submitit.core.utils import JobPaths

    record_path = root / "runs" / "cluster" / job_id / "job.json"
    if not record_path.exists():
        raise Refusal(f"no job {job_id!r}: the ids are pueue task numbers and the slurm-N / local-N of `just status`")
    return JobPaths(record_path.parent, jsonlib.loads(record_path.read_text())["job_id"])


def load_corpus(referee, prepare: bool = False):
    """eval.py's corpus; a source that is missing, unknown or not prepared is a one-line refusal."""
    try:
        return referee.prepare() if prepare else referee.load_corpus()
    except ValueError as e:
        raise Refusal(str(e)) from e


def cmd_prepare() -> None:
    """Download (a Hugging Face source) and prepare eval.py's DATA_SOURCE, so that runs read it offline."""
    import eval as referee

    t0 = time.perf_counter()
    corpus = load_corpus(referee, prepare=True)
    print(
        f"prepare: {corpus.source} | {corpus.n_files} files | train {len(corpus.train):,} B | "
        f"val {len(corpus.val):,} B | fp {corpus.fingerprint} | {time.perf_counter() - t0:.1f} s"
    )


# --- smoke: a fast sanity check of the experiment's code, no ledger row ---

STEP_LINE = re.compile(r"step (\d+)/(\d+) \| loss ([-+.\w]+)")


def step_losses(log_text: str) -> list[tuple[int, float]]:
    """(step, loss) from the step lines train.py logs: `step 120/2000 | loss 3.412 | ...`."""
    return [(int(m[1]), float(m[3])) for m in STEP_LINE.finditer(log_text)]


def smoke(argv: list[str]) -> None:
    """Train the experiment's config for 30 steps with jaxtyping shape checks on, check the loss
    falls and stays finite, run the causality probe and the scoring code on a slice of the split."""
    import jaxtyping

    code_dir = checkout_dir()
    with jaxtyping.install_import_hook(["model", "train"], "beartype.beartype"):
        import eval as referee

        train = referee.load_experiment(code_dir)
    import torch
    from loguru import logger

    args, config_desc, cfg = referee.parse_args(argv, train)
    device = referee.resolve_device(args.device)
    if hasattr(cfg, "log_every"):
        cfg = dataclasses.replace(cfg, log_every=3)
    if hasattr(cfg, "compile"):  # shape checks wrap every function; compiling through them is not the point here
        cfg = dataclasses.replace(cfg, compile=False)
    budget = args.budget_tokens or 30 * cfg.batch_size * cfg.seq_len
    lines: list[str] = []
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} | {message}", backtrace=False, diagnose=False)
    logger.add(lines.append, format="{message}")
    logger.info(f"smoke | {code_dir} | config {config_desc} | device {device} | {budget:,} tokens | shape checks on")

    t0 = time.perf_counter()
    corpus = load_corpus(referee)
    torch.manual_seed(args.seed)
    stream = referee.TrainStream(corpus.train, budget, args.seed, device, time.monotonic() + 600)
    model = train.train(cfg, stream, device)
    losses = [loss for _, loss in step_losses("".join(lines))]
    if len(losses) < 2:
        raise AssertionError(f"train.py logged {len(losses)} step lines; smoke needs at least 2 to see the loss fall")
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"non-finite loss in {losses}")
    if not losses[-1] < losses[0]:
        raise AssertionError(f"loss did not fall: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    seq_len = referee.PRESETS[device.type].eval_seq_len
    model.eval()
    problem = referee.causality_violation(model, corpus.val, seq_len, device)
    if problem is not None:
        raise AssertionError(f"model is not causal: {problem}")
    bpb = referee.evaluate(model, corpus.val[: 64 * seq_len + 1], seq_len, device)
    if not math.isfinite(bpb):
        raise AssertionError(f"scoring gave {bpb}")
    print("---")
    print(f"smoke: ok\nloss_first: {losses[0]:.4f}\nloss_last: {losses[-1]:.4f}")
    print(f"val_bpb_slice: {bpb:.4f}\ntrain_tokens: {stream.tokens_served}\nwall_s: {time.perf_counter() - t0:.1f}")


# --- entry point ---

COMMANDS = dict(
    new=cmd_new, rm=cmd_rm, check=cmd_check, journal=cmd_journal, idea=cmd_idea, ideas=cmd_ideas,
    next=cmd_next, report=cmd_report, record=cmd_record, results=cmd_results, best=cmd_best, submit=cmd_submit,
    paper=cmd_paper, gpus=cmd_gpus, status=cmd_status, log=cmd_log, follow=cmd_follow, review=cmd_review,
    compare=cmd_compare, verify=cmd_verify, plot=cmd_plot, prepare=cmd_prepare,
)  # fmt: skip


RAW_COMMANDS = dict(smoke=smoke, queue=queue, baseline=baseline, determinism=determinism, confirm=confirm, aa=aa)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["pre-commit"]:  # the git hook
            top = checkout_dir()
            problems = taxonomy_violations(staged_changes(top), current_branch(top) == MAIN_BRANCH, meta_mode())
            for p in problems:
                print(f"commit refused: {p}", file=sys.stderr)
            return 1 if problems else 0
        install_hooks(main_root())
        if argv[:1] and argv[0] in RAW_COMMANDS:  # these pass eval's arguments through as they are
            RAW_COMMANDS[argv[0]](argv[1:])
            return 0
        tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="harness.py")
        return 0
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a run in progress records its own crash row
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
