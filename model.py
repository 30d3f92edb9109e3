"""A small modern GPT over bytes: RoPE, RMSNorm, causal SDPA, squared-ReLU MLP, untied head.

Usage: `from model import GPT, GPTConfig`. An experiment edits this file freely; the referee
(`eval.py`) only needs `model(idx) -> logits` and `model.flops_per_token(seq_len)`.
Shapes use the repo-wide names `batch seq vocab d_model n_head d_head`; smoke runs check them
at runtime through jaxtyping's import hook.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    """bytes"""
    n_layer: int = 4
    """transformer blocks"""
    d_model: int = 128
    """residual stream width"""
    d_head: int = 32
    """width of one attention head; n_head = d_model // d_head"""
    mlp_ratio: int = 4
    """hidden width of the MLP as a multiple of d_model"""
    max_seq_len: int = 1024
    """longest sequence the rotary table covers (at least every preset's eval context)"""

    @property
    def n_head(self) -> int:
        if self.d_model % self.d_head:
            raise ValueError(f"d_model={self.d_model} is not a multiple of d_head={self.d_head}")
        return self.d_model // self.d_head


def rotary_table(seq_len: int, d_head: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos/sin of the RoPE angles, shape (seq, d_head/2) each (Su et al. 2021, arXiv:2104.09864)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(
    x: Float[Tensor, "batch n_head seq d_head"], cos: Float[Tensor, "seq half"], sin: Float[Tensor, "seq half"]
) -> Float[Tensor, "batch n_head seq d_head"]:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class ByteEmbedding(torch.autograd.Function):
    """The embedding lookup, with a backward that is one matmul, one_hot(idx)^T @ grad. nn.Embedding's
    backward scatters with index_add, which on CUDA is non-deterministic, or, in deterministic mode,
    a slow sort-based kernel (13.6 ms of a 61 ms step at the cuda preset on an H200); for a 256-byte
    vocabulary the matmul costs almost nothing and is deterministic everywhere."""

    @staticmethod
    def forward(ctx, idx: Int[Tensor, "batch seq"], weight: Float[Tensor, "vocab d_model"]) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.vocab_size = weight.size(0)
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad: Float[Tensor, "batch seq d_model"]) -> tuple[None, Tensor]:
        (idx,) = ctx.saved_tensors
        one_hot = F.one_hot(idx.reshape(-1), ctx.vocab_size).to(grad.dtype)
        return None, one_hot.T @ grad.reshape(-1, grad.size(-1))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self, x: Float[Tensor, "batch seq d_model"], cos: Float[Tensor, "seq half"], sin: Float[Tensor, "seq half"]
    ) -> Float[Tensor, "batch seq d_model"]:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        # QK-norm keeps attention logits bounded at the high learning rates small models like.
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash kernel on CUDA
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq d_model"]:
        return self.down(F.relu(self.up(x)).square())  # ReLU² (So et al. 2021, arXiv:2109.08668)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Float[Tensor, "batch seq d_model"], cos: Float[Tensor, "seq half"], sin: Float[Tensor, "seq half"]
    ) -> Float[Tensor, "batch seq d_model"]:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_table(cfg.max_seq_len, cfg.d_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections start small so the stream is not swamped at depth (GPT-2 paper, §2.3).
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
        T = idx.size(1)
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.cos[:T], self.sin[:T]
        x = ByteEmbedding.apply(idx, self.embed.weight)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6 per weight of every matmul, plus attention
        scores and values, 12 * n_layer * d_model * seq_len (PaLM paper, appendix B). The embedding
        lookup is no matmul and is left out."""
        matmul_params = sum(p.numel() for p in self.parameters() if p.dim() == 2) - self.embed.weight.numel()
        return float(6 * matmul_params + 12 * self.cfg.n_layer * self.cfg.d_model * seq_len)
