"""The unified generative recommender: one backbone, a retrieval head and a ranking head (UniGRF),
query tokens for personalized search (SynerGen).

    token embedding  x = E_kind[kind] + { E_item[i] (+ W_text·text_i)  at item tokens
                                        { E_act[a]                     at action tokens
                                        { W_q·q                        at query tokens
    h = Backbone(x, timestamps)
    retrieval:  s(u, i) = <ĥ_t, ê_i> / τ            at action/query tokens (ˆ = L2-normalised)
    ranking:    p(y=1 | i) = σ(MLP(h_t) [+ β·sg(s(u_{t−1}, i))] [+ b_i])   at item tokens and candidate slots
                (β: rank_retrieval_feature, b_i: rank_item_bias)

y is "the candidate is the next item" for rank_task="next" (trained on the retrieval top-K' in candidate slots,
model/candidates.py); a second output unit (feedback_channel) then predicts feedback (rating ≥ 4, click vs
impression). Older checkpoints have one unit that predicts feedback.

References: UniGRF — Zhang et al., "Killing Two Birds with One Stone: Unifying Retrieval and Ranking with a Single
Generative Recommendation Model", SIGIR 2025 (arXiv 2504.16454); SynerGen — "SynerGen: Contextualized Generative
Recommender for Unified Search and Recommendation" (arXiv 2509.21777); SASRec — Kang & McAuley, ICDM 2018
(arXiv 1808.09781); HSTU — Zhai et al., ICML 2024 (arXiv 2402.17152).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from genrec.model.backbone import HistoryCache, build_backbone
from genrec.model.config import ModelConfig
from genrec.model.tokens import NUM_ACTIONS, Kind, TokenBatch
from torch import Tensor, nn


class GenerativeRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, item_text: np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.item_emb = nn.Embedding(cfg.num_items + 1, D, padding_idx=0)
        self.action_emb = nn.Embedding(NUM_ACTIONS, D)
        self.kind_emb = nn.Embedding(len(Kind), D)
        self.query_proj = nn.Linear(cfg.query_dim, D) if cfg.query_dim else None
        if cfg.text_dim:
            text = torch.zeros(cfg.num_items + 1, cfg.text_dim)
            if item_text is not None:
                text.copy_(torch.as_tensor(item_text, dtype=torch.float32))
            # Frozen semantic features travel with the weights so a checkpoint is self-contained.
            self.register_buffer("item_text", text)
            self.text_proj: nn.Linear | None = nn.Linear(cfg.text_dim, D, bias=False)
        else:
            self.text_proj = None
        # Search: a learned multiple of the frozen query–item text cosine joins the retrieval score at query tokens,
        # so semantic relevance does not have to squeeze through the 64-d projections, and personalization is
        # learned on top of it.
        self.text_match_gain = nn.Parameter(torch.tensor(1.0)) if self.has_text_match else None
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.backbone = build_backbone(cfg)
        R = cfg.rank_outputs
        self.rank_head = nn.Sequential(nn.Linear(D, cfg.rank_hidden), nn.GELU(), nn.Linear(cfg.rank_hidden, R))
        self.rank_retrieval_gain = nn.Parameter(torch.zeros(())) if cfg.rank_retrieval_feature else None
        self.rank_bias = nn.Embedding(cfg.num_items + 1, R) if cfg.rank_item_bias else None
        # One scale for every embedding table: with nn.Embedding's N(0, 1) default, the token-kind vector
        # (identical for all items) would outweigh the item's own vector eightfold and drown its identity.
        for emb in (self.item_emb, self.action_emb, self.kind_emb):
            nn.init.normal_(emb.weight, std=D**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            if self.rank_bias is not None:
                self.rank_bias.weight.zero_()

    @property
    def has_text_match(self) -> bool:
        return bool(self.cfg.query_dim and self.cfg.text_dim and self.cfg.query_dim == self.cfg.text_dim)

    def text_match(self, qvec: Tensor, items: Tensor) -> Tensor:
        """gain · cos(query text, item text), per query row qvec [M, Dq] (zero rows: no query, no match).

        items [K] shared by every row → [M, K]; items [M, K], one list per row → [M, K].
        """
        assert self.text_match_gain is not None
        t = self.item_text[items]
        if items.dim() == 1:
            return self.text_match_gain * (qvec @ t.T)
        return self.text_match_gain * (t * qvec.unsqueeze(1)).sum(-1)

    def query_vectors(self, batch: dict[str, Tensor], rows: Tensor) -> Tensor | None:
        """Frozen query embeddings [M, Dq] at the given token positions (zero where not a query), or None."""
        if not self.has_text_match or "query_vecs" not in batch or batch["query_vecs"].shape[0] == 0:
            return None
        q = batch["query_vecs"][rows.clamp(min=0)]
        return q * (rows >= 0).unsqueeze(-1)

    def retrieval_scores(self, h_last: Tensor, qvec: Tensor | None, table: Tensor | None = None) -> Tensor:
        """Cosine retrieval scores of every item [B, N+1] (+ the text match for search rows); column 0 = −inf.

        table: `output_item_table()` when the caller already has it (it is fixed while weights are).
        """
        table = self.output_item_table() if table is None else table
        scores = self.user_state(h_last) @ table.T
        if qvec is not None:
            all_items = torch.arange(self.cfg.num_items + 1, device=scores.device)
            scores = scores + self.text_match(qvec, all_items)
        scores[:, 0] = float("-inf")
        return scores

    # ---- embeddings ---------------------------------------------------------------------------
    def item_vectors(self, items: Tensor) -> Tensor:
        """Input representation of items [...] → [..., D]: collaborative ID + projected semantic text."""
        e = self.item_emb(items)
        if self.text_proj is not None:
            e = e + self.text_proj(self.item_text[items])
        return e

    def output_item_table(self) -> Tensor:
        """Normalised item embeddings for retrieval [N+1, D] (row 0, padding, never wins)."""
        return F.normalize(self.item_vectors(torch.arange(self.cfg.num_items + 1, device=self.item_emb.weight.device)),
                           dim=-1)

    def embed(self, kind: Tensor, item: Tensor, action: Tensor, query: Tensor, query_vecs: Tensor | None) -> Tensor:
        x = self.kind_emb(kind) + self.item_vectors(item) * (kind == Kind.ITEM).unsqueeze(-1)
        x = x + self.action_emb(action) * (kind == Kind.ACTION).unsqueeze(-1)
        if self.query_proj is not None and query_vecs is not None and query_vecs.shape[0] > 0:
            is_q = query >= 0
            qv = self.query_proj(query_vecs)[query.clamp(min=0)]  # [B, T, D]
            x = x + qv * is_q.unsqueeze(-1)
        return self.emb_drop(x)

    # ---- forward passes -----------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, HistoryCache]:
        """Token batch (tensors, see `to_tensors`) → outputs [B, T, D] and the history cache."""
        x = self.embed(batch["kind"], batch["item"], batch["action"], batch["query"], batch.get("query_vecs"))
        return self.backbone(x, batch["ts"], batch["kind"] != Kind.PAD)

    def user_state(self, h: Tensor) -> Tensor:
        return F.normalize(h, dim=-1)

    def rank_outputs(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        """Every ranking output unit of item-token outputs h [..., D] → [..., R] (MLP + per-item bias)."""
        out = self.rank_head(h)
        if self.rank_bias is not None:
            if items is None:
                raise ValueError("this model has per-item ranking biases: pass the items")
            out = out + self.rank_bias(items)
        return out

    def rank_logits(self, h: Tensor, affinity: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """The served ranking logit of item-token outputs h [..., D] of items [...]; affinity [...]: the items'
        retrieval scores s(u, i) from the state before them (`affinity`), required with rank_retrieval_feature;
        items are required with rank_item_bias."""
        logit = self.rank_outputs(h, items)[..., 0]
        if self.rank_retrieval_gain is None:
            return logit
        if affinity is None:
            raise ValueError("this model's ranker reads the retrieval score: pass the items' affinity")
        return logit + self.rank_retrieval_gain * affinity.detach()

    def feedback_logits(self, h: Tensor, affinity: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """The logit of positive feedback on a consumed item (AUC/GAUC): the second unit when the served one
        predicts the next item, else the served logit itself."""
        if self.cfg.rank_outputs == 2:
            return self.rank_outputs(h, items)[..., 1]
        return self.rank_logits(h, affinity, items)

    def affinity(self, user: Tensor, items: Tensor) -> Tensor:
        """Retrieval scores s(u, i) = <û, ê_i>/τ of candidates items [B, C] for states user [B, D] → [B, C]."""
        e = F.normalize(self.item_vectors(items), dim=-1)
        return (e * self.user_state(user).unsqueeze(1)).sum(-1) / self.cfg.tau

    def teacher_forced_affinity(self, h: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """s(u_{t−1}, i_t) at every position [B, T] of outputs h [B, T, D]: each token's item scored from the previous
        token's state, as serving scores a candidate from the history's last state; 0 where no real token precedes."""
        with torch.no_grad():
            items, prev_real = batch["item"][:, 1:], batch["kind"][:, :-1] != Kind.PAD
            s = self.affinity(h[:, :-1].reshape(-1, h.shape[-1]), items.reshape(-1, 1)).view_as(items)
            return F.pad(s.masked_fill(~prev_real, 0.0), (1, 0))

    def candidate_outputs(self, items: Tensor, ts: Tensor, cache: HistoryCache, prefix_len: Tensor | None = None
                          ) -> Tensor:
        """Outputs [B, C, D] of candidate items [B, C] appended after the cached history at times ts [B, C], each
        attending to the history (its first prefix_len tokens) and to itself only."""
        x = self.kind_emb.weight[Kind.ITEM] + self.item_vectors(items)
        return self.backbone.forward_candidates(x, ts, cache, prefix_len)

    def score_candidates(self, items: Tensor, ts: Tensor, cache: HistoryCache, prefix_len: Tensor | None = None,
                         user: Tensor | None = None, affinity: Tensor | None = None, feedback: bool = False) -> Tensor:
        """Served ranking logits (or, with `feedback`, feedback logits) of candidate items [B, C] appended after the
        cached history at times ts [B, C].

        user [B, D]: the history's last output (the retrieval state), which a rank_retrieval_feature model needs;
        affinity [B, C]: the candidates' retrieval scores s/τ given directly instead (a separate retriever's)."""
        h = self.candidate_outputs(items, ts, cache, prefix_len)
        if affinity is None and self.rank_retrieval_gain is not None and user is not None:
            affinity = self.affinity(user, items)
        if feedback:
            return self.feedback_logits(h, affinity, items)
        return self.rank_logits(h, affinity, items)

    def to_tensors(self, tb: TokenBatch) -> dict[str, Tensor]:
        dev = self.item_emb.weight.device
        out = {
            "kind": torch.as_tensor(tb.kind, device=dev),
            "item": torch.as_tensor(tb.item, device=dev),
            "action": torch.as_tensor(tb.action, device=dev),
            "ts": torch.as_tensor(tb.ts, device=dev),
            "query": torch.as_tensor(tb.query, device=dev),
        }
        if tb.query_vecs is not None:
            out["query_vecs"] = torch.as_tensor(tb.query_vecs, dtype=torch.float32, device=dev)
        return out
