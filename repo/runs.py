"""runs/{run_id}/: what a scored run leaves beside its row, spelled once. The referee writes it; `just verify`,
the plots, the site and the TensorBoard export read it. Local to the machine that scored the run (ignored by
git), or a cluster's shared filesystem."""

import json
from pathlib import Path

RUNS = "runs"
CHECKPOINT = "model.pt"  # the weights and the resolved Config: what `just verify` rebuilds the model from
METRICS = "metrics.jsonl"  # one JSON line per step train.py reported (data.log_step)
SUMMARY = "summary.json"  # the row and what the run measured beside it
TRAIN_CONFIG = "train_config.json"  # the resolved train.Config: `just eval --config PATH` reruns it
LOG = "train.log"  # the run's log: the referee's and the workers' lines


def read_steps(folder: Path) -> list[dict]:
    """The step records train.py reported, in order ({"step", "total_steps", "tokens", "loss", ...}); none
    before the first."""
    path = folder / METRICS
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]
