# Recipes of the research harness. FROZEN (infrastructure): edit only with META_MODE=1.
# Run them as `uv run just RECIPE` from the main checkout or any worktree under 5_worktrees/:
# they always use main's eval.py and harness.py, and the main checkout's environment.

set positional-arguments

root := `git rev-parse --path-format=absolute --git-common-dir | xargs dirname`
export PATH := root / ".venv/bin" + ":" + env_var("PATH")

# list the recipes
default:
    @just --list --unsorted

# --- scoring ---

# train and score one run, append one row to results.tsv: just eval [CONFIG] [--seed 1] [--lr 3e-3 ...]
eval *args:
    @python {{root}}/eval.py "$@"

# fast sanity check with shape checks on, no ledger row: just smoke [CONFIG] [--field value ...]
smoke *args:
    @python {{root}}/harness.py smoke "$@"

# --- development ---

# the test suite (CPU, no network): just test [-k name]
test *args:
    @python -m pytest -q "$@"
