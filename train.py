"""The training loop of one experiment. REGULAR: experiments edit this file and model.py.

Usage: not run directly; the referee calls `train(cfg, data, device)` in a worker process:
    uv run just eval [CONFIG] [--lr 3e-3 --n-layer 6 ...]   # scored run, one ledger row
    uv run just smoke                                      # fast sanity check, no row

The contract (what this file defines, what `train` gets and returns) is written once, in
referee/contract.py: `Config`, `CONFIGS` (the configs `just eval NAME` can pick; the default is the
device class's), `build_model(cfg)` and `train(cfg, data, device)`, which draws every batch from
`data.batches(batch_size, seq_len)` (it stops when the token budget is spent), reports steps with
`data.log_step(step, total_steps, loss=..., ...)` and returns the model: an nn.Module mapping
`idx (batch, seq)` to `logits (batch, seq, 256)`, with `flops_per_token(seq_len)`. It is scored
from its checkpoint alone. Under `just eval --nproc N` the process group is started: wrap the model
in DDP.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model import GPT, GPTConfig
from referee.contract import TrainData


@dataclass(frozen=True)
class Config:
    n_layer: int = 4
    """transformer blocks"""
    d_model: int = 128
    """residual stream width"""
    d_head: int = 32
    """attention head width"""
    seq_len: int = 256
    """training context in bytes (the eval context of the device preset should not exceed it)"""
    batch_size: int = 16
    """sequences per step"""
    lr: float = 2e-3
    """peak AdamW learning rate"""
    final_lr_frac: float = 0.05
    """the learning rate decays linearly to this fraction of the peak"""
    warmup_frac: float = 0.03
    """fraction of the token budget spent warming up linearly from zero"""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, on matrices only"""
    beta2: float = 0.95
    """AdamW second-moment decay"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 disables)"""
    compile: bool | None = None
    """torch.compile the model; default: on CUDA only (compiling costs minutes on a 2-core CPU)"""
    log_every: int = 50
    """steps between log lines, at most (each syncs the device once and checks the loss is finite); a short run
    logs more often, about 40 times, so that its loss curve has points enough to read"""

    def __post_init__(self):  # an impossible value is refused before the run, with no ledger row
        for name in ("n_layer", "d_model", "d_head", "seq_len", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 1 or more")
        if self.d_model % self.d_head:
            raise ValueError(f"--d-model {self.d_model} is not a multiple of --d-head {self.d_head}")
        checks = dict(
            lr=self.lr > 0, weight_decay=self.weight_decay >= 0, grad_clip=self.grad_clip >= 0,
            final_lr_frac=0 <= self.final_lr_frac <= 1, warmup_frac=0 <= self.warmup_frac < 1, beta2=0 < self.beta2 < 1,
        )  # fmt: skip
        bounds = dict(lr="> 0", weight_decay=">= 0", grad_clip=">= 0", final_lr_frac="in [0, 1]",
                      warmup_frac="in [0, 1)", beta2="in (0, 1)")  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be {bounds[name]}")

    def model_config(self) -> GPTConfig:
        return GPTConfig(
            n_layer=self.n_layer, d_model=self.d_model, d_head=self.d_head, max_seq_len=max(self.seq_len, 1024)
        )


CONFIGS = {
    "cpu": Config(),
    "mps": Config(n_layer=6, d_model=256, d_head=64, batch_size=32, lr=3e-3),
    "cuda": Config(n_layer=8, d_model=512, d_head=64, seq_len=1024, batch_size=64, lr=2e-3, log_every=100),
    # For tests and smoke runs: seconds on any CPU.
    "tiny": Config(n_layer=2, d_model=32, d_head=16, seq_len=64, batch_size=8, lr=3e-3, log_every=10),
}


def build_model(cfg: Config) -> GPT:
    return GPT(cfg.model_config())


def lr_at(frac: float, cfg: Config) -> float:
    """Linear warmup, then linear decay to final_lr_frac; `frac` is the share of the budget spent."""
    if frac < cfg.warmup_frac:
        return cfg.lr * frac / cfg.warmup_frac
    decay = (frac - cfg.warmup_frac) / (1 - cfg.warmup_frac)
    return cfg.lr * (1 - (1 - cfg.final_lr_frac) * decay)


def make_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2 and p is not model.embed.weight]
    others = [p for p in model.parameters() if p.dim() < 2 or p is model.embed.weight]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def train(cfg: Config, data: TrainData, device: torch.device) -> nn.Module:
    # --- model and optimizer ---
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    forward = torch.compile(model) if use_compile else model
    if torch.distributed.is_initialized():  # `just eval --nproc N`: gradients averaged over the ranks
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    total_steps = data.budget_tokens // tokens_per_step
    flops_per_step = model.flops_per_token(cfg.seq_len) * tokens_per_step
    peak_flops = data.peak_flops * data.world_size
    logger.info(f"model {model.num_params() / 1e6:.2f}M params | {total_steps} steps of {tokens_per_step} tokens")

    # --- loop ---
    model.train()
    t_last, step_last = time.perf_counter(), 0
    log_every = max(1, min(cfg.log_every, total_steps // 40))
    for step, (x, y) in enumerate(data.batches(cfg.batch_size, cfg.seq_len)):
        lr = lr_at(step / max(total_steps, 1), cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits = forward(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if step % log_every == 0 or step == total_steps - 1:
            loss_value = loss.item()  # the one host sync per log interval
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite loss {loss_value} at step {step}")
            now = time.perf_counter()
            dt = (now - t_last) / max(step - step_last, 1)
            t_last, step_last = now, step
            data.log_step(
                step,
                total_steps,
                loss=loss_value,
                lr=lr,
                dt_ms=dt * 1e3,
                tok_per_s=tokens_per_step / dt,
                mfu=flops_per_step / dt / peak_flops,
            )
    return model
