"""Queueing labelled runs through pueue. pueue cannot be installed here, so these tests put the fake in
tests/bin first on PATH; it follows tests/pueue_contract.md and really runs each task."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tyro

from conftest import git, just, ledger, run
from harness import queue
from harness.pueue import task_state
from referee.spec import RunSpec

HERE = Path(__file__).resolve().parent
TINY = ["tiny", "--budget-tokens", "3000"]


class Pueue:
    """A fake pueue daemon in a temp folder, and the environment that points clients at it."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "pueue.yml"
        self.config.write_text(f"shared:\n  pueue_directory: {folder}\n  runtime_directory: {folder}\n")
        self.env = {
            "PUEUE_CONFIG_PATH": str(self.config),
            "PATH": f"{HERE / 'bin'}:{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1",  # runs in two GPU groups go side by side on two cores
        }
        self.folder, self.daemon = folder, None

    def start(self) -> "Pueue":
        self.daemon = subprocess.Popen(
            [sys.executable, str(HERE / "fake_pueue.py"), "daemon", "--config", str(self.config)]
        )
        for _ in range(100):
            if (self.folder / "pueue.pid").exists():
                return self
            time.sleep(0.05)
        raise AssertionError("the fake pueue daemon did not start")

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=30)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return run(["pueue", *args], cwd=self.folder, env=self.env)


@pytest.fixture
def pueue(tmp_path):
    daemon = Pueue(tmp_path / "pueue").start()
    yield daemon
    daemon.stop()


def test_labelled_runs_from_two_checkouts_meet_their_results(project, small_corpus, pueue):
    assert just(project, "new", "wider").returncode == 0
    wider = project / "5_worktrees" / "wider"
    (wider / "train.py").write_text(
        (wider / "train.py")
        .read_text()
        .replace("d_model=32, d_head=16, seq_len=64", "d_model=48, d_head=16, seq_len=64")
    )
    git("commit", "-qam", "wider", cwd=wider)
    assert pueue("group", "add", "gpu0").returncode == 0 and pueue("group", "add", "gpu1").returncode == 0

    labels = {
        "main": "Q: where is the baseline? H: about 3.5 bpb at 3k tokens",
        "wider": "Q: does width help? H: expect -0.05 val_bpb",
    }
    for slug, label in labels.items():
        result = just(project, "queue", label, slug, *TINY, "--description", "queued run", env=pueue.env | small_corpus)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"queued task {list(labels).index(slug)}: just eval tiny --budget-tokens 3000")
    state = json.loads(pueue("status", "--json").stdout)
    assert [(t["group"], t["envs"]["CUDA_VISIBLE_DEVICES"]) for t in state["tasks"].values()] == [
        ("gpu0", "0"),
        ("gpu1", "1"),
    ]
    specs = [RunSpec.from_argv(shlex.split(t["command"])[2:]) for t in state["tasks"].values()]
    assert [s.label for s in specs] == [t["label"] for t in state["tasks"].values()] and all(s.run_id for s in specs)

    waited = pueue("wait", "0", "1", "--status", "success")
    assert waited.returncode == 0, pueue("log", "0", "1", "--full").stdout
    df = ledger(project)
    assert dict(zip(df["experiment"], df["label"], strict=True)) == labels
    assert set(df["status"]) == {"ok"} and set(df["description"]) == {"queued run"}

    status = json.loads(just(project, "status", "--json", env=pueue.env).stdout)
    assert [(s["slug"], s["state"], s["row"]["val_bpb"]) for s in status] == [
        (slug, "Success", df.filter(df["experiment"] == slug)["val_bpb"][0]) for slug in labels
    ]
    assert status[0]["delta"] is None and status[1]["delta"] is None  # no baseline in their group: no bar yet
    text = just(project, "status", env=pueue.env).stdout
    assert "does width help?" in text and "expect -0.05 val_bpb" in text and "Success" in text

    v3 = json.loads(just(project, "status", "--json", env={**pueue.env, "FAKE_PUEUE_VERSION": "3.4.1"}).stdout)
    assert v3 == status  # the 3.x JSON format reads the same

    assert "review: 2 new journal entries" in just(project, "review", env=pueue.env).stdout
    assert "review: 0 new journal entries" in just(project, "review", env=pueue.env).stdout
    journal = (project / "RESEARCH_JOURNAL.md").read_text()
    assert journal.count("review of pueue task") == 2 and journal.count("- **Hypothesis:** expect -0.05 val_bpb") == 1
    assert "- **Observation:** val_bpb" in journal and "- **Inference:** " in journal

    assert "val_bpb:" in just(project, "log", "1", env=pueue.env).stdout


def test_the_seeds_own_pueue_add_records_its_label_and_parallel_tasks_keep_their_rows(project, small_corpus, pueue):
    label = "Q: one question, two paths? H: the same row"
    assert pueue("parallel", "2").returncode == 0  # both tasks run at once, in worker slots 0 and 1
    command = shlex.join(["just", "eval", *TINY, "--description", "same row"])
    env = pueue.env | small_corpus
    added = run(["pueue", "add", "--label", label, "--", command], cwd=project, env=env)  # the seed's usage
    assert added.returncode == 0, added.stderr
    assert just(project, "queue", label, "main", *TINY, "--description", "same row", env=env).returncode == 0
    waited = pueue("wait", "0", "1", "--status", "success")
    assert waited.returncode == 0, pueue("log", "0", "1", "--full").stdout
    state = json.loads(pueue("status", "--json").stdout)["tasks"]
    assert sorted(t["envs"]["PUEUE_WORKER_ID"] for t in state.values()) == ["0", "1"]
    assert "--label" not in state["0"]["command"] and queue.queued_run_id(state["0"]["command"]) is None

    df = ledger(project)
    same = ["experiment", "config", "seed", "status", "val_bpb", "label", "description", "budget_tokens"]
    assert df.height == 2 and df.select(same).unique().height == 1  # one row twice, but for its id
    queued_id = queue.queued_run_id(state["1"]["command"])
    status = {s["id"]: s["row"]["run_id"] for s in json.loads(just(project, "status", "--json", env=pueue.env).stdout)}
    assert status[1] == queued_id and status[0] != queued_id and set(status.values()) == set(df["run_id"])


@pytest.mark.parametrize(
    "label", ["does X help?", "Q: does X help?", "H: yes Q: why", "Q:  H: something", "Q: something H:"]
)
def test_a_label_without_question_and_hypothesis_is_refused_with_an_example(project, pueue, label):
    result = just(project, "queue", label, "main", *TINY, env=pueue.env)
    assert result.returncode == 2 and "bad label" in result.stderr and "Q: does rotary help? H:" in result.stderr


def test_an_unknown_slug_is_refused(project, pueue):
    result = just(project, "queue", "Q: x? H: y", "nowhere", env=pueue.env)
    assert (
        result.returncode == 2 and "no worktree for 'nowhere'" in result.stderr and "just new nowhere" in result.stderr
    )


def test_a_dirty_worktree_is_refused_before_it_is_queued(project, pueue):
    (project / "model.py").write_text((project / "model.py").read_text() + "\n# wip\n")
    result = just(project, "queue", "Q: x? H: y", "main", env=pueue.env)
    assert result.returncode == 2 and "uncommitted Python code" in result.stderr
    assert json.loads(pueue("status", "--json").stdout)["tasks"] == {}


def test_pueue_missing_says_how_to_install_it(project):
    result = just(project, "queue", "Q: x? H: y", "main")
    assert result.returncode == 2 and "pueue is not installed" in result.stderr and "pueued -d" in result.stderr


def test_a_daemon_that_is_down_says_how_to_start_it(project, tmp_path):
    down = Pueue(tmp_path / "down")  # configured, never started
    for args in (["queue", "Q: x? H: y", "main"], ["status"], ["log", "0"]):
        result = just(project, *args, env=down.env)
        assert result.returncode == 2 and "start it with `pueued -d`" in result.stderr, args


def test_gpus_without_a_gpu_uses_the_default_group(project, pueue):
    result = just(project, "gpus", env=pueue.env)
    assert result.returncode == 0 and "default group" in result.stdout
    assert list(json.loads(pueue("group", "--json").stdout)) == ["default"]


# --- the adapter's parsing, on the reference's own examples ---

REFERENCE_4X = {
    "tasks": {
        "0": {"id": 0, "group": "gpu0", "label": "run-a", "status": {"Done": {"enqueued_at": "2026-03-02T10:00:01.104498120+01:00", "start": "2026-03-02T10:00:01.352877061+01:00", "end": "2026-03-02T11:12:40.009812455+01:00", "result": "Success"}}},
        "1": {"id": 1, "group": "gpu1", "label": "run-b", "status": {"Done": {"enqueued_at": "2026-03-02T10:00:02.511061004+01:00", "start": "2026-03-02T10:00:02.755300198+01:00", "end": "2026-03-02T10:40:13.120044871+01:00", "result": {"Failed": 1}}}},
        "2": {"id": 2, "group": "gpu1", "label": "run-c", "status": {"Running": {"enqueued_at": "2026-03-02T10:00:03.907204117+01:00", "start": "2026-03-02T10:40:13.402118930+01:00"}}},
        "3": {"id": 3, "group": "gpu1", "label": "eval-a", "status": {"Queued": {"enqueued_at": "2026-03-02T10:00:05.230869941+01:00"}}},
    },
    "groups": {"default": {"status": "Running", "parallel_tasks": 1}, "gpu0": {"status": "Running", "parallel_tasks": 1}, "gpu1": {"status": "Running", "parallel_tasks": 1}},
}  # fmt: skip


def test_task_states_read_from_4x_and_3x_json():
    states = [task_state(t) for t in REFERENCE_4X["tasks"].values()]
    assert [(s[0], s[3]) for s in states] == [
        ("Done", "Success"),
        ("Done", "Failed(1)"),
        ("Running", None),
        ("Queued", None),
    ]
    assert states[0][1] == "2026-03-02T10:00:01.352877061+01:00"
    v3_done = {"status": {"Done": {"Failed": 1}}, "start": "2026-03-02T10:00:02Z", "end": "2026-03-02T10:40:13Z"}
    assert task_state(v3_done) == ("Done", "2026-03-02T10:00:02Z", "2026-03-02T10:40:13Z", "Failed(1)")
    assert task_state({"status": "Running", "start": "2026-03-02T10:00:02Z"})[:2] == (
        "Running",
        "2026-03-02T10:00:02Z",
    )
    assert task_state({"status": {"Done": "Success"}})[3] == "Success"


def test_the_least_loaded_gpu_group_is_picked():
    assert queue.pick_group(REFERENCE_4X) == ("gpu0", "0")  # gpu1 has one running and one queued
    assert queue.pick_group({"tasks": {}, "groups": {"default": {}}}) == ("default", None)
    ten = {"tasks": {}, "groups": {f"gpu{i}": {} for i in (10, 2, 1)}}
    assert queue.pick_group(ten) == ("gpu1", "1")


def test_the_queues_own_flags_are_understood_before_the_label_or_after_the_slug():
    label = "Q: x? H: y"
    flags_first = ["--backend", "local", "--time-min=5", label, "wider", "--seed", "1"]
    flags_last = [label, "wider", "--seed", "1", "--backend", "local", "--time-min", "5"]
    before = tyro.cli(queue.Queue, args=flags_first, return_unknown_args=True)
    after = tyro.cli(queue.Queue, args=flags_last, return_unknown_args=True)
    assert before == after == (queue.Queue(label, "wider", backend="local", time_min=5), ["--seed", "1"])
    parsed, eval_args = tyro.cli(queue.Queue, args=[label, "wider", "tiny", "--nproc", "4"], return_unknown_args=True)
    assert parsed.nproc == 4 and eval_args == ["tiny"]  # the run's GPUs: Queue passes --nproc on to eval.py
