"""Training throughput and quality at a fixed wall-clock budget, one JSON line per config.

Usage:
    uv run python bench/bench.py                      # CUDA: the default preset and the GPT-2-small shape
    uv run python bench/bench.py --device cpu         # CPU: the default preset and a tiny shape
    uv run python bench/bench.py --wall-s 150 --configs default gpt2-small

Each config trains this repo's model.py with train.py's optimizer and precision rules (bf16 autocast,
fp32 master weights, fused AdamW and torch.compile on CUDA) on the referee's batch stream for
`--wall-s` seconds of training (compile time excluded, measured after `--warmup-steps`), then scores
it with the referee's val_bpb. Speed figures belong here, never in a timed test.
"""

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import eval as referee  # noqa: E402
import train  # noqa: E402

SHAPES = {
    # nanoGPT's GPT-2-small shape: 12 layers, 768 wide, context 1024, batch 32
    "gpt2-small": dict(n_layer=12, d_model=768, d_head=64, seq_len=1024, batch_size=32),
    # nanoGPT's "baby" shakespeare-char shape: 6 layers, 384 wide, context 256, batch 64
    "baby": dict(n_layer=6, d_model=384, d_head=64, seq_len=256, batch_size=64),
    "tiny": dict(n_layer=2, d_model=64, d_head=32, seq_len=64, batch_size=8),
}


@dataclass(frozen=True)
class Args:
    device: Literal["cpu", "cuda", "mps"] | None = None
    """default: cuda if present, else cpu"""
    configs: tuple[str, ...] = ()
    """`default` (the device's train.CONFIGS entry) and/or shapes from SHAPES; default: default + gpt2-small (CUDA) or tiny (CPU)"""
    wall_s: float = 30.0
    """training seconds per config, after warmup"""
    warmup_steps: int = 5
    """steps before the clock starts (torch.compile happens here)"""
    eval_bytes: int = 0
    """score only the first N validation bytes (0: the whole split, as the referee does)"""
    seed: int = 0


def run_config(name: str, cfg: train.Config, args: Args, device: torch.device, corpus: referee.Corpus) -> dict:
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = train.build_model(cfg).to(device)
    optimizer = train.make_optimizer(model, cfg, device)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    forward = torch.compile(model) if use_compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    stream = referee.TrainStream(corpus.train, 10**15, args.seed, device, math.inf)
    batches = stream.batches(cfg.batch_size, cfg.seq_len)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        with autocast:
            logits = forward(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t_compile = time.perf_counter()
    for _ in range(args.warmup_steps):
        step(cfg.lr * 0.01)
    sync()
    compile_s = time.perf_counter() - t_compile
    # The schedule runs on wall time here: warmup 3%, linear decay, as train.lr_at does on tokens.
    steps, t0, loss = 0, time.perf_counter(), None
    while (elapsed := time.perf_counter() - t0) < args.wall_s:
        loss = step(train.lr_at(min(elapsed / args.wall_s, 1.0), cfg))
        steps += 1
        if steps % 50 == 0:
            sync()
    sync()
    train_s = time.perf_counter() - t0
    final_loss = loss.item()
    if not math.isfinite(final_loss):
        raise FloatingPointError(f"{name}: non-finite loss {final_loss}")
    tokens = steps * tokens_per_step
    val = corpus.val if args.eval_bytes == 0 else corpus.val[: args.eval_bytes]
    preset = referee.PRESETS[device.type]
    t_eval = time.perf_counter()
    val_bpb = referee.evaluate(model.eval(), val, min(preset.eval_seq_len, cfg.seq_len), device)
    flops = model.flops_per_token(cfg.seq_len) * tokens
    return dict(
        config=name, device=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        params_m=round(model.num_params() / 1e6, 3), steps=steps, tokens=tokens, train_s=round(train_s, 2),
        compile_s=round(compile_s, 1), tokens_per_s=round(tokens / train_s), mfu=round(flops / train_s / referee.device_peak_flops(device), 4),
        peak_mem_gb=round(referee.peak_memory_gb(device), 3), final_train_loss=round(final_loss, 4),
        val_bpb=round(val_bpb, 4), eval_s=round(time.perf_counter() - t_eval, 1), torch=torch.__version__,
        shape={k: getattr(cfg, k) for k in ("n_layer", "d_model", "d_head", "seq_len", "batch_size", "lr")},
    )  # fmt: skip


def main(args: Args) -> None:
    device = referee.resolve_device(args.device)
    if device.type == "cuda":
        torch.use_deterministic_algorithms(False)  # speed is measured here; determinism is gpu_check's job
    names = args.configs or (("default", "gpt2-small") if device.type == "cuda" else ("default", "tiny"))
    corpus = referee.load_corpus()
    for name in names:
        if name == "default":
            cfg = train.CONFIGS[device.type]
        elif name in SHAPES:
            cfg = replace(train.CONFIGS[device.type], **SHAPES[name])
        else:
            raise ValueError(f"unknown config {name!r}; known: default, {', '.join(SHAPES)}")
        print(json.dumps(run_config(name, cfg, args, device, corpus)), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(tyro.cli(Args))
