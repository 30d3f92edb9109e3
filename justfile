# Recipes of the research harness. FROZEN (infrastructure): edit only with META_MODE=1.
# Run them as `uv run just RECIPE` from the main checkout or any worktree under 5_worktrees/:
# they always use main's eval.py and harness/ package, and the main checkout's environment. `exec`: the
# recipe's shell becomes the python process, so a signal to `just` (or to `uv run`) reaches the run.
# `python -P -m harness`: the package from PYTHONPATH (main's), never a worktree's copy in the current folder.

set positional-arguments

root := `dirname "$(git rev-parse --path-format=absolute --git-common-dir)"`
export PATH := root / ".venv/bin" + ":" + env_var("PATH")
export PYTHONPATH := root

# list the recipes
default:
    @just --list --unsorted

# --- scoring ---

# train and score one run, append one row to results.tsv: just eval [CONFIG] [--seed 1] [--lr 3e-3 ...]
eval *args:
    @exec python -P -m harness.launch "$@"

# download (hf: sources) and prepare eval.py's DATA_SOURCE once; runs then read it offline
prepare:
    @exec python -P -m harness prepare

# fast sanity check through the scored run's workers: ~30 steps, shape checks, causality and state probes, no row: just smoke [CONFIG] [...]
smoke *args:
    @exec python -P -m harness.launch "$@" --smoke

# --- experiments ---

# new worktree 5_worktrees/SLUG on branch exp/SLUG: just new rotary-base
new slug:
    @exec python -P -m harness new -- "$1"

# remove a worktree whose runs are recorded or whose branch is merged: just rm SLUG [--force]
rm slug *args:
    @exec python -P -m harness rm "$@"

# commit a worktree's changes, push, open a PR once confirmed on fresh seeds: just submit SLUG [--message TEXT] [--push]
submit slug *args:
    @exec python -P -m harness submit "$@"

# --- the queue (pueue on one machine, Slurm through submitit on a cluster) ---

# queue a labelled scored run on pueue (or --backend slurm): just queue [--backend slurm ...] "Q: .. H: .." SLUG [EVAL_ARGS]
queue +args:
    @exec python -P -m harness queue "$@"

# one pueue group per visible GPU (gpu0, gpu1, ...), one task at a time each
gpus:
    @exec python -P -m harness gpus

# queued and finished labelled runs (pueue tasks, cluster jobs) with their results: just status [--json]
status *args:
    @exec python -P -m harness status "$@"

# full output of a pueue task or a cluster job: just log ID (a number, slurm-N or local-N)
log id *args:
    @exec python -P -m harness log "$@"

# live tail of a pueue task or a cluster job: just follow ID
follow id *args:
    @exec python -P -m harness follow "$@"

# journal entry (Q, H, observed) for each finished labelled run not reviewed yet
review:
    @exec python -P -m harness review

# after a string of failed runs (the circuit breaker of notify.toml's crash_streak, 3 by default): queue again
resume:
    @exec python -P -m harness resume

# --- the record ---

# prepend a dated entry to RESEARCH_JOURNAL.md: just journal "TEXT" [--observation ..] [--inference ..]
journal text *args:
    @exec python -P -m harness journal "$@"

# a paper's full text into 0_docs/papers/SLUG.md: just paper 2106.09685 (or an arXiv URL, a PDF URL or file) [--slug S]
paper source *args:
    @exec python -P -m harness paper "$@"

# new idea file from the template: just idea SLUG "TITLE"
idea slug title:
    @exec python -P -m harness idea -- "$@"

# list ideas with rating, worktree, results, report: just ideas [--json]
ideas *args:
    @exec python -P -m harness ideas "$@"

# IDEATE or IMPLEMENT, and where things stand: just next [--json]
next *args:
    @exec python -P -m harness next "$@"

# new report prefilled with the slug's rows and diff: just report SLUG
report slug *args:
    @exec python -P -m harness report "$@"

# commit the research record on main (ledger, journal, ideas, reports, papers): just record [--message TEXT]
record *args:
    @exec python -P -m harness record "$@"

# the last N ledger rows: just results [N] [--json]
results *args:
    @exec python -P -m harness results "$@"

# the best row per comparable group, main's baseline (the bar) and the verdicts in its group: just best [--json]
best *args:
    @exec python -P -m harness best "$@"

# --- trustworthy comparisons ---

# score main with N seeds, print mean, std and the smallest effect resolved: just baseline [--seeds N] [EVAL_ARGS...]
baseline *args:
    @exec python -P -m harness baseline "$@"

# how long a run, a baseline, a confirmation and a claim take on this machine, measured now (one small run): just plan [EVAL_ARGS...]
plan *args:
    @exec python -P -m harness plan "$@"

# score this checkout twice with one seed; exit 1 unless identical: just determinism [EVAL_ARGS...]
determinism *args:
    @exec python -P -m harness determinism "$@"

# improved / promising / inconclusive / worse against main's baseline: just compare SLUG [--json]
compare slug *args:
    @exec python -P -m harness compare "$@"

# fresh seeds of SLUG and of main, pair by pair, judged alone at 3 pairs (2 if not ahead): what just submit needs: just confirm SLUG [N]
confirm slug *args:
    @exec python -P -m harness confirm "$@"

# re-derive a confirmed claim from the record, one line per check (rescored bit for bit); exit 1 on a failure: just audit SLUG
audit slug *args:
    @exec python -P -m harness audit "$@"

# A/A check of the rule on this machine: K runs of main's code vs main; exit 1 if too many "improve": just aa [--experiments 20] [EVAL_ARGS...]
aa *args:
    @exec python -P -m harness aa "$@"

# rebuild a run from its checkpoint and the code kept with it, re-score it, exit 1 on mismatch: just verify RUN_ID
verify run_id *args:
    @exec python -P -m harness verify "$@"

# progress.png (metric per run, running best) and runs/*/loss.png
plot:
    @exec python -P -m harness plot

# the research record as a static site in 9_reports/site/ (open index.html; --serve keeps it current): just site [--serve]
site *args:
    @exec python -P -m harness site "$@"

# every run's step metrics and row for a tracker: just export tensorboard (runs/tensorboard/), just export wandb (offline runs in runs/wandb/)
export tool *args:
    @exec python -P -m harness export "$@"

# --- development ---

# the top kernels of a few training steps of this checkout's config (torch.profiler): just profile [--configs NAME]
profile *args:
    @exec python "{{root}}/bench/bench.py" --profile "$@"

# FROZEN / GLOBAL / APPEND-ONLY violations of this checkout (exit 1 if any)
check:
    @exec python -P -m harness check

# the test suite (CPU, no network): just test [-k name]
test *args:
    @python -m pytest -q "$@"

# lint, format check, and the import rules of pyproject.toml (the referee imports no workflow code; ledger queries no torch)
lint:
    @ruff check . && ruff format --check . && lint-imports
