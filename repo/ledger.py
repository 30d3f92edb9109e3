"""results.tsv, the ledger: its schema, what a valid row is, the locked append, and the rows of runs that
were killed before they wrote one. The referee appends through this module; the harness reads through
`harness.table`. Standard library and filelock only: no torch, no polars."""

import json
import math
import os
import secrets
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from repo import append_durably, write_atomic
from repo.runs import RUNS, remove_scratch

LEDGER = "results.tsv"
RESULTS_SCHEMA = {  # the ledger's columns, in order, with their polars dtypes
    "run_id": "String",
    "started_at": "String",
    "experiment": "String",
    "config": "String",
    "commit": "String",
    "seed": "Int64",
    "device": "String",
    "status": "String",
    "val_bpb": "Float64",
    "train_tokens": "Int64",
    "wall_s": "Float64",
    "tokens_per_s": "Float64",
    "mfu": "Float64",
    "peak_mem_gb": "Float64",
    "params_m": "Float64",
    "label": "String",
    "eval_sha": "String",
    "data_fp": "String",
    "description": "String",
    "error": "String",
    "budget_tokens": "Int64",  # added 2026-11: the budget asked for (train_tokens is what whole batches served)
    "threads": "Int64",  # added 2026-11: CPU threads of each worker, on which a CPU run's number depends
    "role": "String",  # added 2026-11: what the run is for, written by the command that ran it (ROLES)
    "device_name": "String",  # added 2026-11: the CPU or GPU model, on which the number depends too
    "isolation": "String",  # added 2026-12: what kept the data from the experiment: landlock or tripwire
    "unseen_bpb": "Float64",  # added 2026-12: bits per byte on training text never served (memorization probe)
    "holdout_bpb": "Float64",  # added 2026-12: bits per byte on the sealed holdout split (confirmation runs only)
    "torch": "String",  # added 2026-12: the torch version, on which the number depends too
    "spec": "String",  # added 2026-12: the run as data (referee/spec.py's RunSpec, JSON), for reruns
}
RESULTS_COLUMNS = tuple(RESULTS_SCHEMA)
STATUSES = ("ok", "crash", "timeout")
BITWISE = ("val_bpb", "holdout_bpb", "unseen_bpb")  # written in full (repr), the other floats to 6 digits
# A row's role: a plain `just eval` explores; `just baseline`, `aa`, `determinism` and `plan` write theirs;
# both sides of `just confirm SLUG` write confirm:SLUG. It reaches eval.py in the run's spec (--role).
ROLES = ("exploration", "baseline", "aa", "determinism", "plan")
CONFIRM_ROLE = "confirm:"


def role_problem(role: str) -> str | None:
    """Why `role` is not one a command writes; None if it is one."""
    if role in ROLES or (role.startswith(CONFIRM_ROLE) and len(role) > len(CONFIRM_ROLE) and " " not in role):
        return None
    return f"role={role!r} is not one of {', '.join(ROLES)} or {CONFIRM_ROLE}SLUG"


def new_run_id(experiment: str) -> str:
    """A ledger row's id: start time, experiment, and 4 random hex digits so parallel runs differ."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{experiment}-{secrets.token_hex(2)}"


def format_row(row: dict) -> str:
    unknown = set(row) - set(RESULTS_COLUMNS)
    if unknown:
        raise ValueError(f"unknown ledger columns {sorted(unknown)}; the columns are {RESULTS_COLUMNS}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status {row.get('status')!r} is not one of {STATUSES}")
    if row.get("role") is not None and role_problem(row["role"]):
        raise ValueError(role_problem(row["role"]))

    def cell(column: str) -> str:
        value = row.get(column)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return ""
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if column in BITWISE:
            text = repr(float(value))  # full precision: determinism and `just audit` check these bit for bit
        return " ".join(text.split())  # no tab or newline may break the row

    return "\t".join(cell(c) for c in RESULTS_COLUMNS) + "\n"


def ledger_header(path: Path) -> tuple[str, ...]:
    """The column names of the ledger's first line; checked to be today's columns or an older prefix."""
    with open(path) as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
    if header != RESULTS_COLUMNS[: len(header)]:
        raise ValueError(
            f"{path}: header {list(header)} is not {list(RESULTS_COLUMNS)} or an older prefix of it; "
            "restore the first line (git checkout HEAD -- results.tsv)"
        )
    return header


def row_problem(line: str, header: tuple[str, ...]) -> str | None:
    """Why one line of the ledger is not a row the referee could have written; None if it is one."""
    cells = line.split("\t")
    if len(cells) != len(header):
        return f"{len(cells)} fields where the header has {len(header)}"
    for column, cell in zip(header, cells, strict=True):
        kind = RESULTS_SCHEMA[column]
        if column in ("run_id", "status") and not cell:
            return f"no {column}"
        if column == "status" and cell not in STATUSES:
            return f"status={cell!r} is not one of {', '.join(STATUSES)}"
        if column == "role" and cell and role_problem(cell):
            return role_problem(cell)
        try:
            typed(column, cell)
        except ValueError:
            return f"{column}={cell!r} is not a {'whole number' if kind == 'Int64' else 'number'}"
    return None


def find_rows(path: Path, run_id: str) -> list[dict]:
    """The rows of run `run_id` (and of its restarts, `RUN_ID-xxxx`), in order, with typed cells: what the
    referee's door reads back after a run, without polars."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    lines = path.read_text().splitlines()
    header = ledger_header(path)
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if (cells[0] == run_id or cells[0].startswith(f"{run_id}-")) and row_problem(line, header) is None:
            row = dict.fromkeys(RESULTS_COLUMNS)
            row.update((column, typed(column, cell)) for column, cell in zip(header, cells, strict=True))
            rows.append(row)
    return rows


def typed(column: str, cell: str):
    kind = RESULTS_SCHEMA[column]
    return None if cell == "" else int(cell) if kind == "Int64" else float(cell) if kind == "Float64" else cell


def ledger_problems(text: str, name: str = LEDGER) -> list[str]:
    """Every line of a ledger's text that is not a valid row, as 'NAME:LINE: why'."""
    lines = text.split("\n")
    header = tuple(lines[0].split("\t"))
    if header != RESULTS_COLUMNS[: len(header)]:
        return [f"{name}:1: the header is not {' '.join(RESULTS_COLUMNS)} or an older prefix of it"]
    problems = []
    for number, line in enumerate(lines[1:], start=2):
        if line == "" and number == len(lines):
            continue  # the newline that ends the last row
        why = "an empty line" if not line.strip() else row_problem(line, header)
        if why is not None:
            problems.append(f"{name}:{number}: {why}")
    return problems


def without_bad_lines(text: str) -> str:
    """The ledger's text less the lines that are not rows: what its repair may leave."""
    lines = text.splitlines(keepends=True)
    header = tuple(lines[0].rstrip("\n").split("\t"))
    return lines[0] + "".join(
        line for line in lines[1:] if line.strip() and row_problem(line.rstrip("\n"), header) is None
    )


def check_ledger(path: Path) -> None:
    """Refuse a ledger with a line that is not a row, naming the line and the repair."""
    if not path.exists() or path.stat().st_size == 0:
        return
    problems = ledger_problems(path.read_text(), str(path))
    if problems:
        more = f" (and {len(problems) - 1} more such lines)" if len(problems) > 1 else ""
        raise ValueError(
            f"{problems[0]}{more}: not a row the referee wrote. Repair: delete that line (the guard lets a "
            f"line that is not a row go), or restore the file (git checkout HEAD -- {path.name})"
        )


def migrated(text: str) -> str:
    """An older ledger's text in today's format: today's header, and each row padded with empty cells
    for the columns added since (they read as null). Rows are otherwise byte for byte as they were."""
    lines = text.splitlines(keepends=True)
    missing = len(RESULTS_COLUMNS) - len(lines[0].rstrip("\n").split("\t"))
    rows = [line.rstrip("\n") + "\t" * missing + "\n" for line in lines[1:] if line.strip()]
    return "\t".join(RESULTS_COLUMNS) + "\n" + "".join(rows)


def ledger_lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock")


def append_result(row: dict, path: Path) -> None:
    """Append one row under the ledger's lock (`append_locked`)."""
    with ledger_lock(path):
        append_locked(row, path)


def append_locked(row: dict, path: Path) -> None:
    """Append one row, writing the header first if the file is new or empty; the caller holds the lock.
    The line goes out in one write of an O_APPEND file, so a reader never sees half a row. A ledger
    written before a column was added is first migrated (`migrated`), atomically."""
    line = format_row(row).encode()
    if path.exists() and path.stat().st_size and len(ledger_header(path)) < len(RESULTS_COLUMNS):
        write_atomic(path, migrated(path.read_text()).encode())
    if not path.exists() or path.stat().st_size == 0:
        line = ("\t".join(RESULTS_COLUMNS) + "\n").encode() + line
    append_durably(path, line)


# A run that has not recorded its row keeps runs/{run_id}/running.json: its process and the row it
# would write. SIGKILL and the out-of-memory killer leave it behind; the next ledger read finds its
# process gone and records the crash row then, once (`reap_killed_runs`).
RUNNING = "running.json"


def process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot), which tells it from a later one
    given the same pid; None when there is no such process (or no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def is_alive(pid: int, start: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        return process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def mark_running(row: dict, run_dir: Path) -> None:
    record = dict(host=socket.gethostname(), pid=os.getpid(), start=process_start(os.getpid()), row=row)
    write_atomic(run_dir / RUNNING, json.dumps(record).encode())


def markers_here(root: Path) -> list[tuple[Path, dict]]:
    """The markers of runs started on this host, read; a run on another host (a cluster's shared runs/) is
    that host's to judge."""
    found = []
    for marker in (root / RUNS).glob(f"*/{RUNNING}"):
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue  # being written, or already reaped
        if record["host"] == socket.gethostname():
            found.append((marker, record))
    return found


def rows_in_flight(root: Path) -> list[dict]:
    """The rows, as they stand, of the runs of this checkout in progress on this host (their markers)."""
    return [r["row"] for _, r in markers_here(root) if is_alive(r["pid"], r["start"])]


def runs_on_this_machine(root: Path) -> list[str]:
    """Every scored run in progress on this machine that this user can see, in any checkout and by any user: its
    run id (from its argv or its marker under `root`), else its checkout (an `eval.py` process other than this one,
    read from /proc; [] without /proc)."""
    found, ids = [], {str(r["pid"]): marker.parent.name for marker, r in markers_here(root)}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone, or not ours to read
        if int(proc.name) == os.getpid() or not any(Path(a).name == "eval.py" for a in argv[1:3]):
            continue
        run_id = argv[argv.index("--run-id") + 1] if "--run-id" in argv[:-1] else ids.get(proc.name)
        if run_id is not None:
            found.append(run_id)
            continue
        try:
            found.append(f"pid {proc.name} in {os.readlink(proc / 'cwd')}")
        except OSError:
            found.append(f"pid {proc.name}")
    return found


def record_killed_runs(root: Path) -> None:
    """The crash row of every run killed before it wrote one (SIGKILL, the out-of-memory killer), once, each
    named on stderr: the explicit step of `just eval`, `just check` and `just next` (reading the ledger never
    writes it). A ledger with a line that is not a row is refused first (`check_ledger`): nothing is appended."""
    check_ledger(root / LEDGER)
    for run_id in reap_killed_runs(root):
        print(f"recorded run {run_id} as crash: its process was killed before it wrote its row", file=sys.stderr)


def reap_killed_runs(root: Path) -> list[str]:
    """Record a `crash` row for every run whose process died without writing its row; their ids."""
    dead = [marker for marker, r in markers_here(root) if not is_alive(r["pid"], r["start"])]
    if not dead:
        return []
    path, reaped = root / LEDGER, []
    with ledger_lock(path):  # two readers that find the same dead run record it once
        recorded = {line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:]} if path.exists() else set()
        for marker in dead:
            if not marker.exists():
                continue
            record = json.loads(marker.read_text())
            if record["row"]["run_id"] not in recorded:
                error = f"killed (SIGKILL or out of memory): process {record['pid']} ended without writing its row"
                append_locked(dict(record["row"], status="crash", error=error), path)
                reaped.append(record["row"]["run_id"])
            marker.unlink()
            remove_scratch(record["row"]["run_id"])  # its workers died with it (PR_SET_PDEATHSIG)
    return reaped
