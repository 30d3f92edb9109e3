"""The commands that run the referee: `just baseline`, `just confirm`, `just aa`, `just determinism`,
`just verify` and `just prepare`. Each builds RunSpecs and goes through the referee's one door
(referee/api.py); scored runs are eval.py subprocesses, so each one writes its own row."""

import dataclasses
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import polars as pl
import tyro

from harness import Refusal, notify
from harness.advice import rerun_spec
from harness.compare import (
    CONFIRM_SEEDS,
    confirmation,
    confirmation_rows,
    draw_confirm_seeds,
    exploration_rows,
    record_draw,
)
from harness.stats import ALPHA, SEED_PLANS, Outcome, aa_allowed, noise_report, verdict
from harness.table import baseline_rows, group_name, ledger
from referee import api
from referee.api import Device, RunSpec
from repo.git import checkout_dir, main_root, show, worktree_dir
from repo.ledger import CONFIRM_ROLE, LEDGER, record_killed_runs
from repo.runs import CHECKPOINT, RUNS


def run_eval(cwd: Path, spec: RunSpec) -> dict:
    """One scored run through the referee's door, its row read with the ledger's schema (polars' types)."""
    row = api.run(spec, cwd)
    return ledger(main_root()).filter(pl.col("run_id") == row["run_id"]).row(-1, named=True)


def base_spec(eval_args: list[str], device: str | None) -> RunSpec:
    """The spec of the runs a command repeats over seeds: eval.py's arguments as given, and its --device."""
    spec = RunSpec.from_argv(eval_args)
    return dataclasses.replace(spec, device=device) if device is not None else spec


def load_corpus(prepare: bool = False):
    """The referee's corpus; a source that is missing, unknown or not prepared is a one-line refusal."""
    try:
        return api.load_corpus(prepare)
    except ValueError as e:
        raise Refusal(str(e)) from e


def prepare() -> None:
    """Download (a Hugging Face source) and prepare the referee's DATA_SOURCE, so that runs read it offline."""
    t0 = time.perf_counter()
    corpus = load_corpus(prepare=True)
    print(
        f"prepare: {corpus.source} | {corpus.n_files} files | train {len(corpus.train):,} B | "
        f"val {len(corpus.val):,} B | fp {corpus.fingerprint} | {time.perf_counter() - t0:.1f} s"
    )


@dataclass(frozen=True)
class Baseline:
    """Score main's code with seeds 0..N-1, then print mean, std and the smallest effect the protocol
    resolves. Any other argument is eval.py's: just baseline [--seeds N] [CONFIG] [--budget-tokens ...]"""

    seeds: int | None = None
    """seeds to run (default: the device's seed plan)"""
    device: Device | None = None
    """eval.py's --device; it also picks the seed plan"""

    def __call__(self, eval_args: list[str]) -> None:
        spec = base_spec(eval_args, self.device)
        plan = SEED_PLANS[api.device_class(spec.device)]
        n = self.seeds if self.seeds is not None else plan.baseline
        if n < 2:
            raise Refusal(f"--seeds {n}: a std needs at least 2 seeds")
        root = main_root()
        for seed in range(n):
            out = run_eval(root, spec.rerun(seed, f"baseline seed {seed}/{n}", "baseline"))
            print(f"baseline seed {seed}: val_bpb {out['val_bpb']:.6f} ({out['run_id']})")
        values = baseline_rows(ledger(root), out)["val_bpb"].to_list()
        print("---\n" + "\n".join([f"group: {group_name(out)}", *noise_report(values, plan)]))


def confirm(
    slug: Annotated[str, tyro.conf.arg(metavar="SLUG")],
    n: Annotated[int | None, tyro.conf.arg(metavar="N")] = None,
    /,
) -> None:
    """Score fresh seeds of the experiment SLUG and of main, pair by pair, at the config, device and budget of its
    newest rows, until the confirmation is complete (the device's seed plan, 3 pairs; it stops after 2 when the
    experiment's mean is not below main's); judge those pairs alone. A pair begun whose side failed or was killed
    is finished first, at its own seed.

    Args:
        slug: the experiment (its worktree, 5_worktrees/SLUG)
        n: pairs to run now (default: the rest of the confirmation)
    """
    root = main_root()
    path = worktree_dir(root, slug)
    if not path.is_dir():
        raise Refusal(
            f"no worktree {path}: the code to confirm must be checked out (just new {slug} re-opens exp/{slug})"
        )
    record_killed_runs(root)  # a side killed before it wrote its row gets its crash row now: its pair waits
    df = ledger(root)
    explored = exploration_rows(df, slug)
    if explored.is_empty():
        raise Refusal(f"no ok rows for {slug!r}: score and compare it first (just compare {slug})")
    newest = explored.sort("started_at").row(-1, named=True)
    base = baseline_rows(df, newest)
    if base.is_empty():
        raise Refusal(f"no baseline in {slug}'s group ({group_name(newest)}): run just baseline first")
    done = confirmation_rows(df, slug)
    if done.complete and not done.problems:
        raise Refusal(
            f"{slug}'s confirmation is complete ({done.mine.height} pairs): it is judged once, and another would be "
            f"a second chance for noise (`just compare {slug}` shows its verdict)"
        )
    sides = {slug: (path, newest), "main": (root, base.row(-1, named=True))}

    def run(seed: int, side: str) -> None:
        """One side of a confirming pair; a failure says how the pair is finished."""
        where, row = sides[side]
        description = f"confirm seed {seed}" if side == slug else f"confirm {slug} seed {seed}"
        try:
            out = run_eval(where, rerun_spec(row).rerun(seed, description, f"{CONFIRM_ROLE}{slug}"))
        except Refusal as e:
            raise Refusal(
                f"{e}\n`just confirm {slug}` runs it again at seed {seed}: a pair begun is never dropped"
            ) from e
        print(f"{side} at seed {seed}: val_bpb {out['val_bpb']:.6f} ({out['run_id']})")

    for seed, missing in done.waiting:  # a pair begun is finished at its own seed, never dropped for a fresh one
        print(f"seed {seed}: its pair waits for {' and '.join(missing)}; run again at that seed")
        for side in missing:
            run(seed, side)
    done = confirmation_rows(ledger(root), slug)
    todo = n if n is not None else SEED_PLANS[newest["device"]].confirm - done.mine.height
    for _ in range(todo if not done.complete else 0):
        (seed,) = draw_confirm_seeds(ledger(root), 1)  # fresh: no row used it, and no one could screen it
        record_draw(root, slug, seed)  # the pair has begun: whatever ends a side, it waits at this seed
        for side in sides:
            run(seed, side)
        if confirmation_rows(ledger(root), slug).complete:
            break  # judged at the plan's pairs, or stopped: the experiment was not ahead after FUTILE_AFTER pairs
    result = confirmation(ledger(root), slug)
    print(f"---\n{slug} on fresh seeds: {result.outcome}\n{result.why}\n{result.advice}")
    notify.confirmed(root, slug, result)


AA_ARGS = ["tiny", "--budget-tokens", "100000"]  # `just aa` with no EVAL_ARGS: main's tiny config, a small budget


@dataclass(frozen=True)
class Aa:
    """The rule's A/A check on this machine: a baseline and K experiments, all main's code on fresh seeds
    (the device's seed plan), each judged by the rule; exit 1 when more are called improved than the rule
    allows in 99% of A/A checks. Any other argument is eval.py's (default: tiny --budget-tokens 100000)."""

    experiments: int = 20
    """K, the A/A experiments"""
    device: Device | None = None
    """eval.py's --device; it also picks the seed plan"""

    def __call__(self, eval_args: list[str]) -> None:
        k = self.experiments
        spec = base_spec(eval_args or AA_ARGS, self.device)
        if k < 1:
            raise Refusal(f"--experiments {k}: give at least 1 experiment")
        root = main_root()
        plan = SEED_PLANS[api.device_class(spec.device)]
        df = ledger(root)
        below = df.filter(pl.col("seed") < CONFIRM_SEEDS.start)["seed"]
        seeds = iter(itertools.count(0 if below.is_empty() else below.max() + 1))
        t0 = time.perf_counter()

        def scored(description: str) -> float:
            seed = next(seeds)
            return run_eval(root, spec.rerun(seed, f"aa {description} seed {seed}", "aa"))["val_bpb"]

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


@dataclass(frozen=True)
class Determinism:
    """Score this checkout's code twice with the same seed; exit 1 unless the two val_bpb are bitwise
    identical. Any argument is eval.py's: just determinism [CONFIG] [--seed 1 ...]"""

    def __call__(self, eval_args: list[str]) -> None:
        here, spec = checkout_dir(), RunSpec.from_argv(eval_args)
        first, second = (
            run_eval(here, spec.rerun(spec.seed, f"determinism check {i}/2", "determinism")) for i in (1, 2)
        )
        a, b = first["val_bpb"], second["val_bpb"]
        print(f"---\nfirst: {a!r} ({first['run_id']})\nsecond: {b!r} ({second['run_id']})")
        if a != b:
            print(f"deterministic: no (difference {b - a:+.3g})")
            raise SystemExit(1)
        print("deterministic: yes (bitwise identical val_bpb)")


def verify(run_id: str, /) -> None:
    """Rebuild a run's model from its checkpoint with the train.py and model.py kept beside it (runs older
    than that: from its commit), re-score it with the current referee, and exit 1 unless it reproduces
    the row's val_bpb."""
    root = main_root()
    rows = ledger(root).filter(pl.col("run_id") == run_id)
    if rows.is_empty():
        raise Refusal(f"no run {run_id!r} in {LEDGER}: `just results` lists them")
    row = rows.row(0, named=True)
    scores, device_name, code = rescore_row(root, row)
    val_bpb = scores.val_bpb
    tolerance = 1e-6 if api.device_class(row["device"]) == "cpu" else 1e-4
    print(f"---\nrecorded: {row['val_bpb']!r}\nrescored: {val_bpb!r}\ndifference: {val_bpb - row['val_bpb']:+.3g}")
    differs = what_differs(row, device_name)
    for line in differs:
        print(line)
    print(f"code: {code}")
    if abs(val_bpb - row["val_bpb"]) > tolerance:
        why = (
            f": {', '.join(line.split(':')[0] for line in differs)} differ{'s' * (len(differs) == 1)}"
            if differs
            else ""
        )
        print(f"verify: MISMATCH — run {run_id} does not reproduce its recorded val_bpb (tolerance {tolerance:g}){why}")
        raise SystemExit(1)
    print(f"verify: ok (within {tolerance:g})")


def rescore_row(root: Path, row: dict, holdout: bool = False):
    """A row's run scored again from its checkpoint and the code kept beside it (runs older than that: the code of
    its commit), with the holdout too when asked: (Scores, the processor, the code's folder). A Refusal when
    something needed is gone; a ValueError when the referee refuses the model (a probe, the code cap)."""
    if row["status"] != "ok":
        raise Refusal(f"run {row['run_id']} ended {row['status']}: there is no metric to verify")
    run_dir = root / RUNS / row["run_id"]
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        raise Refusal(f"{checkpoint} is missing: runs/ is local to the machine that scored the run")
    code = run_dir
    if not (run_dir / "train.py").exists():  # scored before runs kept their code
        code = Path(tempfile.mkdtemp(prefix=f"verify-{row['run_id']}-"))
        for name in ("model.py", "train.py"):
            blob = show(f"{row['commit']}:{name}", root)
            if blob is None:
                raise Refusal(f"{run_dir} has no train.py, and commit {row['commit']} is not in this repository")
            (code / name).write_bytes(blob)
    corpus = load_corpus()
    if corpus.fingerprint != row["data_fp"]:
        raise Refusal(f"the corpus changed: fingerprint {corpus.fingerprint}, the row has {row['data_fp']}")
    device = api.device_class(row["device"])
    scores, device_name = api.rescore(code, checkpoint, device, corpus, row["threads"], holdout)
    return scores, device_name, code


def what_differs(row: dict, device_name: str) -> list[str]:
    """What decides a number besides the checkpoint and the code, where this rescoring differs from the row:
    the referee's core, the processor, the thread count, torch. A row too old to name one is said so."""
    here = dict(eval_sha=api.core_sha(), device_name=device_name, torch=api.torch_version())
    names = dict(eval_sha="referee core", device_name="processor", torch="torch")
    lines = [
        f"{names[key]}: {row[key] or '(not recorded)'} then, {value} now"
        for key, value in here.items()
        if row.get(key) != value
    ]
    if row["device"] == "cpu" and row.get("threads") is None:
        lines.append("threads: (not recorded) then, this machine's cores now")
    return lines
