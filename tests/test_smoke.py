"""End to end: the real `just eval` / `just smoke` as subprocesses in a temporary copy of the project,
on tiny budgets. Asserts the printed block, the ledger row and the run folder."""

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import JUST, block, child_env, git, just, ledger, run
from referee import data
from referee.spec import RunSpec
from repo.ledger import RESULTS_COLUMNS, RUNNING
from repo.runs import new_scratch, read_steps

TINY = ["tiny", "--budget-tokens", "6000"]


def test_eval_prints_the_block_writes_one_row_and_a_run_folder(project):
    result = just(project, "eval", *TINY, "--description", "a first run, with spaces")
    assert result.returncode == 0, result.stderr
    out = block(result.stdout)
    assert {"val_bpb", "train_tokens", "wall_s", "tokens_per_s", "mfu", "peak_mem_gb", "run_id"} <= set(out)
    df = ledger(project)
    assert df.height == 1
    r = df.row(0, named=True)
    assert r["status"] == "ok" and r["experiment"] == "main" and r["config"] == "tiny" and r["device"] == "cpu"
    assert r["run_id"] == out["run_id"] and repr(r["val_bpb"]) == out["val_bpb"] and 2.0 < r["val_bpb"] < 8.0
    assert r["train_tokens"] == int(out["train_tokens"]) == 5632  # whole batches of 8 x 64 within 6000
    assert r["commit"] == git("rev-parse", "--short=12", "HEAD", cwd=project)
    assert r["eval_sha"] == git("hash-object", "referee/core.py", cwd=project)  # the core alone
    assert r["data_fp"] == data.load_corpus().fingerprint
    assert r["description"] == "a first run, with spaces" and r["label"] is None
    assert r["threads"] == len(os.sched_getaffinity(0))  # the cores here, fixed for the run and recorded
    assert r["role"] == "exploration"  # a plain run; baseline, confirm, aa and determinism write their own
    first = dict(  # the first processor of /proc/cpuinfo: the one the run names, with what its kernels depend on
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines())
    )
    family = f"family {first['cpu family']} model {first['model']}, " if "cpu family" in first else ""
    assert r["device_name"] == f"{first['model name']} ({family}{torch.backends.cpu.get_cpu_capability()})"
    assert r["mfu"] > 0 and r["tokens_per_s"] > 0 and r["params_m"] > 0 and r["peak_mem_gb"] > 0
    run_dir = project / "runs" / r["run_id"]
    kept = {"train.log", "metrics.jsonl", "train_config.json", "summary.json", "model.pt", "train.py", "model.py"}
    assert kept <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "train.py").read_bytes() == (project / "train.py").read_bytes()  # the code that made the row
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == 10 and all(math.isfinite(m["loss"]) for m in metrics)
    assert json.loads((run_dir / "train_config.json").read_text())["n_layer"] == 2
    assert "step 0/11 | loss" in (run_dir / "train.log").read_text()


def test_same_seed_same_metric_a_saved_config_reproduces_and_overrides_are_recorded(project, small_corpus):
    label = "Q: wider? H: -0.01 bpb"
    assert just(project, "eval", *TINY, "--label", label, env=small_corpus).returncode == 0
    first = ledger(project).row(0, named=True)
    assert first["label"] == label and first["seed"] == 0
    saved = project / "runs" / first["run_id"] / "train_config.json"
    assert just(project, "eval", f"--config={saved}", "--budget-tokens", "6000", env=small_corpus).returncode == 0
    wider = ("--seed", "1", "--d-model", "96", "--threads", "1")
    assert just(project, "eval", *TINY, *wider, env=small_corpus).returncode == 0
    _, again, other = ledger(project).iter_rows(named=True)
    assert again["config"] == str(saved) and again["val_bpb"] == first["val_bpb"]  # same seed: bitwise equal
    assert other["config"] == "tiny:d_model=96" and other["val_bpb"] != first["val_bpb"] and other["label"] is None
    assert other["threads"] == 1
    spec = RunSpec.from_json(other["spec"])  # the run as data: what a rerun copies
    assert spec.overrides == {"d_model": "96"} and (spec.seed, spec.threads, spec.run_id) == (1, 1, other["run_id"])
    assert RunSpec.from_json(again["spec"]).config == saved and RunSpec.from_json(first["spec"]).label == label


def commit_change(project, path, old, new):
    text = (project / path).read_text()
    assert old in text
    (project / path).write_text(text.replace(old, new))
    git("commit", "-qam", f"edit {path}", cwd=project)


def test_a_nan_loss_writes_one_crash_row(project):
    commit_change(project, "train.py", "loss.backward()", "loss = loss * float('nan')\n        loss.backward()")
    result = just(project, "eval", *TINY)
    assert result.returncode == 1
    r = ledger(project).row(0, named=True)
    assert r["status"] == "crash" and "non-finite loss nan at step 0" in r["error"] and r["val_bpb"] is None
    assert block(result.stdout)["status"] == "crash"
    log = (project / "runs" / r["run_id"] / "train.log").read_text()  # the worker's last lines, its traceback
    assert "Traceback" in log and "non-finite loss nan at step 0" in log.split("Traceback", 1)[1]


def test_a_model_that_peeks_ahead_is_refused(project):
    commit_change(project, "model.py", "is_causal=True", "is_causal=False")
    assert just(project, "eval", *TINY).returncode == 1
    r = ledger(project).row(0, named=True)
    assert r["status"] == "crash" and "not causal" in r["error"] and r["val_bpb"] is None


def test_a_scoring_worker_that_dies_without_a_word_leaves_a_crash_row_with_its_exit_code(project):
    """A scorer forked by the fork server (Linux) is not the referee's child: its exit code comes back through
    the server, as a started worker's does through waitpid."""
    dies = "        if not self.training:\n            import os\n\n            os._exit(3)\n        return self.head("
    commit_change(project, "model.py", "        return self.head(", dies)
    assert just(project, "eval", *TINY).returncode == 1
    r = ledger(project).row(0, named=True)
    assert r["status"] == "crash" and r["error"] == "the score worker exited with code 3 (its output is above)"


def test_the_wall_clock_cap_writes_a_timeout_row(project):
    result = just(project, "eval", "tiny", "--budget-tokens", "100000000", "--wall-cap-s", "2")
    assert result.returncode == 1
    r = ledger(project).row(0, named=True)
    assert r["status"] == "timeout" and "wall-clock cap" in r["error"] and 0 <= r["train_tokens"] < 10**8


def test_a_budget_the_cap_cannot_hold_ends_early_saying_what_fits(project):
    # Projected from the pace of its first step lines, not found out at the cap.
    result = just(project, "eval", "tiny", "--budget-tokens", "100000000", "--wall-cap-s", "300")
    assert result.returncode == 1
    r = ledger(project).row(0, named=True)
    assert r["status"] == "timeout" and "would pass the wall-clock cap of 300 s" in r["error"], r["error"]
    assert "tokens fit (--budget-tokens)" in r["error"] and r["train_tokens"] < 10**8


def start_long_run(project, *args: str) -> subprocess.Popen:
    """A recipe whose run trains for minutes, in a session of its own, as a terminal would start it. Its budget
    must be one the wall cap holds, or the pace check ends the run after its first step lines."""
    return subprocess.Popen(
        [JUST, *args], cwd=project, env=child_env(), start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_until_training(project) -> None:
    for _ in range(600):
        time.sleep(0.1)
        log = next((project / "runs").glob("*/train.log"), None) if (project / "runs").exists() else None
        if log is not None and "step 10/" in log.read_text():
            return
    raise AssertionError("the run never started training")


def kill_group(proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def interrupt(proc) -> None:
    """Ctrl-C to the command's group, as a terminal sends it: its run ends with a crash row and removes its workers'
    folder, which a SIGKILL would leave in the temporary folder."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=120)
    kill_group(proc)


def stop_once_training(project, proc, sig) -> None:
    wait_until_training(project)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does: the whole foreground group
    else:  # what `pueue kill` or a scheduler does: SIGTERM to the Python process alone
        python = subprocess.run(["pgrep", "-s", str(proc.pid), "python"], capture_output=True, text=True)
        subprocess.run(["kill", "-TERM", *python.stdout.split()], check=True)
    proc.communicate(timeout=120)


@pytest.mark.parametrize("sig, error", [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, "Terminated")])
def test_ctrl_c_or_a_kill_still_writes_exactly_one_row(project, sig, error):
    proc = start_long_run(project, "eval", "tiny", "--budget-tokens", "2000000")
    try:
        stop_once_training(project, proc, sig)
    finally:
        kill_group(proc)  # never leave a training run behind
    df = ledger(project)
    assert df.height == 1
    r = df.row(0, named=True)
    assert r["status"] == "crash" and r["error"].startswith(error)
    assert not list(Path(tempfile.gettempdir()).glob(f"worker-{r['run_id']}-*"))  # its workers' folder removed
    lines = (project / "results.tsv").read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == len(RESULTS_COLUMNS) for line in lines)


def test_a_run_beside_another_on_this_machine_says_so(project, small_corpus):
    # The cpu preset on a budget its wall cap holds even on a busy machine (a longer one would end at once).
    proc = start_long_run(project, "eval", "--budget-tokens", "2000000")
    try:
        for _ in range(600):
            if (project / "runs").exists() and list((project / "runs").glob(f"*/{RUNNING}")):
                break
            time.sleep(0.1)
        result = just(project, "eval", *TINY, "--threads", "2", env=small_corpus)
    finally:
        interrupt(proc)
    assert result.returncode == 0, result.stderr
    others = re.search(r"(\d+) other scored runs? on this machine \(([^)]*)\), load", result.stderr)
    assert others and int(others[1]) >= 1 and others[2].startswith("20"), result.stderr  # its run id
    assert "--threads 1" in result.stderr and "just queue" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "tpu"),
        (["--budget-tokens", "-5"], "--budget-tokens -5: must be a positive"),
        (["--bogus-flag", "1"], "just eval --help"),
        (["tiny", "--lr", "-1"], "--lr -1.0: must be > 0"),
        (["tiny", "--warmup-frac", "1"], "--warmup-frac 1.0: must be in [0, 1)"),
        (["tiny", "--d-head", "48"], "--d-model 32 is not a multiple of --d-head 48"),
        (["nosuchconfig"], "unknown config 'nosuchconfig'; train.CONFIGS has ['cpu', 'cuda', 'mps', 'tiny']"),
    ],
)
def test_bad_input_is_a_clear_error_and_no_row(project, args, message):
    result = run([sys.executable, "eval.py", *args], cwd=project)
    assert result.returncode == 2
    assert message in result.stderr
    assert ledger(project).is_empty()


def test_a_role_no_command_writes_is_refused_before_anything_runs(project):
    result = run([sys.executable, "eval.py", *TINY, "--role", "baseline seed"], cwd=project)
    assert result.returncode == 2 and "--role: role='baseline seed' is not one of" in result.stderr
    assert ledger(project).is_empty()


def test_uncommitted_code_is_refused_before_anything_runs(project):
    (project / "train.py").write_text((project / "train.py").read_text() + "\n# an uncommitted idea\n")
    result = just(project, "eval", *TINY)
    assert result.returncode == 2 and "uncommitted Python code" in result.stderr and "train.py" in result.stderr
    assert ledger(project).is_empty()


def test_the_training_worker_starts_before_the_referee_loads_torch(project):
    """A worker's start-up (torch, its compiler) is the longest wait of a short run: the referee starts the training
    worker before it imports torch itself, so that the two imports share the cores instead of taking turns."""
    script = (
        "import sys, eval\n"
        "def start_workers(*args):\n"
        "    print('torch imported at the start:', 'torch' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "eval.start_workers = start_workers\n"
        "eval.main(['tiny'])\n"
    )
    result = run([sys.executable, "-c", script], cwd=project)
    assert result.returncode == 0 and result.stdout == "torch imported at the start: False\n", result.stderr
    assert not (project / "runs").exists() or not any((project / "runs").glob("*-main-*"))  # no row, no run folder


def test_the_peak_is_measured_once_the_fork_server_has_started(project, small_corpus):
    """The referee measures the processor's matmul rate (MFU's denominator) while the workers wait for their go; the
    scorers' fork server starts with the training worker, and its start-up must not share that measurement (the
    first run of a fresh clone measured a third of the rate beside it, and reported an MFU of 0.9)."""
    script = (
        "import eval\n"
        "from referee import supervisor\n"
        "servers, measure = [], eval.cpu_peak_flops\n"
        "def fork_server(*args):\n"
        "    servers.append(supervisor.fork_server(*args))\n"
        "    return servers[-1]\n"
        "def cpu_peak_flops(*args):\n"
        "    print('the fork server ready:', [server.ready for server in servers], flush=True)\n"
        "    return measure(*args)\n"
        "eval.fork_server, eval.cpu_peak_flops = fork_server, cpu_peak_flops\n"
        "raise SystemExit(eval.main(['tiny', '--budget-tokens', '3000']))\n"
    )
    result = run([sys.executable, "-c", script], cwd=project, env=small_corpus)
    assert result.returncode == 0 and "the fork server ready: [True]\n" in result.stdout, result.stderr


def test_scorers_spawned_where_there_is_no_fork_server_give_the_same_number(project, small_corpus):
    """Where there is no fork server (no pidfd: macOS) each scorer is a process of its own, started as the training
    worker is: the same run scores the same val_bpb, to the bit, either way."""
    assert just(project, "eval", "tiny", "--budget-tokens", "3000", env=small_corpus).returncode == 0
    script = (
        "import eval\n"
        "eval.fork_server = lambda *args: None\n"
        "raise SystemExit(eval.main(['tiny', '--budget-tokens', '3000']))\n"
    )
    result = run([sys.executable, "-c", script], cwd=project, env=small_corpus)
    assert result.returncode == 0, result.stderr
    forked, spawned = ledger(project).to_dicts()
    assert spawned["status"] == forked["status"] == "ok" and spawned["val_bpb"] == forked["val_bpb"]


def test_mfu_divides_by_the_best_peak_measured_on_this_processor(project, small_corpus):
    """A CPU's peak FLOP/s is measured in each run, and a busy neighbour only ever lowers it: MFU divides by the best
    measured so far on the processor at those threads (runs/peak-flops.json), in the row and the step lines alike."""
    assert just(project, "eval", "tiny", "--budget-tokens", "3000", env=small_corpus).returncode == 0
    peaks = project / "runs" / "peak-flops.json"
    ((key, measured),) = json.loads(peaks.read_text()).items()
    first = ledger(project).row(-1, named=True)
    assert measured > 0 and first["device_name"] in key and key.endswith(f", {first['threads']} threads")
    peaks.write_text(json.dumps({key: measured * 1000}))  # as if measured once on an idle machine
    assert just(project, "eval", "tiny", "--budget-tokens", "3000", "--seed", "1", env=small_corpus).returncode == 0
    second = ledger(project).row(-1, named=True)
    run_dir = project / "runs" / second["run_id"]
    assert json.loads((run_dir / "summary.json").read_text())["peak_flops"] == measured * 1000
    assert json.loads(peaks.read_text()) == {key: measured * 1000}  # a lower measurement never replaces it
    # MFU over tokens/s is the model's FLOPs per token over the peak: a thousandth of the first run's, whatever the
    # speed of either run (a step's speed differs from a whole run's, and runs differ from each other)
    per_token = pytest.approx(first["mfu"] / first["tokens_per_s"] / 1000, rel=1e-3)
    assert second["mfu"] / second["tokens_per_s"] == per_token
    assert all(step["mfu"] / step["tok_per_s"] == per_token for step in read_steps(run_dir))


def test_smoke_checks_shapes_and_the_loss_and_writes_no_row(project):
    result = just(project, "smoke", "tiny")
    assert result.returncode == 0, result.stderr
    out = block(result.stdout)
    assert out["smoke"] == "ok" and float(out["loss_last"]) < float(out["loss_first"])
    assert out["checked"].startswith("30 steps of the config with shape checks")
    assert ledger(project).is_empty()


def test_smoke_catches_a_shape_bug_through_the_type_annotations(project):
    commit_change(project, "model.py", "return self.head(self.norm(x))", "return self.head(self.norm(x))[:, 1:]")
    result = just(project, "smoke", "tiny")
    assert result.returncode != 0 and "forward" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_command_the_user_started_reaches_the_run(project, sig):
    """`kill` of `just eval` (what `uv run` passes on, too): the run must not go on unseen and record an
    `ok` row later. SIGTERM is passed on; SIGKILL of `just` reaches it as its parent's death."""
    proc = start_long_run(project, "eval", "tiny", "--budget-tokens", "2000000")
    try:
        wait_until_training(project)
        proc.send_signal(sig)  # to `just` alone, not to its process group
        proc.communicate(timeout=60)
        for _ in range(600):
            if ledger(project).height:
                break
            time.sleep(0.1)
    finally:
        kill_group(proc)  # whatever is left of it
    df = ledger(project)
    assert df.height == 1 and df["status"][0] == "crash" and df["error"][0] == "Terminated: killed by SIGTERM"
    for _ in range(100):  # nothing runs on
        if not subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).stdout:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the run outlived the command that started it")


def test_a_run_killed_without_its_row_gets_one_crash_row_from_check_or_next_never_from_a_read(project):
    proc = start_long_run(project, "eval", "tiny", "--budget-tokens", "2000000")
    try:
        wait_until_training(project)
        python = subprocess.run(["pgrep", "-s", str(proc.pid), "python"], capture_output=True, text=True)
        subprocess.run(["kill", "-KILL", *python.stdout.split()], check=True)  # as the OOM killer does
        proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert (project / "results.tsv").read_text().count("\n") == 1  # no row yet: nothing could write it
    (marker,) = (project / "runs").glob("*/running.json")
    scratch = list(Path(tempfile.gettempdir()).glob(f"worker-{marker.parent.name}-*"))
    assert len(scratch) == 1 and scratch[0].is_dir()  # its workers' folder, which only its own end would remove
    again = Path(new_scratch(f"{marker.parent.name}-beef"))  # its id used again (`pueue restart`): not its folder
    for reader in ("results", "best"):  # reading the record never writes it
        just(project, reader)
        assert (project / "results.tsv").read_text().count("\n") == 1
    writers = ("check", "next", "check")  # the explicit step, twice at once: one row
    readers = [
        subprocess.Popen([JUST, cmd], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in writers
    ]
    outputs = [reader.communicate(timeout=120) for reader in readers]
    assert sum("as crash: its process was killed" in err for _, err in outputs) == 1
    df = ledger(project)
    assert df.height == 1 and df["status"][0] == "crash"
    assert df["error"][0].startswith("killed (SIGKILL or out of memory)") and df["config"][0] == "tiny"
    assert not list((project / "runs").glob("*/running.json")) and not scratch[0].exists()  # reaped, and removed
    assert again.is_dir()
    again.rmdir()
    assert ledger(project).height == 1  # read again: still one row


@pytest.mark.parametrize(
    "sig, group, said, code, error",
    [
        (signal.SIGINT, True, "interrupted", 130, "KeyboardInterrupt"),
        (signal.SIGINT, False, "interrupted", 130, "KeyboardInterrupt"),
        (signal.SIGTERM, False, "terminated", 143, "Terminated"),
    ],
)
def test_ctrl_c_or_a_kill_during_baseline_records_the_run_and_prints_one_line(project, sig, group, said, code, error):
    proc = start_long_run(project, "baseline", "--seeds", "2", "tiny", "--budget-tokens", "2000000")
    try:
        wait_until_training(project)
        if group:
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C: the whole foreground group
        else:  # `kill` or a queue's kill: the harness's process alone, which passes it on to the run
            harness = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "harness baseline"], capture_output=True)
            subprocess.run(["kill", f"-{sig.name.removeprefix('SIG')}", *harness.stdout.split()], check=True)
        _, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    last = err.rstrip().splitlines()[-2:]
    assert last[0] == said and f"exit code {code}" in last[1], err[-2000:]
    assert "BrokenPipe" not in err and not re.search(r'harness/\w+\.py", line', err)  # no traceback
    df = ledger(project)
    assert df.height == 1 and (df["error"][0] or "").startswith(error), df.select(
        "status", "error", "val_bpb"
    ).to_dicts()
