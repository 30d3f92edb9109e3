"""`just export tensorboard`: every run's step metrics and its ledger row as TensorBoard event files, so that
the viewer researchers already use shows them: `tensorboard --logdir runs/tensorboard`. TensorBoard rather
than W&B or MLflow because it reads local files, with no account, server or network, as this harness runs;
written through tensorboardX, TensorBoard's standalone writer (the optional `tensorboard` dependency group)."""

import shutil
from pathlib import Path
from typing import Literal

from harness import Refusal
from harness.table import group_name, ledger
from repo.git import main_root
from repo.runs import RUNS, read_steps

HPARAMS = ("experiment", "config", "seed", "device", "commit", "role", "budget", "threads", "status", "label")


def export(tool: Literal["tensorboard"], /, out: Path | None = None) -> None:
    """Write every ledger row's run as TensorBoard event files: its step metrics (train/loss, train/lr, ...
    from runs/ID/metrics.jsonl), val_bpb, and its row as hyperparameters and text. Rewritten whole on each
    call, into OUT (default runs/tensorboard/), one folder per run id.

    Args:
        tool: the viewer to write for
        out: the folder to write into
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise Refusal("tensorboardX is not installed: `uv sync --group tensorboard` adds it (dev has it)") from e
    root = main_root()
    out = out or root / RUNS / "tensorboard"
    df = ledger(root)
    if df.is_empty():
        raise Refusal("the ledger has no rows to export: score a run first (uv run just eval)")
    shutil.rmtree(out, ignore_errors=True)  # event files append: a second export must not repeat every point
    for row in df.iter_rows(named=True):
        steps = read_steps(root / RUNS / row["run_id"])
        with SummaryWriter(logdir=str(out / row["run_id"])) as writer:
            for record in steps:
                for key, value in record.items():
                    if key not in ("step", "total_steps") and isinstance(value, int | float):
                        writer.add_scalar(f"train/{key}", value, record["step"])
            last_step = steps[-1]["step"] if steps else 0
            if row["val_bpb"] is not None:
                writer.add_scalar("val_bpb", row["val_bpb"], last_step)
            fields = "\n".join(f"| {k} | {v} |" for k, v in row.items() if v is not None)
            writer.add_text("row", f"group: {group_name(row)}\n\n| column | value |\n|---|---|\n{fields}", last_step)
            hparams = {k: row[k] for k in HPARAMS if row[k] is not None}
            metric = {"hparam/val_bpb": row["val_bpb"]} if row["val_bpb"] is not None else {}
            writer.add_hparams(hparams, metric, name="hparams")
    print(f"exported {df.height} runs to {out}\nview them: tensorboard --logdir {out}")
