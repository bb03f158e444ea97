"""A growing item vocabulary: items first seen after training join a model without retraining it.

The item-indexed tensors of `GenerativeRecommender` (model/generative.py) gain M rows at the end:

    item_emb.weight   [N+1, D] → [N+M+1, D]   new rows: r_j (below)
    item_text         [N+1, T] → [N+M+1, T]   new rows: the item's text vector from metadata, or 0 (none known)
    rank_bias.weight  [N+1, R] → [N+M+1, R]   new rows: the mean bias of the known items (an average item's appeal)

and items.json gains the M raw ids in the same order, so index i of every known item is unchanged: histories
already encoded, the replay buffer's examples and a worker's served lists keep their meaning, and every known
item's score is the same function of the history as before (no other parameter moves; checked by
tests/model/test_vocab.py).

The ID row of a new item, r_j:

    with a text vector:  r_j = 0                 the item is what its text says, e_j = W_text·text_j, until clicks
                                                 move it (known items' e_i = E[i] + W_text·text_i)
    without:             r_j = e_s + ε           a copy of a tail item s: drawn uniformly among the known items
                                                 trained on at most the median count (all of them when no counts
                                                 are known), its whole input vector e_s (text part included) and its
                                                 rank bias; ε ~ N(0, (0.1·‖e_s‖)²/D) so that copies differ. Like its
                                                 zero popularity (`grow_popularity`), a new item is then served as
                                                 rarely as an item few clicked, until clicks move it.

Why not a random direction (r_j ~ N(0, σ² I), the start before): trained items fill a narrow cone that random
directions outscore. On a Beauty model, 10 such items took a slot in every user's top 10 before any click and
1,091 took all of them; copies of items drawn from the whole catalog took 0 to 10 % of the slots, depending on
whether a hub item (in everyone's top 10) was drawn and copied next to itself; tail copies took none
(ops/analysis_new_item_crowding.py). Online on Beauty (BENCHMARKS.md "New items online on Amazon Beauty") the
random start cost the known items half their NDCG@10 and the tail copy cost them nothing measurable, but with
about three clicks each no tail copy reached a top 10 during the run: a start near what an item's first clickers
liked is the next thing to try.

No Kafka here: the trainer role (streams/trainer.py) collects the new ids from the events topic and grows its
model before a training round (model/online.py `OnlineLearner.grow`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from genrec.model.generative import GenerativeRecommender
from torch import Tensor

# The schemas' bound on an id (schemas/messages.py MAX_ID_LEN): an id a message could not carry is not an item.
MAX_ITEM_ID_LEN = 128

# The state-dict entries indexed by item (row i ↔ vocabulary index i, row 0 padding). Every other tensor of the
# model is shared by all items and is copied unchanged.
ITEM_TABLES = ("item_emb.weight", "item_text", "rank_bias.weight")


@dataclass(frozen=True)
class NewItemRows:
    """The rows M new items get in each item-indexed table ([M, ·] each; keys as in ITEM_TABLES)."""

    rows: dict[str, Tensor]
    # The known item each new row copies ([M], vocabulary index 1..N), 0 where the item starts from its text.
    sources: Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.rows["item_emb.weight"].shape[0])


def valid_item_id(item_id: str) -> bool:
    """An id the events schema accepts (1–128 characters) and a JSON vocabulary can hold."""
    return isinstance(item_id, str) and 0 < len(item_id) <= MAX_ITEM_ID_LEN


def check_new_ids(item_ids: Sequence[str], new_ids: Sequence[str]) -> None:
    known = set(item_ids)
    if len(set(new_ids)) != len(new_ids):
        raise ValueError("the new item ids repeat one another")
    clash = [i for i in new_ids if i in known]
    if clash:
        raise ValueError(f"{len(clash)} new item ids are already in the vocabulary, e.g. {clash[0]!r}")
    bad = [i for i in new_ids if not valid_item_id(i)]
    if bad:
        raise ValueError(f"{len(bad)} new item ids are not valid ids (1–{MAX_ITEM_ID_LEN} characters)")


def tail_items(popularity: Sequence[float] | None, num_items: int) -> Tensor:
    """Vocabulary indices (1..N) of the known items trained on at most the median count; all of them without
    counts (`popularity`: checkpoint meta `item_popularity`, [N] or longer)."""
    if popularity is None or len(popularity) < num_items:
        return torch.arange(1, num_items + 1)
    pop = torch.as_tensor(np.asarray(popularity[:num_items], np.float64))
    return torch.nonzero(pop <= pop.median()).flatten() + 1


@torch.no_grad()
def new_item_rows(model: GenerativeRecommender, count: int, text: np.ndarray | None = None,
                  has_text: Sequence[bool] | None = None, seed: int = 0,
                  popularity: Sequence[float] | None = None) -> NewItemRows:
    """The initial rows of `count` new items (see the module docstring).

    text [M, T]: the items' text vectors (a model with text_dim only); has_text [M]: which of them came from
    metadata (default: the non-zero rows); popularity [N]: the known items' training counts, which pick the tail
    items to copy. Deterministic in `seed`, so a run replays.
    """
    sd = model.state_dict()
    emb = sd["item_emb.weight"]
    M, D = count, emb.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tail = tail_items(popularity, model.cfg.num_items)
    sources = tail[torch.randint(0, len(tail), (M,), generator=gen)]  # [M] the known item each new one copies
    copied = model.item_vectors(sources.to(emb.device)).float().cpu()  # [M, D] e_s, text part included
    noise = torch.randn(M, D, generator=gen) * (0.1 * copied.norm(dim=1, keepdim=True) / D**0.5)
    id_rows = copied + noise  # [M, D]
    from_text = torch.zeros(M, dtype=torch.bool)
    rows: dict[str, Tensor] = {}
    if "item_text" in sd:
        T = sd["item_text"].shape[1]
        t = torch.zeros(M, T) if text is None else torch.as_tensor(np.asarray(text, np.float32))
        if t.shape != (M, T):
            raise ValueError(f"text vectors of shape {tuple(t.shape)} for {M} new items of a {T}-d text model")
        from_text = (t.abs().sum(1) > 0) if has_text is None else torch.as_tensor(list(has_text), dtype=torch.bool)
        id_rows[from_text] = 0.0  # the text alone places the item until it is clicked
        rows["item_text"] = t.to(sd["item_text"].dtype)
    elif text is not None:
        raise ValueError("text vectors given for a model without item text (text_dim = 0)")
    rows["item_emb.weight"] = id_rows.to(emb.dtype)
    if "rank_bias.weight" in sd:
        bias = sd["rank_bias.weight"].cpu()  # [N+1, R]
        start = bias[sources].clone()  # a copy's appeal is its source's
        start[from_text] = bias[1:].mean(0)  # an item known by its text: an average item's appeal
        rows["rank_bias.weight"] = start
    return NewItemRows(rows, sources=torch.where(from_text, 0, sources))


@torch.no_grad()
def grow_items(model: GenerativeRecommender, item_ids: Sequence[str], new_ids: Sequence[str],
               rows: NewItemRows | None = None, *, text: np.ndarray | None = None, seed: int = 0,
               popularity: Sequence[float] | None = None) -> tuple[GenerativeRecommender, list[str]]:
    """A copy of `model` whose vocabulary is item_ids + new_ids (indices 1..N unchanged, N+1..N+M new), and that
    vocabulary. `rows`: the new rows (`new_item_rows`); by default computed from `text` and `seed`. The input model
    is left as it was; the copy is on the same device, in the same train/eval mode."""
    N, M = len(item_ids), len(new_ids)
    if model.cfg.num_items != N:
        raise ValueError(f"{N} item ids for a model of {model.cfg.num_items} items")
    check_new_ids(item_ids, new_ids)
    if M == 0:
        grown = GenerativeRecommender(model.cfg.model_copy())
        grown.load_state_dict(model.state_dict())
        return grown.to(model.item_emb.weight.device).train(model.training), list(item_ids)
    rows = rows if rows is not None else new_item_rows(model, M, text, seed=seed, popularity=popularity)
    if rows.count != M:
        raise ValueError(f"{rows.count} new rows for {M} new items")
    cfg = model.cfg.model_copy(update={"num_items": N + M})
    grown = GenerativeRecommender(cfg)
    sd = model.state_dict()
    new_sd: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k in ITEM_TABLES:
            add = rows.rows[k].to(device=v.device, dtype=v.dtype)
            new_sd[k] = torch.cat([v, add], 0)  # [N+1, ·] ++ [M, ·] → [N+M+1, ·]
        else:
            new_sd[k] = v
    grown.load_state_dict(new_sd, strict=True)
    return grown.to(model.item_emb.weight.device).train(model.training), [*item_ids, *new_ids]


def grow_popularity(popularity: Sequence[float] | None, num_items: int) -> list[float] | None:
    """Training popularity counts [N] (checkpoint meta `item_popularity`) padded with 0 for new items: a new item
    is never a cold-start pick before a retraining counts it."""
    if popularity is None:
        return None
    pop = [float(x) for x in popularity]
    return pop + [0.0] * max(0, num_items - len(pop))


def grow_optimizer_state(state: dict[str, Tensor], old_rows: int, new_rows: int) -> dict[str, Tensor]:
    """One parameter's AdamW state (exp_avg, exp_avg_sq, step) after its table grew from old_rows to new_rows:
    the new rows start with zero moments, as a parameter that has not had a gradient yet."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if t.dim() >= 1 and t.shape[0] == old_rows and name != "step":
            pad = torch.zeros((new_rows - old_rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[name] = torch.cat([t, pad], 0)
        else:
            out[name] = t
    return out


def new_item_text(new_ids: Sequence[str], items_csv: Path | str, encoder_name: str, dim: int) -> np.ndarray:
    """Text vectors [M, dim] of new items from an items.csv (item_id,title,text,categories;
    model/interactions.py), encoded as training encoded the known items' (`model.search.item_text_vectors`: the
    named encoder with its defaults); a zero row where the file has no text for the item."""
    from genrec.model.interactions import read_items_csv
    from genrec.model.queries import item_text
    from genrec.model.text import make_text_encoder

    out = np.zeros((len(new_ids), dim), np.float32)
    metas = read_items_csv(items_csv)
    have = [(j, item_text(metas[i])) for j, i in enumerate(new_ids) if i in metas]
    have = [(j, t) for j, t in have if t]
    if not have:
        return out
    encoder = make_text_encoder(encoder_name)  # type: ignore[arg-type]
    if encoder.dim != dim:
        raise ValueError(f"text encoder {encoder_name} gives {encoder.dim}-d vectors; the model's item text is {dim}-d")
    out[[j for j, _ in have]] = encoder.encode([t for _, t in have])
    return out
