#!/usr/bin/env python3
"""A stand-in for pueue 4.0.4 (client and daemon), for tests on machines where pueue cannot be installed.

It follows `tests/pueue_contract.md`: the same subcommands, flags, stdout/stderr texts, JSON shapes
and exit codes for what the harness uses (add, status --json, log, follow, wait, group, parallel,
--version). State lives in `<dir>/state.json`, where <dir> is `shared.pueue_directory` of the
config named by `--config` or `$PUEUE_CONFIG_PATH`. The daemon (`fake_pueue.py daemon --config F`,
what the tests start instead of `pueued`) really runs each task with `sh -c` in its working directory
with exactly the environment captured at `add`, one group at a time up to its parallel limit, and
writes its output to `task_logs/<id>.log`. Without a running daemon every client call fails the way
pueue's does. `FAKE_PUEUE_VERSION=3.4.1` makes `status --json` and `--version` speak 3.x.
Standard library only.
"""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

VERSION = os.environ.get("FAKE_PUEUE_VERSION", "4.0.4")


def now() -> str:
    """RFC 3339 in the local offset with 9 fraction digits, as chrono writes it (`Z` for UTC)."""
    t = datetime.now().astimezone()
    offset = t.strftime("%z")
    offset = "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}{t.microsecond % 997:03d}" + offset


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def usage(message: str) -> None:
    fail(f"error: {message}\n\nFor more information, try '--help'.", 2)


# --- config and state ---


def pueue_dir(config: str | None) -> Path:
    path = config or os.environ.get("PUEUE_CONFIG_PATH")
    if not path or not Path(path).is_file():
        fail(
            "Error: Couldn't find a configuration file. Did you start the daemon yet?\n\n"
            "Location:\n    pueue/src/client/cli.rs:1:1"
        )
    match = re.search(r"pueue_directory:\s*(\S+)", Path(path).read_text())
    if not match:
        fail(f"Error: Error while reading configuration: no shared.pueue_directory in {path}")
    return Path(match[1])


def daemon_alive(directory: Path) -> bool:
    pid_file = directory / "pueue.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False


@contextmanager
def state(directory: Path, write: bool = True):
    with open(directory / "state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads((directory / "state.json").read_text())
        yield data
        if write:
            tmp = directory / "state.json.tmp"
            tmp.write_text(json.dumps(data))
            os.replace(tmp, directory / "state.json")


def variant(status: dict) -> str:
    return next(iter(status))


def result_of(task: dict):
    status = task["status"]
    return status["Done"]["result"] if variant(status) == "Done" else None


# --- the daemon ---


def daemon(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "task_logs").mkdir(exist_ok=True)
    if not (directory / "state.json").exists():
        (directory / "state.json").write_text(
            json.dumps({"tasks": {}, "groups": {"default": {"status": "Running", "parallel_tasks": 1}}})
        )
    (directory / "pueue.pid").write_text(str(os.getpid()))
    running: dict[str, subprocess.Popen] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        with state(directory) as data:
            tasks = data["tasks"]
            for tid, proc in list(running.items()):  # reap
                code = proc.poll()
                if code is None:
                    continue
                del running[tid]
                task = tasks.get(tid)
                if task is None:
                    continue
                result = "Success" if code == 0 else "Killed" if code < 0 else {"Failed": code}
                started = task["status"]["Running"]
                task["status"] = {"Done": {**started, "end": now(), "result": result}}
            for tid in sorted(tasks, key=int):  # failed dependencies
                task = tasks[tid]
                if variant(task["status"]) != "Queued":
                    continue
                deps = [tasks.get(str(d)) for d in task["dependencies"]]
                if any(d is not None and result_of(d) not in (None, "Success") for d in deps):
                    enq = task["status"]["Queued"]["enqueued_at"]
                    task["status"] = {
                        "Done": {"enqueued_at": enq, "start": now(), "end": now(), "result": "DependencyFailed"}
                    }
            queued = [t for t in tasks.values() if variant(t["status"]) == "Queued"]
            for task in sorted(queued, key=lambda t: (-t["priority"], t["id"])):  # start what fits
                group = data["groups"][task["group"]]
                busy = [t for t in tasks.values() if t["group"] == task["group"] and variant(t["status"]) == "Running"]
                if group["status"] != "Running" or (group["parallel_tasks"] and len(busy) >= group["parallel_tasks"]):
                    continue
                if any(result_of(tasks[str(d)]) != "Success" for d in task["dependencies"] if str(d) in tasks):
                    continue
                slots = {int(t["envs"].get("PUEUE_WORKER_ID", -1)) for t in busy}
                worker = next(i for i in range(len(busy) + 1) if i not in slots)
                task["envs"] = {**task["envs"], "PUEUE_GROUP": task["group"], "PUEUE_WORKER_ID": str(worker)}
                log = open(directory / "task_logs" / f"{task['id']}.log", "wb")
                try:
                    proc = subprocess.Popen(
                        ["sh", "-c", task["command"]], cwd=task["path"], env=task["envs"], stdin=subprocess.PIPE,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                except OSError as e:
                    enq = task["status"]["Queued"]["enqueued_at"]
                    task["status"] = {
                        "Done": {"enqueued_at": enq, "start": now(), "end": now(), "result": {"FailedToSpawn": str(e)}}
                    }
                    continue
                running[str(task["id"])] = proc
                task["status"] = {"Running": {"enqueued_at": task["status"]["Queued"]["enqueued_at"], "start": now()}}
        time.sleep(0.1)
    for proc in running.values():
        os.killpg(proc.pid, signal.SIGKILL)
    (directory / "pueue.pid").unlink()


# --- client subcommands ---


def take_ids(args: list[str]) -> tuple[list[int], list[str]]:
    ids, rest = [], []
    for a in args:
        (ids if a.isdigit() else rest).append(int(a) if a.isdigit() else a)
    return ids, rest


def option(args: list[str], *names: str, default=None):
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                value = args[i + 1]
                del args[i : i + 2]
                return value
            if a.startswith(n + "="):
                del args[i]
                return a.split("=", 1)[1]
    return default


def flag(args: list[str], *names: str) -> bool:
    found = [a for a in args if a in names]
    for a in found:
        args.remove(a)
    return bool(found)


def cmd_add(directory: Path, args: list[str]) -> None:
    if "--" in args:
        i = args.index("--")
        args, command = args[:i], args[i + 1 :]
    else:
        command = [a for a in args if not a.startswith("-")]
    cwd = option(args, "-w", "--working-directory", default=os.getcwd())
    label = option(args, "-l", "--label")
    group = option(args, "-g", "--group", default="default")
    priority = int(option(args, "-o", "--priority", default="0"))
    after = []
    for name in ("-a", "--after"):  # one or more ids, consumed greedily (the reason callers end with --)
        while name in args:
            i = args.index(name)
            j = i + 1
            while j < len(args) and args[j].isdigit():
                j += 1
            after += [int(a) for a in args[i + 1 : j]]
            del args[i:j]
    print_id, stashed = flag(args, "-p", "--print-task-id"), flag(args, "-s", "--stashed")
    if args:
        usage(f"unexpected argument '{args[0]}' found")
    if not command:
        usage("the following required arguments were not provided:\n  <COMMAND>...")
    try:
        path = str(Path(cwd).resolve(strict=True))
    except FileNotFoundError:
        fail("Error: Failed to canonicalize given working directory path")
    with state(directory) as data:
        if group not in data["groups"]:
            fail(f"Group {group} doesn't exists. Use one of these: {json.dumps(sorted(data['groups']))}")
        deps = sorted(set(after))
        missing = [d for d in deps if str(d) not in data["tasks"]]
        if missing:
            fail(f"Unable to setup dependencies : task(s) {missing} not found")
        tid = max((int(k) for k in data["tasks"]), default=-1) + 1
        joined = " ".join(command)
        data["tasks"][str(tid)] = {
            "id": tid, "created_at": now(), "original_command": joined, "command": joined, "path": path,
            "envs": dict(os.environ), "group": group, "dependencies": deps, "priority": priority, "label": label,
            "status": {"Stashed": {"enqueue_at": None}} if stashed else {"Queued": {"enqueued_at": now()}},
        }  # fmt: skip
    print(tid if print_id else f"New task added (id {tid}).")


def as_v3(task: dict) -> dict:
    """The 3.x shape of a task: plain-string states, times as top-level keys."""
    name, inner = next(iter(task["status"].items()))
    out = {k: v for k, v in task.items() if k != "status"}
    out.update(
        enqueued_at=inner.get("enqueued_at"), start=inner.get("start"), end=inner.get("end"), prev_status="Queued"
    )
    out["status"] = {"Done": inner["result"]} if name == "Done" else name if name != "Stashed" else task["status"]
    return out


def cmd_status(directory: Path, args: list[str]) -> None:
    as_json = flag(args, "-j", "--json")
    group = option(args, "-g", "--group")
    with state(directory, write=False) as data:
        tasks = {k: t for k, t in data["tasks"].items() if group is None or t["group"] == group}
        groups = dict(sorted(data["groups"].items()))
    if as_json:
        if VERSION.startswith("3."):
            tasks = {k: as_v3(t) for k, t in tasks.items()}
        print(json.dumps({"tasks": tasks, "groups": groups}, separators=(",", ":")))
        return
    for t in tasks.values():
        print(f"{t['id']:>3}  {variant(t['status']):<8} {t['label'] or '':<40} {t['command']}")


def log_text(directory: Path, task: dict, lines: int | None) -> str:
    path = directory / "task_logs" / f"{task['id']}.log"
    if not path.exists():
        return "(Pueue error) Failed to get log file handle: No such file or directory (os error 2)"
    text = path.read_text(errors="replace")
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


def cmd_log(directory: Path, args: list[str]) -> None:
    as_json, full = flag(args, "-j", "--json"), flag(args, "-f", "--full")
    lines = None if full else int(option(args, "-l", "--lines", default="15"))
    group, everything = option(args, "-g", "--group"), flag(args, "-a", "--all")
    ids, rest = take_ids(args)
    if rest:
        usage(f"unexpected argument '{rest[0]}' found")
    with state(directory, write=False) as data:
        tasks = data["tasks"]
    if ids:
        chosen = [tasks[str(i)] for i in ids if str(i) in tasks]
    else:
        chosen = [t for t in tasks.values() if everything or t["group"] == (group or "default")]
    if as_json:
        doc = {str(t["id"]): {"task": {**t, "envs": {}}, "output": log_text(directory, t, lines)} for t in chosen}
        print(json.dumps(doc, separators=(",", ":")))
        return
    shown = [t for t in chosen if variant(t["status"]) in ("Running", "Paused", "Done")]
    if not shown:
        print("There are no finished tasks for your specified ids", file=sys.stderr)
        return
    for t in shown:
        print(f"Task {t['id']}: {t['command']}\nLabel: {t['label']}\noutput:", file=sys.stderr)
        sys.stdout.write(log_text(directory, t, lines) + ("\n" if lines is not None else ""))


def cmd_follow(directory: Path, args: list[str]) -> None:
    ids, _ = take_ids(args)
    with state(directory, write=False) as data:
        tasks = data["tasks"]
    if not ids:
        running = [t["id"] for t in tasks.values() if variant(t["status"]) == "Running"]
        if len(running) != 1:
            fail(
                "There are no running tasks."
                if not running
                else f"Multiple tasks are running, please select one of the following: {', '.join(map(str, running))}"
            )
        ids = running
    tid = str(ids[0])
    if tid not in tasks:
        fail("Pueue: The task to be followed doesn't exist.")
    offset = 0
    while True:
        with state(directory, write=False) as data:
            task = data["tasks"].get(tid)
        if task is None:
            fail("Pueue: The followed task has been removed.")
        path = directory / "task_logs" / f"{tid}.log"
        if path.exists():
            chunk = path.read_bytes()[offset:]
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            offset += len(chunk)
        if variant(task["status"]) == "Done":
            return
        time.sleep(0.2)


def describe(result) -> str:
    if result == "Success":
        return "succeeded with 0"
    if isinstance(result, dict) and "Failed" in result:
        return f"failed with {result['Failed']}"
    return "has been killed" if result == "Killed" else f"failed: {result}"


def cmd_wait(directory: Path, args: list[str]) -> None:
    quiet = flag(args, "-q", "--quiet")
    target = (option(args, "-s", "--status", default="done")).lower()
    group, everything = option(args, "-g", "--group"), flag(args, "-a", "--all")
    ids, rest = take_ids(args)
    if rest or target not in ("done", "success", "queued", "running"):
        usage(
            f"invalid value '{target}' for '--status <STATUS>'"
            if not rest
            else f"unexpected argument '{rest[0]}' found"
        )
    reached = {
        "done": ("Done",), "success": ("Done",), "queued": ("Queued", "Running", "Done"), "running": ("Running", "Done"),
    }[target]  # fmt: skip
    seen: dict[str, str] = {}
    first = True
    while True:
        with state(directory, write=False) as data:
            tasks = data["tasks"]
        if ids:
            watched = {str(i): tasks[str(i)] for i in ids if str(i) in tasks}
            if first and not watched:
                print(f"No tasks found for selection TaskIds({ids})", file=sys.stderr)
                return
        else:
            watched = {k: t for k, t in tasks.items() if everything or t["group"] == (group or "default")}
        for k, t in watched.items():
            name = variant(t["status"])
            if not quiet and seen.get(k) != name:
                stamp = datetime.now().strftime("%H:%M:%S")
                if first and name in ("Running", "Paused"):
                    print(f"{stamp} - Found active Task {k} with status {name}")
                elif k not in seen and not first:
                    print(f"{stamp} - New task {k} with status {name}")
                elif name == "Done":
                    print(f"{stamp} - Task {k} {describe(result_of(t))}")
                elif k in seen:
                    print(f"{stamp} - Task {k} changed from {seen[k]} to {name}")
            seen[k] = name
            if target == "success" and name == "Done" and result_of(t) != "Success":
                sys.exit(1)
        first = False
        if all(variant(t["status"]) in reached for t in watched.values()):
            return
        time.sleep(0.2)


def cmd_group(directory: Path, args: list[str]) -> None:
    if args[:1] == ["add"]:
        name, rest = args[1], args[2:]
        parallel = int(option(rest, "-p", "--parallel", default="1"))
        with state(directory) as data:
            if name in data["groups"]:
                fail(f'Group "{name}" already exists')
            data["groups"][name] = {"status": "Running", "parallel_tasks": parallel}
        print(f'New group "{name}" has been created')
        return
    as_json = flag(args, "-j", "--json")
    with state(directory, write=False) as data:
        groups = dict(sorted(data["groups"].items()))
    if as_json:
        print(json.dumps(groups, separators=(",", ":")))
    else:
        for name, g in groups.items():
            print(f'Group "{name}" ({g["parallel_tasks"]} parallel): {g["status"].lower()}')


def cmd_parallel(directory: Path, args: list[str]) -> None:
    group = option(args, "-g", "--group", default="default")
    if len(args) != 1 or not args[0].isdigit():
        usage("the following required arguments were not provided:\n  <PARALLEL_TASKS>")
    with state(directory) as data:
        if group not in data["groups"]:
            fail(f"Group {group} doesn't exists. Use one of these: {json.dumps(sorted(data['groups']))}")
        data["groups"][group]["parallel_tasks"] = int(args[0])
    print(f'Parallel tasks setting for group "{group}" adjusted')


COMMANDS = {
    "add": cmd_add, "status": cmd_status, "log": cmd_log, "follow": cmd_follow, "fo": cmd_follow,
    "wait": cmd_wait, "group": cmd_group, "parallel": cmd_parallel,
}  # fmt: skip


def main(argv: list[str]) -> None:
    args = list(argv)
    if args[:1] == ["daemon"]:
        config = option(args, "-c", "--config")
        return daemon(pueue_dir(config))
    if "--version" in args[:1] or "-V" in args[:1]:
        print(f"pueue {VERSION}")
        return
    config = None
    while args and args[0].startswith("-"):  # global options come before the subcommand
        name = args.pop(0)
        if name.startswith("-v"):
            continue
        value = name.split("=", 1)[1] if "=" in name else args.pop(0)
        if name.split("=", 1)[0] in ("-c", "--config"):
            config = value
    command, rest = (args[0], args[1:]) if args else ("status", [])
    if command not in COMMANDS:
        usage(f"unrecognized subcommand '{command}'")
    directory = pueue_dir(config)
    if not daemon_alive(directory):
        sock = directory / f"pueue_{os.environ.get('USER', 'root')}.socket"
        fail(
            f"Error: Failed to initialize client.\n\nCaused by:\n    0: Failed to initialize stream.\n"
            f'    1: I/O error at path "{sock}" while connecting to daemon. Did you start it?: '
            f"Connection refused (os error 111)"
        )
    COMMANDS[command](directory, rest)


if __name__ == "__main__":
    main(sys.argv[1:])
