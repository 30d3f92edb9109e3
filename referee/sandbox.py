"""What a worker process may touch, enforced twice. FROZEN (meta-mode only).

1. The kernel (`confine`, Landlock on Linux: referee/landlock.py), before the experiment's code loads: the
   worker may read only what it needs to run (site-packages, the interpreter's extension modules and the
   bytecode of the standard library's training-split modules, the shared libraries it has loaded, the C
   toolchain torch.compile runs, /dev but /dev/shm, its own /proc, /sys, the referee's own package, its run's
   kept code and checkpoint, its scratch folder and compile caches) and write only its checkpoint (a training
   worker) or its logits buffer (a scoring worker), its scratch folder and its compile caches. Everything else,
   the corpus, the prepared cache, the ledger, runs/ and the checkout among them, is refused to Python and
   native code alike, and to any process the worker starts. For the default corpus the standard library's
   sources are refused and so is the bytecode of its validation and holdout modules (their docstrings and
   constants are that text): the referee compiles the bytecode before any worker starts (referee/data.py).
   Where the kernel has no Landlock (macOS, Linux before 5.13, a container that blocks it) the worker says so
   and the row's `isolation` column records `tripwire`.
2. The tripwire (`install`): Python audit hooks, never removable, refuse in Python's own calls what the
   kernel refuses and more (network connections and lookups, starting a process other than torch.compile's
   compilers, writing in the main checkout, reading other processes through /proc). A refusal raises
   PermissionError where the experiment made the call and tells the referee at once, which ends the run as a
   crash row naming what was touched, so catching the error gains nothing. A read that linecache makes (a
   traceback's or a warning's source line) is refused without ending the run.

What neither stops (code that runs outside Python's calls is seen only by the kernel; the network is not the
kernel's to refuse here) is listed in 0_docs/problem.md.
"""

import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from referee import landlock
from referee.core import split_of

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# fmt: off
FS_CHANGES = {
    "os.remove", "os.rename", "os.rmdir", "shutil.rmtree", "os.truncate", "os.link", "os.symlink", "os.chmod",
    "os.chown", "os.utime", "os.mkdir", "os.chflags", "os.setxattr", "os.removexattr",
}
# fmt: on
NETWORK = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
PROCESSES = {"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"}
# What torch.compile runs: C/C++ compilers and linkers (inductor on CPU), ptxas and ldconfig (triton on CUDA).
COMPILERS = {"cc", "c++", "gcc", "g++", "clang", "clang++", "ld", "nvcc", "ptxas", "ldconfig", "cuobjdump"}
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}
# The C toolchain torch.compile runs (inductor's C++ on CPU, triton's launcher on CUDA) and what it reads; none
# of these folders holds a Python standard library (a system Python's is /usr/lib/python3.X, not granted).
TOOLCHAIN = ["/usr/bin", "/bin", "/usr/sbin", "/usr/libexec/gcc", "/usr/lib/gcc", "/usr/include", "/usr/local/include"]


@dataclass(frozen=True)
class Policy:
    """What a worker may not touch, from the referee (all paths absolute and resolved)."""

    root: str
    """the main checkout: nothing in it is written, and runs/ and the ledger are not read, except below"""
    own: list[str]
    """this worker's own files and folders: its run's kept code and checkpoint"""
    writable: list[str]
    """the files it may write in the main checkout: its checkpoint"""
    data: list[str]
    """the data's folders and files: the prepared cache and the source (a text folder, a dataset's hub folder)"""
    stdlib: str | None = None
    """the standard library's folder when it is the corpus: its .py files are the data"""
    scratch: str | None = None
    """the worker's working folder (and TMPDIR), removed after the run: read and written freely"""
    caches: tuple[str, ...] = ()
    """torch.compile's cache folders (inductor, triton): read and written"""


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


PRIVATE = ("runs", "results.tsv")  # in the main checkout: other runs' files and the ledger


class Tripwire:
    def __init__(self, policy: Policy, report: Callable[[str], None]):
        self.policy, self.report = policy, report
        self.private = [os.path.join(policy.root, p) for p in PRIVATE]
        self.package_dirs = [
            str(Path(sys.modules[name].__file__).resolve().parent)
            for name in ("torch", "triton")
            if name in sys.modules
        ]

    def refuse(self, what: str, quiet: bool = False):
        if not quiet:
            self.report(what)
        raise PermissionError(f"refused by the referee: {what}")

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            self.check_open(args[0], args[2])
        elif event in FS_CHANGES:
            for arg in args:
                if isinstance(arg, str | bytes | os.PathLike):
                    self.check_change(event, arg)
        elif event in NETWORK and not isinstance(args[1], str | bytes):  # a Unix socket's address is a path
            self.refuse(f"{event} to {args[1]!r}: workers have no network")
        elif event == "socket.getaddrinfo" and args[0] not in LOCAL_HOSTS:
            self.refuse(f"looking up {args[0]!r}: workers have no network")
        elif event in PROCESSES and not self.allowed_process(event, args):
            self.refuse(f"starting a process ({event} {str(args[:2])[:300]}): workers run no other program")

    def check_open(self, path, flags: int) -> None:
        if isinstance(path, int):
            return  # a descriptor that an earlier open allowed
        p = os.path.realpath(os.fsdecode(path))  # a link into the data is the data
        writing = bool(flags & WRITE_FLAGS)
        if any(under(p, d) for d in self.policy.data):
            self.refuse(f"opening {p} (the data: workers get batches from the referee only)")
        if self.is_stdlib_corpus(p):
            self.refuse(f"opening {p} (a file of the corpus, the standard library's source)", quiet=by_linecache())
        if self.is_sealed_bytecode(p):
            self.refuse(f"opening {p} (the bytecode of a validation or holdout file of the corpus: no import of it)")
        if p.startswith("/proc/") and p.split("/")[2].isdigit() and int(p.split("/")[2]) != os.getpid():
            self.refuse(f"opening {p} (another process)")
        if not under(p, self.policy.root):
            return
        if writing and p not in self.policy.writable:
            self.refuse(f"writing {p} (the main checkout: the ledger, runs and code are the referee's)")
        if not any(under(p, o) for o in self.policy.own) and any(under(p, d) for d in self.private):
            self.refuse(f"opening {p} (another run's files or the ledger)")

    def check_change(self, event: str, path) -> None:
        p = os.path.realpath(os.fsdecode(path))
        if under(p, self.policy.root) or any(under(p, d) for d in self.policy.data) or self.is_stdlib_corpus(p):
            self.refuse(f"{event} {p} (the main checkout or the data)")

    def is_stdlib_corpus(self, p: str) -> bool:
        return p.endswith(".py") and self.policy.stdlib is not None and corpus_file(p, self.policy.stdlib) is not None

    def is_sealed_bytecode(self, p: str) -> bool:
        if not p.endswith(".pyc") or self.policy.stdlib is None:
            return False
        try:
            source = importlib.util.source_from_cache(p)
        except ValueError:  # not a __pycache__ file
            return False
        relpath = corpus_file(source, self.policy.stdlib)
        return relpath is not None and split_of(relpath) != "train"

    def allowed_process(self, event: str, args: tuple) -> bool:
        if event == "os.system":
            return False
        program, argv = args[1:3] if event == "os.spawn" else args[:2]
        argv = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv or [])
        program = os.fsdecode(program if program is not None else argv[0])
        if os.path.basename(program) in COMPILERS or self.in_packages(program):
            return True
        # torch.compile's worker pool: this python running a file of torch's own
        python = os.path.realpath(program) == os.path.realpath(sys.executable)
        return python and len(argv) > 1 and self.in_packages(os.fsdecode(argv[1]))

    def in_packages(self, path: str) -> bool:
        p = os.path.realpath(path)
        return any(under(p, d) for d in self.package_dirs)


def corpus_file(path: str, stdlib: str) -> str | None:
    """The relative path of a standard-library source file (site-packages excluded), or None."""
    if not under(path, stdlib):
        return None
    relpath = Path(path).relative_to(stdlib)
    return None if {"site-packages", "dist-packages"} & set(relpath.parts) else relpath.as_posix()


def by_linecache() -> bool:
    """True when linecache (a traceback or a warning showing a source line) made the call."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code.co_name == "updatecache" and frame.f_code.co_filename.endswith("linecache.py"):
            return True
        frame = frame.f_back
    return False


def install(policy: Policy, report: Callable[[str], None]) -> None:
    """Refuse, from now on and for good, what `policy` forbids; tell `report` about each refusal."""
    sys.dont_write_bytecode = True  # a cached .pyc beside the kept code would be a write in the checkout
    sys.addaudithook(Tripwire(policy, report))


def readable_stdlib(stdlib: str | None) -> dict[str, int]:
    """The standard library as a worker may read it: all of it when it is not the corpus; else its folders'
    listings, its extension modules and the bytecode of its training-split modules, file by file."""
    own = os.path.realpath(sysconfig.get_paths()["stdlib"])
    if stdlib is None:
        return {own: landlock.READ_EXEC}
    rules = {stdlib: landlock.READ_DIR, os.path.join(stdlib, "lib-dynload"): landlock.READ_EXEC}
    for folder, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages", "lib-dynload")]
        if os.path.basename(folder) != "__pycache__":
            continue
        for name in files:
            if not name.endswith(f".{sys.implementation.cache_tag}.pyc"):  # what a worker imports (no -O files)
                continue
            path = os.path.join(folder, name)
            relpath = corpus_file(importlib.util.source_from_cache(path), stdlib)
            if relpath is not None and split_of(relpath) == "train":
                rules[path] = landlock.READ_FILE
    return rules


def loaded_libraries() -> list[str]:
    """The shared libraries mapped into this process (libc, libgomp, torch's): a dynamic loader reopens them."""
    with open("/proc/self/maps") as f:
        paths = {line.split(maxsplit=5)[5].strip() for line in f if line.count(" ") >= 5 and "/" in line}
    return sorted(p for p in paths if p.startswith("/") and os.path.isfile(p))


def confine(policy: Policy) -> str:
    """Ask the kernel to refuse, from now on, every file access `policy` does not need (Landlock); the isolation
    this worker has, for its row: `landlock`, or `tripwire` where the kernel cannot (said in the log)."""
    version = landlock.abi()
    if isinstance(version, str):
        logger.warning(f"{version}: the tripwire alone keeps the data from this worker, and native code can pass it")
        return "tripwire"
    rules = readable_stdlib(policy.stdlib)
    for folder in [*site.getsitepackages(), *TOOLCHAIN, sysconfig.get_paths()["include"], *loaded_libraries()]:
        rules.setdefault(os.path.realpath(folder), landlock.READ_EXEC)
    multiarch = sysconfig.get_config_var("MULTIARCH")  # x86_64-linux-gnu: the system's libraries, not Python's
    libraries = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    libraries += ["/usr/lib64", "/lib64", *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    for folder in libraries:  # (the CUDA driver's libraries are in one of them)
        rules.setdefault(os.path.realpath(folder), landlock.READ_EXEC)
    system = ["/etc/ld.so.cache", "/proc/self", "/proc/cpuinfo", "/proc/driver/nvidia", "/sys"]
    for path in [*system, str(Path(__file__).parent), *policy.own]:
        rules[os.path.realpath(path)] = landlock.READ
    for name in os.listdir("/dev"):  # the null, random and GPU devices; not /dev/shm, where other runs' buffers are
        device = os.path.realpath(f"/dev/{name}")
        if name != "shm" and under(device, "/dev"):  # (/dev/stdout and the like lead to pipes, not devices)
            rules[device] = landlock.READ | landlock.WRITE | landlock.IOCTL_DEV
    for path in [*policy.writable, *policy.caches, *([policy.scratch] if policy.scratch else [])]:
        rules[os.path.realpath(path)] = landlock.ALL
    sealed = [
        *policy.data,
        *([policy.stdlib] if policy.stdlib else []),
        *(os.path.join(policy.root, p) for p in PRIVATE),
    ]
    exposed = sorted(
        f"{path} (under {rule})"
        for path in sealed
        for rule, rights in rules.items()
        if rights & landlock.READ_FILE and under(path, rule)
    )
    if exposed:  # a text corpus inside site-packages, or the checkout on LD_LIBRARY_PATH, say: it would be readable
        raise ValueError(f"the sandbox would let workers read the data: {', '.join(exposed)}; move the data elsewhere")
    threads = len(os.listdir("/proc/self/task"))
    landlock.restrict(rules, version)
    if threads > 1:  # Landlock confines the calling thread and what it starts: these began before it
        logger.warning(f"Landlock ABI {version}: {threads - 1} thread(s) started before it are not confined")
    return "landlock"
