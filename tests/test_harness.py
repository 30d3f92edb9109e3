"""The workflow on real git repos in temp folders, through the real recipes: worktrees, the taxonomy
guard, journal, ideas, reports, ledger queries, submit and clean-up."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import DRAWN_SEED, ROOT, add_rows, draw, git, in_processes, just, ledger, new
from harness import records
from repo import git as gitlayer
from repo import guard
from repo.git import code_commits, head_commit

TINY = ["tiny", "--budget-tokens", "3000"]
META = {"META_MODE": "1"}


def commit(cwd: Path, path: str, text: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Write and commit one file through the pre-commit hook, as the recipes install it."""
    guard.install_hooks(gitlayer.main_root(cwd))
    (cwd / path).write_text(text)
    git("add", path, cwd=cwd)
    return subprocess.run(
        ["git", "commit", "-qm", f"edit {path}"], cwd=cwd, capture_output=True, text=True, env=env or hooked_env()
    )


def hooked_env(meta: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "META_MODE"}
    return env | (META if meta else {})


# --- new / rm ---


def test_new_creates_a_worktree_on_its_branch_sharing_the_environment(project):
    (project / "1_ideas" / "2026-01-01_rotary.md").write_text("# Rotary\n")
    result = just(project, "new", "rotary")
    assert result.returncode == 0
    wt = project / "5_worktrees" / "rotary"
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=wt) == "exp/rotary"
    assert (wt / ".venv").is_symlink() and (wt / ".venv").resolve() == (project / ".venv").resolve()
    assert "1_ideas/2026-01-01_rotary.md" in result.stdout and "just smoke" in result.stdout
    assert git("status", "--porcelain", cwd=wt) == ""  # the symlink is ignored
    assert git("config", "core.hooksPath", cwd=project) == str(project / ".githooks")


@pytest.mark.parametrize("slug", ["Rotary", "-x", "a_b", "a b", ""])
def test_new_refuses_a_bad_slug(project, slug):
    result = just(project, "new", slug)
    assert result.returncode != 0 and "bad slug" in result.stderr


def test_new_refuses_an_existing_worktree_and_the_reserved_slug(project):
    new(project, "dup")
    assert "already exists" in just(project, "new", "dup").stderr
    reserved = just(project, "new", "main")
    assert reserved.returncode == 2 and "the slug 'main' is reserved" in reserved.stderr
    assert "exp/main" not in git("branch", cwd=project)


def test_new_reopens_a_kept_branch_and_a_worktree_deleted_by_hand(project):
    wt = new(project, "again")
    (wt / "model.py").write_text((wt / "model.py").read_text() + "\n# tried\n")
    git("commit", "-qam", "tried", cwd=wt)
    tried = git("rev-parse", "HEAD", cwd=wt)
    assert just(project, "rm", "again", "--force").returncode == 0
    result = just(project, "new", "again")
    assert result.returncode == 0 and "re-opened branch exp/again" in result.stdout
    assert git("rev-parse", "HEAD", cwd=wt) == tried  # the commit the ledger rows would name
    subprocess.run(["rm", "-rf", str(wt)], check=True)  # by hand, behind git's back
    assert just(project, "new", "again").returncode == 0 and git("rev-parse", "HEAD", cwd=wt) == tried


def test_rm_refuses_to_lose_work_and_says_what(project):
    wt = new(project, "risky")
    (wt / "model.py").write_text((wt / "model.py").read_text() + "\n# unsaved\n")
    result = just(project, "rm", "risky")
    assert result.returncode == 2 and "would lose the uncommitted changes to model.py" in result.stderr
    git("commit", "-qam", "idea", cwd=wt)
    result = just(project, "rm", "risky")
    assert result.returncode == 2 and "would lose its commit" in result.stderr
    assert "which is neither merged into main nor scored in results.tsv. Commit and score it" in result.stderr
    assert wt.is_dir()
    removed = just(project, "rm", "risky", "--force")
    assert removed.returncode == 0 and "just new risky re-opens it" in removed.stdout
    assert not wt.exists() and "exp/risky" in git("branch", cwd=project)  # the branch stays


def test_rm_removes_a_scored_or_merged_worktree(project):
    scored, merged = new(project, "scored"), new(project, "merged")
    add_rows(project, dict(experiment="scored", commit=git("rev-parse", "--short=12", "HEAD", cwd=scored)))
    assert just(project, "rm", "scored").returncode == 0 and not scored.exists()
    assert just(project, "rm", "merged").returncode == 0 and not merged.exists()  # its HEAD is main's


# --- the taxonomy guard ---


@pytest.mark.parametrize("path", ["eval.py", "referee/core.py", "referee/new_module.py"])
def test_a_frozen_edit_in_a_worktree_is_refused_and_accepted_in_meta_mode(project, path):
    wt = new(project, "frozen")
    text = ((wt / path).read_text() if (wt / path).exists() else "") + "\n# bend the metric\n"
    refused = commit(wt, path, text, env=hooked_env())
    assert refused.returncode != 0 and f"FROZEN {path}" in refused.stderr and "META_MODE=1" in refused.stderr
    assert commit(wt, path, text, env=hooked_env(meta=True)).returncode == 0


def test_scoring_a_worktree_whose_frozen_files_differ_is_refused(project):
    wt = new(project, "bent")
    commit(wt, "harness/stats.py", (wt / "harness/stats.py").read_text() + "\n# x\n", env=hooked_env(meta=True))
    result = just(wt, "eval", *TINY)
    assert result.returncode == 2 and "FROZEN files differ" in result.stderr and "harness/stats.py" in result.stderr
    assert ledger(project).is_empty()


@pytest.mark.parametrize("path", ["RESEARCH_JOURNAL.md", "results.tsv"])
def test_a_global_file_committed_on_a_branch_is_refused(project, path):
    wt = new(project, "global")
    result = commit(wt, path, (wt / path).read_text() + "## 2026 · global\n\nan entry\n", env=hooked_env(meta=True))
    assert result.returncode != 0 and f"GLOBAL {path}" in result.stderr


def test_journal_entries_are_prepended_never_edited(project):
    assert just(project, "journal", "first entry", "--observation", "bpb 2.0").returncode == 0
    assert just(project, "journal", "second entry").returncode == 0
    text = (project / "RESEARCH_JOURNAL.md").read_text()
    assert text.startswith("# Research Journal") and text.index("second entry") < text.index("first entry")
    assert "- **Observation:** bpb 2.0" in text
    for blank in ("", "  "):
        refused = just(project, "journal", blank)
        assert refused.returncode == 2 and "an empty journal entry" in refused.stderr
    assert (project / "RESEARCH_JOURNAL.md").read_text() == text
    assert commit(project, "RESEARCH_JOURNAL.md", text, env=hooked_env()).returncode == 0  # prepending: fine
    edited = commit(
        project, "RESEARCH_JOURNAL.md", text.replace("first entry", "a better first entry"), env=hooked_env()
    )
    assert edited.returncode != 0 and "APPEND-ONLY RESEARCH_JOURNAL.md" in edited.stderr
    git("checkout", "HEAD", "--", "RESEARCH_JOURNAL.md", cwd=project)
    assert just(project, "journal", "third").returncode == 0
    assert (
        commit(
            project, "RESEARCH_JOURNAL.md", (project / "RESEARCH_JOURNAL.md").read_text(), env=hooked_env()
        ).returncode
        == 0
    )


def test_ledger_rows_are_only_appended(project):
    add_rows(project, dict(experiment="main", val_bpb=2.0))
    assert commit(project, "results.tsv", (project / "results.tsv").read_text(), env=hooked_env()).returncode == 0
    edited = (project / "results.tsv").read_text().replace("\t2.0\t", "\t1.0\t")
    result = commit(project, "results.tsv", edited, env=hooked_env())
    assert result.returncode != 0 and "APPEND-ONLY results.tsv" in result.stderr


def test_a_line_that_is_not_a_row_is_refused_everywhere_and_may_be_removed(project):
    add_rows(project, dict(experiment="main", val_bpb=2.0))
    assert commit(project, "results.tsv", (project / "results.tsv").read_text(), env=hooked_env()).returncode == 0
    good = (project / "results.tsv").read_text()
    (project / "results.tsv").write_text(good + "typed by hand\n")
    for args in (["results"], ["best"], ["next"], ["check"], ["eval", "tiny", "--budget-tokens", "1000"]):
        result = just(project, *args)
        assert result.returncode != 0 and "results.tsv:3: 1 fields where the header has" in result.stderr, args
        assert "Traceback" not in result.stderr and "delete that line" in result.stderr
    refused = commit(project, "results.tsv", good + "typed by hand\n", env=hooked_env())
    assert refused.returncode != 0 and "results.tsv:3: 1 fields" in refused.stderr
    git("commit", "-qam", "the line got in before the hook knew better", "--no-verify", cwd=project)
    assert commit(project, "results.tsv", good, env=hooked_env()).returncode == 0  # the repair: that line goes
    header_only = good.split("\n", 1)[0] + "\n"
    removed = commit(project, "results.tsv", header_only, env=hooked_env())  # a real row goes too: refused
    assert removed.returncode != 0 and "rows were edited or removed" in removed.stderr


def test_check_lists_violations_and_exits_1(project):
    wt = new(project, "checked")
    assert just(wt, "check").returncode == 0
    commit(wt, "program.md", "# rewritten\n", env=hooked_env(meta=True))
    (wt / "human_journal.md").write_text("# Human Journal\n")  # the intro removed, uncommitted
    result = just(wt, "check")
    assert result.returncode == 1
    assert "committed on exp/checked: FROZEN program.md" in result.stdout
    assert "uncommitted: APPEND-ONLY human_journal.md" in result.stdout


@given(
    head=st.text(min_size=1).map(lambda t: "# " + t.replace("\n## ", "\n") + "\n\n"),
    entries=st.lists(st.text().map(lambda t: "## " + t.replace("\n## ", "\n") + "\n"), max_size=4),
    added=st.lists(st.text().map(lambda t: "## " + t.replace("\n## ", "\n") + "\n"), max_size=3),
)
def test_prepending_entries_is_always_accepted(head, entries, added):
    old = head + "".join(entries)
    assert guard.journal_grows_at_top(old, head + "".join(added) + "".join(entries))


@given(
    entries=st.lists(st.text(min_size=1).map(lambda t: "## " + t + "\n"), min_size=1, max_size=4),
    data=st.data(),
)
def test_any_edit_or_removal_of_an_old_entry_is_refused(entries, data):
    old = "# Journal\n\n" + "".join(entries)
    start = len("# Journal\n\n")
    i = data.draw(st.integers(start, len(old) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != old[i]))
    assert not guard.journal_grows_at_top(old, old[:i] + replacement + old[i + 1 :])
    j = data.draw(st.integers(i + 1, len(old)))
    assert not guard.journal_grows_at_top(old, old[:i] + old[j:])


@given(rows=st.lists(st.text(alphabet="abc\t1.", min_size=1), min_size=1, max_size=5), data=st.data())
def test_ledger_appends_pass_and_rewrites_fail(rows, data):
    old = "".join(r + "\n" for r in rows)
    assert guard.ledger_grows_at_bottom(old, old + "new\trow\n")
    i = data.draw(st.integers(0, len(old) - 1))
    assert not guard.ledger_grows_at_bottom(old, old[:i] + old[i + 1 :] + "x\n")


# --- scoring from worktrees ---


def test_two_worktrees_scoring_at_once_both_land_in_the_root_ledger(project, small_corpus):
    a, b = new(project, "left"), new(project, "right")
    commit(b, "train.py", (b / "train.py").read_text().replace("lr=3e-3, log_every=10", "lr=2e-3, log_every=10"))
    results = {}
    # two torch processes on two cores: one thread each, no oversubscribed spinning
    one_thread = {"OMP_NUM_THREADS": "1", **small_corpus}
    threads = [
        threading.Thread(target=lambda w=w: results.update({w.name: just(w, "eval", *TINY, env=one_thread)}))
        for w in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), {k: r.stderr[-500:] for k, r in results.items()}
    df = ledger(project)
    assert sorted(df["experiment"].to_list()) == ["left", "right"]
    assert all((project / "runs" / rid).is_dir() for rid in df["run_id"])
    assert not (a / "results.tsv").read_text().count("\n") > 1  # the worktree's copy is untouched
    assert df.filter(df["experiment"] == "right")["commit"][0] == git("rev-parse", "--short=12", "HEAD", cwd=b)


# --- ideas, next, reports, queries ---


def write_ideas(project: Path, n: int, rated: dict[str, float] | None = None) -> None:
    for i in range(n):
        slug = f"idea-{i:02d}"
        rating = (rated or {}).get(slug)
        body = f"# Idea {i}\n\n## Critique\n" + (f"Rating: {rating:g}/10\n" if rating is not None else "Rating: ?/10\n")
        (project / "1_ideas" / f"2026-01-{i % 28 + 1:02d}_{slug}.md").write_text(body)


def test_idea_uses_the_template_and_refuses_a_duplicate(project):
    result = just(project, "idea", "muon", "Muon for the matrices")
    assert result.returncode == 0
    path = next((project / "1_ideas").glob("*_muon.md"))
    text = path.read_text()
    assert text.startswith("# Muon for the matrices") and "{slug}" not in text and "- slug: muon" in text
    assert "exists" in just(project, "idea", "muon", "again").stderr


def test_next_ideates_below_30_ideas_then_implements_the_best_rated_untried(project):
    write_ideas(project, 29, rated={"idea-03": 8, "idea-07": 9.5, "idea-11": 6})
    before = json.loads(just(project, "next", "--json").stdout)
    assert before["mode"] == "IDEATE" and "29 ideas" in before["why"] and before["idea"]["slug"] == "idea-07"
    assert "or score an untried one: idea-07 is the best-rated" in before["why"]
    assert "next: uv run just new idea-07" in just(project, "next").stdout
    assert just(project, "idea", "thirtieth", "The thirtieth idea").returncode == 0
    add_rows(project, dict(experiment="idea-07", val_bpb=2.0, commit="abc"))  # the top idea has results
    after = json.loads(just(project, "next", "--json").stdout)
    assert after["mode"] == "IMPLEMENT" and after["idea"]["slug"] == "idea-03"
    assert "best-rated without results" in after["why"]
    text = just(project, "next").stdout
    assert "mode: IMPLEMENT" in text and "just new idea-03" in text and "best: 2.0000" in text


def test_next_lists_what_is_pending_before_the_mode_in_order(project):
    baseline = [
        dict(experiment="main", val_bpb=v, seed=i, description=f"baseline seed {i}/3")
        for i, v in enumerate((2.0, 2.02, 2.01))
    ]
    add_rows(
        project,
        *baseline,
        dict(experiment="faster", val_bpb=1.9, seed=3),
        dict(experiment="faster", val_bpb=1.91, seed=4),
    )
    text = just(project, "next").stdout
    kinds = [line.split(":")[0] for line in text.splitlines() if line.startswith("pending ")]
    assert kinds == ["pending confirm", "pending report", "pending record"], text
    assert (
        "  uv run just confirm faster" in text
        and "  uv run just report faster" in text
        and "  uv run just record" in text
    )
    assert "queue: not checked (pueue" in text and text.index("pending record") < text.index(
        "mode: IDEATE (once the above"
    )
    state = json.loads(just(project, "next", "--json").stdout)
    assert [p["kind"] for p in state["pending"]] == ["confirm", "report", "record"] and state["mode"] == "IDEATE"

    confirming = [
        dict(experiment="faster", val_bpb=1.9 + s / 1000, seed=DRAWN_SEED + s, description=f"confirm seed {s}")
        for s in (5, 6, 7)
    ]
    mains = [
        dict(experiment="main", val_bpb=2.0 + s / 1000, seed=DRAWN_SEED + s, description=f"confirm faster seed {s}")
        for s in (5, 6, 7)
    ]
    add_rows(project, *confirming, *mains)
    draw(project, "faster", *(DRAWN_SEED + s for s in (5, 6, 7)))
    assert just(project, "report", "faster").returncode == 0 and just(project, "record").returncode == 0
    text = just(project, "next").stdout
    assert "pending" not in text and text.startswith("queue: not checked")


def test_ideas_lists_worktree_results_and_report(project):
    write_ideas(project, 2, rated={"idea-01": 7})
    new(project, "idea-01")
    add_rows(project, dict(experiment="idea-01", val_bpb=2.0, commit="abc"))
    table = {i["slug"]: i for i in json.loads(just(project, "ideas", "--json").stdout)}
    assert table["idea-01"]["rating"] == 7.0
    assert table["idea-01"]["worktree"] and table["idea-01"]["results"] == 1 and not table["idea-01"]["report"]
    assert not table["idea-00"]["worktree"] and table["idea-00"]["rating"] is None


def test_report_contains_the_slugs_rows_the_bar_and_the_diff(project):
    wt = new(project, "wider")
    commit(wt, "model.py", (wt / "model.py").read_text() + "\n# wider\n")
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.5, commit="m1", description="baseline seed 0/1"),
        dict(experiment="wider", val_bpb=2.25, commit="w1", label="Q: wider? H: -0.2"),
        dict(experiment="main", val_bpb=2.75, commit="m2", train_tokens=999, description="baseline seed 0/1"),
        dict(experiment="wider", status="crash", budget_tokens=10**6, error="killed at another budget"),
    )
    assert just(project, "report", "wider").returncode == 0
    text = next((project / "9_reports").glob("*_wider.md")).read_text()
    assert "r1-wider" in text and "Q: wider? H: -0.2" in text
    assert "r0-main" in text and "r2-main" not in text  # main's baseline of the experiment's own group
    assert "r3-wider" not in text and "| budget |" in text and "In one comparable group: cpu, 1,000 tokens" in text
    assert "| code_commit |" in text and "| w1 " in text  # a commit this repository lacks: as recorded
    assert text.count("## main's baseline in the same group") == 1
    assert "model.py" in text and "1 file changed" in text
    assert "no rows" in just(project, "report", "nothing-here").stderr

    before = head_commit(project)
    recorded = just(wt, "record")  # from inside the worktree: the record is main's
    assert recorded.returncode == 0 and "record: committed 2 files on main" in recorded.stdout
    # runs of one code name one commit, whatever the record committed between them; a code change its own
    after, changed = head_commit(project), head_commit(wt)
    code = code_commits(project, [before, after, changed, "0123456789ab"])
    assert after != before and code[after] == code[before] and code[changed] == changed
    assert code["0123456789ab"] == "0123456789ab"  # not in this repository: itself
    assert git("status", "--porcelain", "--", "results.tsv", "9_reports", cwd=project) == ""
    assert git("log", "-1", "--format=%s", "main", cwd=project).startswith("record: 9_reports/")
    assert "nothing new" in just(project, "record").stdout


def test_results_and_best_for_people_and_for_agents(project):
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.5, commit="m1", description="baseline seed 0/2"),
        dict(experiment="main", val_bpb=2.4, commit="m2", description="baseline seed 1/2"),
        dict(experiment="exp-a", val_bpb=2.3, commit="a1"),
        dict(experiment="exp-b", status="crash", commit="b1", error="ValueError: x"),
        dict(experiment="main", val_bpb=3.0, commit="m3", train_tokens=5),
    )
    rows = json.loads(just(project, "results", "3", "--json").stdout)
    assert [r["run_id"] for r in rows] == ["r2-exp-a", "r3-exp-b", "r4-main"]
    assert "r3-exp-b" in just(project, "results").stdout
    best = json.loads(just(project, "best", "--json").stdout)
    assert sorted(g["run_id"] for g in best["groups"]) == ["r2-exp-a", "r4-main"]
    assert best["bar"]["row"]["run_id"] == "r1-main" and best["bar"]["mean"] == pytest.approx(2.45)  # not r4's group
    out = just(project, "best").stdout
    assert (
        "the bar: main's baseline 2.450000 ± 0.070711 (n=2) in cpu, 1,000 tokens" in out
        and "exp-a: inconclusive" in out
    )


def test_best_judges_contenders_with_the_noise_rule(project):
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.50, commit="m1", description="baseline seed 0/3"),
        dict(experiment="main", val_bpb=2.52, commit="m1", description="baseline seed 1/3"),
        dict(experiment="main", val_bpb=2.51, commit="m1", description="baseline seed 2/3"),
        dict(experiment="clear-win", val_bpb=2.30, commit="a1"),
        dict(experiment="lucky-seed", val_bpb=2.495, commit="b1"),
    )
    out = just(project, "best").stdout
    assert "the bar: main's baseline 2.510000" in out
    assert "clear-win: promising" in out and "lucky-seed: inconclusive" in out


# --- submit ---


def test_submit_commits_pushes_and_proposes_a_pr_only_when_it_beats_main(project, tmp_path):
    wt = new(project, "better")
    (wt / "train.py").write_text((wt / "train.py").read_text() + "\n# better\n")
    result = just(project, "submit", "better", "--message", "a better schedule")
    assert result.returncode == 0
    assert git("log", "-1", "--format=%s", cwd=wt) == "exp(better): a better schedule"
    assert "no remote 'origin': nothing pushed" in result.stdout and "no ok rows" in result.stdout
    main_head = git("rev-parse", "main", cwd=project)

    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)
    git("remote", "add", "origin", str(remote), cwd=project)
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.5, commit="m1", description="baseline seed 0/2"),
        dict(experiment="main", val_bpb=2.51, commit="m1", description="baseline seed 1/2"),
        dict(experiment="better", val_bpb=2.0, commit="b1"),
    )
    result = just(project, "submit", "better")
    assert f"origin is a local path ({remote}): nothing pushed there unasked (rerun with --push" in result.stdout
    assert git("branch", "--list", cwd=remote) == ""
    result = just(project, "submit", "better", "--push")
    assert "nothing to commit" in result.stdout and f"pushed exp/better to origin ({remote})" in result.stdout
    assert git("branch", "--list", cwd=remote) == "exp/better"
    assert "better is not confirmed on fresh seeds" in result.stdout and "gh pr create" not in result.stdout
    add_rows(
        project,
        *[
            dict(experiment="better", val_bpb=v, seed=DRAWN_SEED + s, description=f"confirm seed {s}", run_id=f"c{s}")
            for s, v in ((2, 2.0), (3, 2.01), (4, 2.02))
        ],
        *[
            dict(
                experiment="main",
                val_bpb=v,
                seed=DRAWN_SEED + s,
                description=f"confirm better seed {s}",
                run_id=f"m{s}",
            )
            for s, v in ((2, 2.5), (3, 2.51), (4, 2.52))
        ],
    )
    draw(project, "better", *(DRAWN_SEED + s for s in (2, 3, 4)))
    result = just(project, "submit", "better")  # confirmed; the audit finds no runs/ behind hand-made rows
    assert "better on fresh seeds: improved" in result.stdout and "gh pr create" not in result.stdout
    assert result.returncode == 1 and "no pull request: the audit failed" in result.stdout
    assert git("rev-parse", "exp/better", cwd=remote) == git("rev-parse", "HEAD", cwd=wt)
    assert git("rev-parse", "main", cwd=project) == main_head  # never touches main


def test_submit_does_not_propose_a_pr_that_noise_explains(project):
    new(project, "noise")
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.0, commit="m1", description="baseline seed 0/2"),
        dict(experiment="main", val_bpb=2.1, commit="m1", description="baseline seed 1/2"),
        dict(experiment="noise", val_bpb=1.99, commit="w1"),
        dict(experiment="noise", val_bpb=1.90, commit="w1", seed=DRAWN_SEED + 2, description="confirm seed 2"),
        dict(experiment="noise", val_bpb=2.05, commit="w1", seed=DRAWN_SEED + 3, description="confirm seed 3"),
        dict(experiment="main", val_bpb=2.0, commit="m1", seed=DRAWN_SEED + 2, description="confirm noise seed 2"),
        dict(experiment="main", val_bpb=2.01, commit="m1", seed=DRAWN_SEED + 3, description="confirm noise seed 3"),
        dict(experiment="noise", val_bpb=2.0, commit="w1", seed=DRAWN_SEED + 4, description="confirm seed 4"),
        dict(experiment="main", val_bpb=2.02, commit="m1", seed=DRAWN_SEED + 4, description="confirm noise seed 4"),
    )
    draw(project, "noise", *(DRAWN_SEED + s for s in (2, 3, 4)))
    out = just(project, "submit", "noise").stdout
    assert "noise on fresh seeds: inconclusive" in out and "no pull request: not confirmed" in out
    assert "gh pr create" not in out


def test_submit_goes_through_the_guard(project):
    wt = new(project, "sneaky")
    (wt / "eval.py").write_text((wt / "eval.py").read_text() + "\n# sneaky\n")
    result = just(project, "submit", "sneaky")
    assert result.returncode == 2 and "FROZEN eval.py" in result.stderr


def test_recipes_find_the_root_from_a_subfolder_of_a_worktree(project):
    wt = new(project, "deep")
    (wt / "0_docs" / "papers").mkdir(parents=True, exist_ok=True)
    result = just(wt / "0_docs" / "papers", "journal", "from deep inside")
    assert result.returncode == 0 and "from deep inside" in (project / "RESEARCH_JOURNAL.md").read_text()
    assert "· deep" in (project / "RESEARCH_JOURNAL.md").read_text()


def prepend_many(path: str, worker: int, n: int) -> None:
    for i in range(n):
        records.prepend_entry(Path(path), f"## entry {worker}-{i}\n\nbody {worker}-{i}")


def test_concurrent_journal_entries_are_all_kept(tmp_path):
    journal = tmp_path / "RESEARCH_JOURNAL.md"
    journal.write_text("# Research Journal\n\nintro\n\n## old entry\n\nold body\n")
    in_processes(prepend_many, [(str(journal), w, 15) for w in range(4)])
    text = journal.read_text()
    assert text.startswith("# Research Journal\n\nintro\n\n") and text.endswith("## old entry\n\nold body\n")
    assert all(f"body {w}-{i}\n" in text for w in range(4) for i in range(15)) and text.count("## entry") == 60


# --- every help at once ---

RECIPES_WITH_HELP = ["eval", "smoke", "baseline", "confirm", "aa", "determinism", "verify", "compare", "queue", "next"]


@pytest.mark.parametrize("recipe", RECIPES_WITH_HELP)
def test_every_help_prints_without_importing_torch(project, recipe):
    """eval's and smoke's help read train.py's Config from its source; the harness imports torch only to run."""
    result = just(project, recipe, "--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0 and "usage: just " in result.stdout, result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "numpy" in imported or "tyro" in imported  # the import log is there
    assert "torch" not in imported, f"just {recipe} --help imported torch"
    if recipe in ("eval", "smoke"):
        assert "--n-layer INT" in result.stdout and "--lr FLOAT" in result.stdout  # train.Config's fields too


# --- every failure a sentence ---

BAD_ARGUMENTS = [
    ("eval", "nosuchconfig"),
    ("smoke", "nosuchconfig"),
    ("determinism", "nosuchconfig"),
    ("baseline", "--seeds", "1"),
    ("aa", "--experiments", "0"),
    ("confirm", "nosuch"),
    ("compare", "nosuch"),
    ("verify", "nosuch"),
    ("new", "Bad_Slug"),
    ("rm", "nosuch"),
    ("submit", "nosuch"),
    ("queue", "no label", "main"),
    ("status", "--bogus"),
    ("log", "nosuch"),
    ("follow", "nosuch"),
    ("journal", " "),
    ("paper", "no-such-paper"),
    ("idea", "Bad Slug", "title"),
    ("ideas", "--bogus"),
    ("next", "--bogus"),
    ("report", "nosuch"),
    ("record", "--bogus"),
    ("results", "many"),
    ("best", "--bogus"),
    ("profile", "--bogus"),
]


@pytest.mark.parametrize("recipe", BAD_ARGUMENTS, ids=lambda r: " ".join(r))
def test_every_recipe_refuses_a_bad_argument_without_a_traceback(project, recipe):
    result = just(project, *recipe)
    assert result.returncode != 0 and result.stderr.strip()
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert ledger(project).is_empty()


def test_debug_shows_the_traceback(project):
    result = just(project, "verify", "nosuch", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "no run 'nosuch'" in result.stderr


@pytest.mark.parametrize(
    "ends, code",
    [("return 3", 3), ("return None", 0), ("sys.exit(2)", 2), ("sys.exit('no such run')", 1)],
)
def test_an_end_without_teardown_keeps_the_exit_code_and_the_buffered_output(ends, code):
    """eval.py and its workers end through repo.exit_without_teardown: what they printed into a pipe (block-buffered,
    not yet written) still arrives, and the code is the one Python would have ended with."""
    program = (
        "import sys\nfrom repo import exit_without_teardown\n"
        "def main():\n    print('the last line')\n    print('and its error', file=sys.stderr)\n"
        f"    {ends}\n"
        "exit_without_teardown(main)\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe: block-buffered
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=buffered | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == code and result.stdout == "the last line\n"
    assert result.stderr.startswith("and its error\n") and ("no such run" in result.stderr) == (code == 1)
