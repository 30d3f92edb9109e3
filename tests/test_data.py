"""Data sources: the embedded stdlib corpus, a local text folder or file, a Hugging Face dataset
read from a local hub cache with the network disabled (HF_HUB_OFFLINE=1)."""

import hashlib
import io
import os
from pathlib import Path

import polars as pl
import pytest

from conftest import block, just, ledger, set_data_source
from referee import core, data

TINY_RUN = ("eval", "tiny", "--budget-tokens", "4000")


@pytest.fixture
def meta_project(project: Path, monkeypatch) -> Path:
    monkeypatch.setenv("META_MODE", "1")  # for the commit of referee/data.py (conftest.run drops it for runs)
    return project


def text_folder(folder: Path, n: int = 60) -> Path:
    for i in range(n):
        (folder / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"part{i % 3}" / f"doc{i}.txt").write_text(f"Document {i}: the quick brown fox. " * (i + 5) + "\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("not corpus\n")
    return folder


def test_text_folder_end_to_end(meta_project, tmp_path):
    folder = text_folder(tmp_path / "corpus")
    set_data_source(meta_project, f"text:{folder}")
    env = {"RESEARCH_CACHE_DIR": str(tmp_path / "cache")}
    prepared = just(meta_project, "prepare", env=env)
    assert prepared.returncode == 0, prepared.stderr
    assert "60 files" in prepared.stdout
    result = just(meta_project, *TINY_RUN, env=env)
    assert result.returncode == 0, result.stderr
    assert block(result.stdout)["status"] == "ok"
    [row] = ledger(meta_project).to_dicts()
    corpus = data.load_corpus(f"text:{folder}", tmp_path / "other-cache")
    assert row["data_fp"] == corpus.fingerprint != data.load_corpus().fingerprint
    assert corpus.n_files == 60  # .git/HEAD is not corpus
    for split in data.SPLITS:
        expected = b"".join((folder / r).read_bytes() for r in data.text_files(folder) if core.split_of(r) == split)
        assert getattr(corpus, split).numpy().tobytes() == expected


def test_single_text_file_keeps_its_last_twentieth_for_validation_and_the_one_before_for_the_holdout(tmp_path):
    lines = [f"line {i} of a single long text\n" for i in range(400)]
    path = tmp_path / "book.txt"
    path.write_text("".join(lines))
    corpus = data.load_corpus(f"text:{path}", tmp_path / "cache")
    train, holdout, val = (getattr(corpus, s).numpy().tobytes().decode() for s in ("train", "holdout", "val"))
    assert train + holdout + val == path.read_text()
    assert val.startswith("line ") and holdout.startswith("line ") and train.endswith("\n")  # cut at line starts
    assert 0.04 < len(val) / len(path.read_text()) < 0.06 and 0.04 < len(holdout) / len(path.read_text()) < 0.06


@pytest.mark.parametrize(
    "source, message",
    [
        ("s3:bucket/data", "is not a data source: use 'stdlib', 'text:PATH' or 'hf:OWNER/NAME[:CONFIG]'"),
        ("text:/no/such/folder", "/no/such/folder does not exist"),
        ("hf:someone/never-prepared", "is not prepared"),
    ],
)
def test_bad_or_missing_source_is_refused_before_a_run(meta_project, tmp_path, source, message):
    set_data_source(meta_project, source)
    result = just(meta_project, *TINY_RUN, env={"RESEARCH_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert message in result.stderr and source.split(":")[0] in result.stderr
    assert not (meta_project / "results.tsv").read_text().strip().count("\n")  # header only: no row


def test_fingerprint_changes_with_the_source(tmp_path):
    a = text_folder(tmp_path / "a")
    b = text_folder(tmp_path / "b", n=61)
    fps = {
        data.load_corpus().fingerprint,
        data.load_corpus(f"text:{a}", tmp_path / "cache").fingerprint,
        data.load_corpus(f"text:{b}", tmp_path / "cache").fingerprint,
    }
    assert len(fps) == 3


# --- Hugging Face: a dataset in the hub cache's on-disk format, the network disabled ---


def parquet_bytes(texts: list[str | None], column: str = "text") -> bytes:
    buffer = io.BytesIO()
    pl.DataFrame({column: texts, "id": list(range(len(texts)))}).write_parquet(buffer)
    return buffer.getvalue()


def hub_dataset(hub: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A dataset as `snapshot_download` leaves it: blobs by hash, a snapshot folder of symlinks per
    commit, and refs/main naming the commit."""
    base = hub / f"datasets--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    for rel, content in files.items():
        blob = base / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = base / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return base / "snapshots" / commit


def stories(n: int, start: int = 0) -> list[str]:
    return [f"Once upon a time, story {i} began. " * 4 for i in range(start, start + n)]


def hf_env(tmp_path: Path) -> dict:
    return {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "RESEARCH_CACHE_DIR": str(tmp_path / "cache")}


def test_hf_dataset_is_prepared_offline_then_scored(meta_project, tmp_path):
    train_a, train_b, val = stories(40), stories(40, 40), stories(10, 80)
    hub_dataset(
        tmp_path / "hub",
        "owner/tiny-stories",
        {
            "data/train-00000-of-00002.parquet": parquet_bytes(train_a),
            "data/train-00001-of-00002.parquet": parquet_bytes([*train_b, None, ""]),
            "data/validation-00000-of-00001.parquet": parquet_bytes(val),
            "data/test-00000-of-00001.parquet": parquet_bytes(["never used"] * 5),
        },
    )
    set_data_source(meta_project, "hf:owner/tiny-stories")
    env = hf_env(tmp_path)
    refused = just(meta_project, *TINY_RUN, env=env)
    assert refused.returncode == 2 and "run `uv run just prepare`" in refused.stderr

    prepared = just(meta_project, "prepare", env=env)
    assert prepared.returncode == 0, prepared.stderr
    assert "3 files" in prepared.stdout  # two train files and the validation file; test is unused
    result = just(meta_project, *TINY_RUN, env=env)
    assert result.returncode == 0, result.stderr
    [row] = ledger(meta_project).to_dicts()
    sep = data.HF_DOC_SEPARATOR.decode()
    docs = [(t + sep).encode() for t in train_a + train_b]
    expected_train = b"".join(d for d in docs if core.split_of(d) != "holdout")
    expected_holdout = b"".join(d for d in docs if core.split_of(d) == "holdout")
    expected_val = "".join(t + sep for t in val).encode()
    fingerprint = core.fingerprint(expected_train, expected_val, expected_holdout)
    assert row["status"] == "ok" and row["data_fp"] == fingerprint


def test_hf_without_validation_split_uses_the_document_hash_rule(meta_project, tmp_path):
    docs = stories(200)
    hub_dataset(tmp_path / "hub", "owner/one-split", {"train.parquet": parquet_bytes(docs)})
    set_data_source(meta_project, "hf:owner/one-split")
    prepared = just(meta_project, "prepare", env=hf_env(tmp_path))
    assert prepared.returncode == 0, prepared.stderr
    sep = data.HF_DOC_SEPARATOR
    folder = data.hf_prepared_dir("owner/one-split", tmp_path / "cache")
    for split in data.SPLITS:
        expected = b"".join(d.encode() + sep for d in docs if core.split_of(d.encode() + sep) == split)
        assert (folder / f"{split}.bin").read_bytes() == expected and 0 < len(expected)
    assert len((folder / "val.bin").read_bytes()) < len(docs) * 150 / 5


def test_hf_config_reads_that_configs_files_only(meta_project, tmp_path):
    hub_dataset(
        tmp_path / "hub",
        "owner/multi",
        {
            "en/train-00000-of-00001.parquet": parquet_bytes(stories(30)),
            "en/validation-00000-of-00001.parquet": parquet_bytes(stories(5, 30)),
            "fr/train-00000-of-00001.parquet": parquet_bytes([f"Il était une fois {i}. " * 5 for i in range(30)]),
            "fr/validation-00000-of-00001.parquet": parquet_bytes(["Fin de l'histoire. " * 5] * 5),
        },
    )
    set_data_source(meta_project, "hf:owner/multi:fr")
    prepared = just(meta_project, "prepare", env=hf_env(tmp_path))
    assert prepared.returncode == 0, prepared.stderr
    assert "2 files" in prepared.stdout
    folder = data.hf_prepared_dir("owner/multi:fr", tmp_path / "cache")
    assert (folder / "train.bin").read_bytes().startswith("Il était une fois 0.".encode())
    assert b"Once upon a time" not in (folder / "train.bin").read_bytes() + (folder / "val.bin").read_bytes()


def test_hf_missing_text_column_names_the_columns(meta_project, tmp_path):
    hub_dataset(tmp_path / "hub", "owner/no-text", {"data/train.parquet": parquet_bytes(stories(5), column="story")})
    set_data_source(meta_project, "hf:owner/no-text")
    result = just(meta_project, "prepare", env=hf_env(tmp_path))
    assert result.returncode == 2
    assert "no text column 'text'" in result.stderr and "story (String)" in result.stderr
    assert "HF_TEXT_COLUMN" in result.stderr


def test_hf_not_in_the_cache_and_offline_is_a_clear_error(meta_project, tmp_path):
    set_data_source(meta_project, "hf:owner/absent")
    result = just(meta_project, "prepare", env=hf_env(tmp_path))
    assert result.returncode == 2 and "hf:owner/absent: could not download it" in result.stderr


def test_hf_prepare_resumes_after_a_failure(meta_project, tmp_path):
    hub, repo = tmp_path / "hub", "owner/resumable"
    good = {
        "data/train-00000-of-00002.parquet": parquet_bytes(stories(30)),
        "data/train-00001-of-00002.parquet": parquet_bytes(stories(30, 30)),
        "data/validation-00000-of-00001.parquet": parquet_bytes(stories(8, 60)),
    }
    hub_dataset(hub, repo, {**good, "data/train-00001-of-00002.parquet": b"not parquet"})
    set_data_source(meta_project, f"hf:{repo}")
    env = hf_env(tmp_path)
    failed = just(meta_project, "prepare", env=env)  # the second file is broken
    assert failed.returncode == 2 and "train-00001-of-00002.parquet (ComputeError" in failed.stderr
    # The first file was converted before the failure: a rerun must not read it again.
    hub_dataset(hub, repo, {**good, "data/train-00000-of-00002.parquet": b"broken after its conversion"})
    result = just(meta_project, "prepare", env=env)
    assert result.returncode == 0, result.stderr
    folder = data.hf_prepared_dir(repo, tmp_path / "cache")
    docs = [(t + data.HF_DOC_SEPARATOR.decode()).encode() for t in stories(60)]
    assert (folder / "train.bin").read_bytes() == b"".join(d for d in docs if core.split_of(d) != "holdout")
    assert not list(folder.glob("parts-*"))  # the staging parts are gone once train.bin is whole


def test_hf_split_words():
    assert data.hf_split("data/train-00000-of-00002.parquet") == "train"
    assert data.hf_split("default/validation/0000.parquet") == "val"
    assert data.hf_split("en/dev.parquet") == "val"
    assert data.hf_split("sample/test-0.parquet") == "test"
    assert data.hf_split("data/00000.parquet") == "train"
    assert data.hf_split("test_config/train/0000.parquet") == "train"  # the file's own word wins


def test_smoke_refuses_an_unprepared_source_in_one_line(meta_project, tmp_path):
    set_data_source(meta_project, "hf:someone/never-prepared")
    result = just(meta_project, "smoke", "tiny", env={"RESEARCH_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2  # bad input, as for just eval: the same path
    assert result.stderr.startswith("error: DATA_SOURCE 'hf:someone/never-prepared' is not prepared")
    assert "Traceback" not in result.stderr
