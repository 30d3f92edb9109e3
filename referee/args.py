"""`just eval`'s command line: the referee's own flags (EvalArgs), then CONFIG and train.Config's fields, which
only a worker can read (train.py is never imported by the referee). FROZEN (meta-mode only)."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class EvalArgs:
    config: Path | None = None
    """a JSON file of train.Config fields instead of a named CONFIG (a run's train_config.json reproduces it)"""
    seed: int = 0
    """seed for the weights and the batch order"""
    device: Literal["cpu", "cuda", "mps"] | None = None
    """device class; default: cuda, else mps, else cpu (logged and recorded)"""
    budget_tokens: int | None = None
    """training tokens instead of the preset's, for quick checks (the row records the tokens used)"""
    description: str = ""
    """one line for the ledger"""
    wall_cap_s: float | None = None
    """lower the preset's training wall-clock cap (never raise it), for quick checks"""
    nproc: int = 1
    """processes for this one run, with DDP: one per GPU (gloo processes on CPU)"""
    smoke: bool = False
    """a fast sanity check instead of a scored run: ~30 steps with shape checks, the probes on a slice, no row"""

    def __post_init__(self):  # refused before the run, with no row
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise ValueError(f"--budget-tokens {self.budget_tokens}: must be a positive number of tokens")
        if self.wall_cap_s is not None and self.wall_cap_s <= 0:
            raise ValueError(f"--wall-cap-s {self.wall_cap_s}: must be a positive number of seconds")


RESERVED = {f.name for f in dataclasses.fields(EvalArgs)}  # no train.Config field may shadow these


def split_config_name(argv: list[str]) -> tuple[str | None, list[str]]:
    """CONFIG, if given, is the first argument."""
    return (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)


def parse_eval_args(argv: list[str]) -> EvalArgs:
    """In the referee: its own flags; CONFIG and the train.Config fields are left to the training worker."""
    import tyro

    flags = [a for a in split_config_name(argv)[1] if a not in ("-h", "--help")]  # the worker prints the help
    return tyro.cli(EvalArgs, args=flags, return_unknown_args=True, prog="just eval")[0]


def resolve_train_config(train, name: str | None, config_file: tuple[str, dict] | None, device_type: str):
    """The named config (default: the device class's), or the fields of a JSON file (which the referee read)."""
    if name is not None and config_file is not None:
        raise ValueError(f"give a CONFIG name ({name!r}) or --config PATH ({config_file[0]}), not both")
    if config_file is not None:
        path, data = config_file
        fields = {f.name for f in dataclasses.fields(train.Config)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"--config {path}: unknown fields {unknown}; train.Config has {sorted(fields)}")
        return path, train.Config(**data)
    name = name or device_type
    if name not in train.CONFIGS:
        raise ValueError(f"unknown config {name!r}; train.CONFIGS has {sorted(train.CONFIGS)}")
    return name, train.CONFIGS[name]


def describe_config(name: str, base, cfg) -> str:
    """`cpu`, or `cpu:lr=0.003,n_layer=6` when fields were overridden on the command line."""
    changed = [
        f"{f.name}={getattr(cfg, f.name)}"
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(base, f.name)
    ]
    return name + (":" + ",".join(changed) if changed else "")


def parse_train_args(argv: list[str], train, device_type: str, config_file: tuple[str, dict] | None):
    """In the training worker: `[CONFIG] [--eval flags] [--train.Config fields]` parsed together (so --help
    shows both); the fields override the chosen config's values. The Config and its description."""
    import tyro

    name, flags = split_config_name(argv)
    config_name, base = resolve_train_config(train, name, config_file, device_type)
    cli_type = dataclasses.make_dataclass(
        "Cli",
        [
            ("eval", EvalArgs, dataclasses.field(default_factory=EvalArgs)),
            ("train", train.Config, dataclasses.field(default_factory=lambda: base)),
        ],
    )
    doc = "Train and score one run; append its row to results.tsv. CONFIG names an entry of train.CONFIGS."
    parsed = tyro.cli(cli_type, args=flags, description=doc, config=(tyro.conf.OmitArgPrefixes,), prog="just eval")
    return parsed.train, describe_config(config_name, base, parsed.train)
