"""The referee: split, fingerprint, batch stream, metric, probes, wire, ledger. Real data and real models on CPU."""

import dataclasses
import math
import mmap
import socket
import subprocess
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch
from torch import nn

import eval as referee
from conftest import in_processes
from harness import table
from model import GPT, GPTConfig
from referee import api, core, data, wire
from referee.worker import crash_message, local_score
from repo import guard, ledger

CPU = torch.device("cpu")


# --- the public interface is pinned: changing it is meta-mode work ---


def test_public_interface_is_pinned():
    names = {
        "VOCAB_SIZE", "PRESETS", "BatchStream", "scoring_batches", "forward_logits", "batch_nats", "score",
        "causality_violation", "state_violation", "is_validation", "fingerprint", "unseen_windows",
        "memorization_violation", "check_code_size", "split_of",
    }  # fmt: skip
    assert names <= set(dir(core))
    assert {"DATA_SOURCE", "Corpus", "load_corpus", "prepare", "forbidden_paths", "compile_stdlib"} <= set(dir(data))
    assert {"main", "evaluate", "load_corpus"} <= set(dir(referee))  # evaluate, load_corpus: the measuring tools'
    assert set(api.__all__) <= set(dir(api))
    assert {"RESULTS_SCHEMA", "RESULTS_COLUMNS", "append_result", "check_ledger"} <= set(dir(ledger))
    assert ledger.RESULTS_COLUMNS == tuple(
        (
            "run_id started_at experiment config commit seed device status val_bpb train_tokens wall_s "
            "tokens_per_s mfu peak_mem_gb params_m label eval_sha data_fp description error budget_tokens threads role device_name "
            "isolation unseen_bpb holdout_bpb torch spec"
        ).split()
    )
    assert core.VOCAB_SIZE == 256


def test_golden_value_on_a_tiny_seeded_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, d_model=32, d_head=16, max_seq_len=64)).eval()
    val = torch.tensor(list(b"def f(x):\n    return x + 1\n" * 20), dtype=torch.uint8)
    assert local_score(model, val, 64, CPU) == pytest.approx(8.064763, abs=1e-4)


# --- data: split and fingerprint ---


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_split_is_deterministic_and_stable_when_files_are_added(tmp_path):
    names = [f"pkg{i // 10}/mod_{i}.py" for i in range(400)]
    split = {n: core.split_of(n) for n in names}
    assert split == {n: core.split_of(n) for n in names}
    assert split == {n: "val" if core.is_validation(n) else split[n] for n in names}  # validation as before
    for part in ("val", "holdout"):
        assert 0.02 < list(split.values()).count(part) / len(names) < 0.09  # about 5% each
    src = write_tree(tmp_path / "src", {n: f"x = {i}\n" for i, n in enumerate(names)})
    before = data.load_corpus(f"text:{src}", tmp_path / "cache")
    added = next(f"zzz/new_{i}.py" for i in range(100) if core.split_of(f"zzz/new_{i}.py") == "holdout")
    write_tree(src, {added: "y = 2\n"})
    after = data.load_corpus(f"text:{src}", tmp_path / "cache")
    # The new file lands in one split (here the holdout); the others are byte-for-byte what they were.
    assert torch.equal(before.train, after.train) and torch.equal(before.val, after.val)
    assert after.holdout.numpy().tobytes() == before.holdout.numpy().tobytes() + b"y = 2\n"


def test_site_packages_are_not_corpus(tmp_path):
    src = write_tree(tmp_path, {"a.py": "a\n", "site-packages/b.py": "b\n", "x/dist-packages/c.py": "c\n"})
    assert data.stdlib_files(src) == ["a.py"]


def test_fingerprint_changes_when_data_changes_and_only_then(tmp_path):
    src = write_tree(tmp_path / "src", {f"m{i}.py": f"v = {i}\n" for i in range(60)})
    first = data.load_corpus(f"text:{src}", tmp_path / "cache")
    assert data.load_corpus(f"text:{src}", tmp_path / "cache").fingerprint == first.fingerprint
    (src / "m3.py").write_text("v = 'changed'\n")
    assert data.load_corpus(f"text:{src}", tmp_path / "cache").fingerprint != first.fingerprint


def test_default_corpus_is_this_interpreters_stdlib():
    corpus = data.load_corpus()
    assert corpus.n_files > 500 and len(corpus.val) > 100_000
    assert 0.02 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.12
    assert 0.02 < len(corpus.holdout) / (len(corpus.train) + len(corpus.holdout)) < 0.12
    parts = (corpus.train, corpus.val, corpus.holdout)
    assert corpus.fingerprint == core.fingerprint(*(part.numpy().tobytes() for part in parts))


def test_the_batch_stream_is_seeded_budgeted_and_train_split_only():
    tokens = torch.arange(1000, dtype=torch.int64).to(torch.uint8)

    def take(seed):
        stream = core.BatchStream(tokens, 100, seed)
        batches = list(iter(lambda: stream.next_rows(0, 2, 10), None))
        return stream, batches

    stream, batches = take(0)
    assert len(batches) == 5 and stream.tokens_served == 100  # stops when the budget is spent
    window = batches[0]
    assert window.shape == (2, 11) and window.dtype == torch.uint8  # inputs and the byte after each
    assert all(torch.equal(a, b) for a, b in zip(batches, take(0)[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches, take(1)[1], strict=True))


def test_under_ddp_each_rank_takes_its_rows_of_one_global_batch():
    tokens = torch.randint(256, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    single, shared = core.BatchStream(tokens, 10**4, 3), core.BatchStream(tokens, 10**4, 3, world_size=2)
    for _ in range(4):
        whole = single.next_rows(0, 4, 16)
        second, first = shared.next_rows(1, 4, 16), shared.next_rows(0, 4, 16)  # ranks ask in any order
        assert torch.equal(torch.cat([first, second]), whole)
    assert shared.tokens_served == single.tokens_served == 4 * 4 * 16  # counted once for all ranks
    with pytest.raises(ValueError, match="batch_size=5 does not split over 2 processes"):
        shared.next_rows(0, 5, 16)


# --- the metric ---


class FixedDistribution(nn.Module):
    """Predicts the same distribution at every position, whatever the input."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.register_buffer("log_probs", probs.log())

    def forward(self, idx):
        return self.log_probs.expand(*idx.shape, 256).clone()


class PreviousByteBigram(nn.Module):
    """p(next = c | current = c) = 1/2, the rest spread evenly: depends on the input, causally."""

    def forward(self, idx):
        logits = torch.full((*idx.shape, 256), math.log(0.5 / 255))
        logits.scatter_(-1, idx[..., None], math.log(0.5))
        return logits


def test_a_uniform_model_scores_exactly_8_bits_per_byte():
    val = torch.randint(256, (3 * 64 + 17,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = FixedDistribution(torch.full((256,), 1 / 256))
    assert local_score(model, val, 64, CPU) == pytest.approx(8.0, abs=1e-6)


@pytest.mark.parametrize("n_val", [2, 64, 65, 200, 1000])  # shorter than, equal to and past the window
def test_fixed_probabilities_score_what_hand_arithmetic_says(n_val):
    gen = torch.Generator().manual_seed(n_val)
    val = torch.randint(256, (n_val,), dtype=torch.uint8, generator=gen)
    probs = torch.rand(256, generator=gen, dtype=torch.float64) + 0.1
    probs /= probs.sum()
    expected = sum(-math.log2(probs[b].item()) for b in val[1:].tolist()) / (n_val - 1)
    got = local_score(FixedDistribution(probs.float()), val, 64, CPU)
    assert got == pytest.approx(expected, rel=1e-5)


def test_an_input_dependent_model_scores_what_hand_arithmetic_says():
    val = torch.tensor(list(b"aaab" * 50 + b"xyz"), dtype=torch.uint8)
    pairs = list(zip(val[:-1].tolist(), val[1:].tolist(), strict=True))
    expected = sum(1.0 if a == b else -math.log2(0.5 / 255) for a, b in pairs) / len(pairs)
    assert local_score(PreviousByteBigram(), val, 32, CPU) == pytest.approx(expected, rel=1e-5)


def test_every_validation_byte_is_a_target_once_and_a_batch_holds_windows_far_apart():
    n_val, seq_len = 100_003, 256
    batches = core.scoring_batches(n_val, seq_len)
    targets = sorted(t for b in batches for w in b for t in range(w.start + 1, w.start + 1 + w.length))
    assert targets == list(range(1, n_val))
    assert all(len(b) <= core.EVAL_BATCH_SIZE for b in batches)
    full = [b for b in batches if b[0].length == seq_len]
    gaps = [abs(u.start - w.start) for b in full for u, w in zip(b, b[1:], strict=False)]
    assert min(gaps) >= seq_len * (len(full) - 1)  # no row's next bytes are another row's inputs


class PeeksAhead(nn.Module):
    """Predicts position t from the byte at t+1: a leak the probe must catch."""

    def forward(self, idx):
        return torch.nn.functional.one_hot(idx.roll(-1, dims=1), 256).float() * 10


class PeeksAtTheNextRow(nn.Module):
    """Predicts a row's last target from the next row's first byte: what windows side by side would leak."""

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 256)
        logits[:, -1] = torch.nn.functional.one_hot(idx.roll(-1, dims=0)[:, 0], 256).float() * 30
        return logits


class LearnsWhileScored(nn.Module):
    """Moves its prediction toward every batch it is shown: state that a fresh worker does not have."""

    def __init__(self):
        super().__init__()
        self.register_buffer("counts", torch.ones(256))

    def forward(self, idx):
        logits = self.counts.log().expand(*idx.shape, 256).clone()
        self.counts += torch.bincount(idx.reshape(-1), minlength=256)
        return logits


def test_the_causality_probe_refuses_a_model_that_peeks_ahead():
    val = data.load_corpus().val[:100_000]
    with pytest.raises(ValueError, match="not causal, refused: changing bytes after position"):
        local_score(PeeksAhead(), val, 256, CPU)
    assert local_score(PreviousByteBigram(), val, 256, CPU) > 0
    assert local_score(GPT(GPTConfig(n_layer=1, d_model=32, d_head=16)), val, 256, CPU) > 0


def test_a_batch_of_windows_far_apart_gives_no_gain_to_a_model_that_reads_the_next_row():
    val = data.load_corpus().val[:100_000]
    uniform = local_score(FixedDistribution(torch.full((256,), 1 / 256)), val, 256, CPU)
    assert local_score(PeeksAtTheNextRow(), val, 256, CPU) >= uniform  # its "peek" is a wrong guess


def test_a_model_that_learns_while_it_is_scored_is_refused_by_a_probe():
    val = data.load_corpus().val[:100_000]
    # Its logits drift with every batch, so the causality probe, sent after the pass, already sees them move.
    with pytest.raises(ValueError, match="not causal|state probe"):
        local_score(LearnsWhileScored(), val, 256, CPU, fresh_model=LearnsWhileScored())


def test_the_state_probe_refuses_logits_that_a_fresh_worker_does_not_repeat():
    val = data.load_corpus().val[:100_000]
    first, fresh = (FixedDistribution(torch.softmax(torch.randn(256), 0)) for _ in range(2))
    with pytest.raises(ValueError, match="refused by the state probe: batch \\d+ scored again in a fresh worker"):
        local_score(first, val, 256, CPU, fresh_model=fresh)


def test_the_share_of_the_validation_split_that_smoke_scores_stands_for_the_split():
    """`just smoke` scores a 30-step model on SMOKE_WINDOWS windows of the validation split, spread over it, so that
    its val_bpb_slice is the split's within 1% (here 4.716 against 4.729); the split's first 64 windows alone are
    easier text (4.462)."""
    import train

    corpus, cfg = data.load_corpus(), train.CONFIGS["tiny"]
    stream = core.BatchStream(corpus.train, referee.SMOKE_STEPS * cfg.batch_size * cfg.seq_len, seed=0)
    torch.manual_seed(0)
    model = train.build_model(cfg)
    optimizer = train.make_optimizer(model, cfg, CPU)
    for rows in iter(lambda: stream.next_rows(0, cfg.batch_size, cfg.seq_len), None):
        logits = model(rows[:, :-1].long())
        nn.functional.cross_entropy(logits.view(-1, 256), rows[:, 1:].reshape(-1).long()).backward()
        optimizer.step()
        optimizer.zero_grad()
    share = referee.smoke_validation(corpus.val, 256)
    assert len(share) == referee.SMOKE_WINDOWS * 256 + 1
    whole, first = local_score(model, corpus.val, 256, CPU), local_score(model, corpus.val[: len(share)], 256, CPU)
    assert local_score(model, share, 256, CPU) == pytest.approx(whole, rel=0.01) != first


def test_logits_of_the_wrong_shape_are_refused():
    class TooFewClasses(nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, 100)

    with pytest.raises(ValueError, match="logits have shape"):
        local_score(TooFewClasses(), torch.zeros(600, dtype=torch.uint8), 256, CPU)


# --- the wire: what a worker sends the referee is checked, never unpickled ---


def pipe() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def test_a_tensor_crosses_the_wire_bit_for_bit():
    ours, theirs = pipe()
    for t in (torch.randn(3, 5, 256), torch.randn(2, 4, 256).bfloat16(), torch.randint(256, (7, 9), dtype=torch.uint8)):
        wire.send(theirs, {"op": "logits"}, t)
        header, got = wire.recv(ours, t.numel() * t.element_size())
        assert header["op"] == "logits" and got.dtype == t.dtype and torch.equal(got, t)


def test_logits_cross_in_a_shared_buffer_and_only_where_one_was_agreed(tmp_path):
    ours, theirs = pipe()
    path = tmp_path / "logits"
    path.write_bytes(bytes(4096))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as shared:
        logits = torch.randn(2, 3, 4)
        wire.send(theirs, {"op": "logits"}, logits, buffer=shared)
        header, got = wire.recv(ours, 4096, buffer=shared)
        assert header["in_buffer"] and torch.equal(got, logits)
        shared[:4] = bytes(4)  # the sender writing again changes nothing the receiver already has
        assert torch.equal(got, logits)
        wire.send(theirs, {"op": "logits"}, logits, buffer=shared)
        with pytest.raises(wire.WireError, match="where none was agreed"):
            wire.recv(ours, 4096)


@pytest.mark.parametrize(
    "header, why",
    [
        (b"\x80\x04pickled", "not a JSON header"),
        (b'{"no": "op"}', "without an op"),
        (b'{"op": "logits", "dtype": "float64", "shape": [1], "nbytes": 8}', "not allowed"),
        (b'{"op": "logits", "dtype": "float32", "shape": [2, 2], "nbytes": 12}', "12 bytes for shape"),
        (b'{"op": "logits", "dtype": "float32", "shape": [1000, 1000], "nbytes": 4000000}', "at most 4096"),
    ],
)
def test_a_message_the_protocol_does_not_allow_is_refused(header, why):
    ours, theirs = pipe()
    theirs.send_bytes(header)
    with pytest.raises(wire.WireError, match=why):
        wire.recv(ours, 4096)


# --- the ledger ---


def row(i: int = 0, **fields) -> dict:
    return dict(run_id=f"r{i}", status="ok", val_bpb=2.0 + i / 1000, seed=i, device="cpu", experiment="main") | fields


def test_rows_round_trip_through_the_declared_schema(tmp_path):
    path = tmp_path / "results.tsv"
    ledger.append_result(row(description="tabs\tand\nnewlines are flattened", val_bpb=1.0 / 3), path)
    ledger.append_result(row(1, status="crash", val_bpb=None, error="ValueError: x"), path)
    df = table.read_results(path)
    assert df.columns == list(ledger.RESULTS_COLUMNS) and df.height == 2
    assert df["val_bpb"][0] == 1.0 / 3  # full precision: determinism is judged on this column
    assert df["description"][0] == "tabs and newlines are flattened"
    assert df["val_bpb"][1] is None and df["error"][1] == "ValueError: x"
    assert path.read_text().count("run_id") == 1  # one header


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "results.tsv"
    with pytest.raises(ValueError, match="status"):
        ledger.append_result(row(status="great"), path)
    with pytest.raises(ValueError, match="unknown ledger columns"):
        ledger.append_result(row(notes="x"), path)
    assert not path.exists()


@pytest.mark.parametrize(
    "line, why",
    [
        ("garbage", f"1 fields where the header has {len(ledger.RESULTS_COLUMNS)}"),
        (
            "r9\tnot-a-time\tmain\tcpu\tabc\tNOT_AN_INT" + "\t" * (len(ledger.RESULTS_COLUMNS) - 6),
            "seed='NOT_AN_INT' is not a whole number",
        ),
        (
            "\t".join(["r9", "", "main", "cpu", "c", "zero", "cpu", "ok"] + [""] * (len(ledger.RESULTS_COLUMNS) - 8)),
            "seed='zero' is not a whole number",
        ),
        (
            "\t".join(["r9", "", "main", "cpu", "c", "0", "cpu", "great"] + [""] * (len(ledger.RESULTS_COLUMNS) - 8)),
            "status='great' is not one of",
        ),
        ("", "an empty line"),
    ],
)
def test_a_line_that_is_not_a_row_is_an_error_naming_the_line_and_the_repair(tmp_path, line, why):
    path = tmp_path / "results.tsv"
    ledger.append_result(row(), path)
    with path.open("a") as f:
        f.write(line + "\n")
    ledger.append_result(row(2), path)  # a run that was already going still records its row
    with pytest.raises(ValueError, match=f"results.tsv:3: {why}") as refused:
        table.read_results(path)
    assert "Repair: delete that line" in str(refused.value)
    repaired = ledger.without_bad_lines(path.read_text())
    assert repaired.count("\n") == 3 and ledger.ledger_problems(repaired) == []


def test_older_ledgers_with_fewer_columns_still_read(tmp_path):
    path = tmp_path / "results.tsv"
    cols = ledger.RESULTS_COLUMNS[:-2]
    cells = {"run_id": "r1", "status": "ok"}
    path.write_text("\t".join(cols) + "\n" + "\t".join(cells.get(c, "") for c in cols) + "\n")
    df = table.read_results(path)
    assert df.columns == list(ledger.RESULTS_COLUMNS) and df["error"][0] is None


def test_a_crash_of_strict_determinism_names_the_op_and_the_fix():
    # torch's own wording (CUDA only: on CPU every op has a deterministic kernel; tests/test_gpu.py runs the real one)
    torch_says = (
        "histc_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation, ..."
    )
    message = crash_message(RuntimeError(torch_says))
    assert message.startswith("non-deterministic op: histc_cuda has no deterministic kernel")
    assert "Replace it in train.py/model.py" in message and "turn off" not in message
    assert crash_message(ValueError("bad\nvalue")) == "ValueError: bad value"


def test_an_older_ledger_is_migrated_on_append_and_keeps_every_row(tmp_path):
    path = tmp_path / "results.tsv"
    cols = ledger.RESULTS_COLUMNS[: ledger.RESULTS_COLUMNS.index("error") + 1]  # the format before budget_tokens
    old_rows = [
        "\t".join(
            dict(run_id=f"old{i}", seed=str(i), status="ok", val_bpb="2.5", train_tokens="6995968").get(c, "")
            for c in cols
        )
        for i in range(2)
    ]
    old = "\t".join(cols) + "\n" + "\n".join(old_rows) + "\n"
    path.write_text(old)
    assert table.read_results(path)["budget_tokens"].to_list() == [None, None]  # read as it is
    ledger.append_result(row(7, budget_tokens=7_000_000, train_tokens=6_979_584), path)
    text = path.read_text()
    assert text.startswith(ledger.migrated(old)) and text.split("\n", 1)[0] == "\t".join(ledger.RESULTS_COLUMNS)
    df = table.read_results(path)
    assert df["run_id"].to_list() == ["old0", "old1", "r7"] and df["budget_tokens"].to_list() == [None, None, 7_000_000]
    assert df["train_tokens"].to_list() == [6995968, 6995968, 6979584]
    assert guard.ledger_grows_at_bottom(old, text)  # the guard accepts the migration
    assert not guard.ledger_grows_at_bottom(old, text.replace("old1", "old9"))


def append_many(path: str, worker: int, n: int) -> None:
    for i in range(n):
        ledger.append_result(row(worker * 1000 + i, description="x" * 2000), Path(path))


def test_concurrent_appends_lose_no_row_and_corrupt_none(tmp_path):
    path = tmp_path / "results.tsv"
    in_processes(append_many, [(str(path), w, 40) for w in range(6)])
    df = table.read_results(path)
    assert df.height == 240 and df["run_id"].n_unique() == 240
    assert (df["description"].str.len_chars() == 2000).all()


def test_eval_sha_is_the_git_blob_hash_of_the_core():
    expected = subprocess.run(["git", "hash-object", str(api.CORE)], capture_output=True, text=True).stdout.strip()
    assert api.core_sha() == expected and api.CORE.name == "core.py"


def test_the_door_names_torch_and_the_device_class_as_torch_does_without_importing_it():
    assert api.torch_version() == torch.__version__
    assert api.device_class() == (
        "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    )
    assert api.device_class("cpu") == "cpu"
    assert api.presets() == {name: dataclasses.asdict(preset) for name, preset in core.PRESETS.items()}


def test_presets_are_sane():
    for name, preset in core.PRESETS.items():
        assert preset.train_tokens > 0 and preset.wall_cap_s > 0 and preset.eval_seq_len > 0, name
