"""`just eval`'s command line on the training worker's side: CONFIG and train.Config's fields, which only a
worker can read (train.py is never imported by the referee), parsed beside the RunSpec's flags so that --help
shows both. FROZEN (meta-mode only)."""

import ast
import dataclasses
from pathlib import Path
from typing import Annotated, Literal

from referee.spec import RunSpec, split_config_name

RESERVED = {f.name for f in dataclasses.fields(RunSpec)}  # no train.Config field may shadow these


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


def cli_type(config_type: type, base) -> type:
    """`just eval`'s whole command line: the referee's flags and a Config's fields, side by side."""
    import tyro

    return dataclasses.make_dataclass(
        "Cli",
        [
            ("eval", RunSpec, dataclasses.field(default_factory=RunSpec)),
            # every field takes a value (`--compile False`), so a row's config string reruns as it reads
            (
                "train",
                Annotated[config_type, tyro.conf.FlagConversionOff],
                dataclasses.field(default_factory=lambda: base),
            ),
        ],
    )


def parse_cli(cli: type, flags: list[str]):
    import tyro

    doc = "Train and score one run; append its row to results.tsv. CONFIG names an entry of train.CONFIGS."
    return tyro.cli(cli, args=flags, description=doc, config=(tyro.conf.OmitArgPrefixes,), prog="just eval")


def parse_train_args(argv: list[str], train, device_type: str, config_file: tuple[str, dict] | None):
    """In the training worker: `[CONFIG] [--eval flags] [--train.Config fields]` parsed together (so --help
    shows both); the fields override the chosen config's values. The Config and its description."""
    name, flags = split_config_name(argv)
    config_name, base = resolve_train_config(train, name, config_file, device_type)
    parsed = parse_cli(cli_type(train.Config, base), flags)
    return parsed.train, describe_config(config_name, base, parsed.train)


PLAIN_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "None": None}


def plain_type(node: ast.expr):
    """An annotation made of int, float, bool, str, None, `|` and Literal[constants], read without running
    any code; ValueError for anything else."""
    if isinstance(node, ast.Name) and node.id in PLAIN_TYPES:
        return PLAIN_TYPES[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return plain_type(node.left) | plain_type(node.right)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
        values = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return Literal[tuple(ast.literal_eval(v) for v in values)]
    raise ValueError(f"not a plain annotation: {ast.unparse(node)}")


def config_from_source(source: str) -> type:
    """train.py's Config rebuilt from its source (fields, plain types, literal defaults, docstrings), so that
    `just eval --help` prints without importing train.py, and torch with it; ValueError if it is not plain."""
    import tyro

    tree = ast.parse(source)
    config = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config"), None)
    if config is None:
        raise ValueError("train.py has no class Config")
    fields = []
    for node, after in zip(config.body, [*config.body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else ""
            kind = Annotated[plain_type(node.annotation), tyro.conf.arg(help=str(doc))]
            fields.append((node.target.id, kind, dataclasses.field(default=ast.literal_eval(node.value))))
    return dataclasses.make_dataclass("Config", fields, frozen=True)


def print_help(train_py: Path, argv: list[str]) -> bool:
    """`just eval --help` from train.py's source; False when its Config is not plain (a worker prints it then)."""
    try:
        config = config_from_source(train_py.read_text())
    except (OSError, SyntaxError, ValueError, TypeError):
        return False
    parse_cli(cli_type(config, config()), split_config_name(argv)[1])  # tyro prints the help and exits
    return True
