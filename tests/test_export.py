"""`just export tensorboard`: the event files it writes, read back record by record (TFRecord framing, the
Event protocol buffer), hold each run's step metrics, its val_bpb and its row; a second export repeats none."""

import json
import struct
from pathlib import Path

from tensorboardX.proto import event_pb2

from conftest import add_rows, just


def events(folder: Path) -> list:
    """Every Event in the event files of one folder (not its subfolders)."""
    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            out.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4  # length, its crc, the record, its crc
    return out


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list] = {}
    for event in events(folder):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, round(value.simple_value, 5)))
    return found


def test_export_writes_each_runs_steps_score_and_row_once(project):
    add_rows(
        project,
        dict(experiment="main", val_bpb=2.0, seed=0, description="baseline seed 0/2", budget_tokens=1000),
        dict(experiment="fast", status="crash", val_bpb=None, seed=1, error="RuntimeError: boom", budget_tokens=1000),
    )
    steps = [dict(step=s, total_steps=20, loss=5.0 - s / 10, lr=0.001) for s in (0, 10, 19)]
    run_dir = project / "runs" / "r0-main"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
    for _ in range(2):  # the second export rewrites, never appends
        result = just(project, "export", "tensorboard")
        assert result.returncode == 0, result.stderr
    out = project / "runs" / "tensorboard"
    assert f"exported 2 runs to {out}" in result.stdout
    main = scalars(out / "r0-main")
    assert main["train/loss"] == [(0, 5.0), (10, 4.0), (19, 3.1)] and main["train/lr"] == [
        (0, 0.001),
        (10, 0.001),
        (19, 0.001),
    ]
    assert main["val_bpb"] == [(19, 2.0)]
    text = [
        v.tensor.string_val[0].decode()
        for e in events(out / "r0-main")
        for v in e.summary.value
        if v.tag == "row/text_summary"
    ]
    assert len(text) == 1 and "| role | baseline |" in text[0] and "group: cpu, 1,000 tokens" in text[0]
    assert scalars(out / "r0-main" / "hparams") == {"hparam/val_bpb": [(0, 2.0)]}
    crashed = scalars(out / "r1-fast")
    assert crashed == {}  # no steps, no score: its row alone, as text and hyperparameters
    assert any(v.tag == "row/text_summary" for e in events(out / "r1-fast") for v in e.summary.value)


def wandb_records(run_file: Path) -> dict[str, list]:
    """The records of one W&B offline run (its .wandb file), read with W&B's own reader, by record type."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store, records = datastore.DataStore(), {}
    store.open_for_scan(str(run_file))
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record.FromString(data)
        kind = record.WhichOneof("record_type")
        records.setdefault(kind, []).append(getattr(record, kind))
    return records


def items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def test_export_wandb_writes_offline_runs_the_client_reads_back(project):
    add_rows(
        project,
        *[dict(experiment="main", val_bpb=2.0 + s / 100, seed=s, description=f"baseline seed {s}/2") for s in (0, 1)],
        *[dict(experiment="fast", val_bpb=1.5 + s / 100, seed=s, label="Q: faster? H: -0.4") for s in (2, 3)],
        dict(experiment="fast", status="crash", val_bpb=None, seed=4, error="RuntimeError: boom"),
    )
    steps = [dict(step=s, total_steps=20, loss=5.0 - s / 10, lr=0.001) for s in (0, 10, 19)]
    (project / "runs" / "r2-fast").mkdir(parents=True)
    (project / "runs" / "r2-fast" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
    tmp = project.parent / "tmp"  # where W&B's service makes its socket folder: the export removes it after
    tmp.mkdir()
    for _ in range(2):  # the second export rewrites, never adds
        result = just(project, "export", "wandb", "--project", "lab", env={"WANDB_MODE": "online", "TMPDIR": str(tmp)})
        assert result.returncode == 0, result.stderr
    assert not list(tmp.glob("wandb-*"))
    out = project / "runs" / "wandb" / "wandb"
    assert f"exported 5 runs to {out} as W&B offline runs (project lab)" in result.stdout
    assert f"uv run wandb sync {out}/offline-run-*" in result.stdout
    files = {path.stem.removeprefix("run-"): path for path in out.glob("offline-run-*/run-*.wandb")}
    assert sorted(files) == ["r0-main", "r1-main", "r2-fast", "r3-fast", "r4-fast"]

    fast = wandb_records(files["r2-fast"])
    [run] = fast["run"]
    assert (run.run_id, run.display_name, run.project, run.job_type) == ("r2-fast", "r2-fast", "lab", "exploration")
    assert run.run_group.startswith("cpu, 1,000 tokens, data ffffffffffffffff") and run.notes == "Q: faster? H: -0.4"
    assert list(run.tags) == ["fast", "ok"]
    config = items(run.config.update)
    assert config["seed"] == 2 and config["label"] == "Q: faster? H: -0.4" and config["spec"]["seed"] == 2
    history = [items(h.item) for h in fast["history"]]
    assert [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h] == [(0, 5.0), (10, 4.0), (19, 3.1)]
    assert [(h["_step"], h["val_bpb"]) for h in history if "val_bpb" in h] == [(19, 1.52)]
    summary = {k: v for s in fast["summary"] for k, v in items(s.update).items()}
    assert summary["val_bpb"] == 1.52 and summary["status"] == "ok"
    assert summary["verdict/compare"] in ("improved", "promising") and "verdict/confirmation" not in summary
    assert [e.exit_code for e in fast["exit"]] == [0]

    crashed = wandb_records(files["r4-fast"])
    summary = {k: v for s in crashed["summary"] for k, v in items(s.update).items()}
    assert summary["status"] == "crash" and summary["error"] == "RuntimeError: boom" and "val_bpb" not in summary
    assert "history" not in crashed and [e.exit_code for e in crashed["exit"]] == [1]
    baseline = wandb_records(files["r0-main"])
    assert not any(k.startswith("verdict/") for s in baseline["summary"] for k in items(s.update))
