"""Training throughput and quality of the configuration users run, one JSON line per config.

Usage:
    uv run python bench/bench.py                      # CUDA: the default preset and the GPT-2-small shape
    uv run python bench/bench.py --device cpu         # CPU: the default preset and a tiny shape
    uv run python bench/bench.py --budget-tokens 200000000 --configs default gpt2-small baby
    uv run just profile                               # the top kernels of a few steps of this checkout's config

Each config is trained by this checkout's `train.train` on the referee's batch stream, with the
referee's settings (strict deterministic algorithms, the seed, the deterministic cuBLAS workspace;
train.py's own compile and bf16 autocast), then scored by the referee's core (scoring and probes):
the loop of `just eval`, in this one process (a scored run trains in a worker process, fed by the
referee; `bench/README.md` measures what that costs). tokens/s and MFU are the steady state, from
the time the stream serves each batch once `--warmup-steps` (compilation) are behind. Speed belongs
here, never in a timed test.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from referee import core, data  # noqa: E402
from referee.worker import device_peak_flops, load_experiment, local_data, local_score, peak_memory_gb, resolve_device  # noqa: E402
from repo.git import checkout_dir  # noqa: E402  (main's harness and referee, beside this folder)

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
    budget_tokens: int = 0
    """training tokens per config (0: the device preset's budget, as `just eval`)"""
    warmup_steps: int = 5
    """steps left out of tokens/s and MFU (torch.compile happens here)"""
    eval_bytes: int = 0
    """score only the first N validation bytes (0: the whole split, as the referee does)"""
    seed: int = 0
    deterministic: bool = True
    """the referee's strict mode; --no-deterministic only to measure what determinism costs"""
    profile: bool = False
    """instead of measuring, print the top kernels of `--profile-steps` steps after the warmup"""
    profile_steps: int = 5
    """steps recorded by --profile"""


class Timed:
    """A TrainData (referee/contract.py) that notes when each batch is served (and steps a profiler if given)."""

    def __init__(self, data, profiler=None):
        self.data, self.profiler, self.times = data, profiler, []

    def __getattr__(self, name):  # budget_tokens, world_size, rank, peak_flops, log_step
        return getattr(self.data, name)

    def batches(self, batch_size: int, seq_len: int):
        for batch in self.data.batches(batch_size, seq_len):
            self.times.append((time.perf_counter(), self.data.stream.tokens_served))
            if self.profiler is not None:
                self.profiler.step()
            yield batch


def run_config(name: str, train, cfg, args: Args, device: torch.device, corpus: data.Corpus) -> dict:
    preset = core.PRESETS[device.type]
    budget = args.budget_tokens or preset.train_tokens
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    stream = Timed(local_data(corpus.train, budget, args.seed, device))
    t0 = time.perf_counter()
    model = train.train(cfg, stream, device)
    sync()
    t_end = time.perf_counter()
    if len(stream.times) <= args.warmup_steps + 1:
        raise ValueError(
            f"{name}: the budget gave {len(stream.times)} steps; give --budget-tokens for more than "
            f"--warmup-steps {args.warmup_steps} + 1"
        )
    t_warm, tokens_warm = stream.times[args.warmup_steps]
    steady_tokens = stream.stream.tokens_served - tokens_warm
    steady_s = t_end - t_warm
    val = corpus.val if args.eval_bytes == 0 else corpus.val[: args.eval_bytes]
    t_eval = time.perf_counter()
    val_bpb = local_score(model, val, min(preset.eval_seq_len, cfg.seq_len), device)
    flops_per_s = model.flops_per_token(cfg.seq_len) * steady_tokens / steady_s
    return dict(
        config=name, device=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        params_m=round(model.num_params() / 1e6, 3), steps=len(stream.times), tokens=stream.stream.tokens_served,
        train_s=round(t_end - t0, 2), warmup_s=round(t_warm - t0, 1), tokens_per_s=round(steady_tokens / steady_s),
        mfu=round(flops_per_s / device_peak_flops(device), 4), peak_mem_gb=round(peak_memory_gb(device), 3),
        val_bpb=round(val_bpb, 4), eval_s=round(time.perf_counter() - t_eval, 1), deterministic=torch.are_deterministic_algorithms_enabled(),
        torch=torch.__version__, shape={k: getattr(cfg, k) for k in ("n_layer", "d_model", "d_head", "seq_len", "batch_size", "lr")},
    )  # fmt: skip


def profile_config(name: str, train, cfg, args: Args, device: torch.device, corpus: data.Corpus) -> None:
    """A few steps of `train.train` under torch.profiler, after the warmup; the top kernels by time."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = args.warmup_steps + args.profile_steps + 1
    budget = steps * cfg.batch_size * cfg.seq_len
    torch.manual_seed(args.seed)
    with profile(
        activities=activities, schedule=schedule(wait=0, warmup=args.warmup_steps, active=args.profile_steps)
    ) as prof:
        stream = Timed(local_data(corpus.train, budget, args.seed, device), profiler=prof)
        train.train(cfg, stream, device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{name}: top kernels over {args.profile_steps} steps (after {args.warmup_steps} warmup steps), by {sort_by}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20, max_name_column_width=60))


def main(args: Args) -> None:
    device = resolve_device(args.device, 1)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what eval.py sets for every run
    torch.use_deterministic_algorithms(args.deterministic)  # on, as in every scored run: the speed users get
    train = load_experiment(checkout_dir(), checked=False)  # this checkout's train.py and model.py
    names = args.configs or (
        ("default",) if args.profile else ("default", "gpt2-small") if device.type == "cuda" else ("default", "tiny")
    )
    corpus = data.load_corpus()
    for name in names:
        if name == "default":
            cfg = train.CONFIGS[device.type]
        elif name in SHAPES:
            cfg = replace(train.CONFIGS[device.type], **SHAPES[name])
        elif name in train.CONFIGS:
            cfg = train.CONFIGS[name]
        else:
            raise ValueError(
                f"unknown config {name!r}; known: default, {', '.join(SHAPES)}, {', '.join(train.CONFIGS)}"
            )
        if args.profile:
            profile_config(name, train, cfg, args, device, corpus)
        else:
            print(json.dumps(run_config(name, train, cfg, args, device, corpus)), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(tyro.cli(Args))
