"""The comparison rule's error rates, by simulation: false "improved" in A/A tests for every supported
pair of seed counts, and the power behind the resolvable effect `just baseline` prints."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from harness import stats as rule
from harness.compare import FUTILE_AFTER
from harness.stats import ALPHA, Outcome

RUNS = range(1, 7)  # an experiment's seeds
BASELINES = (*range(2, 11), 15, 20, 30)  # main's baseline seeds
CASES = 20_000  # per pair of counts and distribution
NOISE = {  # seed noise of unit scale: the rule is location- and scale-free
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "heavy-tailed (t, 3 df)": lambda rng, shape: rng.standard_t(3, shape) / np.sqrt(3),
}


def improved(runs: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The rule's "improved", case by case along the first axis (`rule.verdict`, vectorized)."""
    p = stats.ttest_ind(runs, base, axis=-1, alternative="less").pvalue
    return (p < ALPHA) & (runs.shape[-1] >= 2)


def test_the_vectorized_rule_is_the_rule():
    rng = np.random.default_rng(1)
    for n_runs, n_base in ((1, 3), (2, 2), (3, 3), (2, 10)):
        runs, base = rng.standard_normal((300, n_runs)) - 1.5, rng.standard_normal((300, n_base))
        expected = improved(runs, base)
        got = [rule.verdict(list(r), list(b)).outcome == Outcome.IMPROVED for r, b in zip(runs, base, strict=True)]
        assert got == expected.tolist()
        assert 0 < sum(got) < 300 or n_runs == 1


@pytest.mark.parametrize("noise", NOISE)
def test_false_improved_rate_is_at_most_2_5_percent_for_every_pair_of_counts(noise):
    rng = np.random.default_rng(0)
    draw = NOISE[noise]
    rates = {}
    for n_runs in RUNS:
        for n_base in BASELINES:
            rates[n_runs, n_base] = improved(draw(rng, (CASES, n_runs)), draw(rng, (CASES, n_base))).mean()
    worst = max(rates, key=rates.get)
    print(f"\nA/A, {noise}: false 'improved' at most {rates[worst]:.4f} (at {worst[0]} runs vs {worst[1]} seeds)")
    assert rates[worst] <= 0.025, rates
    assert all(rates[1, n] == 0 for n in BASELINES)  # one run is never "improved"
    if noise == "normal":  # Student's test is exact here: every rate is ALPHA within sampling error
        assert all(abs(rates[k] - ALPHA) < 0.005 for k in rates if k[0] >= 2), rates


def test_welchs_test_would_crown_noise_at_unequal_counts():
    """Why the rule pools the variance: Welch's test at the same ALPHA, 2 runs against 10 seeds."""
    rng = np.random.default_rng(0)
    runs, base = rng.standard_normal((CASES, 2)), rng.standard_normal((CASES, 10))
    welch = stats.ttest_ind(runs, base, axis=-1, equal_var=False, alternative="less").pvalue < ALPHA
    assert welch.mean() > 0.035 and improved(runs, base).mean() <= 0.025


@pytest.mark.parametrize("device", sorted(rule.SEED_PLANS))
def test_the_stated_resolvable_effect_is_detected_80_percent_of_the_time(device):
    plan = rule.SEED_PLANS[device]
    rng = np.random.default_rng(2)
    table = []
    for noise, draw in NOISE.items():
        effect = rule.resolvable_effect(plan)
        shape = (CASES,)
        found = improved(draw(rng, (*shape, plan.runs)) - effect, draw(rng, (*shape, plan.baseline))).mean()
        to_pr = rule.resolvable_effect(plan, to_pull_request=True)
        chosen = improved(draw(rng, (*shape, plan.runs)) - to_pr, draw(rng, (*shape, plan.baseline)))
        confirmed = improved(draw(rng, (*shape, plan.confirm)) - to_pr, draw(rng, (*shape, plan.confirm)))
        table.append((noise, effect, found, to_pr, (chosen & confirmed).mean()))
        if noise == "normal":  # the noncentral t figure `just baseline` prints, checked by simulation
            assert found == pytest.approx(rule.POWER, abs=0.015)
            assert (chosen & confirmed).mean() == pytest.approx(rule.POWER, abs=0.015)
    print(f"\n{device}: {plan}")
    for noise, effect, found, to_pr, both in table:
        print(f"  {noise}: {effect:.2f} std -> improved {found:.3f}; {to_pr:.2f} std -> pull request {both:.3f}")


def test_a_pull_request_on_noise_is_rarer_than_a_claim():
    """The protocol to a PR: improved on the experiment's seeds, then again on fresh seeds of both sides."""
    plan = rule.SEED_PLANS["cpu"]
    rng = np.random.default_rng(3)
    chosen = improved(rng.standard_normal((CASES, plan.runs)), rng.standard_normal((CASES, plan.baseline)))
    confirmed = improved(rng.standard_normal((CASES, plan.confirm)), rng.standard_normal((CASES, plan.confirm)))
    assert (chosen & confirmed).mean() < 0.002


def test_aa_allowance_covers_the_shared_baseline():
    """`just aa` judges K experiments against one baseline: its allowance must hold at 99%, simulated
    here independently of the harness's own simulation."""
    plan = rule.SEED_PLANS["cpu"]
    k = 20
    allowed = rule.aa_allowed(k, plan.runs, plan.baseline)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5000, 1, plan.baseline))
    counts = improved(rng.standard_normal((5000, k, plan.runs)), np.broadcast_to(base, (5000, k, plan.baseline)))
    exceeded = (counts.sum(axis=1) > allowed).mean()
    assert 0.002 < exceeded <= 0.015 and allowed >= 1


def confirmed(exp: np.ndarray, main: np.ndarray, size: int) -> np.ndarray:
    """The confirmation's verdict (`harness.compare.confirmation`, vectorized) on the pairs run so far, in the
    order they began: improved only at `size` pairs, judged on the first `size`, and never after it stopped at
    FUTILE_AFTER pairs with the experiment's mean not below main's."""
    first = FUTILE_AFTER
    stopped = (exp[:, :first] - main[:, :first]).sum(axis=-1) >= 0
    if exp.shape[-1] < size:
        return np.zeros(len(exp), bool)
    return improved(exp[:, :size], main[:, :size]) & ~stopped


@pytest.mark.parametrize("noise", NOISE)
def test_a_confirmation_looked_at_after_every_pair_is_no_second_chance(noise):
    """An agent may run `just confirm SLUG 1` again and again and read the verdict after each pair, or confirm
    twice. Judged at whatever count it has, the rule would crown noise ~4.7% of the time (looks at 2-6 pairs);
    judged once, at the plan's pairs, it stays at ALPHA, and the stop after 2 pairs only lowers it."""
    size, looks = rule.SEED_PLANS["cpu"].confirm, range(2, 7)  # a pair alone is never improved
    rng = np.random.default_rng(5)
    exp, main = NOISE[noise](rng, (CASES * 5, 6)), NOISE[noise](rng, (CASES * 5, 6))
    at_any_count = np.any([improved(exp[:, :k], main[:, :k]) for k in looks], axis=0).mean()
    judged_once = np.any([confirmed(exp[:, :k], main[:, :k], size) for k in looks], axis=0).mean()
    stopped = ((exp[:, :FUTILE_AFTER] - main[:, :FUTILE_AFTER]).sum(axis=-1) >= 0).mean()
    print(f"\nA/A, {noise}: any count {at_any_count:.4f}, judged once {judged_once:.4f}, stopped at 2 {stopped:.3f}")
    at_the_plan = improved(exp[:, :size], main[:, :size]).mean()  # the rule at 3 pairs: ALPHA (test above)
    assert at_any_count > 0.035 and judged_once <= at_the_plan <= 0.025
    assert stopped == pytest.approx(0.5, abs=0.01)  # half of all A/A confirmations cost 2 pairs, not 3


def test_stopping_after_two_pairs_costs_no_power():
    """At the effect `just baseline` says the protocol takes to a pull request, the stop after 2 pairs (the
    experiment's mean not below main's) drops almost no real improvement."""
    plan = rule.SEED_PLANS["cpu"]
    effect = rule.resolvable_effect(plan, to_pull_request=True)
    rng = np.random.default_rng(6)
    exp, main = rng.standard_normal((CASES * 5, plan.confirm)) - effect, rng.standard_normal((CASES * 5, plan.confirm))
    assert confirmed(exp, main, plan.confirm).mean() == pytest.approx(improved(exp, main).mean(), abs=0.002)
    assert confirmed(exp, main, plan.confirm).mean() == pytest.approx(rule.power(effect, 3, 3), abs=0.01)


# --- the verdict on hand-made numbers ---


def test_one_run_is_promising_at_most():
    base = [2.00, 2.02, 2.01]
    one = rule.verdict([1.90], base)
    assert one.outcome == Outcome.PROMISING and one.p_improved < ALPHA and "run more seeds" in one.advice
    assert rule.verdict([2.30], base).outcome == Outcome.WORSE
    assert rule.verdict([1.99], base).outcome == Outcome.INCONCLUSIVE


def test_several_runs_are_judged_by_students_t_test():
    base = [2.00, 2.02, 2.01]
    better = rule.verdict([1.95, 1.96, 1.94], base)
    assert better.outcome == Outcome.IMPROVED and "confirm" in better.advice
    assert better.p_improved == pytest.approx(stats.ttest_ind([1.95, 1.96, 1.94], base, alternative="less").pvalue)
    assert rule.verdict([2.10, 2.12, 2.11], base).outcome == Outcome.WORSE
    mixed = rule.verdict([1.99, 2.03, 2.00], base)
    assert mixed.outcome == Outcome.INCONCLUSIVE and "t=" in mixed.why and "df=4" in mixed.why


def test_no_spread_and_no_baseline_claim_nothing():
    flat = rule.verdict([1.9999999, 1.9999999], [2.0, 2.0])
    assert flat.outcome == Outcome.INCONCLUSIVE and "no spread" in flat.advice
    assert rule.verdict([1.9999999], [2.0, 2.0]).outcome == Outcome.INCONCLUSIVE
    assert "run `just baseline` first" in rule.verdict([1.0], [2.0]).advice


def test_the_verdict_is_a_typed_value_that_serializes_as_text():
    result = dataclasses.asdict(rule.verdict([1.95, 1.96], [2.0, 2.02, 2.01]))
    assert result["outcome"] == "improved" and isinstance(result["outcome"], Outcome)


def test_the_noise_report_names_the_resolvable_effect_and_the_seeds_a_noisy_problem_needs():
    plan = rule.SeedPlan(baseline=3, runs=3, confirm=3, meaningful_effect=0.01)
    quiet = dict(line.split(": ", 1) for line in rule.noise_report([2.0, 2.001, 2.002], plan))
    assert float(quiet["std"]) == pytest.approx(0.001)
    effect = rule.resolvable_effect(plan)
    assert float(quiet["resolvable_effect"].split()[0]) == pytest.approx(effect * 0.001, abs=1e-6)
    assert quiet["verdict"].startswith("ok")
    noisy = dict(line.split(": ", 1) for line in rule.noise_report([2.0, 2.01, 2.02], plan))
    needed = int(noisy["verdict"].split("needs ")[1].split()[0])
    assert noisy["verdict"].startswith("too noisy") and rule.power_of_plan(needed, 0.01, plan) >= rule.POWER
    assert rule.power_of_plan(needed - 1, 0.01, plan) < rule.POWER
