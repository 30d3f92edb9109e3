"""The pueue client, called through its CLI with JSON output parsed (contract: tests/pueue_contract.md):
calls that fail clearly, task states of pueue 4.x and 3.x, and the label of the task a process is."""

import json
import os
import re
import shutil
import subprocess

from harness import Refusal

LABEL = re.compile(r"^\s*Q:\s*(?P<q>\S.*?)\s*H:\s*(?P<h>\S.*?)\s*$", re.DOTALL)
LABEL_EXAMPLE = '"Q: does rotary help? H: expect -0.05 val_bpb"'
INSTALL = (
    "install pueue (cargo install --locked pueue, brew install pueue, or a release binary from "
    "https://github.com/Nukesor/pueue/releases), then start its daemon: pueued -d"
)


def parse_label(label: str) -> tuple[str, str]:
    """(question, hypothesis) of a `Q: ... H: ...` label."""
    match = LABEL.match(label)
    if match is None:
        raise Refusal(f"bad label {label!r}: it must read 'Q: <question> H: <hypothesis>', e.g. {LABEL_EXAMPLE}")
    return match["q"], match["h"]


def pueue(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the pueue client; a missing client or a daemon that does not answer is a clear refusal."""
    if shutil.which("pueue", path=(env or os.environ).get("PATH")) is None:
        raise Refusal(f"pueue is not installed: {INSTALL}")
    result = subprocess.run(["pueue", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0 and "Did you start" in result.stderr:
        raise Refusal("the pueue daemon does not answer: start it with `pueued -d` (then check with `pueue status`)")
    if result.returncode != 0:
        raise Refusal(f"pueue {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def state() -> dict:
    """`pueue status --json`: {"tasks": {id: task}, "groups": {name: group}}."""
    return json.loads(pueue("status", "--json").stdout)


def task_state(task: dict) -> tuple[str, str | None, str | None, str | None]:
    """(state, start, end, result) of a task, from the 4.x or the 3.x status format."""
    status = task["status"]
    if isinstance(status, str):  # 3.x: "Queued", "Running", "Paused", "Locked"
        return status, task.get("start"), task.get("end"), None
    name, inner = next(iter(status.items()))
    if name == "Done" and not (isinstance(inner, dict) and "result" in inner):
        # 3.x: {"Done": "Success"} or {"Done": {"Failed": 1}}, with the times as top-level keys
        inner = {"result": inner, "start": task.get("start"), "end": task.get("end")}
    inner = inner if isinstance(inner, dict) else {}
    result = inner.get("result")
    if isinstance(result, dict):  # {"Failed": 1} -> "Failed(1)"
        result = "{}({})".format(*next(iter(result.items())))
    return name, inner.get("start", task.get("start")), inner.get("end", task.get("end")), result


def task_label() -> str:
    """The label of the pueue task this process is, for a run added with the seed's plain `pueue add --label ..
    -- just eval`: under pueue (PUEUE_GROUP and PUEUE_WORKER_ID set) the label of the running task in that
    group's worker slot, since pueue has no task-id variable; else empty (a run started by hand)."""
    group, worker = os.environ.get("PUEUE_GROUP"), os.environ.get("PUEUE_WORKER_ID")
    if group is None or worker is None:
        return ""
    mine = [
        task
        for task in state()["tasks"].values()
        if task["group"] == group
        and task_state(task)[0] == "Running"
        and task.get("envs", {}).get("PUEUE_WORKER_ID") == worker
    ]
    if len(mine) != 1:
        raise Refusal(
            f"PUEUE_GROUP={group} PUEUE_WORKER_ID={worker}: {len(mine)} running pueue tasks hold that slot "
            f"({', '.join(str(t['id']) for t in mine) or 'none'}), so this run cannot tell which label is its own; "
            "queue it with `just queue LABEL SLUG`, or give it with --label"
        )
    return mine[0].get("label") or ""
