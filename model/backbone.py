"""Decoder-only causal transformer with time-aware rotary positions (SynerGen), pre-norm.

One attention routine serves both training (causal over the sequence) and serving (candidates that see
the cached history and themselves only). Backbones implement `Backbone`; the model depends on nothing else.

References: a causal self-attention model over the user's event sequence, as in SASRec (Kang & McAuley, ICDM
2018, arXiv 1808.09781) and HSTU ("Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", Zhai et al., ICML 2024, arXiv 2402.17152), whose action tokens interleave with item
tokens here too; rotary positions (RoFormer, Su et al., arXiv 2104.09864) of which half the pairs turn with the
timestamp, SynerGen's time-aware rotary embedding ("SynerGen: Contextualized Generative Recommender for Unified
Search and Recommendation", arXiv 2509.21777).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from genrec.model.config import ModelConfig
from torch import Tensor, nn


def rope_frequencies(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """Angular speeds of the rotary pairs: (per token index [n_index], per second [n_time]).

    With time_rope, half the pairs turn with the index (θ_k = base^(-k/n)), the other half with time, their
    periods spaced geometrically from `time_period_min_s` (a minute) to `time_period_max_s` (two years).
    """
    pairs = cfg.head_dim // 2
    n_time = pairs // 2 if cfg.time_rope else 0
    n_index = pairs - n_time
    index_freq = cfg.rope_index_base ** (-torch.arange(n_index, dtype=torch.float64) / max(n_index, 1))
    if n_time:
        periods = torch.logspace(
            math.log10(cfg.time_period_min_s), math.log10(cfg.time_period_max_s), n_time, dtype=torch.float64
        )
        time_freq = 2 * math.pi / periods
    else:
        time_freq = torch.zeros(0, dtype=torch.float64)
    return index_freq, time_freq


def rotary_angles(index: Tensor, rel_time_s: Tensor, index_freq: Tensor, time_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin of every rotary pair. index, rel_time_s: [B, T] (float64) → [B, 1, T, pairs] (float32).

    Times enter relative to a per-sequence reference, in float64: the rotation of a query/key pair then
    depends on t_q − t_k only, and shifting every timestamp by a constant changes nothing, bit for bit.
    """
    ang = torch.cat(
        [index[..., None] * index_freq, rel_time_s[..., None] * time_freq], dim=-1
    )  # [B, T, pairs]
    return ang.cos().float().unsqueeze(1), ang.sin().float().unsqueeze(1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_k, x_{k+d/2}) of x [B, H, T, d] by the angles in cos/sin [B, 1, T, d/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def additive_mask(allowed: Tensor) -> Tensor:
    """Boolean "may attend" → additive float mask (SDPA's float-mask path is faster on CPU)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


@dataclass
class LayerCache:
    k: Tensor  # [B, H, T, d] keys after rotation
    v: Tensor  # [B, H, T, d]


@dataclass
class HistoryCache:
    """What serving keeps of a forwarded history: per-layer keys/values and which keys are real tokens."""

    layers: list[LayerCache]
    key_valid: Tensor  # [B, T] bool
    length: int  # T: candidates take index position T (the next position)
    time_ref: Tensor  # [B] int64 seconds: the reference the history's times were taken relative to

    def select(self, rows: Tensor) -> HistoryCache:
        return HistoryCache([LayerCache(c.k[rows], c.v[rows]) for c in self.layers], self.key_valid[rows],
                            self.length, self.time_ref[rows])

    def detach(self) -> HistoryCache:
        return HistoryCache([LayerCache(c.k.detach(), c.v.detach()) for c in self.layers], self.key_valid,
                            self.length, self.time_ref)


class Backbone(Protocol):
    def forward(self, x: Tensor, ts: Tensor, valid: Tensor) -> tuple[Tensor, HistoryCache]: ...

    def forward_candidates(self, x: Tensor, ts: Tensor, cache: HistoryCache, prefix_len: Tensor | None = None
                           ) -> Tensor: ...


def candidate_attention(q: Tensor, k: Tensor, v: Tensor, cache: LayerCache, hist_bias: Tensor, scale: float
                        ) -> Tensor:
    """The reference: a_c = softmax([q_c·K_histᵀ·s + bias, q_c·k_c·s]) · [V_hist; v_c]. q, k, v [B, H, C, d]."""
    hist = (q @ cache.k.transpose(-1, -2)) * scale + hist_bias  # [B, H, C, T]
    self_score = (q * k).sum(-1, keepdim=True) * scale  # [B, H, C, 1]
    w = torch.softmax(torch.cat([hist, self_score], dim=-1), dim=-1)
    return w[..., :-1] @ cache.v + w[..., -1:] * v


def _fused_candidates_ok(q: Tensor) -> bool:
    # The fused kernel has no backward wired here, and is the CPU one: training and GPUs take the reference.
    return q.device.type == "cpu" and not (torch.is_grad_enabled() and q.requires_grad) and _HAS_CPU_FLASH


_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def candidate_attention_fused(q: Tensor, k: Tensor, v: Tensor, cache: LayerCache, hist_bias: Tensor, scale: float
                              ) -> Tensor:
    """The same value as `candidate_attention`, without materialising the [B, H, C, T] score tensor.

    The history part runs in torch's CPU flash-attention kernel, which also returns each row's log-sum-exp
    L_h = log Σ_hist exp(score); the self key is then merged in exactly:

        L = logaddexp(L_h, s_self),   a_c = exp(L_h − L) · softmax_hist · V_hist + exp(s_self − L) · v_c

    Serving spends most of its time in candidate attention (≈3x faster this way at B=32, C=200, T=100).
    """
    B = q.shape[0]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, cache.k, cache.v, attn_mask=hist_bias.expand(B, 1, 1, -1), scale=scale
    )[:2]  # out [B, H, C, d], lse [B, H, C]
    # A row with no visible history key: the kernel reports lse 0 and output 0; it attends to itself only.
    has_hist = torch.isfinite(hist_bias).any(dim=-1).view(B, 1, 1)  # [B, 1, 1]
    lse = lse.masked_fill(~has_hist, float("-inf"))
    self_score = (q * k).sum(-1) * scale  # [B, H, C]
    total = torch.logaddexp(lse, self_score)
    w_hist = torch.exp(lse - total).unsqueeze(-1)
    w_self = torch.exp(self_score - total).unsqueeze(-1)
    return out * w_hist + v * w_self


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.d = cfg.n_heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model),
        )
        # Dropout on the residual stream only: on CPU, random masks for the attention matrix or the 4x-wide FFN
        # hidden layer cost more than the layers themselves.
        self.drop = nn.Dropout(cfg.dropout)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v  # each [B, H, T, d]

    def _finish(self, x: Tensor, att: Tensor) -> Tensor:
        B, _, T, _ = att.shape
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(B, T, self.h * self.d)))
        return x + self.drop(self.ffn(self.norm2(x)))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> tuple[Tensor, LayerCache]:
        q, k, v = self._qkv(x, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish(x, att), LayerCache(k, v)

    def forward_candidates(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache, hist_bias: Tensor,
                           shared_angle: bool = False) -> Tensor:
        """Candidate c attends to the history keys and to its own key only:

            a_c = softmax([q_c·K_histᵀ + bias, q_c·k_c] / √d) · [V_hist; v_c]

        computed as history scores plus one self score, O(C·T) rather than O(C·(T+C)) with a mask.
        hist_bias [B, 1, C or 1, T]: 0 where a history key may be seen, −inf elsewhere. With `shared_angle`,
        cos/sin are [B, 1, 1, d/2]: one rotation per row, the same for all its candidates.
        """
        if shared_angle:
            # Every candidate of a row sits at the same position and time, so one rotation R_b applies to all
            # of them: (R_b q_c)·(R_j k_j) = q_c·(R_bᵀ R_j k_j) and (R_b q_c)·(R_b k_c) = q_c·k_c. Rotating the T
            # cached keys back by R_b once costs less than rotating 2·C candidate vectors forward.
            B, C, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(B, C, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            cache = LayerCache(apply_rotary(cache.k, cos, -sin), cache.v)
        else:
            q, k, v = self._qkv(x, cos, sin)  # [B, H, C, d]
        if _fused_candidates_ok(q) and hist_bias.shape[2] == 1:  # one history mask per row, as serving has
            att = candidate_attention_fused(q, k, v, cache, hist_bias, self.d**-0.5)
        else:
            att = candidate_attention(q, k, v, cache, hist_bias, self.d**-0.5)
        return self._finish(x, att)


class CausalTransformer(nn.Module):
    """Pre-norm decoder-only transformer; every token may also attend to itself (so padding rows stay finite)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        index_freq, time_freq = rope_frequencies(cfg)
        self.register_buffer("index_freq", index_freq, persistent=False)
        self.register_buffer("time_freq", time_freq, persistent=False)

    def _angles(self, index: Tensor, ts: Tensor, time_ref: Tensor) -> tuple[Tensor, Tensor]:
        rel = (ts - time_ref[:, None]).to(torch.float64)
        return rotary_angles(index.to(torch.float64), rel, self.index_freq, self.time_freq)

    @property
    def last_shared_layer(self) -> Tensor:
        """The parameter whose per-task gradient norms drive the adaptive weighter."""
        return self.blocks[-1].ffn[-1].weight

    def forward(self, x: Tensor, ts: Tensor, valid: Tensor) -> tuple[Tensor, HistoryCache]:
        """x [B, T, D] token embeddings, ts [B, T] int64 seconds, valid [B, T] bool → outputs [B, T, D]."""
        B, T, _ = x.shape
        # Reference time: the earliest real timestamp of each sequence. Any per-sequence constant gives the same
        # rotations mathematically; the earliest keeps outputs bit-for-bit causal (a later token never moves it).
        time_ref = torch.where(valid, ts, torch.iinfo(torch.int64).max).amin(dim=1)
        time_ref = torch.where(valid.any(dim=1), time_ref, torch.zeros_like(time_ref))
        index = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self._angles(index, ts, time_ref)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        mask = additive_mask(((causal & valid[:, None, :]) | eye).unsqueeze(1))  # [B, 1, T, T]
        layers = []
        for block in self.blocks:
            x, lc = block(x, cos, sin, mask)
            layers.append(lc)
        return self.final_norm(x), HistoryCache(layers, valid, T, time_ref)

    def forward_candidates(
        self, x: Tensor, ts: Tensor, cache: HistoryCache, prefix_len: Tensor | None = None
    ) -> Tensor:
        """Candidates x [B, C, D] at times ts [B, C]: each sees the cached history and itself, never another.

        prefix_len [B] (training only): candidates see history positions < prefix_len[b] and take index
        position prefix_len[b]; serving leaves it None (whole history, position T).
        """
        B, C, _ = x.shape
        T = cache.length
        hist_keys = cache.key_valid
        if prefix_len is None:
            index = torch.full((B, C), T, device=x.device)
        else:
            hist_keys = hist_keys & (torch.arange(T, device=x.device)[None, :] < prefix_len[:, None])
            index = prefix_len[:, None].expand(B, C)
        shared = bool((ts == ts[:, :1]).all())  # serving and training give each row one candidate time
        if shared:
            index, ts = index[:, :1], ts[:, :1]
        cos, sin = self._angles(index, ts, cache.time_ref)
        bias = additive_mask(hist_keys[:, None, None, :])  # [B, 1, 1, T]: the same history for every candidate
        for block, lc in zip(self.blocks, cache.layers, strict=True):
            x = block.forward_candidates(x, cos, sin, lc, bias, shared_angle=shared)
        return self.final_norm(x)


def build_backbone(cfg: ModelConfig) -> CausalTransformer:
    if cfg.backbone == "transformer":
        return CausalTransformer(cfg)
    raise ValueError(f"unknown backbone {cfg.backbone!r}")
