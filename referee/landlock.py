"""Linux Landlock, through ctypes: a process gives up, for good and for its children, every file access that
a list of rules does not grant. FROZEN (meta-mode only). The kernel enforces it, so native code (ctypes, a C
extension, torch.from_file) meets the same wall as Python's open(). https://docs.kernel.org/userspace-api/landlock.html

A rule grants rights beneath a path (a folder and all it holds, or one file); rights that no rule grants are
refused with EACCES. Landlock restricts the calling thread and the threads and processes it starts after:
a worker restricts itself while it is still single-threaded, so that no thread escapes (ABI 7 has no way to
restrict threads that already run).
"""

import ctypes
import os
import stat
import sys

# The syscall numbers are the same on every architecture (landlock came after the unified table).
CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, and the ABI that brought each (include/uapi/linux/landlock.h).
# fmt: off
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
# fmt: on
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may hold

READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE
WRITE = WRITE_FILE | TRUNCATE
ALL = (1 << 16) - 1  # a scratch folder: everything, making and removing included


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int | str:
    """The kernel's Landlock ABI version (1 or more); or why there is none, in words."""
    if sys.platform != "linux":
        return f"no Landlock on {sys.platform}"
    version = _libc().syscall(CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if version >= 1:
        return version
    errno = ctypes.get_errno()
    reason = {38: "the kernel has no Landlock (5.13 or later has it)", 95: "Landlock is disabled at boot (lsm=)"}
    return reason.get(errno, f"Landlock unavailable: {os.strerror(errno)}")


def restrict(rules: dict[str, int], version: int) -> None:
    """From now on this thread and what it starts may touch the file system only as `rules` (path -> rights)
    allow. A path that does not exist is skipped; rights that the ABI does not know are dropped."""
    libc = _libc()
    handled = FS_BY_ABI.get(version, ALL)
    attr = RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0)
    ruleset = libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path, rights in rules.items():
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                allowed = rights & handled & (ALL if is_dir else FILE_RIGHTS)
                rule = PathBeneathAttr(allowed, fd)
                if allowed and libc.syscall(ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:  # required of an unprivileged restrict_self
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
