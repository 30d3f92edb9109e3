"""The corpus: where the data comes from, how it is prepared and cached, and what a worker may not open.
FROZEN (meta-mode only). The split rule and the fingerprint are in referee/core.py; every row carries the
fingerprint (`data_fp`) of the bytes it was trained and scored on, so rows of different data never compare.

Files are sorted by relative path and split by core.split_of (validation, the sealed holdout, training); a
single text file splits at its last 5% (validation) and the 5% before (holdout); a Hugging Face dataset keeps
its own validation split, or, without one, sends a document to validation when sha256(document) mod 20 == 0,
and carves the holdout from its training documents by the holdout's rule (its test split is unused).

torch, and the core that imports it, are imported where a tensor is made or a split decided: what a worker may
not open is known without them, so that a run starts its training worker first and loads torch beside it.
"""

from __future__ import annotations  # the Corpus's annotations name torch's Tensor, imported only to check types

import hashlib
import json
import os
import re
import shutil
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from repo import write_atomic

if TYPE_CHECKING:
    from jaxtyping import UInt8
    from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]  # the main checkout, which relative text:PATH sources start from

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
# fmt: off
HF_SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "val", "valid": "val", "val": "val", "dev": "val",
    "test": "test", "testing": "test",
}
# fmt: on
SOURCE_FORMS = "'stdlib', 'text:PATH' or 'hf:OWNER/NAME[:CONFIG]'"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(folder: Path) -> list[str]:
    """Relative paths of the standard library's `.py` files, sorted; installed packages are not corpus, and the
    walk does not enter them (a Python's own site-packages can hold several times the standard library's files:
    walking them took half a second, twice a run)."""
    found = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages")]
        found += [Path(top, name) for name in names if name.endswith(".py")]
    return sorted(path.relative_to(folder).as_posix() for path in found if path.is_file())


def text_files(folder: Path) -> list[str]:
    """Relative paths of every file under `folder` with no hidden part (.git, .DS_Store), sorted."""
    rel = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(r for r in rel if not any(part.startswith(".") for part in r.split("/")))


SPLITS = ("train", "val", "holdout")


@dataclass(frozen=True)
class Corpus:
    train: UInt8[Tensor, " n_train"]
    val: UInt8[Tensor, " n_val"]
    holdout: UInt8[Tensor, " n_holdout"]
    """the sealed split: scored only in `just confirm`'s runs, never served"""
    fingerprint: str
    source: str
    n_files: int


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("RESEARCH_CACHE_DIR") or Path(base) / "research-harness")


def parse_source(source: str) -> tuple[str, str]:
    kind, _, arg = source.partition(":")
    if kind == "stdlib" and not arg or kind in ("text", "hf") and arg:
        return kind, arg
    raise ValueError(f"DATA_SOURCE {source!r} is not a data source: use {SOURCE_FORMS} (referee/data.py, meta-mode)")


def text_path(arg: str) -> Path:
    path = Path(arg).expanduser()
    path = path if path.is_absolute() else ROOT / path
    if not path.exists():
        raise ValueError(f"DATA_SOURCE 'text:{arg}': {path} does not exist; point it at a folder or a file of text")
    return path.resolve()


def load_corpus(source: str = DATA_SOURCE, cache_dir: Path | None = None) -> Corpus:
    """The prepared corpus. Local sources are prepared here, once per distinct file listing, and
    cached as three byte files; a Hugging Face source must have been prepared by `just prepare`.
    The fingerprint is recomputed from the bytes on every load, so it always names what was used."""
    import torch

    from referee.core import VAL_MODULUS, fingerprint, split_of, split_one_file

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
                f"{folder} was prepared from column {info['text_column']!r}, referee/data.py reads {HF_TEXT_COLUMN!r}: "
                "run `uv run just prepare` again"
            )
        if not (folder / "holdout.bin").exists():
            raise ValueError(f"{folder} was prepared before the holdout split: run `uv run just prepare` again")
        parts = {split: (folder / f"{split}.bin").read_bytes() for split in SPLITS}
        n_files, where = len(info["files"]), f"{source}@{info['commit'][:12]}"
    elif (folder := stdlib_dir().resolve() if kind == "stdlib" else text_path(arg)).is_file():
        parts = split_one_file(folder.read_bytes())  # text:PATH naming one file
        n_files, where = 1, str(folder)
    else:
        files = stdlib_files(folder) if kind == "stdlib" else text_files(folder)
        if not files:
            raise ValueError(f"DATA_SOURCE {source!r}: no files under {folder}, the corpus is empty")
        stats = ((r, (folder / r).stat()) for r in files)
        listing = "\n".join(f"{r}\t{s.st_size}\t{s.st_mtime_ns}" for r, s in stats)
        key = hashlib.sha256(f"{folder}\n{VAL_MODULUS}\n{SPLITS}\n{listing}".encode()).hexdigest()[:16]
        paths = {split: cache_dir / f"{key}.{split}.bin" for split in SPLITS}
        if not all(path.exists() for path in paths.values()):
            chunks: dict[str, list[bytes]] = {split: [] for split in SPLITS}
            for r in files:
                chunks[split_of(r)].append((folder / r).read_bytes())
            for split, path in paths.items():
                write_atomic(path, b"".join(chunks[split]))
        parts = {split: path.read_bytes() for split, path in paths.items()}
        n_files, where = len(files), str(folder)
    train, val, holdout = (parts[split] for split in SPLITS)
    if len(val) < 2 or not train:
        raise ValueError(
            f"DATA_SOURCE {source!r} gives {len(train):,} training and {len(val):,} validation bytes; "
            f"both splits need data (a file is validation when sha256 of its path mod {VAL_MODULUS} is 0: add files)"
        )
    return Corpus(
        train=torch.frombuffer(bytearray(train), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val), dtype=torch.uint8),
        holdout=torch.frombuffer(bytearray(holdout), dtype=torch.uint8),
        fingerprint=fingerprint(train, val, holdout),
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
    parts = out / f"parts-{snapshot.name[:12]}-{HF_TEXT_COLUMN}-holdout"
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
                f"{', '.join(f'{c} ({t})' for c, t in columns.items())}); set HF_TEXT_COLUMN in referee/data.py (meta-mode)"
            )
        chunks: dict[str, list[bytes]] = {split: [] for split in SPLITS}
        for text in texts[HF_TEXT_COLUMN]:
            if text:
                doc = text.encode() + HF_DOC_SEPARATOR
                chunks[hf_doc_split(doc, splits[name], has_val)].append(doc)
        for split in SPLITS:
            write_atomic(parts / f"{i:05d}.{split}", b"".join(chunks[split]))
        write_atomic(parts / f"{i:05d}.done", b"")
    for split in SPLITS:  # streamed part by part: a large dataset never sits in memory twice
        write_atomic(out / f"{split}.bin", ((parts / f"{i:05d}.{split}").read_bytes() for i in range(len(files))))
    manifest = dict(source=f"hf:{spec}", commit=snapshot.name, text_column=HF_TEXT_COLUMN, files=files)
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    shutil.rmtree(parts)
    return out


def hf_doc_split(doc: bytes, file_split: str, has_val: bool) -> str:
    """A document's split: its file's validation split if the dataset has one, else core.split_of's rule;
    the holdout is carved from the training documents by the holdout's own rule either way."""
    from referee.core import split_of

    if not has_val:
        return split_of(doc)
    if file_split == "val":
        return "val"
    return "holdout" if split_of(doc) == "holdout" else "train"


def prepare(source: str = DATA_SOURCE, cache_dir: Path | None = None) -> Corpus:
    """What `just prepare` does: download and convert a Hugging Face source; then load, so a
    local source is checked and cached as well."""
    kind, arg = parse_source(source)
    cache_dir = cache_dir or default_cache_dir()
    if kind == "hf":
        prepare_hf(arg, cache_dir)
    return load_corpus(source, cache_dir)


def forbidden_paths(source: str = DATA_SOURCE, cache_dir: Path | None = None) -> tuple[list[str], str | None]:
    """What a worker may not open: the data's folders and files (the prepared cache, the source), and the
    standard library's folder when its .py files are the corpus."""
    kind, arg = parse_source(source)
    paths = [cache_dir or default_cache_dir()]
    if kind == "text":
        paths.append(text_path(arg))
    elif kind == "hf":
        from huggingface_hub import constants

        paths.append(Path(constants.HF_HUB_CACHE) / f"datasets--{arg.partition(':')[0].replace('/', '--')}")
    return [os.path.realpath(p) for p in paths], os.path.realpath(stdlib_dir()) if kind == "stdlib" else None


@cache
def compile_stdlib() -> tuple[str, ...]:
    """Bytecode for every standard-library module, written once where it is missing or stale, because a worker
    may read the bytecode of the training split's modules but no source (referee/sandbox.py). The modules still
    without it (a read-only system Python missing some) cannot be imported by the experiment: returned, and
    logged once. Source files that do not compile (the test suite's bad-syntax samples) are not modules."""
    import importlib.util
    import py_compile
    import warnings

    folder, missing = stdlib_dir().resolve(), []
    for relpath in stdlib_files(folder):
        source = folder / relpath
        cached = Path(importlib.util.cache_from_source(str(source)))
        if bytecode_is_current(source, cached):
            continue
        timestamp = py_compile.PycInvalidationMode.TIMESTAMP  # not SOURCE_DATE_EPOCH's checked hash
        try:
            with warnings.catch_warnings():  # the test suite's samples of bad code say so as they compile
                warnings.simplefilter("ignore")
                py_compile.compile(str(source), cfile=str(cached), doraise=True, invalidation_mode=timestamp)
        except py_compile.PyCompileError:
            continue
        except OSError:
            missing.append(relpath)
    return tuple(missing)


def bytecode_is_current(source: Path, cached: Path) -> bool:
    """What the import system checks before it uses a .pyc instead of the source (PEP 552 timestamp form): the
    source's mtime and size in its header. A hash-based .pyc would make it read the source: not current."""
    import importlib.util

    try:
        with open(cached, "rb") as f:
            header = f.read(16)
    except OSError:
        return False
    stat = source.stat()
    return (
        header[:4] == importlib.util.MAGIC_NUMBER
        and header[4:8] == b"\0\0\0\0"
        and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF
    )
