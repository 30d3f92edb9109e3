"""A run as data: the RunSpec, from the command line to the row. FROZEN (meta-mode only).

Every command that runs the referee (eval, smoke, baseline, confirm, aa, determinism, verify, queue, Slurm)
builds one and hands it to eval.py as its command line (`to_argv`); eval.py reads it back (`from_argv`), fills
in what the run resolves (device, threads, budget, wall cap, run id) and stores that spec in the row's `spec`
column, from which reruns, advice and confirmations copy it with another seed. The command line is the spec's
one text form and tyro its one parser: no other string describing a run is parsed anywhere. Standard library
and tyro: the harness reads it without torch."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from repo.ledger import CONFIRM_ROLE, role_problem

Device = Literal["cpu", "cuda", "mps"]
Hidden = tyro.conf.Suppress  # a field of the spec that is not one of eval.py's flags


@dataclass(frozen=True)
class RunSpec:
    config_name: Annotated[str | None, Hidden] = None
    """CONFIG, an entry of train.CONFIGS (default: the one named after the device class)"""
    overrides: Annotated[dict[str, str], Hidden] = field(default_factory=dict)
    """train.Config fields given on the command line, as given (`--lr 3e-3`): only a worker can read them"""
    config: Path | None = None
    """a JSON file of train.Config fields instead of a named CONFIG (a run's train_config.json reproduces it)"""
    seed: int = 0
    """seed for the weights and the batch order"""
    device: Device | None = None
    """device class; default: cuda, else mps, else cpu (logged and recorded)"""
    budget_tokens: int | None = None
    """training tokens instead of the preset's, for quick checks (the row records the tokens used)"""
    description: str = ""
    """one line for the ledger"""
    wall_cap_s: float | None = None
    """lower the preset's training wall-clock cap (never raise it), for quick checks"""
    nproc: int = 1
    """processes for this one run, with DDP: one per GPU (gloo processes on CPU)"""
    threads: int | None = None
    """CPU threads of each worker (default: this machine's cores, split over --nproc); a CPU run's number
    depends on it, so it is recorded and rows compare only at one count"""
    smoke: bool = False
    """a fast sanity check instead of a scored run: ~30 steps with shape checks, the probes on a slice, no row"""
    role: str = "exploration"
    """what the run is for: set by the command that runs it (baseline, aa, determinism, confirm:SLUG)"""
    label: str = ""
    """the queued run's 'Q: ... H: ...' label: set by `just queue` (or found in pueue by `just eval`)"""
    run_id: str | None = None
    """the row's id (default: a new one): set by the command that waits for the row"""

    def __post_init__(self):  # refused before the run, with no row
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise ValueError(f"--budget-tokens {self.budget_tokens}: must be a positive number of tokens")
        if self.wall_cap_s is not None and self.wall_cap_s <= 0:
            raise ValueError(f"--wall-cap-s {self.wall_cap_s}: must be a positive number of seconds")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: must be 1 or more")
        if self.nproc < 1:
            raise ValueError(f"--nproc {self.nproc}: give a whole number of processes, 1 or more")
        if role_problem(self.role):
            raise ValueError(f"--role: {role_problem(self.role)}; leave it out for a plain run")
        if self.config_name is not None and self.config is not None:
            raise ValueError(f"give a CONFIG name ({self.config_name!r}) or --config PATH ({self.config}), not both")

    @property
    def confirming(self) -> bool:
        """A side of a confirmation (`just confirm`): the one kind of run that scores the sealed holdout too."""
        return self.role.startswith(CONFIRM_ROLE)

    @classmethod
    def from_argv(cls, argv: list[str]) -> "RunSpec":
        """`[CONFIG] [eval.py's flags] [--<train.Config field> VALUE ...]`, the way `just eval` takes it."""
        name, rest = split_config_name(argv)
        flags = [a for a in rest if a not in ("-h", "--help")]  # the help is the training worker's to print
        spec, unknown = tyro.cli(cls, args=flags, return_unknown_args=True, prog="just eval")
        return dataclasses.replace(spec, config_name=name, overrides=field_values(unknown))

    def to_argv(self) -> list[str]:
        """The command line that `from_argv` reads back as this spec: what a printed command shows."""
        argv = [self.config_name] if self.config_name else []
        argv += [token for name, value in self.overrides.items() for token in (flag(name), value)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("config_name", "overrides") or value == f.default:
                continue
            argv += [flag(f.name)] if value is True else [flag(f.name), str(value)]
        return argv

    def train_argv(self) -> list[str]:
        """What the training worker parses together with train.Config: CONFIG and the field overrides."""
        name = [self.config_name] if self.config_name else []
        return name + [token for name, value in self.overrides.items() for token in (flag(name), value)]

    def rerun(self, seed: int, description: str = "", role: str = "exploration", keep_fields: bool = True):
        """The same run with another seed, as a new run (a new id, no label), the experiment's field overrides
        kept or (main's code at an experiment's config name) dropped."""
        return dataclasses.replace(
            self,
            seed=seed,
            description=description,
            role=role,
            label="",
            run_id=None,
            overrides=self.overrides if keep_fields else {},
        )

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        fields = json.loads(text)
        return cls(**{**fields, "config": Path(fields["config"]) if fields.get("config") else None})


def split_config_name(argv: list[str]) -> tuple[str | None, list[str]]:
    """CONFIG, if given, is the first argument."""
    return (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_values(tokens: list[str]) -> dict[str, str]:
    """`--name VALUE` or `--name=VALUE` pairs (every train.Config field takes a value, booleans too)."""
    values, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise ValueError(f"unexpected argument {token!r}: CONFIG comes first; flags are --name VALUE")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            name, value = token[2:], tokens[i + 1]
            i += 2
        else:
            raise ValueError(f"{token} needs a value (every train.Config field takes one: {token} VALUE)")
        values[name.replace("-", "_")] = value
    return values
