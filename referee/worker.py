"""A worker process: the only place the experiment's code runs. FROZEN (meta-mode only).

The referee (eval.py) starts it as `python -P -m referee.worker FD`, with the main checkout on PYTHONPATH
and one end of a socket pair at descriptor FD; the rest arrives as messages (referee/wire.py). On Linux a
run's two scoring workers are forked instead by a fork server (`serve`, started as `--serve FD`), each at the
point where a started worker begins `main`. The worker imports torch and the libraries, confines itself
(Landlock, then the tripwire: referee/sandbox.py) and only then loads the experiment: the copy of its code
kept in runs/{run_id}/, train.py by file path under its own name.

A training worker resolves the run's Config from the command line, waits for the go, calls train() with a
TrainData whose batches the referee serves one at a time, and saves the returned model's weights as the
run's checkpoint. A scoring worker builds the model from the checkpoint alone and returns logits for the
inputs the referee sends, one batch at a time; the targets never leave the referee.
"""

import dataclasses
import importlib
import mmap
import os
import platform
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
from jaxtyping import Int
from loguru import logger
from torch import Tensor

from referee import core, sandbox, wire
from referee.args import RESERVED, parse_train_args
from referee.contract import check_experiment, check_model
from repo import exit_without_teardown

# bf16 dense peak FLOP/s by GPU name, for MFU; the first matching key wins, so PCIe before SXM.
# fmt: off
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "B200": 2250e12, "A100": 312e12,
    "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12,
}
# fmt: on


class Batches:
    """The TrainData that train() receives (referee/contract.py): batches from `ask`, one at a time."""

    def __init__(
        self,
        ask: Callable,
        log: Callable,
        budget_tokens: int,
        device: torch.device,
        world_size: int = 1,
        rank: int = 0,
        peak_flops: float = 0.0,
    ):
        self.ask, self.log, self.device = ask, log, device
        self.budget_tokens, self.world_size, self.rank, self.peak_flops = budget_tokens, world_size, rank, peak_flops
        self.seq_len: int | None = None

    def batches(
        self, batch_size: int, seq_len: int
    ) -> Iterator[tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]]:
        while (rows := self.ask(batch_size, seq_len)) is not None:
            self.seq_len = seq_len
            yield core.inputs_and_targets(rows, self.device)

    def log_step(self, step: int, total_steps: int, **metrics: float) -> None:
        self.log(dict(step=step, total_steps=total_steps, **metrics))


def local_data(tokens: Tensor, budget_tokens: int, seed: int, device: torch.device, on_step=None) -> Batches:
    """A TrainData over the referee's stream in this very process, for tests and benchmarks of the training
    loop (never for a scored run); `on_step(record)` sees every log_step."""
    stream = core.BatchStream(tokens, budget_tokens, seed)
    data = Batches(lambda b, t: stream.next_rows(0, b, t), on_step or (lambda record: None), budget_tokens, device)
    data.stream = stream
    with torch.random.fork_rng(devices=[]):  # its random matrices must not move the caller's seeded weights
        data.peak_flops = device_peak_flops(device)
    return data


class LocalScorer:
    """A core.Scorer over a model in this very process, for tests and benchmarks (never for a scored run)."""

    def __init__(self, model, device: torch.device):
        self.model, self.device = model.eval(), device

    def send_inputs(self, inputs: Tensor) -> None:
        self.logits = core.forward_logits(self.model, inputs, self.device)

    def receive_logits(self) -> Tensor:
        return self.logits


def local_score(model, val: Tensor, seq_len: int, device: torch.device, fresh_model=None) -> float:
    """core.score's val_bpb in this process; `fresh_model`, another instance of the model, for the state probe."""
    fresh = lambda: LocalScorer(fresh_model or model, device)  # noqa: E731
    return core.score(LocalScorer(model, device), fresh, val, seq_len).val_bpb


@cache
def device_peak_flops(device: torch.device) -> float:
    """Peak FLOP/s that MFU is measured against: the bf16 dense datasheet figure for known GPUs;
    elsewhere the float32 matmul rate measured here (so CPU MFU is relative to this machine; a CPU's is measured in
    the referee's process, which keeps the best measured on the processor: eval.py's cpu_peak_flops)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 4096 if device.type != "cpu" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    best = 0.0
    for _ in range(5):  # the best of a few: a busy neighbour only ever slows a trial down
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def device_name(device: torch.device) -> str:
    """The processor a run's number is computed on. Floats come out differently on another GPU model and on
    another CPU (its vector units take other kernels: the cpu preset's seed 0 gives 1.7527576 on a 2-core AMD
    EPYC and 1.7526108 on a 2-core Intel Xeon), also where a virtual machine names two CPUs alike (1.7527956
    on an AVX-512 EPYC of family 25 model 17), so the row records it with the CPU's family and model and the
    instruction set torch dispatches to, and rows compare only within one."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    fields = {}
    if device.type == "cpu" and cpuinfo.exists():
        for line in cpuinfo.read_text().split("\n\n", 1)[0].splitlines():  # the first processor's
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if device.type != "cpu":
        return name
    model = f"family {fields['cpu family']} model {fields['model']}, " if "cpu family" in fields else ""
    return f"{name} ({model}{torch.backends.cpu.get_cpu_capability()})"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def crash_message(e: BaseException) -> str:
    """The row's error: the exception in one line; for an op that has no deterministic kernel, which
    op and the fix (torch's own advice, to turn determinism off, is not one a scored run may take)."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, RuntimeError) and "does not have a deterministic implementation" in str(e):
        op = str(e).split(" does not have a deterministic implementation", 1)[0]
        text = (
            f"non-deterministic op: {op} has no deterministic kernel, and scored runs are strict so that one "
            "seed gives one number. Replace it in train.py/model.py with ops that have one (a one-hot matmul "
            "instead of index_add/scatter_add/embedding backward, for example)"
        )
    return " ".join(text.split())[:500]


def load_experiment(code_dir: Path, checked: bool):
    """train.py of `code_dir` under its own name, with the folder first on sys.path so that its `import model`
    finds the model.py beside it; with `checked`, jaxtyping checks every annotated shape (smoke runs)."""
    sys.path.insert(0, str(code_dir))
    if checked:
        import jaxtyping

        with jaxtyping.install_import_hook(["model", "train"], "beartype.beartype"):
            train = importlib.import_module("train")
    else:
        train = importlib.import_module("train")
    if Path(train.__file__).resolve() != (code_dir / "train.py").resolve():
        raise ValueError(f"`import train` found {train.__file__}, not {code_dir / 'train.py'}")
    check_experiment(train, RESERVED)
    return train


class Link:
    """This worker's end of the socket pair; sends are locked, as the tripwire may report from any thread."""

    def __init__(self, fd: int):
        self.conn, self.lock = Connection(fd), threading.Lock()
        self.started = False  # the run began: before, an error is bad input, which the referee reports in one line

    def send(self, header: dict, tensor: Tensor | None = None, buffer=None) -> None:
        with self.lock:
            wire.send(self.conn, header, tensor, buffer)

    def recv(self, op: str, max_bytes: int = 0) -> tuple[dict, Tensor | None]:
        header, tensor = wire.recv(self.conn, max_bytes)
        if header["op"] == "error":
            raise ValueError(header["error"])
        if header["op"] != op:
            raise wire.WireError(f"expected {op!r} from the referee, got {header['op']!r}")
        return header, tensor

    def ask(self, batch_size: int, seq_len: int) -> Tensor | None:
        self.send({"op": "next", "batch_size": batch_size, "seq_len": seq_len})
        header, rows = wire.recv(self.conn, batch_size * (seq_len + 1))
        if header["op"] == "error":
            raise ValueError(header["error"])
        return rows if header["op"] == "batch" else None


def train_worker(link: Link, job: dict, device: torch.device) -> None:
    train = load_experiment(Path(job["code"]), job["smoke"])
    config_file = tuple(job["config_file"]) if job["config_file"] else None
    cfg, description = parse_train_args(job["args"], train, device.type, config_file)
    if job["smoke"]:  # short log intervals; no compile through the shape checks
        changes = {"log_every": 3, "compile": False}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if hasattr(cfg, k)})
    link.send({"op": "config", "config": dataclasses.asdict(cfg), "description": description})
    go, _ = link.recv("go")
    link.started = True
    peak_flops = go.get("peak_flops") or device_peak_flops(device)  # a CPU's: the referee's, the best measured there
    core.seed_weights(job["seed"])
    rank, world_size = job["rank"], job["world_size"]
    if world_size > 1:
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    data = Batches(
        link.ask, lambda r: link.send({"op": "log", **r}), go["budget_tokens"], device, world_size, rank, peak_flops
    )
    model = train.train(cfg, data, device)
    check_model(model, "train()")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        torch.save({"model": model.state_dict(), "train_config": dataclasses.asdict(cfg)}, job["checkpoint"])
    link.send(
        {
            "op": "done",
            "params": sum(p.numel() for p in model.parameters()),
            "peak_flops": peak_flops,
            "flops_per_token": model.flops_per_token(data.seq_len) if data.seq_len else None,
            "peak_mem_gb": peak_memory_gb(device),
        }
    )


def score_worker(link: Link, job: dict, device: torch.device) -> None:
    train = load_experiment(Path(job["code"]), job["smoke"])
    load, _ = link.recv("load")
    link.started = True
    state = torch.load(job["checkpoint"], map_location="cpu", weights_only=True)
    model = train.build_model(train.Config(**state["train_config"]))
    check_model(model, "build_model()")
    model.load_state_dict(state["model"])
    model.to(device).eval()
    link.send({"op": "ready"})
    with open(job["logits_file"], "r+b") as f, mmap.mmap(f.fileno(), 0) as logits_buffer:
        while True:
            header, inputs = wire.recv(link.conn, core.EVAL_BATCH_SIZE * load["seq_len"])
            if header["op"] == "end":
                return
            link.send({"op": "logits"}, core.forward_logits(model, inputs, device), buffer=logits_buffer)


def resolve_device(name: str | None, world_size: int) -> torch.device:
    """The device asked for, checked; or the best one present. Never a silent switch. Under DDP, this rank's."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device: use --device cpu, or fix the driver")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps, but torch sees no MPS device: use --device cpu")
    available, unit = {
        "cuda": (torch.cuda.device_count() if name == "cuda" else 0, "CUDA devices are visible"),
        "cpu": (os.cpu_count() or 1, "CPU cores are here"),
        "mps": (1, "process runs on mps"),
    }[name]
    if world_size > available:
        raise ValueError(f"--nproc {world_size}: only {available} {unit}; give --nproc between 1 and {available}")
    if name != "cuda":
        return torch.device(name)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def die_with_parent() -> None:
    """Die with the process that started this one (the referee, or the fork server it started), whatever kills it."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the referee's to handle: it ends this worker
    die_with_parent()
    link = Link(fd)
    job, _ = link.recv("job")
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} | {message}", level="INFO" if job["rank"] == 0 else "ERROR")
    try:
        # Before `confine`: torch imports its compiler to set this, and with it dynamo, whose polyfills load a
        # fresh `operator` from its bytecode, a validation module of the default corpus (every optimizer imports
        # dynamo: after `confine`, that read would end every run; tried, bench/README.md)
        core.strict_determinism()
        device = resolve_device(job["device"], job["world_size"])
        name, policy = device_name(device), sandbox.Policy(**job["policy"])
        # From here on the kernel refuses the data to this process: before torch starts its CPU threads, which
        # would escape it (a CUDA device has started the driver's by now: 0_docs/problem.md).
        isolation = sandbox.confine(policy)
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        link.send({"op": "device", "device": device.type, "device_name": name, "isolation": isolation})
        sandbox.install(policy, lambda what: link.send({"op": "refused", "what": what}))
        (train_worker if job["kind"] == "train" else score_worker)(link, job, device)
    except Exception as e:
        if link.started:  # the traceback goes to the run's log; the row gets the one-line message
            logger.opt(exception=e).error(f"{job['kind']} worker: {crash_message(e)}")
        bad_input = isinstance(e, ValueError) and not link.started  # a bad value: its message says it all
        link.send({"op": "error", "error": " ".join(str(e).split()) if bad_input else crash_message(e)})
        return 1
    return 0


def serve(fd: int) -> int:
    """A fork server of scoring workers (Linux): the referee starts it with a scoring worker's environment beside
    the training worker (referee/supervisor.py, ForkServer); it imports torch and its compiler once, and forks
    each scoring worker the referee asks for, which goes on as `main` from there. Two scorers' start-up (seconds
    each, in the run's path) becomes one, done while training runs. It is given no job, no data and no code: a
    fork holds what a worker holds before its job arrives, and both scorers of a run are forked before either
    is shown an input. On the control socket, in order: "fork" with the worker's socket, stdout and stderr;
    "kill N" (the Nth fork, from 0); back, "ready" once, then "exited N CODE". The control socket's end ends it
    and its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    core.strict_determinism()  # what makes a worker's start-up slow: its compiler's import (see main)
    control = socket.socket(fileno=fd)
    control.send(b"ready")
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (its number, its pid), of each worker still running
    forks = 0
    while True:
        for ready in wait([control, *children]):
            if ready is not control:  # a worker ended
                number, pid = children.pop(ready)
                os.close(ready)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                control.send(b"exited %d %d" % (number, code))
                continue
            message, fds, _, _ = socket.recv_fds(control, 64, 3)
            if not message:  # the referee is done (or gone): so are its workers
                for pidfd in children:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                return 0
            if message == b"fork":
                pid = fork_worker(control, fds, children)
                children[os.pidfd_open(pid)] = forks, pid
                forks += 1
            elif message.startswith(b"kill "):
                for pidfd, (number, _) in children.items():
                    if number == int(message.split()[1]):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def fork_worker(control: socket.socket, fds: list[int], children: dict) -> int:
    """In the fork server: a scoring worker on `fds` (its socket to the referee, its stdout, its stderr); its pid.
    The child keeps none of the server's descriptors and never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.getpid()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    control.close()
    for pidfd in children:
        os.close(pidfd)
    channel, out, err = fds
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    die_with_parent()  # a fork does not keep it; the server dies with the referee
    if os.getppid() != server:  # it died before that
        os._exit(1)
    exit_without_teardown(lambda: main(channel))


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        exit_without_teardown(lambda: serve(int(sys.argv[2])))
    exit_without_teardown(lambda: main(int(sys.argv[1])))
