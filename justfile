# Recipes of the research harness. FROZEN (infrastructure): edit only with META_MODE=1.
# Run them as `uv run just RECIPE` from the main checkout or any worktree under 5_worktrees/:
# they always use main's eval.py and harness.py, and the main checkout's environment. `exec`: the
# recipe's shell becomes the python process, so a signal to `just` (or to `uv run`) reaches the run.

set positional-arguments

root := `dirname "$(git rev-parse --path-format=absolute --git-common-dir)"`
export PATH := root / ".venv/bin" + ":" + env_var("PATH")

# list the recipes
default:
    @just --list --unsorted

# --- scoring ---

# train and score one run, append one row to results.tsv: just eval [CONFIG] [--seed 1] [--lr 3e-3 ...]
eval *args:
    @exec python "{{root}}/eval.py" "$@"

# download (hf: sources) and prepare eval.py's DATA_SOURCE once; runs then read it offline
prepare:
    @exec python "{{root}}/harness.py" prepare

# fast sanity check with shape checks on, no ledger row: just smoke [CONFIG] [--field value ...]
smoke *args:
    @exec python "{{root}}/harness.py" smoke "$@"

# --- experiments ---

# new worktree 5_worktrees/SLUG on branch exp/SLUG: just new rotary-base
new slug:
    @exec python "{{root}}/harness.py" new -- "$1"

# remove a worktree whose runs are recorded or whose branch is merged: just rm SLUG [--force]
rm slug *args:
    @exec python "{{root}}/harness.py" rm "$@"

# commit a worktree's changes, push, open a PR once confirmed on fresh seeds: just submit SLUG [--message TEXT]
submit slug *args:
    @exec python "{{root}}/harness.py" submit "$@"

# --- the queue (pueue on one machine, Slurm through submitit on a cluster) ---

# queue a labelled scored run on pueue (or --backend slurm): just queue [--backend slurm ...] "Q: .. H: .." SLUG [EVAL_ARGS]
queue +args:
    @exec python "{{root}}/harness.py" queue "$@"

# one pueue group per visible GPU (gpu0, gpu1, ...), one task at a time each
gpus:
    @exec python "{{root}}/harness.py" gpus

# queued and finished labelled runs (pueue tasks, cluster jobs) with their results: just status [--json]
status *args:
    @exec python "{{root}}/harness.py" status "$@"

# full output of a pueue task or a cluster job: just log ID (a number, slurm-N or local-N)
log id:
    @exec python "{{root}}/harness.py" log "$1"

# live tail of a pueue task or a cluster job: just follow ID
follow id:
    @exec python "{{root}}/harness.py" follow "$1"

# journal entry (Q, H, observed) for each finished labelled run not reviewed yet
review:
    @exec python "{{root}}/harness.py" review

# --- the record ---

# prepend a dated entry to RESEARCH_JOURNAL.md: just journal "TEXT" [--observation ..] [--inference ..]
journal text *args:
    @exec python "{{root}}/harness.py" journal "$@"

# a paper's full text into 0_docs/papers/SLUG.md: just paper 2106.09685 (or an arXiv URL, a PDF URL or file) [--slug S]
paper source *args:
    @exec python "{{root}}/harness.py" paper "$@"

# new idea file from the template: just idea SLUG "TITLE"
idea slug title:
    @exec python "{{root}}/harness.py" idea -- "$@"

# list ideas with rating, worktree, results, report: just ideas [--json]
ideas *args:
    @exec python "{{root}}/harness.py" ideas "$@"

# IDEATE or IMPLEMENT, and where things stand: just next [--json]
next *args:
    @exec python "{{root}}/harness.py" next "$@"

# new report prefilled with the slug's rows and diff: just report SLUG
report slug:
    @exec python "{{root}}/harness.py" report "$1"

# commit the research record on main (ledger, journal, ideas, reports, papers): just record [--message TEXT]
record *args:
    @exec python "{{root}}/harness.py" record "$@"

# the last N ledger rows: just results [N] [--json]
results *args:
    @exec python "{{root}}/harness.py" results "$@"

# the best row per comparable group, main's baseline (the bar) and the verdicts in its group: just best [--json]
best *args:
    @exec python "{{root}}/harness.py" best "$@"

# --- trustworthy comparisons ---

# score main with N seeds, print mean, std and the smallest effect resolved: just baseline [N] [EVAL_ARGS...]
baseline *args:
    @exec python "{{root}}/harness.py" baseline "$@"

# score this checkout twice with one seed; exit 1 unless identical: just determinism [EVAL_ARGS...]
determinism *args:
    @exec python "{{root}}/harness.py" determinism "$@"

# improved / promising / inconclusive / worse against main's baseline: just compare SLUG [--json]
compare slug *args:
    @exec python "{{root}}/harness.py" compare "$@"

# score N fresh seeds of SLUG and of main, judged alone: what just submit needs: just confirm SLUG [N]
confirm slug *args:
    @exec python "{{root}}/harness.py" confirm "$@"

# A/A check of the rule on this machine: K runs of main's code vs main; exit 1 if too many "improve": just aa [K=20] [EVAL_ARGS...]
aa *args:
    @exec python "{{root}}/harness.py" aa "$@"

# rebuild a run from its checkpoint and commit, re-score it, exit 1 on mismatch: just verify RUN_ID
verify run_id:
    @exec python "{{root}}/harness.py" verify "$1"

# progress.png (metric per run, running best) and runs/*/loss.png
plot:
    @exec python "{{root}}/harness.py" plot

# --- development ---

# the top kernels of a few training steps of this checkout's config (torch.profiler): just profile [--configs NAME]
profile *args:
    @exec python "{{root}}/bench/bench.py" --profile "$@"

# FROZEN / GLOBAL / APPEND-ONLY violations of this checkout (exit 1 if any)
check:
    @exec python "{{root}}/harness.py" check

# the test suite (CPU, no network): just test [-k name]
test *args:
    @python -m pytest -q "$@"

# lint and format check
lint:
    @ruff check . && ruff format --check .
