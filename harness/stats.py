"""The rule for "better than main": Student's t-test on seeds, one-sided at ALPHA, with seed plans per device,
its power, and the A/A allowance. Pure numbers: the rows they judge are chosen in `harness.compare`.
scipy is imported where a number needs it: `import scipy.stats` alone takes ~1.7 s on a 2-core machine."""

import dataclasses
import enum
import math
import statistics

# The rule (`verdict`): an experiment's seeds against main's baseline seeds in one comparable group,
# by Student's two-sample t-test, one-sided at ALPHA each way. With one run this is exactly the t
# prediction interval of the baseline, and one run is at most "promising". Student's pooled variance,
# not Welch's: in an A/A test the variances are equal by construction and Student's test is exact for
# every pair of counts, while Welch's is liberal for unequal counts (2 runs vs 10 seeds: 3.8% at
# ALPHA; tests/test_stats.py measures both). The confirmation that a pull request needs uses equal
# counts on both sides, where Student's test is also robust to an experiment that changes the variance.

ALPHA = 0.015  # one-sided level: false "improved" in A/A tests <= 2.5% even with heavy-tailed noise
POWER = 0.8  # the resolvable effect is the one the rule detects this often


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """The seed counts of the protocol on one device class, and the smallest improvement worth a claim
    there; chosen from a measured baseline (bench/README.md, "Seed noise")."""

    baseline: int  # main's seeds in `just baseline`
    runs: int  # an experiment's seeds before `just compare` can call it improved
    confirm: int  # fresh seeds each, of the experiment and of main, in `just confirm`
    meaningful_effect: float  # val_bpb


SEED_PLANS = {
    # With 3 vs 3 the rule resolves 3.6 std, so a plan of 3 fits a device whose preset std is below
    # meaningful_effect / 4.1 (the effect a pull request needs); `just baseline` says when it is not.
    # cpu, measured (bench/README.md, "Budgets"): std 0.0022 at the preset, so 3 vs 3 resolved 0.0078 and
    # took 0.009 to a pull request, both under 0.01; since the holdout split, 0.018 at lr 4e-3 (six seeds), 0.0098
    # at 2e-3 (four) and 0.0073 at batch 16, today's default (six; bench/README.md, "Claims by structure"): `just
    # baseline` says "too noisy" there. mps and cuda: 3 until their noise is measured.
    "cpu": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.01),
    "mps": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.01),
    # cuda: a GPU run is 5-6 minutes and its metric lower, so a smaller effect is worth a claim
    "cuda": SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.005),
}


class Outcome(enum.StrEnum):
    IMPROVED = "improved"  # several seeds beat the baseline beyond seed noise
    PROMISING = "promising"  # one seed beat it beyond seed noise: run more before any claim
    INCONCLUSIVE = "inconclusive"
    WORSE = "worse"


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    why: str  # the numbers behind the outcome
    advice: str  # what to do next
    runs: list[float]
    baseline: list[float]
    p_improved: float | None = None  # one-sided p-value of "lower than the baseline"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample std; the std of one value is undefined (None): one seed says nothing of the noise."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def verdict(runs: list[float], baseline: list[float]) -> Verdict:
    """The rule for "better than main" (lower val_bpb is better); see the comment above ALPHA."""
    from scipy import stats

    if len(baseline) < 2 or not runs:
        return Verdict(
            Outcome.INCONCLUSIVE,
            f"{len(runs)} run{'' if len(runs) == 1 else 's'} ({', '.join(f'{v:.4f}' for v in runs) or 'none'}) and "
            f"{len(baseline)} baseline seed{'' if len(baseline) == 1 else 's'} ({', '.join(f'{v:.4f}' for v in baseline) or 'none'})",
            "a verdict needs at least 1 run and 2 baseline seeds: run `just baseline` first", runs, baseline,
        )  # fmt: skip
    if len(set(runs)) == 1 and len(set(baseline)) == 1:
        return Verdict(
            Outcome.INCONCLUSIVE, f"runs all {runs[0]!r}, baseline seeds all {baseline[0]!r}",
            "the seeds gave no spread, so there is no noise to judge a difference against: check that train.py "
            "draws its weights and batches from the seeded stream", runs, baseline,
        )  # fmt: skip
    lower = stats.ttest_ind(runs, baseline, alternative="less")
    higher = stats.ttest_ind(runs, baseline, alternative="greater")
    (mean_r, _), (mean_b, std_b) = mean_std(runs), mean_std(baseline)
    why = (
        f"{'run' if len(runs) == 1 else f'mean of {len(runs)} runs'} {mean_r:.4f} vs baseline {mean_b:.4f} ± "
        f"{std_b:.4f} (n={len(baseline)}): delta {mean_r - mean_b:+.4f}, t={lower.statistic:.2f}, "
        f"df={lower.df:.0f}, one-sided p={min(lower.pvalue, higher.pvalue):.3g} (claims need p < {ALPHA})"
    )
    p = float(lower.pvalue)
    if p < ALPHA and len(runs) == 1:
        return Verdict(Outcome.PROMISING, why, "one seed is never a result: run more seeds", runs, baseline, p)
    if p < ALPHA:
        return Verdict(Outcome.IMPROVED, why, "confirm it on fresh seeds before a pull request", runs, baseline, p)
    if higher.pvalue < ALPHA:
        return Verdict(
            Outcome.WORSE, why, "worse than main beyond seed noise: report it and move on", runs, baseline, p
        )
    return Verdict(Outcome.INCONCLUSIVE, why, "the difference is within seed noise so far", runs, baseline, p)


def power(effect_std: float, n_runs: int, n_base: int) -> float:
    """How often the rule calls an experiment improved whose true effect is `effect_std` baseline
    std, from n_runs seeds against n_base (normal noise; the noncentral t distribution)."""
    from scipy import stats

    df = n_runs + n_base - 2
    return float(stats.nct.sf(stats.t.isf(ALPHA, df), df, effect_std / math.sqrt(1 / n_runs + 1 / n_base)))


def resolvable_effect(plan: SeedPlan, to_pull_request: bool = False) -> float:
    """The effect, in baseline std, that the rule detects with probability POWER at the plan's seed
    counts; with `to_pull_request`, that `compare` and then `confirm` both detect."""
    from scipy.optimize import brentq

    def detected(d: float) -> float:
        found = power(d, plan.runs, plan.baseline)
        return found * power(d, plan.confirm, plan.confirm) if to_pull_request else found

    return float(brentq(lambda d: detected(d) - POWER, 1e-6, 100.0))


def aa_allowed(k: int, n_runs: int, n_base: int, sims: int = 20_000) -> int:
    """The most of k A/A experiments (n_runs seeds of main's own code each, against one shared baseline
    of n_base seeds) that the rule calls improved in 99% of such checks. Simulated, not binomial:
    the shared baseline makes the k verdicts depend on one another."""
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(0)
    base = np.broadcast_to(rng.standard_normal((sims, 1, n_base)), (sims, k, n_base))
    runs = rng.standard_normal((sims, k, n_runs))
    improved = (stats.ttest_ind(runs, base, axis=-1, alternative="less").pvalue < ALPHA).sum(axis=1)
    return int(np.quantile(improved, 0.99))


def noise_report(values: list[float], plan: SeedPlan) -> list[str]:
    """What `just baseline` prints after its runs: the noise floor and the effects it resolves."""
    mean, std = mean_std(values)
    rule, to_pr = resolvable_effect(plan), resolvable_effect(plan, to_pull_request=True)
    lines = [
        f"baseline_n: {len(values)}", f"mean: {mean:.6f}", f"std: {std:.6f}",
        f"resolvable_effect: {rule * std:.6f}  ({rule:.2f} std: {plan.runs} runs vs {plan.baseline} baseline seeds are "
        f"called improved {POWER:.0%} of the time at this effect; false 'improved' in an A/A test: {ALPHA:.1%})",
        f"resolvable_effect_to_pr: {to_pr * std:.6f}  ({to_pr:.2f} std: improved, then confirmed on {plan.confirm} + "
        f"{plan.confirm} fresh seeds)",
        f"meaningful_effect: {plan.meaningful_effect}",
    ]  # fmt: skip
    if to_pr * std <= plan.meaningful_effect:
        lines.append(f"verdict: ok — the protocol resolves a meaningful improvement ({plan.meaningful_effect})")
        return lines
    needed = next((n for n in range(2, 101) if power_of_plan(n, std, plan) >= POWER), None)
    fix = f"{needed} seeds at every step" if needed else "more than 100 seeds"
    lines.append(
        f"verdict: too noisy — a meaningful improvement ({plan.meaningful_effect}) needs {fix}; "
        "use more eval data, a smaller model, or a proxy metric with less noise"
    )
    return lines


def power_of_plan(n: int, std: float, plan: SeedPlan) -> float:
    """How often n seeds at every step take a meaningful improvement to a pull request."""
    effect = plan.meaningful_effect / std
    return power(effect, n, n) ** 2
