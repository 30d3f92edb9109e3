"""The memorization probe's calibration: how much better honest runs predict the validation split than
training text they were never served. One JSON line per run; the margin in referee/core.py
(MEMORIZATION_MARGIN) must refuse none of them.

Usage:
    uv run python bench/memorization.py                    # the runs of bench/README.md (CPU, ~20 minutes)
    uv run python bench/memorization.py --runs cpu:lr=0.008@1000000 tiny@30000 --draws 5

A run is CONFIG[:field=value,...]@BUDGET[#SEED]: this checkout's train.train on the referee's stream, in
this process, then scored by the referee's core with its probes; the unseen windows are drawn `--draws`
times (secret randomness, as in a scored run) to see how much the figure moves.
"""

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from referee import core, data  # noqa: E402
from referee.worker import LocalScorer, load_experiment, local_data  # noqa: E402
from repo.git import checkout_dir  # noqa: E402  (main's harness and referee, beside this folder)

# fmt: off
RUNS = (
    "tiny@30000", "tiny@300000", "cpu@300000", "cpu@1000000", "cpu@1000000#1", "cpu:lr=0.002@1000000",
    "cpu:lr=0.008@1000000", "cpu:d_model=192@1000000", "cpu:n_layer=2@1000000", "cpu:warmup_frac=0.3@1000000",
    "cpu@2000000",
)
# fmt: on


@dataclass(frozen=True)
class Args:
    runs: tuple[str, ...] = RUNS
    """CONFIG[:field=value,...]@BUDGET[#SEED]"""
    draws: int = 3
    """draws of the unseen windows per run"""


def parse(run: str, train) -> tuple[str, object, int, int]:
    head, _, rest = run.partition("@")
    budget, _, seed = rest.partition("#")
    name, _, fields = head.partition(":")
    cfg = train.CONFIGS[name]
    changes = dict(kv.split("=") for kv in fields.split(",") if kv)
    types = {f.name: f.type for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: type(getattr(cfg, k))(v) if types[k] else v for k, v in changes.items()})
    return head, cfg, int(budget), int(seed or 0)


def main(args: Args) -> None:
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    core.strict_determinism()
    train = load_experiment(checkout_dir(), checked=False)
    corpus, device = data.load_corpus(), torch.device("cpu")
    seq_len = core.PRESETS["cpu"].eval_seq_len
    for run in args.runs:
        name, cfg, budget, seed = parse(run, train)
        torch.manual_seed(seed)
        batches = local_data(corpus.train, budget, seed, device)
        model = train.train(cfg, batches, device)
        scorer, served = LocalScorer(model, device), batches.stream.served
        try:
            scores = core.score(scorer, lambda s=scorer: s, corpus.val, seq_len, corpus.train, served)
        except core.MemorizationRefused as e:
            scores = e.scores
        unseen = [scores.unseen_bpb]
        for _ in range(args.draws - 1):  # other secret windows; the validation pass is the same every time
            windows = core.unseen_windows(corpus.train, served, seq_len, core.UNSEEN_WINDOWS)
            unseen.append(core.windows_bpb(scorer, windows))
        val_bpb = scores.val_bpb
        line = dict(
            run=name, budget=budget, seed=seed, val_bpb=round(val_bpb, 4), unseen_bpb=[round(u, 4) for u in unseen]
        )
        line["val_below_unseen"] = round(max(1 - val_bpb / u for u in unseen), 4)  # the refusal is > margin
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
