"""`just plot`: progress.png (val_bpb per run in one comparable group, the running best, every point named)
and runs/{run_id}/loss.png (the training loss train.py reported, from the run's metrics.jsonl)."""

import math
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure  # no pyplot: files only, no display backend
from matplotlib.ticker import MaxNLocator

from harness.table import group_name, ledger, newest_group, same_group, the_bar
from repo.git import main_root
from repo.runs import METRICS, RUNS, read_steps


def step_losses(folder: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step train.py reported with a loss."""
    return [(r["step"], r["loss"]) for r in read_steps(folder) if "loss" in r]


def plot_group(df):
    """The runs worth plotting together: the ok runs comparable with the bar (else with the newest ok
    run), and the crashes and timeouts of the same device and referee."""
    anchor = newest_group(df, the_bar(df))
    if anchor is None:
        return df.filter(pl.col("status") != "ok")
    failed = (
        (pl.col("status") != "ok") & (pl.col("device") == anchor["device"]) & (pl.col("eval_sha") == anchor["eval_sha"])
    )
    return df.filter(((pl.col("status") == "ok") & same_group(anchor)) | failed)


def save_figure(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)


def plot() -> None:
    """progress.png (val_bpb per run, running best, kept runs labelled, crashes marked) and
    runs/{run_id}/loss.png (the training loss the run reported) for every run that lacks one."""
    root = main_root()
    df = ledger(root)
    rows = plot_group(df).sort("started_at").to_dicts()
    fig = Figure(figsize=(12, 7), dpi=100)
    ax = fig.subplots()
    xs = list(range(1, len(rows) + 1))
    ok = [(x, r) for x, r in zip(xs, rows, strict=True) if r["status"] == "ok"]
    ax.scatter([x for x, _ in ok], [r["val_bpb"] for _, r in ok], color="tab:blue", s=18, label="scored run (ok)")
    best, best_line, kept = math.inf, [], []
    for x, r in ok:
        if r["val_bpb"] < best:
            best = r["val_bpb"]
            kept.append((x, r))
        best_line.append((x, best))
    if best_line:
        ax.step(
            [x for x, _ in best_line], [b for _, b in best_line], where="post", color="tab:green", label="running best"
        )
    for x, r in ok:  # every point says whose it is; a new best also says what it asked
        new_best = any(x == k for k, _ in kept)
        text = f"{r['experiment']}: {r['label']}" if new_best and r["label"] else r["experiment"]
        ax.annotate(text, (x, r["val_bpb"]), textcoords="offset points", xytext=(4, 6), fontsize=8 if new_best else 6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # runs are counted, not measured
    crashes = [x for x, r in zip(xs, rows, strict=True) if r["status"] != "ok"]
    if crashes:
        ax.scatter(
            crashes,
            [best if math.isfinite(best) else 0] * len(crashes),
            marker="x",
            color="tab:red",
            s=40,
            label="crash / timeout",
        )
    ax.set_title(f"val_bpb per run — {group_name(ok[0][1])}" if ok else "val_bpb per run (no scored runs yet)")
    save_figure(fig, ax, "run (in order of start)", "val_bpb (bits per byte, lower is better)", root / "progress.png")
    print(f"plot: {root / 'progress.png'} ({len(rows)} runs)")
    made = 0
    for r in df.to_dicts():
        folder = root / RUNS / r["run_id"]
        if not (folder / METRICS).exists() or (folder / "loss.png").exists():
            continue
        losses = step_losses(folder)
        fig = Figure(figsize=(8, 5), dpi=100)
        ax = fig.subplots()
        ax.plot(
            [s for s, _ in losses], [loss / math.log(2) for _, loss in losses], color="tab:blue", label="training loss"
        )
        if r["val_bpb"] is not None:
            ax.axhline(r["val_bpb"], color="tab:green", linestyle="--", label=f"val_bpb {r['val_bpb']:.4f}")
        ax.set_title(f"{r['run_id']} ({r['status']})")
        save_figure(fig, ax, "step", "training loss (bits per byte)", folder / "loss.png")
        made += 1
    print(f"plot: {made} new loss curves in runs/*/loss.png")
