"""Stopping a stage once its verdict is decided: what each sequential rule would save, and what it would cost, by
simulation (normal seed noise of unit std; effects in that std). For the confirmation (pairs of fresh seeds) and
for an experiment's exploration seeds against a 3-seed baseline: the false "improved" rate of an A/A test, the
power at the effect the plan resolves, and the runs each rule takes on average.

Usage: uv run python bench/sequential.py [--cases 200000]
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.compare import FUTILE_AFTER  # noqa: E402
from harness.stats import ALPHA, SEED_PLANS, resolvable_effect  # noqa: E402

PLAN = SEED_PLANS["cpu"]


@dataclass(frozen=True)
class Args:
    cases: int = 200_000
    """simulated experiments per rule and effect"""


def p_lower(runs: np.ndarray, base: np.ndarray) -> np.ndarray:
    return stats.ttest_ind(runs, base, axis=-1, alternative="less").pvalue


def confirmation(exp: np.ndarray, main: np.ndarray, levels: dict[int, float], futile: bool) -> tuple:
    """(improved, pairs run) of a confirmation judged at the pair counts in `levels` (count -> one-sided level),
    stopping at the first that says improved, and after FUTILE_AFTER pairs when the experiment is not ahead."""
    done = np.zeros(len(exp), bool)
    improved = np.zeros(len(exp), bool)
    pairs = np.full(len(exp), max(levels))
    for k in sorted(set(levels) | ({FUTILE_AFTER} if futile else set())):
        if k in levels:
            hit = ~done & (p_lower(exp[:, :k], main[:, :k]) < levels[k])
            improved |= hit
            pairs[hit], done = k, done | hit
        if futile and k == FUTILE_AFTER:
            stop = ~done & ((exp[:, :k] - main[:, :k]).sum(axis=-1) >= 0)
            pairs[stop], done = k, done | stop
    return improved, pairs


def exploration(runs: np.ndarray, base: np.ndarray, levels: dict[int, float]) -> tuple:
    """(improved, runs) of an experiment judged against the baseline after each count in `levels`."""
    done = np.zeros(len(runs), bool)
    n = np.full(len(runs), max(levels))
    for k in sorted(levels):
        hit = ~done & (p_lower(runs[:, :k], base) < levels[k])
        n[hit], done = k, done | hit
    return done, n


def main(args: Args) -> None:
    rng = np.random.default_rng(0)
    to_pr = resolvable_effect(PLAN, to_pull_request=True)
    rules = {
        "3 pairs, judged once (before)": ({3: ALPHA}, False),
        "3 pairs, read after every pair": ({2: ALPHA, 3: ALPHA}, False),
        "3 pairs, stop after 2 if not ahead (now)": ({3: ALPHA}, True),
        "also stop after 2 if improved (0.1% at 2, 1.45% at 3)": ({2: 0.001, 3: 0.0145}, True),
        "also stop after 2 if improved (0.4% at 2, 1.25% at 3)": ({2: 0.004, 3: 0.0125}, True),
    }
    effects = (0.0, to_pr, 2 * to_pr)
    print(f"confirmation (pairs of fresh seeds); effects in seed std; {to_pr:.2f} std is what the plan takes to a PR")
    print("| rule | false improved (A/A) | pairs (A/A) | " + " | ".join(f"power, pairs at {e:.1f} std" for e in effects[1:]) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * (len(effects) - 1))
    for name, (levels, futile) in rules.items():
        cells = []
        for effect in effects:
            exp = rng.standard_normal((args.cases, 3)) - effect
            improved, pairs = confirmation(exp, rng.standard_normal((args.cases, 3)), levels, futile)
            cells.append((improved.mean(), pairs.mean()))
        aa, rest = cells[0], cells[1:]
        print(f"| {name} | {aa[0]:.2%} | {aa[1]:.2f} | " + " | ".join(f"{p:.1%}, {n:.2f}" for p, n in rest) + " |")

    effect = resolvable_effect(PLAN)
    print(
        f"\nexploration: the experiment's seeds against {PLAN.baseline} baseline seeds; {effect:.2f} std is what 3 vs 3 resolves"
    )
    print("| rule | false improved (A/A) | runs (A/A) | " + " | ".join(f"power, runs at {e:.1f} std" for e in (effect, 2 * effect)) + " |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, levels in {
        "3 runs, judged at 3 (as compare asks)": {3: ALPHA},
        "read at 2 and 3 runs": {2: ALPHA, 3: ALPHA},
        "stop at 2 if improved (0.7% at 2, 1.1% at 3)": {2: 0.007, 3: 0.011},
    }.items():
        cells = []
        for d in (0.0, effect, 2 * effect):
            runs = rng.standard_normal((args.cases, 3)) - d
            improved, n = exploration(runs, rng.standard_normal((args.cases, PLAN.baseline)), levels)
            cells.append((improved.mean(), n.mean()))
        aa, rest = cells[0], cells[1:]
        print(f"| {name} | {aa[0]:.2%} | {aa[1]:.2f} | " + " | ".join(f"{p:.1%}, {n:.2f}" for p, n in rest) + " |")


if __name__ == "__main__":
    main(tyro.cli(Args))
