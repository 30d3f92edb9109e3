"""Time on the machine at hand: `just plan` measures it with one small scored run of main's code, and the advice
of `just next` and `just compare` says how long the runs it names take here, from the summaries that this
machine's runs left in runs/ (repo.runs.pace_here). program.md's budget table is then a default, not a promise."""

import dataclasses
import os
from dataclasses import dataclass

import polars as pl

from harness import Refusal
from harness.runs import base_spec, run_eval
from harness.stats import SEED_PLANS
from referee import api
from referee.api import Device
from repo.git import main_root
from repo.runs import minutes, pace_here

MEASURED_SHARE = 14  # the measuring run trains 1/14 of the preset's budget: 500,000 tokens on cpu


@dataclass(frozen=True)
class Plan:
    """Measure this machine, as busy as it is now, with one scored run of main's code at a small budget (1/14 of
    the preset's, or --budget-tokens), then print how long a run, a baseline, an experiment's seeds, a
    confirmation, its audit and a whole claim take here at the preset's budget and smaller ones. Any other argument is
    eval.py's: just plan [CONFIG] [--threads 1] [--budget-tokens N]"""

    device: Device | None = None
    """eval.py's --device; it also picks the preset and the seed plan"""

    def __call__(self, eval_args: list[str]) -> None:
        spec = base_spec(eval_args, self.device)
        device = api.device_class(spec.device)
        preset = api.presets()[device]["train_tokens"]
        measured = spec.budget_tokens or preset // MEASURED_SHARE
        root, cores = main_root(), os.cpu_count() or 1
        load = os.getloadavg()[0]
        spec = dataclasses.replace(spec, budget_tokens=measured)
        row = run_eval(root, spec.rerun(0, "plan: this machine's pace", "plan"))
        pace = pace_here(root, row, newest=1)
        if pace is None:
            raise Refusal(f"run {row['run_id']} left no summary with its time in {root / 'runs'}: its log says why")
        threads = f", {row['threads']} thread{'s' * (row['threads'] > 1)} a worker" if row["threads"] else ""
        print(
            f"---\nplan: main's code, config {row['config']}, on {row['device_name']} ({device}{threads}); "
            f"load {load:.1f} on {cores} cores before it"
        )
        print(
            f"measured: {minutes(pace.run_s(row['train_tokens']))} start to row (run {row['run_id']}, val_bpb "
            f"{row['val_bpb']:.4f}): {row['train_tokens']:,} tokens trained in {row['wall_s']:.0f} s, "
            f"{pace.tokens_per_s:,.0f} tokens/s past the first steps; scoring {pace.eval_s:.0f} s; start-up, "
            f"warm-up and the row {pace.fixed_s - pace.eval_s:.0f} s; the holdout, which a confirming run scores too, "
            f"{pace.holdout_s:.0f} s"
        )
        seeds = SEED_PLANS[device]
        confirming = 2 * seeds.confirm
        runs = seeds.baseline + seeds.runs + confirming

        def claim(budget: int) -> dict[str, float]:
            """Seconds of each stage of a claim at `budget`: main's baseline, the experiment's seeds, the
            confirmation (its runs score the holdout too), the audit (each confirming run scored again)."""
            stages = {
                f"baseline ({seeds.baseline} runs)": seeds.baseline * pace.run_s(budget),
                f"an experiment ({seeds.runs} runs)": seeds.runs * pace.run_s(budget),
                f"confirm ({confirming} runs)": confirming * pace.run_s(budget, holdout=True),
                f"audit ({confirming} rescorings)": confirming * pace.rescore_s(),
            }
            return {
                "one run": pace.run_s(budget),
                **stages,
                f"to a claim ({runs} runs, audit)": sum(stages.values()),
            }

        budgets = sorted({preset, preset // 4, measured}, reverse=True)
        table = pl.DataFrame(
            [
                {
                    "budget": f"{b:,}" + " (preset)" * (b == preset) + " (measured)" * (b == measured),
                    **{stage: minutes(s) for stage, s in claim(b).items()},
                }
                for b in budgets
            ]
        )
        with pl.Config(tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True, tbl_width_chars=200):
            print(table)
        print(
            "what a budget resolves (seed std, the effect 3 vs 3 resolves) depends on the budget, not the machine: "
            "program.md's table, or `just baseline --budget-tokens N` here. The times are this machine's as busy as "
            "it was; `just plan --threads 1` measures one core a worker (rows at 1 thread compare only with each other)"
        )
