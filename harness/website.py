"""`just site`: the research record as a static site a person opens from the file system: the progress chart
of every comparable group (each run a mark that tells its experiment, label, seed, commit and verdict), the
experiments with their verdicts, a page per experiment (idea, report, diff, loss curves, verdicts, journal
entries, labels), and the journal with the labelled runs. Rebuilt from the ledger, runs/, the journals,
1_ideas/, 9_reports/ and git on every call, so it cannot disagree with them; `--serve` keeps it current."""

import functools
import http.server
import json
import math
import re
import threading
import time
from pathlib import Path

import jinja2
import polars as pl
from markdown_it import MarkdownIt
from markupsafe import escape
from plotly.io import templates
from plotly.offline import get_plotlyjs
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from harness import Refusal
from harness.compare import verdict_of
from harness.records import idea_file, idea_rating, idea_title, ideas_table, journal_entries
from harness.stats import Outcome, mean_std
from harness.table import COMPARABLE, baseline_rows, group_name, ledger, newest_group, same_group, the_bar
from referee import api
from repo import write_atomic
from repo.git import MAIN_BRANCH, WORKTREES, code_commits, git, main_root, succeeds
from repo.guard import JOURNAL
from repo.ledger import CONFIRM_ROLE, LEDGER
from repo.runs import RUNS, read_steps

SITE = Path("9_reports") / "site"  # generated, never committed (.gitignore)
DIFF_LIMIT = 200_000  # characters of an experiment's diff shown; the rest is named, not rendered
# How each kind of run is drawn on the progress chart: (plotly marker symbol, colour, legend name).
MARKS = {
    "baseline": ("circle", "#7f7f7f", "main's baseline seed"),
    "main": ("diamond", "#7f7f7f", "main, other run"),
    "exploring": ("circle", "#1f77b4", "exploring (promising or inconclusive)"),
    "improved": ("triangle-up", "#2ca02c", "improved, awaiting confirmation"),
    "confirmed": ("star", "#2ca02c", "confirmation run, confirmed"),
    "confirmation": ("star-open", "#ff7f0e", "confirmation run, not confirmed"),
    "worse": ("triangle-down", "#d62728", "worse"),
    "crashed": ("x", "#d62728", "crash or timeout"),
}
PLOT_TEMPLATE = templates["plotly_white"].to_plotly_json()
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
# The record is written by agents: raw HTML in it is shown as text, never run.
MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str) -> str:
    return MARKDOWN.render(re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL))


def site(serve: bool = False, port: int = 8000) -> None:
    """Write the research record as a static site into 9_reports/site/ (index.html, a page per experiment,
    journal.html; no server or network needed to read it) and print its path. --serve: serve it on PORT and
    rebuild it whenever the ledger, the journal, an idea or a report changes."""
    root = main_root()
    index = build(root, live=serve)
    print(f"site: {index}")
    if serve:
        serve_site(root, port)


def build(root: Path, live: bool = False) -> Path:
    """Every page, from the record as it is now; the path of index.html. `live`: pages reload themselves."""
    out = root / SITE
    (out / "experiments").mkdir(parents=True, exist_ok=True)
    (out / "plotly.min.js").write_text(get_plotlyjs())  # the installed plotly's, whatever an older build left
    df = ledger(root)
    df = df.with_columns(pl.col("commit").replace(code_commits(root, df["commit"].to_list())))  # runs of one code: one
    slugs = experiments(root, df)
    verdicts = {slug: verdict_of(df, slug) for slug in slugs}
    bar = the_bar(df)
    shown = newest_group(df, bar)
    preset = {device: p["train_tokens"] for device, p in api.presets().items()}
    groups = [
        dict(
            name=group_name(anchor)
            + ("" if anchor["budget"] == preset.get(anchor["device"]) else " · not the preset's budget"),
            chart=progress_chart(rows, verdicts, f"chart-{i}"),
            runs=rows.height,
            selected=shown is not None and all(anchor[c] == shown[c] for c in COMPARABLE),
        )
        for i, (anchor, rows) in enumerate(group_rows(df))
    ]
    common = dict(live=live, built=time.strftime("%Y-%m-%d %H:%M"))
    table = [experiment_summary(root, df, slug, verdicts[slug]) for slug in slugs]
    journal = journal_entries(root)  # read once: every experiment's page shows the entries that name it
    write(
        out / "index.html",
        "index.html.j2",
        0,
        **common,
        groups=groups,
        experiments=table,
        untried=[i for i in ideas_table(root) if i["slug"] not in slugs],  # written, never scored: work waiting
        bar=bar,
        rows=df.height,
    )
    for slug in slugs:
        page = experiment_page(root, df, slug, verdicts[slug], journal)
        write(out / "experiments" / f"{slug}.html", "experiment.html.j2", 1, **common, **page)
    for stale in (out / "experiments").glob("*.html"):
        if stale.stem not in slugs:  # an experiment no longer in the record (its rows and worktree gone)
            stale.unlink()
    write(out / "journal.html", "journal.html.j2", 0, **common, **journal_page(root, df, journal))
    return out / "index.html"


def write(path: Path, template: str, depth: int, **context) -> None:
    write_atomic(
        path, TEMPLATES.get_template(template).render(up="../" * depth, **context).encode()
    )  # never half a page


def experiments(root: Path, df: pl.DataFrame) -> list[str]:
    """Every experiment with a row or a worktree, in the order of its first row (worktrees without rows last)."""
    ranked = df.filter(pl.col("experiment") != "main")["experiment"].unique(maintain_order=True).to_list()
    worktrees = sorted(p.name for p in (root / WORKTREES).glob("*") if p.is_dir())
    return ranked + [slug for slug in worktrees if slug not in ranked]


def group_rows(df: pl.DataFrame) -> list[tuple[dict, pl.DataFrame]]:
    """Each comparable group with a run, newest first, a group of crashes only too (its crashes are news): (its
    newest row, all its rows in run order)."""
    groups = []
    newest_first = df.sort("started_at", descending=True)
    for anchor in newest_first.unique(subset=list(COMPARABLE), keep="first", maintain_order=True).iter_rows(named=True):
        groups.append((anchor, df.filter(same_group(anchor)).sort("started_at")))
    return groups


def run_kind(row: dict, verdicts: dict) -> str:
    """Which mark a run gets on the progress chart."""
    if row["status"] != "ok":
        return "crashed"
    if row["experiment"] == "main":
        return "baseline" if row["role"] == "baseline" else "main"
    verdict = verdicts.get(row["experiment"], {})
    if row["role"].startswith(CONFIRM_ROLE):
        confirmed = verdict.get("confirmation")
        return "confirmed" if confirmed is not None and confirmed.outcome == Outcome.IMPROVED else "confirmation"
    outcome = verdict["compare"].outcome if verdict.get("compare") else None
    return {Outcome.IMPROVED: "improved", Outcome.WORSE: "worse"}.get(outcome, "exploring")


def progress_chart(rows: pl.DataFrame, verdicts: dict, div_id: str) -> str:
    """val_bpb per run in run order, one trace per kind of mark, the running best as a step line; a point's
    hover names the run, a click opens its experiment's page."""
    records = rows.to_dicts()
    scored = [r["val_bpb"] for r in records if r["val_bpb"] is not None]
    crash_y = max(scored) if scored else 0.0  # a crash has no number: drawn at the top of the chart
    traces, best, steps = [], math.inf, []
    for x, r in enumerate(records, start=1):
        if r["status"] == "ok":
            best = min(best, r["val_bpb"])
            steps.append((x, best))
    if steps:
        traces.append(
            dict(
                x=[x for x, _ in steps],
                y=[b for _, b in steps],
                mode="lines",
                line=dict(shape="hv", color="#2ca02c", width=1.5),
                name="running best",
                hoverinfo="skip",
            )
        )
    for kind, (symbol, colour, name) in MARKS.items():
        points = [(x, r) for x, r in enumerate(records, start=1) if run_kind(r, verdicts) == kind]
        if points:
            traces.append(
                dict(
                    x=[x for x, _ in points],
                    y=[r["val_bpb"] if r["val_bpb"] is not None else crash_y for _, r in points],
                    mode="markers",
                    marker=dict(symbol=symbol, color=colour, size=10 if kind in ("improved", "confirmed") else 8),
                    name=name,
                    customdata=[experiment_link(r["experiment"], verdicts) for _, r in points],
                    hovertext=[run_hover(r, kind) for _, r in points],
                    hoverinfo="text",
                )
            )
    layout = dict(
        # runs are counted: whole-number ticks (one per run while they fit, else plotly's integer steps)
        xaxis=dict(
            title=dict(text="run (in order of start)"), tickformat="d", **({"dtick": 1} if len(records) <= 20 else {})
        ),
        yaxis=dict(title=dict(text="val_bpb (bits per byte, lower is better)")),
        height=480,
        legend=dict(orientation="h", y=-0.15),
    )
    return chart(div_id, traces, layout, on_click=True)


def chart(div_id: str, traces: list[dict], layout: dict, on_click: bool = False) -> str:
    """A plotly.js chart: its div and the script that draws it (plotly.min.js is beside the pages); with
    `on_click`, a click on a point opens the page its customdata names."""
    layout = dict(template=PLOT_TEMPLATE, margin=dict(l=60, r=20, t=20, b=50), **layout)
    spec = json.dumps(dict(data=traces, layout=layout)).replace("</", "<\\/")  # no early end of the script
    click = (
        f"document.getElementById('{div_id}').on('plotly_click', e => {{ const url = e.points[0].customdata; "
        "if (url) window.location.href = url; });"
        if on_click
        else ""
    )
    return (
        f'<div id="{div_id}" class="plotly-graph-div"></div>\n<script>(() => {{ const spec = {spec}; '
        f"Plotly.newPlot('{div_id}', spec.data, spec.layout, {{responsive: true}}); {click} }})();</script>"
    )


def experiment_link(slug: str, verdicts: dict) -> str | None:
    return f"experiments/{slug}.html" if slug in verdicts else None


def run_hover(row: dict, kind: str) -> str:
    value = "no score" if row["val_bpb"] is None else f"{row['val_bpb']:.6f}"
    lines = [
        f"<b>{row['experiment']}</b> · {MARKS[kind][2]}",
        f"val_bpb {value} · seed {row['seed']} · code of commit {row['commit']}",
        f"run {row['run_id']}",
    ]
    if row["label"]:
        lines.append(escape(row["label"]))
    if row["description"]:
        lines.append(escape(row["description"]))
    if row["status"] != "ok":
        lines.append(f"{row['status']}: {escape((row['error'] or '')[:120])}")
    return "<br>".join(lines)


def branch_state(root: Path, slug: str) -> str:
    """Where the experiment's code is: its worktree, its branch (pushed or merged), or gone."""
    branch = f"exp/{slug}"
    if not succeeds("rev-parse", "--verify", "--quiet", branch, cwd=root):
        return "worktree" if (root / WORKTREES / slug).is_dir() else "no branch"
    if succeeds("merge-base", "--is-ancestor", branch, MAIN_BRANCH, cwd=root) and git(
        "rev-parse", branch, cwd=root
    ) != git("rev-parse", MAIN_BRANCH, cwd=root):
        return "merged into main"
    pushed = succeeds("rev-parse", "--verify", "--quiet", f"origin/{branch}", cwd=root)
    where = "worktree" if (root / WORKTREES / slug).is_dir() else "branch only"
    return f"{where}, pushed" if pushed else where


def report_file(root: Path, slug: str) -> Path | None:
    return next(iter(sorted((root / "9_reports").glob(f"*_{slug}.md"))), None)


def experiment_summary(root: Path, df: pl.DataFrame, slug: str, verdict: dict) -> dict:
    """One line of the front page's table of experiments."""
    idea = idea_file(root, slug)
    result, confirmed = verdict["compare"], verdict["confirmation"]
    runs = df.filter(pl.col("experiment") == slug)
    mean = std = delta = None
    if result is not None and result.runs:
        mean, std = mean_std(result.runs)
        delta = mean - mean_std(result.baseline)[0] if result.baseline else None
    return dict(
        slug=slug,
        title=idea_title(idea) if idea else "",
        rating=idea_rating(idea.read_text()) if idea else None,
        runs=runs.height,
        failed=runs.filter(pl.col("status") != "ok").height,
        mean=mean,
        std=std,
        delta=delta,
        outcome=result.outcome.value if result else "no ok run",
        confirmation=confirmed.outcome.value if confirmed else None,
        report=report_file(root, slug) is not None,
        state=branch_state(root, slug),
    )


def experiment_diff(root: Path, slug: str, rows: pl.DataFrame) -> str:
    """The experiment's change against main, highlighted: its branch, else the commit of its newest row."""
    branch = f"exp/{slug}"
    if succeeds("rev-parse", "--verify", "--quiet", branch, cwd=root):
        target = branch
    else:
        commits = [c for c in rows.sort("started_at", descending=True)["commit"].drop_nulls().to_list()]
        target = next((c for c in commits if succeeds("cat-file", "-e", f"{c}^{{commit}}", cwd=root)), None)
        if target is None:
            return ""
    text = git("diff", f"{MAIN_BRANCH}...{target}", cwd=root)
    if len(text) > DIFF_LIMIT:
        text = text[:DIFF_LIMIT] + f"\n... (cut at {DIFF_LIMIT:,} characters: git diff {MAIN_BRANCH}...{target})\n"
    return highlight(text, DiffLexer(), HtmlFormatter(noclasses=True, nowrap=False)) if text else ""


@functools.cache  # a baseline seed's curve is drawn on the page of every experiment in its group
def step_metrics(root: Path, run_id: str) -> list[dict]:
    return [r for r in read_steps(root / RUNS / run_id) if "loss" in r]


def loss_chart(root: Path, mine: pl.DataFrame, baseline: pl.DataFrame) -> str | None:
    """The training loss of the experiment's runs over tokens, over its group's baseline seeds in grey."""
    traces = []
    for rows, colour, who in ((baseline, "#9e9e9e", "main"), (mine, "#1f77b4", None)):
        for row in rows.iter_rows(named=True):
            metrics = step_metrics(root, row["run_id"])
            if metrics:
                traces.append(
                    dict(
                        x=[m.get("tokens", m["step"]) for m in metrics],
                        y=[m["loss"] for m in metrics],
                        mode="lines",
                        line=dict(color=colour, width=1.5 if who is None else 1),
                        name=f"{who or row['experiment']} seed {row['seed']} ({row['run_id']})",
                    )
                )
    if not traces:
        return None
    layout = dict(
        xaxis=dict(title=dict(text="training tokens")),
        yaxis=dict(title=dict(text="training loss (nats)")),
        height=420,
    )
    return chart("loss", traces, layout)


def experiment_page(root: Path, df: pl.DataFrame, slug: str, verdict: dict, journal: list[str]) -> dict:
    rows = df.filter(pl.col("experiment") == slug).sort("started_at")
    ok = rows.filter(pl.col("status") == "ok")
    newest = ok.row(-1, named=True) if ok.height else None
    baseline = baseline_rows(df, newest) if newest else rows.clear()
    idea, report = idea_file(root, slug), report_file(root, slug)
    mentions = re.compile(rf"(?<![\w-]){re.escape(slug)}(?![\w-])")
    return dict(
        slug=slug,
        title=idea_title(idea) if idea else slug,
        idea=render_markdown(idea.read_text()) if idea else None,
        idea_path=str(idea.relative_to(root)) if idea else None,
        report=render_markdown(report.read_text()) if report else None,
        report_path=str(report.relative_to(root)) if report else None,
        state=branch_state(root, slug),
        diff=experiment_diff(root, slug, rows),
        group=group_name(newest) if newest else None,
        runs=rows.to_dicts(),
        loss=loss_chart(root, ok.filter(same_group(newest)) if newest else ok, baseline),
        compare=verdict["compare"],
        confirmation=verdict["confirmation"],
        journal=[render_markdown(e) for e in journal if mentions.search(e)],
        labels=rows.filter(pl.col("label").is_not_null()).to_dicts(),
    )


def journal_page(root: Path, df: pl.DataFrame, journal: list[str]) -> dict:
    """The journal, newest first, and the labelled runs: the queue's tasks and jobs joined with their rows
    (as `just status` shows them), or, where the queue cannot be asked, the ledger's labelled rows."""
    from harness.queue import queued_runs

    try:
        queued, unchecked = queued_runs(root), None
    except Refusal as e:  # pueue is optional
        queued, unchecked = [], str(e)
    labelled = df.filter(pl.col("label").is_not_null()).sort("started_at", descending=True).to_dicts()
    return dict(
        entries=[render_markdown(e) for e in journal],
        queued=queued,
        unchecked=unchecked,
        labelled=labelled,
        ledger=LEDGER,
    )


def record_mtime(root: Path) -> float:
    """The newest change to anything the site is built from."""
    paths = [root / LEDGER, root / JOURNAL, *(root / "1_ideas").glob("*.md"), *(root / "9_reports").glob("*.md")]
    paths += [root / ".git" / "HEAD", *(root / ".git" / "refs" / "heads").rglob("*")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def serve_site(root: Path, port: int) -> None:
    """Serve the site on localhost:PORT; rebuild it when the record changes (checked every 2 s)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root / SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving http://127.0.0.1:{port}/ (Ctrl-C stops); it is rebuilt as runs land", flush=True)
    seen = record_mtime(root)
    while True:
        time.sleep(2)
        now = record_mtime(root)
        if now != seen:
            seen = now
            build(root, live=True)
            print(f"rebuilt at {time.strftime('%H:%M:%S')}", flush=True)
