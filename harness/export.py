"""`just export tensorboard|wandb`: every run's step metrics and its ledger row, for the trackers researchers
already use. TensorBoard event files (`tensorboard --logdir runs/tensorboard`), written through tensorboardX,
TensorBoard's standalone writer (the `tensorboard` dependency group); and W&B offline runs, written through W&B's
own client in offline mode (the `wandb` dependency group), with no account or network until `wandb sync` uploads
them. Both come from the ledger and runs/ID/metrics.jsonl, rewritten whole on each call."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import polars as pl

from harness import Refusal
from harness.compare import verdict_of
from harness.table import group_name, ledger
from repo.git import main_root
from repo.runs import RUNS, read_steps

HPARAMS = ("experiment", "config", "seed", "device", "commit", "role", "budget", "threads", "status", "label")


def export(
    tool: Literal["tensorboard", "wandb"], /, out: Path | None = None, project: str | None = None,
    entity: str | None = None,
) -> None:  # fmt: skip
    """Write every ledger row's run for a tracker: its step metrics (train/loss, train/lr, ... from
    runs/ID/metrics.jsonl), val_bpb, and its row. Rewritten whole on each call, into OUT (default runs/TOOL/).

    Args:
        tool: tensorboard (event files, one folder per run id) or wandb (W&B offline runs, one per run id)
        out: the folder to write into
        project: wandb: the W&B project (default: the main checkout's folder name)
        entity: wandb: the W&B user or team (default: your default entity when `wandb sync` uploads)
    """
    if tool != "wandb" and (project or entity):
        raise Refusal("--project and --entity are W&B's: use them with `just export wandb`")
    root = main_root()
    out = out or root / RUNS / tool
    df = ledger(root)
    if df.is_empty():
        raise Refusal("the ledger has no rows to export: score a run first (uv run just eval)")
    if tool == "tensorboard":
        return export_tensorboard(root, df, out)
    export_wandb(root, df, out, project or root.name, entity)


def step_scalars(record: dict) -> dict[str, float]:
    """One line of metrics.jsonl as train/NAME scalars."""
    return {
        f"train/{key}": value
        for key, value in record.items()
        if key not in ("step", "total_steps") and isinstance(value, int | float)
    }


def export_tensorboard(root: Path, df: pl.DataFrame, out: Path) -> None:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise Refusal("tensorboardX is not installed: `uv sync --group tensorboard` adds it (dev has it)") from e
    shutil.rmtree(out, ignore_errors=True)  # event files append: a second export must not repeat every point
    for row in df.iter_rows(named=True):
        steps = read_steps(root / RUNS / row["run_id"])
        with SummaryWriter(logdir=str(out / row["run_id"])) as writer:
            for record in steps:
                for tag, value in step_scalars(record).items():
                    writer.add_scalar(tag, value, record["step"])
            last_step = steps[-1]["step"] if steps else 0
            if row["val_bpb"] is not None:
                writer.add_scalar("val_bpb", row["val_bpb"], last_step)
            fields = "\n".join(f"| {k} | {v} |" for k, v in row.items() if v is not None)
            writer.add_text("row", f"group: {group_name(row)}\n\n| column | value |\n|---|---|\n{fields}", last_step)
            hparams = {k: row[k] for k in HPARAMS if row[k] is not None}
            metric = {"hparam/val_bpb": row["val_bpb"]} if row["val_bpb"] is not None else {}
            writer.add_hparams(hparams, metric, name="hparams")
    print(f"exported {df.height} runs to {out}\nview them: tensorboard --logdir {out}")


@contextmanager
def service_tmpdir(wandb):
    """W&B's service process makes its socket folder in TMPDIR and never removes it: give it one, removed after."""
    folder, before = tempfile.mkdtemp(prefix="wandb-service-"), os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        wandb.teardown()  # the service ends here: its folder is no longer in use
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def export_wandb(root: Path, df: pl.DataFrame, out: Path, project: str, entity: str | None) -> None:
    """One W&B offline run per row: id and name the run id, group its comparable group, job type its role, notes
    its label, tags its experiment and status; config the row (its spec as a dict); history the step metrics and
    val_bpb at the last step; summary val_bpb, holdout_bpb, status, error and, for an experiment, the verdicts of
    `just compare` and `just confirm` as they stand now."""
    try:
        import wandb
    except ImportError as e:
        raise Refusal("wandb is not installed: `uv sync --group wandb` adds it (dev has it)") from e
    shutil.rmtree(out, ignore_errors=True)  # one offline run per row: a second export must not leave two
    out.mkdir(parents=True)
    verdicts = {slug: verdict_of(df, slug) for slug in df["experiment"].unique() if slug != "main"}
    settings = wandb.Settings(
        mode="offline", silent=True, console="off", disable_git=True, save_code=False, disable_job_creation=True,
        x_disable_stats=True, x_disable_meta=True,  # the exporting process's machine and git are not the run's
    )  # fmt: skip
    with service_tmpdir(wandb):
        for row in df.iter_rows(named=True):
            config = {k: v for k, v in row.items() if v is not None and k != "spec"} | {"spec": json.loads(row["spec"])}
            summary = {k: row[k] for k in ("val_bpb", "holdout_bpb", "status", "error") if row[k] is not None}
            for kind, result in verdicts.get(row["experiment"], {}).items():
                if result is not None:
                    summary[f"verdict/{kind}"] = str(result.outcome)
                    summary[f"verdict/{kind}_why"] = result.why
            run = wandb.init(
                dir=out, project=project, entity=entity, id=row["run_id"], name=row["run_id"], group=group_name(row),
                job_type=row["role"], notes=row["label"], tags=[row["experiment"], row["status"]], config=config,
                settings=settings,
            )  # fmt: skip
            steps = read_steps(root / RUNS / row["run_id"])
            for record in steps:
                run.log(step_scalars(record), step=record["step"])
            if row["val_bpb"] is not None:
                run.log({"val_bpb": row["val_bpb"]}, step=steps[-1]["step"] if steps else 0)
            run.summary.update(summary)
            run.finish(exit_code=0 if row["status"] == "ok" else 1)
    where = f" of {entity}" if entity else ""
    print(
        f"exported {df.height} runs to {out / 'wandb'} as W&B offline runs (project {project}{where})\n"
        f"upload them: uv run wandb login (once), then uv run wandb sync {out / 'wandb'}/offline-run-*"
    )
