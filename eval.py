"""The referee: data, budget, metric and ledger. FROZEN: edit only in meta-mode (META_MODE=1).

Usage:
    uv run just eval [CONFIG] [--config PATH] [--seed 0] [--device cpu|cuda|mps] [--budget-tokens N]
                     [--wall-cap-s S] [--description TEXT] [--nproc N] [--<train.Config field> VALUE ...]

CONFIG names an entry of `train.CONFIGS` (default: the one named after the device class);
`--config PATH` reads a JSON object of `train.Config` fields instead (a run's `train_config.json`
reproduces that run). Any `train.Config` field can be overridden on the command line.

The problem: byte-level language modelling (vocabulary 256) on the corpus DATA_SOURCE names; by
default the `.py` source of the running interpreter's standard library (site-packages excluded).
Files are sorted by relative path; a file is in the validation split when sha256(relative path)
mod 20 == 0 (about 5% of files), so the split never shifts when files are added. A single text
file splits at its last 5%; a Hugging Face dataset keeps its own validation split, or, without
one, sends a document to validation when sha256(document) mod 20 == 0 (its test split is unused).
The corpus fingerprint (`data_fp`) is a hash of the prepared bytes of both splits; rows compare
only within one fingerprint.

The metric, val_bpb (validation bits per byte; lower is better):
    Let v[0..N-1] be the validation files' bytes, concatenated in path order, and T the preset's
    `eval_seq_len`. For every window start s = 0, T, 2T, ... < N-1 the model sees the inputs
    v[s : min(s+T, N-1)] and predicts the next byte at every position; the targets
    v[s+1 : min(s+T, N-1)+1] are never shown to it. Every byte v[1..N-1] is predicted exactly once.
        val_bpb = sum over all targets of -log2 softmax(logits)[target]  /  (N - 1)
    computed here from the model's logits, cast to float32 before the log-softmax. A uniform model
    scores exactly 8. Before scoring, a causality probe checks that changing the bytes after
    position t leaves the logits at positions <= t unchanged; a model that fails is refused
    (status `crash`).

The budget: a fixed number of training tokens per device class (PRESETS), served by the
referee's own batch stream, which stops when the budget is spent; plus a wall-clock cap on
training that ends the run as `timeout` even if train.py never asks for another batch.

Every run writes `runs/{run_id}/` (train.log, metrics.jsonl, train_config.json, summary.json, model.pt,
and the train.py and model.py that produced it) in the main checkout and appends exactly one row to its
`results.tsv` (schema and append: harness/ledger.py), under a file lock.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, UInt8
from loguru import logger
from torch import Tensor

from harness.git import checkout_dir, experiment_name, head_commit, tracked_dirty
from harness.guard import install_hooks, require_scoring_allowed
from harness.ledger import LEDGER, RUNNING, append_result, check_ledger, mark_running, new_run_id, write_atomic
from harness.pueue import run_label

# --- Constants (fixed: changing any of them is meta-mode work and changes eval_sha) ---

VOCAB_SIZE = 256
VAL_MODULUS = 20  # a file is validation when sha256(relpath) % VAL_MODULUS == 0: about 5%
EVAL_BATCH_SIZE = 32  # windows per forward pass while scoring; fixed, so scoring is reproducible
PROBE_POSITIONS = (0, 37, 128)  # causality probe: the cut points t (clipped to the window)
PROBE_ATOL = 1e-4  # float32 logits before a cut may move by at most this much


@dataclass(frozen=True)
class Preset:
    train_tokens: int
    """training tokens the batch stream serves, then it stops"""
    wall_cap_s: float
    """training wall-clock seconds after which the run ends as `timeout`"""
    eval_seq_len: int
    """context length of the scoring windows"""


PRESETS = {
    # 2-core laptop or CI box: about 7 minutes of training at ~17k tokens/s, scoring included < 10 min.
    "cpu": Preset(train_tokens=7_000_000, wall_cap_s=1200.0, eval_seq_len=256),
    "mps": Preset(train_tokens=50_000_000, wall_cap_s=2400.0, eval_seq_len=256),
    # One H100-class GPU: a 5-40 minute research run.
    "cuda": Preset(train_tokens=600_000_000, wall_cap_s=2400.0, eval_seq_len=1024),
}

# bf16 dense peak FLOP/s by GPU name, for MFU; the first matching key wins, so PCIe before SXM.
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
}


class Model(Protocol):
    """What the referee needs from the model train.py returns (an nn.Module)."""

    def __call__(self, idx: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]: ...

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at this sequence length, for MFU."""
        ...


class WallClockExceeded(BaseException):
    """Training ran past the preset's cap. A BaseException, so `except Exception` in train.py
    cannot swallow it."""


class Terminated(BaseException):
    """SIGTERM (a queue's kill): turned into an exception so the run still writes its row."""


# --- Data ---

DATA_SOURCE = "stdlib"
"""The corpus every run trains and is scored on; changing it is meta-mode work, and the fingerprint
(`data_fp`) of every later row changes with it:
    "stdlib"                 the running interpreter's standard library `.py` files (no download)
    "text:PATH"              a folder of text files (every file whose path has no hidden part) or
                             one text file; PATH absolute or relative to the main checkout
    "hf:OWNER/NAME[:CONFIG]" a Hugging Face dataset's parquet files, downloaded once by
                             `just prepare` and read offline after that (column HF_TEXT_COLUMN)
"""
HF_TEXT_COLUMN = "text"
HF_DOC_SEPARATOR = b"\n\n"  # between the documents (rows) of a Hugging Face dataset
# A dataset file's split is the first of these words found in its path, read from the file name up.
HF_SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "val", "valid": "val", "val": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
SOURCE_FORMS = "'stdlib', 'text:PATH' or 'hf:OWNER/NAME[:CONFIG]'"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(folder: Path) -> list[str]:
    """Relative paths of the standard library's `.py` files, sorted; installed packages are not corpus."""
    rel = (p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if p.is_file())
    return sorted(r for r in rel if not {"site-packages", "dist-packages"} & set(r.split("/")))


def text_files(folder: Path) -> list[str]:
    """Relative paths of every file under `folder` with no hidden part (.git, .DS_Store), sorted."""
    rel = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(r for r in rel if not any(part.startswith(".") for part in r.split("/")))


def is_validation(name: str | bytes) -> bool:
    """The split rule for documents: sha256 of the file's relative path (or of the document's
    bytes, for a dataset without a validation split) mod VAL_MODULUS == 0."""
    data = name.encode() if isinstance(name, str) else name
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % VAL_MODULUS == 0


def split_one_file(data: bytes) -> tuple[bytes, bytes]:
    """One text file: the validation split is its last 1/VAL_MODULUS, from the line that starts there."""
    at = len(data) - len(data) // VAL_MODULUS
    newline = data.find(b"\n", at)
    cut = newline + 1 if newline != -1 else at
    return data[:cut], data[cut:]


@dataclass(frozen=True)
class Corpus:
    train: UInt8[Tensor, " n_train"]
    val: UInt8[Tensor, " n_val"]
    fingerprint: str
    source: str
    n_files: int


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("RESEARCH_CACHE_DIR") or Path(base) / "research-harness")


def fingerprint(train: bytes, val: bytes) -> str:
    h = hashlib.sha256()
    for name, part in ((b"train", train), (b"val", val)):
        h.update(name + len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def parse_source(source: str) -> tuple[str, str]:
    kind, _, arg = source.partition(":")
    if kind == "stdlib" and not arg or kind in ("text", "hf") and arg:
        return kind, arg
    raise ValueError(f"DATA_SOURCE {source!r} is not a data source: use {SOURCE_FORMS} (eval.py, meta-mode)")


def text_path(arg: str) -> Path:
    path = Path(arg).expanduser()
    path = path if path.is_absolute() else Path(__file__).resolve().parent / path
    if not path.exists():
        raise ValueError(f"DATA_SOURCE 'text:{arg}': {path} does not exist; point it at a folder or a file of text")
    return path.resolve()


def load_corpus(source: str = DATA_SOURCE, cache_dir: Path | None = None) -> Corpus:
    """The prepared corpus. Local sources are prepared here, once per distinct file listing, and
    cached as two byte files; a Hugging Face source must have been prepared by `just prepare`.
    The fingerprint is recomputed from the bytes on every load, so it always names what was used."""
    kind, arg = parse_source(source)
    cache_dir = cache_dir or default_cache_dir()
    if kind == "hf":
        folder = hf_prepared_dir(arg, cache_dir)
        manifest = folder / "manifest.json"
        if not manifest.exists():
            raise ValueError(
                f"DATA_SOURCE {source!r} is not prepared (nothing in {folder}): run `uv run just prepare` once, "
                "with internet; runs read the prepared copy offline"
            )
        info = json.loads(manifest.read_text())
        if info["text_column"] != HF_TEXT_COLUMN:
            raise ValueError(
                f"{folder} was prepared from column {info['text_column']!r}, eval.py reads {HF_TEXT_COLUMN!r}: "
                "run `uv run just prepare` again"
            )
        train, val = (folder / "train.bin").read_bytes(), (folder / "val.bin").read_bytes()
        n_files, where = len(info["files"]), f"{source}@{info['commit'][:12]}"
    elif (folder := stdlib_dir().resolve() if kind == "stdlib" else text_path(arg)).is_file():
        train, val = split_one_file(folder.read_bytes())  # text:PATH naming one file
        n_files, where = 1, str(folder)
    else:
        files = stdlib_files(folder) if kind == "stdlib" else text_files(folder)
        if not files:
            raise ValueError(f"DATA_SOURCE {source!r}: no files under {folder}, the corpus is empty")
        stats = ((r, (folder / r).stat()) for r in files)
        listing = "\n".join(f"{r}\t{s.st_size}\t{s.st_mtime_ns}" for r, s in stats)
        key = hashlib.sha256(f"{folder}\n{VAL_MODULUS}\n{listing}".encode()).hexdigest()[:16]
        train_path, val_path = cache_dir / f"{key}.train.bin", cache_dir / f"{key}.val.bin"
        if not (train_path.exists() and val_path.exists()):
            parts: dict[bool, list[bytes]] = {True: [], False: []}
            for r in files:
                parts[is_validation(r)].append((folder / r).read_bytes())
            write_atomic(train_path, b"".join(parts[False]))
            write_atomic(val_path, b"".join(parts[True]))
        train, val = train_path.read_bytes(), val_path.read_bytes()
        n_files, where = len(files), str(folder)
    if len(val) < 2 or not train:
        raise ValueError(
            f"DATA_SOURCE {source!r} gives {len(train):,} training and {len(val):,} validation bytes; "
            f"both splits need data (a file is validation when sha256 of its path mod {VAL_MODULUS} is 0: add files)"
        )
    return Corpus(
        train=torch.frombuffer(bytearray(train), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val), dtype=torch.uint8),
        fingerprint=fingerprint(train, val),
        source=where,
        n_files=n_files,
    )


def hf_prepared_dir(spec: str, cache_dir: Path) -> Path:
    return cache_dir / ("hf-" + spec.replace("/", "--").replace(":", "--"))


def hf_split(relpath: str) -> str:
    """train, val or test: the first split word in the file's path, read from the file name up;
    a file with none is training data."""
    for part in reversed(relpath.lower().split("/")):
        for word in re.split(r"[^a-z]+", part):
            if word in HF_SPLIT_WORDS:
                return HF_SPLIT_WORDS[word]
    return "train"


def hf_download(repo: str, config: str) -> tuple[Path, list[str]]:
    """The dataset's parquet files in the local hub cache: downloaded (resuming a partial download)
    unless HF_HUB_OFFLINE=1, where the cached snapshot is used. Datasets stored in another format
    are read from the Hub's parquet conversion (revision refs/convert/parquet)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{config}/*.parquet", f"*/{config}/*.parquet"] if config else ["*.parquet"]  # that config only
    for revision in ("main", "refs/convert/parquet"):
        try:
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
        except (HfHubHTTPError, LocalEntryNotFoundError) as e:
            if revision == "main":
                raise ValueError(f"hf:{repo}: could not download it ({type(e).__name__}: {e})") from e
            continue
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet"))
        if config:
            files = [f for f in files if config in f.split("/")[:-1]]
        if files:
            return folder, files
    where = f" in a folder named {config!r}" if config else ""
    raise ValueError(f"hf:{repo}: no parquet files{where} on its main branch nor in its parquet conversion")


def prepare_hf(spec: str, cache_dir: Path) -> Path:
    """Download a Hugging Face dataset and turn it into train.bin / val.bin. Resumable: each
    parquet file is converted once into its own part files; a rerun skips the finished ones."""
    import polars as pl
    from tqdm import tqdm

    repo, _, config = spec.partition(":")
    snapshot, files = hf_download(repo, config)
    splits = {f: hf_split(f) for f in files}
    files = [f for f in files if splits[f] != "test"]  # the test split stays unseen
    has_val = "val" in splits.values()
    out = hf_prepared_dir(spec, cache_dir)
    parts = out / f"parts-{snapshot.name[:12]}-{HF_TEXT_COLUMN}"
    for i, name in enumerate(tqdm(files, desc=f"prepare hf:{spec}", unit="file")):
        if (parts / f"{i:05d}.done").exists():
            continue
        try:
            columns = pl.read_parquet_schema(snapshot / name)
            texts = pl.read_parquet(snapshot / name, columns=[HF_TEXT_COLUMN]) if HF_TEXT_COLUMN in columns else None
        except (pl.exceptions.PolarsError, OSError) as e:
            raise ValueError(
                f"hf:{spec}: cannot read {snapshot / name} ({type(e).__name__}: {e}); delete the dataset's "
                "folder from the hub cache (huggingface-cli delete-cache) and run `uv run just prepare` again"
            ) from e
        if columns.get(HF_TEXT_COLUMN) != pl.String:
            raise ValueError(
                f"hf:{spec}: {name} has no text column {HF_TEXT_COLUMN!r} (its columns: "
                f"{', '.join(f'{c} ({t})' for c, t in columns.items())}); set HF_TEXT_COLUMN in eval.py (meta-mode)"
            )
        chunks: dict[bool, list[bytes]] = {True: [], False: []}
        for text in texts[HF_TEXT_COLUMN]:
            if text:
                doc = text.encode() + HF_DOC_SEPARATOR
                chunks[splits[name] == "val" if has_val else is_validation(doc)].append(doc)
        write_atomic(parts / f"{i:05d}.train", b"".join(chunks[False]))
        write_atomic(parts / f"{i:05d}.val", b"".join(chunks[True]))
        write_atomic(parts / f"{i:05d}.done", b"")
    for split in ("train", "val"):  # streamed part by part: a large dataset never sits in memory twice
        tmp = out / f"{split}.bin.tmp{os.getpid()}"
        with tmp.open("wb") as whole:
            for i in range(len(files)):
                with (parts / f"{i:05d}.{split}").open("rb") as part:
                    shutil.copyfileobj(part, whole)
        os.replace(tmp, out / f"{split}.bin")
    manifest = dict(source=f"hf:{spec}", commit=snapshot.name, text_column=HF_TEXT_COLUMN, files=files)
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    shutil.rmtree(parts)
    return out


def prepare(source: str = DATA_SOURCE, cache_dir: Path | None = None) -> Corpus:
    """What `just prepare` does: download and convert a Hugging Face source; then load, so a
    local source is checked and cached as well."""
    kind, arg = parse_source(source)
    cache_dir = cache_dir or default_cache_dir()
    if kind == "hf":
        prepare_hf(arg, cache_dir)
    return load_corpus(source, cache_dir)


class TrainStream:
    """The only way train.py gets data: seeded random windows of the training split, served until
    the token budget is spent. The referee counts what it served, so the row's train_tokens is
    what the model actually saw. Under DDP every rank draws the same global batch and keeps its
    own rows of it, so the data a run sees depends on the seed alone, not on the process count."""

    def __init__(
        self,
        tokens: Tensor,
        budget_tokens: int,
        seed: int,
        device: torch.device,
        deadline: float,
        rank: int = 0,
        world_size: int = 1,
        metrics_path: Path | None = None,
    ):
        self.tokens = tokens.to(device)  # the whole split on the device: batches need no host copy
        self.budget_tokens = budget_tokens
        self.tokens_served = 0  # by all ranks together
        self.seq_len: int | None = None
        self.device = device
        self.deadline = deadline
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.metrics: list[dict] = []  # what train.py reported through log_step, in order
        self.metrics_path = metrics_path

    def batches(
        self, batch_size: int, seq_len: int
    ) -> Iterator[tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]]:
        """(inputs, targets) pairs, targets shifted by one byte, until the budget is spent.
        `batch_size` is the global batch; each of the world_size ranks gets batch_size / world_size rows."""
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} does not split over {self.world_size} processes: "
                f"use a multiple of {self.world_size} (--batch-size) or another --nproc"
            )
        if seq_len + 1 > len(self.tokens):
            raise ValueError(f"seq_len={seq_len} is longer than the training split ({len(self.tokens)} bytes)")
        self.seq_len = seq_len
        span = torch.arange(seq_len + 1, device=self.device)
        rows = batch_size // self.world_size
        while self.tokens_served + batch_size * seq_len <= self.budget_tokens:
            if time.monotonic() > self.deadline:
                raise WallClockExceeded(f"training passed the wall-clock cap after {self.tokens_served} tokens")
            starts = torch.randint(len(self.tokens) - seq_len, (batch_size, 1), generator=self.generator)
            mine = starts[self.rank * rows : (self.rank + 1) * rows]
            if self.device.type == "cuda":  # from pinned memory the copy is asynchronous: no host sync per step
                mine = mine.pin_memory()
            window = self.tokens[mine.to(self.device, non_blocking=True) + span].long()
            self.tokens_served += batch_size * seq_len
            yield window[:, :-1], window[:, 1:]

    def log_step(self, step: int, total_steps: int, **metrics: float) -> None:
        """train.py's report of one step (`loss` at least): logged as one line, kept as data, and written
        as a JSON line to runs/{run_id}/metrics.jsonl, which smoke and the loss plots read back."""
        record = dict(step=step, total_steps=total_steps, tokens=self.tokens_served, **metrics)
        self.metrics.append(record)
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        values = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        logger.info(f"step {step}/{total_steps} | {values}")


# --- Evaluation (the metric) ---


@torch.no_grad()
def causality_violation(model: Model, val: Tensor, seq_len: int, device: torch.device) -> str | None:
    """None if the model is causal on a probe window; otherwise what it peeked at."""
    x = val[:seq_len].long().to(device)[None]
    gen = torch.Generator().manual_seed(1234)
    reference = model(x).float()
    if reference.shape != (1, x.size(1), VOCAB_SIZE):
        return f"logits have shape {tuple(reference.shape)}, expected (1, {x.size(1)}, {VOCAB_SIZE})"
    for t in sorted({min(p, x.size(1) - 2) for p in PROBE_POSITIONS}):
        perturbed = x.clone()
        perturbed[0, t + 1 :] = torch.randint(VOCAB_SIZE, (x.size(1) - t - 1,), generator=gen).to(device)
        diff = (model(perturbed).float()[0, : t + 1] - reference[0, : t + 1]).abs().max().item()
        if not diff <= PROBE_ATOL:
            return f"changing bytes after position {t} changed logits at positions <= {t} by {diff:.3g}"
    return None


@torch.no_grad()
def evaluate(model: Model, val: UInt8[Tensor, " n_val"], seq_len: int, device: torch.device) -> float:
    """val_bpb as defined in this module's docstring."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    n = len(val)
    if n < 2:
        raise ValueError(f"validation split has {n} bytes; need at least 2")
    starts = list(range(0, n - 1, seq_len))
    full = [s for s in starts if s + seq_len <= n - 1]
    total_nats = 0.0
    data = val.to(device).long()
    span = torch.arange(seq_len + 1, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(0, len(full), EVAL_BATCH_SIZE):
        window = data[torch.tensor(full[i : i + EVAL_BATCH_SIZE], device=device)[:, None] + span]
        with autocast:
            logits = model(window[:, :-1])
        total_nats += F.cross_entropy(
            logits.float().reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1), reduction="sum"
        ).item()
    if len(full) < len(starts):  # the tail: one shorter window
        window = data[starts[-1] :][None]
        with autocast:
            logits = model(window[:, :-1])
        total_nats += F.cross_entropy(
            logits.float().reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1), reduction="sum"
        ).item()
    if was_training:
        model.train()
    return total_nats / math.log(2) / (n - 1)


def score(model: Model, val: UInt8[Tensor, " n_val"], seq_len: int, device: torch.device) -> float:
    """The referee's verdict on a trained model, for `just eval`, `just smoke` (on a slice of the split) and
    `just verify`: the causality probe, then val_bpb, which must be finite."""
    model.eval()
    problem = causality_violation(model, val, seq_len, device)
    if problem is not None:
        raise ValueError(f"model is not causal, refused: {problem}")
    val_bpb = evaluate(model, val, seq_len, device)
    if not math.isfinite(val_bpb):
        raise FloatingPointError(f"val_bpb is {val_bpb}")
    return val_bpb


# --- Device ---


def resolve_device(name: str | None) -> torch.device:
    """The device asked for, checked; or the best one present. Never a silent switch."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"--device {name!r} is not one of {sorted(PRESETS)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device: use --device cpu, or fix the driver")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps, but torch sees no MPS device: use --device cpu")
    return torch.device(name)


@cache
def device_peak_flops(device: torch.device) -> float:
    """Peak FLOP/s that MFU is measured against: the bf16 dense datasheet figure for known GPUs;
    elsewhere the float32 matmul rate measured here (so CPU MFU is relative to this machine)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 4096 if device.type != "cpu" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    best = 0.0
    for _ in range(5):  # the best of a few: a busy neighbour only ever slows a trial down
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


@contextmanager
def wall_cap(seconds: float):
    """Raise WallClockExceeded in this (main) thread after `seconds`, even inside code that
    never returns to the batch stream."""

    def on_alarm(signum, frame):
        raise WallClockExceeded(f"training passed the wall-clock cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- Ledger ---


def git_blob_sha(path: Path) -> str:
    """What `git hash-object PATH` prints: names the exact eval.py that scored a row."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --- One scored run ---


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
    """processes for this one run, under torchrun with DDP: one per GPU (gloo processes on CPU)"""

    def __post_init__(self):  # refused before the run, with no row
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise ValueError(f"--budget-tokens {self.budget_tokens}: must be a positive number of tokens")
        if self.wall_cap_s is not None and self.wall_cap_s <= 0:
            raise ValueError(f"--wall-cap-s {self.wall_cap_s}: must be a positive number of seconds")


def resolve_train_config(train_module, name: str | None, path: Path | None, device_type: str):
    """The named config (default: the device class's), or a JSON file of Config fields."""
    configs = train_module.CONFIGS
    if name is not None and path is not None:
        raise ValueError(f"give a CONFIG name ({name!r}) or --config PATH ({path}), not both")
    if path is not None:
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file (give a JSON object of train.Config fields)")
        fields = {f.name for f in dataclasses.fields(train_module.Config)}
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"--config {path}: unknown fields {unknown}; train.Config has {sorted(fields)}")
        return str(path), train_module.Config(**data)
    name = name or device_type
    if name not in configs:
        raise ValueError(f"unknown config {name!r}; train.CONFIGS has {sorted(configs)}")
    return name, configs[name]


def describe_config(name: str, base, cfg) -> str:
    """`cpu`, or `cpu:lr=0.003,n_layer=6` when fields were overridden on the command line."""
    changed = [
        f"{f.name}={getattr(cfg, f.name)}"
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(base, f.name)
    ]
    return name + (":" + ",".join(changed) if changed else "")


def parse_args(argv: list[str], train_module) -> tuple[EvalArgs, str, object]:
    """`[CONFIG] [--eval flags] [--train.Config fields]`: CONFIG, if given, is the first argument; the
    fields override the chosen config's values, so the defaults of the full parse are that config's."""
    import tyro

    name, flags = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)
    probe = tyro.cli(
        EvalArgs, args=[a for a in flags if a not in ("-h", "--help")], return_unknown_args=True, prog="just eval"
    )[0]
    device_type = probe.device or resolve_device(None).type
    config_name, base = resolve_train_config(train_module, name, probe.config, device_type)
    cli_type = dataclasses.make_dataclass(
        "Cli",
        [
            ("eval", EvalArgs, dataclasses.field(default_factory=EvalArgs)),
            ("train", train_module.Config, dataclasses.field(default_factory=lambda: base)),
        ],
    )
    parsed = tyro.cli(cli_type, args=flags, description=__doc__, config=(tyro.conf.OmitArgPrefixes,), prog="just eval")
    description = describe_config(config_name, base, parsed.train)
    if parsed.eval.nproc != 1:  # the row says how many processes trained it
        description += ("," if ":" in description else ":") + f"nproc={parsed.eval.nproc}"
    return parsed.eval, description, parsed.train


def load_experiment(code_dir: Path):
    """Import the experiment's train.py (and through it model.py) from `code_dir`. train.py's
    `import eval` gets this very module: the referee that is running, never the experiment's copy."""
    sys.modules["eval"] = sys.modules[__name__]
    sys.path.insert(0, str(code_dir))
    import train

    return train


def check_nproc(nproc: int, device: torch.device) -> None:
    """One process per GPU; on CPU one per core at most (gloo processes beyond that only contend)."""
    if nproc == 1:
        return
    if device.type == "cuda":
        available, unit = torch.cuda.device_count(), "CUDA devices are visible"
    elif device.type == "cpu":
        available, unit = os.cpu_count() or 1, "CPU cores are here"
    else:
        available, unit = 1, "process runs on mps"
    if nproc < 1 or nproc > available:
        raise ValueError(f"--nproc {nproc}: only {available} {unit}; give --nproc between 1 and {available}")


def launch_ranks(nproc: int, argv: list[str], row: dict, summary: dict, root: Path, run_dir: Path) -> int:
    """Run this same command under torchrun, one process per rank; rank 0 writes the row. A SIGTERM
    (a queue's kill) is passed on, so rank 0 still records the run; if rank 0 died before it did,
    this process writes the crash row, so the run is not lost."""
    import subprocess

    run_dir.mkdir(parents=True)
    print(f"run {row['run_id']}: {nproc} processes under torchrun (DDP), rank 0 scores and writes the row")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__]
    # The arguments travel in the environment: torchrun's parser would take `--nproc` for its own option.
    env = {**os.environ, "RESEARCH_RUN_ID": row["run_id"], "RESEARCH_LABEL": row["label"]}
    ranks = subprocess.Popen(command, env={**env, "RESEARCH_EVAL_ARGS": json.dumps(argv)})
    try:
        exit_code = ranks.wait()
    except (Terminated, KeyboardInterrupt):
        ranks.send_signal(signal.SIGTERM)
        exit_code = ranks.wait()
    if (run_dir / "summary.json").exists():
        return exit_code
    row["error"] = f"torchrun exited {exit_code} before rank 0 wrote the row (its output is above)"
    record(row, summary, root, run_dir)
    return exit_code or 1


def join_ranks(device: torch.device) -> torch.device:
    """Under torchrun: this rank's device, in the process group (NCCL on GPUs, gloo on CPU)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
    )
    return device


def crash_message(e: BaseException) -> str:
    """The row's error: the exception in one line; for an op that has no deterministic kernel, which
    op and the fix (torch's own advice, to turn determinism off, is not one a scored run may take)."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, RuntimeError) and "does not have a deterministic implementation" in str(e):
        op = str(e).split(" does not have a deterministic implementation", 1)[0]
        text = (
            f"non-deterministic op: {op} has no deterministic kernel, and scored runs are strict so that one "
            "seed gives one number. Replace it in train.py/model.py with ops that have one (a one-hot matmul "
            "instead of index_add/scatter_add/embedding backward, for example)"
        )
    return " ".join(text.split())[:500]


def print_summary(row: dict, summary: dict) -> None:
    print("---")
    for key in ("val_bpb", "train_tokens", "wall_s", "tokens_per_s", "mfu", "peak_mem_gb", "params_m"):
        value = row.get(key)
        text = repr(value) if key == "val_bpb" else f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key}: {'' if text is None else text}")
    print(f"eval_s: {summary.get('eval_s', 0.0):.1f}")
    print(f"status: {row['status']}")
    print(f"run_id: {row['run_id']}")
    if row.get("error"):
        print(f"error: {row['error']}")


def record(row: dict, summary: dict, root: Path, run_dir: Path) -> None:
    """The row into the ledger, the summary beside the run's log, the summary block on stdout."""
    append_result(row, root / LEDGER)
    (run_dir / RUNNING).unlink(missing_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({**row, **summary}, indent=2) + "\n")
    print_summary(row, summary)


def end_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux), so that a kill of `uv run just eval`, of
    `just`, or of `just baseline` reaches the run, which records its crash row, instead of leaving it
    running unseen."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not interrupt the row
    raise Terminated("killed by SIGTERM")


def start_logging(run_dir: Path, rank: int) -> None:
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} | {message}", level="INFO" if rank == 0 else "ERROR", diagnose=False)
    if rank == 0:
        logger.add(run_dir / "train.log", format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {message}", diagnose=False)


def keep_code(code_dir: Path, run_dir: Path, cfg) -> None:
    """The run's own train.py, model.py and config beside its result: `just verify` rebuilds the model from
    them, whether or not the branch that held them still exists."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py"):
        shutil.copyfile(code_dir / name, run_dir / name)
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def train_and_score(
    train, cfg, stream: TrainStream, val: Tensor, device, wall_cap_s: float, run_dir: Path, row: dict, summary: dict
):
    """Train under the wall-clock cap; then rank 0 saves the checkpoint into `run_dir` and scores. The
    figures go into `row` and `summary`."""
    preset = PRESETS[device.type]
    t0 = time.perf_counter()
    try:
        with wall_cap(wall_cap_s):
            model = train.train(cfg, stream, device)
    finally:
        wall_s = time.perf_counter() - t0
        row.update(train_tokens=stream.tokens_served, wall_s=wall_s, tokens_per_s=stream.tokens_served / wall_s)
    if stream.world_size > 1:
        torch.distributed.destroy_process_group()
        if stream.rank != 0:
            return
        if device.type == "cpu":  # torchrun gave each rank one thread; rank 0 now scores alone
            torch.set_num_threads(os.cpu_count() or 1)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if stream.seq_len is not None:
        flops = model.flops_per_token(stream.seq_len) * stream.tokens_served
        row["mfu"] = flops / wall_s / (device_peak_flops(device) * stream.world_size)
    torch.save({"model": model.state_dict(), "train_config": dataclasses.asdict(cfg)}, run_dir / "model.pt")
    t0 = time.perf_counter()
    row.update(val_bpb=score(model, val, preset.eval_seq_len, device), status="ok")
    summary["eval_s"] = time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    end_with_parent()
    if argv is None:
        argv = json.loads(os.environ["RESEARCH_EVAL_ARGS"]) if "LOCAL_RANK" in os.environ else sys.argv[1:]
    root = Path(__file__).resolve().parent
    code_dir = checkout_dir()
    install_hooks(root)
    require_scoring_allowed(code_dir, root)

    # --- the run's inputs, refused before anything starts ---
    check_ledger(root / LEDGER)  # its row could not be appended
    train = load_experiment(code_dir)
    args, config_desc, cfg = parse_args(argv, train)
    device = resolve_device(args.device)
    check_nproc(args.nproc, device)
    t0 = time.perf_counter()
    corpus = load_corpus()  # a source that is missing or unprepared is refused, no row
    data_s = time.perf_counter() - t0
    preset = PRESETS[device.type]
    budget = args.budget_tokens or preset.train_tokens
    wall_cap_s = min(args.wall_cap_s or preset.wall_cap_s, preset.wall_cap_s)
    if device.type == "cuda":  # deterministic cuBLAS; must be set before the first CUDA call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    is_launcher = args.nproc > 1 and "LOCAL_RANK" not in os.environ

    # --- the row it will write, whatever happens ---
    experiment = experiment_name(code_dir, root)
    run_id = os.environ.get("RESEARCH_RUN_ID") or new_run_id(experiment)
    if "LOCAL_RANK" not in os.environ and (root / "runs" / run_id).exists():
        run_id += f"-{secrets.token_hex(2)}"  # a queued id used before: `pueue restart` keeps the task's environment
    run_dir = root / "runs" / run_id
    commit = head_commit(code_dir)
    row: dict = dict(
        run_id=run_id, started_at=datetime.now(UTC).isoformat(timespec="seconds"), experiment=experiment,
        config=config_desc, commit=commit, seed=args.seed, device=device.type, status="crash", label=run_label(),
        eval_sha=git_blob_sha(Path(__file__)), budget_tokens=budget, description=args.description,
        data_fp=corpus.fingerprint,
    )  # fmt: skip
    summary: dict = {"data_s": data_s, "nproc": args.nproc}
    signal.signal(signal.SIGTERM, on_sigterm)
    if is_launcher:
        return launch_ranks(args.nproc, argv, row, summary, root, run_dir)
    if world_size > 1:
        device = join_ranks(device)
    keep_code(code_dir, run_dir, cfg)
    if world_size == 1:  # (under DDP the launcher records a rank's death)
        mark_running(row, run_dir)

    # --- the header of the log ---
    start_logging(run_dir, rank)
    logger.info(
        f"run {run_id} | experiment {experiment} | commit {commit}{' (dirty)' if tracked_dirty(code_dir) else ''}"
    )
    logger.info(f"torch {torch.__version__} | cuda {torch.version.cuda} | device {device} | seed {args.seed}")
    logger.info(f"config {config_desc} | {cfg}")
    if args.wall_cap_s is not None and args.wall_cap_s > preset.wall_cap_s:
        logger.warning(
            f"--wall-cap-s {args.wall_cap_s:g} is above the {device.type} preset's cap: a cap is only lowered"
        )
    logger.info(
        f"budget {budget:,} tokens | wall cap {wall_cap_s:.0f} s | eval context {preset.eval_seq_len}"
        + (f" | {world_size} processes (DDP)" if world_size > 1 else "")
    )
    logger.info(
        f"data {corpus.source} | {corpus.n_files} files | train {len(corpus.train):,} B | "
        f"val {len(corpus.val):,} B | fp {corpus.fingerprint} | {data_s:.1f} s"
    )

    # --- train and score ---
    exit_code, deadline = 1, time.monotonic() + wall_cap_s
    try:
        torch.manual_seed(args.seed)
        # Strict: an op with no deterministic kernel ends the run (a crash row naming it), never a
        # silently different number for the same seed.
        torch.use_deterministic_algorithms(True)
        metrics_path = run_dir / "metrics.jsonl" if rank == 0 else None
        stream = TrainStream(corpus.train, budget, args.seed, device, deadline, rank, world_size, metrics_path)
        train_and_score(train, cfg, stream, corpus.val, device, wall_cap_s, run_dir, row, summary)
        exit_code = 0
    except WallClockExceeded as e:
        row.update(status="timeout", error=str(e))
        logger.error(f"timeout: {e}")
    except (Exception, KeyboardInterrupt, Terminated) as e:
        if world_size > 1 and "params_m" not in row and time.monotonic() > deadline:
            # another rank hit the wall-clock cap a moment sooner, and its exit ended this one
            row.update(status="timeout", error=f"training passed the wall-clock cap of {wall_cap_s:.0f} s")
            logger.error(f"timeout: {row['error']} ({type(e).__name__}: {e})")
        else:
            row["error"] = crash_message(e)
            logger.opt(exception=e).error(f"crash: {row['error']}")
        exit_code = 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run is over: a kill now must not lose its row
        if rank == 0:
            row["peak_mem_gb"] = peak_memory_gb(device)
            record(row, summary, root, run_dir)
    return exit_code


if __name__ == "__main__":
    debug = "--debug" in sys.argv  # tracebacks of errors before the run; the run's own are in its train.log
    if debug:
        sys.argv.remove("--debug")
    try:
        sys.exit(main())
    except Exception as e:  # bad input before a run starts: a one-line error and no row
        if debug:
            raise
        hint = "" if isinstance(e, ValueError) else " (run with --debug for the traceback)"
        print(
            f"error: {' '.join(str(e).split()) if isinstance(e, ValueError) else f'{type(e).__name__}: {e}'}{hint}",
            file=sys.stderr,
        )
        sys.exit(2)
