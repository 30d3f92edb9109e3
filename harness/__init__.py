"""The research harness: the workflow around the referee (eval.py), one module per responsibility.
FROZEN (infrastructure): edit only with META_MODE=1.

Run it through the recipes (`uv run just RECIPE`; `uv run just` lists them). The modules, and what each
may import (`uv run just lint` checks it: import-linter and ruff's banned-api, set in pyproject.toml):

    git        the one git layer (GitPython), slugs and worktree paths       GitPython
    ledger     results.tsv: its schema, rows, locked append, killed runs       stdlib, filelock
    guard      the file taxonomy: FROZEN, GLOBAL, APPEND-ONLY; scoring guard   git, ledger
    pueue      the pueue client: calls, task states, a run's own label         stdlib
    table      the ledger read as polars: groups, the bar, printed tables      ledger, polars
    stats      the rule for "better": t-test, seed plans, power                scipy (inside functions)
    compare    an experiment's rows against main's: compare and confirm        git, table, stats
    records    ideas, journal, reports, `just record`                          git, guard, ledger, table
    papers     a paper's full text into 0_docs/papers/                         git, pypdf
    worktrees  one worktree per experiment: new, rm, submit, check             git, guard, records, compare
    progress   where things stand: results, best, next                         table, compare, records
    queue      labelled runs on pueue: queue, gpus, status, review             pueue, cluster, records, table
    cluster    Slurm through submitit                                          submitit
    plots      progress.png and loss curves                                    table, matplotlib
    website    the record as a static site: `just site`                        compare, records, queue, plotly, jinja2
    export     every run as TensorBoard event files: `just export tensorboard` table, tensorboardX
    runs       smoke, baseline, confirm, A/A, determinism, verify, prepare     the referee (torch), compare
    cli        tyro parses each command; one-line errors                       each module, when it runs

Only `runs` imports the referee or torch, so ledger queries start in under a second; the referee
imports only git, ledger, guard and pueue.
"""


class Refusal(ValueError):
    """A command refused: the message says what, which rule, and how to proceed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to a harness command (a queue's or a scheduler's kill): handled as Ctrl-C is, and passed on to
    the run in progress, which writes its own row."""
