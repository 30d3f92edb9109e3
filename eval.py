"""The referee: one scored run of this checkout's experiment, and its row. FROZEN (meta-mode only).

Usage:
    uv run just eval [CONFIG] [--config PATH] [--seed 0] [--device cpu|cuda|mps] [--budget-tokens N]
                     [--wall-cap-s S] [--description TEXT] [--nproc N] [--<train.Config field> VALUE ...]
    uv run just smoke [CONFIG] [...]         # eval.py --smoke: the same path on ~30 steps, no row

CONFIG names an entry of `train.CONFIGS` (default: the one named after the device class); `--config PATH`
reads a JSON object of `train.Config` fields instead (a run's `train_config.json` reproduces that run).

What decides the number is referee/core.py, whose hash is every row's eval_sha; the corpus is
referee/data.py; what an experiment must provide is referee/contract.py. This file is the plumbing:

    this process (never imports train.py)            worker processes (referee/worker.py)
    checks the guard and the arguments
    copies the experiment's code to runs/{id}/   ->  training worker(s): load that copy, resolve the Config
    holds both splits; serves training batches  <->  train(cfg, data, device), one batch at a time
    counts them, stops at the budget and the cap <-  the weights, runs/{id}/model.pt
    sends validation inputs, keeps the targets   ->  a scoring worker: the model from the checkpoint alone
    computes val_bpb from the logits            <-  logits, one batch at a time
    runs the probes                              ->  causality in that worker; state in a fresh one
    appends the row to results.tsv under a lock

A crash, a refusal (a probe, or the tripwire of referee/sandbox.py), a timeout, Ctrl-C or a kill still
writes exactly one row; bad input (arguments, config, a train.py that breaks the contract) writes none.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from referee.api import core_sha, evaluate, load_corpus  # noqa: F401  (evaluate, load_corpus: eval.X for measuring tools, as the nanoGPT anchor calls them)
from referee.args import print_help
from referee.spec import RunSpec
from referee.supervisor import (
    ForkServer,
    WallClockExceeded,
    Worker,
    WorkerFailed,
    fork_server,
    score,
    serve_training,
    start_scorers,
    start_workers,
    worker_job,
)
from repo import Terminated, entry_point, exit_without_teardown
from repo.git import checkout_dir, experiment_name, head_commit, tracked_dirty
from repo.guard import install_hooks, require_scoring_allowed
from repo.ledger import (
    LEDGER,
    RUNNING,
    append_result,
    mark_running,
    new_run_id,
    record_killed_runs,
    runs_on_this_machine,
)
from repo.runs import (
    CHECKPOINT,
    LOG,
    METRICS,
    NOTIFY_LOG,
    RUNS,
    SUMMARY,
    TRAIN_CONFIG,
    best_peak_flops,
    minutes,
    new_scratch,
    notify_configured,
    pace_here,
    read_steps,
)

ROOT = Path(__file__).resolve().parent
STARTED = time.perf_counter()  # a run's time, start to row, is what `just plan` and the advice plan with
SMOKE_STEPS, SMOKE_WINDOWS = 30, 64  # just smoke: training steps, and scoring windows spread over the split


def keep_code(code_dir: Path, run_dir: Path) -> None:
    """The experiment's code (the checkout's top-level .py files but the referee's) beside its result: the
    workers load this copy, and `just verify` rebuilds the model from it, whether or not its branch survives."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(code_dir.glob("*.py")):
        if path.name != "eval.py":
            shutil.copyfile(path, run_dir / path.name)


def print_summary(row: dict, summary: dict) -> None:
    print("---")
    for key in "val_bpb unseen_bpb holdout_bpb train_tokens wall_s tokens_per_s mfu peak_mem_gb params_m".split():
        if key == "holdout_bpb" and row.get(key) is None:
            continue  # a confirmation run's only
        value = row.get(key)
        text = repr(value) if key == "val_bpb" else f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key}: {'' if text is None else text}")
    print(f"eval_s: {summary.get('eval_s', 0.0):.1f}")
    print(f"run_s: {summary.get('run_s', 0.0):.1f}")
    print(f"status: {row['status']}")
    print(f"run_id: {row['run_id']}")
    if row.get("error"):
        print(f"error: {row['error']}")


def record(row: dict, summary: dict, run_dir: Path) -> None:
    """The row into the ledger, the summary beside the run's log, the summary block on stdout."""
    append_result(row, ROOT / LEDGER)
    (run_dir / RUNNING).unlink(missing_ok=True)
    summary["run_s"] = time.perf_counter() - STARTED
    (run_dir / SUMMARY).write_text(json.dumps({**row, **summary}, indent=2) + "\n")
    print_summary(row, summary)


def on_sigint(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # one is enough: the command that started this run passes
    raise KeyboardInterrupt  # Ctrl-C on, and a second must not interrupt the row


def hold_signals() -> None:
    """Ignore Ctrl-C and SIGTERM from here on: the run is ending and writes its row, and one signal is enough
    (a terminal's Ctrl-C reaches this process, and the command that started it passes it on too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def end_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux), so that a kill of `uv run just eval`, of `just`, or
    of `just baseline` reaches the run, which records its crash row, instead of leaving it running unseen."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_logging(run_dir: Path) -> None:
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} | {message}", level="INFO", diagnose=False)
    logger.add(run_dir / LOG, format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {message}", diagnose=False)


def read_config_file(path: Path | None) -> list | None:
    """--config PATH, read here: a worker may not open another run's files."""
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file (give a JSON object of train.Config fields)")
    return [str(path), json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> int:
    """The run's checks, its folder and its training workers; then `run`. Whatever happens, the workers end and
    the scratch folder goes; the run's folder stays only with a row."""
    end_with_parent()
    signal.signal(signal.SIGINT, on_sigint)
    argv = sys.argv[1:] if argv is None else argv
    code_dir = checkout_dir()
    help_asked = "-h" in argv or "--help" in argv
    if help_asked:
        print_help(code_dir / "train.py", argv)  # from train.py's source, at once; if it is not plain, a worker's
    spec = RunSpec.from_argv(argv)
    scored = not (spec.smoke or help_asked)
    install_hooks(ROOT)
    if scored:
        require_scoring_allowed(code_dir, ROOT)
        record_killed_runs(ROOT)  # refuses a ledger its row could not be appended to

    experiment = experiment_name(code_dir, ROOT)
    run_id = spec.run_id or new_run_id(experiment)
    if (ROOT / RUNS / run_id).exists():
        run_id += f"-{os.urandom(2).hex()}"  # a queued id used before: `pueue restart` repeats the task's command
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = spec.threads or max(1, cores // spec.nproc)  # fixed for the run: a CPU run's number depends on it
    run_dir = ROOT / RUNS / run_id if scored else Path(tempfile.mkdtemp(prefix="smoke-"))
    keep_code(code_dir, run_dir)
    job = worker_job(
        run_dir,
        run_dir / CHECKPOINT,
        trains=True,
        args=spec.train_argv() + ["--help"] * help_asked,
        config_file=read_config_file(spec.config),
        seed=spec.seed,
        device=spec.device,
        smoke=spec.smoke,
        threads=threads,
    )
    scratch = new_scratch(run_id)
    start_logging(run_dir)
    workers: list[Worker] = []
    server = None
    try:
        workers = start_workers("train", spec.nproc, job, scratch, run_dir / LOG)
        server = fork_server(scratch, run_dir / LOG)  # the scorers' start-up, beside the training worker's
        spec = dataclasses.replace(spec, run_id=run_id)
        return run(spec, workers, server, code_dir, experiment, run_dir, scratch, threads)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run is over: a kill now must not lose its row
        for worker in workers:
            worker.stop()
        if server:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        began = (run_dir / SUMMARY).exists() or (run_dir / RUNNING).exists()  # its row, recorded or to be reaped
        if not scored or not began:  # a smoke run, or bad input: nothing to keep
            shutil.rmtree(run_dir, ignore_errors=True)


def run(
    spec: RunSpec,
    workers: list[Worker],
    server: ForkServer | None,
    code_dir: Path,
    experiment: str,
    run_dir: Path,
    scratch: str,
    threads: int,
) -> int:
    """The phases of a run, in order: the corpus; what the workers resolved (bad input ends here, with no row);
    the row, begun; the log's header; training, then scoring in fresh workers; the row, recorded."""
    import torch

    from referee import core

    torch.set_num_threads(1)  # this process only serves batches and sums losses: the cores are the workers'
    core.check_code_size({path.name: path.stat().st_size for path in run_dir.glob("*.py")})
    t0 = time.perf_counter()
    corpus = load_corpus()  # a source that is missing or unprepared is refused, no row
    data_s = time.perf_counter() - t0
    if spec.confirming and len(corpus.holdout) < 2:
        raise ValueError(
            f"the corpus has no holdout split ({len(corpus.holdout)} bytes), on which a confirmation is judged: "
            f"add files (one in {core.VAL_MODULUS} of the others goes to it)"
        )

    found, cfg, config, refused = handshake(workers, spec)
    preset = core.PRESETS[found["device"]]
    spec = resolved(spec, found["device"], preset, cfg, threads)
    row = first_row(spec, found, config, corpus.fingerprint, head_commit(code_dir), experiment, torch.__version__)
    (run_dir / TRAIN_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    if not spec.smoke:
        mark_running(row, run_dir)
    log_header(spec, row, cfg, corpus, data_s, preset, torch, code_dir)

    # the splits' sizes: how long a confirming run's holdout takes to score, told from any run (repo.runs.pace_here)
    summary: dict = {
        "data_s": data_s,
        "nproc": spec.nproc,
        "val_bytes": len(corpus.val),
        "holdout_bytes": len(corpus.holdout),
    }
    try:
        if refused:
            raise refused
        row.update(
            train_and_score(spec, row["device_name"], workers, server, corpus, run_dir, scratch, preset, summary)
        )
        row["status"], exit_code = "ok", 0
    except WallClockExceeded as e:
        row.update(status="timeout", error=str(e))
        logger.error(f"timeout: {row['error']}")
        exit_code = 1
    except core.MemorizationRefused as e:
        row.update(unseen_bpb=e.scores.unseen_bpb, holdout_bpb=e.scores.holdout_bpb, error=str(e))
        logger.error(f"crash: {row['error']}")
        exit_code = 1
    except (Exception, KeyboardInterrupt) as e:  # Terminated (SIGTERM) too
        hold_signals()
        row["error"] = " ".join((str(e) if isinstance(e, WorkerFailed) else f"{type(e).__name__}: {e}").split())[:500]
        logger.error(f"crash: {row['error']}")
        exit_code = 143 if isinstance(e, Terminated) else 130 if isinstance(e, KeyboardInterrupt) else 1
    hold_signals()
    row.update(summary.pop("measured", {}))
    if spec.smoke:
        return smoke_report(row, run_dir, exit_code)
    record(row, summary, run_dir)
    start_notifier(row["run_id"])
    return exit_code


def start_notifier(run_id: str) -> None:
    """Where a notification hook is set (notify.toml or RESEARCH_NOTIFY), tell it what this row
    is news of, in a process of its own: the referee runs the harness's command and imports none of it, and a slow
    hook holds no run. Its errors go to runs/notify.log."""
    if not notify_configured(ROOT):
        return
    with open(ROOT / RUNS / NOTIFY_LOG, "a") as log:
        subprocess.Popen(
            [sys.executable, "-P", "-m", "harness", "notify", run_id],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def resolved(spec: RunSpec, device: str, preset, cfg: dict, threads: int) -> RunSpec:
    """The spec as the row records it: the device class, the budget and the CPU threads the run used, a wall
    cap only where it lowers the preset's."""
    if spec.wall_cap_s is not None and spec.wall_cap_s > preset.wall_cap_s:
        logger.warning(f"--wall-cap-s {spec.wall_cap_s:g} is above the {device} preset's cap: a cap is only lowered")
    smoke_tokens = SMOKE_STEPS * cfg.get("batch_size", 8) * cfg.get("seq_len", 64)
    return dataclasses.replace(
        spec,
        device=device,
        budget_tokens=spec.budget_tokens or (smoke_tokens if spec.smoke else preset.train_tokens),
        wall_cap_s=spec.wall_cap_s if spec.wall_cap_s and spec.wall_cap_s < preset.wall_cap_s else None,
        threads=threads if device == "cpu" else spec.threads,  # the number of a CPU run depends on it; a GPU run's not
    )


def first_row(spec: RunSpec, found: dict, config: str, data_fp: str, commit: str, experiment: str, torch: str) -> dict:
    """The row as it stands when training starts: a crash row until the run says otherwise."""
    return dict(
        run_id=spec.run_id,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        experiment=experiment,
        config=config,
        commit=commit,
        seed=spec.seed,
        device=spec.device,
        status="crash",
        label=spec.label,
        eval_sha=core_sha(),
        torch=torch,
        budget_tokens=spec.budget_tokens,
        description=spec.description,
        data_fp=data_fp,
        threads=spec.threads if spec.device == "cpu" else None,
        role=spec.role,
        device_name=found["device_name"],  # any run's number depends on the processor's model too
        isolation=found["isolation"],  # what kept the data from the experiment's code: landlock, or the tripwire alone
        spec=spec.to_json(),
    )


def handshake(workers: list[Worker], spec: RunSpec) -> tuple[dict, dict, str, WorkerFailed | None]:
    """What the training workers resolved: the device (its class, its model, the isolation), then the Config and
    its description. A worker's bad input ends the run here, with no row: tyro's help (exit 0) or its error (2),
    both printed, else the error in one line; a refusal while loading the code (the tripwire) is the run's crash."""
    try:
        found = [w.expect("device")[0] for w in workers][0]
    except WorkerFailed as e:
        raise bad_input(e) from e
    try:
        configs = [w.expect("config")[0] for w in workers]
    except WorkerFailed as e:
        if not e.refused:
            raise bad_input(e) from e
        return found, {}, spec.config_name or found["device"], e
    return found, configs[0]["config"], configs[0]["description"], None


def bad_input(e: WorkerFailed) -> BaseException:
    return SystemExit(e.exit_code) if e.exit_code in (0, 2) else ValueError(str(e))


def log_header(spec: RunSpec, row: dict, cfg: dict, corpus, data_s: float, preset, torch, code_dir: Path) -> None:
    dirty = " (dirty)" if tracked_dirty(code_dir) else ""
    logger.info(f"run {spec.run_id} | experiment {row['experiment']} | commit {row['commit']}{dirty}")
    logger.info(f"torch {torch.__version__} | cuda {torch.version.cuda} | device {spec.device} | seed {spec.seed}")
    if row["isolation"] != "landlock":
        logger.warning(
            "the kernel does not confine the workers here (no Landlock): only Python-level hooks keep the data from "
            "the experiment's code, and native code can pass them; the row records isolation=tripwire"
        )
    if spec.device == "cpu":
        logger.info(
            f"threads {spec.threads} per worker: the number depends on it; the row records it and compares only at "
            "this count"
        )
        others, load, cores = runs_on_this_machine(ROOT), os.getloadavg()[0], os.cpu_count() or 1
        if others or load > cores:  # measured on 2 cores: bench/README.md, "Planning on the machine at hand"
            seen = f"{len(others)} other scored run{'s' * (len(others) != 1)} on this machine"
            helps = "one run after the other (`just queue` where pueue is installed)"
            if spec.threads > 1:
                helps = (
                    "--threads 1 (one core a worker: there, 9,500 tokens/s, 2.2 times the pace at 2 threads; its rows "
                    f"compare only with rows at 1 thread), or {helps}"
                )
            logger.warning(
                f"{seen}{' (' + ', '.join(others[:3]) + ')' if others else ''}, load {load:.1f} on {cores} cores: this "
                "run shares them and takes longer (on 2 cores beside one 2-thread training loop, the cpu preset at 2 "
                "threads trained at 4,300 tokens/s instead of 17,700 and scored in 72 s instead of 46). What helps "
                f"here: {helps}. `just plan` measures how long runs take on this machine as busy as it is"
            )
    logger.info(f"config {row['config']} | {cfg}")
    pace = None if spec.smoke else pace_here(ROOT, row)
    if pace is not None:  # the load they met is in it; `just plan` measures the machine as it is now
        logger.info(
            f"like this run here (the newest {pace.runs}: {pace.tokens_per_s:,.0f} tokens/s, scoring "
            f"{pace.eval_s:.0f} s): about {minutes(pace.run_s(spec.budget_tokens, spec.confirming))} start to row"
        )
    logger.info(
        f"budget {spec.budget_tokens:,} tokens | wall cap {spec.wall_cap_s or preset.wall_cap_s:.0f} s | eval context {preset.eval_seq_len}"
        + (f" | {spec.nproc} processes (DDP)" if spec.nproc > 1 else "")
    )
    logger.info(
        f"data {corpus.source} | {corpus.n_files} files | train {len(corpus.train):,} B | val {len(corpus.val):,} B | "
        f"holdout {len(corpus.holdout):,} B ({'scored: a confirmation run' if spec.confirming else 'sealed'}) "
        f"| fp {corpus.fingerprint} | {data_s:.1f} s"
    )


def train_and_score(
    spec: RunSpec, processor: str, workers, server, corpus, run_dir: Path, scratch: str, preset, summary: dict
) -> dict:
    """Training in the training workers, then scoring in two fresh ones (started at the first batch, forked by
    `server` where there is one, so that their start-up overlaps training); the row's measured columns. What
    training measured is kept in summary["measured"] even when scoring fails, so that a crash row still says how
    far it got."""
    from referee import core

    stream = core.BatchStream(corpus.train, spec.budget_tokens, spec.seed, spec.nproc)
    measured = summary["measured"] = {}
    scorers: list[Worker] = []

    def start_scoring() -> None:
        scoring = worker_job(
            run_dir, run_dir / CHECKPOINT, trains=False, seed=spec.seed, device=spec.device, smoke=spec.smoke
        )
        scorers.extend(start_scorers(scoring, scratch, run_dir / LOG, preset.eval_seq_len, server))

    try:
        if server and spec.device == "cpu":
            server.wait_ready()  # its start-up (begun with the training worker's) must not share the measurement
        peak_flops = cpu_peak_flops(processor, spec.threads) if spec.device == "cpu" else None  # else the worker's
        for worker in workers:
            worker.send({"op": "go", "budget_tokens": spec.budget_tokens, "peak_flops": peak_flops})
        t0 = time.perf_counter()
        try:
            done = serve_training(
                workers, stream, spec.wall_cap_s or preset.wall_cap_s, run_dir / METRICS, start_scoring, summary
            )
        finally:
            wall_s = time.perf_counter() - t0
            measured.update(
                train_tokens=stream.tokens_served, wall_s=wall_s, tokens_per_s=stream.tokens_served / wall_s
            )
        for worker in workers:  # none outlives its `done`: a scoring worker's scratch files (what it is shown)
            worker.stop(grace_s=10)  # must not reach a process that writes the persistent compile caches
        if stream.tokens_served == 0:
            raise ValueError(
                f"train() drew no batch: the budget ({spec.budget_tokens:,} tokens) is less than one batch {stream.shape}"
                if stream.shape
                else "train() returned without drawing a batch from data.batches(): a model is trained on the referee's batches"
            )
        measured.update(params_m=done["params"] / 1e6, peak_mem_gb=done["peak_mem_gb"])
        summary["peak_flops"] = peak_flops or done["peak_flops"]
        if done["flops_per_token"] is not None:
            measured["mfu"] = (
                done["flops_per_token"] * stream.tokens_served / wall_s / (summary["peak_flops"] * spec.nproc)
            )
        val = smoke_validation(corpus.val, preset.eval_seq_len) if spec.smoke else corpus.val
        holdout = corpus.holdout if spec.confirming and not spec.smoke else None  # sealed otherwise
        # The memorization probe needs a scored run's whole split: on a slice, and a model of 30 steps (whose
        # unseen windows vary most), chance alone decided it (bench/README.md, "The memorization probe in smoke").
        train = None if spec.smoke else corpus.train
        t0 = time.perf_counter()
        scores = score(
            scorers,
            val,
            preset.eval_seq_len,
            time.monotonic() + preset.wall_cap_s,
            train,
            stream.served,
            holdout,
        )
        summary["eval_s"] = time.perf_counter() - t0
        return dict(val_bpb=scores.val_bpb, unseen_bpb=scores.unseen_bpb, holdout_bpb=scores.holdout_bpb)
    finally:
        for worker in scorers:
            worker.stop()


def cpu_peak_flops(processor: str, threads: int) -> float:
    """MFU's denominator on a CPU: the best float32 matmul rate measured on this processor at `threads` threads, in
    this run or any before (runs/peak-flops.json), since a busy neighbour only ever lowers it. Measured here, in the
    referee's process while the workers wait for their go: never a figure the experiment's process reports."""
    import torch

    from referee.worker import device_peak_flops

    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # its random matrices leave this process's generator as it was
            measured = device_peak_flops(torch.device("cpu"))
    finally:
        torch.set_num_threads(1)  # this process serves batches with one thread (run)
    return best_peak_flops(ROOT, processor, threads, measured)


def smoke_validation(val, seq_len: int):
    """Smoke's share of the validation split: SMOKE_WINDOWS scoring windows spread evenly over it, joined (so each
    window's last target is the next one's first byte). Spread, so that its val_bpb_slice stands for the split:
    the split's first windows alone are easier text (a 30-step cpu model: 4.02 bits per byte there, 4.27 over all)."""
    import torch

    windows = (len(val) - 1) // seq_len
    if windows <= SMOKE_WINDOWS:
        return val
    starts = [seq_len * (k * windows // SMOKE_WINDOWS) for k in range(SMOKE_WINDOWS)]
    return torch.cat([val[s : s + seq_len] for s in starts] + [val[starts[-1] + seq_len :][:1]])


def smoke_report(row: dict, run_dir: Path, exit_code: int) -> int:
    """What `just smoke` prints: the run's checks (the loss fell, the probes passed) and no row."""
    losses = [r["loss"] for r in read_steps(run_dir) if r.get("loss") is not None]
    problem = row.get("error")
    if problem is None and len(losses) < 2:
        problem = f"train.py reported {len(losses)} losses through data.log_step; smoke needs 2 or more"
    elif problem is None and not losses[-1] < losses[0]:
        problem = f"loss did not fall: first {losses[0]:.4f}, last {losses[-1]:.4f}"
    print("---")
    if problem is not None:
        print(f"smoke: failed\nerror: {problem}")
        return exit_code or 1
    print(f"smoke: ok\nloss_first: {losses[0]:.4f}\nloss_last: {losses[-1]:.4f}\nval_bpb_slice: {row['val_bpb']:.4f}")
    print(f"train_tokens: {row['train_tokens']}\nwall_s: {row['wall_s']:.1f}")
    print(
        f"checked: {SMOKE_STEPS} steps of the config with shape checks and strict determinism, the loss fell, "
        f"the causality and state probes on {SMOKE_WINDOWS} validation windows spread over the split"
    )
    return 0


if __name__ == "__main__":
    exit_without_teardown(lambda: entry_point(main, sys.argv[1:]))  # bad input before the run: one line, exit 2, no row
