"""Scoring time beside other work: one default run's checkpoint scored again (`just verify`'s path: the two
scoring workers, the whole validation split, the probes) alone and beside 1 and 2 neighbours, each a 2-thread
training loop of the default model, as another checkout's run is.

Usage: uv run python bench/scoring_load.py [--neighbours 0 1 2] [--threads 2 1]

It trains one checkpoint first (`just eval --budget-tokens 50000` in a scratch clone: scoring's cost does not
depend on the budget) and prints, for each thread count and number of neighbours, the scoring wall time and
val_bpb (which must not move with the load). Figures belong in bench/README.md with the processor named."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import tyro
from scratch import ROOT, scratch_project

NEIGHBOUR = """
import torch, train
torch.set_num_threads(2)
cfg = train.Config()
model = train.build_model(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(256, (cfg.batch_size, cfg.seq_len + 1))
while True:
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad()
"""


@dataclass(frozen=True)
class Config:
    neighbours: tuple[int, ...] = (0, 1, 2)
    """how many 2-thread training neighbours run beside each scoring"""
    threads: tuple[int, ...] = (2, 1)
    """the scoring workers' thread counts to measure (a row's `threads`)"""
    spins: int | None = None
    """GOMP_SPINCOUNT for the scoring workers (how long their idle threads spin; default: the referee's own)"""


def main(cfg: Config) -> None:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401 (this process's OpenMP reads its settings now, before any change below)

    from harness.runs import rescore_row
    from harness.table import ledger

    if cfg.spins is not None:  # the workers inherit it, and the environment wins over the referee's default
        os.environ["GOMP_SPINCOUNT"] = str(cfg.spins)
    project = scratch_project("scoring-load-")
    subprocess.run(
        ["uv", "run", "just", "eval", "--budget-tokens", "50000"], cwd=project, check=True, stdout=subprocess.DEVNULL
    )
    row = ledger(project).row(0, named=True)
    print(f"checkpoint: {row['run_id']} (val_bpb {row['val_bpb']})", flush=True)
    for threads in cfg.threads:
        for n in cfg.neighbours:
            # a neighbour is another checkout's run: libgomp's defaults, whatever this process was given
            env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            env["PYTHONPATH"] = str(project)
            load = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env) for _ in range(n)]
            try:
                time.sleep(5 if n else 0)  # the neighbours past their start-up
                t0 = time.perf_counter()
                scores, _, _ = rescore_row(project, {**row, "threads": threads})
                wall = time.perf_counter() - t0
            finally:
                for process in load:
                    process.kill()
                    process.wait()
            print(f"threads {threads}, {n} neighbour(s): scoring {wall:6.1f} s, val_bpb {scores.val_bpb!r}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Config))
