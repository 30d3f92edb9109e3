"""Start-up time of the ledger queries, as a user runs them: `uv run just CMD`, best of N runs each.

Usage: uv run python bench/startup.py [--runs 5] [--commands results best next ideas check]

Run it in the checkout whose ledger you query (it reads, never writes). `just status` needs a pueue
daemon: it is measured only when `pueue status` answers. Figures belong in bench/README.md."""

import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

import tyro


@dataclass(frozen=True)
class Config:
    runs: int = 5
    """timed runs per command (after one untimed run that warms the file cache and .pyc files)"""
    commands: tuple[str, ...] = ("results", "best", "next", "ideas", "check", "status")
    """recipes to time"""


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(cfg: Config) -> None:
    pueue_up = (
        shutil.which("pueue") is not None and subprocess.run(["pueue", "status"], capture_output=True).returncode == 0
    )
    for name in cfg.commands:
        if name == "status" and not pueue_up:
            print(f"{name:8} skipped: no pueue daemon answers here")
            continue
        command = ["uv", "run", "just", name]
        timed(command)
        times = [timed(command) for _ in range(cfg.runs)]
        print(f"{name:8} best {min(times):.2f} s  median {statistics.median(times):.2f} s  ({cfg.runs} runs)")


if __name__ == "__main__":
    main(tyro.cli(Config))
