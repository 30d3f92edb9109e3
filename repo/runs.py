"""runs/{run_id}/: what a scored run leaves beside its row, spelled once. The referee writes it; `just verify`,
the plots, the site, the TensorBoard export and the time estimates (`just plan`, the advice: pace_here) read
it. Local to the machine that scored the run (ignored by git), or a cluster's shared filesystem."""

import glob
import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from repo import write_atomic

RUNS = "runs"
CHECKPOINT = "model.pt"  # the weights and the resolved Config: what `just verify` rebuilds the model from
METRICS = "metrics.jsonl"  # one JSON line per step train.py reported (data.log_step)
SUMMARY = "summary.json"  # the row and what the run measured beside it
TRAIN_CONFIG = "train_config.json"  # the resolved train.Config: `just eval --config PATH` reruns it
LOG = "train.log"  # the run's log: the referee's and the workers' lines
# The notification hook (harness/notify.py), which each scored run starts once its row is written:
NOTIFY_CONFIG = "notify.toml"  # in the main checkout; ignored by git (a webhook's URL is a secret)
NOTIFY_ENV = "RESEARCH_NOTIFY"  # a command; it wins over notify.toml's
NOTIFY_LOG = "notify.log"  # under runs/: each call of the hook, its exit code and output, the notifier's errors


def new_scratch(run_id: str) -> str:
    """A folder for the run's workers to work in, outside the checkout: eval.py removes it at the run's end; a run
    killed with SIGKILL leaves it, and the reaper that records its crash row removes it (`remove_scratch`)."""
    return tempfile.mkdtemp(prefix=f"worker-{run_id}-")


def remove_scratch(run_id: str) -> None:
    tmp, prefix = Path(tempfile.gettempdir()), f"worker-{run_id}-"
    for path in tmp.glob(glob.escape(prefix) + "*"):
        # mkdtemp's own part has no "-": worker-{run_id}-beef-... is a run id used again (`pueue restart`), and
        # a run id is a name, never a path
        if path.parent == tmp and "-" not in path.name.removeprefix(prefix):
            shutil.rmtree(path, ignore_errors=True)


def notify_configured(root: Path) -> bool:
    """Whether a run should start the notifier: a hook is set, in the environment or in the main checkout."""
    return bool(os.environ.get(NOTIFY_ENV)) or (root / NOTIFY_CONFIG).exists()


def read_steps(folder: Path) -> list[dict]:
    """The step records train.py reported, in order ({"step", "total_steps", "tokens", "loss", ...}); none
    before the first."""
    path = folder / METRICS
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


@dataclass(frozen=True)
class Pace:
    """How long runs like one took on this machine: medians over the summaries of its newest ok runs. A run is
    its training at a steady pace (past the first steps' warm-up) and a fixed part: start-up, the corpus, the
    warm-up, scoring, the row; a confirming run scores the sealed holdout too."""

    runs: int  # how many runs it is from
    tokens_per_s: float  # training's steady pace
    eval_s: float  # scoring the validation split (and the probes)
    fixed_s: float  # the rest of a run, whatever its budget (scoring the validation split among it)
    holdout_s: float = 0.0  # scoring the holdout as well (0: no run here recorded the splits' sizes)

    def run_s(self, budget_tokens: int, holdout: bool = False) -> float:
        """A run of `budget_tokens` like these, start to row; a confirming run's with `holdout`."""
        return self.fixed_s + budget_tokens / self.tokens_per_s + self.holdout_s * holdout

    def rescore_s(self) -> float:
        """`just audit`'s rescoring of one confirming run: a run's start-up and scoring, the holdout's too, and no
        training (at 2M tokens on a 2-core EPYC: 75 s a rescoring measured, 72 projected)."""
        return self.run_s(0, holdout=True)


def pace_key(row: dict) -> tuple:
    """What a run's pace depends on, from its row or summary: the device and processor, the config, the threads
    of each worker, and the processes (a DDP run's)."""
    try:
        nproc = json.loads(row.get("spec") or "{}").get("nproc", 1)
    except ValueError:
        nproc = 1
    return tuple(row.get(k) for k in ("device", "device_name", "config", "threads")) + (nproc,)


def scoring_s(summary: dict) -> tuple[float, float | None]:
    """A run's scoring split in two, from its summary: (the validation split's, the holdout's). A confirming run
    scored both, in proportion to their bytes; another run scored the validation split alone, and the holdout would
    have taken its share of bytes. None for the holdout where the summary has no sizes (runs before 2026-12-07)."""
    val, holdout, eval_s = summary.get("val_bytes"), summary.get("holdout_bytes"), summary["eval_s"]
    if not val or holdout is None:
        return eval_s, None
    if summary.get("holdout_bpb") is None:
        return eval_s, eval_s * holdout / val
    return eval_s * val / (val + holdout), eval_s * holdout / (val + holdout)


def pace_here(root: Path, like: dict, newest: int = 5) -> Pace | None:
    """The pace of the newest `newest` ok runs under root/runs/ that ran like `like` (a row; pace_key), from the
    summaries they left; None when none did. Their summaries hold the load they met: a busy machine's pace."""
    key, found = pace_key(like), []
    for path in sorted((root / RUNS).glob(f"*/{SUMMARY}"), reverse=True):  # a run id begins with its start time
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # being written, or cut short by a kill: not a run that ended
            continue
        if summary.get("status") == "ok" and summary.get("run_s") and pace_key(summary) == key:
            found.append(summary)
            if len(found) == newest:
                break
    if not found:
        return None
    pace = [s.get("steady_tokens_per_s") or s["tokens_per_s"] for s in found]  # a run of 2 step lines: its mean
    splits = [scoring_s(s) for s in found]
    holdout = [h for _, h in splits if h is not None]
    return Pace(
        runs=len(found),
        tokens_per_s=statistics.median(pace),
        eval_s=statistics.median(val_s for val_s, _ in splits),
        fixed_s=statistics.median(  # a confirming run's holdout (eval_s - val_s) left out: a run's fixed part is
            s["run_s"] - s["train_tokens"] / p - (s["eval_s"] - val_s)  # the same whatever its role
            for s, p, (val_s, _) in zip(found, pace, splits, strict=True)
        ),
        holdout_s=statistics.median(holdout) if holdout else 0.0,
    )


PEAK_FLOPS = "peak-flops.json"  # under runs/: the best peak FLOP/s measured per processor and threads


def best_peak_flops(root: Path, processor: str, threads: int, measured: float) -> float:
    """The best peak FLOP/s measured on `processor` with `threads` threads a worker, `measured` (this run's) among
    them, recorded if it is the best. A CPU's peak is measured in each run, and a busy neighbour only
    ever lowers it, so the best measured is the closest to the truth: each run's MFU is then against one denominator
    per processor, not against its own measurement's luck."""
    path, key = root / RUNS / PEAK_FLOPS, f"{processor}, {threads} threads"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or not this file's JSON: measured again from here
            known = {}
        best = max(known.get(key, 0.0), measured)
        if best > known.get(key, 0.0):
            write_atomic(path, json.dumps(known | {key: best}, indent=2).encode())
    return best


def minutes(seconds: float) -> str:
    """A duration as a person plans with it: '45 s', '7.5 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
