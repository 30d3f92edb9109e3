"""The metric's core: everything that decides val_bpb, read top to bottom. FROZEN (meta-mode only).

Every row's `eval_sha` is the git blob hash of this file and of nothing else, so what shapes the number
lives here: the split, the batches served and how a batch becomes inputs and targets, the seed of the
weights, determinism, scoring and the probes. Arguments, processes, signals, logging and rows (eval.py,
referee/worker.py, ...) can change without splitting comparable groups; a change here is a new referee and
needs new baselines. The data is named by `data_fp`; torch, the processor and the threads by their columns.

The split: a file is in the validation split when sha256(its relative path) mod VAL_MODULUS == 0
(about 5% of files), so the split never shifts when files are added; of the others, a file is in the
sealed holdout split when sha256(HOLDOUT_SALT + its path) mod VAL_MODULUS == 0 (about 5% more), and
the rest is training. A single text file keeps its last 1/VAL_MODULUS for validation and the
1/VAL_MODULUS before it for the holdout. `data_fp` hashes the prepared bytes of all three splits.
The holdout is never served and never scored in exploration: only the runs of `just confirm` are
scored on it too, so that a claim is judged on text no choice among experiments has looked at.

The budget: the referee's BatchStream serves seeded random windows of the training split, counts
them, and stops when the preset's (or --budget-tokens) training tokens are spent. The experiment,
in a worker process, sees nothing else of the data.

The metric, val_bpb (validation bits per byte; lower is better):
    Let v[0..N-1] be the validation bytes and T the preset's `eval_seq_len`. For every window start
    s = 0, T, 2T, ... < N-1 the model sees the inputs v[s : min(s+T, N-1)] and predicts the next
    byte at every position; the targets v[s+1 : min(s+T, N-1)+1] stay with the referee. Every byte
    v[1..N-1] is predicted exactly once.
        val_bpb = sum over all targets of -log2 softmax(logits)[target]  /  (N - 1)
    The scoring worker returns logits only; the referee casts them to float32 and takes the log-softmax
    in its own process. A uniform model scores exactly 8. Windows go to the worker one batch at a time
    (its logits come back before the next batch leaves), and a batch holds windows that are far apart
    in the text, so no row holds the next row's bytes.

The probes, on batches chosen with secret randomness after the scoring pass (the model cannot know
which): causality (a copy of a batch whose rows are changed after a random cut must give the same
logits up to the cut), state (the same batches scored again in a second fresh worker must give
identical logits, so a model that learns while it is scored, or carries state between batches, is
refused) and memorization: UNSEEN_WINDOWS windows of the training split that the run was never served
(drawn with secret randomness from all of it, minus every window served), scored like the validation
split. Text the model never saw, like the validation text, from the same corpus: an honest model
predicts both about as well (the unseen windows come from files it trained on, so it predicts them a
little better), and one that holds the validation text (read, carried in its code or weights) predicts
the validation split markedly better. It is refused when val_bpb < (1 - MEMORIZATION_MARGIN) times
the unseen windows' bits per byte, a margin calibrated on honest runs (bench/README.md). The unseen
windows' figure is random (secret windows); val_bpb is not.
"""

import hashlib
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, UInt8
from torch import Tensor

# --- Constants (fixed: changing any of them changes eval_sha) ---

VOCAB_SIZE = 256
VAL_MODULUS = 20  # a file is validation when sha256(relpath) % VAL_MODULUS == 0: about 5%
HOLDOUT_SALT = b"holdout:"  # of the rest, holdout when sha256(HOLDOUT_SALT + relpath) % VAL_MODULUS == 0
EVAL_BATCH_SIZE = 32  # windows per scoring batch
PROBE_ATOL = 1e-4  # float32 logits up to a causality probe's cut may move by at most this much
STATE_PROBE_BATCHES = 2  # batches scored again in a fresh worker, which must give identical logits
UNSEEN_WINDOWS = 1024  # windows of training text the run was never served, scored beside the validation split
MEMORIZATION_MARGIN = 0.05  # refused when val_bpb < (1 - this) * the unseen windows' bits per byte
MAX_CODE_BYTES = 64 * 1024  # the experiment's .py files, together (the default model and loop are ~15 KB)


@dataclass(frozen=True)
class Preset:
    train_tokens: int
    """training tokens the batch stream serves, then it stops"""
    wall_cap_s: float
    """training wall-clock seconds after which the run ends as `timeout` (scoring has the same cap)"""
    eval_seq_len: int
    """context length of the scoring windows"""


PRESETS = {
    # 2-core laptop or CI box: about 7 minutes of training at ~17k tokens/s, scoring included < 10 min.
    "cpu": Preset(train_tokens=7_000_000, wall_cap_s=1200.0, eval_seq_len=256),
    "mps": Preset(train_tokens=50_000_000, wall_cap_s=2400.0, eval_seq_len=256),
    # One H100-class GPU: a 5-40 minute research run.
    "cuda": Preset(train_tokens=600_000_000, wall_cap_s=2400.0, eval_seq_len=1024),
}


# --- The experiment's code ---


def check_code_size(files: dict[str, int]) -> None:
    """Refuse code past MAX_CODE_BYTES (file name -> bytes): code is for a model and its loop, and a cap on it
    caps the text it can carry (the validation split is 1.95 MB, 299 KB under lzma: 64 KB hold a fifth)."""
    size = sum(files.values())
    if size > MAX_CODE_BYTES:
        largest = max(files, key=files.get)
        raise ValueError(
            f"the experiment's code is {size:,} bytes ({largest} {files[largest]:,}), over the cap of "
            f"{MAX_CODE_BYTES:,} bytes (referee/core.py): keep the model and loop small, and data out of the code"
        )


# --- The split ---


def is_validation(name: str | bytes) -> bool:
    """The split rule for documents: sha256 of the file's relative path (or of the document's
    bytes, for a dataset without a validation split) mod VAL_MODULUS == 0."""
    data = name.encode() if isinstance(name, str) else name
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % VAL_MODULUS == 0


def split_of(name: str | bytes) -> str:
    """`val`, `holdout` or `train`: is_validation first, then the holdout's own hash rule on the rest."""
    if is_validation(name):
        return "val"
    data = name.encode() if isinstance(name, str) else name
    held = int.from_bytes(hashlib.sha256(HOLDOUT_SALT + data).digest()[:8], "big") % VAL_MODULUS == 0
    return "holdout" if held else "train"


def split_one_file(data: bytes) -> dict[str, bytes]:
    """One text file: the validation split is its last 1/VAL_MODULUS, the holdout the 1/VAL_MODULUS before
    it, each from the line that starts there."""

    def line_start(at: int) -> int:
        newline = data.find(b"\n", at)
        return newline + 1 if newline != -1 else at

    val_at = line_start(len(data) - len(data) // VAL_MODULUS)
    holdout_at = min(line_start(len(data) - 2 * (len(data) // VAL_MODULUS)), val_at)
    return dict(train=data[:holdout_at], holdout=data[holdout_at:val_at], val=data[val_at:])


def fingerprint(train: bytes, val: bytes, holdout: bytes) -> str:
    h = hashlib.sha256()
    for name, part in ((b"train", train), (b"val", val), (b"holdout", holdout)):
        h.update(name + len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


# --- Training: the budgeted stream (referee side) and the worker's settings ---


class BatchStream:
    """Seeded random windows of the training split, drawn in the referee's process until the budget is
    spent. Under DDP every rank takes its own rows of one global batch per step, so the data a run sees
    depends on the seed alone, not on the process count."""

    def __init__(self, tokens: UInt8[Tensor, " n_train"], budget_tokens: int, seed: int, world_size: int = 1):
        self.tokens = tokens
        self.budget_tokens = budget_tokens
        self.world_size = world_size
        self.tokens_served = 0  # by all ranks together: what the row's train_tokens reports
        self.shape: tuple[int, int] | None = None  # (batch_size, seq_len) of the first request
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: list[Tensor] = []  # global batches not yet taken by every rank
        self.first_kept = 0  # the step of drawn[0]
        self.taken = [0] * world_size  # steps each rank has taken
        self.served = torch.zeros(len(tokens), dtype=torch.bool)  # the bytes of every window served

    def check_shape(self, batch_size: int, seq_len: int) -> None:
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} does not split over {self.world_size} processes: "
                f"use a multiple of {self.world_size} (--batch-size) or another --nproc"
            )
        if seq_len + 1 > len(self.tokens):
            raise ValueError(f"seq_len={seq_len} is longer than the training split ({len(self.tokens)} bytes)")
        if self.world_size > 1 and self.shape not in (None, (batch_size, seq_len)):
            raise ValueError(f"under DDP every step has one shape: {self.shape}, then ({batch_size}, {seq_len})")

    def next_rows(self, rank: int, batch_size: int, seq_len: int) -> UInt8[Tensor, "rows seq_plus_1"] | None:
        """Rank `rank`'s rows (inputs and the byte after each) of its next step; None once the budget is spent."""
        self.check_shape(batch_size, seq_len)
        self.shape = self.shape or (batch_size, seq_len)
        step = self.taken[rank]
        if step == self.first_kept + len(self.drawn):  # the first rank to ask for this step draws it
            if self.tokens_served + batch_size * seq_len > self.budget_tokens:
                return None
            starts = torch.randint(len(self.tokens) - seq_len, (batch_size, 1), generator=self.generator)
            positions = starts + torch.arange(seq_len + 1)
            self.drawn.append(self.tokens[positions])
            self.served[positions] = True
            self.tokens_served += batch_size * seq_len
        window = self.drawn[step - self.first_kept]
        self.taken[rank] += 1
        while self.drawn and min(self.taken) > self.first_kept:  # every rank has taken it
            self.drawn.pop(0)
            self.first_kept += 1
        rows = batch_size // self.world_size
        return window[rank * rows : (rank + 1) * rows]


def inputs_and_targets(
    rows: UInt8[Tensor, "rows seq_plus_1"], device: torch.device
) -> tuple[Int[Tensor, "rows seq"], Int[Tensor, "rows seq"]]:
    """What train() is given of a batch the stream served, in the training worker: each row's first seq bytes
    and the byte after each, as int64 on the device (from pinned memory on CUDA: no sync per step)."""
    if device.type == "cuda":
        rows = rows.pin_memory()
    window = rows.to(device, non_blocking=True).long()
    return window[:, :-1], window[:, 1:]


def seed_weights(seed: int) -> None:
    """The seed of the weights, set in the training worker right before train(), after everything else that
    draws random numbers there (the peak-FLOPs matmul), so that the same seed gives the same weights."""
    torch.manual_seed(seed)


def strict_determinism() -> None:
    """In every worker, before the experiment's code loads: an op with no deterministic kernel ends the run
    (a crash row naming it), never a silently different number for the same seed. (torch imports its compiler
    to set this, a second or more: a worker pays it while it starts, not while it trains or scores.)"""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before the first CUDA call
    torch.use_deterministic_algorithms(True)


# --- Scoring ---


@dataclass(frozen=True)
class Window:
    start: int
    length: int  # inputs; the targets are the `length` bytes after `start`


def scoring_batches(n_val: int, seq_len: int) -> list[list[Window]]:
    """The validation windows in the batches they are scored in: window i of the full windows goes to
    batch i mod n_batches, so the rows of one batch are far apart in the text; the shorter tail window,
    if any, is a batch of its own, last."""
    if n_val < 2:
        raise ValueError(f"validation split has {n_val} bytes; need at least 2")
    starts = range(0, n_val - 1, seq_len)
    full = [Window(s, seq_len) for s in starts if s + seq_len <= n_val - 1]
    n_batches = math.ceil(len(full) / EVAL_BATCH_SIZE)
    batches = [full[b::n_batches] for b in range(n_batches)]
    if len(full) < len(starts):
        batches.append([Window(starts[-1], n_val - 1 - starts[-1])])
    return batches


def batch_inputs(val: UInt8[Tensor, " n_val"], batch: list[Window]) -> UInt8[Tensor, "batch seq"]:
    return torch.stack([val[w.start : w.start + w.length] for w in batch])


def batch_targets(val: UInt8[Tensor, " n_val"], batch: list[Window]) -> Int[Tensor, "batch seq"]:
    return torch.stack([val[w.start + 1 : w.start + 1 + w.length] for w in batch]).long()


@torch.no_grad()
def forward_logits(model, inputs: UInt8[Tensor, "batch seq"], device: torch.device) -> Tensor:
    """In the scoring worker: the model's logits for one batch, in eval mode, bf16 autocast on CUDA."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(inputs.to(device).long())


def batch_nats(logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"]) -> float:
    """In the referee: the summed negative log-likelihood of one batch's targets, in nats, from float32."""
    return F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), targets.reshape(-1), reduction="sum").item()


def val_bpb(total_nats: float, n_val: int) -> float:
    value = total_nats / math.log(2) / (n_val - 1)
    if not math.isfinite(value):
        raise FloatingPointError(f"val_bpb is {value}")
    return value


# --- The probes ---


def probe_choice(batches: list[list[Window]]) -> tuple[int, list[int]]:
    """The causality probe's batch and the state probe's batches, drawn from the full batches with secret
    randomness: nothing the experiment can compute tells it which batches are probed."""
    full = [i for i, b in enumerate(batches) if b[0].length == batches[0][0].length] or [0]
    state = [full.pop(secrets.randbelow(len(full))) for _ in range(min(STATE_PROBE_BATCHES, len(full)))]
    return secrets.choice(state), state


def perturbed(inputs: UInt8[Tensor, "batch seq"]) -> tuple[UInt8[Tensor, "batch seq"], list[int]]:
    """A copy of a batch with every row's bytes after a random cut replaced by random bytes; the cuts."""
    out, cuts = inputs.clone(), []
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    for row in range(out.size(0)):
        cut = secrets.randbelow(max(out.size(1) - 1, 1))
        out[row, cut + 1 :] = torch.randint(VOCAB_SIZE, (out.size(1) - cut - 1,), generator=gen, dtype=torch.uint8)
        cuts.append(cut)
    return out, cuts


def causality_violation(reference: Tensor, probed: Tensor, cuts: list[int]) -> str | None:
    """None if each row's logits up to its cut did not move; otherwise what the model peeked at."""
    for row, cut in enumerate(cuts):
        diff = (probed[row, : cut + 1].float() - reference[row, : cut + 1].float()).abs().max().item()
        if not diff <= PROBE_ATOL:
            return f"changing bytes after position {cut} changed logits at positions <= {cut} by {diff:.3g}"
    return None


def state_violation(first: Tensor, again: Tensor, batch: int) -> str | None:
    """None if a fresh worker gave the identical logits for a batch; otherwise by how much they differ."""
    if torch.equal(first, again):
        return None
    diff = (first.float() - again.float()).abs().max().item()
    return (
        f"batch {batch} scored again in a fresh worker gave different logits (max difference {diff:.3g}): "
        "the model's output depends on what it saw before (it learns or keeps state while scored) or on chance"
    )


# --- One model scored: the pass over the validation split, then the probes ---


class Scorer(Protocol):
    """A scoring worker, as the referee sees it: it is sent one batch of inputs and returns its logits."""

    def send_inputs(self, inputs: UInt8[Tensor, "batch seq"]) -> None: ...

    def receive_logits(self) -> Tensor: ...


def logits_of(scorer: Scorer, inputs: UInt8[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
    logits = scorer.receive_logits()
    if logits.shape != (*inputs.shape, VOCAB_SIZE) or not logits.is_floating_point():
        raise ValueError(f"logits have shape {tuple(logits.shape)} ({logits.dtype}), expected {(*inputs.shape, 256)}")
    return logits


def unseen_windows(
    tokens: UInt8[Tensor, " n_train"], served: Tensor | None, seq_len: int, n: int
) -> UInt8[Tensor, "windows seq_plus_1"]:
    """`n` windows of the training split (inputs and the byte after), drawn with secret randomness among those
    that share no byte with any window served (`served`: a mask of the split; None: unknown, as in `just
    verify`); where too few are left (a budget of many epochs), the rest from anywhere, which only makes an
    honest model look better on them."""
    length = min(seq_len + 1, len(tokens))
    starts, rng = [], secrets.SystemRandom()
    for _ in range(50 * n):
        start = rng.randrange(len(tokens) - length + 1)
        if served is None or not served[start : start + length].any():
            starts.append(start)
            if len(starts) == n:
                break
    starts += [rng.randrange(len(tokens) - length + 1) for _ in range(n - len(starts))]
    return torch.stack([tokens[s : s + length] for s in starts])


def memorization_violation(split: str, bpb: float, unseen_bpb: float) -> str | None:
    """None if the model predicts `split` (the validation or holdout text) no markedly better than unseen
    training text."""
    if bpb >= (1 - MEMORIZATION_MARGIN) * unseen_bpb:
        return None
    return (
        f"{bpb:.4f} bits per byte on the {split} text, {unseen_bpb:.4f} on training text it was never served: "
        f"{1 - bpb / unseen_bpb:.0%} better on the {split} text, more than the {MEMORIZATION_MARGIN:.0%} honest "
        f"runs allow; the model holds {split} text (read, or carried in its code or weights)"
    )


@dataclass(frozen=True)
class Scores:
    val_bpb: float
    unseen_bpb: float | None = None  # bits per byte on the unseen training windows (None: not probed)
    holdout_bpb: float | None = None  # bits per byte on the sealed holdout split (None: not scored)


def split_nats(scorer: Scorer, text: UInt8[Tensor, " n"], seq_len: int, keep: list[int] = ()) -> tuple[float, dict]:
    """The summed nats of the model behind `scorer` on every byte of `text` but the first, batch by batch (the
    next batch leaves once these logits are back); the logits of the batches in `keep`, by index."""
    total_nats, kept = 0.0, {}
    for i, batch in enumerate(scoring_batches(len(text), seq_len)):
        inputs = batch_inputs(text, batch)
        scorer.send_inputs(inputs)
        logits = logits_of(scorer, inputs)
        total_nats += batch_nats(logits, batch_targets(text, batch))
        if i in keep:
            kept[i] = logits
    return total_nats, kept


def score(
    first: Scorer,
    fresh: Callable[[], Scorer],
    val: UInt8[Tensor, " n_val"],
    seq_len: int,
    train: UInt8[Tensor, " n_train"] | None = None,
    served: Tensor | None = None,
    holdout: UInt8[Tensor, " n_holdout"] | None = None,
) -> Scores:
    """val_bpb of the model behind `first`; a ValueError naming the probe that refused it. `fresh()` gives a
    second worker that has seen nothing, for the state probe; `train` and `served`, the training split and the
    mask of what the run was served, for the memorization probe (a scored run always has it; a benchmark's
    model in its own process may go without); `holdout`, the sealed split, scored too (confirmation runs)."""
    batches = scoring_batches(len(val), seq_len)
    causal, state = probe_choice(batches)
    total_nats, kept = split_nats(first, val, seq_len, keep=state)
    probe, cuts = perturbed(batch_inputs(val, batches[causal]))
    first.send_inputs(probe)
    problem = causality_violation(kept[causal], logits_of(first, probe), cuts)
    if problem is not None:
        raise ValueError(f"model is not causal, refused: {problem}")
    again, order = fresh(), list(kept)
    secrets.SystemRandom().shuffle(order)
    for i in order:
        inputs = batch_inputs(val, batches[i])
        again.send_inputs(inputs)
        problem = state_violation(kept[i], logits_of(again, inputs), i)
        if problem is not None:
            raise ValueError(f"model refused by the state probe: {problem}")
    scores = Scores(val_bpb(total_nats, len(val)))
    if holdout is not None:
        scores = replace(scores, holdout_bpb=val_bpb(split_nats(first, holdout, seq_len)[0], len(holdout)))
    if train is None:
        return scores
    # as many windows as a quarter of the validation split's, at most UNSEEN_WINDOWS: a bounded cost
    n_windows = sum(len(b) for b in batches)
    unseen = unseen_windows(train, served, seq_len, min(UNSEEN_WINDOWS, max(EVAL_BATCH_SIZE, n_windows // 4)))
    scores = replace(scores, unseen_bpb=windows_bpb(first, unseen))
    for split, bpb in (("validation", scores.val_bpb), ("holdout", scores.holdout_bpb)):
        problem = memorization_violation(split, bpb, scores.unseen_bpb) if bpb is not None else None
        if problem is not None:
            raise MemorizationRefused(f"model refused by the memorization probe: {problem}", scores)
    return scores


def windows_bpb(scorer: Scorer, windows: UInt8[Tensor, "windows seq_plus_1"]) -> float:
    """Bits per byte of the model behind `scorer` on windows (inputs and the byte after each)."""
    nats = 0.0
    for rows in windows.split(EVAL_BATCH_SIZE):
        inputs = rows[:, :-1].contiguous()
        scorer.send_inputs(inputs)
        nats += batch_nats(logits_of(scorer, inputs), rows[:, 1:].long())
    return nats / math.log(2) / (windows.size(0) * (windows.size(1) - 1))


class MemorizationRefused(ValueError):
    """The memorization probe's refusal, with both figures for the row."""

    def __init__(self, message: str, scores: Scores):
        super().__init__(message)
        self.scores = scores
