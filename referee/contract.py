"""The contract between the referee and an experiment, written once. FROZEN (meta-mode only).

An experiment is the top-level `.py` files of its checkout (train.py, model.py and any helper beside them).
The referee copies them into runs/{run_id}/ and loads that copy, by file path, in worker processes only:
the process that computes the metric never imports them, and they never import the referee (eval.py).
`train.py` defines, and the worker checks when it loads it (`check_experiment`):

    Config        a dataclass of the run's settings; every field is a flag of `just eval` (`--lr 3e-3`)
    CONFIGS       dict[str, Config]: what `just eval NAME` can pick; the default is the device class's
    build_model   build_model(cfg: Config) -> Model, untrained: the scoring worker loads the checkpoint into it
    train         train(cfg: Config, data: TrainData, device: torch.device) -> Model

A Model is an nn.Module that maps idx (batch, seq) int64 to logits (batch, seq, 256) and has
flops_per_token(seq_len), for MFU. What train() returns is saved as the run's checkpoint (its state_dict)
and scored in a fresh worker from that checkpoint alone, so everything the model needs must be in it.
"""

import dataclasses
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor, nn


@runtime_checkable
class TrainData(Protocol):
    """What train() receives: the only way it gets training data."""

    budget_tokens: int
    """training tokens the referee serves in this run (its token budget)"""
    world_size: int
    """processes training this run (`just eval --nproc N`); the referee has started their process group"""
    rank: int
    """this process's rank"""
    peak_flops: float
    """this device's peak FLOP/s, for MFU in the step lines (all ranks: world_size times this)"""

    def batches(
        self, batch_size: int, seq_len: int
    ) -> Iterator[tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]]:
        """(inputs, targets) on the device, targets shifted by one byte, until the budget is spent. batch_size
        is the global batch: each rank gets batch_size / world_size rows of it. The referee counts what it
        serves; the row's train_tokens is that count."""
        ...

    def log_step(self, step: int, total_steps: int, **metrics: float) -> None:
        """Report one step (`loss` at least): a line of the run's log and of runs/{run_id}/metrics.jsonl,
        which smoke and the loss plots read."""
        ...


@runtime_checkable
class Model(Protocol):
    def __call__(self, idx: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]: ...

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at this sequence length, for MFU."""
        ...


def check_experiment(train, reserved: set[str]) -> None:
    """Refuse, in one line naming what is wrong, a train.py that does not keep the contract. `reserved`: the
    referee's own flags, which no Config field may shadow."""
    where = f"train.py ({getattr(train, '__file__', '?')})"
    missing = [name for name in ("Config", "CONFIGS", "build_model", "train") if not hasattr(train, name)]
    if missing:
        raise ValueError(f"{where} does not define {', '.join(missing)}: see the contract in referee/contract.py")
    if not dataclasses.is_dataclass(train.Config) or not isinstance(train.Config, type):
        raise ValueError(f"{where}: Config must be a dataclass (its fields are the flags of just eval)")
    bad = [name for name, cfg in dict(train.CONFIGS).items() if not isinstance(cfg, train.Config)]
    if not isinstance(train.CONFIGS, dict) or bad:
        raise ValueError(f"{where}: CONFIGS must map names to Config instances (not: {', '.join(map(str, bad))})")
    for name in ("build_model", "train"):
        if not callable(getattr(train, name)):
            raise ValueError(f"{where}: {name} must be a function")
    clash = sorted({f.name for f in dataclasses.fields(train.Config)} & reserved)
    if clash:
        raise ValueError(f"{where}: Config fields {clash} shadow just eval's own flags; rename them")


def check_model(model, what: str) -> None:
    """Refuse what train() or build_model() returned unless it is a Model."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "flops_per_token", None)):
        raise ValueError(
            f"{what} returned {type(model).__name__}, not an nn.Module with flops_per_token(seq_len): "
            "see the contract in referee/contract.py"
        )
