"""Every command the harness prints runs as printed: each one that compare, confirm, next and submit emit,
in the states that make them, is parsed by the real command line (tyro, and the referee's parser for
eval.py's arguments), says what follows it in the right number, and names no flag twice."""

import dataclasses
import functools
import importlib
import re
import shlex
import shutil
from pathlib import Path

import pytest
import tyro

import train
from conftest import DRAWN_SEED, add_rows, draw, just, ledger
from harness import advice
from harness.cli import COMMANDS
from referee.args import parse_train_args
from referee.spec import RunSpec
from repo.git import WORKTREES
from repo.ledger import mark_running

PASSES_EVAL_ARGS = {"baseline", "aa", "determinism", "queue", "plan"}  # their other arguments are eval.py's


def parse(recipe: str, args: list[str]) -> None:
    """What `uv run just RECIPE ARGS` parses, parsed here by the same code, without running anything."""
    if recipe in ("eval", "smoke"):
        spec = RunSpec.from_argv(args)
        parse_train_args(spec.train_argv(), train, "cpu", None)
        assert RunSpec.from_argv(spec.to_argv()) == spec  # the spec's one text form reads back as itself
        return
    module, attribute = COMMANDS[recipe]
    target = getattr(importlib.import_module(f"harness.{module}"), attribute)
    if isinstance(target, type):  # a dataclass: parsing builds it and runs nothing
        _, rest = tyro.cli(target, args=args, return_unknown_args=True)
        if recipe in PASSES_EVAL_ARGS:
            parse(["eval"][0], rest)
        else:
            assert not rest, f"just {recipe} leaves {rest} unparsed"
    else:  # a function: the same signature, a body that does nothing
        tyro.cli(functools.wraps(target)(lambda *a, **k: None), args=args)


def commands_in(text: str) -> list[str]:
    return re.findall(r"(?:cd \S+ && )?uv run just [^\n`]+", text)


def check_runs_as_printed(command: str) -> None:
    words = shlex.split(command, comments=True)
    if words[0] == "cd":
        assert words[1].startswith(f"{WORKTREES}/") and words[2] == "&&", command
        words = words[3:]
    assert words[:3] == ["uv", "run", "just"], command
    flags = [w for w in words if w.startswith("--")]
    assert len(flags) == len(set(flags)), f"a flag twice: {command}"
    parse(words[3], words[4:])


def baseline(*values: float, **fields) -> list[dict]:
    return [
        dict(experiment="main", val_bpb=v, seed=i, description=f"baseline seed {i}/{len(values)}", **fields)
        for i, v in enumerate(values)
    ]


def test_every_command_compare_prints_runs_as_printed(project):
    overrides = dict(
        config="tiny:lr=0.001,compile=False", overrides=dict(lr="0.001", compile="False"), nproc=2, budget_tokens=1000
    )
    add_rows(
        project,
        *baseline(2.0, config="tiny", budget_tokens=500),
        dict(experiment="lonely", val_bpb=1.9, config="tiny", budget_tokens=500),
        *baseline(2.0, 2.02, 2.01, config="tiny", budget_tokens=1000),
        dict(experiment="lucky", val_bpb=1.5, **overrides),
        dict(experiment="unsure", val_bpb=2.0, **overrides),
        dict(experiment="unsure", val_bpb=2.01, seed=4, **overrides),
        dict(experiment="same", val_bpb=2.0, config="tiny", budget_tokens=1000),
        dict(experiment="same", val_bpb=2.03, seed=5, config="tiny", budget_tokens=1000),
        dict(experiment="same", val_bpb=2.0, seed=6, config="tiny", budget_tokens=1000),
        dict(experiment="faster", val_bpb=1.9, config="tiny", budget_tokens=1000),
        dict(experiment="faster", val_bpb=1.91, seed=7, config="tiny", budget_tokens=1000),
    )
    printed = {slug: just(project, "compare", slug).stdout for slug in ("lonely", "lucky", "unsure", "same", "faster")}
    assert (
        "1 run (1.9000) and 1 baseline seed (2.0000)" in printed["lonely"]
        and "a verdict needs 2; run" in printed["lonely"]
    )
    assert "uv run just baseline --seeds 3 tiny --device cpu --budget-tokens 500" in printed["lonely"]
    assert "promising" in printed["lucky"] and "2 more seeds:" in printed["lucky"]
    assert "tiny --lr 0.001 --compile False --seed" in printed["lucky"] and "--nproc 2" in printed["lucky"]
    assert "1 more seed:" in printed["unsure"] and len(commands_in(printed["unsure"])) == 2  # and `just plan`
    # no run of this machine to time them by (the rows were written by hand): how to measure it
    assert "drop it, or resolve a smaller effect (2 runs; `uv run just plan` measures" in printed["same"]
    assert "(6 runs; `uv run just plan` measures how long they take here): " in printed["faster"]
    assert printed["faster"].rstrip().endswith("uv run just confirm faster")
    commands = [c for text in printed.values() for c in commands_in(text)]
    assert len(commands) == 1 + 2 + 1 + 2 + 1 + 5  # and `just plan` in each
    for command in commands:
        check_runs_as_printed(command)


def test_compare_counts_the_runs_in_flight_and_advises_only_what_is_missing(project):
    add_rows(project, *baseline(2.0, config="tiny", budget_tokens=1000))
    add_rows(project, dict(experiment="lucky", val_bpb=1.5, seed=1, config="tiny", budget_tokens=1000))
    main_row, lucky = ledger(project).row(0, named=True), ledger(project).row(1, named=True)
    alone = just(project, "compare", "lucky").stdout
    assert "1 baseline seed in this group" in alone and "uv run just baseline --seeds 3" in alone

    def in_flight(row: dict, seed: int, role: str) -> None:  # what a run in progress leaves: its marker
        mark_running({**row, "seed": seed, "role": role, "status": "crash"}, project / "runs" / f"flying-{seed}")

    (project / "runs").mkdir(exist_ok=True)
    for folder in ("flying-1", "flying-2", "flying-3"):
        (project / "runs" / folder).mkdir()
    in_flight(main_row, 1, "baseline")  # main's second baseline seed is running
    waiting = just(project, "compare", "lucky").stdout
    assert (
        "main's baseline seed 1 in flight: wait for it, then compare again" in waiting
        and "just baseline" not in waiting
    )
    add_rows(project, *baseline(2.0, 2.02, 2.01, config="tiny", budget_tokens=1000)[1:])
    shutil.rmtree(project / "runs" / "flying-1")
    in_flight(lucky, 2, "exploration")  # one of the two seeds compare asks for is running
    printed = just(project, "compare", "lucky").stdout
    assert "1 more seed:" in printed and "(and seed 2, in flight)" in printed
    seeds = [c.split("--seed ")[1].split()[0] for c in commands_in(printed) if "just eval" in c]
    assert seeds == ["3"], printed
    in_flight(lucky, 3, "exploration")
    assert "seeds 2, 3 in flight: wait, then compare again" in just(project, "compare", "lucky").stdout


def test_the_commands_of_next_and_of_a_confirmed_experiment_run_as_printed(project):
    for i in range(30):
        (project / "1_ideas" / f"2026-01-01_idea-{i}.md").write_text(f"# idea {i}\n\nRating: {i % 10}/10\n")
    printed = just(project, "next").stdout
    assert "next: uv run just new idea-" in printed
    confirming = [
        dict(
            experiment="fast",
            val_bpb=v,
            seed=DRAWN_SEED + s,
            config="tiny",
            budget_tokens=1000,
            description=f"confirm seed {s}",
        )
        for s, v in ((10, 1.5), (11, 1.51), (12, 1.49))
    ] + [
        dict(
            experiment="main",
            val_bpb=v,
            seed=DRAWN_SEED + s,
            config="tiny",
            budget_tokens=1000,
            description=f"confirm fast seed {s}",
        )
        for s, v in ((10, 2.0), (11, 2.01), (12, 1.99))
    ]
    add_rows(project, *baseline(2.0, 2.02, 2.01, config="tiny", budget_tokens=1000), *confirming)
    draw(project, "fast", *(DRAWN_SEED + s for s in (10, 11, 12)))
    add_rows(project, dict(experiment="fast", val_bpb=1.5, seed=3, config="tiny", budget_tokens=1000))
    printed += just(project, "compare", "fast").stdout
    assert "confirmed on fresh seeds and on the holdout: `uv run just submit fast` opens the pull request" in printed
    commands = commands_in(printed)
    # record (the ideas are not committed); new; plan (how long confirm takes: no run here to time it by);
    # confirm (compare counts every scored row of fast, the confirmation's too: improved); submit
    assert len(commands) == 5 and "uv run just plan" in commands
    for command in commands:
        check_runs_as_printed(command)


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(config_name="cpu"),
        RunSpec(config_name="tiny", overrides={"n_layer": "3", "compile": "False"}, seed=4),
        RunSpec(config=Path("runs/x/train_config.json"), description="a, b: c=d", label="Q: x? H: y"),
        RunSpec(config_name="cpu", nproc=2, threads=1, smoke=True, role="confirm:x", run_id="20260101-main-ab12"),
    ],
)
def test_a_spec_reads_back_from_its_command_line_and_a_rerun_names_each_flag_once(spec):
    assert RunSpec.from_argv(spec.to_argv()) == spec
    assert RunSpec.from_json(spec.to_json()) == spec
    row = dict(run_id="r", config="x", device="cpu", budget=7000, spec=spec.to_json())
    for command in (advice.seed_runs("x", row, range(1, 3)), advice.baseline(row, 3)):
        for line in commands_in(command):
            flags = [w for w in shlex.split(line) if w.startswith("--")]
            assert len(flags) == len(set(flags)) and "--run-id" not in flags and "--role" not in flags, line
    assert dataclasses.fields(train.Config)  # the fields the overrides name exist


@pytest.mark.parametrize("doc", ["README.md", "program.md"])
def test_every_command_the_readme_and_program_show_runs_as_written(doc):
    """The same check on the commands the docs show a person or an agent (placeholders such as {slug} read as
    the values they stand for); a recipe with no parser of its own (test, lint, profile) must exist."""
    root = Path(__file__).resolve().parents[1]
    recipes = set(re.findall(r"^([a-z][\w-]*)(?: [^\n:]*)?:(?!=)", (root / "justfile").read_text(), re.M))
    text = (root / doc).read_text().replace("\\\n", " ")
    commands = [part for line in commands_in(text) for part in re.split(r" && (?=uv run just )", line)]
    assert len(commands) > 20
    for command in commands:
        recipe = shlex.split(command, comments=True)[3]
        if recipe in COMMANDS or recipe in ("eval", "smoke"):
            check_runs_as_printed(command)
        else:
            assert recipe in recipes, f"{doc}: `{command}` names no recipe of the justfile"
