"""The referee's side of its worker processes (referee/worker.py): start them, talk to them, serve their
training batches, take their logits. FROZEN (meta-mode only)."""

import json
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

from loguru import logger

from referee import wire
from repo.runs import minutes

ROOT = Path(__file__).resolve().parents[1]  # the main checkout


class WallClockExceeded(Exception):
    """Training (or scoring) ran past the cap."""


class WorkerFailed(Exception):
    """A worker reported an error, a refusal, or ended without the answer the referee waited for."""

    def __init__(self, message: str, exit_code: int | None = None, refused: bool = False):
        super().__init__(message)
        self.exit_code, self.refused = exit_code, refused


class Worker:
    """A worker process and the referee's end of its socket pair. Its output goes to this terminal and the log."""

    def __init__(
        self,
        job: dict,
        env: dict,
        cwd: str,
        log_file: Path | None,
        logits_bytes: int = 0,
        server: "ForkServer | None" = None,
    ):
        self.max_logits_bytes = logits_bytes  # a scoring worker's largest batch of logits
        self.logits_buffer = None  # where that worker's logits arrive: a shared mmap, the one file it may write
        self.cleanup: list = []  # what stop() undoes
        if logits_bytes:
            path = self.share_logits_buffer(logits_bytes)
            job = {**job, "logits_file": path}
            job["policy"] = {**job["policy"], "writable": [*job["policy"]["writable"], path]}
        ours, theirs = socket.socketpair()
        self.proc = (
            server.fork(theirs.fileno())
            if server
            else spawn(["-m", "referee.worker", str(theirs.fileno())], theirs.fileno(), env, cwd)
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.deadline: float | None = None  # time.monotonic() by which each answer must come (scoring)
        self.device: dict | None = None  # what the worker reported of its device, once it has
        self.name = f"{job['kind']} worker" + (f" (rank {job['rank']})" if job["world_size"] > 1 else "")
        self.echoes = echoes(self.proc, log_file)
        self.send({"op": "job", **job})

    def send(self, header: dict, tensor=None) -> None:
        wire.send(self.conn, header, tensor)

    def recv(self, max_bytes: int = 0) -> tuple[dict, object]:
        """The next message, by the deadline if one is set; a worker's error or refusal, or its end, as WorkerFailed."""
        if self.deadline is not None and not wait([self.conn], timeout=max(self.deadline - time.monotonic(), 0)):
            raise WallClockExceeded(f"scoring passed the cap: the {self.name} did not answer in time")
        try:
            header, tensor = wire.recv(self.conn, max_bytes, self.logits_buffer)
        except (EOFError, OSError):
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            for thread in self.echoes:
                thread.join(timeout=5)  # its last lines, before the message that names it
            raise WorkerFailed(f"the {self.name} exited with code {code} (its output is above)", code) from None
        if header["op"] == "refused":
            raise WorkerFailed(f"refused: the {self.name} tried {header['what']}", refused=True)
        if header["op"] == "error":
            raise WorkerFailed(header["error"])
        return header, tensor

    def expect(self, op: str, max_bytes: int = 0) -> tuple[dict, object]:
        header, tensor = self.recv(max_bytes)
        if header["op"] != op:
            raise WorkerFailed(f"the {self.name} sent {header['op']!r} where the protocol wants {op!r}")
        if op == "device":
            self.device = header  # its device class, the processor's model, its isolation
        return header, tensor

    # core.Scorer: inputs out, logits back
    def send_inputs(self, inputs) -> None:
        self.send({"op": "inputs"}, inputs)

    def receive_logits(self):
        return self.expect("logits", self.max_logits_bytes)[1]

    def share_logits_buffer(self, size: int) -> str:
        """A file of `size` bytes, mapped here, that the scoring worker writes its logits into; its path."""
        fd, path = tempfile.mkstemp(prefix="logits-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.ftruncate(fd, size)
        self.logits_buffer = mmap.mmap(fd, size)
        os.close(fd)
        self.cleanup.append(lambda: (self.logits_buffer.close(), os.unlink(path)))
        return path

    def stop(self, grace_s: float = 0) -> None:
        """End the process (after `grace_s` seconds for it to exit by itself, its last lines flushed)."""
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.wait()
        for thread in self.echoes:  # its last lines, in the log before this process ends (without a teardown)
            thread.join(timeout=2)  # (a child of the worker that keeps its pipe open holds it no longer)
        self.conn.close()
        while self.cleanup:
            self.cleanup.pop()()


def spawn(argv: list[str], fd: int, env: dict, cwd: str) -> subprocess.Popen:
    """A process of this Python, `-P` (no checkout on its path but the one PYTHONPATH names), with descriptor `fd`
    and its output piped here."""
    return subprocess.Popen(
        [sys.executable, "-P", *argv], pass_fds=(fd,), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


class ForkServer:
    """The scoring workers' fork server (referee/worker.py, serve): started with a scoring worker's environment
    beside the training worker, it has imported torch and its compiler by the first batch, and forks the run's
    two scorers then, in milliseconds, instead of their starting for seconds each in the run's path. A request
    never waits for the server: it forks them in order once its start-up is done, and names each by its number.
    Linux only (pidfd); elsewhere each scorer is a process of its own (`fork_server` says which)."""

    def __init__(self, scratch: str, log: Path | None):
        env, _ = worker_env("score", scratch)
        env.update(RANK="0", LOCAL_RANK="0")  # a scorer's, as start_workers gives it
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = spawn(["-m", "referee.worker", "--serve", str(theirs.fileno())], theirs.fileno(), env, scratch)
        theirs.close()
        self.control, self.forks, self.exited, self.ready, self.ended = ours, 0, {}, False, False
        self.echoes = echoes(self.proc, log)

    def fork(self, fd: int) -> "Forked":
        """A scoring worker on socket `fd`, its output piped here; forked as soon as the server can."""
        (out, out_end), (err, err_end) = os.pipe(), os.pipe()
        try:
            socket.send_fds(self.control, [b"fork"], [fd, out_end, err_end])
        except OSError:  # the server has ended: the worker's socket ends at once, and its exit says the server's
            self.ended = True
        finally:
            os.close(out_end)
            os.close(err_end)
        self.forks += 1
        return Forked(self, self.forks - 1, open(out, "rb"), open(err, "rb"))

    def read(self) -> None:
        """The server's next message: its start-up done ("ready"), a worker's exit, or its own end."""
        try:
            message = self.control.recv(64)
        except OSError:
            message = b""
        if not message:
            self.ended = True
        elif message == b"ready":
            self.ready = True
        elif message.startswith(b"exited "):
            _, forked, code = message.split()
            self.exited[int(forked)] = int(code)

    def wait_ready(self) -> None:
        """Until the server has imported what it imports (or ended): the referee measures this machine's matmul
        rate (MFU's denominator) while no process of the run computes, and the server's start-up is one."""
        while not self.ready and not self.ended:
            self.read()

    def wait(self, number: int, timeout: float | None = None) -> int:
        """The exit code of the worker forked `number`th (of the server, if it ended first: its workers end with
        it); TimeoutExpired past `timeout`."""
        end = None if timeout is None else time.monotonic() + timeout
        while number not in self.exited and not self.ended:
            if not wait([self.control], None if end is None else max(end - time.monotonic(), 0)):
                raise subprocess.TimeoutExpired(f"scoring worker {number}", timeout)
            self.read()
        return self.exited[number] if number in self.exited else self.proc.wait()

    def kill(self, number: int) -> None:
        if not self.ended:
            try:
                self.control.send(b"kill %d" % number)
            except OSError:
                self.ended = True

    def stop(self) -> None:
        """End the server, and with it any worker it forked that still runs (PDEATHSIG). It holds nothing to keep,
        and may still be importing torch (a run that ends on bad input): it is killed, not waited for."""
        self.control.close()
        self.proc.kill()
        self.proc.wait()
        for thread in self.echoes:
            thread.join(timeout=2)


class Forked:
    """What a Worker needs of its process (a Popen's) for a worker the fork server starts."""

    def __init__(self, server: ForkServer, number: int, stdout, stderr):
        self.server, self.number, self.stdout, self.stderr = server, number, stdout, stderr

    def wait(self, timeout: float | None = None) -> int:
        return self.server.wait(self.number, timeout)

    def kill(self) -> None:
        self.server.kill(self.number)


def fork_server(scratch: str, log: Path | None) -> ForkServer | None:
    """A fork server for the run's scoring workers where this system has one (Linux, pidfd), else None."""
    return ForkServer(scratch, log) if sys.platform == "linux" and hasattr(os, "pidfd_open") else None


def echoes(proc, log_file: Path | None) -> list[threading.Thread]:
    """Threads, started, that echo a process's stdout and stderr to this process's and to the run's log."""
    threads = [
        threading.Thread(target=echo, args=(pipe, out, log_file), daemon=True)
        for pipe, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))
    ]
    for thread in threads:
        thread.start()
    return threads


def echo(pipe, out, log_file: Path | None) -> None:
    """A worker's output, line by line, to this process's terminal and to the run's log."""
    log = open(log_file, "a") if log_file else None  # noqa: SIM115 (closed below, when the pipe ends)
    for line in iter(pipe.readline, b""):
        text = line.decode(errors="replace")
        out.write(text)
        out.flush()
        if log:
            log.write(text)
            log.flush()
    if log:
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_job(code: Path, checkpoint: Path, trains: bool, **fields) -> dict:
    """What a worker is told: where the experiment's code and the checkpoint are, and what it may touch. A
    training worker's checkpoint is created here, empty, so that the one file it may write already exists."""
    from referee.data import compile_stdlib, forbidden_paths

    data, stdlib = forbidden_paths()
    if stdlib is not None and compile_stdlib():  # a worker may not read the standard library's sources
        logger.warning(
            f"{len(compile_stdlib())} standard-library modules have no bytecode and cannot be written here, so the "
            f"experiment cannot import them ({', '.join(compile_stdlib()[:5])}...): `python -m compileall` as their owner"
        )
    if trains:
        checkpoint.touch()
    own = sorted({str(code.resolve()), str(checkpoint.resolve())})
    writable = [str(checkpoint.resolve())] if trains else []
    job = dict(args=[], config_file=None, seed=0, device=None, smoke=False, threads=None)
    policy = dict(root=str(ROOT), own=own, writable=writable, data=data, stdlib=stdlib)
    return {**job, **fields, "code": str(code), "checkpoint": str(checkpoint), "policy": policy}


def compile_caches(kind: str, scratch: str) -> dict[str, str]:
    """torch.compile's cache folders: a training worker's persist between runs (it never sees validation
    text); a scoring worker's are in the run's scratch folder, removed with it, so that nothing it was shown
    outlives the run."""
    from referee.data import default_cache_dir

    base = default_cache_dir().with_name("research-harness-compile") if kind == "train" else Path(scratch)
    return {"TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"), "TRITON_CACHE_DIR": str(base / "triton")}


def worker_env(kind: str, scratch: str) -> tuple[dict, list[str]]:
    """A worker's environment (one of `kind`, in the run's `scratch` folder), and its compile caches' folders,
    created."""
    # How long an OpenMP thread spins for the next parallel region before it sleeps (libgomp's default: a few
    # ms). Training: ~0.1 ms, so that between two steps the referee gets a core. Scoring: not at all, because
    # beside another process's threads a spinning thread holds the core its partner needs, and every layer waits
    # (bench/README.md: scoring beside one 2-thread neighbour 182 s at 100000 spins, 77 s at 0; alone ~45 s
    # either way). How long a thread waits never changes a number. OpenBLAS (numpy's, which torch imports)
    # starts no thread pool: a worker confines itself single-threaded.
    spins = "0" if kind == "score" else "100000"
    env = {"GOMP_SPINCOUNT": spins, **os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    caches = compile_caches(kind, scratch)
    env.update(caches, TMPDIR=scratch, OPENBLAS_NUM_THREADS="1")
    for folder in caches.values():
        os.makedirs(folder, exist_ok=True)
    return env, sorted(caches.values())


def start_workers(
    kind: str,
    n: int,
    job: dict,
    scratch: str,
    log: Path | None,
    logits_bytes: int = 0,
    server: ForkServer | None = None,
) -> list[Worker]:
    """`n` workers of `kind` (ranks 0 to n-1), spawned, or forked by `server`, whose environment is theirs."""
    env, caches = worker_env(kind, scratch)
    policy = {**job["policy"], "scratch": scratch, "caches": caches}
    if n > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n))
    return [
        Worker(
            {**job, "kind": kind, "rank": r, "world_size": n, "policy": policy},
            {**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            scratch,
            log,
            logits_bytes,
            server,
        )
        for r in range(n)
    ]


def serve_training(
    workers: list[Worker], stream, wall_cap_s: float, metrics_path: Path, on_first_batch, summary: dict
) -> dict:
    """Batches to every rank until each returns its model, within the wall-clock cap (or until the pace of its
    step lines says the cap will pass); rank 0's `done`. The pace since the second step line, past the first
    steps' warm-up, goes into `summary` (steady_tokens_per_s): what `just plan` projects a budget with."""
    by_conn, done, steps = {w.conn: w for w in workers}, {}, []
    start = time.monotonic()
    while len(done) < len(workers):
        left = start + wall_cap_s - time.monotonic()
        if left <= 0:
            raise WallClockExceeded(
                f"training passed the wall-clock cap of {wall_cap_s:.0f} s after {stream.tokens_served:,} tokens"
            )
        for conn in wait([w.conn for w in workers if id(w) not in done], timeout=left):
            worker = by_conn[conn]
            header, _ = worker.recv()
            if header["op"] == "next":
                if stream.shape is None:
                    on_first_batch()
                try:
                    rows = stream.next_rows(workers.index(worker), header["batch_size"], header["seq_len"])
                except ValueError as e:
                    worker.send({"op": "error", "error": str(e)})
                    continue
                wire.send(conn, {"op": "batch" if rows is not None else "end"}, rows)
            elif header["op"] == "log" and worker is workers[0]:
                log_step(header, stream.tokens_served, metrics_path)
                steps.append((time.monotonic() - start, stream.tokens_served, header["step"], header["total_steps"]))
                rate = check_pace(steps, stream.budget_tokens, wall_cap_s)
                if rate is not None:
                    summary["steady_tokens_per_s"] = rate
                if rate is not None and len(steps) == 3:  # once: the pace the machine gives this run, as it is
                    left = (stream.budget_tokens - stream.tokens_served) / rate
                    logger.info(f"at the pace so far, training ends in about {minutes(left)}")
            elif header["op"] == "done":
                done[id(worker)] = header
            elif header["op"] != "log":
                raise WorkerFailed(f"the {worker.name} sent {header['op']!r} while training")
    return done[id(workers[0])]


def check_pace(steps: list[tuple], budget: int, wall_cap_s: float) -> float | None:
    """From the third step line on (the first may hold compilation), if the pace since the second puts the end
    of the budget 10% past the cap, end the run now, saying where it would stop and what budget would fit; else
    that pace in tokens/s (None before the third line)."""
    if len(steps) < 3 or steps[-1][1] <= steps[1][1]:
        return None
    (t1, tokens1, step1, _), (t, tokens, step, total) = steps[1], steps[-1]
    rate = (tokens - tokens1) / (t - t1)
    needed = t + (budget - tokens) / rate
    if needed > 1.1 * wall_cap_s:
        stop = step + int((wall_cap_s - t) * rate / ((tokens - tokens1) / max(step - step1, 1)))
        raise WallClockExceeded(
            f"training would pass the wall-clock cap of {wall_cap_s:.0f} s: at {rate:,.0f} tokens/s the budget of "
            f"{budget:,} tokens needs about {needed:,.0f} s, and the cap would stop it near step {stop} of {total}; "
            f"about {int(tokens + rate * (wall_cap_s - t)):,} tokens fit (--budget-tokens), or a faster config does"
        )
    return rate


def log_step(header: dict, tokens: int, metrics_path: Path | None) -> None:
    """train.py's report of one step: a log line, and a JSON line of runs/{id}/metrics.jsonl."""
    record = dict(step=header["step"], total_steps=header["total_steps"], tokens=tokens)
    record.update((k, v) for k, v in header.items() if k not in ("op", *record))
    if metrics_path is not None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    values = " | ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in record.items()
        if k not in ("step", "total_steps", "tokens")
    )
    logger.info(f"step {record['step']}/{record['total_steps']} | {values}")


def start_scorers(
    job: dict, scratch: str, log: Path | None, seq_len: int, server: ForkServer | None = None
) -> list[Worker]:
    """The two scoring workers of a run: the one that scores, and a fresh one for the state probe; both forked by
    `server` (before either is shown an input), or each spawned."""
    from referee import core

    logits_bytes = core.EVAL_BATCH_SIZE * seq_len * core.VOCAB_SIZE * 4  # float32, the widest dtype sent
    return [start_workers("score", 1, job, scratch, log, logits_bytes, server)[0] for _ in range(2)]


def score(scorers: list[Worker], val, seq_len: int, deadline: float, train, served=None, holdout=None):
    """core.Scores from a fresh scoring worker (core.score), the second one for the state probe."""
    from referee import core

    for worker in scorers:
        worker.deadline = deadline
        worker.send({"op": "load", "seq_len": seq_len})
    for worker in scorers:
        worker.expect("device")
        worker.expect("ready")
    first, again = scorers
    scores = core.score(first, lambda: again, val, seq_len, train, served, holdout)
    for worker in scorers:
        worker.send({"op": "end"})
    return scores
