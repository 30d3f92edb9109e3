"""The one door between the harness and the referee. FROZEN (meta-mode only).

The harness reaches the referee through this module alone (`just lint` holds it to that: the import contracts of
pyproject.toml), and by data: a RunSpec in, a row out. Nothing here imports torch until it is called for, so a
command that reads the ledger never loads it.

    RunSpec, Device     a run as data, and its device classes (referee/spec.py)
    run(spec, cwd)      one scored run of the checkout at `cwd`, a subprocess of main's eval.py; its ledger row
    rescore(...)        `just verify` and `just audit`: a kept run scored again through the scoring workers of every run
    limits()            the code cap and the memorization margin, as the core holds them
    presets()           the core's presets by device class: budget, wall cap, eval context
    core_sha()          the hash of referee/core.py, every row's eval_sha
    device_class(name)  the device class a run would use (cuda, else mps, else cpu), read without torch
    torch_version()     the torch a run would use, read without importing it
    load_corpus()       the corpus, for measuring tools in one process (bench/, the nanoGPT anchor)
    evaluate(...)       val_bpb of a model held by the caller, with the core's scoring and probes: what a
                        benchmark compares against, never a row's number (a row's model lives in workers)
"""

import ast
import dataclasses
import hashlib
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from referee.spec import Device, RunSpec
from repo import Refusal, Terminated
from repo.git import experiment_name, main_root
from repo.ledger import LEDGER, find_rows, new_run_id

CORE = Path(__file__).resolve().with_name("core.py")  # the metric's core: its hash is every row's eval_sha

__all__ = [
    "Device",
    "RunSpec",
    "run",
    "rescore",
    "limits",
    "presets",
    "core_sha",
    "device_class",
    "torch_version",
    "load_corpus",
    "evaluate",
]


def run(spec: RunSpec, cwd: Path) -> dict:
    """Score the checkout at `cwd` once as `spec` says (a run id is given here if it has none); its ledger row, the
    record rather than what the run printed. The run's log goes to stderr as it runs; a run that ends without an
    ok row is a Refusal naming why."""
    root = main_root()
    if spec.run_id is None:
        spec = dataclasses.replace(spec, run_id=new_run_id(experiment_name(cwd, root)))
    argv = spec.to_argv()
    process = subprocess.Popen([sys.executable, str(root / "eval.py"), *argv], cwd=cwd, stdout=subprocess.DEVNULL)
    try:
        while process.poll() is None:  # not one blocking wait: a signal that another thread of this process (polars'
            time.sleep(0.1)  # pool) takes must still interrupt this one, and Python checks for it between sleeps
    except KeyboardInterrupt as interrupt:  # passed on: a signal to this process alone must reach the run too
        if process.poll() is None:  # (a terminal's Ctrl-C reached it already; it takes the first and ignores more)
            process.send_signal(signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
        process.wait()  # the run writes its crash row
        raise
    rows = find_rows(root / LEDGER, spec.run_id)  # a `pueue restart` of a queued id adds a suffix
    if not rows:
        raise Refusal(f"eval.py {' '.join(argv)} wrote no row (exit code {process.returncode}): its error is above")
    if rows[-1]["status"] != "ok":
        raise Refusal(f"eval.py {' '.join(argv)} failed ({rows[-1]['status']}): {rows[-1]['error']}")
    return rows[-1]


def rescore(code: Path, checkpoint: Path, device: str, corpus, threads: int | None, holdout: bool = False):
    """A kept run scored again from its code and checkpoint, through the same scoring workers and probes as every
    scored run (the memorization probe's windows drawn afresh from the whole training split: what the run was
    served is not kept), and the holdout too with `holdout` (a confirming run's): (its Scores: val_bpb,
    unseen_bpb, holdout_bpb; the processor it was computed on, as a row names it). Code over the cap, or a model a
    probe refuses, is a ValueError naming the rule, as in a scored run."""
    from referee import core
    from referee.supervisor import fork_server, score, start_scorers, worker_job

    core.check_code_size({path.name: path.stat().st_size for path in code.glob("*.py")})
    preset, scratch, scorers, server = core.PRESETS[device], tempfile.mkdtemp(prefix="worker-verify-"), [], None
    try:
        job = worker_job(code, checkpoint, trains=False, device=device, threads=threads)
        server = fork_server(scratch, None)
        scorers = start_scorers(job, scratch, None, preset.eval_seq_len, server)
        deadline = time.monotonic() + preset.wall_cap_s
        held = corpus.holdout if holdout else None
        scores = score(scorers, corpus.val, preset.eval_seq_len, deadline, corpus.train, holdout=held)
        return scores, scorers[0].device["device_name"]
    finally:
        for worker in scorers:
            worker.stop()
        if server:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def limits() -> dict:
    """The referee's bounds on what an experiment may be: its code's bytes together (max_code_bytes), and how much
    better than unseen training text it may predict the validation or holdout text (memorization_margin)."""
    from referee import core

    return dict(max_code_bytes=core.MAX_CODE_BYTES, memorization_margin=core.MEMORIZATION_MARGIN)


def presets() -> dict[str, dict]:
    """The core's presets, {device class: {train_tokens, wall_cap_s, eval_seq_len}}: what a run without
    --budget-tokens trains on; read from core.py's text, without torch (tests/test_eval.py holds it to the core's)."""
    for node in ast.parse(CORE.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PRESETS" for t in node.targets):
            return {
                ast.literal_eval(key): {k.arg: ast.literal_eval(k.value) for k in preset.keywords}
                for key, preset in zip(node.value.keys, node.value.values, strict=True)
            }
    raise ValueError(f"{CORE} defines no PRESETS")


def core_sha() -> str:
    """What `git hash-object referee/core.py` prints: names the exact referee core that scored a row."""
    data = CORE.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def torch_version() -> str:
    """torch.__version__ (with its build, such as +cu128) of the torch a run would use."""
    return torch_build().get("__version__", "unknown")


def device_class(name: str | None = None) -> str:
    """The device class a run would use: the one asked for, else cuda (a CUDA build of torch and a visible NVIDIA
    device), else mps (Apple silicon), else cpu; what the worker's resolve_device picks, read without torch."""
    if name is not None:
        return name
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch_build().get("cuda") and Path("/dev/nvidiactl").exists() and visible not in ("", "-1"):
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def torch_build() -> dict:
    """The constants of the installed torch's torch/version.py (__version__, cuda, ...), read as text."""
    found = importlib.util.find_spec("torch")
    version = Path(next(iter(found.submodule_search_locations or []), "")) / "version.py" if found else None
    if version is None or not version.is_file():
        return {}
    constants = {}
    for node in ast.parse(version.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
            try:
                constants[target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def load_corpus(prepare: bool = False):
    """The referee's corpus (referee/data.py): `.train`, `.val` and `.holdout` byte tensors, `.fingerprint`;
    with `prepare`, downloaded (a Hugging Face source) and prepared first. ValueError for a bad source."""
    from referee import data

    return data.prepare() if prepare else data.load_corpus()


def evaluate(model, val, seq_len: int, device) -> float:
    """val_bpb of a model held by the caller, with the core's scoring and probes in the caller's process."""
    from referee.worker import local_score

    return local_score(model, val, seq_len, device)
