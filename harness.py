"""Workflow CLI: the taxonomy guard, worktrees, ledger queries. FROZEN (infrastructure).

Usage: uv run just check    (and the other recipes; see `just --list`)
"""

import dataclasses
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MAIN_BRANCH = "main"
FROZEN = ("program.md", "eval.py", "meta_journal.md", "harness.py", "justfile")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def uncommitted_files(cwd: Path, *pathspec: str) -> list[str]:
    """Paths with uncommitted changes, untracked files included (porcelain -z: no quoting, no trimming)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", *pathspec],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sorted(entry[3:] for entry in out.split("\0") if len(entry) > 3)


def meta_mode() -> bool:
    return os.environ.get("META_MODE") == "1"


def main_blob(root: Path, name: str) -> bytes | None:
    result = subprocess.run(["git", "show", f"{MAIN_BRANCH}:{name}"], cwd=root, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def scoring_violations(code_dir: Path, root: Path) -> list[str]:
    """Why a run from `code_dir` may not be scored: frozen files that differ from main's committed
    versions (unless META_MODE=1), and uncommitted Python code (a row must name a commit)."""
    problems = []
    if not meta_mode():
        changed = [f for f in FROZEN if (code_dir / f).exists() and (code_dir / f).read_bytes() != main_blob(root, f)]
        if changed:
            problems.append(
                f"FROZEN files differ from {MAIN_BRANCH}'s committed versions: {', '.join(changed)}. "
                f"Restore them (git checkout {MAIN_BRANCH} -- {' '.join(changed)}), or set META_MODE=1 for harness work."
            )
    dirty = [f for f in uncommitted_files(code_dir, "*.py") if f not in FROZEN]
    if dirty:
        problems.append(
            f"uncommitted Python code in {code_dir}: {', '.join(dirty)}. Commit it first "
            f"(git -C {code_dir} commit -am '...'): a scored row must name code that exists."
        )
    return problems


def require_scoring_allowed(code_dir: Path, root: Path) -> None:
    problems = scoring_violations(code_dir, root)
    if problems:
        raise ValueError("refusing to score this run:\n  - " + "\n  - ".join(problems))


# --- smoke: a fast sanity check of the experiment's code, no ledger row ---

STEP_LINE = re.compile(r"step (\d+)/(\d+) \| loss ([-+.\w]+)")


def step_losses(log_text: str) -> list[tuple[int, float]]:
    """(step, loss) from the step lines train.py logs: `step 120/2000 | loss 3.412 | ...`."""
    return [(int(m[1]), float(m[3])) for m in STEP_LINE.finditer(log_text)]


def smoke(argv: list[str]) -> None:
    """Train the experiment's config for 30 steps with jaxtyping shape checks on, check the loss
    falls and stays finite, run the causality probe and the scoring code on a slice of the split."""
    import jaxtyping

    code_dir = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    with jaxtyping.install_import_hook(["model", "train"], "beartype.beartype"):
        import eval as referee

        train = referee.load_experiment(code_dir)
    import torch
    from loguru import logger

    args, config_desc, cfg = referee.parse_args(argv, train)
    device = referee.resolve_device(args.device)
    if hasattr(cfg, "log_every"):
        cfg = dataclasses.replace(cfg, log_every=3)
    budget = args.budget_tokens or 30 * cfg.batch_size * cfg.seq_len
    lines: list[str] = []
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} | {message}", backtrace=False, diagnose=False)
    logger.add(lines.append, format="{message}")
    logger.info(f"smoke | {code_dir} | config {config_desc} | device {device} | {budget:,} tokens | shape checks on")

    t0 = time.perf_counter()
    corpus = referee.load_corpus()
    torch.manual_seed(args.seed)
    stream = referee.TrainStream(corpus.train, budget, args.seed, device, time.monotonic() + 600)
    model = train.train(cfg, stream, device)
    losses = [loss for _, loss in step_losses("".join(lines))]
    if len(losses) < 2:
        raise AssertionError(f"train.py logged {len(losses)} step lines; smoke needs at least 2 to see the loss fall")
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"non-finite loss in {losses}")
    if not losses[-1] < losses[0]:
        raise AssertionError(f"loss did not fall: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    seq_len = referee.PRESETS[device.type].eval_seq_len
    model.eval()
    problem = referee.causality_violation(model, corpus.val, seq_len, device)
    if problem is not None:
        raise AssertionError(f"model is not causal: {problem}")
    bpb = referee.evaluate(model, corpus.val[: 64 * seq_len + 1], seq_len, device)
    if not math.isfinite(bpb):
        raise AssertionError(f"scoring gave {bpb}")
    print("---")
    print(f"smoke: ok\nloss_first: {losses[0]:.4f}\nloss_last: {losses[-1]:.4f}")
    print(f"val_bpb_slice: {bpb:.4f}\ntrain_tokens: {stream.tokens_served}\nwall_s: {time.perf_counter() - t0:.1f}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["smoke"]:
        smoke(argv[1:])
        return 0
    raise SystemExit(f"unknown harness command {argv[:1]}; see `just --list`")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
