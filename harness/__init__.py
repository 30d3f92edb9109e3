"""The research harness: the workflow around the referee (eval.py), one module per responsibility.
FROZEN (infrastructure): edit only with META_MODE=1.

Run it through the recipes (`uv run just RECIPE`; `uv run just` lists them). Three layers, each importing
only those below it, and one door between the top two (`uv run just lint` holds them to it: import-linter's
contracts in pyproject.toml):

    harness/   the workflow (this package)           reaches the referee only through referee.api
    referee/   eval.py's package: scores a run       its door, api: RunSpec, run, rescore, core_sha, ...
    repo/      git, the ledger, the taxonomy guard   what both need, once; no torch, no polars

The modules of the harness:

    pueue      the pueue client: calls, task states, a task's own label        stdlib
    launch     `just eval`/`smoke`: eval.py, with the pueue task's label       pueue
    advice     every command printed for a person or an agent to run next      referee.api (RunSpec)
    table      the ledger read as polars: groups, the bar, printed tables      repo.ledger, polars
    stats      the rule for "better": t-test, seed plans, power                scipy (inside functions)
    compare    an experiment's rows against main's: compare and confirm        table, stats, advice
    records    ideas, journal, reports, `just record`                          table
    papers     a paper's full text into 0_docs/papers/                         pypdf
    worktrees  one worktree per experiment: new, rm, submit, check             records, compare, audit
    progress   where things stand: results, best, next                         table, compare, records
    queue      labelled runs on pueue: queue, gpus, status, review             pueue, cluster, records, table
    cluster    Slurm jobs through submitit, their states from squeue/sacct     submitit, referee.api
    plots      progress.png and loss curves                                    table, matplotlib
    website    the record as a static site: `just site`                        compare, records, queue, plotly, jinja2
    export     every run for TensorBoard or W&B (offline runs): `just export`  table, compare, tensorboardX, wandb
    notify     the notification hook and the crash streak's circuit breaker   table, stats, advice
    runs       baseline, confirm, A/A, determinism, verify, prepare            referee.api, compare, notify
    plan       `just plan`: this machine's pace, and the protocol's time here  runs, stats
    audit      a claim re-derived from the record: `just audit`, `submit`      compare, runs
    cli        tyro parses each command; one-line errors                       each module, when it runs

No module of the harness imports torch; the door loads the referee's torch modules only when it is called,
so a ledger query starts in under a second.
"""

from repo import Refusal, Terminated  # noqa: F401  (the bottom's: the harness raises them as harness.X)
