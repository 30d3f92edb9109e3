"""The ledger read as a polars DataFrame with its declared schema: comparable groups, main's baseline (the
bar every experiment must beat), the best rows, and tables printed through polars."""

import json
from pathlib import Path

import polars as pl

from harness import Refusal
from repo.ledger import CONFIRM_ROLE, LEDGER, RESULTS_COLUMNS, RESULTS_SCHEMA, check_ledger

COMPARABLE = (
    "eval_sha",
    "data_fp",
    "device",
    "device_name",
    "budget",
    "threads",
    "torch",
)  # rows compare only within these
SCHEMA = {name: getattr(pl, dtype) for name, dtype in RESULTS_SCHEMA.items()}
SHOWN = ["run_id", "experiment", "config", "seed", "device", "status", "val_bpb", "train_tokens", "wall_s", "label"]
SHOWN += ["description"]


def read_results(path: Path) -> pl.DataFrame:
    """The ledger as a DataFrame with the declared schema; a line that is not a row is an error naming it.
    A ledger written before a column was added to the schema reads with that column null."""
    if not path.exists() or path.stat().st_size == 0:
        return pl.DataFrame(schema=SCHEMA)
    check_ledger(path)
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")  # checked: today's columns or an older prefix
    df = pl.read_csv(path, separator="\t", schema={k: SCHEMA[k] for k in header}, quote_char=None)
    return df.with_columns(pl.lit(None, dtype=SCHEMA[c]).alias(c) for c in RESULTS_COLUMNS[len(header) :])


def role_of_older_rows() -> pl.Expr:
    """The role of a row written before the ledger had the column, from the description its command gave it
    then ("baseline seed 0/3", "confirm seed 6", "confirm SLUG seed 6", "aa ...", "determinism check 1/2")."""
    description = pl.col("description").fill_null("")
    confirmed = description.str.extract(r"^confirm (\S+) seed \d+$")
    return (
        pl.when(description.str.starts_with("baseline seed"))
        .then(pl.lit("baseline"))
        .when(description.str.contains(r"^confirm seed \d+$"))
        .then(pl.lit(CONFIRM_ROLE) + pl.col("experiment"))
        .when(confirmed.is_not_null())
        .then(pl.lit(CONFIRM_ROLE) + confirmed)
        .when(description.str.starts_with("aa "))
        .then(pl.lit("aa"))
        .when(description.str.starts_with("determinism check"))
        .then(pl.lit("determinism"))
        .otherwise(pl.lit("exploration"))
    )


def ledger(root: Path) -> pl.DataFrame:
    """The ledger, read, never written (repo.ledger.record_killed_runs writes), with `budget`: the token
    budget asked for, which decides comparability, and every row's `role`. Rows written before the ledger had
    budget_tokens compare by the tokens they were served, as they did then; rows written before it had role
    take the one their description implied then."""
    try:
        df = read_results(root / LEDGER)
    except ValueError as e:  # a line that is not a row: named, with its repair
        raise Refusal(str(e)) from e
    return df.with_columns(
        budget=pl.coalesce("budget_tokens", "train_tokens"), role=pl.coalesce("role", role_of_older_rows())
    )


def same_group(row: dict) -> pl.Expr:
    """A filter: the rows comparable with `row` (same eval_sha, data_fp, device and its model, budget, CPU
    threads and torch; an empty cell, such as a GPU run's threads or an older row's, matches an empty one)."""
    return pl.all_horizontal(pl.col(c).eq_missing(row[c]) for c in COMPARABLE)


def group_name(row: dict) -> str:
    """A comparable group in words: device (its model and threads), budget, data fingerprint, referee core hash."""
    threads = row.get("threads")
    details = [row.get("device_name") or "", f"{threads} thread{'s' * (threads > 1)}" if threads else ""]
    device = row["device"] + (f" ({', '.join(filter(None, details))})" if any(details) else "")
    torch = f", torch {row['torch']}" if row.get("torch") else ""
    return f"{device}, {row['budget']:,} tokens, data {row['data_fp']}, referee {row['eval_sha'][:10]}{torch}"


def ok_rows(df: pl.DataFrame, experiment: str) -> pl.DataFrame:
    return df.filter((pl.col("experiment") == experiment) & (pl.col("status") == "ok"))


def baseline_rows(df: pl.DataFrame, row: dict) -> pl.DataFrame:
    """main's ok `just baseline` rows in `row`'s comparable group."""
    return ok_rows(df, "main").filter(same_group(row) & (pl.col("role") == "baseline"))


def the_bar(df: pl.DataFrame) -> dict | None:
    """What an experiment must beat: main's baseline in the group of the newest baseline row, as
    {group, mean, std, n, row}; None before `just baseline` ran."""
    base = ok_rows(df, "main").filter(pl.col("role") == "baseline")
    if base.is_empty():
        return None
    newest = base.sort("started_at").row(-1, named=True)
    values = baseline_rows(df, newest)["val_bpb"]
    # polars' std of one value is None: one seed says nothing of the noise
    return dict(group=group_name(newest), mean=values.mean(), std=values.std(), n=len(values), row=newest)


def bar_line(bar: dict, digits: int) -> str:
    spread = f"± {bar['std']:.{digits}f}" if bar["std"] is not None else "± (undefined: one seed)"
    return f"the bar: main's baseline {bar['mean']:.{digits}f} {spread} (n={bar['n']}) in {bar['group']}"


def newest_group(df: pl.DataFrame, bar: dict | None) -> dict | None:
    """The row that names the group to report in: the bar's (`the_bar(df)`), else the newest ok row's;
    None without one."""
    if bar is not None:
        return bar["row"]
    ok = df.filter(pl.col("status") == "ok")
    return None if ok.is_empty() else ok.sort("started_at").row(-1, named=True)


def best_rows(df: pl.DataFrame) -> pl.DataFrame:
    """The best ok run of each comparable group."""
    ok = df.filter(pl.col("status") == "ok")
    return ok.sort("val_bpb").group_by(COMPARABLE, maintain_order=True).first().sort("started_at")


def print_table(df: pl.DataFrame, columns: list[str] = SHOWN) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=250, tbl_hide_dataframe_shape=True):
        print(df.select(columns))


def markdown(df: pl.DataFrame) -> str:
    """A DataFrame as a markdown table (polars' own formatting), for reports."""
    if df.is_empty():
        return "(none)"
    layout = dict(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True)
    with pl.Config(**layout, tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200, tbl_width_chars=10_000, fmt_float="full"):
        return str(df.with_columns(pl.all().cast(pl.String).fill_null("")))  # an empty cell, not "null"


def print_json(doc) -> None:
    print(json.dumps(doc, indent=2, default=str))
