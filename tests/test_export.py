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
