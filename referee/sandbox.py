"""The tripwire around the experiment's code in a worker process. FROZEN (meta-mode only).

Python audit hooks, installed before the experiment's code loads (and never removable), refuse:
- opening the data: the prepared cache folder and the source's files (for the default corpus, the standard
  library's .py files, which only the import system may read, to compile them);
- opening another run's files (runs/) or the ledger, and writing anything in the main checkout (results.tsv,
  runs/, worktrees, .git) except the worker's own checkpoint;
- reading other processes through /proc;
- network connections and lookups (any socket address that is not a Unix socket path);
- starting a process, except the compilers and torch's own compile workers that torch.compile starts.

A refusal raises PermissionError where the experiment made the call and tells the referee at once, which
ends the run as a crash row naming what was touched, so catching the error gains nothing. A read that
linecache makes (a traceback's or a warning's source line) is refused without ending the run.

A tripwire, not a jail: code that runs outside Python's own calls is not seen. Native code (ctypes, a C
extension, torch.from_file, a compiler run by the worker) can open files, and Python code can spy on the
import system's frames (sys.settrace). 0_docs/problem.md lists what this cannot stop.
"""

import builtins
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import _bootstrap_external
from importlib.machinery import SourceFileLoader
from pathlib import Path

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
# The import system as it is before the experiment loads: what `importer_compiles` trusts.
GET_DATA, GET_CODE = (
    _bootstrap_external.FileLoader.get_data.__code__,
    _bootstrap_external.SourceLoader.get_code.__code__,
)
SOURCE_TO_CODE, COMPILE = _bootstrap_external.SourceLoader.source_to_code, builtins.compile


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


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class Tripwire:
    def __init__(self, policy: Policy, report: Callable[[str], None]):
        self.policy, self.report = policy, report
        self.private = [os.path.join(policy.root, "runs"), os.path.join(policy.root, "results.tsv")]
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
        if self.is_stdlib_corpus(p) and (writing or not importer_compiles(p)):
            self.refuse(f"opening {p} (a file of the corpus, the standard library's source)", quiet=by_linecache())
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
        stdlib = self.policy.stdlib
        if stdlib is None or not p.endswith(".py") or not under(p, stdlib):
            return False
        return not {"site-packages", "dist-packages"} & set(Path(p).relative_to(stdlib).parts)

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


def importer_compiles(path: str) -> bool:
    """True when the import system itself reads a source file to compile it (no cached bytecode): the
    caller is FileLoader.get_data, called by SourceLoader.get_code of a plain SourceFileLoader."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None or frame.f_code is not GET_DATA:
        return False
    caller = frame.f_back
    return (
        caller is not None
        and caller.f_code is GET_CODE
        and type(caller.f_locals.get("self")) is SourceFileLoader
        and SourceFileLoader.source_to_code is SOURCE_TO_CODE
        and builtins.compile is COMPILE
    )


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
