"""The research record in files: ideas (1_ideas/), the journal, reports (9_reports/), and `just record`,
which commits them on main from any worktree."""

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from filelock import FileLock

from harness import Refusal
from harness.table import baseline_rows, group_name, ledger, markdown, print_json, print_table, same_group
from repo import write_atomic
from repo.git import (
    MAIN_BRANCH,
    WORKTREES,
    check_slug,
    checkout_dir,
    code_commits,
    commit,
    current_branch,
    experiment_name,
    git,
    main_root,
    succeeds,
    uncommitted_files,
)
from repo.guard import JOURNAL, journal_head
from repo.ledger import LEDGER


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


def journal_entries(root: Path) -> list[str]:
    """The research journal's entries, newest first (the journal grows at the top)."""
    path = root / JOURNAL
    text = path.read_text() if path.exists() else ""
    return [entry for entry in re.split(r"\n(?=## )", text[len(journal_head(text)) :]) if entry.strip()]


def prepend_entry(path: Path, entry: str) -> None:
    """Insert an entry at the top of a journal, below its title, under a lock."""
    with FileLock(str(path) + ".lock"):
        text = path.read_text()
        head = journal_head(text)
        write_atomic(path, (head.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n\n" + text[len(head) :]).encode())


def journal(text: str, /, observation: str = "", inference: str = "") -> None:
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


def idea(slug: str, title: str, /) -> None:
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


def ideas(json: bool = False) -> None:
    """List ideas: date, slug, title, rating, and whether a worktree, results and a report exist."""
    table = ideas_table(main_root())
    if json:
        return print_json(table)
    if not table:
        print('no ideas yet: just idea SLUG "TITLE"')
        return
    columns = ["date", "slug", "rating", "worktree", "results", "report", "title"]
    print_table(pl.DataFrame(table, schema_overrides=dict(rating=pl.Float64)), columns)


def report(slug: str, /) -> None:
    """Create 9_reports/{YYYY-MM-DD}_{SLUG}.md, prefilled with the slug's rows, the bar and the diff stat."""
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
    newest = (ok if ok.height else rows).sort("started_at").row(-1, named=True)
    rows, base = rows.filter(same_group(newest)), baseline_rows(df, newest)  # one comparable group
    code = pl.col("commit").replace(code_commits(root, [*rows["commit"], *base["commit"]])).alias("code_commit")
    cols = ["run_id", code, "seed", "status", "val_bpb", "budget", "train_tokens", "wall_s", "label", "description"]
    cols += ["error"]  # code_commit: the commit that last changed the code (runs of one code name one)
    branch_exists = succeeds("rev-parse", "--verify", "--quiet", f"exp/{slug}", cwd=root)
    diffstat = git("diff", "--stat", f"{MAIN_BRANCH}...exp/{slug}", cwd=root) if branch_exists else ""
    idea_path = idea_file(root, slug)
    fields = dict(
        slug=slug,
        date=date,
        idea="(none)" if idea_path is None else str(idea_path.relative_to(root)),
        group=group_name(newest),
        rows=markdown(rows.select(cols)),
        baseline="(no baseline rows in this group: just baseline)" if base.is_empty() else markdown(base.select(cols)),
        diffstat=f"```\n{diffstat or '(no diff against ' + MAIN_BRANCH + ')'}\n```",
    )
    text = (root / "9_reports" / "_TEMPLATE.md").read_text()
    for key, value in fields.items():
        text = text.replace("{" + key + "}", value)
    path.write_text(text)
    print(f"report: {path.relative_to(root)}")


RECORD = (LEDGER, JOURNAL, "1_ideas", "9_reports", "0_docs")  # the research record, committed on main


def record(message: str = "") -> None:
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
    refused = commit(root, summary, *RECORD)
    if refused is not None:
        raise Refusal(f"commit refused:\n{refused}")
    print(f"record: committed {len(pending)} files on {MAIN_BRANCH}: {', '.join(pending)}")
